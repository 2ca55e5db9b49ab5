"""Datasets streamed to disk: header from the file, adoption into the spool, full disks."""

from __future__ import annotations

import errno
import io
import os
from pathlib import Path
from typing import Any, BinaryIO, cast

import pytest
from pydicom.uid import generate_uid
from tests.support.unitkit import endpoint, load_book, part10_bytes, split_part10

from dde.config import RoutingSettings
from dde.dicom import status as dimse
from dde.dicom.engine import acceptor as acceptor_module
from dde.dicom.engine.acceptor import DatasetFile
from dde.dicom.header import (
    DEFER_SIZE,
    BrokenDataset,
    InstanceHeader,
    parse_header,
    parse_header_file,
)
from dde.dicom.part10 import dataset_offset
from dde.receiving.ingest import Incoming, IngestPipeline
from dde.routing.router import Router
from dde.store import spool as spool_module
from dde.store.ledger import Ledger
from dde.store.spool import Spool, SpoolFull
from dde.synthetic import make_instance

ENDPOINTS = [endpoint("ORTHANC1"), endpoint("ORTHANC2")]


def part10(rows: int = 8, columns: int = 8) -> bytes:
    """A generated Part-10 file (16-bit pixels: rows * columns * 2 bytes of pixel data)."""
    return part10_bytes(make_instance(study_uid=generate_uid(), series_uid=generate_uid(),
                                      number=1, rows=rows, columns=columns))


def write_part10(folder: Path, raw: bytes, name: str = "received.dcm") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_bytes(raw)
    return path


def header_of_file(path: Path) -> InstanceHeader:
    with path.open("rb") as stream:
        start = dataset_offset(stream)
        end = stream.seek(0, os.SEEK_END)
        return parse_header_file(stream, start, end, split_part10(path.read_bytes())[0])


def fields(header: InstanceHeader) -> tuple[str | None, ...]:
    return (header.sop_class_uid, header.sop_instance_uid, header.transfer_syntax_uid,
            header.study_instance_uid, header.series_instance_uid, header.patient_id,
            header.accession_number, header.modality)


def files_under(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file())


def spool_files(spool: Spool) -> list[Path]:
    """Files in the spool proper (not in its incoming folder)."""
    return [p for p in files_under(spool.root) if p.parent != spool.incoming_dir]


def incoming_for(path: Path, raw: bytes, **changes: Any) -> Incoming:
    syntax, dataset = split_part10(raw)
    header = parse_header(dataset, syntax)
    values: dict[str, Any] = {
        "dataset": b"", "dataset_file": path, "transfer_syntax_uid": syntax,
        "sop_class_uid": header.sop_class_uid, "sop_instance_uid": header.sop_instance_uid,
        "calling_aet": "TEST_SCU", "called_aet": "DYNAMIC_DICOM_MW",
        "source_ip": "127.0.0.1",
    }
    values.update(changes)
    return Incoming(**values)


def pipeline(ledger: Ledger, spool: Spool) -> IngestPipeline:
    router = Router(RoutingSettings(mirror=[]), ENDPOINTS, load_book())
    return IngestPipeline(ledger, spool, router, lambda destinations: None)


def instance_count(ledger: Ledger) -> int:
    return ledger.diagnostics.count("instances")


class CountingReader:
    """A read-only stream that counts the bytes actually read from it."""

    def __init__(self, inner: BinaryIO) -> None:
        self._inner = inner
        self.bytes_read = 0

    def read(self, size: int = -1) -> bytes:
        data = self._inner.read(size)
        self.bytes_read += len(data)
        return data

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        return self._inner.seek(offset, whence)

    def tell(self) -> int:
        return self._inner.tell()


# -- parse_header_file ------------------------------------------------------------------


def test_header_from_the_file_equals_header_from_the_bytes(tmp_path: Path) -> None:
    raw = part10()
    syntax, dataset = split_part10(raw)

    from_file = header_of_file(write_part10(tmp_path, raw))
    from_bytes = parse_header(dataset, syntax)

    assert fields(from_file) == fields(from_bytes)
    assert from_file.patient_id == "DDE-TEST-1" and from_file.modality == "CT"
    assert from_file.dataset.Rows == 8


def test_a_file_cut_in_the_middle_of_the_pixel_data_is_broken(tmp_path: Path) -> None:
    raw = part10(rows=256, columns=256)  # 128 KiB of pixel data: skipped, not read
    path = write_part10(tmp_path, raw[: len(raw) - 1000])

    with pytest.raises(BrokenDataset, match="truncated"):
        header_of_file(path)


def test_a_small_file_cut_in_the_middle_of_the_pixel_data_is_broken(tmp_path: Path) -> None:
    raw = part10(rows=8, columns=8)  # 128 bytes of pixel data: read, below DEFER_SIZE
    path = write_part10(tmp_path, raw[: len(raw) - 10])

    with pytest.raises(BrokenDataset, match="truncated"):
        header_of_file(path)


