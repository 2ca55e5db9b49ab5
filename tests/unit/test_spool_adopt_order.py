"""The order that makes an acknowledgement safe, on the default receive path.

A receiver process streams each dataset to ``spool/incoming/``; the ingest pipeline then has
the spool adopt it (:meth:`Spool.adopt`) and commits the ledger rows. Success may be answered
only after: the file's data is fsync'd, it is renamed into the spool, the spool folder that
now names it is fsync'd (and the spool root too when that folder is new), and the ledger
transaction is committed — in that order. These tests record every ``os.fsync`` (file or
folder, by inode and path), every ``os.rename`` and the ledger commit during one ingest and
check that order; removing any one of the fsyncs from ``Spool.adopt`` makes one fail. The
in-memory path (:meth:`Spool.write`, web uploads and ``receiver.processes: 0``) is checked
the same way.
"""

from __future__ import annotations

import errno
import os
import stat
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from tests.support.unitkit import generated
from tests.unit.test_streamed_ingest import (
    incoming_for,
    part10,
    pipeline,
    spool_files,
    write_part10,
)

from dde.dicom import status as dimse
from dde.receiving.ingest import IngestResult
from dde.store.ledger import Ledger
from dde.store.spool import Spool

FOLDER = "ab"  # every spool name of these tests starts with it: a new folder, deterministic


@dataclass(frozen=True)
class Event:
    kind: str  # fsync-file, fsync-dir, rename, committed, answered
    path: str = ""
    inode: int = 0
    target: str = ""


class Recorder:
    """Records, in order, what reaches the disk and the ledger during one ingest."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, ledger: Ledger) -> None:
        self.events: list[Event] = []
        real_fsync: Callable[[int], None] = os.fsync
        real_rename: Callable[..., None] = os.rename
        real_ingest = ledger.intake.ingest

        def fsync(fd: int) -> None:
            info = os.fstat(fd)
            path = os.readlink(f"/proc/self/fd/{fd}")
            real_fsync(fd)
            kind = "fsync-dir" if stat.S_ISDIR(info.st_mode) else "fsync-file"
            self.events.append(Event(kind, path, info.st_ino))

        def rename(source: Any, target: Any, *args: Any, **kwargs: Any) -> None:
            inode = os.stat(source).st_ino
            real_rename(source, target, *args, **kwargs)
            self.events.append(Event("rename", str(source), inode, str(target)))

        def ingest(*args: Any, **kwargs: Any) -> Any:
            result = real_ingest(*args, **kwargs)  # returns once COMMIT is done
            self.events.append(Event("committed"))
            return result

        monkeypatch.setattr("dde.store.spool.os.fsync", fsync)
        monkeypatch.setattr("dde.store.spool.os.rename", rename)
        monkeypatch.setattr(ledger.intake, "ingest", ingest)
        fixed = uuid.UUID(FOLDER + "0" * 30)
        monkeypatch.setattr("dde.store.spool.uuid.uuid4", lambda: fixed)

    def answered(self, result: IngestResult) -> None:
        self.events.append(Event("answered", str(result.status)))

    def index(self, description: str, wanted: Callable[[Event], bool], after: int = -1) -> int:
        """The position of the first event after ``after`` that is ``wanted``."""
        for position, event in enumerate(self.events):
            if position > after and wanted(event):
                return position
        raise AssertionError(f"never happened: {description}; events: {self.describe()}")

    def describe(self) -> str:
        return "; ".join(f"{e.kind} {e.path}{' -> ' + e.target if e.target else ''}"
                         for e in self.events)


def check_durable_before_success(recorder: Recorder, spool: Spool, final: Path) -> None:
    """file fsync -> rename into the spool -> folder fsync (root fsync for a new folder)
    -> ledger commit -> success, the file identified by its inode."""
    inode = final.stat().st_ino
    folder = str(final.parent)
    root = str(spool.root)
    renamed = recorder.index(f"the rename to {final}",
                             lambda e: e.kind == "rename" and e.target == str(final))
    file_synced = recorder.index("an fsync of the spool file's data",
                                 lambda e: e.kind == "fsync-file" and e.inode == inode)
    folder_synced = recorder.index(f"an fsync of {folder} after the rename",
                                   lambda e: e.kind == "fsync-dir" and e.path == folder,
                                   after=renamed)
    root_synced = recorder.index(f"an fsync of the spool root {root} (new folder {FOLDER})",
                                 lambda e: e.kind == "fsync-dir" and e.path == root)
    committed = recorder.index("the ledger commit", lambda e: e.kind == "committed")
    answered = recorder.index("the answer", lambda e: e.kind == "answered")
    order = recorder.describe()
    assert file_synced < renamed, f"the file was renamed in before its data was fsync'd: {order}"
    assert renamed < folder_synced < committed, (
        f"the ledger was committed before the folder naming the file was fsync'd: {order}")
    assert root_synced < committed, (
        f"the ledger was committed before the new folder {FOLDER} was fsync'd in the root: "
        f"{order}")
    assert committed < answered, f"answered before the ledger commit: {order}"
    assert recorder.events[answered].path == str(dimse.SUCCESS)


def test_adopt_fsyncs_file_then_renames_then_fsyncs_folder_then_commits_then_succeeds(
        ledger: Ledger, spool: Spool, monkeypatch: pytest.MonkeyPatch) -> None:
    raw = part10()
    received = write_part10(spool.incoming_dir, raw)
    incoming_inode = received.stat().st_ino
    recorder = Recorder(monkeypatch, ledger)

    result = pipeline(ledger, spool).ingest(incoming_for(received, raw))
    recorder.answered(result)

    assert result.status == dimse.SUCCESS, result.detail
    (final,) = spool_files(spool)
    assert final.parent.name == FOLDER
    assert final.stat().st_ino == incoming_inode  # adopted by a rename, not a copy
    check_durable_before_success(recorder, spool, final)
    (rename,) = [e for e in recorder.events if e.kind == "rename"]
    assert rename.path == str(received)


def test_adopt_across_file_systems_copies_fsyncs_renames_then_commits(
        ledger: Ledger, spool: Spool, monkeypatch: pytest.MonkeyPatch) -> None:
    """An incoming folder on another file system (EXDEV): the copy is fsync'd, renamed into
    place and its folder fsync'd before the commit."""
    raw = part10()
    received = write_part10(spool.incoming_dir, raw)
    recorder = Recorder(monkeypatch, ledger)
    recording_rename = os.rename

    def rename(source: Any, target: Any) -> None:
        if Path(source) == received:
            raise OSError(errno.EXDEV, os.strerror(errno.EXDEV))
        recording_rename(source, target)

    monkeypatch.setattr("dde.store.spool.os.rename", rename)

    result = pipeline(ledger, spool).ingest(incoming_for(received, raw))
    recorder.answered(result)

    assert result.status == dimse.SUCCESS, result.detail
    (final,) = spool_files(spool)
    assert final.read_bytes() == raw
    check_durable_before_success(recorder, spool, final)


