"""Start the router for tests: in-process (fast, inspectable) or as a real process (kill -9)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from dde.config import EndpointSettings, Home, Settings, parse_settings, settings_to_yaml
from dde.runtime.main import RouterApp
from dde.store.ledger import Ledger
from tests.support.orthanc import RunningOrthanc, wait_until

ROUTER_AET = "DYNAMIC_DICOM_MW"


def endpoint_for(orthanc: RunningOrthanc, groups: Iterable[str], **extra: Any) -> dict[str, Any]:
    return {"name": orthanc.name, "aet": orthanc.aet, "host": "127.0.0.1",
            "port": orthanc.dicom_port, "url": orthanc.url, "groups": list(groups), **extra}


def router_settings(storages: Iterable[RunningOrthanc], probe: RunningOrthanc | None,
                    port: int = 0, **overrides: Any) -> Settings:
    endpoints = [endpoint_for(o, ["storage"]) for o in storages]
    if probe is not None:
        endpoints.append(endpoint_for(probe, ["probe"]))
    raw: dict[str, Any] = {
        "receiver": {"host": "127.0.0.1", "port": port, "ae_title": ROUTER_AET},
        "endpoints": endpoints,
        "routing": {"mirror": [probe.name] if probe is not None else [],
                    "load_refresh_seconds": 0.5},
        "delivery": {"backoff_base_seconds": 0.2, "backoff_cap_seconds": 2.0,
                     "connect_timeout": 3.0, "dimse_timeout": 20.0,
                     "idle_release_seconds": 0.5, "poll_seconds": 0.2},
        "web": {"host": "127.0.0.1", "port": 0},
    }
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(raw.get(key), dict):
            raw[key] = {**raw[key], **value}
        else:
            raw[key] = value
    return parse_settings(raw)


def ledger_idle(ledger: Ledger) -> bool:
    return sum(ledger.queue.queued_counts().values()) == 0


@dataclass
class InProcessRouter:
    app: RouterApp
    home: Home

    @property
    def port(self) -> int:
        return self.app.receiver.port

    @property
    def ledger(self) -> Ledger:
        return self.app.ledger

    @property
    def web_url(self) -> str:
        """The base URL of the router's HTTP side (bound on a free port)."""
        assert self.app.web is not None, "the web part is not enabled"
        return f"http://127.0.0.1:{self.app.web.port}"

    def wait_idle(self, timeout: float = 60.0) -> None:
        wait_until(lambda: ledger_idle(self.ledger), timeout, "every delivery settled")

    def stop(self) -> None:
        self.app.stop()


def start_router(home_dir: Path, settings: Settings) -> InProcessRouter:
    home = Home(home_dir)
    home.ensure()
    home.config_file.write_text(settings_to_yaml(settings))
    app = RouterApp(home, settings)
    app.start()
    return InProcessRouter(app, home)


@dataclass
class RouterProcess:
    """``python -m dde serve`` as a child process, for crash tests."""

    home: Path
    port: int
    log_path: Path
    process: subprocess.Popen[bytes] | None = None
    history: list[int] = field(default_factory=list)

    def start(self, timeout: float = 20.0) -> None:
        log = self.log_path.open("ab")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "dde", "--home", str(self.home), "serve"],
            stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "TCP_NODELAY": "1"},
            start_new_session=True,
        )
        log.close()
        self.history.append(self.process.pid)
        wait_until(self._answers, timeout, "router answers C-ECHO")

    def _answers(self) -> bool:
        assert self.process is not None
        if self.process.poll() is not None:
            raise AssertionError(f"router exited: {self.log_path.read_text()[-2000:]}")
        result = subprocess.run(
            ["/usr/bin/echoscu", "-aec", ROUTER_AET, "127.0.0.1", str(self.port)],
            capture_output=True, env={**os.environ, "TCP_NODELAY": "1"}, timeout=10,
        )
        return result.returncode == 0

    def kill(self) -> None:
        assert self.process is not None
        os.kill(self.process.pid, signal.SIGKILL)
        self.process.wait(10)

    def kill_all(self) -> None:
        """``kill -9`` of the router's whole process group: the main process and its
        receiver processes die at the same instant (a crash of the machine's router)."""
        assert self.process is not None
        os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(10)

    def terminate(self, timeout: float = 30.0) -> int:
        assert self.process is not None
        self.process.terminate()
        return self.process.wait(timeout)

    def receiver_pids(self) -> list[int]:
        """The receiver processes: children of the main process, of any of its threads (a
        restarted one is started from the pool's watch thread)."""
        assert self.process is not None
        pids: list[int] = []
        for children in Path(f"/proc/{self.process.pid}/task").glob("*/children"):
            try:
                pids += [int(p) for p in children.read_text().split()]
            except FileNotFoundError:
                continue
        return pids

    def ledger(self) -> Ledger:
        return Ledger(self.home / "dde.sqlite3")

    def wait_idle(self, timeout: float = 60.0) -> None:
        ledger = self.ledger()
        try:
            wait_until(lambda: ledger_idle(ledger), timeout, "every delivery settled")
        finally:
            ledger.close()


def write_router_home(home_dir: Path, settings: Settings) -> None:
    home = Home(home_dir)
    home.ensure()
    home.config_file.write_text(settings_to_yaml(settings))


def load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


def stop_process_quietly(process: RouterProcess) -> None:
    if process.process is not None and process.process.poll() is None:
        process.process.kill()
        process.process.wait(10)


def wait_for(predicate: Any, timeout: float, message: str) -> Any:
    return wait_until(predicate, timeout, message)


def now() -> float:
    return time.time()


__all__ = ["EndpointSettings", "InProcessRouter", "RouterProcess", "endpoint_for",
           "ledger_idle", "router_settings", "start_router", "write_router_home"]
