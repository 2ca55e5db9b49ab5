"""The rules document: the issue's example, evaluation order, and validation with lines."""

from __future__ import annotations

import pytest
from pydicom.dataset import Dataset

from dde.routing.conditions import ALWAYS, Subject
from dde.routing.decision import NoRoute
from dde.routing.rules import (
    GroupRoute,
    RulesError,
    RuleSet,
    default_ruleset,
    evaluate,
    parse_rules,
)

EXAMPLE = """\
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
  - name: default
    route: {group: storage, strategy: least-loaded}   # or round-robin, weighted
mirror: [ORTHANC-PROBE]
"""

ENDPOINTS = ["ORTHANC1", "ORTHANC2", "ORTHANC-PROBE"]
GROUPS = ["storage", "probe"]
STORAGE = GroupRoute("storage", "least-loaded")


def subject(calling_aet: str = "TEST_SCU", **elements: str) -> Subject:
    ds = Dataset()
    for keyword, value in elements.items():
        setattr(ds, keyword, value)
    return Subject(ds, calling_aet, "DYNAMIC_DICOM_MW", "127.0.0.1")


@pytest.fixture
def example() -> RuleSet:
    return parse_rules(EXAMPLE, ENDPOINTS, GROUPS)


def error(text: str, endpoints: list[str] | None = None,
          groups: list[str] | None = None) -> RulesError:
    with pytest.raises(RulesError) as caught:
        parse_rules(text, endpoints, groups)
    return caught.value


def replace_line(number: int, new: str) -> str:
    """The example with its 1-based line ``number`` replaced by ``new`` (may be several)."""
    lines = EXAMPLE.splitlines()
    lines[number - 1] = new
    return "\n".join(lines) + "\n"


# -- the example ------------------------------------------------------------------------

def test_the_example_parses_into_four_rules_and_a_mirror(example: RuleSet) -> None:
    assert [r.name for r in example.rules] == ["mr-to-orthanc2", "research-copy",
                                               "drop-tests", "default"]
    assert [r.line for r in example.rules] == [2, 5, 9, 12]
    assert example.mirror == ("ORTHANC-PROBE",)
    mr, research, drop, default = example.rules
    assert mr.endpoints == ("ORTHANC2",) and mr.group is None and not mr.continue_
    assert research.endpoints == ("ORTHANC1",) and research.continue_
    assert drop.discard and drop.endpoints == () and drop.group is None
    assert default.group == STORAGE and default.when == ALWAYS
    assert example.endpoint_names() == {"ORTHANC1", "ORTHANC2", "ORTHANC-PROBE"}
    assert example.groups() == {"storage"}


def test_mr_goes_to_orthanc2_only_plus_the_mirror(example: RuleSet) -> None:
    verdict = evaluate(example, subject(Modality="MR", PatientID="P1"))

    assert verdict.rules == ("mr-to-orthanc2",)
    assert verdict.rule == "mr-to-orthanc2"
    assert verdict.endpoints == ("ORTHANC2",)
    assert verdict.groups == ()
    assert not verdict.discard
    assert verdict.mirror == ("ORTHANC-PROBE",)


def test_mr_wins_even_for_research_and_test_patients_because_first_match_wins(
        example: RuleSet) -> None:
    verdict = evaluate(example, subject("RESEARCH_1", Modality="MR", PatientID="TEST",
                                        StudyDescription="Brain"))

    assert verdict.rules == ("mr-to-orthanc2",)
    assert verdict.endpoints == ("ORTHANC2",) and not verdict.discard


def test_research_copy_continues_to_orthanc1_plus_the_default_group(example: RuleSet) -> None:
    verdict = evaluate(example, subject("RESEARCH_MR7", Modality="CT", PatientID="P1",
                                        StudyDescription="BRAIN routine"))

    assert verdict.rules == ("research-copy", "default")
    assert verdict.rule == "research-copy+default"
    assert verdict.endpoints == ("ORTHANC1",)
    assert verdict.groups == (STORAGE,)
    assert verdict.mirror == ("ORTHANC-PROBE",)


def test_research_copy_needs_both_of_its_keys(example: RuleSet) -> None:
    not_research = evaluate(example, subject("CLINIC_1", Modality="CT", PatientID="P1",
                                             StudyDescription="Brain"))
    not_brain = evaluate(example, subject("RESEARCH_1", Modality="CT", PatientID="P1",
                                          StudyDescription="Chest"))

    assert not_research.rules == ("default",)
    assert not_brain.rules == ("default",)
    assert not_research.endpoints == () and not_research.groups == (STORAGE,)


