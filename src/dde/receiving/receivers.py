"""Every receiver of the router listening in one process: one :class:`StorageSCP` per
receiving AE (``receiver:``, then each ``receivers:`` entry), each on its own port with its
own allow-lists and TLS, all feeding the one ingest pipeline, which routes what each takes
by that receiver's rules.

The main process uses it when it receives itself (``receiver.processes: 0``); each
receiver process uses it with shared ports (``SO_REUSEPORT``). Starting is all or nothing:
a port that cannot be bound stops the listeners already started.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

from dde.config import ReceiverSettings, ReceivingAE
from dde.receiving.ingest import IngestPipeline
from dde.receiving.scp import CommitmentHandler, StorageSCP
from dde.store.prepared_files import PreparedFiles

log = logging.getLogger(__name__)


class Receivers:
    """The listeners of this process; the face of one (``port``, ``running``, ``start``,
    ``stop``, ``settings``: the main receiver's) plus ``ports``, by receiver name."""

    def __init__(self, receivers: Sequence[ReceivingAE], pipeline: IngestPipeline, *,
                 shared_port: bool = False, prepared: PreparedFiles | None = None,
                 on_association: Callable[[], None] | None = None,
                 ports: dict[str, int] | None = None,
                 on_commitment_report: CommitmentHandler | None = None) -> None:
        """``ports``: the port each receiver listens on instead of its configured one
        (a receiver process is given the ports the main process reserved);
        ``on_commitment_report``: storage commitment reports (any receiver may get one)."""
        ports = ports or {}
        self.scps = [
            StorageSCP(r.settings.model_copy(update={"port": ports.get(r.name, r.settings.port)}),
                       pipeline, shared_port=shared_port, prepared=prepared,
                       on_association=on_association, name=r.name,
                       on_commitment_report=on_commitment_report)
            for r in receivers]
        self.settings: ReceiverSettings = self.scps[0].settings

    @property
    def port(self) -> int:
        """The main receiver's port (the bound one once started)."""
        return self.scps[0].port

    @property
    def ports(self) -> dict[str, int]:
        return {scp.name: scp.port for scp in self.scps}

    @property
    def running(self) -> bool:
        """Whether every receiver listens."""
        return all(scp.running for scp in self.scps)

    def start(self) -> None:
        started: list[StorageSCP] = []
        try:
            for scp in self.scps:
                try:
                    scp.start()
                except OSError as exc:
                    exc.add_note(f"receiver {scp.name} ({scp.settings.ae_title} on "
                                 f"{scp.settings.host}:{scp.settings.port})")
                    raise
                started.append(scp)
        except BaseException:
            for scp in reversed(started):
                scp.stop()
            raise

    def stop(self) -> None:
        for scp in reversed(self.scps):
            scp.stop()
