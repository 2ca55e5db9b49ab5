"""Every file of the shared public corpus, sent through the router with DCMTK's storescu.

The corpus (``../shared/corpus/public`` beside the repository, described by its
``manifest.csv``) holds real-world files: every transfer syntax family, many SOP classes,
non-conformant files and deliberately broken ones. Each file is sent on its own association,
in its own transfer syntax (a storescu profile proposing exactly its SOP class and syntax).

When storescu refuses to send a file itself (it cannot read a truncated element, does not
know a transfer syntax newer than DCMTK 3.6.7, or finds no SOP Class/Instance UID in the
dataset), the file's dataset bytes are sent raw with pynetdicom, so that the router is what
judges them.

What must hold:
- every file the router acknowledged is, once the router is idle, delivered to its storage
  and to the probe, or visibly ``failed`` with a reason: never silently missing;
- every clean file of a standard storage SOP class is acknowledged;
- every file whose dataset bytes are truncated or unparsable is refused by the router, and
  leaves nothing in the ledger.
"""

from __future__ import annotations

import csv
import io
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.filereader import _read_file_meta_info, read_preamble
from pydicom.uid import generate_uid
from tests.support.orthanc import RunningOrthanc, start_orthanc
from tests.support.router import ROUTER_AET, InProcessRouter, router_settings, start_router
from tests.support.senders import (
    raw_c_store,
    run_storescu,
    store_responses,
    write_storescu_profile,
)

CORPUS = Path(__file__).resolve().parents[2].parent / "shared" / "corpus" / "public"
if not (CORPUS / "manifest.csv").is_file():
    pytest.skip(f"no public corpus at {CORPUS}", allow_module_level=True)

pytestmark = [pytest.mark.integration, pytest.mark.slow]

# A C-STORE request needs a SOP class; a file that names none anywhere is sent as this.
PLACEHOLDER_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.7"  # Secondary Capture Image Storage
# Not a storage SOP class for the network: a DICOMDIR describes files on media (PS3.10).
# A PACS that never answers a C-STORE costs the router a DIMSE timeout per attempt, and holds
# up that PACS's queue meanwhile: few attempts, short timeouts (the largest corpus file is
# 13 MB, a fraction of a second on loopback).
DELIVERY = {"max_attempts": 3, "dimse_timeout": 5.0}
IDLE_TIMEOUT = 90.0
NOT_NETWORK_STORABLE = {"1.2.840.10008.1.3.10": "a DICOMDIR is not sent by C-STORE"}


@dataclass
class Entry:
    """One corpus file, what was done with it, and what became of it."""

    row: dict[str, str]
    sender: str = ""
    outcome: str = ""  # acknowledged | refused | not sent
    detail: str = ""
    instance_id: int | None = None
    sop_instance_uid: str | None = None
    deliveries: list[tuple[str, str, str, str | None]] = field(default_factory=list)
    new_rows: int = 0

    @property
    def name(self) -> str:
        return self.row["file"]

    @property
    def path(self) -> Path:
        return CORPUS / self.row["file"]

    @property
    def standard(self) -> bool:
        return bool(self.row["sop_class_uid"]) and not self.row["sop_class"].startswith("private")

    @property
    def clean(self) -> bool:
        return self.row["broken"] == "no"

    @property
    def bytes_broken(self) -> bool:
        """The dataset bytes themselves cannot be walked (truncated, invalid encoding)."""
        return "[S] byte walk" in self.row["broken_reason"]


def read_manifest() -> list[dict[str, str]]:
    with open(CORPUS / "manifest.csv", newline="") as manifest:
        return list(csv.DictReader(manifest))


@dataclass
class Identity:
    sop_class: str
    sop_instance: str
    syntax: str
    offset: int
    """Where the dataset starts in the file (after the file meta, if any)."""
    meta_complete: bool
    notes: list[str]


def identity(entry: Entry) -> Identity:
    """SOP class, SOP instance, transfer syntax and dataset offset of a file, with notes on
    what had to be assumed."""
    notes: list[str] = []
    data = entry.path.read_bytes()
    stream = io.BytesIO(data)
    meta: dict[str, str] = {}
    offset = 0
    if entry.row["part10_header"] == "yes":
        read_preamble(stream, False)
        found = _read_file_meta_info(stream)
        offset = stream.tell()
        for keyword in ("MediaStorageSOPClassUID", "MediaStorageSOPInstanceUID",
                        "TransferSyntaxUID"):
            if keyword in found:
                meta[keyword] = str(found[keyword].value)
    try:
        dataset = dcmread(entry.path, force=True, stop_before_pixels=True)
        in_dataset = {k: str(dataset.get(k) or "") for k in ("SOPClassUID", "SOPInstanceUID")}
    except Exception:
        in_dataset = {"SOPClassUID": "", "SOPInstanceUID": ""}
    sop_class = (meta.get("MediaStorageSOPClassUID") or entry.row["sop_class_uid"]
                 or in_dataset["SOPClassUID"])
    if not sop_class:
        sop_class = PLACEHOLDER_SOP_CLASS
        notes.append("no SOP class anywhere: sent as Secondary Capture")
    sop_instance = meta.get("MediaStorageSOPInstanceUID") or in_dataset["SOPInstanceUID"]
    if not sop_instance:
        sop_instance = generate_uid()
        notes.append("no SOP Instance UID anywhere: one was made up")
    syntax = meta.get("TransferSyntaxUID") or entry.row["transfer_syntax_uid"]
    return Identity(sop_class, sop_instance, syntax, offset, len(meta) == 3, notes)


