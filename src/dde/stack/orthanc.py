"""One Orthanc (Debian's ``orthanc`` package, 1.10) as a plain process.

Its configuration is rendered once (``write_orthanc_config`` never overwrites a file a user
may have edited); the process runs in its own session with ``TCP_NODELAY=1`` and its output
appended to a log file; it is ready when ``GET /system`` answers.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import httpx

from dde.stack.errors import StackError
from dde.stack.process import POLL_SECONDS, log_size, log_tail, spawn

__all__ = [
    "ORTHANC_BINARY",
    "OrthancProcess",
    "StackError",
    "orthanc_binary",
    "read_orthanc_config",
    "render_orthanc_config",
    "write_orthanc_config",
]

ORTHANC_BINARY = "/usr/sbin/Orthanc"

# Every transfer syntax DICOM defines (1.2.840.10008.1.2, .1.2.x, …): Orthanc's own default,
# written out so that a reader of the file sees that nothing is filtered.
ALL_TRANSFER_SYNTAXES = ["1.2.840.10008.1.*"]
_TRANSFER_SYNTAX_GROUPS = [
    "DeflatedTransferSyntaxAccepted",
    "JpegTransferSyntaxAccepted",
    "Jpeg2000TransferSyntaxAccepted",
    "JpegLosslessTransferSyntaxAccepted",
    "JpipTransferSyntaxAccepted",
    "Mpeg2TransferSyntaxAccepted",
    "RleTransferSyntaxAccepted",
    "Mpeg4TransferSyntaxAccepted",
    "H265TransferSyntaxAccepted",
]


def orthanc_binary() -> str:
    """The Orthanc executable, or StackError saying how to install it."""
    if os.access(ORTHANC_BINARY, os.X_OK):
        return ORTHANC_BINARY
    found = shutil.which("Orthanc")
    if found:
        return found
    raise StackError("Orthanc is not installed: run `make deps` (apt-get install -y orthanc)")


ROUTER_MODALITY = "router"
"""The router's name in each stack Orthanc's ``DicomModalities``."""


def render_orthanc_config(
    name: str, aet: str, dicom_port: int, http_port: int, storage_dir: Path,
    router: tuple[str, int] | None = None,
) -> dict[str, Any]:
    """An Orthanc 1.10 configuration: a local, open PACS that stores whatever it is sent.
    ``router`` (its AE title and DICOM port on this host) is listed as a modality: Orthanc
    answers a storage commitment request only from a modality it knows, and sends the
    report to that modality's address."""
    storage = str(storage_dir)
    config: dict[str, Any] = {
        "Name": name,
        "DicomAet": aet,
        "DicomPort": dicom_port,
        "HttpPort": http_port,
        "StorageDirectory": storage,
        "IndexDirectory": storage,
        "Plugins": [],
        "LuaScripts": [],
        "HttpServerEnabled": True,
        "DicomServerEnabled": True,
        "RemoteAccessAllowed": False,
        "AuthenticationEnabled": False,
        "HttpDescribeErrors": True,
        "DicomCheckCalledAet": False,
        "DicomCheckModalityHost": False,
        "DicomAlwaysAllowEcho": True,
        "DicomAlwaysAllowStore": True,
        # Promiscuous C-STORE SCP: any storage SOP class, any transfer syntax, no transcoding.
        "UnknownSopClassAccepted": True,
        "AcceptedTransferSyntaxes": ALL_TRANSFER_SYNTAXES,
        "StorageCompression": False,
        "OverwriteInstances": False,
        "StableAge": 2,
        "LogExportedResources": False,
        "SaveJobs": False,
    }
    config.update(dict.fromkeys(_TRANSFER_SYNTAX_GROUPS, True))
    if router is not None:
        config["DicomModalities"] = {ROUTER_MODALITY: [router[0], "127.0.0.1", router[1]]}
    return config


def write_orthanc_config(
    path: Path, name: str, aet: str, dicom_port: int, http_port: int, storage_dir: Path,
    router: tuple[str, int] | None = None,
) -> bool:
    """Write the rendered configuration to ``path`` unless it exists. True if written."""
    if path.exists():
        return False
    path.parent.mkdir(parents=True, exist_ok=True)
    config = render_orthanc_config(name, aet, dicom_port, http_port, storage_dir, router)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.part")
    with open(tmp, "w") as out:
        json.dump(config, out, indent=2)
        out.write("\n")
        out.flush()
        os.fsync(out.fileno())
    os.replace(tmp, path)
    return True