@pytest.mark.parametrize("patient", ["TEST", "PHANTOM"])
def test_test_patients_are_discarded_without_a_mirror(example: RuleSet, patient: str) -> None:
    verdict = evaluate(example, subject(Modality="CT", PatientID=patient))

    assert verdict.discard
    assert verdict.rules == ("drop-tests",)
    assert verdict.endpoints == () and verdict.groups == () and verdict.mirror == ()


def test_other_instances_take_the_default_group(example: RuleSet) -> None:
    verdict = evaluate(example, subject(Modality="CT", PatientID="TESTER"))

    assert verdict.rules == ("default",)
    assert verdict.endpoints == ()
    assert verdict.groups == (STORAGE,)
    assert verdict.mirror == ("ORTHANC-PROBE",)
    assert not verdict.discard


def test_an_instance_without_modality_or_patient_takes_the_default(example: RuleSet) -> None:
    assert evaluate(example, subject()).rules == ("default",)


# -- evaluation order -------------------------------------------------------------------

def test_the_first_matching_rule_wins() -> None:
    ruleset = parse_rules(
        "rules:\n"
        "  - {name: first, when: {Modality: CT}, route: [A]}\n"
        "  - {name: second, when: {Modality: CT}, route: [B]}\n"
        "  - {name: third, route: [C]}\n"
    )

    verdict = evaluate(ruleset, subject(Modality="CT"))

    assert verdict.rules == ("first",) and verdict.endpoints == ("A",)
    assert evaluate(ruleset, subject(Modality="MR")).endpoints == ("C",)


def test_continue_collects_endpoints_once_each_in_rule_order() -> None:
    ruleset = parse_rules(
        "rules:\n"
        "  - {name: one, route: [B, A], continue: true}\n"
        "  - {name: two, when: {Modality: CT}, route: [A, C], continue: true}\n"
        "  - {name: three, route: [D]}\n"
        "  - {name: never, route: [E]}\n"
    )

    verdict = evaluate(ruleset, subject(Modality="CT"))

    assert verdict.rules == ("one", "two", "three")
    assert verdict.endpoints == ("B", "A", "C", "D")


def test_continue_false_is_the_same_as_no_continue() -> None:
    ruleset = parse_rules(
        "rules:\n"
        "  - {name: one, route: [A], continue: false}\n"
        "  - {name: two, route: [B]}\n"
    )
    assert evaluate(ruleset, subject()).endpoints == ("A",)


def test_no_match_and_no_default_is_no_route() -> None:
    ruleset = parse_rules("rules:\n  - {name: mr, when: {Modality: MR}, route: [A]}\n")

    with pytest.raises(NoRoute, match="no rule matches"):
        evaluate(ruleset, subject(Modality="CT"))


def test_a_continue_rule_alone_is_a_match() -> None:
    ruleset = parse_rules(
        "rules:\n"
        "  - {name: copy, route: [A], continue: true}\n"
        "  - {name: mr, when: {Modality: MR}, route: [B]}\n"
    )
    verdict = evaluate(ruleset, subject(Modality="CT"))
    assert verdict.rules == ("copy",) and verdict.endpoints == ("A",)


def test_the_default_ruleset_is_one_group_rule_and_the_mirror() -> None:
    ruleset = default_ruleset("storage", "round-robin", ["ORTHANC-PROBE"])

    verdict = evaluate(ruleset, subject(Modality="CT"))

    assert verdict.rules == ("default",)
    assert verdict.groups == (GroupRoute("storage", "round-robin"),)
    assert verdict.mirror == ("ORTHANC-PROBE",)


def test_strategies_and_mirror_forms() -> None:
    ruleset = parse_rules(
        "rules:\n"
        "  - name: a\n"
        "    route: {group: g1, strategy: round-robin}\n"
        "    continue: true\n"
        "  - name: b\n"
        "    route: {group: g2, strategy: weighted}\n"
        "    continue: true\n"
        "  - name: c\n"
        "    route: {group: g3}\n"
        "mirror:\n"
    )
    assert [r.group for r in ruleset.rules] == [GroupRoute("g1", "round-robin"),
                                                GroupRoute("g2", "weighted"),
                                                GroupRoute("g3", "least-loaded")]
    assert ruleset.mirror == ()
    assert evaluate(ruleset, subject()).groups == tuple(r.group for r in ruleset.rules)


def test_endpoints_and_groups_that_exist_are_accepted() -> None:
    parse_rules(EXAMPLE, ENDPOINTS, GROUPS)
    parse_rules(EXAMPLE, ENDPOINTS)
    parse_rules(EXAMPLE, groups=GROUPS)


# -- validation: every problem with its line ------------------------------------------------