def last_instance_id(router: InProcessRouter) -> int:
    return router.ledger.diagnostics.max_instance_id()


def send_one(entry: Entry, router: InProcessRouter, scratch: Path) -> None:
    found = identity(entry)
    notes = found.notes
    entry.sop_instance_uid = found.sop_instance
    before = last_instance_id(router)

    options = write_storescu_profile(scratch / f"{entry.name}.cfg",
                                     [(found.sop_class, found.syntax)])
    result = run_storescu([entry.path], router.port, ROUTER_AET, *options)
    responses = store_responses(result)
    if responses:
        entry.sender = "storescu"
        entry.outcome = "acknowledged" if responses == ["Success"] else "refused"
        entry.detail = ", ".join(responses)
    else:
        errors = [line[3:] for line in (result.stdout + result.stderr).splitlines()
                  if line.startswith(("E: ", "F: "))]
        why = errors[0] if errors else f"exit status {result.returncode}"
        entry.sender = "raw"
        # pynetdicom streams the bytes after a complete file meta; otherwise they are
        # wrapped behind a new meta first.
        outcome = raw_c_store(
            entry.path, router.port, ROUTER_AET, found.sop_class, found.sop_instance,
            found.syntax, dataset_offset=None if found.meta_complete else found.offset,
            scratch=scratch)
        notes.insert(0, f"storescu: {why}")
        if not outcome.sent:
            entry.outcome = "not sent"
            entry.detail = outcome.detail
        elif outcome.status == 0:
            entry.outcome, entry.detail = "acknowledged", "0x0000"
        else:
            entry.outcome, entry.detail = "refused", outcome.detail
    if notes:
        entry.detail += " [" + "; ".join(notes) + "]"

    new = router.ledger.diagnostics.instances(after_id=before)
    entry.new_rows = len(new)
    if entry.outcome == "acknowledged" and len(new) == 1:
        # storescu names the dataset's SOP Instance UID, which may differ from the meta's
        entry.instance_id, entry.sop_instance_uid = new[0].id, new[0].sop_instance_uid


@dataclass
class CorpusRun:
    entries: list[Entry]
    router: InProcessRouter
    storages: dict[str, RunningOrthanc]
    probe: RunningOrthanc


def settle(run: CorpusRun) -> None:
    for entry in run.entries:
        if entry.instance_id is None:
            continue
        rows = sorted(run.router.ledger.diagnostics.deliveries(instance_id=entry.instance_id),
                      key=lambda d: d.endpoint)
        rows.sort(key=lambda d: d.role, reverse=True)  # by role (descending), then endpoint
        entry.deliveries = [(d.endpoint, d.role, d.state, d.last_error) for d in rows]


def print_table(run: CorpusRun) -> None:
    width = max(len(e.name) for e in run.entries)
    lines = [f"{'file':<{width}}  {'broken':<13} {'sender':<8} {'outcome':<12} "
             f"deliveries / detail"]
    for e in run.entries:
        places = ", ".join(f"{name}={state}" + (f" ({error})" if error else "")
                           for name, _, state, error in e.deliveries)
        lines.append(f"{e.name:<{width}}  {e.row['broken']:<13} {e.sender:<8} {e.outcome:<12} "
                     f"{places} {e.detail}".rstrip())
    outcomes = Counter(e.outcome for e in run.entries)
    states = Counter(state for e in run.entries for _, _, state, _ in e.deliveries)
    reasons = Counter(error for e in run.entries for _, _, state, error in e.deliveries
                      if state == "failed")
    lines.append("")
    lines.append(f"{len(run.entries)} files: {outcomes['acknowledged']} acknowledged, "
                 f"{outcomes['refused']} refused, {outcomes['not sent']} not sent; "
                 f"sent raw after storescu declined: "
                 f"{sum(1 for e in run.entries if e.sender == 'raw')}")
    lines.append(f"deliveries: {states['delivered']} delivered, {states['failed']} failed, "
                 f"{states['pending']} pending")
    for reason, count in reasons.most_common():
        lines.append(f"  failed x{count}: {reason}")
    print("\n" + "\n".join(lines))


