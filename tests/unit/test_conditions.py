"""The rule matcher: every operator, missing and multi-valued tags, context fields, charsets.

Conditions are written as a rule's ``when:`` (the YAML a user writes) and parsed with
:func:`parse_rules`, so each test covers the file format and the matcher together; a few
build the condition objects directly.
"""

from __future__ import annotations

import io
import re

import pytest
import yaml
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filereader import _read_file_meta_info, read_preamble
from pydicom.uid import (
    UID,
    CTImageStorage,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    generate_uid,
)

from dde.dicom.header import parse_header
from dde.routing.conditions import (
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
    values_of,
    wildcard,
)
from dde.routing.rules import parse_rules

MODALITY = Field("Modality", 0x00080060)


def when(condition: object) -> Condition:
    """The condition of a one-rule document whose ``when:`` is ``condition``."""
    document = yaml.safe_dump({"rules": [{"name": "r", "when": condition, "route": ["X"]}]},
                              allow_unicode=True)
    return parse_rules(document).rules[0].when


def header(**elements: object) -> Dataset:
    ds = Dataset()
    for keyword, value in elements.items():
        setattr(ds, keyword, value)
    return ds


def subject(calling_aet: str = "TEST_SCU", called_aet: str = "DYNAMIC_DICOM_MW",
            source_ip: str = "10.1.2.3", **elements: object) -> Subject:
    return Subject(header(**elements), calling_aet, called_aet, source_ip)


CT = subject(Modality="CT", PatientID="P1", StudyDescription="Brain MRI routine",
             StudyDate="20250615", SeriesNumber=7, SliceThickness="2.5",
             ImageType=["ORIGINAL", "PRIMARY", "AXIAL"], BodyPartExamined="HEAD")


# -- exact and wildcards -----------------------------------------------------------------

def test_exact_value_matches_only_the_whole_value_case_sensitively() -> None:
    assert matches(when({"Modality": "CT"}), CT)
    assert not matches(when({"Modality": "MR"}), CT)
    assert not matches(when({"Modality": "ct"}), CT)
    assert not matches(when({"Modality": "C"}), CT)
    assert not matches(when({"StudyDescription": "Brain"}), CT)


def test_exact_value_is_compared_without_dicom_padding() -> None:
    # An odd-length value is padded with a space on the wire; the rule never sees it.
    ds = parse(Modality="CT", StudyDescription="ABC")
    assert matches(when({"StudyDescription": "ABC"}), Subject(ds))


def test_a_number_written_in_yaml_matches_the_text_of_the_attribute() -> None:
    assert matches(when({"SeriesNumber": 7}), CT)
    assert not matches(when({"SeriesNumber": 8}), CT)


def test_star_matches_any_run_of_characters_including_none() -> None:
    assert matches(when({"StudyDescription": "Brain*"}), CT)
    assert matches(when({"StudyDescription": "*MRI*"}), CT)
    assert matches(when({"StudyDescription": "Brain MRI routine*"}), CT)
    assert matches(when({"Modality": "*"}), CT)
    assert not matches(when({"StudyDescription": "MRI*"}), CT)  # anchored at both ends


def test_question_mark_matches_exactly_one_character() -> None:
    assert matches(when({"Modality": "C?"}), CT)
    assert matches(when({"Modality": "??"}), CT)
    assert not matches(when({"Modality": "???"}), CT)
    assert not matches(when({"Modality": "?"}), CT)


def test_regex_metacharacters_in_a_wildcard_pattern_are_literal() -> None:
    ip = subject(source_ip="10.0.0.7")
    lookalike = subject(source_ip="10x0y0z7")
    assert matches(when({"SourceIP": "10.0.0.*"}), ip)
    assert not matches(when({"SourceIP": "10.0.0.*"}), lookalike)

    plus = subject(StudyDescription="C+ (contrast) [v2] ^$|{1}")
    assert matches(when({"StudyDescription": "C+ (contrast) [v2] ^$|{1}*"}), plus)
    assert matches(when({"StudyDescription": "C+ (*) [v?] ^$|{1}"}), plus)
    assert not matches(when({"StudyDescription": "C+*"}), subject(StudyDescription="CC"))
    assert not matches(when({"StudyDescription": "(a|b)*"}), subject(StudyDescription="a"))


