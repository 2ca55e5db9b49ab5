"""Console output for the CLI: rich tables, full width when piped (no 80-column wrap)."""

from __future__ import annotations

import sys

from rich.console import Console

PIPED_WIDTH = 200


def console(stderr: bool = False) -> Console:
    """A rich console on stdout (or stderr): the terminal's width, or 200 columns when the
    output goes to a pipe or file, so that a line a script greps stays whole."""
    stream = sys.stderr if stderr else sys.stdout
    return Console(stderr=stderr, width=None if stream.isatty() else PIPED_WIDTH)
