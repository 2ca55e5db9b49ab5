"""The one place where exceptions become exit codes: every group of the ``dde`` command
tree is a :class:`CommandGroup`, whose :meth:`~CommandGroup.invoke` translates what its
commands raise with :func:`dde.cli.errors.translate`.

The innermost group translates first; the translated :class:`~dde.cli.errors.CliError`
passes the outer groups unchanged. A group used on its own (a test invoking ``stack``
directly) translates the same way.
"""

from __future__ import annotations

from typing import Any

import click

from dde.cli.errors import translate

CONTEXT_SETTINGS: dict[str, Any] = {"help_option_names": ["-h", "--help"]}


class CommandGroup(click.Group):
    """A click group whose commands' exceptions leave as ``dde: error: …`` and the exit
    code of the table (:func:`dde.cli.errors.exit_codes`), never as a traceback."""

    group_class = type  # subgroups made with @group.group() are CommandGroups too

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("context_settings", CONTEXT_SETTINGS)
        super().__init__(*args, **kwargs)

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except Exception as exc:
            error = translate(exc)
            if error is None:
                raise
            raise error from exc
