"""``dde token``: print the API token (the bearer token, and the password of the web login).

It is ``$DDE_API_TOKEN`` when set; else the router's ``$DDE_HOME/api-token``, generated
here if the router has not started yet (it then uses the same one). A token that cannot be
read (a TokenError, a ConfigError) leaves through the boundary: exit 1.
"""

from __future__ import annotations

import click

from dde.cli.context import home_of


@click.command("token")
@click.pass_context
def token_command(ctx: click.Context) -> None:
    """Print the API token: `Authorization: Bearer TOKEN`, or log in to the web UI with it."""
    from dde.web.auth import load_token  # not at import: keeps `dde` quick

    click.echo(load_token(home_of(ctx)))
