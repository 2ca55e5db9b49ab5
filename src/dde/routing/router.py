"""The router: turns a header and the live endpoint picture into a ledger route.

It joins the pure parts — rules (:mod:`dde.routing.rules`), strategies and the storage
decision — with what only the running router knows: the configured endpoints and their
state, health and cached load, and (inside the ingest transaction) the study pins and
queue depths.
"""

from __future__ import annotations

import threading
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import Protocol

from dde.config import EndpointSettings, EndpointState, RoutingSettings, Strategy
from dde.dicom.header import InstanceHeader
from dde.routing.conditions import Subject
from dde.routing.decision import Candidate, NoRoute, decide_storage
from dde.routing.route import PinView, Route
from dde.routing.rules import RuleSet, Verdict, default_ruleset, evaluate
from dde.routing.strategies import StrategyState, choose


class HealthView(Protocol):
    def is_down(self, name: str) -> bool: ...

    def health(self, name: str) -> str:
        """``up``, ``down`` or ``unknown`` (not probed yet, or not published)."""
        ...

    def failed_over(self) -> set[str]: ...


class LoadView(Protocol):
    def stored(self, name: str) -> int: ...


@dataclass(frozen=True)
class Origin:
    """The association an instance came on (what rules may test besides the header)."""

    calling_aet: str = ""
    called_aet: str = ""
    source_ip: str = ""
    receiving_port: int = 0
    """The router's port it came to (0: not by DICOM)."""
    receiver: str = ""
    """The receiver that took it (its rules apply); empty: the main rules."""


@dataclass(frozen=True)
class Explanation:
    rule: str
    destinations: tuple[str, ...]
    reason: str
    discard: bool = False


