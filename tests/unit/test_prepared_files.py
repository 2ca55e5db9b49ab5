"""Spool files prepared in advance: a received dataset written straight into its final file.

The names of prepared files are made durable in batches (one folder fsync per batch), so an
instance written into one needs only its data synced before the ledger commit: no rename, no
folder fsync. Files the ledger does not know (prepared and unused, or written when the
process died before the commit) are removed at start.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from tests.support.orthanc import wait_until
from tests.unit.test_streamed_ingest import incoming_for, part10, pipeline, spool_files

from dde.dicom import status as dimse
from dde.store import prepared_files
from dde.store.ledger import Ledger
from dde.store.prepared_files import PreparedFiles
from dde.store.spool import Spool, SpoolFull


@pytest.fixture
def prepared(spool: Spool) -> Iterator[PreparedFiles]:
    spool.incoming_dir.mkdir(exist_ok=True)
    spool.prepared.start()
    wait_until(lambda: spool.prepared.ready >= prepared_files.BATCH, 10, "a prepared batch")
    yield spool.prepared
    spool.prepared.stop()


def test_prepared_files_are_empty_private_files_in_the_spools_folders(
        spool: Spool, prepared: PreparedFiles) -> None:
    taken = [prepared.take() for _ in range(3)]

    for path in taken:
        assert path.parent.parent == spool.root and path.parent != spool.incoming_dir
        assert path.suffix == ".dcm" and path.stat().st_size == 0
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        assert prepared.is_prepared(path)
    assert len(set(taken)) == 3


def test_the_supply_is_made_again_as_it_is_taken(prepared: PreparedFiles) -> None:
    for _ in range(prepared_files.HIGH_WATER + 10):
        prepared.take()

    wait_until(lambda: prepared.ready >= prepared_files.LOW_WATER, 10, "the supply refilled")


def test_without_a_prepared_file_the_incoming_folder_is_used(spool: Spool) -> None:
    path = spool.prepared.take()  # never started: nothing prepared

    assert path.parent == spool.incoming_dir and not path.exists()
    assert not spool.prepared.is_prepared(path)


def test_stop_removes_the_files_never_taken(spool: Spool, prepared: PreparedFiles) -> None:
    taken = prepared.take()

    prepared.stop()

    assert [p for p in spool_files(spool) if p != taken] == []
    assert taken.exists()  # a taken file is the receiver's


def test_a_dataset_in_a_prepared_file_is_synced_in_place_then_committed(
        ledger: Ledger, spool: Spool, prepared: PreparedFiles,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The order that makes the acknowledgement safe on this path: the file's name was made
    durable when it was prepared (its folder fsync'd); its data (and size) are synced with
    fdatasync; then the ledger commits; then success. No rename happens."""
    raw = part10()
    target = prepared.take()
    target.write_bytes(raw)
    events: list[str] = []
    real_fdatasync, real_rename = os.fdatasync, os.rename
    real_ingest = ledger.intake.ingest

    def fdatasync(fd: int) -> None:
        real_fdatasync(fd)
        events.append(f"fdatasync {os.fstat(fd).st_ino}")

    def rename(*args: Any, **kwargs: Any) -> None:
        events.append("rename")
        real_rename(*args, **kwargs)

    def ingest(*args: Any, **kwargs: Any) -> Any:
        result = real_ingest(*args, **kwargs)
        events.append("committed")
        return result

    monkeypatch.setattr("dde.store.spool.os.fdatasync", fdatasync)
    monkeypatch.setattr("dde.store.spool.os.rename", rename)
    monkeypatch.setattr(ledger.intake, "ingest", ingest)

    result = pipeline(ledger, spool).ingest(incoming_for(target, raw))

    assert result.status == dimse.SUCCESS, result.detail
    assert events == [f"fdatasync {target.stat().st_ino}", "committed"]
    (record,) = ledger.operators.where(incoming_for(target, raw).sop_instance_uid)
    assert record.spool_path is not None and spool.path_of(record.spool_path) == target
    assert target.read_bytes() == raw
    assert spool.used_bytes == len(raw)


def test_a_prepared_file_is_only_handed_out_after_its_folder_is_fsyncd(
        spool: Spool, monkeypatch: pytest.MonkeyPatch) -> None:
    synced: list[str] = []
    real_fsync = os.fsync

    def fsync(fd: int) -> None:
        real_fsync(fd)
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))

    monkeypatch.setattr("dde.store.prepared_files.os.fsync", fsync)
    spool.prepared.start()
    try:
        wait_until(lambda: spool.prepared.ready > 0, 10, "a prepared batch")
        path = spool.prepared.take()
        assert str(path.parent) in synced
    finally:
        spool.prepared.stop()


