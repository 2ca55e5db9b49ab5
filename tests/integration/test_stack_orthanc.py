"""Real Orthanc processes: one started by the test fixture, and the stack's three."""

from __future__ import annotations

import os
import signal
import socket
import struct
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pydicom
import pytest
import yaml
from pydicom.data import get_testdata_file
from tests.support.fixtures import OrthancFactory
from tests.support.orthanc import free_port, storescu, wait_until

from dde.config import Home, Settings, load_settings
from dde.stack import supervisor
from dde.stack.errors import StackError
from dde.stack.layout import stack_orthancs
from dde.stack.process import proc_cmdline

pytestmark = pytest.mark.integration

ORTHANCS = ["ORTHANC1", "ORTHANC2", "ORTHANC-PROBE"]


def dataset_bytes(data: bytes) -> bytes:
    """A DICOM file's bytes after its file meta information (which each writer sets).

    The file meta starts at 132 with (0002,0000) UL, whose value is the length of the rest.
    """
    assert data[128:132] == b"DICM" and data[132:138] == b"\x02\x00\x00\x00UL"
    (group_length,) = struct.unpack("<I", data[140:144])
    return data[144 + group_length:]


@pytest.fixture
def ct_small(tmp_path: Path) -> Path:
    """CT_small.dcm without its trailing padding, which storescu does not send."""
    source = get_testdata_file("CT_small.dcm", download=False)
    assert source is not None
    dataset = pydicom.dcmread(source)
    del dataset[0xFFFCFFFC]
    path = tmp_path / "ct_small.dcm"
    dataset.save_as(path, enforce_file_format=True)
    return path


def test_storescu_to_a_real_orthanc_keeps_the_bytes(
    orthanc_factory: OrthancFactory, ct_small: Path
) -> None:
    orthanc = orthanc_factory("ORTHANC1")
    assert orthanc.system()["DicomAet"] == "ORTHANC1"
    uid = pydicom.dcmread(ct_small).SOPInstanceUID

    storescu([ct_small], orthanc.dicom_port, orthanc.aet)

    orthanc.wait_for_count(1)
    assert orthanc.sop_instance_uids() == {uid}
    assert len(orthanc.instances()) == 1
    assert dataset_bytes(orthanc.file_bytes(uid)) == dataset_bytes(ct_small.read_bytes())

    orthanc.stop()
    orthanc.start_again()
    assert orthanc.count() == 1  # same storage, same ports

    orthanc.delete_instance(uid)
    assert orthanc.count() == 0


@pytest.fixture
def stack_home(tmp_path: Path) -> Iterator[tuple[Home, Settings]]:
    """A state folder whose stack Orthancs (and router port) are on free ports: each one
    described once, as an endpoint, that its stack.orthancs entry names."""
    home = Home(tmp_path / "home")
    home.ensure()
    endpoints = [
        {"name": name, "aet": name, "port": free_port(), "url": f"http://127.0.0.1:{free_port()}",
         "groups": ["probe" if name == "ORTHANC-PROBE" else "storage"]}
        for name in ORTHANCS
    ]
    orthancs = [
        {"endpoint": name, "config_file": file}
        for name, file in zip(
            ORTHANCS, ["orthanc_storage_1.json", "orthanc_storage_2.json", "orthanc_probe.json"],
            strict=True,
        )
    ]
    home.config_file.write_text(yaml.safe_dump(
        {"receiver": {"port": free_port()}, "endpoints": endpoints,
         "stack": {"orthancs": orthancs}}
    ))
    settings = load_settings(home)
    yield home, settings
    supervisor.down(home, settings)


