"""``dde endpoints``: list the destination PACS and change them, live.

A change goes to ``dde.yaml`` under the configuration lock; a running router applies it
within a second (no restart, associations in progress untouched).
"""

from __future__ import annotations

import json

import click
from rich.markup import escape
from rich.table import Table

from dde.cli.boundary import CommandGroup
from dde.cli.context import config_store, ledger_if_any
from dde.cli.output import console
from dde.config import EndpointKind, EndpointSettings, EndpointState
from dde.endpoints import registry


@click.group(cls=CommandGroup)
def endpoints() -> None:
    """List and change the destination PACS, live."""


@endpoints.command("list")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def endpoints_list(ctx: click.Context, as_json: bool) -> None:
    """Every endpoint: kind, address, groups, state, health, load, queued."""
    settings = config_store(ctx).settings()
    rows = registry.describe(settings, ledger_if_any(ctx))
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    table = Table("name", "kind", "AE title", "address", "groups", "state", "health", "load",
                  "queued", "failed")
    for r in rows:
        table.add_row(escape(r["name"]), r["kind"], escape(r["aet"]),
                      f"{escape(r['host'])}:{r['port']}", escape(",".join(r["groups"])),
                      r["state"], r["health"], "" if r["load"] is None else str(r["load"]),
                      str(r["queued"]), str(r["failed"]))
    console().print(table)


@endpoints.command("add")
@click.argument("name")
@click.option("--aet", required=True, help="The PACS's AE title.")
@click.option("--host", required=True)
@click.option("--port", required=True, type=int)
@click.option("--url", default=None, help="HTTP root (Orthanc REST: load, orthanc-rest kind).")
@click.option("--group", "groups", multiple=True, help="Group(s), e.g. storage. Repeatable.")
@click.option("--kind", type=click.Choice([k.value for k in EndpointKind]), default="dicom",
              show_default=True)
@click.option("--weight", type=float, default=1.0, show_default=True)
@click.pass_context
def endpoints_add(ctx: click.Context, name: str, aet: str, host: str, port: int,
                  url: str | None, groups: tuple[str, ...], kind: str, weight: float) -> None:
    """Add an endpoint; it takes part in routing at once (no restart)."""
    endpoint = EndpointSettings(name=name, aet=aet, host=host, port=port, url=url,
                                groups=list(groups), kind=EndpointKind(kind), weight=weight)
    registry.add_endpoint(config_store(ctx), endpoint)
    click.echo(f"added {name} ({aet} at {host}:{port}, groups: {', '.join(groups) or 'none'})")


def _set_state(ctx: click.Context, name: str, state: EndpointState, message: str) -> None:
    registry.set_state(config_store(ctx), name, state)
    click.echo(message)


@endpoints.command("drain")
@click.argument("name")
@click.pass_context
def endpoints_drain(ctx: click.Context, name: str) -> None:
    """No new studies; it finishes what is queued and what is pinned to it."""
    _set_state(ctx, name, EndpointState.DRAINING, f"{name} is draining")


@endpoints.command("enable")
@click.argument("name")
@click.pass_context
def endpoints_enable(ctx: click.Context, name: str) -> None:
    """Back in service: new studies and deliveries."""
    _set_state(ctx, name, EndpointState.ENABLED, f"{name} is enabled")


@endpoints.command("disable")
@click.argument("name")
@click.pass_context
def endpoints_disable(ctx: click.Context, name: str) -> None:
    """Nothing new and nothing sent; its queue waits, its studies move to other members."""
    _set_state(ctx, name, EndpointState.DISABLED, f"{name} is disabled")


@endpoints.command("remove")
@click.argument("name")
@click.option("--force", is_flag=True,
              help="Redirect its queued and failed deliveries to another member of its group.")
@click.pass_context
def endpoints_remove(ctx: click.Context, name: str, force: bool) -> None:
    """Remove an endpoint (refused while deliveries wait for it, unless --force)."""
    _, redirected, target = registry.remove_endpoint(config_store(ctx), ledger_if_any(ctx),
                                                     name, force)
    suffix = f"; {redirected} deliveries redirected to {target}" if target else ""
    click.echo(f"removed {name}{suffix}")
