"""Configuration routes: endpoints, rules and route explain, through the same functions as
the CLI (:mod:`dde.endpoints.registry`, :class:`dde.config_store.ConfigStore`,
:func:`dde.routing.explain.explain_bytes`). A change is written to the configuration
files; the running router applies it within a second, as for the CLI.
"""

from __future__ import annotations

from typing import Annotated, Any
from urllib.parse import urlsplit

from fastapi import APIRouter, Depends, File, Form, Query, Request, UploadFile
from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError

from dde.config import (
    MAIN_RECEIVER,
    ConfigError,
    EndpointKind,
    EndpointSettings,
    EndpointState,
    Settings,
    forbidden_host,
)
from dde.config_store import default_rules_text
from dde.endpoints import registry
from dde.routing.explain import ExplainError, explain_bytes
from dde.routing.router import Origin
from dde.routing.rules import RulesError
from dde.web.auth import require_user
from dde.web.errors import ApiError, conflict, not_found, validation_detail
from dde.web.schemas import (
    Decision,
    EndpointRemoved,
    EndpointRow,
    RulesApplied,
    RulesDocument,
    error_responses,
)
from dde.web.services import WebServices

RULES_TYPES = ("text/plain", "application/yaml", "application/x-yaml", "text/yaml",
               "text/x-yaml")
MAX_EXPLAIN_BYTES = 64 * 1024 * 1024


class EndpointCreate(BaseModel):
    """A new endpoint, as ``dde endpoints add`` takes it. ``aet``, ``host`` and ``port`` are
    required for ``dicom``; an HTTP kind needs ``url``. Credentials are given as values (never
    answered back); secret files (``*_file``) only through ``dde.yaml`` or the CLI, so the API
    cannot make the router read a file of its choosing."""

    model_config = ConfigDict(extra="forbid")
    name: str
    aet: str | None = None
    host: str | None = None
    port: int | None = None
    url: str | None = None
    groups: list[str] = Field(default_factory=list)
    kind: EndpointKind = EndpointKind.DICOM
    weight: float = 1.0
    username: str | None = None
    password: SecretStr | None = None
    token: SecretStr | None = Field(default=None, description="An HTTP bearer token")
    qido_load: bool = True
    storage_commitment: bool = Field(
        default=False, description="dicom: ask the destination to commit to each delivered "
                                   "study (Storage Commitment Push Model)")


class EndpointChange(BaseModel):
    """Fields to change; absent ones stay. ``state`` drains, enables or disables."""

    model_config = ConfigDict(extra="forbid")
    state: EndpointState | None = None
    weight: float | None = None
    groups: list[str] | None = None
    aet: str | None = None
    host: str | None = None
    port: int | None = None
    url: str | None = None
    kind: EndpointKind | None = None
    storage_commitment: bool | None = None


def _invalid(exc: ValidationError) -> ApiError:
    detail, problems = validation_detail(exc.errors())
    return ApiError(422, "validation_error", detail, problems=problems)


def _check_address(services: WebServices, endpoint: EndpointSettings) -> None:
    """422 for a link-local or cloud metadata host or url (unless the configuration allows
    them); the configuration refuses them too, this only gives the API's answer its shape."""
    if _settings(services).security.allow_link_local_endpoints:
        return
    hosts = (endpoint.host, urlsplit(endpoint.url or "").hostname)
    problems = [p for h in hosts if h and (p := forbidden_host(h)) is not None]
    if problems:
        raise ApiError(422, "validation_error", "; ".join(problems) + " (refused; "
                       "security.allow_link_local_endpoints: true allows it)",
                       problems=[{"loc": ["body"], "msg": p} for p in problems])


def _settings(services: WebServices) -> Settings:
    try:
        return services.store.settings()
    except ConfigError as exc:
        raise ApiError(500, "config_error", str(exc)) from None


def _row(services: WebServices, settings: Settings, name: str) -> dict[str, Any]:
    rows = registry.describe(settings, services.ledger)
    return next(r for r in rows if r["name"] == name)