def _strip_json_comments(text: str) -> str:
    """Remove ``//`` and ``/* */`` comments (which Orthanc accepts) outside strings."""
    out: list[str] = []
    i, n, in_string = 0, len(text), False
    while i < n:
        char = text[i]
        if in_string:
            out.append(char)
            if char == "\\" and i + 1 < n:
                out.append(text[i + 1])
                i += 1
            elif char == '"':
                in_string = False
        elif char == '"':
            in_string = True
            out.append(char)
        elif text.startswith("//", i):
            end = text.find("\n", i)
            i = n if end < 0 else end
            continue
        elif text.startswith("/*", i):
            end = text.find("*/", i + 2)
            i = n if end < 0 else end + 2
            continue
        else:
            out.append(char)
        i += 1
    return "".join(out)


def read_orthanc_config(path: Path) -> dict[str, Any]:
    """Read an Orthanc configuration file (JSON with comments)."""
    try:
        text = path.read_text()
    except OSError as exc:
        raise StackError(f"{path}: {exc.strerror}") from None
    try:
        data = json.loads(_strip_json_comments(text))
    except ValueError as exc:
        raise StackError(f"{path}: not a valid Orthanc configuration: {exc}") from None
    if not isinstance(data, dict):
        raise StackError(f"{path}: not a valid Orthanc configuration: not a JSON object")
    return data


class OrthancProcess:
    """One Orthanc process: start, wait until its REST API answers, stop."""

    def __init__(
        self, config_path: Path, log_path: Path, http_port: int, dicom_port: int,
        name: str | None = None,
    ) -> None:
        self.name = name or "Orthanc"
        self.config_path = config_path
        self.log_path = log_path
        self.http_port = http_port
        self.dicom_port = dicom_port
        self._popen: subprocess.Popen[bytes] | None = None
        self._log_offset = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def argv(self) -> list[str]:
        return [orthanc_binary(), str(self.config_path)]

    @property
    def pid(self) -> int | None:
        return self._popen.pid if self._popen is not None else None

    @property
    def running(self) -> bool:
        return self._popen is not None and self._popen.poll() is None

    def start(self) -> subprocess.Popen[bytes]:
        if self.running:
            raise StackError(f"{self.name} is already running")
        self._log_offset = log_size(self.log_path)
        self._popen = spawn(self.argv, self.log_path, cwd=self.config_path.parent)
        return self._popen

    def log_tail(self, lines: int = 20) -> str:
        """The last lines this process wrote to its log."""
        return log_tail(self.log_path, lines, since=self._log_offset)

    def wait_ready(self, timeout: float = 20.0) -> None:
        """Poll ``GET /system`` until it answers 200; StackError on exit or timeout."""
        if self._popen is None:
            raise StackError("Orthanc was not started")
        deadline = time.monotonic() + timeout
        problem = "no answer"
        with httpx.Client(timeout=httpx.Timeout(1.0, connect=0.25), trust_env=False) as client:
            while True:
                code = self._popen.poll()
                if code is not None:
                    raise StackError(
                        f"{self.name} ({self.config_path}) exited with code {code} while "
                        f"starting; last lines of {self.log_path}:\n{self.log_tail()}"
                    )
                try:
                    response = client.get(f"{self.url}/system")
                    if response.status_code == 200:
                        return
                    problem = f"HTTP {response.status_code}"
                except httpx.HTTPError as exc:
                    problem = type(exc).__name__
                if time.monotonic() >= deadline:
                    raise StackError(
                        f"{self.name} ({self.config_path}) did not answer on {self.url} within "
                        f"{timeout:g} s ({problem}); last lines of {self.log_path}:\n"
                        f"{self.log_tail()}"
                    )
                time.sleep(POLL_SECONDS)

    def stop(self, timeout: float = 10.0) -> int | None:
        """SIGTERM, wait up to ``timeout`` s, then SIGKILL. Returns the exit code."""
        popen = self._popen
        if popen is None:
            return None
        if popen.poll() is None:
            popen.send_signal(signal.SIGTERM)
            try:
                return popen.wait(timeout)
            except subprocess.TimeoutExpired:
                popen.kill()
        return popen.wait()

    def kill(self) -> None:
        """SIGKILL (a crash, as far as Orthanc can tell) and reap."""
        if self._popen is not None and self._popen.poll() is None:
            self._popen.kill()
            self._popen.wait()