def test_stack_up_status_down(stack_home: tuple[Home, Settings]) -> None:
    home, settings = stack_home

    result = supervisor.up(home, settings, detach=True, parts=ORTHANCS)

    assert result == {"started": ORTHANCS, "already_running": []}
    parts = supervisor.status(home, settings)
    assert [name for name, info in parts.items() if info["running"]] == ORTHANCS
    assert parts["router"] == {**parts["router"], "running": False, "pid": None}
    for name, entry in zip(ORTHANCS, stack_orthancs(settings, home.config_file), strict=True):
        endpoint = settings.endpoint(name)
        assert endpoint is not None and endpoint.url is not None
        assert [entry.dicom_port, entry.http_port] == [endpoint.port,
                                                       int(endpoint.url.rsplit(":", 1)[1])]
        assert parts[name]["ports"] == [entry.dicom_port, entry.http_port]
        assert proc_cmdline(parts[name]["pid"]) == ["/usr/sbin/Orthanc", parts[name]["config"]]
        assert (home.orthanc_dir / name / "index").exists()
        assert "Orthanc has started" in Path(parts[name]["log"]).read_text()

    # Idempotent: nothing to start while everything runs; after a crash, only that part.
    assert supervisor.up(home, settings, detach=True, parts=ORTHANCS)["started"] == []
    crashed = parts["ORTHANC2"]["pid"]
    os.kill(crashed, signal.SIGKILL)
    wait_until(lambda: not supervisor.status(home, settings)["ORTHANC2"]["running"],
               message="ORTHANC2 seen as stopped")
    again = supervisor.up(home, settings, detach=True, parts=ORTHANCS)
    assert again == {"started": ["ORTHANC2"], "already_running": ["ORTHANC1", "ORTHANC-PROBE"]}
    assert supervisor.status(home, settings)["ORTHANC2"]["pid"] not in (None, crashed)

    stopped = supervisor.down(home, settings)
    assert sorted(stopped["stopped"]) == sorted(ORTHANCS)
    assert not any(info["running"] for info in supervisor.status(home, settings).values())
    assert list(home.run_dir.iterdir()) == []


def test_stack_refuses_a_port_held_by_someone_else(stack_home: tuple[Home, Settings]) -> None:
    home, settings = stack_home
    taken = stack_orthancs(settings, home.config_file)[1].http_port

    with socket.socket() as holder:
        holder.bind(("127.0.0.1", taken))
        holder.listen()
        with pytest.raises(StackError) as refused:
            supervisor.up(home, settings, detach=True, parts=ORTHANCS)

    message = str(refused.value)
    assert f"port {taken} is already in use" in message
    assert "ORTHANC2" in message
    assert not any(info["running"] for info in supervisor.status(home, settings).values())
    assert list(home.run_dir.iterdir()) == []  # nothing was started


def test_a_part_that_cannot_start_is_reported_with_its_log(
    stack_home: tuple[Home, Settings],
) -> None:
    home, settings = stack_home
    entry = stack_orthancs(settings, home.config_file)[2]
    not_a_folder = home.root / "a-file"
    not_a_folder.write_text("")
    # Orthanc cannot create its storage under a plain file: it exits while starting.
    (home.root / entry.config_file).write_text(
        f'{{"DicomPort": {entry.dicom_port}, "HttpPort": {entry.http_port}, "Plugins": [], '
        f'"StorageDirectory": "{not_a_folder}/db", "IndexDirectory": "{not_a_folder}/db"}}'
    )

    with pytest.raises(StackError) as failed:
        supervisor.up(home, settings, detach=True, parts=ORTHANCS)

    assert "orthanc_probe.json" in str(failed.value)
    assert "last lines of" in str(failed.value)
    # What this call started was stopped again.
    assert not any(info["running"] for info in supervisor.status(home, settings).values())
    assert list(home.run_dir.iterdir()) == []


def test_stack_up_in_the_foreground_stops_what_it_started_on_sigterm(
    stack_home: tuple[Home, Settings],
) -> None:
    home, settings = stack_home
    script = (
        "import sys; from pathlib import Path\n"
        "from dde.config import Home, load_settings\n"
        "from dde.stack import supervisor\n"
        "home = Home(Path(sys.argv[1]))\n"
        "result = supervisor.up(home, load_settings(home), detach=False, parts=sys.argv[2:])\n"
        "print('RESULT', sorted(result['stopped']))\n"
    )
    foreground = subprocess.Popen(
        [sys.executable, "-c", script, str(home.root), *ORTHANCS],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    assert foreground.stdout is not None
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(foreground.stdout or ()))
    reader.start()
    try:
        # Log lines prefixed with a part name: the parts are up and it is in the foreground.
        wait_until(lambda: any(line.startswith("ORTHANC-PROBE | ") for line in list(lines)),
                   timeout=30, message="the foreground printing the parts' logs")
        foreground.send_signal(signal.SIGTERM)
        foreground.wait(timeout=60)
    finally:
        if foreground.poll() is None:
            foreground.kill()
            foreground.wait()
        reader.join(10)
    output = "".join(lines)

    assert foreground.returncode == 0, output
    assert f"RESULT {sorted(ORTHANCS)}" in output
    assert "ORTHANC-PROBE | " in output and "Orthanc has stopped" in output
    assert not any(info["running"] for info in supervisor.status(home, settings).values())
    assert list(home.run_dir.iterdir()) == []
