"""A destination that records every C-STORE it receives, duplicates included.

Orthanc keeps one copy per SOP Instance UID, so a test cannot see there whether an instance
was delivered once or several times. DCMTK's ``/usr/bin/storescp`` with ``+uf`` (unique file
names) writes one file per C-STORE, even for a SOP Instance UID it has already received;
:meth:`RecordingSCP.receptions` counts those files by SOP Instance UID.

    with RecordingSCP(tmp_path / "recorder", "RECORDER") as scp:
        settings = router_settings(..., endpoints=[scp.endpoint(["storage"]), ...])
        ...
        assert scp.receptions()[uid] == 1
"""

from __future__ import annotations

import os
import subprocess
from collections import Counter
from collections.abc import Iterable
from pathlib import Path
from types import TracebackType
from typing import Any

from pydicom import dcmread

from tests.support.orthanc import ECHOSCU, free_port, wait_until

STORESCP = "/usr/bin/storescp"
START_TIMEOUT = 10.0


class RecordingSCP:
    """``storescp`` on a free loopback port, writing every received instance to its own
    file under ``folder / "received"`` (its log in ``folder / "storescp.log"``)."""

    def __init__(self, folder: Path, ae_title: str = "RECORDER") -> None:
        self.folder = folder
        self.ae_title = ae_title
        self.received_dir = folder / "received"
        self.log_path = folder / "storescp.log"
        self.port = 0
        self.process: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> RecordingSCP:
        self.start()
        return self

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self.stop()

    def start(self, attempts: int = 3) -> None:
        """Start storescp and wait until it answers a C-ECHO; a port taken between
        ``free_port`` and storescp's bind makes storescp exit, and another port is tried."""
        self.received_dir.mkdir(parents=True, exist_ok=True)
        for _ in range(attempts):
            self.port = free_port()
            argv = [STORESCP, "-aet", self.ae_title, "-od", str(self.received_dir),
                    "+uf",  # a unique file name per reception: duplicates are kept
                    "+xa",  # accept every transfer syntax storescp supports
                    "-pm",  # and unknown SOP classes (promiscuous)
                    "-v", str(self.port)]
            with self.log_path.open("ab") as log:
                self.process = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT,
                                                env={**os.environ, "TCP_NODELAY": "1"})
            try:
                wait_until(self._answers, START_TIMEOUT, f"{self.ae_title} answering C-ECHO")
                return
            except RuntimeError:
                continue  # storescp exited (port taken): try another port
            except BaseException:
                self.stop()
                raise
        raise RuntimeError(f"storescp {self.ae_title} did not start: "
                           f"{self.log_path.read_text(errors='replace')[-2000:]}")

    def _answers(self) -> bool:
        assert self.process is not None
        if self.process.poll() is not None:
            raise RuntimeError(f"storescp exited with {self.process.returncode}")
        result = subprocess.run([ECHOSCU, "-aec", self.ae_title, "127.0.0.1", str(self.port)],
                                capture_output=True, timeout=10,
                                env={**os.environ, "TCP_NODELAY": "1"})
        return result.returncode == 0

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)

    def endpoint(self, groups: Iterable[str] = (), name: str | None = None) -> dict[str, Any]:
        """The router's endpoint settings for this destination (no ``url``: no load
        polling)."""
        return {"name": name or self.ae_title, "aet": self.ae_title, "host": "127.0.0.1",
                "port": self.port, "groups": list(groups)}

    def files(self) -> list[Path]:
        return sorted(p for p in self.received_dir.iterdir() if p.is_file())

    def receptions(self) -> Counter[str]:
        """How many times each SOP Instance UID was received (one file per C-STORE)."""
        counts: Counter[str] = Counter()
        for path in self.files():
            counts[str(dcmread(path, stop_before_pixels=True).SOPInstanceUID)] += 1
        return counts

    def duplicates(self) -> int:
        """Receptions beyond the first of each SOP Instance UID."""
        return sum(count - 1 for count in self.receptions().values())
