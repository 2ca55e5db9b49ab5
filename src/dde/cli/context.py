"""What every ``dde`` command gets from the root group: the state folder, verbosity, and
the ledger and configuration files inside it."""

from __future__ import annotations

from dataclasses import dataclass

import click

from dde.cli.errors import CliError
from dde.config import Home, Settings, StoreBackend, load_settings, parse_settings
from dde.config_store import ConfigStore
from dde.store.ledger import Ledger, open_ledger


@dataclass
class CliContext:
    """``ctx.obj`` of the ``dde`` command (``--home``, ``-v``)."""

    home: Home
    verbose: bool


def home_of(ctx: click.Context) -> Home:
    """The state folder ``--home`` chose (``ctx.obj.home``: any object with a ``home``)."""
    home = getattr(ctx.obj, "home", None)
    if not isinstance(home, Home):
        raise click.ClickException("internal: the dde commands need ctx.obj.home (a Home)")
    return home


def verbose(ctx: click.Context) -> bool:
    return bool(getattr(ctx.obj, "verbose", False))


def config_store(ctx: click.Context) -> ConfigStore:
    """The configuration files (``dde.yaml``, ``rules.yaml``) of the state folder (and in
    shared mode the cluster's endpoints and rules; closed when the command ends)."""
    store = ConfigStore(home_of(ctx))
    ctx.call_on_close(store.close)
    return store


def settings_if_any(ctx: click.Context) -> Settings:
    """The router's settings (``dde.yaml`` of the state folder and the ``DDE_*``
    overrides), without writing the file when there is none yet (the defaults then)."""
    home = home_of(ctx)
    if home.config_file.exists():
        return load_settings(home)
    return parse_settings({}, str(home.config_file))


def ledger(ctx: click.Context) -> Ledger:
    """The router's ledger, closed when the command ends. It must exist (a command that
    reads it never creates one); a locked or damaged one raises
    :class:`~dde.store.errors.LedgerError` for the boundary."""
    opened = ledger_if_any(ctx)
    if opened is None:
        database = home_of(ctx).database
        raise CliError(f"no ledger at {database} (has the router run with this --home?)")
    return opened


def ledger_if_any(ctx: click.Context) -> Ledger | None:
    """The router's ledger, or None before the router first ran (closed when the command
    ends)."""
    database = home_of(ctx).database
    store = settings_if_any(ctx).store
    if store.backend is StoreBackend.SQLITE and not database.exists():
        return None
    opened = open_ledger(store, database)
    ctx.call_on_close(opened.close)
    return opened
