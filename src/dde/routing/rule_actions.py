"""What a routing rule does to the bytes it sends, parsed: ``set``/``remove``
(:mod:`dde.dicom.edits`) and ``deidentify`` (:mod:`dde.routing.deidentify_action`).

A rule has one or the other, not both: de-identification decides every attribute the
standard's table names (a ``set`` of one of them would undo it, and one on another would
put back what the profile is there to take out), so a rule with both is refused with its
line. A study that needs both goes through two rules.
"""

from __future__ import annotations

import re
from typing import Any

import yaml
from pydicom.datadict import tag_for_keyword

from dde.dicom.edits import Edit, EditError, SetElement, remove_element, set_element
from dde.routing.deidentify_action import DeidentifyAction, parse_deidentify

TAG = re.compile(r"^\(?\s*([0-9A-Fa-f]{4})\s*,\s*([0-9A-Fa-f]{4})\s*\)?$")


class RulesError(Exception):
    """An invalid rules document; ``line`` is 1-based, or None when it has no place."""

    def __init__(self, message: str, line: int | None = None) -> None:
        self.message = message
        self.line = line
        super().__init__(f"line {line}: {message}" if line is not None else message)


def node_line(node: yaml.Node) -> int:
    return int(node.start_mark.line) + 1


def scalar(node: yaml.Node, what: str) -> str:
    if not isinstance(node, yaml.ScalarNode):
        raise RulesError(f"{what} must be a single value", node_line(node))
    return str(node.value)


def plain(node: yaml.Node) -> Any:
    """A node's Python value (scalars typed as YAML would)."""
    if isinstance(node, yaml.ScalarNode) and node.tag == "tag:yaml.org,2002:null":
        return None
    return yaml.safe_load(yaml.serialize(node))


def deidentify_action(rule: str, fields: dict[str, tuple[yaml.Node, yaml.Node]]
                      ) -> DeidentifyAction | None:
    """The rule's ``deidentify:`` (None without one); refused with ``set``/``remove``."""
    if "deidentify" not in fields:
        return None
    key_node, node = fields["deidentify"]
    for key in ("set", "remove"):
        if key in fields:
            raise RulesError(
                f"rule {rule!r}: 'deidentify' and '{key}' cannot be on one rule "
                "(de-identification decides the attributes itself); use two rules",
                node_line(fields[key][0]))
    action = parse_deidentify(plain(node))
    if isinstance(action, str):
        raise RulesError(f"rule {rule!r}: {action}", node_line(key_node))
    return action


def _edit_tag(name: str, rule: str, line: int) -> int:
    """The tag a ``set`` key or ``remove`` item names: a keyword or ``(gggg,eeee)``."""
    match = TAG.match(name)
    if match:
        return int(match.group(1) + match.group(2), 16)
    tag = tag_for_keyword(name)
    if tag is None:
        raise RulesError(f"rule {rule!r}: unknown attribute {name!r} (use a DICOM keyword "
                         'such as InstitutionName, or a tag in quotes such as "(0008,0080)")',
                         line)
    return int(tag)


def parse_edits(rule: str, fields: dict[str, tuple[yaml.Node, yaml.Node]]) -> tuple[Edit, ...]:
    """The rule's ``set`` and ``remove``, checked (tags, VRs, values), in the order
    written: sets first."""
    edits: list[Edit] = []
    seen: dict[int, str] = {}

    def add(edit: Edit, key: str, line: int) -> None:
        if edit.tag in seen:
            raise RulesError(f"rule {rule!r}: {key} is edited twice (in '{seen[edit.tag]}' "
                             "and here)", line)
        seen[edit.tag] = "set" if isinstance(edit, SetElement) else "remove"
        edits.append(edit)

    if "set" in fields:
        node = fields["set"][1]
        if not isinstance(node, yaml.MappingNode) or not node.value:
            raise RulesError(f"rule {rule!r}: 'set' is a mapping of attribute: value",
                             node_line(node))
        for key_node, value_node in node.value:
            key = scalar(key_node, "an attribute name")
            line = node_line(key_node)
            tag = _edit_tag(key, rule, line)
            value = plain(value_node)
            if value is None:
                raise RulesError(f"rule {rule!r}: {key} has no value (to empty it write "
                                 "\"\"; to drop it use remove)", line)
            try:
                add(set_element(tag, value), key, line)
            except EditError as exc:
                raise RulesError(f"rule {rule!r}: {exc}", line) from None
    if "remove" in fields:
        node = fields["remove"][1]
        if not isinstance(node, yaml.SequenceNode) or not node.value:
            raise RulesError(f"rule {rule!r}: 'remove' is a list of attributes", node_line(node))
        for item in node.value:
            key = scalar(item, "an attribute name")
            line = node_line(item)
            try:
                add(remove_element(_edit_tag(key, rule, line)), key, line)
            except EditError as exc:
                raise RulesError(f"rule {rule!r}: {exc}", line) from None
    return tuple(edits)
