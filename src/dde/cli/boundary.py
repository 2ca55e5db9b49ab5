"""The one place where exceptions become exit codes: every group of the ``dde`` command
tree is a :class:`CommandGroup`, whose :meth:`~CommandGroup.invoke` translates what its
commands raise with :func:`dde.cli.errors.translate`.

Wrong usage (click's UsageError: an unknown option, a missing argument, a FILE that does
not exist) reads the same, ``dde: error: …``, and keeps click's exit code 2.

The innermost group translates first; the translated :class:`~dde.cli.errors.CliError`
passes the outer groups unchanged. A group used on its own (a test invoking ``stack``
directly) translates the same way.
"""

from __future__ import annotations

from typing import Any

import click

from dde.cli.errors import translate, usage_error

CONTEXT_SETTINGS: dict[str, Any] = {"help_option_names": ["-h", "--help"]}


class CommandGroup(click.Group):
    """A click group whose commands' exceptions leave as ``dde: error: …`` and the exit
    code of the table (:func:`dde.cli.errors.exit_codes`), never as a traceback."""

    group_class = type  # subgroups made with @group.group() are CommandGroups too

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("context_settings", CONTEXT_SETTINGS)
        super().__init__(*args, **kwargs)

    def make_context(self, info_name: str | None, args: list[str],
                     parent: click.Context | None = None, **extra: Any) -> click.Context:
        try:
            return super().make_context(info_name, args, parent, **extra)
        except click.exceptions.NoArgsIsHelpError:
            raise  # `dde` alone prints its help
        except click.UsageError as exc:  # this group's own options
            raise usage_error(exc) from None

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except click.exceptions.NoArgsIsHelpError:
            raise
        except click.UsageError as exc:  # a command's name, options or arguments
            raise usage_error(exc) from None
        except Exception as exc:
            error = translate(exc)
            if error is None:
                raise
            raise error from exc
