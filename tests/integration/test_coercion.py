"""Tag coercion against real Orthancs, DCMTK's storescu sending, the real ``dde`` CLI.

The rules (applied with ``dde rules apply`` while the router runs) are the issue's example
rule with ``continue: true`` and a second rule sending the same instances as received to
another Orthanc. For a native and an RLE-compressed file from ``CT_SCANNER_2``: the storage
Orthanc holds the coerced instance (new values, OtherPatientIDs gone, every other element and
the pixel data as sent); the other Orthanc holds it as sent; the probe (the mirror) holds the
first matching rule's bytes, the coerced ones; ``dde where --json`` shows the edits, old
values hidden unless ``--show-phi``; every spool file, variants included, goes once
delivered.
"""

from __future__ import annotations

import io
import json
import subprocess
import sys
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid
from tests.support.fixtures import OrthancFactory
from tests.support.orthanc import RunningOrthanc, storescu, wait_until
from tests.support.router import (
    ROUTER_AET,
    InProcessRouter,
    endpoint_for,
    router_settings,
    start_router,
)
from tests.support.senders import write_storescu_profile
from tests.support.unitkit import TAG_SITE_RULE

pytestmark = pytest.mark.integration

RULES = "rules:\n" + TAG_SITE_RULE + """\
    continue: true
  - name: as-received
    route: [ORTHANC2]
mirror: [ORTHANC-PROBE]
"""
EDITED = {0x00080080, 0x00081010, 0x00101000}
TRAILING_PADDING = 0xFFFCFFFC
"""Data Set Trailing Padding: storescu does not send it (the plain copy has none either)."""
OTHER_ID = "DDE-SECRET-OTHER-ID"


@dataclass
class Deployment:
    router: InProcessRouter
    storage: RunningOrthanc
    plain: RunningOrthanc
    probe: RunningOrthanc


@pytest.fixture
def deployment(orthanc_factory: OrthancFactory, tmp_path: Path) -> Iterator[Deployment]:
    storage = orthanc_factory("ORTHANC1")
    plain = orthanc_factory("ORTHANC2")
    probe = orthanc_factory("ORTHANC-PROBE")
    settings = router_settings([storage], probe, endpoints=[
        endpoint_for(storage, ["storage"]), endpoint_for(plain, ["plain"]),
        endpoint_for(probe, ["probe"])])
    router = start_router(tmp_path / "home", settings)
    try:
        yield Deployment(router, storage, plain, probe)
    finally:
        router.stop()


def dde(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "dde", "--home", str(home), *args],
                          capture_output=True, text=True, timeout=60, check=False)


def prepared(name: str, folder: Path) -> Path:
    """A bundled file with its own SOP Instance UID and Other Patient IDs to remove."""
    source = get_testdata_file(name)
    assert source is not None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dataset = dcmread(source)
    dataset.SOPInstanceUID = generate_uid()
    dataset.file_meta.MediaStorageSOPInstanceUID = dataset.SOPInstanceUID
    dataset.OtherPatientIDs = OTHER_ID
    copy = folder / name
    dataset.save_as(copy)
    return copy


def stored(orthanc: RunningOrthanc, uid: str) -> Dataset:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return dcmread(io.BytesIO(orthanc.file_bytes(uid)))


def same_except(sent: Dataset, got: Dataset, edited: set[int]) -> None:
    """Every element of ``sent`` but the edited ones is in ``got`` with the same value."""
    for element in sent:
        if int(element.tag) in edited or int(element.tag) == TRAILING_PADDING:
            continue
        assert element.tag in got, f"{element.keyword or element.tag} is missing"
        assert got[element.tag].value == element.value, element.keyword or element.tag


def test_the_coerced_instance_is_stored_and_the_ledger_shows_the_edits(
        deployment: Deployment, tmp_path: Path) -> None:
    router, home = deployment.router, deployment.router.home.root
    rules = tmp_path / "rules.yaml"
    rules.write_text(RULES)
    applied = dde(home, "rules", "apply", str(rules))
    assert applied.returncode == 0, applied.stderr
    wait_until(lambda: [r.name for r in router.app.router.ruleset.rules]
               == ["tag-site", "as-received"], 10, "rules applied")

    folder = tmp_path / "sent"
    folder.mkdir()
    files = [prepared("CT_small.dcm", folder), prepared("MR_small_RLE.dcm", folder)]
    pairs = []
    for path in files:
        meta = dcmread(path, stop_before_pixels=True).file_meta
        pairs.append((str(meta.MediaStorageSOPClassUID), str(meta.TransferSyntaxUID)))
    options = write_storescu_profile(tmp_path / "profile.cfg", pairs)
    storescu(files, router.port, ROUTER_AET, *options, calling_ae="CT_SCANNER_2")
    router.wait_idle()

    for path in files:
        sent = dcmread(path)
        uid = str(sent.SOPInstanceUID)
        for orthanc in (deployment.storage, deployment.probe):  # the probe: tag-site's bytes
            coerced = stored(orthanc, uid)
            assert coerced.InstitutionName == "North Campus"
            assert coerced.StationName == "CT2"
            assert "OtherPatientIDs" not in coerced
            same_except(sent, coerced, EDITED)
            assert coerced.PixelData == sent.PixelData
            assert coerced.file_meta.TransferSyntaxUID == sent.file_meta.TransferSyntaxUID
        as_sent = stored(deployment.plain, uid)
        same_except(sent, as_sent, set())
        assert as_sent.OtherPatientIDs == OTHER_ID

        where = dde(home, "where", uid, "--json")
        assert where.returncode == 0, where.stderr
        deliveries = {d["endpoint"]: d for d in json.loads(where.stdout)["deliveries"]}
        assert deliveries["ORTHANC2"]["variant"] is None
        assert deliveries["ORTHANC2"]["edits"] == []
        for name in ("ORTHANC1", "ORTHANC-PROBE"):
            assert deliveries[name]["variant"] == "tag-site"
            edits = {e["keyword"]: e for e in deliveries[name]["edits"]}
            assert edits["InstitutionName"]["new"] == "North Campus"
            assert edits["StationName"]["new"] == "CT2"
            assert edits["OtherPatientIDs"] == {"tag": "(0010,1000)",
                                                "keyword": "OtherPatientIDs",
                                                "action": "remove", "old": "(hidden)",
                                                "new": None}
        shown = dde(home, "where", uid, "--json", "--show-phi")
        phi = {e["keyword"]: e for d in json.loads(shown.stdout)["deliveries"]
               for e in d["edits"]}
        assert phi["OtherPatientIDs"]["old"] == OTHER_ID
        text = dde(home, "where", uid)
        assert "edited by rule tag-site" in text.stdout and OTHER_ID not in text.stdout

    wait_until(lambda: not router.ledger.spool_index.spool_paths_in_use(), 20,
               "every spool file released")
    uids = [bytes(str(dcmread(path).SOPInstanceUID), "ascii") for path in files]
    holding = [p for p in (home / "spool").rglob("*") if p.is_file()
               and any(uid in p.read_bytes() for uid in uids)]  # prepared ones are empty
    assert holding == [], "spool files (originals or variants) left after delivery"
