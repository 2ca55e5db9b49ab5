"""Disk full on the spool: the router answers 0xA700 (never a success for what it did not
write), queues nothing for the refused instances, and takes them again by itself once the
destinations are back and the delivered files have left the spool.

Two ways to fill it: the configured cap (``spool.max_bytes``) and a real 512 KiB tmpfs
mounted on the spool folder (the write itself fails with ENOSPC)."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from tests.support.datagen import write_series
from tests.support.faults import ledger_sop_instance_uids, sop_instance_uids, start_storescu
from tests.support.fixtures import OrthancFactory
from tests.support.orthanc import RunningOrthanc, wait_until
from tests.support.router import ROUTER_AET, InProcessRouter, router_settings, start_router

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def _send(files: list[Path], router: InProcessRouter, log: Path) -> tuple[list[Path], str]:
    """Send with storescu; the files it got Success for, and its log."""
    run = start_storescu(files, router.port, ROUTER_AET, log)
    try:
        run.wait(60)
    finally:
        run.stop()
    return run.acknowledged(), run.log()


def _run_disk_full(router: InProcessRouter, storage: RunningOrthanc, probe: RunningOrthanc,
                   files: list[Path], tmp_path: Path, label: str) -> dict[str, Any]:
    uids = sop_instance_uids(files)
    storage.stop()
    probe.stop()

    acknowledged, log = _send(files, router, tmp_path / "storescu-1.log")
    refused = [f for f in files if f not in acknowledged]
    assert acknowledged, "the spool took nothing at all"
    assert refused, "the spool never filled up"
    # DCMTK storescu stops at the first "Refused" status; the files after it stay unsent.
    assert "Received Store Response (Refused: OutOfResources)" in log, log[-2000:]
    # Nothing is queued for a refused instance; everything acknowledged is.
    acknowledged_uids = {u for u, p in uids.items() if p in acknowledged}
    assert ledger_sop_instance_uids(router.ledger) == acknowledged_uids
    # Still full: a retry while the destinations are down is refused again.
    again, _ = _send(refused[:1], router, tmp_path / "storescu-2.log")
    assert again == []

    storage.start_again()
    probe.start_again()
    back = time.monotonic()
    router.wait_idle(60)
    spool = router.app.spool
    wait_until(lambda: spool.used_bytes == 0, 20, "delivered files removed from the spool")
    drained = time.monotonic() - back

    # Send the refused ones again; when they are more than the spool holds, round by round
    # (each round fills it, drains, and is taken again: recovery repeats by itself).
    remaining = refused
    recovered: float | None = None
    for round_number in range(len(refused)):
        later, _ = _send(remaining, router, tmp_path / f"storescu-again-{round_number}.log")
        if recovered is None:
            recovered = time.monotonic() - back
        assert later, "the router did not take the refused instances again"
        remaining = [f for f in remaining if f not in later]
        router.wait_idle(60)
        wait_until(lambda: spool.used_bytes == 0, 20, "delivered files removed from the spool")
        if not remaining:
            break
    assert not remaining and recovered is not None
    all_uids = set(uids)
    storage.wait_for_sop_instance_uids(all_uids, timeout=20)
    probe.wait_for_sop_instance_uids(all_uids, timeout=20)
    lost = all_uids - (storage.sop_instance_uids() & probe.sop_instance_uids())
    figures = {"acknowledged": len(acknowledged), "refused or unsent": len(refused),
               "delivered": len(all_uids - lost), "lost": len(lost),
               "drained after destinations back (s)": round(drained, 1),
               "accepting again after (s)": round(recovered, 1),
               "rounds to resend": round_number + 1}
    print(f"\n{label}: {figures}")
    assert not lost
    return figures


def test_spool_cap_answers_out_of_resources_and_recovers_when_space_returns(
    orthanc_factory: OrthancFactory, tmp_path: Path
) -> None:
    storage = orthanc_factory("ORTHANC1")
    probe = orthanc_factory("ORTHANC-PROBE")
    files = write_series(tmp_path / "files", 10)
    largest = max(f.stat().st_size for f in files)
    cap = 4 * largest + largest // 2  # room for four instances, not five
    router = start_router(tmp_path / "router-home", router_settings(
        [storage], probe, spool={"max_bytes": cap, "min_free_bytes": 0}))
    try:
        figures = _run_disk_full(router, storage, probe, files, tmp_path, "spool.max_bytes")
        assert figures["acknowledged"] == 4
    finally:
        router.stop()


@contextmanager
def _tmpfs(folder: Path, size: str) -> Iterator[None]:
    folder.mkdir(parents=True, exist_ok=True)
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs",
                              str(folder)], capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    try:
        yield
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=False)


def test_a_real_full_file_system_answers_out_of_resources_and_recovers(
    orthanc_factory: OrthancFactory, tmp_path: Path
) -> None:
    storage = orthanc_factory("ORTHANC1")
    probe = orthanc_factory("ORTHANC-PROBE")
    files = write_series(tmp_path / "files", 16, rows=256, columns=256)  # ~130 KB each
    home = tmp_path / "router-home"
    with _tmpfs(home / "spool", "512k"):
        # no cap and no free-space floor: the write itself meets ENOSPC
        router = start_router(home, router_settings(
            [storage], probe, spool={"max_bytes": 0, "min_free_bytes": 0}))
        try:
            _run_disk_full(router, storage, probe, files, tmp_path, "tmpfs ENOSPC")
            leftovers = list((home / "spool").glob("*/*.part"))
            assert leftovers == [], "a refused write left a .part file"
        finally:
            router.stop()