def test_wildcard_compiles_only_patterns_with_star_or_question_mark() -> None:
    assert wildcard("CT") is None
    compiled = wildcard("a.b*")
    assert compiled is not None
    assert compiled.fullmatch("a.bcd") and not compiled.fullmatch("axbcd")


# -- in, regex, range ---------------------------------------------------------------------

def test_in_matches_any_listed_value_exactly() -> None:
    assert matches(when({"PatientID": {"in": ["TEST", "P1"]}}), CT)
    assert not matches(when({"PatientID": {"in": ["TEST", "PHANTOM"]}}), CT)
    assert not matches(when({"PatientID": {"in": ["P*"]}}), CT)  # 'in' is exact


def test_regex_searches_the_value_and_honours_inline_flags() -> None:
    assert matches(when({"StudyDescription": {"regex": "(?i)brain"}}), CT)
    assert matches(when({"StudyDescription": {"regex": "MRI"}}), CT)  # search, not fullmatch
    assert not matches(when({"StudyDescription": {"regex": "brain"}}), CT)  # case-sensitive
    assert not matches(when({"StudyDescription": {"regex": "^MRI"}}), CT)
    assert matches(when({"StudyDescription": {"regex": "^Brain .* routine$"}}), CT)


def test_range_of_numbers_is_numeric_not_textual() -> None:
    assert matches(when({"SeriesNumber": {"range": [5, 10]}}), CT)
    assert matches(when({"SeriesNumber": {"range": [7, 7]}}), CT)  # bounds are inclusive
    assert not matches(when({"SeriesNumber": {"range": [8, 100]}}), CT)
    # As text "7" > "10"; as numbers 7 < 10.
    assert not matches(when({"SeriesNumber": {"range": [10, 20]}}), CT)
    assert matches(when({"SliceThickness": {"range": [2, 3]}}), CT)
    assert matches(when({"SliceThickness": {"range": [2.5, 2.5]}}), CT)
    assert not matches(when({"SliceThickness": {"range": [0.5, 2.4]}}), CT)


def test_range_with_open_bounds() -> None:
    assert matches(when({"SeriesNumber": {"range": [5, None]}}), CT)
    assert not matches(when({"SeriesNumber": {"range": [8, None]}}), CT)
    assert matches(when({"SeriesNumber": {"range": [None, 7]}}), CT)
    assert not matches(when({"SeriesNumber": {"range": [None, 6]}}), CT)


def test_range_of_dates_yyyymmdd() -> None:
    assert matches(when({"StudyDate": {"range": [20250101, 20251231]}}), CT)
    assert matches(when({"StudyDate": {"range": ["20250615", "20250615"]}}), CT)
    assert not matches(when({"StudyDate": {"range": [20250616, 20251231]}}), CT)
    assert not matches(when({"StudyDate": {"range": [20240101, 20250614]}}), CT)
    assert matches(when({"StudyDate": {"range": [20250101, None]}}), CT)
    assert not matches(when({"StudyDate": {"range": [None, 20241231]}}), CT)
    assert matches(when({"StudyDate": {"range": [None, "20250615"]}}), CT)


def test_range_on_text_values_compares_text() -> None:
    assert matches(when({"PatientID": {"range": ["P0", "P9"]}}), CT)
    assert not matches(when({"PatientID": {"range": ["Q", None]}}), CT)


def test_range_condition_keeps_numbers_and_dates_as_written() -> None:
    condition = when({"StudyDate": {"range": [20250101, None]}})
    assert isinstance(condition, InRange)
    assert condition.low == 20250101 and condition.high is None


# -- exists and not -----------------------------------------------------------------------

def test_exists_true_and_false() -> None:
    assert matches(when({"BodyPartExamined": {"exists": True}}), CT)
    assert not matches(when({"BodyPartExamined": {"exists": False}}), CT)
    assert not matches(when({"AccessionNumber": {"exists": True}}), CT)
    assert matches(when({"AccessionNumber": {"exists": False}}), CT)


def test_an_empty_attribute_counts_as_absent() -> None:
    empty = subject(Modality="CT", AccessionNumber="")
    assert matches(when({"AccessionNumber": {"exists": False}}), empty)
    assert not matches(when({"AccessionNumber": {"exists": True}}), empty)
    assert not matches(when({"AccessionNumber": "*"}), empty)


