"""How a group picks the endpoint for a new study. Pure: the caller keeps the state.

* ``least-loaded``: the lowest load per unit of weight (load = instances the PACS holds plus
  what is queued for it); ties by name.
* ``round-robin``: the next available member after the last one chosen, in name order.
* ``weighted``: smooth weighted round-robin — over any window, each member gets new studies
  in proportion to its weight, interleaved rather than in runs.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from dde.config import Strategy
from dde.routing.decision import Candidate, least_loaded


@dataclass
class StrategyState:
    """What round-robin and weighted remember between choices, per group."""

    last: str | None = None
    credit: dict[str, float] = field(default_factory=dict)


def round_robin(candidates: Sequence[Candidate], state: StrategyState) -> Candidate | None:
    usable = sorted((c for c in candidates if c.available), key=lambda c: c.name)
    if not usable:
        return None
    chosen = next((c for c in usable if state.last is not None and c.name > state.last),
                  usable[0])
    state.last = chosen.name
    return chosen


def weighted(candidates: Sequence[Candidate], state: StrategyState) -> Candidate | None:
    usable = sorted((c for c in candidates if c.available), key=lambda c: c.name)
    if not usable:
        return None
    total = sum(c.weight for c in usable)
    for c in usable:
        state.credit[c.name] = state.credit.get(c.name, 0.0) + c.weight
    chosen = max(usable, key=lambda c: (state.credit[c.name], -usable.index(c)))
    state.credit[chosen.name] -= total
    for name in list(state.credit):
        if name not in {c.name for c in usable}:
            del state.credit[name]
    state.last = chosen.name
    return chosen


def choose(strategy: Strategy, candidates: Sequence[Candidate],
           state: StrategyState) -> Candidate | None:
    if strategy == Strategy.ROUND_ROBIN:
        return round_robin(candidates, state)
    if strategy == Strategy.WEIGHTED:
        return weighted(candidates, state)
    return least_loaded(candidates)
