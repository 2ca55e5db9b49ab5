"""A typo in the configuration never refuses a C-STORE.

``routing.strategy: least-laoded`` was once accepted by the configuration, and then every new
study was refused with 0xA700 inside the ingest transaction. Now the strategy is a closed
set validated when the file is read: the running router (its main process and its receiver
processes) refuses the changed file, keeps the configuration it runs with, logs why, and
goes on storing.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from tests.support.datagen import write_studies
from tests.support.fixtures import OrthancFactory
from tests.support.orthanc import free_port, storescu, wait_until
from tests.support.router import (
    ROUTER_AET,
    RouterProcess,
    router_settings,
    stop_process_quietly,
    write_router_home,
)

pytestmark = [pytest.mark.integration]

REFUSED = "configuration change refused"


def test_a_strategy_typo_is_refused_and_storing_goes_on(orthanc_factory: OrthancFactory,
                                                       tmp_path: Path) -> None:
    storage1, storage2 = orthanc_factory("ORTHANC1"), orthanc_factory("ORTHANC2")
    probe = orthanc_factory("ORTHANC-PROBE")
    home, port = tmp_path / "home", free_port()
    write_router_home(home, router_settings([storage1, storage2], probe, port=port))
    router = RouterProcess(home, port, tmp_path / "router.log")
    router.start()
    try:
        config = home / "dde.yaml"
        text = config.read_text()
        assert "strategy: least-loaded" in text
        config.write_text(text.replace("strategy: least-loaded", "strategy: least-laoded"))
        # both the main process and the receiver process see the change and refuse it
        wait_until(lambda: router.log_path.read_text(errors="replace").count(REFUSED) >= 2,
                   20.0, "the typo refused by the main and the receiver process")
        assert "least-laoded" in router.log_path.read_text(errors="replace")

        files = [f for paths in write_studies(tmp_path / "files", 3, 2, rows=16,
                                              columns=16).values() for f in paths]
        result = storescu(files, port, ROUTER_AET, "-v")

        assert result.stderr.count("Received Store Response (Success)") == len(files)
        router.wait_idle()
        assert storage1.count() + storage2.count() == len(files)
        assert probe.count() == len(files)
    finally:
        stop_process_quietly(router)
