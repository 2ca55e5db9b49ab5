"""Rewriting ``dde.yaml`` in place: only what changed is written, so the user's comments,
the order of keys and endpoints, and the values left to their defaults stay as they were
(round-trip YAML)."""

from __future__ import annotations

import io
from typing import Any

from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap, CommentedSeq
from ruamel.yaml.util import load_yaml_guess_indent

from dde.config.endpoints import EndpointSettings

_ABSENT = object()


def rewrite_yaml(text: str, before: dict[str, Any], after: dict[str, Any]) -> str:
    """``text`` (a YAML mapping whose values are ``before``, defaults filled in) changed
    to hold ``after``: only the keys whose value differs are written, in place, so the
    comments, the order and the keys left to their defaults stay. Endpoints are matched by
    name: a new one is appended, a removed one deleted."""
    loaded, indent, sequence_indent = load_yaml_guess_indent(text)
    document = CommentedMap() if loaded is None else loaded
    _sync(document, before, after)
    writer = YAML()
    writer.width = 4096  # never fold a long value onto a second line
    sequence_indent = sequence_indent or 0
    writer.indent(mapping=_mapping_indent(text),
                  sequence=max(indent or 2, sequence_indent + 2), offset=sequence_indent)
    out = io.StringIO()
    writer.dump(document, out)
    result = out.getvalue().rstrip("\n") + "\n"
    if loaded is None and text.strip():
        result = text.rstrip("\n") + "\n" + result  # a file of comments only keeps them
    return result


def _mapping_indent(text: str) -> int:
    """How far the file indents a mapping under a top-level key (2 if it never does)."""
    previous = ""
    for line in text.splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        if previous.endswith(":") and not previous[0].isspace() \
                and line[0] == " " and not stripped.startswith("-"):
            return len(line) - len(line.lstrip(" "))
        previous = line.split(" #", 1)[0].rstrip()
    return 2


def _fresh(value: Any) -> Any:
    """A new value for the document: mappings in block style, lists of plain values in
    flow style (``groups: [storage]``)."""
    if isinstance(value, dict):
        return CommentedMap((key, _fresh(item)) for key, item in value.items())
    if isinstance(value, list):
        sequence = CommentedSeq(_fresh(item) for item in value)
        if not any(isinstance(item, dict | list) for item in value):
            sequence.fa.set_flow_style()
        return sequence
    return value


def _sync(node: Any, before: dict[str, Any], after: dict[str, Any]) -> None:
    """Make the mapping ``node`` (whose effective values are ``before``) hold ``after``."""
    for key in [k for k in node if k in before and k not in after]:
        del node[key]
    for key, value in after.items():
        old = before.get(key, _ABSENT)
        if old == value:
            continue
        current = node[key] if key in node else _ABSENT
        if isinstance(value, dict) and isinstance(old, dict):
            if not isinstance(current, dict):
                node[key] = current = CommentedMap()
            _sync(current, old, value)
        elif key == "endpoints" and isinstance(current, list) and isinstance(old, list):
            _sync_endpoints(current, old, value)
        elif isinstance(value, list) and isinstance(current, CommentedSeq):
            del current[:]  # the same node: its flow style and comments stay
            current.extend(value)
        elif key == "endpoints" and isinstance(value, list):
            node[key] = _fresh([_compact_endpoint(e) for e in value])
        else:
            node[key] = _fresh(value)


def _sync_endpoints(items: list[Any], before: list[dict[str, Any]],
                    after: list[dict[str, Any]]) -> None:
    """The ``endpoints`` sequence, matched by name: changed ones edited in place, removed
    ones deleted, new ones appended (without the values that are defaults)."""
    wanted = {e["name"] for e in after}
    for index in reversed(range(len(items))):
        if not isinstance(items[index], dict) or items[index].get("name") not in wanted:
            del items[index]
    present = {item["name"]: item for item in items}
    old = {e["name"]: e for e in before}
    for endpoint in after:
        if endpoint["name"] in present:
            _sync(present[endpoint["name"]], old.get(endpoint["name"], {}), endpoint)
        else:
            items.append(_fresh(_compact_endpoint(endpoint)))


_ALWAYS_WRITTEN = ("name", "kind", "aet", "host", "port")


def _compact_endpoint(endpoint: dict[str, Any]) -> dict[str, Any]:
    """A new endpoint entry: its address, and what is not the default."""
    defaults = EndpointSettings(name="x", aet="x").model_dump(mode="json", exclude_none=True)
    return {key: value for key, value in endpoint.items()
            if key in _ALWAYS_WRITTEN or defaults.get(key, _ABSENT) != value}