def test_a_large_value_is_skipped_not_read(tmp_path: Path) -> None:
    raw = part10(rows=1024, columns=1024)  # 2 MiB of pixel data
    path = write_part10(tmp_path, raw)
    syntax = split_part10(raw)[0]

    with path.open("rb") as file:
        counting = CountingReader(cast(BinaryIO, file))
        stream = cast(BinaryIO, counting)
        start = dataset_offset(stream)
        end = stream.seek(0, os.SEEK_END)
        counting.bytes_read = 0
        header = parse_header_file(stream, start, end, syntax)

    assert header.sop_instance_uid
    assert len(raw) > 2 << 20
    assert counting.bytes_read < DEFER_SIZE, counting.bytes_read


def test_parse_header_file_starts_at_start() -> None:
    raw = part10()
    syntax, dataset = split_part10(raw)
    padded = b"JUNK" * 10 + dataset

    header = parse_header_file(io.BytesIO(padded), 40, 40 + len(dataset), syntax)

    assert fields(header) == fields(parse_header(dataset, syntax))


# -- ingest of a streamed dataset -------------------------------------------------------


def test_a_streamed_dataset_is_adopted_by_the_spool_and_committed(ledger: Ledger,
                                                                   spool: Spool) -> None:
    raw = part10()
    received = write_part10(spool.incoming_dir, raw)
    incoming = incoming_for(received, raw)

    result = pipeline(ledger, spool).ingest(incoming)

    assert result.status == dimse.SUCCESS, result.detail
    assert not received.exists()  # renamed into the spool, not copied
    (record,) = ledger.operators.where(incoming.sop_instance_uid)
    assert record.id == result.instance_id
    assert record.size == len(raw)
    syntax, dataset = split_part10(raw)
    assert record.study_instance_uid == parse_header(dataset, syntax).study_instance_uid
    assert [d.endpoint for d in record.deliveries] == ["ORTHANC1"]
    assert record.spool_path is not None
    assert spool_files(spool) == [spool.path_of(record.spool_path)]
    assert spool.path_of(record.spool_path).read_bytes() == raw
    assert spool.used_bytes == len(raw)


