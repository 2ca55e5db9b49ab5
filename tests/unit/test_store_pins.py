"""Study affinity across nodes: a study's pin per group is unique, a new pin is written only
where none stands and a re-pin only over the pin its decision read; a decision that lost
is made again over the winner, so one study's instances never split between storages."""

from __future__ import annotations

import threading

from tests.support.unitkit import delivery_rows, ingest_to, new_instance

from dde.routing.route import Route
from dde.store.intake import IngestRecords, IngestView
from dde.store.ledger import Ledger

STUDY = "1.2.3.4"  # new_instance's study


def pins(ledger: Ledger) -> dict[tuple[str, str], str]:
    return {(p.study_instance_uid, p.group): p.endpoint for p in ledger.diagnostics.pins()}


def test_a_new_pin_that_lost_is_decided_again_over_the_winner(ledger: Ledger) -> None:
    ingest_to(ledger, ["A"], pin=(STUDY, "A", "storage"))  # the other node's, committed
    decisions = []

    def decide(view: IngestView) -> Route:
        decisions.append(view)
        if len(decisions) == 1:  # made before the other node's pin was there to read
            return Route("default", ("B",), pins=((STUDY, "B", "storage"),))
        pinned = view.pin_for(STUDY, "storage")
        assert pinned is not None
        return Route("default", (pinned,))

    instance_id, route = ledger.intake.ingest(new_instance(), decide)

    assert len(decisions) == 2 and route.destinations == ("A",)
    assert pins(ledger) == {(STUDY, "storage"): "A"}
    assert set(delivery_rows(ledger, instance_id)) == {"A"}


def test_the_same_pin_written_again_is_no_conflict(ledger: Ledger) -> None:
    ingest_to(ledger, ["A"], pin=(STUDY, "A", "storage"))
    ingest_to(ledger, ["A"], pin=(STUDY, "A", "storage"))

    assert pins(ledger) == {(STUDY, "storage"): "A"}


def test_a_re_pin_replaces_only_the_pin_its_decision_read(ledger: Ledger) -> None:
    ingest_to(ledger, ["A"], pin=(STUDY, "A", "storage"))
    decisions = []

    def fail_over(view: IngestView) -> Route:
        decisions.append(view)
        pinned = view.pin_for(STUDY, "storage")
        if len(decisions) == 1:
            assert pinned == "A"
            # meanwhile another node re-pinned the study to C (the same connection stands
            # in for it: SQLite has one writer)
            view._connection.execute("UPDATE study_pins SET endpoint = 'C'")
            return Route("default", ("B",), pins=((STUDY, "B", "storage"),))
        return Route("default", (str(pinned),))

    _, route = ledger.intake.ingest(new_instance(), fail_over)

    assert len(decisions) == 2 and route.destinations == ("C",)
    assert pins(ledger) == {(STUDY, "storage"): "C"}


def test_a_re_pin_over_the_pin_it_read_is_written(ledger: Ledger) -> None:
    ingest_to(ledger, ["A"], pin=(STUDY, "A", "storage"))

    def fail_over(view: IngestView) -> Route:
        assert view.pin_for(STUDY, "storage") == "A"
        return Route("default", ("B",), pins=((STUDY, "B", "storage"),))

    ledger.intake.ingest(new_instance(), fail_over)

    assert pins(ledger) == {(STUDY, "storage"): "B"}


def test_two_nodes_pinning_one_new_study_at_once_pin_it_to_one_storage(pg_url: str) -> None:
    """Both nodes read "no pin" before either writes one, each choosing its own storage.
    Every ingest takes the writer lock, which alone would keep them apart; the two writes
    here are made without it (``serialised=False``) to show that the unique key decides:
    the second pin insert meets the first, and its instance follows the winner."""
    nodes = [Ledger(url=pg_url), Ledger(url=pg_url)]
    both_read = threading.Barrier(2, timeout=10)
    placed: dict[int, tuple[int, Route]] = {}
    errors: list[BaseException] = []

    def ingest(index: int, storage: str) -> None:
        seen: list[str | None] = []

        def decide(view: IngestView) -> Route:
            pinned = view.pin_for(STUDY, "storage")
            seen.append(pinned)
            if len(seen) == 1:
                both_read.wait()
            if pinned is None:
                return Route("default", (storage,), pins=((STUDY, storage, "storage"),))
            return Route("default", (pinned,))

        try:
            database = nodes[index].database
            with database.transaction(serialised=False) as connection:
                placed[index] = IngestRecords._write(connection, new_instance(), decide)
        except BaseException as exc:  # reported by the test thread
            errors.append(exc)

    try:
        threads = [threading.Thread(target=ingest, args=(i, name))
                   for i, name in enumerate(["A", "B"])]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()

        assert errors == []
        [winner] = pins(nodes[0]).values()
        assert {route.destinations for _, route in placed.values()} == {(winner,)}
        for instance_id, _ in placed.values():
            assert set(delivery_rows(nodes[0], instance_id)) == {winner}
    finally:
        for node in nodes:
            node.close()
