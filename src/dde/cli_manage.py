"""``dde endpoints``, ``dde rules``, ``dde route explain``: live configuration from the CLI.

They change the configuration files under a lock; a running router applies the change
within a second (no restart, associations in progress untouched).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click
from pydantic import ValidationError
from rich.markup import escape
from rich.table import Table

from dde.config import ConfigError, EndpointKind, EndpointSettings, EndpointState, Home
from dde.config_store import ConfigStore, default_rules_text
from dde.endpoints import registry
from dde.output import console
from dde.routing.explain import ExplainError, explain
from dde.routing.router import Origin
from dde.routing.rules import RulesError
from dde.store.errors import LedgerError
from dde.store.ledger import Ledger


class ManageError(click.ClickException):
    def show(self, file: Any = None) -> None:
        click.echo(f"dde: error: {self.message}", err=True)


def _store(ctx: click.Context) -> ConfigStore:
    home: Home = ctx.obj.home
    return ConfigStore(home)


def _ledger_or_none(ctx: click.Context) -> Ledger | None:
    home: Home = ctx.obj.home
    if not home.database.exists():
        return None
    try:
        return Ledger(home.database)
    except LedgerError as exc:
        raise ManageError(str(exc)) from None


def _settings(store: ConfigStore) -> Any:
    try:
        return store.settings()
    except ConfigError as exc:
        raise ManageError(str(exc)) from None


@click.group()
def endpoints() -> None:
    """List and change the destination PACS, live."""


@endpoints.command("list")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def endpoints_list(ctx: click.Context, as_json: bool) -> None:
    """Every endpoint: kind, address, groups, state, health, load, queued."""
    store = _store(ctx)
    rows = registry.describe(_settings(store), _ledger_or_none(ctx))
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
    try:
        endpoint = EndpointSettings(name=name, aet=aet, host=host, port=port, url=url,
                                    groups=list(groups), kind=EndpointKind(kind), weight=weight)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        raise ManageError(problems) from None
    try:
        registry.add_endpoint(_store(ctx), endpoint)
    except registry.EndpointError as exc:
        raise ManageError(str(exc)) from None
    click.echo(f"added {name} ({aet} at {host}:{port}, groups: {', '.join(groups) or 'none'})")


def _set_state(ctx: click.Context, name: str, state: EndpointState, message: str) -> None:
    try:
        registry.set_state(_store(ctx), name, state)
    except registry.EndpointError as exc:
        raise ManageError(str(exc)) from None
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
    try:
        _, redirected, target = registry.remove_endpoint(_store(ctx), _ledger_or_none(ctx),
                                                         name, force)
    except registry.EndpointError as exc:
        raise ManageError(str(exc)) from None
    suffix = f"; {redirected} deliveries redirected to {target}" if target else ""
    click.echo(f"removed {name}{suffix}")


@click.group()
def rules() -> None:
    """Show and apply the routing rules, live."""


@rules.command("show")
@click.pass_context
def rules_show(ctx: click.Context) -> None:
    """Print the active rules document (or the default rule)."""
    store = _store(ctx)
    settings = _settings(store)
    text = store.rules_text(settings)
    if text is None:
        text = default_rules_text(settings)
    click.echo(text, nl=not text.endswith("\n"))


@rules.command("apply")
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
@click.pass_context
def rules_apply(ctx: click.Context, file: Path) -> None:
    """Validate FILE and make it the active rules (an invalid file changes nothing)."""
    try:
        text = file.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise ManageError(f"{file}: cannot read: {exc}") from None
    try:
        ruleset = _store(ctx).apply_rules(text)
    except RulesError as exc:
        raise ManageError(f"{file}: {exc}; the previous rules stay") from None
    except ConfigError as exc:
        raise ManageError(str(exc)) from None
    click.echo(f"applied {len(ruleset.rules)} rules from {file}")


@click.group()
def route() -> None:
    """Explain routing decisions."""


@route.command("explain")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--calling-aet", default="", help="Pretend the file came from this AE title.")
@click.option("--called-aet", default=None)
@click.option("--source-ip", default="")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def route_explain(ctx: click.Context, file: Path, calling_aet: str, called_aet: str | None,
                  source_ip: str, as_json: bool) -> None:
    """The rule and destinations FILE would get now, without sending it."""
    store = _store(ctx)
    settings = _settings(store)
    try:
        ruleset = store.ruleset(settings)
        result = explain(file, settings, ruleset, _ledger_or_none(ctx),
                         Origin(calling_aet, called_aet or settings.receiver.ae_title,
                                source_ip))
    except (ExplainError, ConfigError) as exc:
        raise ManageError(str(exc)) from None
    if as_json:
        click.echo(json.dumps(result, indent=2))
        return
    click.echo(f"rule:         {result['rule']}")
    click.echo(f"destinations: {', '.join(result['destinations']) or '(none)'}")  # type: ignore[arg-type]
    click.echo(f"reason:       {result['reason']}")


@click.command("reconcile")
@click.option("--json", "as_json", is_flag=True)
@click.option("--repair", is_flag=True, help="Queue the copies the probe misses.")
@click.pass_context
def reconcile_command(ctx: click.Context, as_json: bool, repair: bool) -> None:
    """Compare what the storage PACS hold with the probe; counts only, never patient data."""
    from dde.reconcile import ReconcileError, reconcile
    from dde.runtime.core import RouterCore

    store = _store(ctx)
    settings = _settings(store)
    home: Home = ctx.obj.home
    if repair and not home.database.exists():
        raise ManageError("--repair needs the router's ledger: start the router once first")
    try:
        if repair:  # through the same ingest pipeline as C-STORE and uploads
            core = RouterCore.for_tool(store)
            try:
                report = reconcile(core.settings, core.ruleset, ledger=core.ledger,
                                   pipeline=core.pipeline, repair=True)
            finally:
                core.close()
        else:
            report = reconcile(settings, store.ruleset(settings))
    except (ReconcileError, ConfigError, LedgerError) as exc:
        raise ManageError(str(exc)) from None
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
        ctx.exit(3)
