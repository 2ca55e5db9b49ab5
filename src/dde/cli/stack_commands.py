"""``dde stack …``: start, stop and inspect the reference deployment
(:mod:`dde.stack.supervisor` does the work).

A StackError or ConfigError leaves through the boundary: ``dde: error: …`` (a multi-line
message, such as a log tail, goes on the following lines) and exit 1.

``stack up`` first says which configuration file it uses (and that it wrote it, with the
defaults, when the state folder had none).
"""

from __future__ import annotations

import json
import shutil
from typing import Any

import click
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from dde.cli.boundary import CommandGroup
from dde.cli.context import home_of
from dde.config import Home, Settings, load_settings
from dde.stack import cluster, supervisor
from dde.stack.parts import HAPROXY, ROUTER


def _context(ctx: click.Context) -> tuple[Home, Settings]:
    home = home_of(ctx)
    return home, load_settings(home)


@click.group(cls=CommandGroup)
def stack() -> None:
    """Run the reference deployment: three Orthanc PACS and the router (or several
    router nodes on PostgreSQL behind HAProxy: `dde stack up --nodes 3`)."""


@stack.command()
@click.option("--detach", "-d", is_flag=True, help="Return once every part answers.")
@click.option("--nodes", type=click.IntRange(1, 9), default=None,
              help="Run N router nodes (from 2: sharing PostgreSQL, behind HAProxy); "
                   "written to dde.yaml as stack.nodes.")
@click.argument("parts", nargs=-1)
@click.pass_context
def up(ctx: click.Context, detach: bool, nodes: int | None, parts: tuple[str, ...]) -> None:
    """Start the parts (default: all) that are not running and wait until they answer.

    Without --detach, stay in the foreground printing their logs; Ctrl-C stops what this
    command started.
    """
    home = home_of(ctx)
    created = not home.config_file.exists()
    settings = load_settings(home)
    click.echo(f"configuration: {home.config_file}"
               + (" (written now with the defaults; edit it, then `dde stack up` again)"
                  if created else ""))
    if nodes is not None:
        for change in cluster.set_nodes(home, nodes):
            click.echo(f"dde.yaml now has {change}")
        settings = load_settings(home)
    if settings.stack.nodes > 1:
        click.echo(f"{settings.stack.nodes} router nodes behind HAProxy; their state "
                   f"folders: {cluster.node_home(home, 1).parent}/router-N")

    def ready(result: dict[str, list[str]]) -> None:
        if {ROUTER, HAPROXY} & set(result["started"] + result["already_running"]):
            _print_web_access(home, settings)

    result = supervisor.up(home, settings, detach=detach, parts=parts or None, on_ready=ready)
    if detach:
        for name in result["started"]:
            click.echo(f"started {name}")
        for name in result["already_running"]:
            click.echo(f"{name} was already running")
    else:
        click.echo(f"stopped {', '.join(result['stopped']) or 'nothing'}")


def _print_web_access(home: Home, settings: Settings) -> None:
    """Where the web UI and API answer, and the token to log in with."""
    if not settings.web.enabled:
        return
    from dde.web.auth import TokenError, load_token, token_location

    host = settings.web.host
    shown = "localhost" if host in ("0.0.0.0", "::", "") else host
    url = f"http://{shown}:{settings.web.port}"
    try:
        token = load_token(home, create=False)
    except TokenError as exc:  # the stack runs all the same: say so, do not fail
        click.echo(f"web UI and API: {url} (token not readable: {exc})")
        return
    click.echo(f"web UI and API: {url}  (OpenAPI: {url}/docs)")
    click.echo(f"API token: {token}  (from {token_location(home)}; `dde token` prints it)")


@stack.command()
@click.argument("parts", nargs=-1)
@click.pass_context
def down(ctx: click.Context, parts: tuple[str, ...]) -> None:
    """Stop the running parts (default: all; the entry first, the ledger last)."""
    home, settings = _context(ctx)
    result = supervisor.down(home, settings, parts=parts or None)
    click.echo(f"stopped {', '.join(result['stopped']) or 'nothing'}")


@stack.command()
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@click.pass_context
def status(ctx: click.Context, as_json: bool) -> None:
    """Show which parts run, their PIDs, ports and logs."""
    home, settings = _context(ctx)
    parts = supervisor.status(home, settings)
    if as_json:
        click.echo(json.dumps(parts, indent=2))
        return
    _print_table(parts)


def _print_table(parts: dict[str, dict[str, Any]]) -> None:
    """The parts as a table; as wide as it needs (a log path is never cut or wrapped)."""
    table = Table(box=None, pad_edge=False)
    for column in ("part", "state", "pid", "ports", "log"):
        table.add_column(column, no_wrap=True, overflow="ignore")
    for name, info in parts.items():
        table.add_row(
            escape(name),
            "[green]running[/green]" if info["running"] else "[dim]stopped[/dim]",
            str(info["pid"]) if info["pid"] is not None else "-",
            ", ".join(str(port) for port in info["ports"]),
            escape(info["log"]),
        )
    columns = shutil.get_terminal_size().columns
    needed = Console(width=10_000).measure(table).maximum
    Console(soft_wrap=False, width=max(columns, needed)).print(table)


@stack.command()
@click.option("--follow", "-f", is_flag=True, help="Keep printing new lines until Ctrl-C.")
@click.option("--lines", "-n", type=click.IntRange(min=0), default=None,
              help="Start this many lines before the end of each log.")
@click.argument("part", required=False)
@click.pass_context
def logs(ctx: click.Context, follow: bool, lines: int | None, part: str | None) -> None:
    """Print the logs of every part (prefixed with its name), or of PART."""
    home, settings = _context(ctx)
    supervisor.logs(home, settings, part, follow, lines=lines)
