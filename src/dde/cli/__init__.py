"""The ``dde`` command: the root group :func:`main` and its command tree.

| module | commands |
| --- | --- |
| :mod:`~dde.cli.serve`, :mod:`~dde.cli.stack_commands` | ``serve``, ``stack up/down/status/logs`` |
| :mod:`~dde.cli.send`, :mod:`~dde.cli.generate` | ``send``, ``generate`` |
| :mod:`~dde.cli.ledger_commands` | ``where``, ``queue``, ``queue retry`` |
| :mod:`~dde.cli.endpoint_commands` | ``endpoints list/add/drain/enable/disable/remove`` |
| :mod:`~dde.cli.rules_commands` | ``rules show/apply``, ``route explain`` |
| :mod:`~dde.cli.reconcile_command`, :mod:`~dde.cli.token_command` | ``reconcile``, ``token`` |

Commands raise; every group is a :class:`~dde.cli.boundary.CommandGroup`, which turns the
project's exceptions into one line ``dde: error: …`` on stderr and the exit code of one
table (:func:`dde.cli.errors.exit_codes`); never a traceback.

Exit codes (:class:`~dde.cli.errors.ExitCode`):

- 0 done;
- 1 an error the message explains (configuration, port in use, unknown endpoint, …), and
  ``dde send`` when a file failed;
- 2 wrong usage (click);
- 3 the ledger is locked by another process (try again once it is free);
- 4 the ledger is damaged (left untouched: restore it or move it aside);
- 5 ``dde reconcile`` (without ``--repair``) found instances missing in the probe.
"""

from __future__ import annotations

import click

from dde.cli.boundary import CommandGroup
from dde.cli.context import CliContext
from dde.cli.endpoint_commands import endpoints
from dde.cli.generate import generate
from dde.cli.ledger_commands import queue, where
from dde.cli.reconcile_command import reconcile_command
from dde.cli.rules_commands import route, rules
from dde.cli.send import send
from dde.cli.serve import serve
from dde.cli.stack_commands import stack
from dde.cli.token_command import token_command
from dde.config import Home

__all__ = ["main"]


@click.group(cls=CommandGroup)
@click.option("--home", type=click.Path(file_okay=False), default=None,
              help="State folder (default: $DDE_HOME, else ./var).")
@click.option("-v", "--verbose", is_flag=True, help="Debug logging.")
@click.pass_context
def main(ctx: click.Context, home: str | None, verbose: bool) -> None:
    """Dynamic DICOM Endpoints: a durable, load-balancing DICOM router."""
    ctx.obj = CliContext(Home.resolve(home), verbose)


for _command in (stack, serve, send, where, generate, token_command, queue, endpoints, rules,
                 route, reconcile_command):
    main.add_command(_command)