def test_not_negates_a_value_test() -> None:
    assert matches(when({"Modality": {"not": "MR"}}), CT)
    assert not matches(when({"Modality": {"not": "CT"}}), CT)
    assert matches(when({"Modality": {"not": {"in": ["MR", "PT"]}}}), CT)
    assert not matches(when({"StudyDescription": {"not": {"regex": "(?i)brain"}}}), CT)
    assert not matches(when({"BodyPartExamined": {"not": {"exists": True}}}), CT)


def test_not_negates_a_whole_condition() -> None:
    assert matches(when({"not": {"Modality": "MR"}}), CT)
    assert not matches(when({"not": {"Modality": "CT", "PatientID": "P1"}}), CT)
    assert matches(when({"not": {"Modality": "CT", "PatientID": "P2"}}), CT)


# -- missing attributes -------------------------------------------------------------------

@pytest.mark.parametrize("test", [
    "CT", "*", "?", {"in": ["CT", ""]}, {"regex": ".*"}, {"regex": ""},
    {"range": [None, 99999999]}, {"range": ["", None]}, {"exists": True},
])
def test_a_missing_attribute_fails_every_positive_test(test: object) -> None:
    assert not matches(when({"PerformedProcedureStepID": test}), CT)


@pytest.mark.parametrize("test", [
    {"exists": False}, {"not": "CT"}, {"not": "*"}, {"not": {"regex": ".*"}},
    {"not": {"in": ["CT"]}}, {"not": {"range": [0, None]}},
])
def test_a_missing_attribute_matches_only_exists_false_or_a_negation(test: object) -> None:
    assert matches(when({"PerformedProcedureStepID": test}), CT)


def test_a_missing_context_field_is_absent() -> None:
    anonymous = subject(calling_aet="", source_ip="")
    assert not matches(when({"CallingAET": "*"}), anonymous)
    assert matches(when({"CallingAET": {"exists": False}}), anonymous)
    assert matches(when({"SourceIP": {"not": "10.*"}}), anonymous)


# -- multi-valued attributes --------------------------------------------------------------

def test_a_multi_valued_attribute_matches_when_any_value_does() -> None:
    assert matches(when({"ImageType": "PRIMARY"}), CT)
    assert matches(when({"ImageType": "AXIAL"}), CT)
    assert matches(when({"ImageType": "AX*"}), CT)
    assert matches(when({"ImageType": {"in": ["DERIVED", "ORIGINAL"]}}), CT)
    assert matches(when({"ImageType": {"regex": "^AX"}}), CT)
    assert not matches(when({"ImageType": "DERIVED"}), CT)
    assert not matches(when({"ImageType": "ORIGINAL\\PRIMARY\\AXIAL"}), CT)


def test_not_of_a_multi_valued_attribute_means_no_value_matches() -> None:
    assert not matches(when({"ImageType": {"not": "PRIMARY"}}), CT)
    assert matches(when({"ImageType": {"not": "DERIVED"}}), CT)


def test_a_multi_valued_number_matches_any_value_in_range() -> None:
    spacing = subject(PixelSpacing=["0.5", "3.0"])
    assert matches(when({"PixelSpacing": {"range": [2, 4]}}), spacing)
    assert not matches(when({"PixelSpacing": {"range": [1, 2]}}), spacing)


def test_values_of_a_multi_valued_element_after_parsing_the_encoded_bytes() -> None:
    ds = parse(Modality="CT", ImageType=["ORIGINAL", "PRIMARY", "AXIAL"])
    values = values_of(Subject(ds), Field("ImageType", 0x00080008))
    assert values == ["ORIGINAL", "PRIMARY", "AXIAL"]
    assert matches(when({"ImageType": "PRIMARY"}), Subject(ds))


# -- combinations ---------------------------------------------------------------------------

def test_every_key_of_a_when_mapping_must_match() -> None:
    assert matches(when({"Modality": "CT", "PatientID": "P1"}), CT)
    assert not matches(when({"Modality": "CT", "PatientID": "P2"}), CT)


def test_any_needs_one_condition_and_all_needs_every_one() -> None:
    assert matches(when({"any": [{"Modality": "MR"}, {"Modality": "CT"}]}), CT)
    assert not matches(when({"any": [{"Modality": "MR"}, {"Modality": "PT"}]}), CT)
    assert matches(when({"all": [{"Modality": "CT"}, {"PatientID": "P*"}]}), CT)
    assert not matches(when({"all": [{"Modality": "CT"}, {"PatientID": "Q*"}]}), CT)


