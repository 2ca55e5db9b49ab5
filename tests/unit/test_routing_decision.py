"""The pure routing decision: least-loaded choice, study affinity, no route."""

from __future__ import annotations

import pytest

from dde.routing.decision import DEFAULT_RULE, Candidate, NoRoute, decide_storage, least_loaded


def test_least_loaded_takes_the_lowest_load() -> None:
    chosen = least_loaded([Candidate("A", 5), Candidate("B", 2), Candidate("C", 9)])

    assert chosen is not None and chosen.name == "B"


def test_least_loaded_divides_the_load_by_the_weight() -> None:
    # A: 10/1 = 10 per unit; B: 15/3 = 5 per unit, although B holds more.
    chosen = least_loaded([Candidate("A", 10, weight=1.0), Candidate("B", 15, weight=3.0)])

    assert chosen is not None and chosen.name == "B"


def test_least_loaded_breaks_ties_by_name_whatever_the_order() -> None:
    tied = [Candidate("ORTHANC2", 4), Candidate("ORTHANC1", 4), Candidate("ORTHANC3", 4)]

    assert least_loaded(tied) == Candidate("ORTHANC1", 4)
    assert least_loaded(list(reversed(tied))) == Candidate("ORTHANC1", 4)


def test_least_loaded_ties_on_load_per_weight_also_go_by_name() -> None:
    chosen = least_loaded([Candidate("B", 2, weight=1.0), Candidate("A", 4, weight=2.0)])

    assert chosen is not None and chosen.name == "A"


def test_least_loaded_skips_unavailable_members_even_when_emptiest() -> None:
    chosen = least_loaded([Candidate("A", 0, available=False), Candidate("B", 100)])

    assert chosen is not None and chosen.name == "B"


def test_least_loaded_of_nothing_usable_is_none() -> None:
    assert least_loaded([]) is None
    assert least_loaded([Candidate("A", 0, available=False)]) is None


def test_new_study_is_pinned_to_the_least_loaded() -> None:
    decision = decide_storage("1.2.3", None, "storage", [Candidate("A", 3), Candidate("B", 1)])

    assert decision.destination == "B"
    assert decision.new_pin is True
    assert decision.rule == DEFAULT_RULE
    assert "new study" in decision.reason


def test_pinned_study_keeps_its_endpoint_even_when_it_is_the_busiest() -> None:
    decision = decide_storage("1.2.3", "A", "storage", [Candidate("A", 500), Candidate("B", 0)])

    assert decision.destination == "A"
    assert decision.new_pin is False
    assert "pinned" in decision.reason


def test_pin_to_an_endpoint_that_left_the_group_is_replaced() -> None:
    decision = decide_storage("1.2.3", "GONE", "storage", [Candidate("A", 3), Candidate("B", 1)])

    assert decision.destination == "B"
    assert decision.new_pin is True
    assert "GONE" in decision.reason


def test_without_study_instance_uid_nothing_is_pinned() -> None:
    decision = decide_storage(None, None, "storage", [Candidate("A", 3), Candidate("B", 1)])

    assert decision.destination == "B"
    assert decision.new_pin is False
    assert "no StudyInstanceUID" in decision.reason


def test_reason_lists_the_loads_seen() -> None:
    decision = decide_storage("1.2.3", None, "storage", [Candidate("B", 7), Candidate("A", 3)])

    assert "A=3, B=7" in decision.reason


def test_empty_group_is_no_route() -> None:
    with pytest.raises(NoRoute, match="'storage' has no endpoints"):
        decide_storage("1.2.3", None, "storage", [])


def test_group_with_every_member_unavailable_is_no_route() -> None:
    candidates = [Candidate("A", 0, available=False), Candidate("B", 0, available=False)]

    with pytest.raises(NoRoute, match="no endpoint of group 'storage' is available"):
        decide_storage("1.2.3", None, "storage", candidates)


def test_stale_pin_and_nothing_available_is_no_route() -> None:
    with pytest.raises(NoRoute):
        decide_storage("1.2.3", "GONE", "storage", [Candidate("A", 0, available=False)])


def test_pin_to_a_lost_endpoint_moves_the_rest_of_the_study() -> None:
    # Lost: down past the failover time, or disabled. Still a member, but the pin goes.
    candidates = [Candidate("A", 0, available=False), Candidate("B", 9)]

    decision = decide_storage("1.2.3", "A", "storage", candidates, lost={"A"})

    assert decision.destination == "B"
    assert decision.new_pin is True
    assert "failover" in decision.reason


def test_pin_kept_while_its_endpoint_is_merely_unavailable() -> None:
    decision = decide_storage("1.2.3", "A", "storage",
                              [Candidate("A", 0, available=False), Candidate("B", 0)])

    assert (decision.destination, decision.new_pin) == ("A", False)