def endpoints_router(services: WebServices) -> APIRouter:
    router = APIRouter(prefix="/api", tags=["endpoints"], dependencies=[Depends(require_user)],
                       responses=error_responses(401, 500))

    def existing(name: str) -> Settings:
        settings = _settings(services)
        if settings.endpoint(name) is None:
            raise not_found(f"no endpoint named {name!r}")
        return settings

    @router.get("/endpoints", response_model=list[EndpointRow],
                summary="Every endpoint with its live status (as `dde endpoints list --json`)")
    def list_endpoints() -> list[dict[str, Any]]:
        return registry.describe(_settings(services), services.ledger)

    @router.post("/endpoints", status_code=201, response_model=EndpointRow,
                 summary="Add an endpoint (as `dde endpoints add`)",
                 responses=error_responses(403, 413, 422, described={
                     409: "An endpoint of that name exists already"}))
    def add_endpoint(body: EndpointCreate) -> dict[str, Any]:
        try:
            endpoint = EndpointSettings(**body.model_dump(exclude_none=True))
        except ValidationError as exc:
            raise _invalid(exc) from None
        _check_address(services, endpoint)
        try:
            settings = registry.add_endpoint(services.store, endpoint)
        except registry.EndpointError as exc:
            raise conflict(str(exc)) from None
        return _row(services, settings, endpoint.name)

    @router.patch("/endpoints/{name}", response_model=EndpointRow,
                  summary="Drain, enable, disable or change an endpoint",
                  responses=error_responses(403, 413, 422, described={
                      404: "No endpoint of that name",
                      409: "The change would break the rules"}))
    def change_endpoint(name: str, body: EndpointChange) -> dict[str, Any]:
        fields = body.model_dump(exclude_unset=True)
        if not fields:
            raise ApiError(422, "validation_error", "nothing to change: give at least one field")
        current = existing(name).endpoint(name)
        assert current is not None
        try:
            _check_address(services, EndpointSettings.model_validate(
                {**current.model_dump(mode="python"), **fields}))
            settings = registry.update_endpoint(services.store, name, **fields)
            if fields.get("state") == EndpointState.ENABLED:  # learn what it accepts again
                services.ledger.capabilities.forget(name)
        except ValidationError as exc:
            raise _invalid(exc) from None
        except registry.EndpointError as exc:
            raise conflict(str(exc)) from None
        return _row(services, settings, name)

    @router.delete("/endpoints/{name}", response_model=EndpointRemoved,
                   summary="Remove an endpoint (refused while deliveries wait for it, unless "
                   "force=true redirects them)",
                   responses=error_responses(403, 422, described={
                       404: "No endpoint of that name",
                       409: "Deliveries wait for it (and force found no other member of its "
                            "group), or the rules use it"}))
    def remove_endpoint(name: str, force: bool = False) -> dict[str, Any]:
        existing(name)
        try:
            _, redirected, target = registry.remove_endpoint(services.store, services.ledger,
                                                             name, force)
        except registry.EndpointError as exc:
            raise conflict(str(exc)) from None
        if target is not None:
            services.dispatcher.wake([target])
        return {"removed": name, "redirected": redirected, "target": target}

    return router


