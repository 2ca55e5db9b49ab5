"""Routing rules: the declarative file format, its validation, and its evaluation. Pure.

```yaml
rules:
  - name: mr-to-orthanc2
    when: {Modality: MR}                 # every key must match
    route: [ORTHANC2]
  - name: research-copy
    when: {CallingAET: "RESEARCH_*", StudyDescription: {regex: "(?i)brain"}}
    route: [ORTHANC1]
    continue: true                       # also evaluate the rules below
  - name: drop-tests
    when: {PatientID: {in: ["TEST", "PHANTOM"]}}
    action: discard
  - name: tag-site
    when: {CallingAET: "CT_SCANNER_2"}
    set: {InstitutionName: "North Campus", "(0008,1010)": "CT2"}   # tag coercion
    remove: [OtherPatientIDs]
    route: {group: storage, strategy: least-loaded}
  - name: research
    when: {StudyDescription: {regex: "(?i)trial"}}
    deidentify: {profile: basic, options: [retain-uids], salt_secret: research}
    route: [RESEARCH]
    continue: true
  - name: default
    route: {group: storage, strategy: least-loaded}
mirror: [ORTHANC-PROBE]
```

Nothing is evaluated as code. Every problem is reported with the line it is on.

``set``/``remove`` (:mod:`dde.dicom.edits`) belong to the rule that names them and apply to
that rule's destinations only: with ``continue: true`` one instance may go as received to
one place and edited to another. The global ``mirror`` gets the bytes of the first matching
rule (the edits of that rule, if it has any). An endpoint two matching rules send to gets
the bytes of the first. Each value is checked against its element's VR when the rules are
parsed, so ``rules apply`` refuses a bad one with its line. ``deidentify``
(:mod:`dde.routing.deidentify_action`) is such an action too (the mirror of a first rule
that de-identifies gets the de-identified bytes); a rule has it or ``set``/``remove``, not
both (:mod:`dde.routing.rule_actions`).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import yaml
from pydicom.datadict import tag_for_keyword

from dde.config import Strategy
from dde.config.secrets import SecretError
from dde.dicom.edits import Edit
from dde.routing.conditions import (
    ALWAYS,
    CONTEXT_FIELDS,
    AllOf,
    AnyOf,
    Condition,
    Equals,
    Exists,
    Field,
    InRange,
    Matches,
    Not,
    OneOf,
    Subject,
    matches,
)
from dde.routing.decision import NoRoute
from dde.routing.deidentify_action import DeidentifyAction, load_profile
from dde.routing.rule_actions import (
    TAG,
    deidentify_action,
    node_line,
    parse_edits,
    plain,
    scalar,
)
from dde.routing.rule_actions import (
    RulesError as RulesError,
)

STRATEGIES = tuple(s.value for s in Strategy)
_RULE_KEYS = {"name", "when", "route", "action", "continue", "set", "remove", "deidentify"}


@dataclass(frozen=True)
class GroupRoute:
    group: str
    strategy: Strategy = Strategy.LEAST_LOADED


@dataclass(frozen=True)
class Rule:
    name: str
    when: Condition
    endpoints: tuple[str, ...] = ()
    group: GroupRoute | None = None
    discard: bool = False
    continue_: bool = False
    line: int | None = None
    edits: tuple[Edit, ...] = ()
    """``set``/``remove``: what this rule's destinations get changed (empty: as received)."""
    deidentify: DeidentifyAction | None = None
    """``deidentify:``: this rule's destinations get the instance de-identified."""


@dataclass(frozen=True)
class RuleSet:
    rules: tuple[Rule, ...]
    mirror: tuple[str, ...] = ()
    by_receiver: tuple[tuple[str, RuleSet], ...] = ()
    """The rules of the receivers that have a rules file of their own (``receivers[].rules``),
    by receiver name; what every other receiver takes goes by these rules."""

    def for_receiver(self, name: str) -> RuleSet:
        """The rules for what the receiver ``name`` takes."""
        return next((rules for receiver, rules in self.by_receiver if receiver == name), self)

    def every(self) -> tuple[RuleSet, ...]:
        """These rules, then each receiver's."""
        return (self, *(rules for _, rules in self.by_receiver))

    def endpoint_names(self) -> set[str]:
        names = set(self.mirror)
        for rule in self.rules:
            names.update(rule.endpoints)
        return names

    def groups(self) -> set[str]:
        return {rule.group.group for rule in self.rules if rule.group is not None}


