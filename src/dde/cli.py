"""The ``dde`` command: serve, stack, send, where, queue.

Errors a user can fix print ``dde: error: …`` on stderr and exit non-zero; never a traceback.

Exit codes: 0 done; 1 an error the message explains (configuration, port in use, …);
2 wrong usage (click); 3 the ledger is locked by another process (try again once it is
free); 4 the ledger is damaged (left untouched: restore or move it aside).
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import click
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from dde import logs
from dde.cli_manage import endpoints, reconcile_command, route, rules
from dde.config import ConfigError, Home, load_settings
from dde.output import console
from dde.stack.commands import stack
from dde.store.errors import LedgerCorrupt, LedgerError, LedgerLocked
from dde.store.ledger import Ledger
from dde.store.states import DeliveryState
from dde.web.commands import token_command


@dataclass
class CliContext:
    home: Home
    verbose: bool


EXIT_LEDGER_LOCKED = 3
EXIT_LEDGER_CORRUPT = 4


class UserError(click.ClickException):
    def show(self, file: Any = None) -> None:
        click.echo(f"dde: error: {self.message}", err=True)


class LedgerLockedError(UserError):
    exit_code = EXIT_LEDGER_LOCKED


class LedgerCorruptError(UserError):
    exit_code = EXIT_LEDGER_CORRUPT


def ledger_error(exc: LedgerError) -> UserError:
    """The :class:`UserError` for a ledger that cannot be opened, with its exit code."""
    if isinstance(exc, LedgerLocked):
        return LedgerLockedError(str(exc))
    if isinstance(exc, LedgerCorrupt):
        return LedgerCorruptError(str(exc))
    return UserError(str(exc))


def _ledger(ctx: click.Context) -> Ledger:
    home: Home = ctx.obj.home
    if not home.database.exists():
        raise UserError(f"no ledger at {home.database} (has the router run with this --home?)")
    try:
        return Ledger(home.database)
    except LedgerError as exc:
        raise ledger_error(exc) from None


def _iso(timestamp: float | None) -> str | None:
    if timestamp is None:
        return None
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(timestamp)) + (
        f".{int((timestamp % 1) * 1000):03d}"
    )


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--home", type=click.Path(file_okay=False), default=None,
              help="State folder (default: $DDE_HOME, else ./var).")
@click.option("-v", "--verbose", is_flag=True, help="Debug logging.")
@click.pass_context
def main(ctx: click.Context, home: str | None, verbose: bool) -> None:
    """Dynamic DICOM Endpoints: a durable, load-balancing DICOM router."""
    ctx.obj = CliContext(Home.resolve(home), verbose)


main.add_command(stack)
main.add_command(endpoints)
main.add_command(rules)
main.add_command(route)
main.add_command(reconcile_command)
main.add_command(token_command)


@main.command()
@click.option("--config", "config_file", type=click.Path(dir_okay=False), default=None,
              help="Configuration file (default: dde.yaml in the state folder).")
@click.pass_context
def serve(ctx: click.Context, config_file: str | None) -> None:
    """Run the router alone (receiver, routing, delivery) until SIGTERM or Ctrl-C."""
    from dde.runtime.main import RouterApp

    logs.configure(ctx.obj.verbose)
    home: Home = ctx.obj.home
    try:
        settings = load_settings(home, Path(config_file) if config_file else None)
        app = RouterApp(home, settings, Path(config_file) if config_file else None,
                        verbose=ctx.obj.verbose)
    except LedgerError as exc:
        raise ledger_error(exc) from None
    except ConfigError as exc:
        raise UserError(str(exc)) from None
    try:
        app.serve_forever()
    except OSError as exc:
        raise UserError(f"cannot start the receiver: {exc.strerror or exc}") from None


@main.command()
@click.argument("paths", nargs=-1, required=True, type=click.Path(exists=True, path_type=Path))
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=11113, show_default=True, type=int)
@click.option("--aec", default="DYNAMIC_DICOM_MW", show_default=True, help="Called AE title.")
@click.option("--aet", default="DDE_SEND", show_default=True, help="Calling AE title.")
@click.option("--json", "as_json", is_flag=True, help="Print the per-file results as JSON.")
def send(paths: tuple[Path, ...], host: str, port: int, aec: str, aet: str,
         as_json: bool) -> None:
    """Send files and folders (recursively) by C-STORE; exit 1 if any file failed."""
    from dde.sending import FileResult, collect_files, send_files

    files = list(collect_files(paths))
    if not files:
        raise UserError("no files to send")
    progress_console = console(stderr=True)
    with Progress(TextColumn("sending"), BarColumn(), MofNCompleteColumn(),
                  TimeElapsedColumn(), console=progress_console, disable=as_json) as progress:
        task = progress.add_task("send", total=len(files))

        def advance(_: FileResult) -> None:
            progress.advance(task)

        results = send_files(files, host=host, port=port, called_aet=aec, calling_aet=aet,
                             progress=advance)
    failed = [r for r in results if not r.ok]
    if as_json:
        click.echo(json.dumps({
            "sent": len(results) - len(failed), "failed": len(failed),
            "files": [{"path": str(r.path), "ok": r.ok, "detail": r.detail} for r in results],
        }, indent=2))
    else:
        out = console()
        for result in failed:
            out.print(f"[red]FAILED[/red] {escape(str(result.path))}: {escape(result.detail)}")
        out.print(f"{len(results) - len(failed)} sent, {len(failed)} failed")
    if failed:
        sys.exit(1)


@main.command()
@click.argument("sop_instance_uid")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def where(ctx: click.Context, sop_instance_uid: str, as_json: bool) -> None:
    """Where one instance went: when it arrived, from whom, which rule, each delivery.

    SOP_INSTANCE_UID may also be the path of a DICOM file: its SOP Instance UID is used.
    """
    if Path(sop_instance_uid).is_file():
        sop_instance_uid = _uid_of_file(Path(sop_instance_uid))
    ledger = _ledger(ctx)
    records = ledger.operators.where(sop_instance_uid)
    if not records:
        raise UserError(f"no instance with SOP Instance UID {sop_instance_uid} in the ledger")
    latest = records[-1]
    deliveries = [
        {"id": d.id, "endpoint": d.endpoint, "role": d.role, "state": d.state,
         "attempts": d.attempts, "last_error": d.last_error,
         "delivered_at": _iso(d.delivered_at),
         "next_attempt_at": _iso(d.next_attempt_at) if d.state == "pending" else None}
        for d in latest.deliveries
    ]
    document = {
        "sop_instance_uid": latest.sop_instance_uid,
        "sop_class_uid": latest.sop_class_uid,
        "transfer_syntax_uid": latest.transfer_syntax_uid,
        "received_at": _iso(latest.received_at),
        "calling_aet": latest.calling_aet,
        "called_aet": latest.called_aet,
        "source_ip": latest.source_ip,
        "rule": latest.rule,
        "size": latest.size,
        "receptions": len(records),
        "deliveries": deliveries,
    }
    if as_json:
        click.echo(json.dumps(document, indent=2))
        return
    out = console()
    out.print(f"SOP Instance UID  {escape(latest.sop_instance_uid)}")
    out.print(f"received          {document['received_at']} from "
                  f"{escape(latest.calling_aet)} ({latest.source_ip}), {latest.size} bytes"
                  + (f", received {len(records)} times" if len(records) > 1 else ""))
    out.print(f"rule              {escape(latest.rule)}")
    table = Table("id", "endpoint", "role", "state", "attempts", "last error")
    for d in deliveries:
        table.add_row(str(d["id"]), escape(str(d["endpoint"])), str(d["role"]),
                      str(d["state"]), str(d["attempts"]), escape(str(d["last_error"] or "")))
    out.print(table)


def _uid_of_file(path: Path) -> str:
    from pydicom import dcmread
    from pydicom.errors import InvalidDicomError

    try:
        dataset = dcmread(path, stop_before_pixels=True, specific_tags=["SOPInstanceUID"])
        return str(dataset.SOPInstanceUID)
    except (InvalidDicomError, OSError, AttributeError, ValueError):
        raise UserError(f"{path}: not a DICOM file with a SOP Instance UID") from None


@main.command()
@click.argument("folder", type=click.Path(file_okay=False, path_type=Path))
@click.option("--studies", default=2, show_default=True, type=click.IntRange(1, 1000))
@click.option("--instances", default=10, show_default=True, type=click.IntRange(1, 10000),
              help="Instances per study.")
@click.option("--size", default=512, show_default=True, type=click.IntRange(8, 4096),
              help="Rows and columns of the 16-bit CT images.")
def generate(folder: Path, studies: int, instances: int, size: int) -> None:
    """Write synthetic CT studies (generated pixels, no real patient) to send for a try."""
    from dde.synthetic import write_studies

    written = write_studies(folder, studies, instances, rows=size, columns=size)
    total = sum(len(files) for files in written.values())
    click.echo(f"wrote {total} instances of {studies} studies to {folder}")


@main.group(invoke_without_command=True)
@click.option("--json", "as_json", is_flag=True)
@click.option("--limit", default=200, show_default=True, type=int)
@click.pass_context
def queue(ctx: click.Context, as_json: bool, limit: int) -> None:
    """What is waiting or failed, per endpoint; `dde queue retry` to send failed ones again."""
    if ctx.invoked_subcommand is not None:
        return
    ledger = _ledger(ctx)
    counts = ledger.operators.state_counts()
    entries = ledger.operators.queue(limit=limit)
    if as_json:
        click.echo(json.dumps({
            "counts": counts,
            "deliveries": [
                {**asdict(e), "next_attempt_at": _iso(e.next_attempt_at),
                 "created_at": _iso(e.created_at)} for e in entries
            ],
        }, indent=2))
        return
    out = console()
    summary = Table("endpoint", "pending", "failed", "delivered")
    for endpoint in sorted(counts):
        c = counts[endpoint]
        summary.add_row(escape(endpoint), str(c.get("pending", 0)), str(c.get("failed", 0)),
                        str(c.get("delivered", 0)))
    out.print(summary)
    if entries:
        table = Table("id", "endpoint", "state", "attempts", "next attempt", "last error")
        for e in entries:
            table.add_row(str(e.delivery_id), escape(e.endpoint), e.state, str(e.attempts),
                          _iso(e.next_attempt_at) if e.state == "pending" else "",
                          escape(e.last_error or ""))
        out.print(table)
    else:
        out.print("nothing is waiting or failed")


@queue.command("retry")
@click.argument("delivery_id", required=False, type=int)
@click.option("--failed", "all_failed", is_flag=True, help="Retry every failed delivery.")
@click.pass_context
def queue_retry(ctx: click.Context, delivery_id: int | None, all_failed: bool) -> None:
    """Send a failed delivery (or with --failed, every failed one) again, now."""
    if (delivery_id is None) == (not all_failed):
        raise UserError("give either a DELIVERY_ID or --failed")
    ledger = _ledger(ctx)
    if all_failed:
        count = ledger.operators.retry_failed()
        click.echo(f"{count} failed deliveries queued again")
        return
    assert delivery_id is not None
    previous = ledger.operators.retry(delivery_id)
    if previous is None:
        raise UserError(f"no delivery with id {delivery_id}")
    if previous is DeliveryState.DELIVERED:
        raise UserError(f"delivery {delivery_id} is already delivered")
    click.echo(f"delivery {delivery_id} queued again (was {previous.value})")