class Router:
    def __init__(self, routing: RoutingSettings, endpoints: Sequence[EndpointSettings],
                 loads: LoadView, health: HealthView | None = None,
                 ruleset: RuleSet | None = None) -> None:
        self._lock = threading.Lock()
        self._loads = loads
        self._health = health
        self._strategy_state: dict[str, StrategyState] = {}
        self._ruleset = ruleset or default_ruleset(routing.group, routing.strategy,
                                                   routing.mirror)
        self._endpoints = {e.name: e for e in endpoints}

    def configure(self, ruleset: RuleSet, endpoints: Sequence[EndpointSettings]) -> None:
        with self._lock:
            self._ruleset = ruleset
            self._endpoints = {e.name: e for e in endpoints}

    @property
    def ruleset(self) -> RuleSet:
        with self._lock:
            return self._ruleset

    def _down(self, name: str) -> bool:
        return self._health is not None and self._health.is_down(name)

    def _lost(self) -> set[str]:
        """Endpoints that may not keep their pins: disabled, or down past failover."""
        with self._lock:
            disabled = {n for n, e in self._endpoints.items()
                        if e.state is EndpointState.DISABLED}
        return disabled | (self._health.failed_over() if self._health is not None else set())

    def _unknown(self, name: str) -> bool:
        return self._health is not None and self._health.health(name) == "unknown"

    def candidates(self, group: str, queued: dict[str, int]) -> list[Candidate]:
        """The members of ``group``. One is available for new studies when it is enabled
        and up. A member whose health is unknown (added a moment ago and not probed yet, or
        not on the published board) is available only while no member is known up: at start,
        before the first probes, the group still takes studies."""
        with self._lock:
            members = sorted((e for e in self._endpoints.values() if group in e.groups),
                             key=lambda e: e.name)
        usable = {e.name for e in members
                  if e.state is EndpointState.ENABLED and not self._down(e.name)}
        unknown = {name for name in usable if self._unknown(name)}
        if usable - unknown:
            usable -= unknown
        return [
            Candidate(e.name, self._loads.stored(e.name) + queued.get(e.name, 0),
                      available=e.name in usable, weight=e.weight, unknown=e.name in unknown)
            for e in members
        ]

    def strategy_for(self, group: str) -> Strategy:
        """The strategy the rules use for ``group``: that of the first rule routing to it
        (least-loaded when no rule names the group)."""
        for ruleset in self.ruleset.every():
            for rule in ruleset.rules:
                if rule.group is not None and rule.group.group == group:
                    return rule.group.strategy
        return Strategy.LEAST_LOADED

    def choose_target(self, group: str, queued: dict[str, int],
                      exclude: Collection[str] = ()) -> str | None:
        """The member of ``group`` that takes work away from another one (failover, forced
        removal): the group's own strategy over its available members, ``exclude`` left
        out. None when no member can take it."""
        candidates = [c for c in self.candidates(group, queued) if c.name not in exclude]
        with self._lock:
            state = self._strategy_state.setdefault(group, StrategyState())
        chosen = choose(self.strategy_for(group), candidates, state)
        return None if chosen is None else chosen.name

    def mirrors(self) -> tuple[str, ...]:
        with self._lock:
            return tuple(m for m in self._ruleset.mirror if m in self._endpoints)

    def verdict(self, header: InstanceHeader, origin: Origin = Origin()) -> Verdict:
        """What the active rules say of an instance (no ledger needed): the ingest asks
        first, to make the edited variants before its transaction, then routes with the
        same verdict. Raises :class:`NoRoute`."""
        ruleset = self.ruleset.for_receiver(origin.receiver)
        return evaluate(ruleset, Subject(header.dataset, origin.calling_aet,
                                         origin.called_aet, origin.source_ip,
                                         origin.receiving_port, origin.receiver))

    def route(self, header: InstanceHeader, view: PinView,
              origin: Origin = Origin(), verdict: Verdict | None = None) -> Route:
        """Decide inside the ingest transaction (with ``verdict`` when it was asked for
        before: the rules may have changed since). Raises :class:`NoRoute`."""
        if verdict is None:
            verdict = self.verdict(header, origin)
        if verdict.discard:
            return Route(verdict.rule, (), (), discard=True,
                         reason=f"discarded by rule {verdict.rule}")
        destinations: list[str] = []
        rule_of: dict[str, str] = {}
        with self._lock:
            known = set(self._endpoints)
        for name, rule in zip(verdict.endpoints, verdict.endpoint_rules or
                              (verdict.rule,) * len(verdict.endpoints), strict=True):
            if name in known and name not in destinations:
                destinations.append(name)
                rule_of[name] = rule
        pins: list[tuple[str, str, str]] = []
        reasons: list[str] = []
        study = header.study_instance_uid
        queued: dict[str, int] | None = None
        lost = self._lost()
        for group_route, group_rule in zip(verdict.groups, verdict.group_rules or
                                           (verdict.rule,) * len(verdict.groups), strict=True):
            group = group_route.group
            pinned = view.pin_for(study, group) if study else None
            with self._lock:
                pinned_here = pinned in self._endpoints and group in self._endpoints[pinned].groups
            if pinned is None or pinned in lost or not pinned_here:  # a new choice is made
                queued = view.queued_counts() if queued is None else queued
            candidates = self.candidates(group, queued or {})
            state = self._strategy_state.setdefault(group, StrategyState())
            strategy = group_route.strategy

            def pick(options: Sequence[Candidate], strategy: Strategy = strategy,
                     state: StrategyState = state) -> Candidate | None:
                return choose(strategy, options, state)

            decision = decide_storage(study, pinned, group, candidates, verdict.rule,
                                      lost=lost, choose=pick, strategy=strategy)
            if decision.destination not in destinations:
                destinations.append(decision.destination)
                rule_of[decision.destination] = group_rule
            if decision.new_pin and study:
                pins.append((study, decision.destination, group))
            reasons.append(f"{group}: {decision.reason}")
        if not destinations:
            raise NoRoute(f"rule {verdict.rule} names no configured endpoint")
        mirrors = tuple(m for m in verdict.mirror if m in known and m not in destinations)
        variants: tuple[tuple[str, str], ...] = ()
        if verdict.edits or verdict.deidentify:  # nothing to look up for plain rules
            rule_of.update((m, verdict.mirror_rule) for m in mirrors)
            variants = tuple((name, rule_of[name]) for name in destinations + list(mirrors)
                             if verdict.makes_variant(rule_of[name]))
        used = {rule for _, rule in variants}
        return Route(verdict.rule, tuple(destinations), mirrors, pins=tuple(pins),
                     reason="; ".join(reasons) or f"rule {verdict.rule}", variants=variants,
                     edits=tuple((rule, edits) for rule, edits in verdict.edits
                                 if rule in used),
                     deidentify=tuple((rule, action) for rule, action in verdict.deidentify
                                      if rule in used))


__all__ = ["NoRoute", "Origin", "Router"]
