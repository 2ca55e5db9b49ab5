"""``dde token``: print the API token (the bearer token, and the password of the web login).

It is ``$DDE_API_TOKEN`` when set; else the router's ``$DDE_HOME/api-token``, generated
here if the router has not started yet (it then uses the same one).
"""

from __future__ import annotations

import click

from dde.config import Home


@click.command("token")
@click.pass_context
def token_command(ctx: click.Context) -> None:
    """Print the API token: `Authorization: Bearer TOKEN`, or log in to the web UI with it."""
    from dde.web.auth import TokenError, load_token  # not at import: keeps `dde` quick

    home = getattr(ctx.obj, "home", None)
    if not isinstance(home, Home):
        raise click.ClickException("internal: `dde token` needs ctx.obj.home")
    try:
        click.echo(load_token(home))
    except TokenError as exc:
        click.echo(f"dde: error: {exc}", err=True)
        raise click.exceptions.Exit(1) from None
