"""``dde send``: C-STORE files and folders (recursively) with a progress bar; exit 1 when
any file failed (each failure named on its own line).

By default it sends to the router of the state folder (``$DDE_HOME`` / ``--home``): its
port and AE title from ``dde.yaml`` and the ``DDE_*`` overrides, on 127.0.0.1 unless the
receiver listens on one address. ``--host``, ``--port`` and ``--aec`` win.
"""

from __future__ import annotations

import json
from pathlib import Path

import click
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from dde.cli.context import settings_if_any
from dde.cli.errors import CliError, ExitCode
from dde.cli.output import console
from dde.config import MAIN_RECEIVER, ConfigError, ReceiverSettings

ANY_ADDRESS = ("", "0.0.0.0", "::")


def router_address(receiver: ReceiverSettings) -> tuple[str, int, str]:
    """Where the router of these settings answers: (host, port, called AE title)."""
    host = "127.0.0.1" if receiver.host in ANY_ADDRESS else receiver.host
    return host, receiver.port, receiver.ae_title


@click.command()
@click.argument("paths", nargs=-1, required=True, type=click.Path(exists=True, path_type=Path))
@click.option("--host", default=None,
              help="Default: the router's (127.0.0.1 unless receiver.host is one address).")
@click.option("--port", default=None, type=click.IntRange(1, 65535),
              help="Default: the router's receiver.port (dde.yaml, DDE_DICOM_PORT).")
@click.option("--aec", default=None,
              help="Called AE title. Default: the router's receiver.ae_title (DDE_AE_TITLE).")
@click.option("--aet", default="DDE_SEND", show_default=True, help="Calling AE title.")
@click.option("--receiver", metavar="NAME", default=MAIN_RECEIVER, show_default=True,
              help="Which of the router's receivers the defaults are (a receivers: entry).")
@click.option("--json", "as_json", is_flag=True, help="Print the per-file results as JSON.")
@click.pass_context
def send(ctx: click.Context, paths: tuple[Path, ...], host: str | None, port: int | None,
         aec: str | None, aet: str, receiver: str, as_json: bool) -> None:
    """Send files and folders (recursively) by C-STORE to the router of the state folder
    (or --host/--port/--aec); exit 1 if any file failed."""
    from dde.sending import FileResult, collect_files, send_files

    if host is None or port is None or aec is None:
        settings = settings_if_any(ctx)  # an invalid dde.yaml: its own error
        try:
            taking = settings.named_receiving_ae(receiver)
        except ConfigError as exc:
            raise CliError(str(exc), ExitCode.USAGE) from None
        default_host, default_port, default_aec = router_address(taking.settings)
        host = default_host if host is None else host
        port = default_port if port is None else port
        aec = default_aec if aec is None else aec
    files = list(collect_files(paths))
    if not files:
        raise CliError("no files to send")
    with Progress(TextColumn("sending"), BarColumn(), MofNCompleteColumn(),
                  TimeElapsedColumn(), console=console(stderr=True),
                  disable=as_json) as progress:
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
        ctx.exit(ExitCode.ERROR)
