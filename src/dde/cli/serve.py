"""``dde serve``: the router alone (receiver, routing, delivery), for deployments whose
PACS run elsewhere.

Everything that stops it from starting leaves through the boundary: an invalid
configuration (exit 1), a locked or damaged ledger (3, 4), the receiver's port taken or its
TLS files unreadable (an OSError: exit 1).
"""

from __future__ import annotations

from pathlib import Path

import click

from dde import logs
from dde.cli.context import home_of, verbose
from dde.config_store import ConfigStore


@click.command()
@click.option("--config", "config_file", type=click.Path(dir_okay=False), default=None,
              help="Configuration file (default: dde.yaml in the state folder).")
@click.pass_context
def serve(ctx: click.Context, config_file: str | None) -> None:
    """Run the router alone (receiver, routing, delivery) until SIGTERM or Ctrl-C."""
    from dde.runtime.main import RouterApp  # not at import: keeps `dde -h` quick

    logs.configure(verbose(ctx))
    home = home_of(ctx)
    config = Path(config_file) if config_file else None
    store = ConfigStore(home, config)  # in shared mode: the cluster's endpoints and rules
    try:
        settings = store.settings()
    finally:
        store.close()
    app = RouterApp(home, settings, config, verbose=verbose(ctx))
    app.serve_forever()
