"""Response models of the API's JSON bodies, for the OpenAPI document (``/docs``).

The routes build their documents as before (:func:`dde.endpoints.registry.describe`,
:func:`dde.routing.explain.explain_bytes`, …) and declare these models as their
``response_model``: FastAPI validates each answer against its model and serialises it, so a
model must carry every field of its document, with the same names, nesting and nulls. A
document with two shapes (route explain: routed or refused; a health check: passed or
failed) is a union of two models whose required fields tell them apart, so that no absent
field comes back as ``null``. ``tests/unit/test_web_openapi.py`` checks each route's
answer against its model.

Errors are not filtered through a model (the handlers of :mod:`dde.web.errors` answer
them); :class:`ErrorBody` documents their shape. Ledger documents are in
:mod:`dde.web.schemas_ledger`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from dde.config import EndpointKind, EndpointState

# -- errors --------------------------------------------------------------------------------


class Problem(BaseModel):
    """One invalid part of a request: where it is and what is wrong (never its value)."""

    loc: list[str] = Field(description="Location, e.g. ['body', 'port'] or ['query', 'limit']")
    msg: str


class FileProblem(BaseModel):
    """An uploaded file that is not DICOM Part-10, and why."""

    name: str
    detail: str


class ErrorBody(BaseModel):
    """Every error answer: a stable machine word and a sentence for people. Some errors add
    fields: ``problems`` (``validation_error``), ``line`` and ``reason`` (``invalid_rules``),
    ``files`` (``not_dicom``). They are absent from other errors."""

    model_config = ConfigDict(extra="allow")

    error: str = Field(description="A stable word: not_found, conflict, validation_error, …",
                       examples=["not_found"])
    detail: str = Field(description="What went wrong, for people")
    problems: list[Problem] | None = Field(
        default=None, description="validation_error: each invalid part of the request")
    line: int | None = Field(default=None,
                             description="invalid_rules: the line of the rules document")
    reason: str | None = Field(default=None,
                               description="invalid_rules: what is wrong with the rules")
    files: list[FileProblem] | None = Field(
        default=None, description="not_dicom: the uploaded files that are not DICOM Part-10")


ERROR_DESCRIPTIONS: Mapping[int, str] = {
    400: "Bad request (an empty upload, a body that cannot be read)",
    401: "No valid API token or session",
    403: "A change made with the session cookie without its CSRF token",
    404: "Not found",
    409: "Conflict with the current configuration or ledger",
    413: "The request body is too large",
    415: "Unsupported media type",
    422: "Invalid request (validation_error) or content",
    500: "Internal error, or a configuration file the router cannot read",
}


def error_responses(*statuses: int,
                    described: Mapping[int, str] | None = None) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` of error statuses, all :class:`ErrorBody`; ``described`` gives
    a route's own description of some statuses (and adds them)."""
    own = dict(described or {})
    return {status: {"model": ErrorBody,
                     "description": own.get(status, ERROR_DESCRIPTIONS.get(status, "Error"))}
            for status in sorted({*statuses, *own})}


# -- endpoints -----------------------------------------------------------------------------


class EndpointRow(BaseModel):
    """One endpoint with its configuration and live status (``dde endpoints list --json``,
    :func:`dde.endpoints.registry.describe`)."""

    name: str
    kind: EndpointKind
    aet: str
    host: str
    port: int
    url: str | None
    groups: list[str]
    weight: float
    state: EndpointState
    storage_commitment: bool = Field(
        default=False, description="Deliveries are asked to be committed (DICOM storage "
                                   "commitment)")
    health: str = Field(description="up, down, or unknown when no router publishes it")
    breaker: str | None = Field(description="The circuit breaker's state; null when unknown")
    last_error: str | None
    load: int | None = Field(description="Instances stored on it; null when unknown")
    queued: int = Field(description="Deliveries waiting for it")
    failed: int
    delivered: int


class EndpointRemoved(BaseModel):
    """A removed endpoint, and where its waiting deliveries went (with ``force=true``)."""

    removed: str
    redirected: int = Field(description="Deliveries moved to ``target``")
    target: str | None = Field(description="The group member that took them, if any")


# -- rules ---------------------------------------------------------------------------------


class RulesDocument(BaseModel):
    """The active rules document (``default``: no rules.yaml, the generated default)."""

    text: str
    default: bool
    rules: list[str] = Field(description="Rule names, in order")
    mirror: list[str] = Field(description="Endpoints that get a copy of everything")


class RulesApplied(BaseModel):
    """A rules document that was validated and applied."""

    applied: int = Field(description="How many rules it has")
    rules: list[str]
    mirror: list[str]


class EditChange(BaseModel):
    """One element a rule would change in the file (old value shown: the caller has it)."""

    tag: str
    keyword: str
    action: Literal["set", "remove"]
    old: str | None = Field(description="The file's value (null: absent)")
    new: str | None = Field(description="The value sent (null: removed)")


class EditPlan(BaseModel):
    """What one matching rule's ``set``/``remove`` would make of the file."""

    rule: str
    destinations: list[str] = Field(description="The endpoints that would get these bytes")
    changes: list[EditChange]
    error: str | None = Field(description="The edits cannot be made on this file: the "
                                          "router would refuse it")


class DeidentifyPlan(BaseModel):
    """What one matching rule's ``deidentify`` would make of the file (no values)."""

    rule: str
    destinations: list[str] = Field(description="The endpoints that would get the copy")
    method: str = Field(description="Profile and options")
    held_back: str | None = Field(description="Why the file would be held back from these "
                                              "destinations (burned-in annotation)")
    changed_elements: int = Field(description="Elements changed, emptied or removed")
    error: str | None = None


class RoutedDecision(BaseModel):
    """The route a file would take now (``dde route explain --json``)."""

    rule: str
    destinations: list[str] = Field(description="Every endpoint it would go to, mirrors too")
    mirrors: list[str]
    discard: bool = Field(description="The rule discards it: accepted, sent nowhere")
    reason: str
    edits: list[EditPlan] = Field(default_factory=list,
                                  description="Per rule with set/remove: what would change")
    deidentify: list[DeidentifyPlan] = Field(
        default_factory=list, description="Per rule that de-identifies: how, and whether "
                                          "the file would be held back")


class RefusedDecision(BaseModel):
    """No rule takes the file: the router would refuse it (a failure status)."""

    rule: None
    destinations: list[str]
    mirrors: list[str]
    refused: Literal[True]
    reason: str


Decision = RoutedDecision | RefusedDecision
"""``POST /api/route/explain``: routed (with ``discard``) or refused (with ``refused``)."""


# -- health and login ----------------------------------------------------------------------


class CheckPassed(BaseModel):
    ok: Literal[True]


class CheckFailed(BaseModel):
    ok: Literal[False]
    detail: str


Check = CheckPassed | CheckFailed


class HealthChecks(BaseModel):
    """One result per readiness check of :mod:`dde.web.health`."""

    database: Check
    spool: Check
    receiver: Check


class HealthReport(BaseModel):
    """Ready: every check passed."""

    status: Literal["ok"]
    checks: HealthChecks


class HealthUnavailable(BaseModel):
    """Not ready (503): ``detail`` names the failing checks."""

    status: Literal["unavailable"]
    error: Literal["unavailable"]
    detail: str
    checks: HealthChecks


class LoginSession(BaseModel):
    """A new session (the cookies are set): echo ``csrf_token`` in ``X-CSRF-Token`` on
    changes made with the session cookie."""

    csrf_token: str
    expires_in: int = Field(description="Seconds the session lasts")


class LoggedOut(BaseModel):
    status: Literal["logged out"]
