"""Console output for the CLI: rich tables, full width when piped (no 80-column wrap)."""

from __future__ import annotations

import logging
import sys
import warnings
from collections.abc import Iterator
from contextlib import contextmanager

from rich.console import Console

PIPED_WIDTH = 200


def console(stderr: bool = False) -> Console:
    """A rich console on stdout (or stderr): the terminal's width, or 200 columns when the
    output goes to a pipe or file, so that a line a script greps stays whole."""
    stream = sys.stderr if stderr else sys.stdout
    return Console(stderr=stderr, width=None if stream.isatty() else PIPED_WIDTH)


@contextmanager
def quiet_pydicom() -> Iterator[None]:
    """Within the block, pydicom says nothing on stderr: no value-validation warnings
    (``Invalid value for VR UI``), no other warning, no log line of its logger. For a
    command's own reading of a file (``route explain``, ``where FILE``); the router's
    settings are untouched, and everything is as before once the block ends."""
    from pydicom import config

    logger = logging.getLogger("pydicom")
    disabled = logger.disabled
    logger.disabled = True
    try:
        with warnings.catch_warnings(), config.disable_value_validation():
            warnings.simplefilter("ignore")
            yield
    finally:
        logger.disabled = disabled
