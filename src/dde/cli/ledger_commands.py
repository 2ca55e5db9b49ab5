"""``dde where``, ``dde queue`` and ``dde queue retry``: the operator's view of the ledger.

``--json`` prints the documents of :mod:`dde.reports`, the ones the web API returns.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import click
from rich.markup import escape
from rich.table import Table

from dde import reports
from dde.cli.boundary import CommandGroup
from dde.cli.context import ledger
from dde.cli.errors import CliError
from dde.cli.output import console, quiet_pydicom
from dde.dicom.uids import uid_name
from dde.store.states import DeliveryState

UID_PATTERN = re.compile(r"[0-9]+(\.[0-9]+)*")


@click.command()
@click.argument("sop_instance_uid")
@click.option("--json", "as_json", is_flag=True)
@click.option("--show-phi", is_flag=True,
              help="Show the old values of edited elements (patient data), not (hidden).")
@click.pass_context
def where(ctx: click.Context, sop_instance_uid: str, as_json: bool, show_phi: bool) -> None:
    """Where one instance went: when it arrived, from whom, which rule, each delivery,
    and what a rule's set/remove changed in the bytes a delivery sends.

    SOP_INSTANCE_UID may also be the path of a DICOM file: its SOP Instance UID is used.
    """
    given = Path(sop_instance_uid)
    if given.is_file():
        sop_instance_uid = _uid_of_file(given)
    elif not UID_PATTERN.fullmatch(sop_instance_uid):
        problem = "is not a file" if given.exists() else "does not exist"
        raise CliError(f"{sop_instance_uid} {problem}, and is not a SOP Instance UID "
                       "(digits and dots)")
    records = ledger(ctx).operators.where(sop_instance_uid)
    if not records:
        raise CliError(f"no instance with SOP Instance UID {sop_instance_uid} in the ledger")
    document = reports.where_document(records, show_phi)
    if as_json:
        click.echo(json.dumps(document, indent=2))
        return
    _print_where(document)


def _print_where(document: dict[str, Any]) -> None:
    out = console()
    receptions = document["receptions"]
    out.print(f"SOP Instance UID  {escape(document['sop_instance_uid'])}")
    out.print(f"received          {document['received_at']} from "
              f"{escape(document['calling_aet'])} ({document['source_ip']}) to "
              f"{escape(document['called_aet'])}, {document['size']} bytes"
              + (f", received {receptions} times" if receptions > 1 else ""))
    out.print(f"rule              {escape(document['rule'])}")
    if not document["deliveries"]:  # a discard rule: acknowledged, sent nowhere
        out.print(f"deliveries        none: discarded by rule {escape(document['rule'])}")
        return
    table = Table("id", "endpoint", "role", "state", "attempts", "commitment", "last error")
    for d in document["deliveries"]:
        state = str(d["state"])
        if d["transcoded_from"]:
            state += (f" as {uid_name(d['transfer_syntax_uid'] or '')}, transcoded from "
                      f"{uid_name(d['transcoded_from'])}")
        commitment = str(d.get("commitment") or "")
        if d.get("commitment_reason"):
            commitment += f": {d['commitment_reason']}"
        table.add_row(str(d["id"]), escape(str(d["endpoint"])), str(d["role"]),
                      escape(state), str(d["attempts"]), escape(commitment),
                      escape(str(d["last_error"] or "")))
    out.print(table)
    _print_edits(document["deliveries"])


def _print_edits(deliveries: list[dict[str, Any]]) -> None:
    """Each rule's edits once, with the deliveries that sent them."""
    out = console()
    by_rule: dict[str, list[dict[str, Any]]] = {}
    for d in deliveries:
        if d.get("variant"):
            by_rule.setdefault(str(d["variant"]), []).append(d)
    for rule, sent in by_rule.items():
        names = ", ".join(str(d["endpoint"]) for d in sent)
        if sent[0].get("deidentified"):
            uid = sent[0].get("sent_sop_instance_uid")
            out.print(f"de-identified by rule {escape(rule)} ({escape(sent[0]['deidentified'])})"
                      f" for {escape(names)}" + (f", sent as {escape(uid)}" if uid else ""))
            continue
        out.print(f"edited by rule {escape(rule)} (sent to {escape(names)}):")
        for edit in sent[0]["edits"]:
            name = f"{edit['tag']} {edit['keyword'] or ''}".rstrip()
            if edit["action"] == "remove":
                out.print(f"  {escape(name)}: removed (was {escape(str(edit['old']))})")
            else:
                was = "absent" if edit["old"] is None else str(edit["old"])
                out.print(f"  {escape(name)}: {escape(str(edit['new']))!s} (was {escape(was)})")


def _uid_of_file(path: Path) -> str:
    from pydicom import dcmread
    from pydicom.errors import InvalidDicomError

    try:
        with quiet_pydicom():
            dataset = dcmread(path, stop_before_pixels=True,
                              specific_tags=["SOPInstanceUID"])
            return str(dataset.SOPInstanceUID)
    except (InvalidDicomError, OSError, AttributeError, ValueError):
        raise CliError(f"{path}: not a DICOM file with a SOP Instance UID") from None


@click.group(cls=CommandGroup, invoke_without_command=True)
@click.option("--json", "as_json", is_flag=True)
@click.option("--limit", default=200, show_default=True, type=int)
@click.pass_context
def queue(ctx: click.Context, as_json: bool, limit: int) -> None:
    """What is waiting or failed, per endpoint; `dde queue retry` to send failed ones again."""
    if ctx.invoked_subcommand is not None:
        return
    operators = ledger(ctx).operators
    document = reports.queue_document(operators.state_counts(), operators.queue(limit=limit))
    if as_json:
        click.echo(json.dumps(document, indent=2))
        return
    _print_queue(document)


def _print_queue(document: dict[str, Any]) -> None:
    out = console()
    counts: dict[str, dict[str, int]] = document["counts"]
    summary = Table("endpoint", "pending", "failed", "delivered")
    for endpoint in sorted(counts):
        c = counts[endpoint]
        summary.add_row(escape(endpoint), str(c.get("pending", 0)), str(c.get("failed", 0)),
                        str(c.get("delivered", 0)))
    out.print(summary)
    entries: list[dict[str, Any]] = document["deliveries"]
    if not entries:
        out.print("nothing is waiting or failed")
        return
    table = Table("id", "endpoint", "state", "attempts", "next attempt", "last error")
    for e in entries:
        table.add_row(str(e["delivery_id"]), escape(e["endpoint"]), e["state"],
                      str(e["attempts"]),
                      (e["next_attempt_at"] or "") if e["state"] == "pending" else "",
                      escape(e["last_error"] or ""))
    out.print(table)


@queue.command("retry")
@click.argument("delivery_id", required=False, type=int)
@click.option("--failed", "all_failed", is_flag=True, help="Retry every failed delivery.")
@click.pass_context
def queue_retry(ctx: click.Context, delivery_id: int | None, all_failed: bool) -> None:
    """Send a failed delivery (or with --failed, every failed one) again, now."""
    if (delivery_id is None) == (not all_failed):
        raise CliError("give either a DELIVERY_ID or --failed")
    operators = ledger(ctx).operators
    if delivery_id is None:
        click.echo(f"{operators.retry_failed()} failed deliveries queued again")
        return
    previous = operators.retry(delivery_id)
    if previous is None:
        raise CliError(f"no delivery with id {delivery_id}")
    if previous is DeliveryState.DELIVERED:
        raise CliError(f"delivery {delivery_id} is already delivered")
    click.echo(f"delivery {delivery_id} queued again (was {previous.value})")