@pytest.fixture(scope="module")
def corpus_run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CorpusRun]:
    base = tmp_path_factory.mktemp("corpus")
    orthancs: list[RunningOrthanc] = []
    router: InProcessRouter | None = None
    try:
        for name in ("ORTHANC1", "ORTHANC2", "ORTHANC-PROBE"):
            orthancs.append(start_orthanc(base / "orthancs" / name, name))
        storage1, storage2, probe = orthancs
        router = start_router(base / "router-home",
                              router_settings([storage1, storage2], probe, delivery=DELIVERY))
        scratch = base / "scratch"
        scratch.mkdir()
        entries = [Entry(row) for row in read_manifest()]
        for entry in entries:
            send_one(entry, router, scratch)
        try:
            router.wait_idle(timeout=IDLE_TIMEOUT)
        except AssertionError as exc:  # reported by the tests, with the table
            print(exc)
        run = CorpusRun(entries, router, {o.name: o for o in (storage1, storage2)}, probe)
        settle(run)
        print_table(run)
        yield run
    finally:
        if router is not None:
            router.stop()
        for orthanc in orthancs:
            orthanc.kill()


def test_every_acknowledged_file_is_delivered_or_visibly_failed(corpus_run: CorpusRun) -> None:
    problems = []
    holders = {name: o.sop_instance_uids() for name, o in corpus_run.storages.items()}
    holders[corpus_run.probe.name] = corpus_run.probe.sop_instance_uids()
    for entry in corpus_run.entries:
        if entry.outcome != "acknowledged":
            continue
        if entry.instance_id is None:
            problems.append(f"{entry.name}: acknowledged but {entry.new_rows} ledger rows")
            continue
        roles = sorted(role for _, role, _, _ in entry.deliveries)
        if roles != ["mirror", "route"]:
            problems.append(f"{entry.name}: deliveries {entry.deliveries}")
        for endpoint, _, state, error in entry.deliveries:
            if state == "delivered":
                if entry.sop_instance_uid not in holders[endpoint]:
                    problems.append(f"{entry.name}: delivered to {endpoint}, not held there")
            elif state == "failed":
                if not (error or "").strip():
                    problems.append(f"{entry.name}: failed at {endpoint} without a reason")
            else:
                problems.append(f"{entry.name}: {state} at {endpoint} once the router is idle")
    assert not problems, "\n".join(problems)


def test_storage_and_probe_hold_the_same_bytes(corpus_run: CorpusRun) -> None:
    checked = 0
    for entry in corpus_run.entries:
        states = {name: state for name, _, state, _ in entry.deliveries}
        storage = next((n for n, role, _, _ in entry.deliveries if role == "route"), None)
        if storage is None or set(states.values()) != {"delivered"}:
            continue
        uid = entry.sop_instance_uid
        assert uid is not None
        stored = corpus_run.storages[storage].file_bytes(uid)
        mirrored = corpus_run.probe.file_bytes(uid)
        assert _dataset(stored) == _dataset(mirrored), entry.name
        checked += 1
    assert checked >= 20


def _dataset(part10: bytes) -> bytes:
    stream = io.BytesIO(part10)
    read_preamble(stream, False)
    _read_file_meta_info(stream)
    return part10[stream.tell():]


def test_every_clean_standard_file_is_acknowledged(corpus_run: CorpusRun) -> None:
    expected = [e for e in corpus_run.entries if e.clean and e.standard
                and e.row["sop_class_uid"] not in NOT_NETWORK_STORABLE]
    assert len(expected) >= 25
    for entry in corpus_run.entries:
        if entry.row["sop_class_uid"] in NOT_NETWORK_STORABLE:
            print(f"not required to be acknowledged: {entry.name}: "
                  f"{NOT_NETWORK_STORABLE[entry.row['sop_class_uid']]}")
    missing = [f"{e.name} ({e.row['sop_class']}, {e.row['transfer_syntax']}): "
               f"{e.outcome} {e.detail}" for e in expected if e.outcome != "acknowledged"]
    assert not missing, "clean standard files not acknowledged:\n" + "\n".join(missing)


def test_every_file_with_broken_dataset_bytes_is_refused_and_leaves_no_trace(
    corpus_run: CorpusRun,
) -> None:
    broken = [e for e in corpus_run.entries if e.bytes_broken]
    assert len(broken) >= 3
    wrong = [f"{e.name}: {e.outcome} {e.detail}" for e in broken
             if e.outcome != "refused" or e.new_rows]
    assert not wrong, "broken files not refused:\n" + "\n".join(wrong)


def test_refused_files_leave_nothing_in_the_ledger(corpus_run: CorpusRun) -> None:
    assert [e.name for e in corpus_run.entries if e.outcome != "acknowledged" and e.new_rows] \
        == []
