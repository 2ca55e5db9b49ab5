"""``set``/``remove`` on rules: parsed and checked with their lines, and carried by the route
to the destinations of the rule that names them (the mirror: the first matching rule's)."""

from __future__ import annotations

from pathlib import Path

import pytest
from tests.support.unitkit import TAG_SITE_RULE
from tests.unit.test_router_rules import PROBE, View, header, make_router

from dde.dicom.edits import RemoveElement, SetElement
from dde.routing.rules import RulesError, parse_rules

ISSUE_RULE = "rules:\n" + TAG_SITE_RULE + """\
  - name: default
    route: {group: storage}
mirror: [ORTHANC-PROBE]
"""


def test_the_issue_example_parses_into_edits() -> None:
    ruleset = parse_rules(ISSUE_RULE)
    assert ruleset.rules[0].edits == (
        SetElement(0x00080080, "InstitutionName", "LO", "North Campus"),
        SetElement(0x00081010, "StationName", "SH", "CT2"),
        RemoveElement(0x00101000, "OtherPatientIDs"),
    )
    assert ruleset.rules[1].edits == ()


@pytest.mark.parametrize(("rule", "line", "problem"), [
    ("    set: {InstitutionNam: x}\n", 4, "unknown attribute 'InstitutionNam'"),
    ("    set: {Rows: many}\n", 4, "Rows has VR US"),
    ("    set: {StudyDate: yesterday}\n", 4, "StudyDate has VR DA"),
    ("    set: {SOPInstanceUID: 1.2.3}\n", 4, "may not be edited"),
    ("    set: {InstitutionName: }\n", 4, "has no value"),
    ("    set: [InstitutionName]\n", 4, "'set' is a mapping"),
    ("    remove: InstitutionName\n", 4, "'remove' is a list"),
    ("    remove: [PixelData]\n", 4, "may not be edited"),
    ("    remove: [\"(0008,00XX)\"]\n", 4, "unknown attribute"),
    ("    set: {InstitutionName: x}\n    remove: [InstitutionName]\n", 5, "edited twice"),
    ("    sett: {InstitutionName: x}\n", 4, "unknown rule key 'sett'"),
])
def test_bad_edits_are_refused_with_their_line(rule: str, line: int, problem: str) -> None:
    text = f"rules:\n  - name: r\n    route: [A]\n{rule}"
    with pytest.raises(RulesError, match=problem) as caught:
        parse_rules(text)
    assert caught.value.line == line


def test_a_discard_rule_cannot_edit() -> None:
    text = "rules:\n  - name: r\n    action: discard\n    remove: [PatientID]\n"
    with pytest.raises(RulesError, match="discard rule sends nothing to edit") as caught:
        parse_rules(text)
    assert caught.value.line == 4


def test_private_tags_and_multiple_values() -> None:
    text = ('rules:\n  - name: r\n    route: [A]\n    remove: ["(0009,1001)"]\n'
            '    set: {PixelSpacing: ["0.5", "0.5"], InstanceNumber: 3}\n')
    (rule,) = parse_rules(text).rules
    assert rule.edits == (SetElement(0x00280030, "PixelSpacing", "DS", ("0.5", "0.5")),
                          SetElement(0x00200013, "InstanceNumber", "IS", "3"),
                          RemoveElement(0x00091001, ""))


TWO_RULES = """\
rules:
  - name: coerced
    when: {Modality: CT}
    set: {InstitutionName: "North Campus"}
    route: [ORTHANC1]
    continue: true
  - name: as-received
    route: [ORTHANC2]
mirror: [ORTHANC-PROBE]
"""


def test_continue_sends_edited_to_one_and_as_received_to_the_other() -> None:
    router = make_router(parse_rules(TWO_RULES))

    route = router.route(header(modality="CT"), View())

    assert route.destinations == ("ORTHANC1", "ORTHANC2") and route.mirrors == (PROBE,)
    assert route.variant_of("ORTHANC1") == "coerced"
    assert route.variant_of("ORTHANC2") is None
    assert route.variant_of(PROBE) == "coerced"  # the first matching rule's bytes
    assert [rule for rule, _ in route.edits] == ["coerced"]


def test_the_mirror_gets_the_first_matching_rules_bytes_as_received() -> None:
    text = TWO_RULES.replace("Modality: CT", "Modality: MR")
    router = make_router(parse_rules(text.replace("route: [ORTHANC2]", "route: [ORTHANC2]\n"
                                                  "    set: {StationName: X}")))

    route = router.route(header(modality="CT"), View())  # only as-received matches

    assert route.variant_of("ORTHANC2") == "as-received"
    assert route.variant_of(PROBE) == "as-received"

    routed = make_router(parse_rules(TWO_RULES.replace("Modality: CT", "Modality: MR")))
    plain = routed.route(header(modality="CT"), View())
    assert plain.variants == () and plain.edits == ()  # no edits: nothing to carry


def test_a_group_rule_with_edits_gives_its_chosen_member_the_variant() -> None:
    router = make_router(parse_rules(
        ISSUE_RULE.replace('    when: {CallingAET: "CT_SCANNER_2"}\n', "")))
    route = router.route(header(), View())
    (destination,) = route.destinations
    assert route.variant_of(destination) == "tag-site"
    assert route.variant_of(PROBE) == "tag-site"


def test_the_readme_example_is_valid_as_written() -> None:
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    section = readme[readme.index("### Rules that edit: set and remove"):]
    block = section[section.index("```yaml\n") + 8:section.index("```\n", 10)]
    ruleset = parse_rules(block, ["ORTHANC1", "ORTHANC-PROBE"], ["storage"])
    assert ruleset.rules[0].edits == parse_rules(ISSUE_RULE).rules[0].edits
