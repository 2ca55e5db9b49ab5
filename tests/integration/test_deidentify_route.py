"""A de-identified route against real Orthancs, DCMTK's storescu sending, the real ``dde``
CLI applying the rules.

The issue's research route: a rule with ``deidentify`` (the salt from the state folder's
``secrets/research``) and ``continue: true`` to a research Orthanc, then the clinical rule
to the storage group. ``rules apply`` refuses the rules while the secret is missing (naming
it). Three instances of one study are sent: the clinical Orthanc holds all three as sent;
the research Orthanc holds the two without burned-in annotation, de-identified (Patient
Identity Removed, names emptied, new UIDs that keep them one study, every element as
PS3.15 Table E.1-1 says), and not the one marked Burned In Annotation YES: its delivery
there is failed with the reason, as ``dde where --json`` shows.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.data import get_testdata_file
from pydicom.uid import generate_uid
from tests.integration.test_coercion import stored
from tests.support.deid_check import TableCheck
from tests.support.fixtures import OrthancFactory
from tests.support.orthanc import storescu, wait_until
from tests.support.router import ROUTER_AET, endpoint_for, router_settings, start_router

from dde.dicom.deid_table import load_table
from dde.dicom.deidentify import uid_for
from dde.routing.deidentify_action import DeidentifyAction, parse_deidentify

pytestmark = pytest.mark.integration

ACTION = {"profile": "basic", "salt_secret": "research",
          "options": ["retain-longitudinal-modified-dates", "retain-patient-characteristics"]}
RULES = f"""\
rules:
  - name: research-copy
    deidentify: {json.dumps(ACTION)}
    route: [RESEARCH]
    continue: true
  - name: clinical
    route: {{group: storage, strategy: least-loaded}}
"""
SALT = "research-salt-for-the-integration-test"


def dde(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "dde", "--home", str(home), *args],
                          capture_output=True, text=True, timeout=60, check=False,
                          env={k: v for k, v in os.environ.items()
                               if not k.startswith("DDE_SECRET_")})


def study_files(folder: Path) -> list[Path]:
    """Three instances of one new study (two series); the last is burned in."""
    source = get_testdata_file("CT_small.dcm")
    assert source is not None
    study, series = generate_uid(), [generate_uid(), generate_uid()]
    files = []
    for number in range(3):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            dataset = dcmread(source)
        dataset.StudyInstanceUID = study
        dataset.SeriesInstanceUID = series[number % 2]
        dataset.SOPInstanceUID = generate_uid()
        dataset.file_meta.MediaStorageSOPInstanceUID = dataset.SOPInstanceUID
        dataset.PatientName = "Doe^Jane"
        dataset.InstanceNumber = number + 1
        if number == 2:
            dataset.BurnedInAnnotation = "YES"
        path = folder / f"{number}.dcm"
        dataset.save_as(path)
        files.append(path)
    return files


def test_a_research_route_gets_the_study_deidentified(orthanc_factory: OrthancFactory,
                                                      tmp_path: Path) -> None:
    clinical = orthanc_factory("CLINICAL")
    research = orthanc_factory("RESEARCH")
    settings = router_settings([clinical], None, endpoints=[
        endpoint_for(clinical, ["storage"]), endpoint_for(research, ["research"])])
    router = start_router(tmp_path / "home", settings)
    try:
        home = router.home.root
        rules = tmp_path / "rules.yaml"
        rules.write_text(RULES)
        refused = dde(home, "rules", "apply", str(rules))
        assert refused.returncode != 0
        assert "research" in refused.stderr and "DDE_SECRET_RESEARCH" in refused.stderr
        (home / "secrets").mkdir()
        (home / "secrets" / "research").write_text(SALT)
        applied = dde(home, "rules", "apply", str(rules))
        assert applied.returncode == 0, applied.stderr
        assert SALT not in applied.stdout + applied.stderr
        wait_until(lambda: [r.name for r in router.app.router.ruleset.rules]
                   == ["research-copy", "clinical"], 10, "rules applied")

        folder = tmp_path / "sent"
        folder.mkdir()
        files = study_files(folder)
        storescu(files, router.port, ROUTER_AET)
        router.wait_idle()

        sent = [dcmread(path) for path in files]
        salt = SALT.encode()
        clinical.wait_for_sop_instance_uids([str(d.SOPInstanceUID) for d in sent])
        for original in sent:  # the clinical PACS: as sent
            assert stored(clinical, str(original.SOPInstanceUID)).PatientName == "Doe^Jane"

        action = parse_deidentify(ACTION)
        assert isinstance(action, DeidentifyAction)
        profile = action.profile(salt)
        new_uids = [uid_for(str(d.SOPInstanceUID), salt) for d in sent]
        assert research.sop_instance_uids() == set(new_uids[:2])
        for original, uid in zip(sent[:2], new_uids[:2], strict=True):
            copy = stored(research, uid)
            assert copy.PatientIdentityRemoved == "YES"
            assert not copy.PatientName
            assert copy.StudyInstanceUID == uid_for(str(original.StudyInstanceUID), salt)
            assert copy.SeriesInstanceUID == uid_for(str(original.SeriesInstanceUID), salt)
            check = TableCheck(load_table(), profile, str(original.get("PatientID", "")))
            assert check.run(original, copy).problems == []
            assert sum(check.seen.values()) > 10

        where = dde(home, "where", str(sent[0].SOPInstanceUID), "--json")
        assert where.returncode == 0, where.stderr
        shown = {d["endpoint"]: d for d in json.loads(where.stdout)["deliveries"]}
        assert shown["RESEARCH"]["state"] == "delivered"
        assert shown["RESEARCH"]["deidentified"].startswith("profile basic, options")
        assert shown["RESEARCH"]["sent_sop_instance_uid"] == new_uids[0]
        assert "Doe" not in where.stdout

        held = dde(home, "where", str(sent[2].SOPInstanceUID), "--json")
        shown = {d["endpoint"]: d for d in json.loads(held.stdout)["deliveries"]}
        assert shown["CLINICAL"]["state"] == "delivered"
        assert shown["RESEARCH"]["state"] == "failed"
        assert "burned-in annotation" in shown["RESEARCH"]["last_error"]

        explained = dde(home, "route", "explain", str(files[2]), "--json")
        assert explained.returncode == 0, explained.stderr
        (plan,) = json.loads(explained.stdout)["deidentify"]
        assert plan["destinations"] == ["RESEARCH"] and "burned-in" in plan["held_back"]
    finally:
        router.stop()
