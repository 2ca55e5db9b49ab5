"""The ``dde`` command as a user runs it (a child process), against a live reference stack:
``dde send``, ``dde where`` and ``dde queue``."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from pydicom import dcmread
from pydicom.data import get_testdata_file
from tests.support.datagen import write_series
from tests.support.fixtures import ReferenceStack
from tests.support.orthanc import free_port, storescu, wait_until
from tests.support.router import ROUTER_AET

pytestmark = pytest.mark.integration


def dde(*args: str, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
    """Run ``python -m dde ARGS`` as a user would, output not to a terminal (80 columns)."""
    env = {**os.environ, "COLUMNS": "80", "TCP_NODELAY": "1"}
    env.pop("DDE_HOME", None)
    return subprocess.run([sys.executable, "-m", "dde", *args], capture_output=True, text=True,
                          timeout=timeout, env=env, check=False)


def no_traceback(result: subprocess.CompletedProcess[str]) -> None:
    assert "Traceback" not in result.stderr + result.stdout, result.stderr[-3000:]


def uid_of(path: Path) -> str:
    return str(dcmread(path, stop_before_pixels=True).SOPInstanceUID)


def nested_folder(root: Path) -> list[Path]:
    """A folder tree with DICOM files at three depths, one of them compressed."""
    files = write_series(root / "study", 2, prefix="top")
    files += write_series(root / "study" / "series-a" / "deeper", 3, prefix="deep")
    compressed = get_testdata_file("SC_rgb_jpeg_gdcm.dcm", download=False)
    assert compressed is not None
    target = root / "study" / "series-a" / "jpeg-lossless.dcm"
    shutil.copyfile(str(compressed), target)
    return [*files, target]


def test_send_folder_recursively_exits_0_and_prints_a_summary(
    reference_stack: ReferenceStack, tmp_path: Path
) -> None:
    files = nested_folder(tmp_path / "in")
    result = dde("send", str(tmp_path / "in"), "--port", str(reference_stack.router.port))
    no_traceback(result)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"{len(files)} sent, 0 failed" in result.stdout, result.stdout

    reference_stack.router.wait_idle()
    uids = {uid_of(f) for f in files}
    reference_stack.probe.wait_for_sop_instance_uids(uids)
    held = [o.sop_instance_uids() for o in reference_stack.storages]
    assert uids <= held[0] | held[1]


def test_send_with_a_non_dicom_file_exits_1_and_names_it(
    reference_stack: ReferenceStack, tmp_path: Path
) -> None:
    files = nested_folder(tmp_path / "in")
    bad = tmp_path / "in" / "study" / "series-a" / "notes-from-the-technician.txt"
    bad.write_text("not DICOM at all\n")
    result = dde("send", str(tmp_path / "in"), "--port", str(reference_stack.router.port))
    no_traceback(result)
    assert result.returncode == 1, result.stdout + result.stderr
    # the whole path on one line, even when stdout is not a terminal: a script can grep it
    assert str(bad) in result.stdout, result.stdout
    failed_lines = [line for line in result.stdout.splitlines() if str(bad) in line]
    assert "not a DICOM" in failed_lines[0], result.stdout
    assert f"{len(files)} sent, 1 failed" in result.stdout, result.stdout
    reference_stack.router.wait_idle()
    assert reference_stack.probe.count() == len(files)


def test_send_to_a_port_where_nothing_listens_fails_cleanly(tmp_path: Path) -> None:
    files = write_series(tmp_path / "in", 3)
    port = free_port()  # bound and released: nothing listens there
    result = dde("send", str(tmp_path / "in"), "--port", str(port), timeout=60)
    no_traceback(result)
    assert result.returncode != 0
    output = result.stdout + result.stderr
    assert "connection refused" in output or "unreachable" in output, output
    assert f"0 sent, {len(files)} failed" in result.stdout, output


def where(home: Path, uid: str) -> dict[str, Any]:
    result = dde("--home", str(home), "where", uid, "--json")
    no_traceback(result)
    assert result.returncode == 0, result.stdout + result.stderr
    document: dict[str, Any] = json.loads(result.stdout)
    return document


def test_where_json_shows_both_deliveries_delivered_at_the_first_attempt_and_the_rule(
    reference_stack: ReferenceStack, tmp_path: Path
) -> None:
    files = write_series(tmp_path / "in", 2)
    storescu(files, reference_stack.router.port, ROUTER_AET)
    reference_stack.router.wait_idle()
    home = reference_stack.router.home.root
    uid = uid_of(files[0])
    holder = next(o.name for o in reference_stack.storages if uid in o.sop_instance_uids())

    document = where(home, uid)
    assert document["sop_instance_uid"] == uid
    assert document["calling_aet"] == "TEST_SCU"
    assert document["called_aet"] == ROUTER_AET
    assert document["rule"] == "default"
    assert document["receptions"] == 1
    deliveries = sorted((d["endpoint"], d["role"], d["state"], d["attempts"])
                        for d in document["deliveries"])
    assert deliveries == sorted([(holder, "route", "delivered", 1),
                                 ("ORTHANC-PROBE", "mirror", "delivered", 1)])
    assert all(d["delivered_at"] and d["last_error"] is None for d in document["deliveries"])

    unknown = dde("--home", str(home), "where", "1.2.3.4.5.6.7.8.9", "--json")
    no_traceback(unknown)
    assert unknown.returncode == 1
    assert unknown.stderr.startswith("dde: error: no instance"), unknown.stderr


def queue(home: Path) -> dict[str, Any]:
    result = dde("--home", str(home), "queue", "--json")
    no_traceback(result)
    assert result.returncode == 0, result.stdout + result.stderr
    document: dict[str, Any] = json.loads(result.stdout)
    return document


def test_queue_json_shows_what_waits_for_a_stopped_probe_and_then_nothing(
    reference_stack: ReferenceStack, tmp_path: Path
) -> None:
    home = reference_stack.router.home.root
    reference_stack.probe.stop()
    files = write_series(tmp_path / "in", 2)
    storescu(files, reference_stack.router.port, ROUTER_AET)
    uids = {uid_of(f) for f in files}

    def waiting_with_a_reason() -> dict[str, Any] | None:
        document = queue(home)
        entries = document["deliveries"]
        ready = len(entries) == 2 and all(e["last_error"] for e in entries)
        return document if ready else None

    waiting = wait_until(waiting_with_a_reason, 30, "probe deliveries pending with a reason")
    assert waiting is not None
    document = waiting
    entries = document["deliveries"]
    assert {e["endpoint"] for e in entries} == {"ORTHANC-PROBE"}
    assert {e["state"] for e in entries} == {"pending"}
    assert {e["sop_instance_uid"] for e in entries} == uids
    assert document["counts"]["ORTHANC-PROBE"].get("pending") == 2

    def storages_delivered() -> int:
        counts = queue(home)["counts"]
        return sum(c.get("delivered", 0) for name, c in counts.items() if name != "ORTHANC-PROBE")

    # a dead probe never holds up the storage deliveries
    wait_until(lambda: storages_delivered() == 2, 30, "storage deliveries done")

    reference_stack.probe.start_again()
    reference_stack.router.wait_idle()
    document = queue(home)
    assert document["deliveries"] == []
    assert document["counts"]["ORTHANC-PROBE"] == {"delivered": 2}
