"""Issue 14, DICOMweb out, against a real Orthanc with Debian's DICOMweb plugin: a router
process, an endpoint of kind ``dicomweb`` added live with ``dde endpoints add``, DCMTK's
storescu sending to the router, STOW-RS to Orthanc with a bearer token Orthanc checks.

The partial failure is Orthanc's own: its STOW-RS refuses an instance without Series Instance
UID (Failure Reason 0xC000, "cannot understand") and stores the others of the request.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pydicom
import pytest
from tests.support.datagen import write_series
from tests.support.fixtures import OrthancFactory
from tests.support.orthanc import RunningOrthanc, dicomweb_config, free_port, storescu
from tests.support.router import RouterProcess, router_settings, wait_for, write_router_home

from dde.store.ledger import Ledger

pytestmark = pytest.mark.integration

TOKEN = "dw-token-5b1e0c9a7d3f42e8"
ROUTER_AET = "DYNAMIC_DICOM_MW"
BEARER_FILTER = """
function IncomingHttpRequestFilter(method, uri, ip, username, httpHeaders)
   if string.sub(uri, 1, 10) == '/dicom-web' then
      return httpHeaders['authorization'] == 'Bearer %s'
   end
   return true
end
"""
"""Orthanc's own check of the bearer token on its DICOMweb API (403 without it)."""


def dde(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "dde", "--home", str(home), *args],
                          capture_output=True, text=True, timeout=60)


def dicomweb_orthanc(orthanc_factory: OrthancFactory, folder: Path) -> RunningOrthanc:
    script = folder / "bearer.lua"
    folder.mkdir(parents=True, exist_ok=True)
    script.write_text(BEARER_FILTER % TOKEN)
    return orthanc_factory("DICOMWEB1", extra={**dicomweb_config(),
                                               "LuaScripts": [str(script)]})


def listed(home: Path) -> list[dict[str, Any]]:
    result = dde(home, "endpoints", "list", "--json")
    assert result.returncode == 0, result.stderr
    rows: list[dict[str, Any]] = json.loads(result.stdout)
    return rows


def test_a_live_dicomweb_endpoint_gets_the_study_by_stow_rs_and_a_refusal_fails_alone(
        orthanc_factory: OrthancFactory, tmp_path: Path) -> None:
    orthanc = dicomweb_orthanc(orthanc_factory, tmp_path / "lua")
    service_root = f"{orthanc.url}/dicom-web"
    assert httpx.get(f"{service_root}/studies", trust_env=False).status_code == 403

    token_file = tmp_path / "secrets" / "stow-token"
    token_file.parent.mkdir()
    token_file.write_text(TOKEN + "\n")
    token_file.chmod(0o600)
    home, port = tmp_path / "home", free_port()
    write_router_home(home, router_settings(
        [], None, port=port, health={"interval_seconds": 0.3, "probe_timeout_seconds": 2.0}))
    router = RouterProcess(home, port, tmp_path / "router.log")
    router.start()
    try:
        added = dde(home, "endpoints", "add", "WEB1", "--kind", "dicomweb",
                    "--url", service_root, "--group", "storage",
                    "--token-file", str(token_file))
        assert added.returncode == 0, added.stderr
        wait_for(lambda: any(r["name"] == "WEB1" and r["health"] == "up"
                             for r in listed(home)), 15.0, "WEB1 live and up")

        files = write_series(tmp_path / "study", 6, rows=32, columns=32)
        refused = pydicom.dcmread(files[2])
        del refused.SeriesInstanceUID  # Orthanc's STOW-RS: 0xC000, cannot understand
        refused.save_as(files[2])
        uids = {str(pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID)
                for f in files}
        refused_uid = str(refused.SOPInstanceUID)

        storescu(files, port, ROUTER_AET)
        router.wait_idle(60.0)

        assert orthanc.sop_instance_uids() == uids - {refused_uid}
        ledger = Ledger(home / "dde.sqlite3")
        try:
            rows = ledger.diagnostics.deliveries()
        finally:
            ledger.close()
        by_uid = {r.sop_instance_uid: r for r in rows}
        assert set(by_uid) == uids
        assert all(by_uid[u].state == "delivered" for u in uids - {refused_uid})
        assert by_uid[refused_uid].state == "failed"
        assert by_uid[refused_uid].last_error == "STOW-RS failure 0xC000 (Cannot understand)"
        assert by_uid[refused_uid].attempts == 1  # refused for good: not retried

        listing = dde(home, "endpoints", "list", "--json").stdout
        assert '"dicomweb"' in listing and TOKEN not in listing
        assert TOKEN not in router.log_path.read_text()
        config = (home / "dde.yaml").read_text()
        assert str(token_file) in config and TOKEN not in config
    finally:
        router.terminate()
