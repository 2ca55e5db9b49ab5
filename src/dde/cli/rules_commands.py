"""``dde rules show|apply`` and ``dde route explain``: the routing rules, live, and the
decision they give a file."""

from __future__ import annotations

import json
from pathlib import Path

import click

from dde.cli.boundary import CommandGroup
from dde.cli.context import config_store, ledger_if_any
from dde.cli.errors import CliError
from dde.cli.output import quiet_pydicom
from dde.config import MAIN_RECEIVER
from dde.config_store import default_rules_text
from dde.routing.explain import explain
from dde.routing.router import Origin
from dde.routing.rules import RulesError


@click.group(cls=CommandGroup)
def rules() -> None:
    """Show and apply the routing rules, live."""


RECEIVER_HELP = ("A receiver's own rules file (its receivers: entry's rules:) instead of "
                 "rules.yaml.")


@rules.command("show")
@click.option("--receiver", metavar="NAME", default=None, help=RECEIVER_HELP)
@click.pass_context
def rules_show(ctx: click.Context, receiver: str | None) -> None:
    """Print the active rules document (or the default rule)."""
    store = config_store(ctx)
    settings = store.settings()
    text = store.rules_text(settings, receiver)
    if text is None:
        text = default_rules_text(settings)
    click.echo(text, nl=not text.endswith("\n"))


@rules.command("apply")
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--receiver", metavar="NAME", default=None, help=RECEIVER_HELP)
@click.pass_context
def rules_apply(ctx: click.Context, file: Path, receiver: str | None) -> None:
    """Validate FILE and make it the active rules (an invalid file changes nothing)."""
    raw = file.read_bytes()
    try:
        text = raw.decode()
    except UnicodeDecodeError:
        raise CliError(f"{file}: not a text file (UTF-8); the previous rules stay") from None
    try:
        ruleset = config_store(ctx).apply_rules(text, receiver)
    except RulesError as exc:  # the boundary prints it, with this note, and exits 1
        exc.add_note(f"{file}: the previous rules stay")
        raise
    whose = f" for receiver {receiver}" if receiver is not None else ""
    click.echo(f"applied {len(ruleset.rules)} rules from {file}{whose}")


@click.group(cls=CommandGroup)
def route() -> None:
    """Explain routing decisions."""


@route.command("explain")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--calling-aet", default="", help="Pretend the file came from this AE title.")
@click.option("--called-aet", default=None)
@click.option("--source-ip", default="")
@click.option("--receiver", metavar="NAME", default=MAIN_RECEIVER, show_default=True,
              help="Pretend the file came to this receiver (its rules, AE title and port).")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def route_explain(ctx: click.Context, file: Path, calling_aet: str, called_aet: str | None,
                  source_ip: str, receiver: str, as_json: bool) -> None:
    """The rule and destinations FILE would get now, without sending it."""
    store = config_store(ctx)
    settings = store.settings()
    ruleset = store.ruleset(settings)
    taking = settings.named_receiving_ae(receiver)
    origin = Origin(calling_aet, called_aet or taking.settings.ae_title, source_ip,
                    taking.settings.port, taking.name)
    with quiet_pydicom():  # a header pydicom finds odd is explained, not warned about
        result = explain(file, settings, ruleset, ledger_if_any(ctx), origin)
    if as_json:
        click.echo(json.dumps(result, indent=2))
        return
    click.echo(f"rule:         {result['rule']}")
    click.echo(f"destinations: {', '.join(result['destinations']) or '(none)'}")  # type: ignore[arg-type]
    click.echo(f"reason:       {result['reason']}")
    for plan in result.get("edits") or []:  # type: ignore[attr-defined]
        click.echo(f"edits of rule {plan['rule']} (to {', '.join(plan['destinations'])}):")
        if plan["error"]:
            click.echo(f"  {plan['error']}")
        for change in plan["changes"]:
            name = f"{change['tag']} {change['keyword']}".rstrip()
            was = "absent" if change["old"] is None else change["old"]
            now = "removed" if change["action"] == "remove" else change["new"]
            click.echo(f"  {name}: {now} (was {was})")
    for plan in result.get("deidentify") or []:  # type: ignore[attr-defined]
        click.echo(f"de-identified by rule {plan['rule']} ({plan['method']}) "
                   f"for {', '.join(plan['destinations'])}:")
        if plan.get("error"):
            click.echo(f"  {plan['error']}")
        elif plan["held_back"]:
            click.echo(f"  {plan['held_back']}")
        else:
            click.echo(f"  {plan['changed_elements']} elements changed, removed or emptied")
