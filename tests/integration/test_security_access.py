"""Receiver allow-lists against DCMTK's echoscu and storescu: an allowed AE is served, a
refused one gets an A-ASSOCIATE-RJ with the standard reason, and the router logs which rule
refused it."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from tests.support.datagen import write_series
from tests.support.faults import sop_instance_uids
from tests.support.fixtures import OrthancFactory
from tests.support.orthanc import ECHOSCU, STORESCU, wait_until
from tests.support.router import ROUTER_AET, InProcessRouter, router_settings, start_router

pytestmark = pytest.mark.integration


def echoscu(port: int, calling: str = "TEST_SCU",
            called: str = ROUTER_AET) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [ECHOSCU, "-v", "-aet", calling, "-aec", called, "127.0.0.1", str(port)],
        env={**os.environ, "TCP_NODELAY": "1"}, capture_output=True, text=True, timeout=60,
        check=False,
    )


@pytest.fixture
def router(tmp_path: Path) -> Iterator[Any]:
    started: list[InProcessRouter] = []

    def start(**receiver: Any) -> InProcessRouter:
        settings = router_settings([], None, receiver=receiver)
        running = start_router(tmp_path / f"router-{len(started)}", settings)
        started.append(running)
        return running

    yield start
    for running in started:
        running.stop()


def refusal_lines(capfd: pytest.CaptureFixture[str]) -> list[str]:
    """The router's "association refused" log lines so far (the receiver process logs to
    the stderr it shares with the test)."""
    return [line for line in capfd.readouterr().err.splitlines()
            if "association refused" in line]


def test_allowed_calling_aet_is_served_and_others_rejected(
        router: Any, capfd: pytest.CaptureFixture[str]) -> None:
    running = router(allowed_calling_aets=["MODALITY_?", "WS*"])
    assert echoscu(running.port, "MODALITY_1").returncode == 0
    assert echoscu(running.port, "WS_READING").returncode == 0
    assert refusal_lines(capfd) == []
    refused = echoscu(running.port, "INTRUDER")
    assert refused.returncode != 0
    output = refused.stdout + refused.stderr
    assert "Association Rejected" in output, output
    assert "Calling AE Title Not Recognized" in output, output
    assert "Rejected Permanent" in output, output
    lines = wait_until(lambda: refusal_lines(capfd), 10, "the refusal logged")
    assert len(lines) == 1, lines
    assert "allowed_calling_aets" in lines[0] and "INTRUDER" in lines[0]


def test_source_ip_allow_list(router: Any, capfd: pytest.CaptureFixture[str]) -> None:
    allowed = router(allowed_source_ips=["10.0.0.0/8", "127.0.0.0/8"])
    assert echoscu(allowed.port).returncode == 0
    refusing = router(allowed_source_ips=["192.0.2.0/24", "2001:db8::/32"])
    refused = echoscu(refusing.port)
    assert refused.returncode != 0
    output = refused.stdout + refused.stderr
    assert "Association Rejected" in output and "No Reason" in output, output
    lines = wait_until(lambda: refusal_lines(capfd), 10, "the refusal logged")
    assert any("allowed_source_ips" in line and "127.0.0.1" in line for line in lines), lines


def test_require_called_aet(router: Any) -> None:
    lenient = router()
    assert echoscu(lenient.port, called="ANY_NAME").returncode == 0
    strict = router(require_called_aet=True)
    assert echoscu(strict.port, called=ROUTER_AET).returncode == 0
    refused = echoscu(strict.port, called="ANY_NAME")
    assert refused.returncode != 0
    output = refused.stdout + refused.stderr
    assert "Called AE Title Not Recognized" in output, output


def test_storescu_allowed_delivers_refused_stores_nothing(
        orthanc_factory: OrthancFactory, tmp_path: Path) -> None:
    storage = orthanc_factory("ORTHANC1")
    settings = router_settings([storage], None, receiver={"allowed_calling_aets": ["CT_*"]})
    running = start_router(tmp_path / "router", settings)
    try:
        files = write_series(tmp_path / "series", 3)
        env = {**os.environ, "TCP_NODELAY": "1"}

        def send(calling: str) -> subprocess.CompletedProcess[str]:
            return subprocess.run(
                [STORESCU, "-v", "-aet", calling, "-aec", ROUTER_AET, "127.0.0.1",
                 str(running.port), *(str(f) for f in files)],
                env=env, capture_output=True, text=True, timeout=60, check=False)

        refused = send("OTHER")
        assert refused.returncode != 0
        assert "Calling AE Title Not Recognized" in refused.stdout + refused.stderr
        assert running.ledger.diagnostics.count("instances") == 0
        accepted = send("CT_SCANNER")
        assert accepted.returncode == 0, accepted.stdout + accepted.stderr
        expected = set(sop_instance_uids(files))
        wait_until(lambda: storage.sop_instance_uids() >= expected, 60, "delivered")
    finally:
        running.stop()
