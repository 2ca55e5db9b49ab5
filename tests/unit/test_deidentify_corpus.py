"""Every readable file of the shared public corpus, de-identified and written as Part-10,
then checked against PS3.15 Table E.1-1 (the library's table) for every attribute present
in the input, sequences included: the action carried out is the table's, under the Basic
Profile alone and with the date options.

The corpus (``../shared/corpus/public`` beside the repository, described by its
``manifest.csv``) holds real-world files of many SOP classes and transfer syntaxes; files
pydicom cannot read are left out (they are refused at receive time anyway).
"""

from __future__ import annotations

import csv
from io import BytesIO
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset
from tests.support.deid_check import TableCheck

from dde.dicom.deid_table import DeidOption, load_table
from dde.dicom.deidentify import Deidentified, HeldBack, Profile, deidentify, encode_part10

CORPUS = Path(__file__).resolve().parents[2].parent / "shared" / "corpus" / "public"
if not (CORPUS / "manifest.csv").is_file():
    pytest.skip(f"no public corpus at {CORPUS}", allow_module_level=True)

pytestmark = pytest.mark.slow  # 4-12 s on the shared 2-core machine

SALT = b"corpus-salt"
PROFILES = {
    "basic": Profile(SALT, allow_burned_in=True),
    "full-dates": Profile(SALT, frozenset({DeidOption.RETAIN_LONGITUDINAL_DATES,
                                           DeidOption.RETAIN_DEVICE_IDENTITY}),
                          allow_burned_in=True),
    "modified-dates": Profile(SALT, frozenset({DeidOption.RETAIN_LONGITUDINAL_MODIFIED_DATES,
                                               DeidOption.RETAIN_PATIENT_CHARACTERISTICS}),
                              allow_burned_in=True),
}


def corpus_files() -> list[str]:
    with open(CORPUS / "manifest.csv", newline="") as manifest:
        return [row["file"] for row in csv.DictReader(manifest)]


def readable(name: str) -> Dataset:
    try:
        return dcmread(CORPUS / name)
    except Exception as exc:  # any reading failure leaves the file out
        pytest.skip(f"pydicom cannot read {name}: {type(exc).__name__}")


def written(dataset: Dataset) -> Dataset:
    """Through Part-10 bytes when the file meta allows it (what a destination receives)."""
    meta = getattr(dataset, "file_meta", Dataset())
    if all(meta.get(k) for k in ("TransferSyntaxUID", "MediaStorageSOPClassUID",
                                 "MediaStorageSOPInstanceUID")):
        return dcmread(BytesIO(encode_part10(dataset)))
    return dataset


@pytest.mark.parametrize("name", corpus_files())
def test_corpus_file_follows_the_table(name: str) -> None:
    original = readable(name)
    for label, profile in PROFILES.items():
        result = deidentify(original, profile)
        assert isinstance(result, Deidentified), f"{label}: {result}"
        checked = TableCheck(load_table(), profile, str(original.get("PatientID", ""))).run(
            original, written(result.dataset))
        assert checked.problems == [], f"{label}: {checked.problems[:10]}"
        assert sum(checked.seen.values()) > 0


def test_burned_in_corpus_files_are_held_back() -> None:
    """Whatever the corpus marks Burned In Annotation YES is held back without allowance."""
    marked = 0
    for name in corpus_files():
        try:
            original = dcmread(CORPUS / name, stop_before_pixels=True)
        except Exception:  # unreadable: not this test's subject
            continue
        if str(original.get("BurnedInAnnotation", "")).upper() == "YES":
            marked += 1
            assert isinstance(deidentify(original, Profile(SALT)), HeldBack)
    if not marked:
        pytest.skip("no corpus file is marked Burned In Annotation YES")
