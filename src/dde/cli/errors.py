"""The ``dde`` command's exit codes, its one exception, and the one table that turns the
project's exceptions into them.

A command raises (its own :class:`CliError`, or whatever the project raises); the command
tree's groups (:class:`dde.cli.boundary.CommandGroup`) translate at one boundary with
:func:`translate`. A message prints as one line ``dde: error: …`` on stderr.
"""

from __future__ import annotations

import functools
from enum import IntEnum
from typing import IO, Any

import click
from pydantic import ValidationError


class ExitCode(IntEnum):
    """What ``dde`` exits with (the README's list)."""

    OK = 0
    ERROR = 1
    """An error the message explains (configuration, port in use, a failed file, …)."""
    USAGE = 2
    """Wrong usage: click's own code."""
    LEDGER_LOCKED = 3
    """The ledger is locked by another process: try again once it is free."""
    LEDGER_CORRUPT = 4
    """The ledger is damaged: it is left untouched; restore it or move it aside."""
    DIFFERENCES = 5
    """``dde reconcile`` (without ``--repair``) found instances missing in the probe."""


EXIT_LEDGER_LOCKED = ExitCode.LEDGER_LOCKED
EXIT_LEDGER_CORRUPT = ExitCode.LEDGER_CORRUPT


class CliError(click.ClickException):
    """An error a user can act on: ``dde: error: MESSAGE`` on stderr, then ``exit_code``."""

    def __init__(self, message: str, exit_code: int = ExitCode.ERROR) -> None:
        super().__init__(message)
        # click declares exit_code a ClassVar, but reads it from the exception it caught
        self.exit_code = int(exit_code)  # type: ignore[misc]

    def show(self, file: IO[Any] | None = None) -> None:
        click.echo(f"dde: error: {self.message}", err=True)


@functools.cache
def exit_codes() -> dict[type[Exception], ExitCode]:
    """The table: each exception of the project a command may let out, and its exit code.

    A raised exception gets the code of its nearest class in the table (``LedgerLocked``
    before its base ``LedgerError``). Built at the first error, so that ``dde -h`` does not
    import what only some commands need.
    """
    from dde.config import ConfigError
    from dde.endpoints.registry import EndpointError
    from dde.reconcile import ReconcileError
    from dde.routing.explain import ExplainError
    from dde.routing.rules import RulesError
    from dde.stack.errors import StackError
    from dde.store.errors import LedgerCorrupt, LedgerError, LedgerLocked

    return {
        LedgerLocked: ExitCode.LEDGER_LOCKED,
        LedgerCorrupt: ExitCode.LEDGER_CORRUPT,
        LedgerError: ExitCode.ERROR,
        ConfigError: ExitCode.ERROR,  # TokenError (``dde token``) included
        RulesError: ExitCode.ERROR,
        EndpointError: ExitCode.ERROR,
        ExplainError: ExitCode.ERROR,
        ReconcileError: ExitCode.ERROR,
        StackError: ExitCode.ERROR,
        ValidationError: ExitCode.ERROR,  # a value given on the command line (endpoints add)
        OSError: ExitCode.ERROR,  # starting the receiver: its port taken, TLS files, …
    }


def exit_code_of(exc: BaseException) -> ExitCode | None:
    """The exit code the table gives ``exc``, or None when it is not in the table."""
    table = exit_codes()
    return next((table[cls] for cls in type(exc).__mro__ if cls in table), None)


def message_of(exc: BaseException) -> str:
    """The explanation of ``exc`` for ``dde: error: …``, with the notes a command added to
    it (``exc.add_note``) after a ``;``."""
    return "; ".join([_explanation(exc), *getattr(exc, "__notes__", ())])


def _explanation(exc: BaseException) -> str:
    if isinstance(exc, ValidationError):
        return "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
    if isinstance(exc, OSError) and exc.strerror:
        return f"{exc.filename}: {exc.strerror}" if exc.filename else exc.strerror
    return str(exc) or type(exc).__name__


def usage_error(exc: click.UsageError) -> CliError:
    """Wrong usage (an unknown option, a missing argument, ``FILE`` that does not exist) as
    one line ``dde: error: … (see 'dde COMMAND -h')``; exit 2 as click's own."""
    message = exc.format_message()
    if exc.ctx is not None:
        message = f"{message} (see '{exc.ctx.command_path} -h')"
    return CliError(message, ExitCode.USAGE)


def translate(exc: BaseException) -> CliError | None:
    """The :class:`CliError` for an exception of the table; None for anything else (a bug:
    it keeps its traceback), for click's own exceptions, and for a broken pipe (click
    quietens that itself)."""
    if isinstance(exc, click.ClickException | click.exceptions.Exit | BrokenPipeError):
        return None
    code = exit_code_of(exc)
    if code is None:
        return None
    return CliError(message_of(exc), code)