def test_any_and_all_nest_and_combine_with_other_keys() -> None:
    condition = when({
        "Modality": {"in": ["CT", "MR"]},
        "any": [
            {"all": [{"CallingAET": "RESEARCH_*"}, {"StudyDescription": {"regex": "(?i)brain"}}]},
            {"BodyPartExamined": "HEAD", "SeriesNumber": {"range": [1, 9]}},
        ],
    })
    assert matches(condition, CT)
    other_part = subject(Modality="CT", BodyPartExamined="CHEST", SeriesNumber=7)
    assert not matches(condition, other_part)
    research = subject(calling_aet="RESEARCH_7", Modality="MR", StudyDescription="BRAIN",
                       BodyPartExamined="CHEST")
    assert matches(condition, research)
    assert not matches(condition, subject(calling_aet="RESEARCH_7", Modality="PT",
                                          StudyDescription="BRAIN"))


def test_condition_objects_combine_directly() -> None:
    ct = Equals(MODALITY, "CT")
    mr = Equals(MODALITY, "MR")
    assert matches(AnyOf((mr, ct)), CT)
    assert not matches(AllOf((mr, ct)), CT)
    assert matches(AllOf(()), CT)  # no condition: always
    assert not matches(AnyOf(()), CT)
    assert matches(Not(mr), CT)
    assert matches(OneOf(MODALITY, ("CT",)), CT)
    assert matches(Matches(MODALITY, re.compile("^C")), CT)
    assert matches(Exists(MODALITY, True), CT)
    assert matches(InRange(Field("SeriesNumber", 0x00200011), 7, None), CT)


# -- fields: keywords, tags, context ---------------------------------------------------------

def test_a_tag_written_as_gggg_eeee_is_the_same_field_as_its_keyword() -> None:
    document = (
        "rules:\n"
        "  - name: by-tag\n"
        "    when:\n"
        "      (0008,0060): CT\n"
        "      '(0010,0020)': {in: [P1]}\n"
        "      \"0008,0008\": PRIMARY\n"
        "    route: [X]\n"
    )
    condition = parse_rules(document).rules[0].when
    assert matches(condition, CT)
    assert not matches(condition, subject(Modality="MR", PatientID="P1",
                                          ImageType=["ORIGINAL", "PRIMARY"]))


def test_a_tag_may_be_written_in_lower_case_hex() -> None:
    assert matches(when({"(0008,103e)": "Axial*"}), subject(SeriesDescription="Axial 5mm"))


def test_a_tag_reaches_an_attribute_pydicom_has_no_keyword_for() -> None:
    ds = Dataset()
    ds.Modality = "CT"
    ds.add_new(0x00091010, "LO", "SITE-A")  # a private element
    assert matches(when({"(0009,1010)": "SITE-*"}), Subject(ds))
    assert not matches(when({"(0009,1010)": "SITE-B"}), Subject(ds))


def test_calling_aet_called_aet_and_source_ip_are_context_fields() -> None:
    s = subject(calling_aet="RESEARCH_MR1", called_aet="DYNAMIC_DICOM_MW",
                source_ip="192.168.4.20", Modality="MR")
    assert matches(when({"CallingAET": "RESEARCH_*"}), s)
    assert not matches(when({"CallingAET": "CLINIC_*"}), s)
    assert matches(when({"CalledAET": "DYNAMIC_DICOM_MW"}), s)
    assert not matches(when({"CalledAET": "OTHER"}), s)
    assert matches(when({"SourceIP": "192.168.4.*"}), s)
    assert matches(when({"SourceIP": {"regex": r"^192\.168\."}}), s)
    assert not matches(when({"SourceIP": "192.168.5.*"}), s)
    assert matches(when({"SourceIP": {"in": ["10.0.0.1", "192.168.4.20"]}}), s)


def test_context_fields_are_not_read_from_the_header() -> None:
    # A header element cannot pretend to be the association's calling AE title.
    s = Subject(header(Modality="CT"), calling_aet="TEST_SCU")
    assert not matches(when({"CallingAET": "RESEARCH_*"}), s)


# -- character sets ---------------------------------------------------------------------------