@dataclass(frozen=True)
class Verdict:
    """What the rules say about one instance, before groups are resolved to endpoints."""

    rules: tuple[str, ...]
    endpoints: tuple[str, ...]
    groups: tuple[GroupRoute, ...]
    discard: bool
    mirror: tuple[str, ...]
    endpoint_rules: tuple[str, ...] = ()
    """The rule that named each of ``endpoints`` (the first, when several did)."""
    group_rules: tuple[str, ...] = ()
    """The rule that named each of ``groups``."""
    edits: tuple[tuple[str, tuple[Edit, ...]], ...] = ()
    """(rule, its edits) of each matching rule that has edits, in rule order."""

    @property
    def rule(self) -> str:
        return "+".join(self.rules)

    def edits_of(self, rule: str) -> tuple[Edit, ...]:
        """The edits of matching rule ``rule`` (empty: it sends the bytes as received)."""
        return next((edits for name, edits in self.edits if name == rule), ())

    deidentify: tuple[tuple[str, DeidentifyAction], ...] = ()
    """(rule, its de-identification) of each matching rule that de-identifies."""

    def deidentify_of(self, rule: str) -> DeidentifyAction | None:
        return next((action for name, action in self.deidentify if name == rule), None)

    def makes_variant(self, rule: str) -> bool:
        """Whether ``rule``'s destinations get other bytes than those received."""
        return bool(self.edits_of(rule)) or self.deidentify_of(rule) is not None

    @property
    def mirror_rule(self) -> str:
        """The rule whose bytes the mirror gets: the first that matched."""
        return self.rules[0] if self.rules else ""


def evaluate(ruleset: RuleSet, subject: Subject) -> Verdict:
    """Apply the rules in order: the first match wins unless it says ``continue: true``.

    Raises :class:`NoRoute` when no rule matches.
    """
    matched: list[str] = []
    endpoints: list[str] = []
    endpoint_rules: list[str] = []
    groups: list[GroupRoute] = []
    group_rules: list[str] = []
    edits: list[tuple[str, tuple[Edit, ...]]] = []
    deidentify: list[tuple[str, DeidentifyAction]] = []
    for rule in ruleset.rules:
        if not matches(rule.when, subject):
            continue
        matched.append(rule.name)
        if rule.discard:
            return Verdict(tuple(matched), (), (), True, ())
        for name in rule.endpoints:
            if name not in endpoints:
                endpoints.append(name)
                endpoint_rules.append(rule.name)
        if rule.group is not None and rule.group not in groups:
            groups.append(rule.group)
            group_rules.append(rule.name)
        if rule.edits:
            edits.append((rule.name, rule.edits))
        if rule.deidentify is not None:
            deidentify.append((rule.name, rule.deidentify))
        if not rule.continue_:
            break
    if not matched:
        raise NoRoute("no rule matches and there is no default rule")
    return Verdict(tuple(matched), tuple(endpoints), tuple(groups), False, ruleset.mirror,
                   tuple(endpoint_rules), tuple(group_rules), tuple(edits), tuple(deidentify))


def default_ruleset(group: str = "storage", strategy: Strategy = Strategy.LEAST_LOADED,
                    mirror: Iterable[str] = ()) -> RuleSet:
    return RuleSet((Rule("default", ALWAYS, group=GroupRoute(group, strategy)),),
                   tuple(mirror))


# -- parsing ---------------------------------------------------------------------------------

def _field(name: str, line: int) -> Field:
    if name in CONTEXT_FIELDS:
        return Field(name, None)
    match = TAG.match(name)
    if match:
        return Field(name, int(match.group(1) + match.group(2), 16))
    tag = tag_for_keyword(name)
    if tag is None and name.startswith("("):
        raise RulesError(f"{name!r} is not a tag: inside {{...}} write a tag in quotes, "
                         '"(0008,0060)"', line)
    if tag is None:
        raise RulesError(
            f"unknown attribute {name!r} (use a DICOM keyword such as Modality, a tag such "
            f"as (0008,0060), or one of {', '.join(CONTEXT_FIELDS)})", line)
    return Field(name, int(tag))


