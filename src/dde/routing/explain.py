"""``dde route explain``: the decision for a file, without sending it, with live state.

The running router publishes each endpoint's health and load to the ledger; the
explanation uses those, the persisted study pins and the queue depths, and the active rules.
The edits (``set``/``remove``) each matching rule would make are made on the file's bytes
here too, and shown with the old values (the caller holds the file). Each rule that
de-identifies is shown with its profile and options, the destinations that would get the
copy, and whether the file would be held back (burned-in annotation) and why; no value of
the file is shown and no salt read (the plan is made under a throwaway one).
"""

from __future__ import annotations

from dataclasses import asdict
from io import BytesIO
from pathlib import Path

from pydicom import dcmread

from dde.config import Settings
from dde.dicom.deidentify import HeldBack, deidentify
from dde.dicom.edits import EditError, apply_edits
from dde.dicom.header import BrokenDataset, parse_header
from dde.dicom.part10 import NotPart10, split_part10
from dde.routing.decision import NoRoute
from dde.routing.deidentify_action import describe
from dde.routing.published import PublishedEndpoints
from dde.routing.route import Route
from dde.routing.router import Origin, Router
from dde.routing.rules import RuleSet
from dde.store.ledger import Ledger
from dde.store.spool import encode_file_meta


class ExplainError(Exception):
    pass


def read_part10(path: Path) -> tuple[bytes, str]:
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise ExplainError(f"{path}: {exc.strerror}") from None
    return _split_part10(raw, str(path))


def _split_part10(raw: bytes, label: str) -> tuple[bytes, str]:
    """(encoded dataset, transfer syntax UID) of a Part-10 file's bytes; ``label`` names
    the file in error messages."""
    try:
        part10 = split_part10(raw)
    except NotPart10 as exc:
        raise ExplainError(f"{label}: not a DICOM Part-10 file the router can take: "
                           f"{exc}") from None
    return part10.dataset, part10.transfer_syntax_uid


def explain(path: Path, settings: Settings, ruleset: RuleSet, ledger: Ledger | None,
            origin: Origin) -> dict[str, object]:
    dataset, syntax = read_part10(path)
    return explain_dataset(dataset, syntax, str(path), settings, ruleset, ledger, origin)


def explain_bytes(raw: bytes, label: str, settings: Settings, ruleset: RuleSet,
                  ledger: Ledger | None, origin: Origin) -> dict[str, object]:
    """As :func:`explain`, for a Part-10 file's bytes (``label`` names it in messages)."""
    dataset, syntax = _split_part10(raw, label)
    return explain_dataset(dataset, syntax, label, settings, ruleset, ledger, origin)


def explain_dataset(dataset: bytes, syntax: str, label: str, settings: Settings,
                    ruleset: RuleSet, ledger: Ledger | None,
                    origin: Origin) -> dict[str, object]:
    """The decision for an encoded dataset (``label`` names it in error messages)."""
    try:
        header = parse_header(dataset, syntax)
    except BrokenDataset as exc:
        raise ExplainError(f"{label}: the router would refuse it: {exc}") from None
    if ledger is None:
        raise ExplainError("no ledger yet: start the router once (dde serve / dde stack up)")
    state = PublishedEndpoints(ledger.status_board, settings.health.failover_after_seconds,
                               max_age=0)
    router = Router(settings.routing, settings.endpoints, state, state, ruleset)
    try:
        route = router.route(header, ledger.intake.view(), origin)
    except NoRoute as exc:
        return {"rule": None, "destinations": [], "mirrors": [], "refused": True,
                "reason": f"no route: {exc} (the router answers a failure status)"}
    return {"rule": route.rule, "destinations": list(route.destinations + route.mirrors),
            "mirrors": list(route.mirrors), "discard": route.discard,
            "reason": route.reason or f"rule {route.rule}",
            "edits": edit_plan(route, dataset, syntax),
            "deidentify": deidentify_plan(route, dataset, syntax)}


def edit_plan(route: Route, dataset: bytes, syntax: str) -> list[dict[str, object]]:
    """Per rule with edits: the destinations that would get its bytes and what would change
    in this dataset (``error``: the edits cannot be made, the router would refuse it)."""
    plan: list[dict[str, object]] = []
    for rule, edits in route.edits:
        entry: dict[str, object] = {
            "rule": rule, "destinations": [name for name, r in route.variants if r == rule],
            "changes": [], "error": None}
        try:
            entry["changes"] = [asdict(a) for a in apply_edits(dataset, syntax, edits).applied]
        except EditError as exc:
            entry["error"] = f"the router would refuse it: {exc}"
        plan.append(entry)
    return plan


_EXPLAIN_SALT = b"dde route explain: not a real salt"


def deidentify_plan(route: Route, dataset: bytes, syntax: str) -> list[dict[str, object]]:
    """Per rule that de-identifies: its destinations, how (``method``), how many elements
    it would change, and ``held_back`` (the reason, or None)."""
    plan: list[dict[str, object]] = []
    for rule, action in route.deidentify:
        entry: dict[str, object] = {
            "rule": rule, "destinations": [name for name, r in route.variants if r == rule],
            "method": describe(action), "held_back": None, "changed_elements": 0,
            "error": None}
        try:
            source = dcmread(BytesIO(encode_file_meta("1.2", "1.2", syntax) + dataset))
        except Exception as exc:
            entry["error"] = f"the router would refuse it: unreadable ({type(exc).__name__})"
            plan.append(entry)
            continue
        result = deidentify(source, action.profile(_EXPLAIN_SALT))
        if isinstance(result, HeldBack):
            entry["held_back"] = result.reason
        else:
            entry["changed_elements"] = len(result.actions)
        plan.append(entry)
    return plan
