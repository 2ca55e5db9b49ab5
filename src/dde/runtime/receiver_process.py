"""A receiver process: the DICOM receiver on its own, beside the main router process.

``dde serve`` starts ``receiver.processes`` of these (``python -m dde.runtime.receiver_process``).
Each listens on every receiver's port (``receiver:`` and each ``receivers:`` entry, the
ports the main process reserved) with ``SO_REUSEPORT``, streams every dataset to the
spool's incoming folder as it arrives, and acknowledges only after the spool file is fsync'd
and the ledger transaction is committed — exactly the main process's ingest path, without
the delivery threads, the web server and the probes competing for the same interpreter.

It routes with the rules and endpoints from the configuration files (watched like the main
process does) and with the health and loads the main process publishes in the ledger. It
tells the main process what it committed (:mod:`dde.receiving.notify`), and ends when the
main process ends (``PR_SET_PDEATHSIG``, and a check of the parent's pid).
"""

from __future__ import annotations

import argparse
import ctypes
import logging
import os
import signal
import sys
import threading
from pathlib import Path

from dde import logs
from dde.config import MAIN_RECEIVER, ConfigError, Home, Settings
from dde.config_store import ConfigStore
from dde.delivery.commitment import CommitmentRecorder
from dde.dicom.commitment import CommitmentReport
from dde.receiving.notify import Notifier
from dde.receiving.pool import READY
from dde.receiving.receivers import Receivers
from dde.routing.rules import RuleSet
from dde.runtime.core import RouterCore
from dde.store.errors import LedgerError

log = logging.getLogger(__name__)


STOP_SIGNALS = {signal.SIGTERM}
WATCH_SECONDS = 0.5
_PR_SET_PDEATHSIG = 1


def _end_with_parent(parent_pid: int) -> None:
    """Get SIGTERM when the main process dies, even by SIGKILL (Linux)."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    except (OSError, AttributeError):
        pass  # the pid check in the watch loop still ends this process
    if os.getppid() != parent_pid:  # the parent died before prctl
        sys.exit(0)


class ReceiverWorker:
    def __init__(self, home: Home, config_file: Path | None, ports: dict[str, int],
                 notify: str) -> None:
        self.notifier = Notifier(notify)
        self.core = RouterCore(ConfigStore(home, config_file), *_current(home, config_file),
                               on_committed=self.notifier.committed, telemetry=self.notifier,
                               shared_spool=True)
        # Only the receivers the main process reserved a port for: one added to dde.yaml
        # since it started listens from the next start, as its log says.
        receivers = [r for r in self.core.settings.receiving_aes() if r.name in ports]
        gone = sorted(set(ports) - {r.name for r in receivers})
        if gone:
            log.warning("receiver(s) %s left dde.yaml since the router started; restart it",
                        ", ".join(gone))
        if not receivers:
            raise ConfigError("none of the router's receivers is in dde.yaml any more: "
                              "restart the router")
        self.scp = Receivers(receivers, self.core.pipeline, shared_port=True,
                             prepared=self.core.spool.prepared,
                             on_association=self.refresh, ports=ports,
                             on_commitment_report=self.commitment_report)
        self._config_lock = threading.Lock()

    def run(self, parent_pid: int) -> None:
        self.scp.start()
        print(READY, flush=True)
        # The main process stops reading stdout now: anything printed later goes to stderr.
        os.dup2(sys.stderr.fileno(), sys.stdout.fileno())
        # SIGTERM is blocked in every thread (see main) and taken here: no signal handler
        # runs inside a lock another wait holds (Event.set from a handler can deadlock).
        while signal.sigtimedwait(STOP_SIGNALS, WATCH_SECONDS) is None:
            if os.getppid() != parent_pid:
                log.warning("the main router process is gone; stopping")
                break
            self._apply_changes()
        self.close()

    def refresh(self) -> None:
        """Before each association: the configuration files as they are now (two stat
        calls when unchanged) and the endpoint picture as last published. A change made
        before an association was opened is in force for it."""
        self._apply_changes()
        if self.core.published is not None:
            self.core.published.expire()

    def commitment_report(self, report: CommitmentReport, calling_aet: str) -> int:
        """A storage commitment report that came to this process: into the shared ledger."""
        recorder = CommitmentRecorder.of(self.core.ledger, self.core.settings.delivery)
        return recorder.report(report, calling_aet)

    def _apply_changes(self) -> None:
        with self._config_lock:
            self.core.reload()

    def close(self) -> None:
        self.scp.stop()
        self.notifier.close()
        self.core.close()


def _current(home: Home, config_file: Path | None) -> tuple[Settings, RuleSet]:
    store = ConfigStore(home, config_file)
    try:
        settings = store.settings()
        return settings, store.ruleset(settings)
    finally:
        store.close()


def _receiver_port(text: str) -> tuple[str, int]:
    name, _, port = text.rpartition("=")
    return name or MAIN_RECEIVER, int(port)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m dde.runtime.receiver_process",
                                     description="A receiver process of `dde serve`.")
    parser.add_argument("--home", type=Path, required=True)
    parser.add_argument("--config", type=Path)
    parser.add_argument("--port", action="append", required=True, type=_receiver_port,
                        help="NAME=PORT: a receiver and the port reserved for it (repeated)")
    parser.add_argument("--notify", required=True)
    parser.add_argument("--parent", type=int, required=True)
    parser.add_argument("--verbose", action="store_true")
    args = parser.parse_args(argv)
    signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)  # before any thread starts
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the main process, which
    _end_with_parent(args.parent)                 # stops this one in order
    logs.configure(args.verbose)
    try:
        worker = ReceiverWorker(Home(args.home), args.config, dict(args.port), args.notify)
    except (ConfigError, LedgerError) as exc:
        log.error("receiver process cannot start: %s", exc)
        return 2
    try:
        worker.run(args.parent)
    except OSError as exc:
        log.error("receiver process cannot listen: %s", exc.strerror or exc)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
