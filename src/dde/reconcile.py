"""Probe reconciliation: does the probe hold every instance the storage PACS hold?

Orthanc names an instance by a hash of its patient, study, series and SOP instance
identifiers, so the same instance has the same ID in every Orthanc: comparing the paged ID
listings (``GET /instances?since=&limit=``) finds the differences without reading a single
file. Repair fetches only the missing instances from a storage that has them and queues
them for the probe through the ledger (the running router delivers them). The report holds
counts, never patient data.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import httpx

from dde.config import EndpointSettings, Settings
from dde.dicom.part10 import NotPart10, split_part10
from dde.endpoints.http import http_client
from dde.receiving.ingest import Incoming, IngestPipeline
from dde.routing.route import Route
from dde.routing.rules import RuleSet
from dde.store.ledger import Ledger

log = logging.getLogger(__name__)

PAGE = 1000
RECONCILE_AET = "DDE_RECONCILE"
"""The called AE title the ledger shows for a copy queued by a repair."""
ClientFactory = Callable[[EndpointSettings], httpx.Client]


class ReconcileError(Exception):
    pass


@dataclass
class ReconcileReport:
    storage: dict[str, int] = field(default_factory=dict)
    probe: dict[str, int] = field(default_factory=dict)
    missing_in_probe: dict[str, int] = field(default_factory=dict)
    only_in_probe: dict[str, int] = field(default_factory=dict)
    repaired: int = 0
    repair_failed: int = 0
    already_queued: int = 0
    """Missing in the probe, but a delivery to it is still pending (late, not lost)."""
    seconds: float = 0.0

    @property
    def consistent(self) -> bool:
        return not any(self.missing_in_probe.values())

    def as_dict(self) -> dict[str, object]:
        return {**asdict(self), "consistent": self.consistent}


def list_instance_ids(client: httpx.Client, url: str) -> set[str]:
    ids: set[str] = set()
    since = 0
    while True:
        response = client.get(f"{url}/instances", params={"since": since, "limit": PAGE})
        response.raise_for_status()
        page = response.json()
        if not isinstance(page, list):
            raise ReconcileError(f"{url}/instances did not answer a list")
        ids.update(str(i) for i in page)
        if len(page) < PAGE:
            return ids
        since += PAGE


def roles(settings: Settings, ruleset: RuleSet) -> tuple[list[EndpointSettings],
                                                          list[EndpointSettings]]:
    """(storage endpoints, probe endpoints): probes are the mirrors; storage all the others."""
    mirrors = set(ruleset.mirror)
    probes = [e for e in settings.endpoints if e.name in mirrors]
    storages = [e for e in settings.endpoints if e.name not in mirrors]
    return storages, probes


def reconcile(settings: Settings, ruleset: RuleSet, *, ledger: Ledger | None = None,
              pipeline: IngestPipeline | None = None, repair: bool = False,
              client_factory: ClientFactory | None = None) -> ReconcileReport:
    factory = client_factory or (lambda e: http_client(e, timeout=30.0))
    started = time.monotonic()
    storages, probes = roles(settings, ruleset)
    unreadable = [e.name for e in storages + probes if not e.url]
    if not probes:
        raise ReconcileError("no probe: the rules mirror to no endpoint")
    if unreadable:
        raise ReconcileError(f"no url (Orthanc REST) configured for: {', '.join(unreadable)}")
    if repair and any(rule.deidentify is not None for rule in ruleset.rules):
        # The endpoints hold different copies of one instance (de-identified or not): a
        # repair could copy a received instance to a probe that gets de-identified ones.
        raise ReconcileError("--repair is not available while a rule de-identifies (the "
                             "storages and the probe may hold different copies)")
    report = ReconcileReport()
    holdings: dict[str, set[str]] = {}
    for endpoint in storages + probes:
        try:
            with factory(endpoint) as client:
                holdings[endpoint.name] = list_instance_ids(client, str(endpoint.url))
        except httpx.HTTPError as exc:
            raise ReconcileError(f"cannot list {endpoint.name}: {type(exc).__name__}") from None
    stored: dict[str, str] = {}
    for endpoint in storages:
        report.storage[endpoint.name] = len(holdings[endpoint.name])
        for instance_id in holdings[endpoint.name]:
            stored.setdefault(instance_id, endpoint.name)
    all_stored = set(stored)
    for probe in probes:
        held = holdings[probe.name]
        report.probe[probe.name] = len(held)
        missing = all_stored - held
        report.missing_in_probe[probe.name] = len(missing)
        report.only_in_probe[probe.name] = len(held - all_stored)
        if repair and missing:
            if ledger is None or pipeline is None:
                raise ReconcileError("--repair needs the router's ledger and spool")
            ok, failed, waiting = _repair(settings, probe, missing, stored, ledger, pipeline,
                                          factory)
            report.repaired += ok
            report.repair_failed += failed
            report.already_queued += waiting
    report.seconds = round(time.monotonic() - started, 3)
    return report


def _repair(settings: Settings, probe: EndpointSettings, missing: set[str],
            stored: dict[str, str], ledger: Ledger, pipeline: IngestPipeline,
            factory: ClientFactory) -> tuple[int, int, int]:
    ok = failed = waiting = 0
    by_source: dict[str, list[str]] = {}
    for instance_id in sorted(missing):
        by_source.setdefault(stored[instance_id], []).append(instance_id)
    for source_name, ids in by_source.items():
        source = settings.endpoint(source_name)
        assert source is not None
        with factory(source) as client:
            for instance_id in ids:
                try:
                    response = client.get(f"{source.url}/instances/{instance_id}/file")
                    response.raise_for_status()
                    if _queue_copy(response.content, source_name, probe.name, ledger,
                                   pipeline):
                        ok += 1
                    else:
                        waiting += 1
                except (httpx.HTTPError, ReconcileError) as exc:
                    failed += 1
                    log.warning("reconcile: could not queue a copy from %s: %s", source_name,
                                exc)
    return ok, failed, waiting


def _queue_copy(part10: bytes, source: str, probe: str, ledger: Ledger,
                pipeline: IngestPipeline) -> bool:
    """Queue a copy for the probe through the ingest pipeline (spool, ledger, in one durable
    path with C-STORE and uploads); False when one is already pending (nothing queued)."""
    try:
        parts = split_part10(part10)
    except NotPart10 as exc:
        raise ReconcileError(f"the storage returned an unusable file: {exc}") from None
    if ledger.operators.waiting_for(parts.sop_instance_uid, probe):
        return False
    result = pipeline.ingest(Incoming(
        dataset=parts.dataset, transfer_syntax_uid=parts.transfer_syntax_uid,
        sop_class_uid=parts.sop_class_uid, sop_instance_uid=parts.sop_instance_uid,
        calling_aet=source, called_aet=RECONCILE_AET, source_ip=None,
        route=Route("reconcile", (), (probe,),
                    reason=f"missing in {probe}, copied from {source}")))
    if not result.ok:
        raise ReconcileError(f"not queued: {result.detail}")
    return True
