"""A large instance goes through the router streamed: received to the spool as it arrives,
sent from the spool in bounded steps, never held whole in memory by any router process.

A 256 MiB multi-frame instance (generated on the fly) is sent with DCMTK's storescu to
``dde serve`` in front of a real storage Orthanc and probe; the peak resident memory
(VmHWM) of the main process and of the receiver process may grow by far less than the
instance's size."""

from __future__ import annotations

from pathlib import Path

import pytest
from tests.support.fixtures import OrthancFactory
from tests.support.orthanc import free_port, storescu, wait_until
from tests.support.router import (
    ROUTER_AET,
    RouterProcess,
    router_settings,
    write_router_home,
)

from dde.synthetic import write_large_instance

pytestmark = [pytest.mark.integration, pytest.mark.slow]

INSTANCE_MIB = 256
ALLOWED_GROWTH_MIB = 64


def peak_rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise AssertionError(f"no VmHWM for {pid}")


def test_a_large_instance_is_streamed_through_not_held_in_memory(
        orthanc_factory: OrthancFactory, tmp_path: Path) -> None:
    storage = orthanc_factory("ORTHANC1")
    probe = orthanc_factory("ORTHANC-PROBE")
    instance = tmp_path / "large.dcm"
    write_large_instance(instance, INSTANCE_MIB)
    port = free_port()
    home = tmp_path / "home"
    write_router_home(home, router_settings([storage], probe, port=port))
    router = RouterProcess(home, port, tmp_path / "router.log")
    router.start()
    try:
        assert router.process is not None
        main = router.process.pid
        (receiver,) = router.receiver_pids()
        before = {pid: peak_rss_mib(pid) for pid in (main, receiver)}

        storescu([instance], port, ROUTER_AET, timeout=300)
        wait_until(lambda: storage.count() == 1 and probe.count() == 1, 300,
                   "the large instance in storage and probe")

        growth = {pid: peak_rss_mib(pid) - before[pid] for pid in (main, receiver)}
        print(f"\n{INSTANCE_MIB} MiB instance: peak RSS growth main "
              f"{growth[main]:.0f} MiB, receiver {growth[receiver]:.0f} MiB")
        assert growth[receiver] < ALLOWED_GROWTH_MIB, growth
        assert growth[main] < ALLOWED_GROWTH_MIB, growth
    finally:
        router.terminate()
