"""``dde generate`` (:mod:`dde.synthetic`): every study its own patient and accession."""

from __future__ import annotations

from pathlib import Path

from click.testing import CliRunner
from pydicom import dcmread

from dde.cli import main
from dde.synthetic import write_studies


def identities(files: list[Path]) -> set[tuple[str, str, str, str]]:
    found = set()
    for path in files:
        ds = dcmread(path, stop_before_pixels=True)
        found.add((str(ds.StudyInstanceUID), str(ds.PatientID), str(ds.PatientName),
                   str(ds.AccessionNumber)))
    return found


def test_each_study_has_its_own_patient_and_accession(tmp_path: Path) -> None:
    written = write_studies(tmp_path, 4, 3, rows=8, columns=8)

    per_study = {uid: identities(files) for uid, files in written.items()}
    assert all(len(found) == 1 for found in per_study.values())  # one identity per study
    rows = [next(iter(found)) for found in per_study.values()]
    for column in (1, 2, 3):  # PatientID, PatientName, AccessionNumber
        assert len({row[column] for row in rows}) == 4, rows
    assert all(len(row[3]) <= 16 for row in rows)  # AccessionNumber is an SH


def test_two_runs_do_not_share_patients(tmp_path: Path) -> None:
    first = write_studies(tmp_path / "a", 2, 1, rows=8, columns=8)
    second = write_studies(tmp_path / "b", 2, 1, rows=8, columns=8)

    ids = [row[1] for files in [*first.values(), *second.values()]
           for row in identities(files)]
    assert len(set(ids)) == 4, ids


def test_a_given_patient_id_is_kept_for_every_study(tmp_path: Path) -> None:
    written = write_studies(tmp_path, 2, 1, rows=8, columns=8, patient_id="FIXED-1")

    assert {row[1] for files in written.values() for row in identities(files)} == {"FIXED-1"}


def test_dde_generate_writes_distinct_patients(tmp_path: Path) -> None:
    folder = tmp_path / "dcm_files"
    result = CliRunner().invoke(main, ["--home", str(tmp_path / "home"), "generate",
                                       str(folder), "--studies", "3", "--instances", "2",
                                       "--size", "8"])

    assert result.exit_code == 0, result.output
    rows = identities(sorted(folder.glob("*.dcm")))
    assert len(rows) == 3
    assert len({row[1] for row in rows}) == 3 and len({row[3] for row in rows}) == 3
