"""De-identified corpus files stored by a real Orthanc: every file Orthanc accepts as it is,
it accepts de-identified, and what it then holds (its own file meta, the sent dataset)
matches PS3.15 Table E.1-1 for every attribute of the original.

The router's rule action (sending through the ingest path) is built on this engine; this
test shows what a PACS gets from it. Runs when the public corpus is beside the repository.
"""

from __future__ import annotations

import csv
from io import BytesIO
from pathlib import Path

import httpx
import pytest
from pydicom import dcmread
from tests.support.deid_check import TableCheck
from tests.support.fixtures import OrthancFactory

from dde.dicom.deid_table import DeidOption, load_table
from dde.dicom.deidentify import Deidentified, Profile, deidentify, encode_part10

CORPUS = Path(__file__).resolve().parents[2].parent / "shared" / "corpus" / "public"
if not (CORPUS / "manifest.csv").is_file():
    pytest.skip(f"no public corpus at {CORPUS}", allow_module_level=True)

pytestmark = [pytest.mark.integration, pytest.mark.slow]

PROFILE = Profile(b"orthanc-test-salt",
                  frozenset({DeidOption.RETAIN_LONGITUDINAL_MODIFIED_DATES}),
                  allow_burned_in=True)


def upload(client: httpx.Client, data: bytes) -> bool:
    """POST /instances: True when Orthanc stored it."""
    response = client.post("/instances", content=data,
                           headers={"Content-Type": "application/dicom"})
    return response.status_code == 200


def test_orthanc_stores_what_the_table_says(orthanc_factory: OrthancFactory) -> None:
    orthanc = orthanc_factory("ORTHANC1")
    with open(CORPUS / "manifest.csv", newline="") as manifest:
        names = [row["file"] for row in csv.DictReader(manifest)]
    checked, problems = 0, {}
    with httpx.Client(base_url=orthanc.url, timeout=30.0, trust_env=False) as client:
        for name in names:
            raw = (CORPUS / name).read_bytes()
            try:
                original = dcmread(BytesIO(raw))
            except Exception:  # unreadable: refused at receive time, not this test's subject
                continue
            if not all(original.get("file_meta", {}).get(k) for k in (
                    "MediaStorageSOPClassUID", "MediaStorageSOPInstanceUID")) or \
                    not upload(client, raw):
                continue  # what Orthanc refuses as it is says nothing about the engine
            # Several corpus files share a SOP Instance UID (one image in several syntaxes),
            # and so do their de-identified copies: each is removed once checked.
            orthanc.delete_instance(str(original.SOPInstanceUID))
            result = deidentify(original, PROFILE)
            assert isinstance(result, Deidentified), f"{name}: {result}"
            assert upload(client, encode_part10(result.dataset)), f"{name}: refused"
            uid = str(result.dataset.SOPInstanceUID)
            stored = dcmread(BytesIO(orthanc.file_bytes(uid)))
            orthanc.delete_instance(uid)
            check = TableCheck(load_table(), PROFILE, str(original.get("PatientID", ""))).run(
                original, stored)
            checked += 1
            if check.problems:
                problems[name] = check.problems[:5]
    assert problems == {}
    assert checked >= 30