def test_write_fsyncs_file_then_renames_then_fsyncs_folder_then_commits_then_succeeds(
        ledger: Ledger, spool: Spool, monkeypatch: pytest.MonkeyPatch) -> None:
    """The in-memory path (web uploads, ``receiver.processes: 0``) keeps the same order."""
    instance = generated()
    recorder = Recorder(monkeypatch, ledger)

    result = pipeline(ledger, spool).ingest(instance.incoming())
    recorder.answered(result)

    assert result.status == dimse.SUCCESS, result.detail
    (final,) = spool_files(spool)
    check_durable_before_success(recorder, spool, final)


@pytest.mark.parametrize("failing", ["root fsync", "file fsync", "rename", "folder fsync"])
def test_adopt_failing_midway_is_refused_and_commits_nothing(
        ledger: Ledger, spool: Spool, monkeypatch: pytest.MonkeyPatch, failing: str) -> None:
    """Each step that makes the file durable, failing, refuses the instance (0xA700) with
    nothing committed and nothing left in the spool."""
    raw = part10()
    received = write_part10(spool.incoming_dir, raw)
    monkeypatch.setattr("dde.store.spool.uuid.uuid4", lambda: uuid.UUID(FOLDER + "0" * 30))
    real_fsync, real_rename = os.fsync, os.rename
    failed: list[str] = []

    def fail() -> None:
        failed.append(failing)
        raise OSError(errno.EIO, os.strerror(errno.EIO))

    def fsync(fd: int) -> None:
        path = Path(os.readlink(f"/proc/self/fd/{fd}"))
        step = {spool.root: "root fsync", spool.root / FOLDER: "folder fsync"}.get(
            path, "file fsync")
        if step == failing:
            fail()
        real_fsync(fd)

    def rename(source: Any, target: Any) -> None:
        if failing == "rename":
            fail()
        real_rename(source, target)

    monkeypatch.setattr("dde.store.spool.os.fsync", fsync)
    monkeypatch.setattr("dde.store.spool.os.rename", rename)

    incoming = incoming_for(received, raw)
    result = pipeline(ledger, spool).ingest(incoming)

    monkeypatch.undo()
    assert failed == [failing]
    assert result.status == dimse.OUT_OF_RESOURCES
    assert result.reason == "spool_error"
    assert ledger.operators.where(incoming.sop_instance_uid) == []
    assert spool_files(spool) == []
    assert spool.used_bytes == 0
