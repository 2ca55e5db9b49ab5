"""``dde generate``: synthetic CT studies (generated pixels, no real patient) to try the
router with."""

from __future__ import annotations

from pathlib import Path

import click


@click.command()
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
