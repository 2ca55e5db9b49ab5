"""The seed's command line, end to end, against real Orthanc and DCMTK's storescu."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydicom import dcmread
from tests.support.datagen import write_series, write_studies
from tests.support.fixtures import ReferenceStack
from tests.support.orthanc import storescu

pytestmark = pytest.mark.integration


def _dataset_bytes(part10: bytes) -> bytes:
    """The encoded dataset after the file meta group (Orthanc writes its own meta)."""
    import io

    from pydicom.filereader import _read_file_meta_info, read_preamble

    stream = io.BytesIO(part10)
    read_preamble(stream, False)
    _read_file_meta_info(stream)
    return part10[stream.tell():]


def test_seed_command_delivers_each_instance_to_one_storage_and_the_probe(
    reference_stack: ReferenceStack, tmp_path: Path
) -> None:
    files = write_series(tmp_path / "dcm_files", 20, rows=128, columns=128)
    storescu(files, reference_stack.router.port, "DYNAMIC_DICOM_MW", "-v")

    reference_stack.router.wait_idle()
    sent = {str(dcmread(f, stop_before_pixels=True).SOPInstanceUID): f for f in files}
    reference_stack.probe.wait_for_sop_instance_uids(sent)
    in_1 = reference_stack.storage1.sop_instance_uids()
    in_2 = reference_stack.storage2.sop_instance_uids()
    assert in_1 | in_2 == set(sent)
    assert not in_1 & in_2, "an instance went to both storages"
    # one study: it must not be split
    assert not in_1 or not in_2

    holder = reference_stack.storage1 if in_1 else reference_stack.storage2
    for uid, path in sent.items():
        original = _dataset_bytes(path.read_bytes())
        assert _dataset_bytes(holder.file_bytes(uid)) == original
        assert _dataset_bytes(reference_stack.probe.file_bytes(uid)) == original


def test_eight_studies_spread_over_both_storages_without_splitting_any(
    reference_stack: ReferenceStack, tmp_path: Path
) -> None:
    studies = write_studies(tmp_path / "studies", 8, 5)
    files = [f for paths in studies.values() for f in paths]
    storescu(files, reference_stack.router.port, "DYNAMIC_DICOM_MW")
    reference_stack.router.wait_idle()

    def study_of(path: Path) -> str:
        return str(dcmread(path, stop_before_pixels=True).SOPInstanceUID)

    holders: dict[str, set[str]] = {}
    in_1 = reference_stack.storage1.sop_instance_uids()
    in_2 = reference_stack.storage2.sop_instance_uids()
    for study, paths in studies.items():
        uids = {study_of(p) for p in paths}
        places = set()
        if uids & in_1:
            places.add("ORTHANC1")
        if uids & in_2:
            places.add("ORTHANC2")
        assert len(places) == 1, f"study split over {places}"
        assert uids <= (in_1 | in_2)
        holders[study] = places
    used = set().union(*holders.values())
    assert used == {"ORTHANC1", "ORTHANC2"}, "least-loaded routing used only one storage"
    assert reference_stack.probe.count() == 40
    # the pins are persisted in the ledger
    assert reference_stack.router.ledger.diagnostics.count("study_pins") == 8