def _value_test(field: Field, node: yaml.Node) -> Condition:
    line = node_line(node)
    if isinstance(node, yaml.ScalarNode):
        return Equals(field, str(node.value))
    if isinstance(node, yaml.SequenceNode):
        raise RulesError(f"{field.name}: a list of values must be written {{in: [...]}}", line)
    assert isinstance(node, yaml.MappingNode)
    if len(node.value) != 1:
        raise RulesError(f"{field.name}: a test has exactly one operator "
                         "(in, regex, range, exists, not)", line)
    key_node, value_node = node.value[0]
    operator = scalar(key_node, "an operator")
    value_line = node_line(value_node)
    if operator == "in":
        if not isinstance(value_node, yaml.SequenceNode) or not value_node.value:
            raise RulesError(f"{field.name}: 'in' takes a non-empty list", value_line)
        return OneOf(field, tuple(scalar(v, "an 'in' value") for v in value_node.value))
    if operator == "regex":
        pattern = scalar(value_node, "a regex")
        try:
            return Matches(field, re.compile(pattern))
        except re.error as exc:
            raise RulesError(f"{field.name}: invalid regex: {exc}", value_line) from None
    if operator == "range":
        bounds = plain(value_node)
        if not isinstance(bounds, list) or len(bounds) != 2:
            raise RulesError(f"{field.name}: 'range' takes [low, high] (null for open)",
                             value_line)
        low, high = (b if b is None or isinstance(b, int | float) else str(b) for b in bounds)
        if low is None and high is None:
            raise RulesError(f"{field.name}: 'range' needs at least one bound", value_line)
        return InRange(field, low, high)
    if operator == "exists":
        flag = plain(value_node)
        if not isinstance(flag, bool):
            raise RulesError(f"{field.name}: 'exists' takes true or false", value_line)
        return Exists(field, flag)
    if operator == "not":
        return Not(_value_test(field, value_node))
    raise RulesError(f"{field.name}: unknown operator {operator!r} "
                     "(in, regex, range, exists, not)", node_line(key_node))


def _condition(node: yaml.Node) -> Condition:
    if not isinstance(node, yaml.MappingNode):
        raise RulesError("'when' must be a mapping of attribute: test", node_line(node))
    parts: list[Condition] = []
    for key_node, value_node in node.value:
        key = scalar(key_node, "an attribute name")
        if key in ("any", "all"):
            if not isinstance(value_node, yaml.SequenceNode) or not value_node.value:
                raise RulesError(f"'{key}' takes a non-empty list of conditions",
                                 node_line(value_node))
            inner = tuple(_condition(item) for item in value_node.value)
            parts.append(AnyOf(inner) if key == "any" else AllOf(inner))
        elif key == "not":
            parts.append(Not(_condition(value_node)))
        else:
            parts.append(_value_test(_field(key, node_line(key_node)), value_node))
    return parts[0] if len(parts) == 1 else AllOf(tuple(parts))


def _names(node: yaml.Node, what: str) -> tuple[str, ...]:
    if not isinstance(node, yaml.SequenceNode) or not node.value:
        raise RulesError(f"{what} must be a non-empty list of endpoint names", node_line(node))
    return tuple(scalar(item, "an endpoint name") for item in node.value)


def _rule(node: yaml.Node, index: int) -> Rule:
    line = node_line(node)
    if not isinstance(node, yaml.MappingNode):
        raise RulesError(f"rule {index + 1} must be a mapping", line)
    fields: dict[str, tuple[yaml.Node, yaml.Node]] = {}
    for k, v in node.value:
        key = scalar(k, "a rule key")
        if key in fields:
            raise RulesError(f"rule {index + 1}: {key!r} is written twice", node_line(k))
        fields[key] = (k, v)
    unknown = set(fields) - _RULE_KEYS
    if unknown:
        key = sorted(unknown)[0]
        raise RulesError(f"unknown rule key {key!r} (name, when, route, action, continue, "
                         "set, remove, deidentify)", node_line(fields[key][0]))
    if "name" not in fields:
        raise RulesError(f"rule {index + 1} has no name", line)
    name = scalar(fields["name"][1], "name")
    when = _condition(fields["when"][1]) if "when" in fields else ALWAYS
    action = scalar(fields["action"][1], "action") if "action" in fields else "route"
    if action not in ("route", "discard"):
        raise RulesError(f"rule {name!r}: action is 'route' or 'discard'",
                         node_line(fields["action"][1]))
    continue_ = False
    if "continue" in fields:
        flag = plain(fields["continue"][1])
        if not isinstance(flag, bool):
            raise RulesError(f"rule {name!r}: continue takes true or false",
                             node_line(fields["continue"][1]))
        continue_ = flag
    if action == "discard":
        if "route" in fields:
            raise RulesError(f"rule {name!r}: a discard rule has no route",
                             node_line(fields["route"][0]))
        for key in ("set", "remove", "deidentify"):
            if key in fields:
                raise RulesError(f"rule {name!r}: a discard rule sends nothing to edit "
                                 f"('{key}' belongs on a rule that routes)",
                                 node_line(fields[key][0]))
        return Rule(name, when, discard=True, continue_=False, line=line)
    edits = parse_edits(name, fields)
    deidentify = deidentify_action(name, fields)
    if "route" not in fields:
        raise RulesError(f"rule {name!r} has neither a route nor action: discard", line)
    route_node = fields["route"][1]
    if isinstance(route_node, yaml.MappingNode):
        route = plain(route_node)
        if set(route) - {"group", "strategy"} or "group" not in route:
            raise RulesError(f"rule {name!r}: route is a list of endpoints or "
                             "{group: NAME, strategy: least-loaded|round-robin|weighted}",
                             node_line(route_node))
        strategy = str(route.get("strategy", Strategy.LEAST_LOADED))
        if strategy not in STRATEGIES:
            raise RulesError(f"rule {name!r}: unknown strategy {strategy!r} "
                             f"({', '.join(STRATEGIES)})", node_line(route_node))
        return Rule(name, when, group=GroupRoute(str(route["group"]), Strategy(strategy)),
                    continue_=continue_, line=line, edits=edits, deidentify=deidentify)
    return Rule(name, when, endpoints=_names(route_node, f"rule {name!r}: route"),
                continue_=continue_, line=line, edits=edits, deidentify=deidentify)


