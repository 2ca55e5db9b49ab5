"""``dde where`` and ``dde queue``: the operator's view of the ledger, via click's runner."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner, Result
from tests.support.unitkit import delivery_rows, ingest_to

from dde.cli import main
from dde.dicom.commitment import CommitmentReport, FailedReference, SopReference
from dde.store.commitments import CommitmentItem, NewCommitment
from dde.store.ledger import Ledger
from dde.store.records import DeliveryOutcome
from dde.store.states import DeliveryState

UID_DONE = "1.2.826.0.1.3680043.10.1"
UID_WAITING = "1.2.826.0.1.3680043.10.2"
UID_COMMITTED = "1.2.826.0.1.3680043.10.3"
UID_LOST = "1.2.826.0.1.3680043.10.4"


@pytest.fixture
def home(tmp_path: Path) -> Path:
    """A state folder whose ledger holds one instance delivered to A and failed on PROBE,
    and one still pending on B."""
    folder = tmp_path / "home"
    folder.mkdir()
    ledger = Ledger(folder / "dde.sqlite3")
    try:
        done = ingest_to(ledger, ["A"], ["PROBE"], sop_instance_uid=UID_DONE)
        rows = delivery_rows(ledger, done)
        ledger.queue.record_outcomes([
            DeliveryOutcome(rows["A"][0], DeliveryState.DELIVERED),
            DeliveryOutcome(rows["PROBE"][0], DeliveryState.FAILED, "0x0122 not supported"),
        ])
        ingest_to(ledger, ["B"], sop_instance_uid=UID_WAITING)
    finally:
        ledger.close()
    return folder


def run(home: Path, *args: str) -> Result:
    return CliRunner().invoke(main, ["--home", str(home), *args])


def delivery_id(home: Path, uid: str, endpoint: str) -> int:
    document = json.loads(run(home, "where", uid, "--json").stdout)
    return int(next(d["id"] for d in document["deliveries"] if d["endpoint"] == endpoint))


def assert_user_error(result: Result, fragment: str) -> None:
    assert result.exit_code != 0
    assert f"dde: error: {fragment}" in result.stderr
    assert "Traceback" not in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)


def test_where_json_tells_each_delivery(home: Path) -> None:
    result = run(home, "where", UID_DONE, "--json")

    assert result.exit_code == 0, result.output
    document = json.loads(result.stdout)
    assert document["sop_instance_uid"] == UID_DONE
    assert document["calling_aet"] == "TEST_SCU"
    assert document["called_aet"] == "DYNAMIC_DICOM_MW"
    assert document["rule"] == "default"
    assert document["receptions"] == 1
    assert isinstance(document["received_at"], str)
    assert {"sop_class_uid", "transfer_syntax_uid", "size", "source_ip"} <= set(document)
    deliveries = document["deliveries"]
    assert [(d["endpoint"], d["role"], d["state"], d["attempts"], d["last_error"])
            for d in deliveries] == [
        ("A", "route", "delivered", 1, None),
        ("PROBE", "mirror", "failed", 1, "0x0122 not supported"),
    ]
    assert deliveries[0]["delivered_at"] is not None
    assert deliveries[1]["delivered_at"] is None
    assert all(d["next_attempt_at"] is None for d in deliveries)  # none is pending
    assert all(isinstance(d["id"], int) for d in deliveries)


def test_where_json_of_a_pending_delivery_has_its_next_attempt(home: Path) -> None:
    document = json.loads(run(home, "where", UID_WAITING, "--json").stdout)

    (delivery,) = document["deliveries"]
    assert (delivery["endpoint"], delivery["state"]) == ("B", "pending")
    assert delivery["next_attempt_at"] is not None


def test_where_as_a_table(home: Path) -> None:
    result = run(home, "where", UID_DONE)

    assert result.exit_code == 0, result.output
    assert UID_DONE in result.stdout
    assert "PROBE" in result.stdout and "0x0122 not supported" in result.stdout


def test_where_shows_the_storage_commitment_and_why_it_failed(home: Path) -> None:
    ledger = Ledger(home / "dde.sqlite3")
    try:
        committed = ingest_to(ledger, ["C"], sop_instance_uid=UID_COMMITTED)
        lost = ingest_to(ledger, ["C"], sop_instance_uid=UID_LOST)
        ids = [delivery_rows(ledger, i)["C"][0] for i in (committed, lost)]
        items = tuple(CommitmentItem(i, "1.2.840.10008.5.1.4.1.1.2", uid)
                      for i, uid in zip(ids, (UID_COMMITTED, UID_LOST), strict=True))
        ledger.queue.record_outcomes(
            [DeliveryOutcome(i, DeliveryState.DELIVERED) for i in ids],
            commitments=[NewCommitment("2.25.9", "C", items)])
        ledger.commitments.report(CommitmentReport(
            "2.25.9", 2, (SopReference(items[0].sop_class_uid, UID_COMMITTED),),
            (FailedReference(SopReference(items[1].sop_class_uid, UID_LOST), 0x0112),)), 8)
    finally:
        ledger.close()

    assert json.loads(run(home, "where", UID_COMMITTED, "--json").stdout)["deliveries"][0][
        "commitment"] == "committed"
    (lost_delivery,) = json.loads(run(home, "where", UID_LOST, "--json").stdout)["deliveries"]
    assert (lost_delivery["state"], lost_delivery["commitment"]) == ("pending", "failed")
    table = run(home, "where", UID_LOST).stdout
    assert "commitment" in table and "failed: the destination did not commit" in " ".join(
        table.split())
    assert json.loads(run(home, "where", UID_DONE, "--json").stdout)["deliveries"][0][
        "commitment"] is None


def test_where_of_an_unknown_uid_is_an_error_without_traceback(home: Path) -> None:
    result = run(home, "where", "9.9.9.9")

    assert_user_error(result, "no instance with SOP Instance UID 9.9.9.9")
    assert result.stdout == ""


def test_queue_json_lists_waiting_and_failed_with_counts(home: Path) -> None:
    result = run(home, "queue", "--json")

    assert result.exit_code == 0, result.output
    document = json.loads(result.stdout)
    assert document["counts"] == {"A": {"delivered": 1}, "PROBE": {"failed": 1},
                                  "B": {"pending": 1}}
    assert [(d["endpoint"], d["state"], d["sop_instance_uid"])
            for d in document["deliveries"]] == [
        ("PROBE", "failed", UID_DONE), ("B", "pending", UID_WAITING),
    ]
    first = document["deliveries"][0]
    assert {"delivery_id", "attempts", "last_error", "next_attempt_at", "created_at",
            "instance_id"} <= set(first)
    assert first["last_error"] == "0x0122 not supported"
    assert isinstance(first["next_attempt_at"], str)


def test_queue_as_a_table(home: Path) -> None:
    result = run(home, "queue")

    assert result.exit_code == 0, result.output
    assert "PROBE" in result.stdout and "B" in result.stdout


def test_queue_retry_of_one_failed_delivery(home: Path) -> None:
    failed = delivery_id(home, UID_DONE, "PROBE")

    result = run(home, "queue", "retry", str(failed))

    assert result.exit_code == 0, result.output
    assert f"delivery {failed} queued again (was failed)" in result.stdout
    document = json.loads(run(home, "where", UID_DONE, "--json").stdout)
    probe = next(d for d in document["deliveries"] if d["endpoint"] == "PROBE")
    assert (probe["state"], probe["attempts"]) == ("pending", 0)


def test_queue_retry_failed_requeues_them_all(home: Path) -> None:
    result = run(home, "queue", "retry", "--failed")

    assert result.exit_code == 0, result.output
    assert "1 failed deliveries queued again" in result.stdout
    counts = json.loads(run(home, "queue", "--json").stdout)["counts"]
    assert counts["PROBE"] == {"pending": 1}


def test_queue_retry_of_a_delivered_delivery_is_an_error(home: Path) -> None:
    done = delivery_id(home, UID_DONE, "A")

    assert_user_error(run(home, "queue", "retry", str(done)), f"delivery {done} is already")


def test_queue_retry_of_an_unknown_delivery_is_an_error(home: Path) -> None:
    assert_user_error(run(home, "queue", "retry", "4242"), "no delivery with id 4242")


@pytest.mark.parametrize("args", [[], ["--failed", "1"]])
def test_queue_retry_needs_exactly_one_of_id_or_failed(home: Path, args: list[str]) -> None:
    result = run(home, "queue", "retry", *args)

    assert_user_error(result, "give either a DELIVERY_ID or --failed")
    counts = json.loads(run(home, "queue", "--json").stdout)["counts"]
    assert counts["PROBE"] == {"failed": 1}  # nothing was retried


@pytest.mark.parametrize("args", [["where", UID_DONE], ["queue"], ["queue", "--json"],
                                  ["queue", "retry", "--failed"]])
def test_a_home_without_a_ledger_is_a_clear_error(tmp_path: Path, args: list[str]) -> None:
    empty = tmp_path / "empty-home"

    result = run(empty, *args)

    assert_user_error(result, "no ledger at")
    assert str(empty) in result.stderr
    assert not (empty / "dde.sqlite3").exists()


def test_a_corrupt_ledger_is_a_clear_error(tmp_path: Path) -> None:
    folder = tmp_path / "corrupt"
    folder.mkdir()
    (folder / "dde.sqlite3").write_bytes(b"garbage" * 1000)

    result = run(folder, "queue")

    assert_user_error(result, "")
    assert "cannot open the ledger" in result.stderr
