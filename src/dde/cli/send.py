"""``dde send``: C-STORE files and folders (recursively) with a progress bar; exit 1 when
any file failed (each failure named on its own line)."""

from __future__ import annotations

import json
from pathlib import Path

import click
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from dde.cli.errors import CliError, ExitCode
from dde.cli.output import console


@click.command()
@click.argument("paths", nargs=-1, required=True, type=click.Path(exists=True, path_type=Path))
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=11113, show_default=True, type=int)
@click.option("--aec", default="DYNAMIC_DICOM_MW", show_default=True, help="Called AE title.")
@click.option("--aet", default="DDE_SEND", show_default=True, help="Calling AE title.")
@click.option("--json", "as_json", is_flag=True, help="Print the per-file results as JSON.")
@click.pass_context
def send(ctx: click.Context, paths: tuple[Path, ...], host: str, port: int, aec: str, aet: str,
         as_json: bool) -> None:
    """Send files and folders (recursively) by C-STORE; exit 1 if any file failed."""
    from dde.sending import FileResult, collect_files, send_files

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
