"""The routing decision for one instance. Pure: no sockets, no disk, no clock.

Default behaviour (the seed's, done right): a new study goes to the least-loaded member of
the storage group that can take it; every later instance of that study follows the pin;
every instance is also mirrored to the probe.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass

from dde.config import Strategy

DEFAULT_RULE = "default"


class NoRoute(Exception):
    """No destination can take the instance; the message says why (no patient data)."""


@dataclass(frozen=True)
class Candidate:
    """One member of a group as the decision sees it."""

    name: str
    load: int
    """Instances it holds (cached PACS statistics) plus what is queued for it."""
    available: bool = True
    """False when it must not get new studies (down, draining, disabled)."""
    weight: float = 1.0
    unknown: bool = False
    """Its health is not known yet (never probed, or not published)."""


@dataclass(frozen=True)
class Decision:
    rule: str
    destination: str
    new_pin: bool
    reason: str


def _note(candidate: Candidate) -> str:
    if candidate.unknown:
        return " health unknown" + ("" if not candidate.available else " (none known up)")
    return "" if candidate.available else " unavailable"


def least_loaded(candidates: Sequence[Candidate]) -> Candidate | None:
    """The available candidate with the lowest load per unit of weight; ties by name."""
    usable = [c for c in candidates if c.available]
    if not usable:
        return None
    return min(usable, key=lambda c: (c.load / c.weight, c.name))


def decide_storage(
    study_instance_uid: str | None,
    pinned: str | None,
    group: str,
    candidates: Sequence[Candidate],
    rule: str = DEFAULT_RULE,
    *,
    lost: Collection[str] = (),
    choose: Callable[[Sequence[Candidate]], Candidate | None] = least_loaded,
    strategy: Strategy = Strategy.LEAST_LOADED,
) -> Decision:
    """Choose the storage endpoint for one instance.

    ``pinned`` is the endpoint this study is already pinned to, if any. A pin to an
    endpoint that is still a member of the group is kept (study affinity), even while that
    endpoint is down or draining — unless it is in ``lost`` (down longer than the failover
    time, or disabled): then the rest of the study moves. A pin to an endpoint that left the
    group is replaced too. ``choose`` is the group's strategy for new studies.
    """
    members = {c.name for c in candidates}
    if pinned is not None and pinned in members and pinned not in lost:
        return Decision(rule, pinned, new_pin=False, reason=f"study pinned to {pinned}")
    chosen = choose(candidates)
    if chosen is None:
        if not candidates:
            raise NoRoute(f"group {group!r} has no endpoints")
        raise NoRoute(f"no endpoint of group {group!r} is available")
    loads = ", ".join(f"{c.name}={c.load}" + _note(c)
                      for c in sorted(candidates, key=lambda c: c.name))
    if study_instance_uid is None:
        return Decision(rule, chosen.name, new_pin=False,
                        reason=f"no StudyInstanceUID; {strategy} ({loads})")
    if pinned is None:
        why = "new study"
    elif pinned in lost:
        why = f"pinned {pinned} is unavailable past failover; study moved"
    else:
        why = f"pinned {pinned} left the group; new pin"
    return Decision(rule, chosen.name, new_pin=True, reason=f"{why}; {strategy} ({loads})")