def test_unknown_keyword_names_it_and_its_line() -> None:
    exc = error(replace_line(3, "    when: {Modality: MR, PatientsName: X}"))

    assert exc.line == 3
    assert "PatientsName" in exc.message and "keyword" in exc.message
    assert str(exc).startswith("line 3: ")


def test_unknown_keyword_in_a_block_mapping_points_at_its_own_line() -> None:
    exc = error(replace_line(3, "    when:\n      Modality: MR\n      Modalty: CT"))

    assert exc.line == 5
    assert "Modalty" in exc.message


def test_bad_regex_gives_the_line_and_the_regex_error() -> None:
    exc = error(replace_line(6, '    when: {StudyDescription: {regex: "(?i)brain("}}'))

    assert exc.line == 6
    assert "invalid regex" in exc.message and "StudyDescription" in exc.message
    assert "missing )" in exc.message or "unterminated" in exc.message


@pytest.mark.parametrize("bounds", ["[1]", "[1, 2, 3]", "5", "[null, null]", "{a: 1}"])
def test_bad_range_gives_the_line(bounds: str) -> None:
    exc = error(replace_line(3, f"    when: {{SeriesNumber: {{range: {bounds}}}}}"))

    assert exc.line == 3
    assert "range" in exc.message and "SeriesNumber" in exc.message


def test_unknown_operator_names_it_and_the_known_ones() -> None:
    exc = error(replace_line(10, "    when: {PatientID: {like: TEST}}"))

    assert exc.line == 10
    assert "'like'" in exc.message and "regex" in exc.message


def test_two_operators_in_one_test_are_refused() -> None:
    exc = error(replace_line(10, "    when: {PatientID: {in: [A], regex: B}}"))

    assert exc.line == 10
    assert "exactly one operator" in exc.message


def test_a_bare_list_of_values_is_refused_with_the_in_hint() -> None:
    exc = error(replace_line(10, "    when: {PatientID: [TEST, PHANTOM]}"))

    assert exc.line == 10
    assert "{in: [...]}" in exc.message


@pytest.mark.parametrize("operator, value, words", [
    ("exists", "maybe", "true or false"),
    ("in", "[]", "non-empty list"),
    ("in", "TEST", "non-empty list"),
])
def test_bad_operator_values_are_refused(operator: str, value: str, words: str) -> None:
    exc = error(replace_line(10, f"    when: {{PatientID: {{{operator}: {value}}}}}"))

    assert exc.line == 10
    assert words in exc.message


def test_unknown_rule_key_names_it_and_the_known_ones() -> None:
    exc = error(replace_line(7, "    routes: [ORTHANC1]"))

    assert exc.line == 7
    assert "'routes'" in exc.message and "route" in exc.message


def test_duplicate_rule_name_is_refused_at_the_second_rule() -> None:
    exc = error(replace_line(12, "  - name: drop-tests"))

    assert exc.line == 12
    assert "drop-tests" in exc.message and "twice" in exc.message


def test_a_rule_without_a_name_is_refused() -> None:
    exc = error("rules:\n  - route: [A]\n  - when: {Modality: MR}\n    route: [B]\n")

    assert exc.line == 2
    assert "no name" in exc.message


def test_missing_route_is_refused_at_the_rule() -> None:
    exc = error(replace_line(4, "    continue: false"))

    assert exc.line == 2
    assert "mr-to-orthanc2" in exc.message and "route" in exc.message


def test_discard_with_a_route_is_refused_at_the_route() -> None:
    exc = error(replace_line(11, "    action: discard\n    route: [ORTHANC1]"))

    assert exc.line == 12
    assert "drop-tests" in exc.message and "discard" in exc.message


def test_an_unknown_action_is_refused() -> None:
    exc = error(replace_line(11, "    action: delete"))

    assert exc.line == 11
    assert "discard" in exc.message


def test_an_empty_route_list_is_refused() -> None:
    exc = error(replace_line(4, "    route: []"))

    assert exc.line == 4
    assert "non-empty list" in exc.message


def test_unknown_endpoint_is_refused_when_endpoints_are_given() -> None:
    text = replace_line(7, "    route: [ORTHANC3]")
    parse_rules(text)  # without the endpoint list nothing is checked

    exc = error(text, ENDPOINTS, GROUPS)

    assert exc.line == 5
    assert "ORTHANC3" in exc.message and "research-copy" in exc.message


def test_unknown_mirror_endpoint_is_refused_at_the_mirror() -> None:
    exc = error(replace_line(14, "mirror: [ORTHANC-PROBE2]"), ENDPOINTS, GROUPS)

    assert exc.line == 14
    assert "ORTHANC-PROBE2" in exc.message and "mirror" in exc.message


