"""The spool: Part-10 files written durably, bytes unchanged, nothing left on failure."""

from __future__ import annotations

import errno
import os
import shutil
import stat
import subprocess
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from pydicom import dcmread
from tests.support.unitkit import generated, split_part10

from dde.store.spool import Spool, SpoolError, encode_file_meta

CT = "1.2.840.10008.5.1.4.1.1.2"


def files_in(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


@contextmanager
def read_only(folder: Path) -> Iterator[None]:
    """Make ``folder`` really read-only, also for root (immutable attribute)."""
    if os.geteuid() != 0:
        folder.chmod(0o555)
        try:
            yield
        finally:
            folder.chmod(0o755)
        return
    chattr = shutil.which("chattr")
    if chattr is None or subprocess.run([chattr, "+i", str(folder)],
                                        capture_output=True).returncode != 0:
        pytest.skip("cannot make a folder read-only for root here (no chattr +i)")
    try:
        yield
    finally:
        subprocess.run([chattr, "-i", str(folder)], check=True)


def test_write_gives_a_part10_file_with_the_received_bytes_unchanged(spool: Spool) -> None:
    instance = generated()
    meta = encode_file_meta(instance.sop_class_uid, instance.sop_instance_uid,
                            instance.transfer_syntax_uid, "TEST_SCU")

    written = spool.write(meta, instance.dataset)

    path = spool.path_of(written.relative_path)
    raw = path.read_bytes()
    assert written.size == len(raw) == len(meta) + len(instance.dataset)
    assert raw[:132] == b"\x00" * 128 + b"DICM"
    syntax, dataset_bytes = split_part10(raw)
    assert dataset_bytes == instance.dataset
    assert syntax == instance.transfer_syntax_uid
    ds = dcmread(path)
    assert ds.file_meta.MediaStorageSOPClassUID == instance.sop_class_uid
    assert ds.file_meta.MediaStorageSOPInstanceUID == instance.sop_instance_uid
    assert ds.file_meta.TransferSyntaxUID == instance.transfer_syntax_uid
    assert ds.file_meta.SourceApplicationEntityTitle == "TEST_SCU"
    assert ds.SOPInstanceUID == instance.sop_instance_uid


def test_large_dataset_is_written_whole(spool: Spool) -> None:
    instance = generated(rows=256, columns=256)  # > 64 KiB: written in two parts
    assert len(instance.dataset) > 65536
    meta = encode_file_meta(instance.sop_class_uid, instance.sop_instance_uid,
                            instance.transfer_syntax_uid)

    written = spool.write(meta, instance.dataset)

    raw = spool.path_of(written.relative_path).read_bytes()
    assert raw == meta + instance.dataset
    assert "SourceApplicationEntityTitle" not in dcmread(spool.path_of(
        written.relative_path)).file_meta


def test_compressed_syntax_is_kept_in_the_file_meta(spool: Spool) -> None:
    jpeg = "1.2.840.10008.1.2.4.50"
    meta = encode_file_meta("1.2.840.10008.5.1.4.1.1.7", "1.2.3.4.5", jpeg)

    written = spool.write(meta, b"\x08\x00\x16\x00UI\x02\x00" + b"1\x00")

    syntax, body = split_part10(spool.path_of(written.relative_path).read_bytes())
    assert syntax == jpeg
    assert body == b"\x08\x00\x16\x00UI\x02\x001\x00"


def test_no_part_file_is_left_and_names_are_unique(spool: Spool) -> None:
    meta = encode_file_meta(CT, "1.2.3", "1.2.840.10008.1.2.1")

    paths = {spool.write(meta, b"x" * 10).relative_path for _ in range(20)}

    assert len(paths) == 20
    assert all(p.endswith(".dcm") and len(p.split("/")) == 2 for p in paths)
    assert sorted(paths) == files_in(spool.root)
    assert not list(spool.root.rglob("*.part"))


def test_discard_partials_removes_only_part_files(spool: Spool) -> None:
    kept = spool.write(encode_file_meta(CT, "1.2.3", "1.2.840.10008.1.2.1"), b"data")
    (spool.root / "ab").mkdir(exist_ok=True)
    (spool.root / "ab" / "crashed.part").write_bytes(b"half")
    (spool.root / "cd").mkdir(exist_ok=True)
    (spool.root / "cd" / "other.part").write_bytes(b"")

    assert spool.discard_partials() == 2

    assert files_in(spool.root) == [kept.relative_path]
    assert spool.discard_partials() == 0


def test_remove_deletes_and_tolerates_a_missing_file(spool: Spool) -> None:
    written = spool.write(encode_file_meta(CT, "1.2.3", "1.2.840.10008.1.2.1"), b"data")

    spool.remove(written.relative_path)
    spool.remove(written.relative_path)

    assert files_in(spool.root) == []


def test_write_into_a_read_only_spool_raises_and_leaves_nothing(spool: Spool) -> None:
    meta = encode_file_meta(CT, "1.2.3", "1.2.840.10008.1.2.1")

    with read_only(spool.root), pytest.raises(SpoolError, match="spool write failed"):
        spool.write(meta, b"data")

    assert files_in(spool.root) == []


def test_write_into_a_read_only_subfolder_raises_and_leaves_nothing(
        spool: Spool, monkeypatch: pytest.MonkeyPatch) -> None:
    fixed = uuid.UUID("ab" + "0" * 30)
    monkeypatch.setattr("dde.store.spool.uuid.uuid4", lambda: fixed)
    folder = spool.root / "ab"
    folder.mkdir()

    with read_only(folder), pytest.raises(SpoolError):
        spool.write(encode_file_meta(CT, "1.2.3", "1.2.840.10008.1.2.1"), b"data")

    assert files_in(spool.root) == []


@pytest.mark.parametrize("failing", ["write", "fsync", "rename"])
def test_failure_midway_raises_and_removes_the_partial_file(
        spool: Spool, monkeypatch: pytest.MonkeyPatch, failing: str) -> None:
    meta = encode_file_meta(CT, "1.2.3", "1.2.840.10008.1.2.1")
    real = getattr(os, failing)
    calls: list[int] = []

    def fail_on_file(*args: Any) -> Any:
        # Let folder fsyncs through; fail the operation on the file itself.
        if calls or (failing == "fsync" and not stat.S_ISREG(os.fstat(args[0]).st_mode)):
            return real(*args)
        calls.append(1)
        if failing == "write":
            real(*args)  # some bytes reach the .part file first: the disk then fills
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(f"dde.store.spool.os.{failing}", fail_on_file)

    with pytest.raises(SpoolError, match="No space left"):
        spool.write(meta, b"data" * 100)

    monkeypatch.undo()
    assert calls
    assert files_in(spool.root) == []
