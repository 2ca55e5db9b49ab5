"""Real Orthanc processes for tests, and DCMTK's storescu to send to them.

``start_orthanc`` runs one Orthanc on free loopback ports with its own storage folder;
``RunningOrthanc`` asks its REST API what it holds. Tests wait with ``wait_until`` (a
deadline and a poll), never with bare sleeps.
"""

from __future__ import annotations

import json
import os
import random
import socket
import subprocess
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import httpx

from dde.stack.errors import StackError
from dde.stack.orthanc import OrthancProcess, write_orthanc_config

STORESCU = "/usr/bin/storescu"
ECHOSCU = "/usr/bin/echoscu"
POLL_SECONDS = 0.05

T = TypeVar("T")

_handed_out: set[int] = set()


# Below Linux's ephemeral range (32768-60999): the client sockets the tests open (storescu,
# httpx, pynetdicom) can never take a port between free_port() and the server's bind.
PORT_RANGE = (20000, 32000)
_random = random.Random(os.getpid() ^ int(time.time()))


def free_port_run(length: int) -> int:
    """A port P with P … P+length-1 all free now and none handed out before by this
    process (they are handed out now): for a part that takes a port and its neighbours."""
    while True:
        base = free_port()
        run = range(base + 1, base + length)
        if base + length < PORT_RANGE[1] and not any(p in _handed_out for p in run) and all(
                _bindable(p) for p in run):
            _handed_out.update(run)
            return base


def _bindable(port: int) -> bool:
    try:
        for host in ("127.0.0.1", "0.0.0.0"):
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
                probe.bind((host, port))
    except OSError:
        return False
    return True


def free_port() -> int:
    """A TCP port free on 127.0.0.1 and 0.0.0.0 now, not handed out before by this process."""
    while True:
        port = _random.randrange(*PORT_RANGE)
        if port in _handed_out:
            continue
        try:
            for host in ("127.0.0.1", "0.0.0.0"):
                with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
                    probe.bind((host, port))
        except OSError:
            continue
        _handed_out.add(port)
        return port


def wait_until(
    condition: Callable[[], T], timeout: float = 10.0, message: str = "condition"
) -> T:
    """Poll ``condition`` until it returns a truthy value (returned); AssertionError at the
    deadline."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"{message}: not met within {timeout:g} s (last: {value!r})")
        time.sleep(POLL_SECONDS)


@dataclass
class RunningOrthanc:
    """An Orthanc started by a test, and what its REST API says."""

    name: str
    aet: str
    dicom_port: int
    http_port: int
    url: str
    process: OrthancProcess
    storage_dir: Path

    def _request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        with httpx.Client(base_url=self.url, timeout=30.0, trust_env=False) as client:
            response = client.request(method, path, **kwargs)
        response.raise_for_status()
        return response

    def get_json(self, path: str) -> Any:
        return self._request("GET", path).json()

    def system(self) -> dict[str, Any]:
        result: dict[str, Any] = self.get_json("/system")
        return result

    def instances(self) -> list[str]:
        """The Orthanc IDs of every stored instance."""
        return [str(i) for i in self.get_json("/instances")]

    def sop_instance_uids(self) -> set[str]:
        return {
            str(instance["MainDicomTags"]["SOPInstanceUID"])
            for instance in self.get_json("/instances?expand")
        }

    def instance_id(self, sop_instance_uid: str) -> str:
        """The Orthanc ID of the instance with this SOP Instance UID (KeyError if absent)."""
        found = self._request("POST", "/tools/lookup", content=sop_instance_uid).json()
        for resource in found:
            if resource.get("Type") == "Instance":
                return str(resource["ID"])
        raise KeyError(f"{self.name} holds no instance {sop_instance_uid}")

    def file_bytes(self, sop_instance_uid: str) -> bytes:
        """The stored DICOM file, as Orthanc wrote it (its own file meta, the sent dataset)."""
        return self._request("GET", f"/instances/{self.instance_id(sop_instance_uid)}/file").content

    def statistics(self) -> dict[str, Any]:
        result: dict[str, Any] = self.get_json("/statistics")
        return result

    def count(self) -> int:
        return int(self.statistics()["CountInstances"])

    def delete_instance(self, sop_instance_uid: str) -> None:
        self._request("DELETE", f"/instances/{self.instance_id(sop_instance_uid)}")

    def wait_for_count(self, expected: int, timeout: float = 10.0) -> None:
        wait_until(lambda: self.count() >= expected, timeout,
                   f"{self.name} holding {expected} instances")

    def wait_for_sop_instance_uids(self, uids: Iterable[str], timeout: float = 10.0) -> None:
        wanted = set(uids)
        wait_until(lambda: wanted <= self.sop_instance_uids(), timeout,
                   f"{self.name} holding {len(wanted)} given instances")

    def stop(self) -> None:
        """Stop gracefully (SIGTERM); storage and ports stay reserved for ``start_again``."""
        self.process.stop()

    def kill(self) -> None:
        self.process.kill()

    def start_again(self, timeout: float = 20.0) -> None:
        """Start a new process on the same configuration, storage and ports."""
        if self.process.running:
            raise RuntimeError(f"{self.name} is still running")
        self.process = OrthancProcess(self.process.config_path, self.process.log_path,
                                      self.http_port, self.dicom_port)
        self.process.start()
        self.process.wait_ready(timeout)


DICOMWEB_PLUGIN = "/usr/share/orthanc/plugins/libOrthancDicomWeb.so"
"""Debian's ``orthanc-dicomweb`` package: STOW-RS/QIDO-RS under ``/dicom-web/``."""