def test_unknown_group_is_refused_when_groups_are_given() -> None:
    text = replace_line(13, "    route: {group: archive, strategy: round-robin}")
    parse_rules(text, ENDPOINTS)  # groups not given: not checked

    exc = error(text, ENDPOINTS, GROUPS)

    assert exc.line == 12
    assert "archive" in exc.message and "default" in exc.message


def test_unknown_strategy_names_the_known_ones() -> None:
    exc = error(replace_line(13, "    route: {group: storage, strategy: fastest}"))

    assert exc.line == 13
    assert "'fastest'" in exc.message
    for known in ("least-loaded", "round-robin", "weighted"):
        assert known in exc.message


def test_a_group_route_with_unknown_keys_is_refused() -> None:
    exc = error(replace_line(13, "    route: {grp: storage}"))

    assert exc.line == 13
    assert "group" in exc.message


@pytest.mark.parametrize("text, line", [
    ("rules:\n  - name: a\n    when: {Modality: MR}}\n    route: [X]\n", 3),
    ("rules:\n  - name: a\n\troute: [X]\n", 3),
    ("rules:\n  - name: a\n    when: Modality: MR\n    route: [X]\n", 3),
    ("rules:\n  - name: a\n    route: *nowhere\n", 3),
])
def test_invalid_yaml_is_refused_with_the_line(text: str, line: int) -> None:
    exc = error(text)

    assert exc.line == line
    assert exc.message.startswith("not valid YAML")


@pytest.mark.parametrize("text", ["", "\n", "# only a comment\n"])
def test_an_empty_document_is_refused(text: str) -> None:
    exc = error(text)

    assert exc.line is None
    assert "rules" in exc.message


@pytest.mark.parametrize("text, line, words", [
    ("- a\n- b\n", 1, "mapping"),
    ("mirror: [X]\n", 1, "no 'rules'"),
    ("rules: []\n", 1, "non-empty list"),
    ("rules:\n  - {name: a, route: [X]}\nmirrors: [Y]\n", 3, "'mirrors'"),
    ("rules:\n  - just a string\n", 2, "mapping"),
    ("rules:\n  - {name: a, when: Modality, route: [X]}\n", 2, "'when' must be a mapping"),
    ("rules:\n  - {name: a, route: [X], continue: maybe}\n", 2, "continue"),
])
def test_document_shape_problems(text: str, line: int, words: str) -> None:
    exc = error(text)

    assert exc.line == line
    assert words in exc.message


def test_a_tag_inside_a_flow_mapping_gets_the_quote_hint() -> None:
    exc = error(replace_line(3, "    when: {(0008,0060): MR}"))

    assert exc.line == 3
    assert "in quotes" in exc.message and '"(0008,0060)"' in exc.message


def test_a_quoted_tag_inside_a_flow_mapping_is_accepted() -> None:
    ruleset = parse_rules(replace_line(3, '    when: {"(0008,0060)": MR}'), ENDPOINTS, GROUPS)

    assert evaluate(ruleset, subject(Modality="MR")).rules == ("mr-to-orthanc2",)


def test_an_error_deep_in_an_any_list_has_its_own_line() -> None:
    text = (
        "rules:\n"
        "  - name: nested\n"
        "    when:\n"
        "      any:\n"
        "        - Modality: MR\n"
        "        - all:\n"
        "            - PatientID: {regex: '['}\n"
        "    route: [X]\n"
    )
    exc = error(text)

    assert exc.line == 7
    assert "invalid regex" in exc.message


def test_an_empty_any_list_is_refused() -> None:
    exc = error("rules:\n  - name: a\n    when: {any: []}\n    route: [X]\n")

    assert exc.line == 3
    assert "'any'" in exc.message


@pytest.mark.parametrize("mirror", ["mirror:", "mirror: null", "mirror: ~", "mirror: []"])
def test_no_mirror_may_be_written_as_null_or_an_empty_list(mirror: str) -> None:
    # `mirror:` (null) means "no mirror"; so must the usual YAML spelling of an empty list.
    ruleset = parse_rules(replace_line(14, mirror), ENDPOINTS, GROUPS)

    assert ruleset.mirror == ()


def test_a_rule_key_written_twice_is_refused_at_the_second() -> None:
    # YAML loaders keep the last of two equal keys: the first condition would be silently
    # dropped and the rule would match far more than its author wrote.
    exc = error(replace_line(4, "    when: {PatientID: P1}\n    route: [ORTHANC2]"))

    assert exc.line == 4
    assert "when" in exc.message