def test_a_refused_dataset_in_a_prepared_file_leaves_no_file(
        ledger: Ledger, spool: Spool, prepared: PreparedFiles) -> None:
    raw = part10()
    target = prepared.take()
    target.write_bytes(raw[:200])  # cut inside the dataset: broken

    result = pipeline(ledger, spool).ingest(incoming_for(target, raw))

    assert result.status == dimse.CANNOT_UNDERSTAND
    assert not target.exists()
    assert ledger.diagnostics.count("instances") == 0


def received_into_prepared(ledger: Ledger, spool: Spool, raw: bytes) -> Path:
    """A dataset written into a prepared file and ingested: the file."""
    target = spool.prepared.take()
    target.write_bytes(raw)
    assert pipeline(ledger, spool).ingest(incoming_for(target, raw)).ok
    return target


def test_the_sweep_at_start_removes_what_the_ledger_does_not_know(
        ledger: Ledger, spool: Spool, prepared: PreparedFiles) -> None:
    raw = part10()
    kept = received_into_prepared(ledger, spool, raw)
    never_committed = prepared.take()
    never_committed.write_bytes(raw)  # the process died before its commit: never acked
    in_incoming = spool.incoming_dir / "streaming.dcm"
    in_incoming.write_bytes(raw)  # the incoming folder is discard_partials' business
    prepared.stop()  # as if the process had died: files left in the folders
    unused = prepared_files.PreparedFiles(spool.root, spool.incoming_dir)._batch()

    removed = spool.sweep_unrecorded(ledger.spool_index.spool_paths_in_use())

    assert removed == 1 + len(unused)
    assert spool_files(spool) == [kept]
    assert in_incoming.exists()
    assert spool.used_bytes == len(raw)


def test_spool_paths_of_a_prepared_file_and_the_ledger_agree(
        ledger: Ledger, spool: Spool, prepared: PreparedFiles) -> None:
    target = received_into_prepared(ledger, spool, part10())

    relative = f"{target.parent.name}/{target.name}"
    assert ledger.spool_index.spool_paths_in_use() == {relative}
    assert Path(spool.path_of(relative)) == target


def test_a_shared_spools_cap_counts_a_prepared_file_once(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A prepared file holds its bytes before the spool reserves them: a recount (a shared
    spool counts its files again before each write here) must not count them twice."""
    monkeypatch.setattr("dde.store.spool.RECOUNT_SECONDS", 0.0)
    raw = part10()
    spool = Spool(tmp_path / "spool", max_bytes=4 * len(raw) + len(raw) // 2, shared=True)
    spool.incoming_dir.mkdir()
    spool.prepared.start()
    try:
        wait_until(lambda: spool.prepared.ready > 4, 10, "prepared files")
        adopted = []
        for _ in range(4):
            target = spool.prepared.take()
            target.write_bytes(raw)
            adopted.append(spool.adopt(target))
        fifth = spool.prepared.take()
        fifth.write_bytes(raw)
        with pytest.raises(SpoolFull):
            spool.adopt(fifth)
    finally:
        spool.prepared.stop()
    assert len(adopted) == 4


def test_nodes_sharing_a_spool_folder_clean_up_only_their_own_files(tmp_path: Path) -> None:
    """Two nodes on one spool folder: each names its files after itself and has its own
    incoming folder; the clean-ups at its start (partial writes, files the ledger does not
    know) leave the other node's files alone, in flight or not."""
    raw = part10()
    root = tmp_path / "shared"
    one, two = Spool(root, node="node1"), Spool(root, node="node2")
    written = [one.write(b"", raw), two.write(b"", raw)]
    for spool in (one, two):
        spool.incoming_dir.mkdir()
        (spool.incoming_dir / "streaming.dcm").write_bytes(raw)
        (root / "ab").mkdir(exist_ok=True)
        (root / "ab" / f"{spool.node}-cut.part").write_bytes(raw[:10])
    prepared = PreparedFiles(root, two.incoming_dir, "node2-")._batch()

    assert one.incoming_dir != two.incoming_dir
    assert [Path(w.relative_path).name.split("-")[0] for w in written] == ["node1", "node2"]
    assert all(p.name.startswith("node2-") for p in prepared)
    assert one.discard_partials() == 2  # its .part and its incoming file
    assert one.sweep_unrecorded(set()) == 1  # its own spool file (not in this empty ledger)

    assert (root / "ab" / "node2-cut.part").exists()
    assert (two.incoming_dir / "streaming.dcm").exists()
    assert two.path_of(written[1].relative_path).exists()
    assert all(p.exists() for p in prepared)
    assert two.sweep_unrecorded({written[1].relative_path}) == len(prepared)
