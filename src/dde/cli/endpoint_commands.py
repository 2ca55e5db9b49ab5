"""``dde endpoints``: list the destination PACS and change them, live.

A change goes to ``dde.yaml`` under the configuration lock; a running router applies it
within a second (no restart, associations in progress untouched).
"""

from __future__ import annotations

import json
import os

import click
from rich.markup import escape
from rich.table import Table

from dde.cli.boundary import CommandGroup
from dde.cli.context import config_store, ledger_if_any
from dde.cli.output import console
from dde.config import HTTP_KINDS, EndpointKind, EndpointSettings, EndpointState
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
                      escape(r["url"] if r["kind"] in HTTP_KINDS and r["url"]
                             else f"{r['host']}:{r['port']}"), escape(",".join(r["groups"])),
                      r["state"], r["health"], "" if r["load"] is None else str(r["load"]),
                      str(r["queued"]), str(r["failed"]))
    console().print(table)


@endpoints.command("add")
@click.argument("name")
@click.option("--aet", default=None, help="The PACS's AE title (dicom; default for HTTP "
              "kinds: the name).")
@click.option("--host", default=None, help="The PACS's host (dicom).")
@click.option("--port", default=None, type=int, help="The PACS's DICOM port (dicom).")
@click.option("--url", default=None, help="HTTP root: Orthanc REST (load, orthanc-rest kind) "
              "or the DICOMweb service root (dicomweb kind).")
@click.option("--group", "groups", multiple=True, help="Group(s), e.g. storage. Repeatable.")
@click.option("--kind", type=click.Choice([k.value for k in EndpointKind]), default="dicom",
              show_default=True)
@click.option("--weight", type=float, default=1.0, show_default=True)
@click.option("--username", default=None, help="HTTP basic user (with --password-file).")
@click.option("--password-file", default=None, type=click.Path(dir_okay=False),
              help="File holding the HTTP basic password; read by the router, never copied.")
@click.option("--token-file", default=None, type=click.Path(dir_okay=False),
              help="File holding an HTTP bearer token; read by the router, never copied.")
@click.option("--no-qido-load", is_flag=True,
              help="dicomweb: do not count studies by QIDO-RS (load unknown).")
@click.option("--storage-commitment", is_flag=True,
              help="dicom: ask the PACS to commit to each delivered study (it must know the "
              "router's AE title, host and port to send its report).")
@click.pass_context
def endpoints_add(ctx: click.Context, name: str, aet: str | None, host: str | None,
                  port: int | None, url: str | None, groups: tuple[str, ...], kind: str,
                  weight: float, username: str | None, password_file: str | None,
                  token_file: str | None, no_qido_load: bool,
                  storage_commitment: bool) -> None:
    """Add an endpoint; it takes part in routing at once (no restart)."""
    endpoint_kind = EndpointKind(kind)
    if endpoint_kind not in HTTP_KINDS and (aet is None or host is None or port is None):
        raise click.UsageError("a dicom endpoint needs --aet, --host and --port")
    for option, path in (("--password-file", password_file), ("--token-file", token_file)):
        if path is not None and not os.access(path, os.R_OK):
            raise click.UsageError(f"{option} {path}: not a readable file")
    fields = {"aet": aet, "host": host, "port": port, "url": url, "username": username,
              "password_file": password_file, "token_file": token_file}
    endpoint = EndpointSettings.model_validate({
        "name": name, "groups": list(groups), "kind": endpoint_kind, "weight": weight,
        "qido_load": not no_qido_load, "storage_commitment": storage_commitment,
        **{k: v for k, v in fields.items() if v is not None}})
    registry.add_endpoint(config_store(ctx), endpoint)
    where = (endpoint.url if endpoint_kind in HTTP_KINDS
             else f"{endpoint.aet} at {endpoint.host}:{endpoint.port}")
    click.echo(f"added {name} ({kind}: {where}, groups: {', '.join(groups) or 'none'}"
               + (", storage commitment" if storage_commitment else "") + ")")


def _set_state(ctx: click.Context, name: str, state: EndpointState, message: str) -> None:
    registry.set_state(config_store(ctx), name, state)
    if state is EndpointState.ENABLED:  # it may accept more now: learn it again
        opened = ledger_if_any(ctx)
        if opened is not None:
            opened.capabilities.forget(name)
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
