"""Group strategies: round-robin, weighted (smooth), least-loaded; the caller keeps state."""

from __future__ import annotations

from collections import Counter

import pytest

from dde.config import Strategy
from dde.routing.decision import Candidate
from dde.routing.strategies import StrategyState, choose, round_robin, weighted


def picks(strategy: str, candidates: list[Candidate], count: int,
          state: StrategyState | None = None) -> list[str]:
    state = state if state is not None else StrategyState()
    chosen = []
    for _ in range(count):
        candidate = choose(strategy, candidates, state)
        assert candidate is not None
        chosen.append(candidate.name)
    return chosen


def longest_run(sequence: list[str], name: str) -> int:
    best = run = 0
    for item in sequence:
        run = run + 1 if item == name else 0
        best = max(best, run)
    return best


# -- round-robin --------------------------------------------------------------------------

def test_round_robin_cycles_over_members_in_name_order() -> None:
    members = [Candidate("C", 0), Candidate("A", 50), Candidate("B", 7)]

    assert picks("round-robin", members, 7) == ["A", "B", "C", "A", "B", "C", "A"]


def test_round_robin_ignores_load() -> None:
    members = [Candidate("A", 1000), Candidate("B", 0)]

    assert picks("round-robin", members, 4) == ["A", "B", "A", "B"]


def test_round_robin_skips_unavailable_members() -> None:
    members = [Candidate("A", 0), Candidate("B", 0, available=False), Candidate("C", 0)]

    assert picks("round-robin", members, 5) == ["A", "C", "A", "C", "A"]


def test_round_robin_continues_after_the_last_choice_when_members_change() -> None:
    state = StrategyState()
    abc = [Candidate("A", 0), Candidate("B", 0), Candidate("C", 0)]
    assert picks("round-robin", abc, 2, state) == ["A", "B"]

    # B goes down: the next after B in name order is C, then round again.
    without_b = [Candidate("A", 0), Candidate("B", 0, available=False), Candidate("C", 0)]
    assert picks("round-robin", without_b, 3, state) == ["C", "A", "C"]

    # B comes back and a new member D joins.
    abcd = [*abc, Candidate("D", 0)]
    assert picks("round-robin", abcd, 5, state) == ["D", "A", "B", "C", "D"]


def test_round_robin_when_the_last_chosen_left() -> None:
    state = StrategyState(last="B")

    assert picks("round-robin", [Candidate("A", 0), Candidate("C", 0)], 3, state) == [
        "C", "A", "C"]


def test_round_robin_and_weighted_of_nothing_available_is_none() -> None:
    down = [Candidate("A", 0, available=False)]
    state = StrategyState()

    assert round_robin(down, state) is None
    assert round_robin([], state) is None
    assert weighted(down, state) is None
    assert choose("weighted", [], state) is None
    assert choose("least-loaded", down, state) is None
    assert state.last is None


# -- weighted ------------------------------------------------------------------------------

def test_weighted_gives_new_studies_in_proportion_over_a_window() -> None:
    members = [Candidate("A", 0, weight=3.0), Candidate("B", 0, weight=1.0)]

    chosen = picks("weighted", members, 40)

    assert Counter(chosen) == {"A": 30, "B": 10}
    # ...and in every window of four, exactly one goes to B: interleaved, not in runs.
    for start in range(0, 37):
        assert chosen[start:start + 4].count("B") == 1, chosen
    assert longest_run(chosen, "A") <= 3
    assert longest_run(chosen, "B") == 1


def test_weighted_proportions_with_three_members() -> None:
    members = [Candidate("A", 0, weight=2.0), Candidate("B", 0, weight=1.0),
               Candidate("C", 0, weight=1.0)]

    chosen = picks("weighted", members, 40)

    assert Counter(chosen) == {"A": 20, "B": 10, "C": 10}
    assert longest_run(chosen, "A") <= 2
    for start in range(0, 37, 4):
        assert Counter(chosen[start:start + 4]) == {"A": 2, "B": 1, "C": 1}


def test_weighted_with_fractional_weights() -> None:
    members = [Candidate("A", 0, weight=0.5), Candidate("B", 0, weight=1.5)]

    assert Counter(picks("weighted", members, 40)) == {"A": 10, "B": 30}


def test_weighted_ignores_load() -> None:
    members = [Candidate("A", 10_000, weight=1.0), Candidate("B", 0, weight=1.0)]

    assert Counter(picks("weighted", members, 10)) == {"A": 5, "B": 5}


def test_weighted_skips_unavailable_members_and_forgets_their_credit() -> None:
    state = StrategyState()
    members = [Candidate("A", 0, weight=1.0), Candidate("B", 0, weight=1.0),
               Candidate("C", 0, weight=2.0)]
    picks("weighted", members, 3, state)

    b_down = [Candidate("A", 0, weight=1.0), Candidate("B", 0, weight=1.0, available=False),
              Candidate("C", 0, weight=2.0)]
    chosen = picks("weighted", b_down, 30, state)

    assert "B" not in chosen
    assert "B" not in state.credit
    assert Counter(chosen) == {"A": 10, "C": 20}


def test_weighted_equal_weights_alternate() -> None:
    members = [Candidate("B", 0), Candidate("A", 0)]

    assert picks("weighted", members, 6) == ["A", "B", "A", "B", "A", "B"]


# -- least-loaded and dispatch ---------------------------------------------------------------

def test_least_loaded_takes_the_lowest_load_per_weight_and_skips_unavailable() -> None:
    members = [Candidate("A", 10), Candidate("B", 3, available=False), Candidate("C", 12,
                                                                               weight=2.0)]
    state = StrategyState()

    chosen = choose("least-loaded", members, state)

    assert chosen is not None and chosen.name == "C"  # 12 / 2 = 6 < 10


def test_least_loaded_ties_go_by_name_and_it_keeps_no_state() -> None:
    members = [Candidate("B", 5), Candidate("A", 5)]
    state = StrategyState()

    assert picks("least-loaded", members, 3, state) == ["A", "A", "A"]
    assert state == StrategyState()


@pytest.mark.parametrize("strategy", ["fastest", "", "Round-Robin", "least_loaded"])
def test_unknown_strategy_names_are_not_strategies(strategy: str) -> None:
    with pytest.raises(ValueError, match="is not a valid Strategy"):
        Strategy(strategy)
