"""Synthetic DICOM data: CT/MR series with generated pixels and no real patient.

Used by `dde generate` (something to send on a fresh install), the tests and the benchmarks.
"""

from __future__ import annotations

import os
import secrets
import struct
from pathlib import Path

from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (
    UID,
    CTImageStorage,
    ExplicitVRLittleEndian,
    MRImageStorage,
    MultiFrameGrayscaleWordSecondaryCaptureImageStorage,
    generate_uid,
)

_SOP_CLASSES = {"CT": CTImageStorage, "MR": MRImageStorage}


def make_instance(*, study_uid: str, series_uid: str, number: int, rows: int = 64,
                  columns: int = 64, modality: str = "CT", patient_id: str = "DDE-TEST-1",
                  patient_name: str = "Test^Patient", accession: str = "ACC1") -> Dataset:
    ds = make_header(study_uid=study_uid, series_uid=series_uid, number=number, rows=rows,
                     columns=columns, sop_class_uid=_SOP_CLASSES[modality], modality=modality,
                     patient_id=patient_id, patient_name=patient_name, accession=accession)
    ds.PixelData = os.urandom(rows * columns * 2)
    return ds


def make_header(*, study_uid: str, series_uid: str, number: int, rows: int, columns: int,
                sop_class_uid: str, modality: str, patient_id: str, patient_name: str,
                accession: str) -> Dataset:
    """An instance of 16-bit monochrome pixels, everything but its pixel data."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = UID(sop_class_uid)
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = series_uid
    ds.PatientID = patient_id
    ds.PatientName = patient_name
    ds.AccessionNumber = accession
    ds.Modality = modality
    ds.StudyDate = "20260101"
    ds.SeriesNumber = 1
    ds.InstanceNumber = number
    ds.Rows = rows
    ds.Columns = columns
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = 16
    ds.BitsStored = 12
    ds.HighBit = 11
    ds.PixelRepresentation = 0
    return ds


def write_series(folder: Path, count: int, *, study_uid: str | None = None, rows: int = 64,
                 columns: int = 64, modality: str = "CT", prefix: str = "img",
                 patient_id: str = "DDE-TEST-1", patient_name: str = "Test^Patient",
                 accession: str = "ACC1") -> list[Path]:
    """Write ``count`` instances of one series (of one study) as Part-10 files."""
    folder.mkdir(parents=True, exist_ok=True)
    study_uid = study_uid or generate_uid()
    series_uid = generate_uid()
    paths = []
    for number in range(1, count + 1):
        ds = make_instance(study_uid=study_uid, series_uid=series_uid, number=number,
                           rows=rows, columns=columns, modality=modality,
                           patient_id=patient_id, patient_name=patient_name,
                           accession=accession)
        path = folder / f"{prefix}{number:05d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def study_identity(run: str, index: int) -> dict[str, str]:
    """The patient and accession of study ``index`` of a run: distinct per study, and per
    run (``run`` is a few random letters), so that studies generated twice never merge."""
    number = f"{run}{index + 1:02d}"
    return {"patient_id": f"DDE-TEST-{number}", "patient_name": f"Test^Patient{number}",
            "accession": f"ACC{number}"}


def write_studies(folder: Path, studies: int, per_study: int,
                  **kwargs: object) -> dict[str, list[Path]]:
    """Write several studies, each of its own patient (PatientID, PatientName) and
    AccessionNumber; return {StudyInstanceUID: files}. A ``patient_id`` given in
    ``kwargs`` is used for every study."""
    result: dict[str, list[Path]] = {}
    run = secrets.token_hex(3).upper()
    for index in range(studies):
        uid = generate_uid()
        fields: dict[str, object] = {**study_identity(run, index), **kwargs}
        result[uid] = write_series(folder, per_study, study_uid=uid, prefix=f"s{index:02d}_",
                                   **fields)  # type: ignore[arg-type]
    return result


FRAME_SIDE = 512
FRAME_BYTES = FRAME_SIDE * FRAME_SIDE * 2
_CHUNK_BYTES = 4 << 20


def write_large_instance(path: Path, megabytes: int) -> int:
    """Write one multi-frame instance of about ``megabytes`` MiB (512×512 16-bit frames)
    without holding its pixels in memory: the header with pydicom, then the Pixel Data
    element header and the pixels in 4 MiB chunks. Returns the number of frames."""
    frames = max(1, round(megabytes * 2**20 / FRAME_BYTES))
    header = make_header(study_uid=generate_uid(), series_uid=generate_uid(), number=1,
                         rows=FRAME_SIDE, columns=FRAME_SIDE,
                         sop_class_uid=MultiFrameGrayscaleWordSecondaryCaptureImageStorage,
                         modality="OT", patient_id="DDE-TEST-LARGE", patient_name="Large^Test",
                         accession="LARGE1")
    header.ConversionType = "WSD"
    header.NumberOfFrames = frames
    header.save_as(path, enforce_file_format=True)
    length = frames * FRAME_BYTES
    chunk = os.urandom(_CHUNK_BYTES)
    with path.open("ab") as out:
        out.write(struct.pack("<HH2sHI", 0x7FE0, 0x0010, b"OW", 0, length))
        remaining = length
        while remaining:
            part = min(remaining, _CHUNK_BYTES)
            out.write(chunk[:part])
            remaining -= part
    return frames