def parse(syntax: str = ExplicitVRLittleEndian, **elements: object) -> Dataset:
    """Encode a dataset with pydicom and parse it back as the router does."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = CTImageStorage
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.file_meta.TransferSyntaxUID = UID(syntax)
    charset = elements.pop("SpecificCharacterSet", None)
    if charset is not None:
        ds.SpecificCharacterSet = charset
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID
    for keyword, value in elements.items():
        setattr(ds, keyword, value)
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    stream = io.BytesIO(buffer.getvalue())
    read_preamble(stream, False)
    meta = _read_file_meta_info(stream)
    return parse_header(stream.read(), str(meta.TransferSyntaxUID)).dataset


@pytest.mark.parametrize("charset, name, description, encoded", [
    ("ISO_IR 100", "Müller^Jürgen", "Schädel Übersicht", "Müller".encode("latin-1")),
    ("ISO_IR 192", "Ångström^Zoë", "Gehirn – Übersicht", "Ångström".encode()),
    ("ISO_IR 192", "山田^太郎", "頭部 MRI", "山田".encode()),
])
def test_non_ascii_names_and_descriptions_match_after_decoding(
        charset: str, name: str, description: str, encoded: bytes) -> None:
    ds = parse(SpecificCharacterSet=charset, PatientName=name, StudyDescription=description,
               Modality="MR")
    s = Subject(ds)
    # the header holds the encoded bytes until a rule looks at them
    assert encoded in bytes(ds.get_item(0x00100010).value)

    assert matches(when({"PatientName": name}), s)
    assert matches(when({"StudyDescription": description}), s)
    assert matches(when({"PatientName": {"in": ["x", name]}}), s)
    assert matches(when({"PatientName": name[:2] + "*"}), s)
    assert matches(when({"PatientName": {"regex": "^" + re.escape(name[:3])}}), s)
    assert matches(when({"StudyDescription": {"regex": re.escape(description[-4:]) + "$"}}), s)
    assert not matches(when({"PatientName": name.upper() + "X"}), s)


def test_latin1_text_matches_case_insensitive_regex_on_non_ascii_letters() -> None:
    s = Subject(parse(SpecificCharacterSet="ISO_IR 100", PatientName="Müller^Jürgen",
                      StudyDescription="SCHÄDEL nativ"))
    assert matches(when({"StudyDescription": {"regex": "(?i)schädel"}}), s)
    assert matches(when({"PatientName": {"regex": "(?i)^MÜLLER\\^"}}), s)
    assert matches(when({"PatientName": "M?ller^J?rgen"}), s)  # one character, not one byte


def test_utf8_wildcard_question_mark_is_one_character_not_one_byte() -> None:
    s = Subject(parse(SpecificCharacterSet="ISO_IR 192", PatientName="山田^太郎"))
    assert matches(when({"PatientName": "??^??"}), s)
    assert not matches(when({"PatientName": "????^??"}), s)


def test_implicit_vr_headers_match_like_explicit_ones() -> None:
    s = Subject(parse(ImplicitVRLittleEndian, SpecificCharacterSet="ISO_IR 100",
                      PatientName="Müller^Jürgen", Modality="MR",
                      ImageType=["DERIVED", "SECONDARY"], SeriesNumber=12))
    assert matches(when({"PatientName": "Müller^Jürgen"}), s)
    assert matches(when({"Modality": "MR", "ImageType": "SECONDARY"}), s)
    assert matches(when({"SeriesNumber": {"range": [10, 20]}}), s)


def test_the_same_name_in_two_character_sets_matches_the_same_rule() -> None:
    rule = when({"PatientName": "Müller^Jürgen"})
    latin1 = Subject(parse(SpecificCharacterSet="ISO_IR 100", PatientName="Müller^Jürgen"))
    utf8 = Subject(parse(SpecificCharacterSet="ISO_IR 192", PatientName="Müller^Jürgen"))
    assert matches(rule, latin1)
    assert matches(rule, utf8)


def test_iso_2022_japanese_person_name_groups_match() -> None:
    name = "Yamada^Tarou=山田^太郎=やまだ^たろう"
    s = Subject(parse(SpecificCharacterSet=["", "ISO 2022 IR 87"], PatientName=name))
    assert matches(when({"PatientName": name}), s)
    assert matches(when({"PatientName": {"regex": "=山田\\^太郎="}}), s)
