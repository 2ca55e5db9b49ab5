"""``dde reconcile``: compare what the storage PACS hold with the probe (counts only, never
patient data); ``--repair`` queues the copies the probe misses.

Without ``--repair``, differences are a result, not an error: the report prints and the
command exits 5 (:attr:`~dde.cli.errors.ExitCode.DIFFERENCES`), so a script can tell.
"""

from __future__ import annotations

import json

import click

from dde.cli.context import config_store, home_of
from dde.cli.errors import CliError, ExitCode


@click.command("reconcile")
@click.option("--json", "as_json", is_flag=True)
@click.option("--repair", is_flag=True, help="Queue the copies the probe misses.")
@click.pass_context
def reconcile_command(ctx: click.Context, as_json: bool, repair: bool) -> None:
    """Compare what the storage PACS hold with the probe; counts only, never patient data.

    Exits 5 when (without --repair) the probe misses instances.
    """
    from dde.reconcile import reconcile  # not at import: keeps `dde -h` quick
    from dde.runtime.core import RouterCore

    store = config_store(ctx)
    if repair:  # through the same ingest pipeline as C-STORE and uploads
        if not store.settings().store.url and not home_of(ctx).database.exists():
            raise CliError("--repair needs the router's ledger: start the router once first")
        core = RouterCore.for_tool(store)
        try:
            report = reconcile(core.settings, core.ruleset, ledger=core.ledger,
                               pipeline=core.pipeline, repair=True)
        finally:
            core.close()
    else:
        settings = store.settings()
        report = reconcile(settings, store.ruleset(settings))
    if as_json:
        click.echo(json.dumps(report.as_dict(), indent=2))
    else:
        for name, count in report.storage.items():
            click.echo(f"storage {name}: {count} instances")
        for name, count in report.probe.items():
            click.echo(f"probe {name}: {count} instances, {report.missing_in_probe[name]} "
                       f"missing, {report.only_in_probe[name]} only in the probe")
        if repair:
            click.echo(f"queued {report.repaired} copies for the probe"
                       + (f", {report.repair_failed} could not be fetched"
                          if report.repair_failed else ""))
    if not report.consistent and not repair:
        ctx.exit(ExitCode.DIFFERENCES)