def rules_router(services: WebServices) -> APIRouter:
    router = APIRouter(prefix="/api", tags=["rules"], dependencies=[Depends(require_user)],
                       responses=error_responses(401, 500))

    @router.get("/rules", response_model=RulesDocument,
                summary="The active rules document and its rule names (?receiver=NAME: "
                "that receiver's own rules file, if it has one)",
                responses=error_responses(422, described={404: "No receiver of that name"}))
    def get_rules(receiver: Annotated[str | None, Query(max_length=32)] = None
                  ) -> dict[str, Any]:
        settings = _settings(services)
        if receiver is not None and settings.receiving_ae(receiver) is None:
            raise not_found(f"no receiver {receiver!r}")
        try:
            text = services.store.rules_text(settings, receiver)
            ruleset = services.store.ruleset(settings).for_receiver(receiver or "")
        except ConfigError as exc:
            raise ApiError(500, "config_error", str(exc)) from None
        return {"text": text if text is not None else default_rules_text(settings),
                "default": text is None, "rules": [r.name for r in ruleset.rules],
                "mirror": list(ruleset.mirror)}

    @router.put("/rules", response_model=RulesApplied,
                summary="Validate and apply a rules document (YAML text, or JSON "
                "{\"text\": ...}); invalid: 422 and the old rules stay",
                responses=error_responses(400, 403, 413, 415, described={
                    409: "The configuration is invalid: the rules cannot be checked against it",
                    422: "invalid_rules (with line and reason; the previous rules stay) "
                         "or validation_error"}),
                openapi_extra={"requestBody": {"required": True, "content": {
                    "application/yaml": {"schema": {"type": "string"}},
                    "text/plain": {"schema": {"type": "string"}},
                    "application/json": {"schema": {
                        "type": "object", "properties": {"text": {"type": "string"}},
                        "required": ["text"]}}}}})
    async def put_rules(request: Request,
                        receiver: Annotated[str | None, Query(max_length=32)] = None
                        ) -> dict[str, Any]:
        text = await _rules_text(request)
        try:
            ruleset = services.store.apply_rules(text, receiver)
        except RulesError as exc:
            raise ApiError(422, "invalid_rules", f"{exc}; the previous rules stay",
                           line=exc.line, reason=exc.message) from None
        except ConfigError as exc:
            raise conflict(str(exc)) from None
        return {"applied": len(ruleset.rules), "rules": [r.name for r in ruleset.rules],
                "mirror": list(ruleset.mirror)}

    @router.post("/route/explain", tags=["rules"], response_model=Decision,
                 summary="The rule and destinations a file would get now, without storing "
                 "it (as `dde route explain --json`)",
                 responses=error_responses(400, 403, 413, described={
                     422: "cannot_explain (not a Part-10 file the router takes) or "
                          "validation_error"}))
    def explain_file(
        file: Annotated[UploadFile, File(description="A DICOM Part-10 file")],
        calling_aet: Annotated[str, Form()] = "",
        called_aet: Annotated[str | None, Form()] = None,
        source_ip: Annotated[str, Form()] = "",
        receiver: Annotated[str, Form(max_length=32)] = MAIN_RECEIVER,
    ) -> dict[str, object]:
        settings = _settings(services)
        taking = settings.receiving_ae(receiver)
        if taking is None:
            raise ApiError(422, "validation_error", f"no receiver {receiver!r}")
        raw = file.file.read(MAX_EXPLAIN_BYTES + 1)
        if not raw:
            raise ApiError(400, "empty_upload", "the file is empty")
        if len(raw) > MAX_EXPLAIN_BYTES:
            raise ApiError(413, "payload_too_large", "the file is too large to explain")
        try:
            ruleset = services.store.ruleset(settings)
            return explain_bytes(raw, "the file", settings, ruleset, services.ledger,
                                 Origin(calling_aet, called_aet or taking.settings.ae_title,
                                        source_ip, taking.settings.port, taking.name))
        except ExplainError as exc:
            raise ApiError(422, "cannot_explain", str(exc)) from None
        except ConfigError as exc:
            raise ApiError(500, "config_error", str(exc)) from None

    return router


async def _rules_text(request: Request) -> str:
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    body = await request.body()
    if content_type == "application/json":
        try:
            document = await request.json()
        except ValueError:
            raise ApiError(400, "bad_request", "the body is not valid JSON") from None
        text = document.get("text") if isinstance(document, dict) else None
        if not isinstance(text, str):
            raise ApiError(422, "validation_error", 'a JSON body must be {"text": "..."}')
        return text
    if content_type not in RULES_TYPES:
        raise ApiError(415, "unsupported_media_type",
                       "send the rules as text/plain or application/yaml, or JSON "
                       '{"text": ...}')
    try:
        return body.decode("utf-8")
    except UnicodeDecodeError:
        raise ApiError(400, "bad_request", "the rules are not UTF-8 text") from None