def test_a_streamed_dataset_cut_short_by_a_full_disk_is_refused(ledger: Ledger,
                                                                spool: Spool) -> None:
    raw = part10()
    received = write_part10(spool.incoming_dir, raw[: len(raw) // 2])
    incoming = incoming_for(received, raw, stream_error=OSError(errno.ENOSPC,
                                                                "No space left on device"))

    result = pipeline(ledger, spool).ingest(incoming)

    assert result.status == dimse.OUT_OF_RESOURCES
    assert result.reason == "spool_full"
    assert instance_count(ledger) == 0
    assert spool_files(spool) == []


def test_a_streamed_dataset_cut_short_by_another_error_is_refused(ledger: Ledger,
                                                                  spool: Spool) -> None:
    raw = part10()
    received = write_part10(spool.incoming_dir, raw)
    incoming = incoming_for(received, raw, stream_error=OSError(errno.EIO, "I/O error"))

    result = pipeline(ledger, spool).ingest(incoming)

    assert result.status == dimse.OUT_OF_RESOURCES
    assert result.reason == "spool_error"
    assert instance_count(ledger) == 0


def test_a_truncated_streamed_dataset_is_refused_and_not_adopted(ledger: Ledger,
                                                                 spool: Spool) -> None:
    raw = part10(rows=256, columns=256)
    received = write_part10(spool.incoming_dir, raw[:-1000])

    result = pipeline(ledger, spool).ingest(incoming_for(received, raw))

    assert result.status == dimse.CANNOT_UNDERSTAND
    assert instance_count(ledger) == 0
    assert spool_files(spool) == []


def test_a_streamed_file_that_is_not_part10_is_refused(ledger: Ledger, spool: Spool) -> None:
    raw = part10()
    received = write_part10(spool.incoming_dir, b"not a dicom file at all" * 10)

    result = pipeline(ledger, spool).ingest(incoming_for(received, raw))

    assert result.status == dimse.CANNOT_UNDERSTAND
    assert instance_count(ledger) == 0


# -- Spool.adopt, shared spools, partials -----------------------------------------------


def test_adopt_respects_max_bytes(tmp_path: Path) -> None:
    raw = part10()
    spool = Spool(tmp_path / "spool", max_bytes=len(raw) - 1)
    received = write_part10(spool.incoming_dir, raw)

    with pytest.raises(SpoolFull):
        spool.adopt(received)

    assert spool_files(spool) == []
    assert spool.used_bytes == 0
    assert received.read_bytes() == raw  # the caller still has it (pynetdicom removes it)


def test_adopt_within_max_bytes_counts_the_file(tmp_path: Path) -> None:
    raw = part10()
    spool = Spool(tmp_path / "spool", max_bytes=len(raw))

    spooled = spool.adopt(write_part10(spool.incoming_dir, raw))

    assert spooled.size == len(raw)
    assert spool.used_bytes == len(raw)
    assert spool.path_of(spooled.relative_path).read_bytes() == raw


def test_adopt_of_a_vanished_file_is_a_spool_error(spool: Spool) -> None:
    with pytest.raises(spool_module.SpoolError, match="vanished"):
        spool.adopt(spool.incoming_dir / "gone.dcm")


def test_a_shared_spool_notices_files_removed_by_another_spool(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(spool_module, "RECOUNT_SECONDS", 0.0)
    raw = part10()
    root = tmp_path / "spool"
    ours = Spool(root, max_bytes=len(raw) + 10, shared=True)
    theirs = Spool(root, max_bytes=len(raw) + 10, shared=True)
    first = theirs.adopt(write_part10(theirs.incoming_dir, raw, "a.dcm"))

    with pytest.raises(SpoolFull):  # ours counts the other process's file before refusing
        ours.adopt(write_part10(ours.incoming_dir, raw, "b.dcm"))
    theirs.remove(first.relative_path)

    assert ours.recount() == 0
    second = ours.adopt(ours.incoming_dir / "b.dcm")
    assert spool_files(ours) == [root / second.relative_path]
    assert theirs.used_bytes == len(raw)  # shared: counted from the files


def test_a_shared_spool_recounts_by_itself_before_refusing(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(spool_module, "RECOUNT_SECONDS", 0.0)
    raw = part10()
    root = tmp_path / "spool"
    ours = Spool(root, max_bytes=len(raw) + 10, shared=True)
    theirs = Spool(root, shared=True)
    first = theirs.adopt(write_part10(theirs.incoming_dir, raw, "a.dcm"))
    with pytest.raises(SpoolFull):
        ours.adopt(write_part10(ours.incoming_dir, raw, "b.dcm"))

    theirs.remove(first.relative_path)

    ours.adopt(ours.incoming_dir / "b.dcm")  # no explicit recount
    assert len(spool_files(ours)) == 1


def test_an_unshared_spool_keeps_its_own_count(tmp_path: Path) -> None:
    raw = part10()
    root = tmp_path / "spool"
    ours = Spool(root, max_bytes=len(raw) + 10)
    ours.adopt(write_part10(ours.incoming_dir, raw, "a.dcm"))
    other = Spool(root)
    for path in spool_files(other):
        path.unlink()

    assert ours.used_bytes == len(raw)  # not shared: it does not look again by itself
    assert ours.recount() == 0


def test_discard_partials_clears_the_incoming_folder(spool: Spool) -> None:
    raw = part10()
    kept = spool.adopt(write_part10(spool.incoming_dir, raw, "kept.dcm"))
    write_part10(spool.incoming_dir, raw[:100], "tmp1.dcm")
    write_part10(spool.incoming_dir, raw[:200], "tmp2.dcm")
    part = spool.path_of(kept.relative_path).with_name("crashed.part")
    part.write_bytes(raw[:50])

    removed = spool.discard_partials()

    assert removed == 3
    assert files_under(spool.root) == [spool.path_of(kept.relative_path)]


def test_incoming_files_are_not_counted_as_spool_bytes(tmp_path: Path) -> None:
    raw = part10()
    root = tmp_path / "spool"
    write_part10(root / spool_module.INCOMING, raw)

    assert Spool(root).used_bytes == 0
    assert Spool(root, shared=True).recount() == 0


# -- the engine's DatasetFile: a received dataset written as it arrives ----------------------


def test_a_dataset_file_writes_its_head_then_each_fragment(tmp_path: Path) -> None:
    file = DatasetFile(tmp_path / "d.dcm", b"HEAD")
    file.write(b"abc")
    file.write(memoryview(b"def"))
    file.close()

    assert file.path.read_bytes() == b"HEADabcdef"
    assert file.path.parent == tmp_path
    assert file.error is None
    assert oct(file.path.stat().st_mode & 0o777) == oct(0o600)


def test_a_write_error_is_remembered_and_later_writes_are_dropped(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    file = DatasetFile(tmp_path / "d.dcm", b"first")
    attempts: list[int] = []

    def failing_write(fd: int, data: Any) -> int:
        attempts.append(len(data))
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(acceptor_module.os, "write", failing_write)
    file.write(b"second")
    file.write(b"third")
    monkeypatch.undo()
    file.close()

    assert attempts == [len(b"second")]  # after the first failure nothing is written
    assert isinstance(file.error, OSError) and file.error.errno == errno.ENOSPC
    assert file.path.read_bytes() == b"first"


def test_a_discarded_dataset_file_is_gone(tmp_path: Path) -> None:
    file = DatasetFile(tmp_path / "d.dcm", b"HEAD")
    file.write(b"partial")
    file.discard()

    assert not file.path.exists()
    assert list(tmp_path.iterdir()) == []
