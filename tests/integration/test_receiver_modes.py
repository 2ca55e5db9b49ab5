"""Receiving in the main process (``receiver.processes: 0``) and in several receiver
processes on one port (``SO_REUSEPORT``) both deliver every instance (at least once, to
exactly one storage)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
from tests.support.datagen import write_studies
from tests.support.faults import sop_instance_uids
from tests.support.fixtures import OrthancFactory
from tests.support.orthanc import STORESCU
from tests.support.router import ROUTER_AET, router_settings, start_router

from dde.receiving.pool import ReceiverPool

pytestmark = pytest.mark.integration


@pytest.mark.parametrize("processes", [0, 2])
def test_every_instance_is_delivered_once_whatever_the_receiver_processes(
        processes: int, orthanc_factory: OrthancFactory, tmp_path: Path) -> None:
    storage1 = orthanc_factory("ORTHANC1")
    storage2 = orthanc_factory("ORTHANC2")
    probe = orthanc_factory("ORTHANC-PROBE")
    router = start_router(tmp_path / "home", router_settings(
        [storage1, storage2], probe, receiver={"processes": processes}))
    try:
        receiver = router.app.receiver
        assert (receiver.processes if isinstance(receiver, ReceiverPool) else 0) == processes
        studies = write_studies(tmp_path / "files", 4, 6)
        senders = [subprocess.Popen(
            [STORESCU, "-aet", f"SENDER{n}", "-aec", ROUTER_AET, "127.0.0.1",
             str(router.port), *map(str, files)],
            env={**os.environ, "TCP_NODELAY": "1"}, stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE) for n, files in enumerate(studies.values())]
        for sender in senders:
            assert sender.wait(60) == 0, sender.stderr.read() if sender.stderr else ""
        router.wait_idle(60)
        uids = set(sop_instance_uids([f for files in studies.values() for f in files]))
        held = [storage1.sop_instance_uids(), storage2.sop_instance_uids()]
        assert all(sum(uid in h for h in held) == 1 for uid in uids)
        assert probe.sop_instance_uids() >= uids
        for files in studies.values():  # each study stays together
            study = set(sop_instance_uids(files))
            assert study <= held[0] or study <= held[1]
    finally:
        router.stop()