def dicomweb_config() -> dict[str, Any]:
    """Orthanc configuration keys that load the DICOMweb plugin (root ``/dicom-web/``)."""
    return {"Plugins": [DICOMWEB_PLUGIN], "DicomWeb": {"Enable": True, "Root": "/dicom-web/"}}


def start_orthanc(folder: Path, name: str = "ORTHANC1", aet: str | None = None,
                  attempts: int = 3, extra: dict[str, Any] | None = None) -> RunningOrthanc:
    """Start an Orthanc on free loopback ports, storage and logs under ``folder``;
    ``extra`` is merged into its configuration (plugins, Lua scripts…).

    A port taken between ``free_port`` and Orthanc's bind makes Orthanc exit: it is then
    tried again on other ports.
    """
    aet = aet or name
    last_error: StackError | None = None
    for attempt in range(attempts):
        base = folder / (name if attempt == 0 else f"{name}-{attempt}")
        storage = base / "storage"
        config = base / "orthanc.json"
        dicom_port, http_port = free_port(), free_port()
        config.unlink(missing_ok=True)
        write_orthanc_config(config, name, aet, dicom_port, http_port, storage)
        if extra:
            config.write_text(json.dumps({**json.loads(config.read_text()), **extra}))
        process = OrthancProcess(config, base / "orthanc.log", http_port, dicom_port)
        process.start()
        try:
            process.wait_ready()
        except StackError as exc:
            process.kill()
            last_error = exc
            continue
        return RunningOrthanc(name, aet, dicom_port, http_port, process.url, process, storage)
    assert last_error is not None
    raise last_error


def storescu(
    files: Sequence[Path | str], port: int, called_ae: str, *options: str,
    calling_ae: str = "TEST_SCU", host: str = "127.0.0.1", timeout: float = 120.0,
) -> subprocess.CompletedProcess[str]:
    """Send ``files`` with DCMTK's storescu (not pynetdicom's), TCP_NODELAY on.

    Raises CalledProcessError (with storescu's output) when it fails.
    """
    argv = [STORESCU, *options, "-aet", calling_ae, "-aec", called_ae, host, str(port),
            *(str(f) for f in files)]
    return subprocess.run(
        argv, env={**os.environ, "TCP_NODELAY": "1"}, capture_output=True, text=True,
        timeout=timeout, check=True,
    )