def parse_rules(text: str, endpoints: Iterable[str] | None = None,
                groups: Iterable[str] | None = None) -> RuleSet:
    """Parse and validate a rules document; raise :class:`RulesError` with the line.

    With ``endpoints``/``groups``, every endpoint and group the rules name must exist.
    """
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = int(mark.line) + 1 if mark is not None else None
        problem = getattr(exc, "problem", None) or str(exc)
        raise RulesError(f"not valid YAML: {problem}", line) from None
    if root is None or not isinstance(root, yaml.MappingNode):
        raise RulesError("a rules document is a mapping with 'rules' (and 'mirror')",
                         node_line(root) if root is not None else None)
    top: dict[str, tuple[yaml.Node, yaml.Node]] = {}
    for k, v in root.value:
        key = scalar(k, "a top-level key")
        if key in top:
            raise RulesError(f"{key!r} is written twice", node_line(k))
        top[key] = (k, v)
    unknown = set(top) - {"rules", "mirror"}
    if unknown:
        key = sorted(unknown)[0]
        raise RulesError(f"unknown top-level key {key!r} (rules, mirror)", node_line(top[key][0]))
    if "rules" not in top:
        raise RulesError("the document has no 'rules' list", node_line(root))
    rules_node = top["rules"][1]
    if not isinstance(rules_node, yaml.SequenceNode) or not rules_node.value:
        raise RulesError("'rules' must be a non-empty list", node_line(rules_node))
    rules = tuple(_rule(node, i) for i, node in enumerate(rules_node.value))
    seen: dict[str, int | None] = {}
    for rule in rules:
        if rule.name in seen:
            raise RulesError(f"rule name {rule.name!r} is used twice", rule.line)
        seen[rule.name] = rule.line
    mirror: tuple[str, ...] = ()
    if "mirror" in top:
        mirror_node = top["mirror"][1]
        if plain(mirror_node) not in (None, []):
            mirror = _names(mirror_node, "mirror")
    ruleset = RuleSet(rules, mirror)
    if endpoints is not None:
        known = set(endpoints)
        for rule in rules:
            for name in rule.endpoints:
                if name not in known:
                    raise RulesError(f"rule {rule.name!r}: unknown endpoint {name!r}", rule.line)
        for name in mirror:
            if name not in known:
                raise RulesError(f"mirror: unknown endpoint {name!r}", node_line(top["mirror"][1]))
    if groups is not None:
        known_groups = set(groups)
        for rule in rules:
            if rule.group is not None and rule.group.group not in known_groups:
                raise RulesError(f"rule {rule.name!r}: no endpoint is in group "
                                 f"{rule.group.group!r}", rule.line)
    return ruleset


def check_secrets(ruleset: RuleSet, home: Path, environ: Mapping[str, str]) -> None:
    """Every ``salt_secret`` the rules name can be read now (``rules apply``): raise
    :class:`RulesError` with the rule's line, naming the secret and where it was looked
    for (never a value)."""
    for rule in ruleset.rules:
        if rule.deidentify is None:
            continue
        try:
            load_profile(rule.deidentify, home, environ)
        except SecretError as exc:
            raise RulesError(f"rule {rule.name!r}: deidentify: {exc}", rule.line) from None
