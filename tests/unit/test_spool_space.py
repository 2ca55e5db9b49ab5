"""The spool's space limits: a byte cap, a free-space floor and ENOSPC, each a 0xA700."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest
from tests.unit.test_ingest import Committed, assert_nothing_left, generated, pipeline

from dde.dicom import status as dimse
from dde.store.ledger import Ledger
from dde.store.spool import Spool, SpoolFull

META = b"M" * 100


def _statvfs(free_bytes: int) -> os.statvfs_result:
    # f_bsize, f_frsize, f_blocks, f_bfree, f_bavail, f_files, f_ffree, f_favail, f_flag,
    # f_namemax
    return os.statvfs_result((4096, 1, 10**12, free_bytes, free_bytes, 0, 0, 0, 0, 255))


def test_the_cap_refuses_the_write_that_would_exceed_it_and_lifts_after_removal(
        tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool", max_bytes=1000)
    first = spool.write(META, b"x" * 300)
    second = spool.write(META, b"x" * 300)
    assert spool.used_bytes == 800
    with pytest.raises(SpoolFull, match="max_bytes"):
        spool.write(META, b"x" * 300)
    assert spool.used_bytes == 800
    assert sorted(p.name for p in spool.root.glob("*/*")) == sorted(
        Path(f.relative_path).name for f in (first, second))  # no .part left behind

    spool.remove(first.relative_path)
    assert spool.used_bytes == 400
    spool.write(META, b"x" * 300)
    assert spool.used_bytes == 800


def test_the_running_total_is_counted_from_the_files_at_start(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool")
    spool.write(META, b"x" * 400)
    spool.write(META, b"x" * 400)
    (spool.root / "ab").mkdir(exist_ok=True)
    (spool.root / "ab" / "leftover.part").write_bytes(b"p" * 999)  # never counted

    again = Spool(tmp_path / "spool", max_bytes=1200)
    assert again.used_bytes == 1000
    with pytest.raises(SpoolFull):
        again.write(META, b"x" * 150)
    again.write(META, b"x" * 100)


def test_removing_a_file_twice_releases_its_bytes_once(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool")
    kept = spool.write(META, b"k" * 50)
    gone = spool.write(META, b"g" * 50)
    spool.remove(gone.relative_path)
    spool.remove(gone.relative_path)
    assert spool.used_bytes == kept.size


def test_the_free_space_floor_is_checked_with_statvfs(tmp_path: Path) -> None:
    free = {"bytes": 10_000}
    spool = Spool(tmp_path / "spool", min_free_bytes=5_000,
                  statvfs=lambda _path: _statvfs(free["bytes"]))
    spool.write(META, b"x" * 4_000)  # 10 000 - 4 100 = 5 900 left: fine
    free["bytes"] = 5_900
    with pytest.raises(SpoolFull, match="min_free_bytes"):
        spool.write(META, b"x" * 1_000)
    free["bytes"] = 50_000  # space came back
    spool.write(META, b"x" * 1_000)


def test_enospc_from_the_write_itself_is_spool_full_and_leaves_nothing(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    spool = Spool(tmp_path / "spool")
    real_write = os.write

    def no_space(fd: int, data: bytes | memoryview) -> int:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "write", no_space)
    with pytest.raises(SpoolFull, match="No space left"):
        spool.write(META, b"x" * 10)
    monkeypatch.setattr(os, "write", real_write)
    assert list(spool.root.glob("*/*")) == []
    assert spool.used_bytes == 0


def test_a_full_spool_answers_out_of_resources_and_queues_nothing(
        ledger: Ledger, tmp_path: Path) -> None:
    committed = Committed()
    spool = Spool(tmp_path / "capped", max_bytes=10)

    result = pipeline(ledger, spool, on_committed=committed).ingest(generated().incoming())

    assert result.status == dimse.OUT_OF_RESOURCES
    assert result.reason == "spool_full"
    assert_nothing_left(ledger, spool)
    assert committed.calls == []
