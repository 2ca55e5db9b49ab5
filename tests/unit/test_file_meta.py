"""The spool's file meta, encoded by hand on the hot path, is byte for byte what pydicom's
``write_file_meta_info`` writes, and a reader finds the dataset right after it."""

from __future__ import annotations

import io

import pytest
from pydicom.dataset import FileMetaDataset
from pydicom.filebase import DicomBytesIO
from pydicom.filereader import dcmread
from pydicom.filewriter import write_file_meta_info
from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, UID

from dde.dicom import part10
from dde.store.spool import IMPLEMENTATION_VERSION_NAME, encode_file_meta


def pydicoms(sop_class: str, sop_instance: str, syntax: str, aet: str | None) -> bytes:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = UID(sop_class)
    meta.MediaStorageSOPInstanceUID = UID(sop_instance)
    meta.TransferSyntaxUID = UID(syntax)
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    meta.ImplementationVersionName = IMPLEMENTATION_VERSION_NAME
    if aet:
        meta.SourceApplicationEntityTitle = aet
    buffer = DicomBytesIO()
    buffer.is_little_endian = True
    buffer.is_implicit_VR = False
    write_file_meta_info(buffer, meta, enforce_standard=True)
    return bytes(128) + b"DICM" + buffer.getvalue()


@pytest.mark.parametrize(("sop_instance", "aet"), [
    ("1.2.3.4", "TEST_SCU"),        # even UID, even AE
    ("1.2.3.45", "SCU"),            # odd lengths: padded
    ("1.2.826.0.1.3680043.8.498.1", None),
])
def test_the_hand_encoding_equals_pydicoms(sop_instance: str, aet: str | None) -> None:
    ours = encode_file_meta("1.2.840.10008.5.1.4.1.1.2", sop_instance, "1.2.840.10008.1.2.1",
                            aet)
    assert ours == pydicoms("1.2.840.10008.5.1.4.1.1.2", sop_instance, "1.2.840.10008.1.2.1",
                            aet)


def test_a_reader_finds_the_dataset_after_it() -> None:
    head = encode_file_meta("1.2.840.10008.5.1.4.1.1.2", "1.2.3", "1.2.840.10008.1.2", "AE")
    dataset = b"\x08\x00\x18\x00\x06\x00\x00\x001.2.3\x00"  # implicit VR LE
    ds = dcmread(io.BytesIO(head + dataset))
    assert ds.SOPInstanceUID == "1.2.3"
    assert part10.dataset_offset(io.BytesIO(head + dataset)) == len(head)


def test_a_uid_outside_ascii_is_refused() -> None:
    with pytest.raises(ValueError):
        encode_file_meta("1.2.840.10008.5.1.4.1.1.2", "1.2.é", "1.2.840.10008.1.2")


# -- the file meta of a Part-10 file arriving in pieces (STOW-RS parts) --------------------
SOP_CLASS, SOP_INSTANCE = "1.2.840.10008.5.1.4.1.1.2", "1.2.3.4.5.6"
EXPLICIT = "1.2.840.10008.1.2.1"
DATASET = b"\x08\x00\x18\x00UI\x0c\x001.2.3.4.5.6\x00"  # SOP Instance UID


def test_the_file_meta_is_known_once_its_last_byte_is_in() -> None:
    head = encode_file_meta(SOP_CLASS, SOP_INSTANCE, EXPLICIT, "SCU")
    whole = head + DATASET
    for cut in range(len(head) + 1):  # short of the two bytes after the meta: wait
        assert part10.read_file_meta(whole[:cut], complete=False) is None
    meta = part10.read_file_meta(whole[:len(head) + 2], complete=False)
    assert meta == part10.FileMeta(SOP_CLASS, SOP_INSTANCE, EXPLICIT, len(head))


def test_a_file_meta_without_its_group_length_is_parsed_whole() -> None:
    head = encode_file_meta(SOP_CLASS, SOP_INSTANCE, EXPLICIT)
    without = head[:132] + head[144:]  # no (0002,0000)
    assert part10.read_file_meta(without + DATASET, complete=False) is None  # waits
    meta = part10.read_file_meta(without + DATASET, complete=True)
    assert meta is not None and meta.dataset_offset == len(without)
    assert (meta.sop_instance_uid, meta.transfer_syntax_uid) == (SOP_INSTANCE, EXPLICIT)


@pytest.mark.parametrize("raw, problem", [
    (b"x" * 200, "no DICM preamble"),
    (bytes(128) + b"DICM", "ends inside"),
    (encode_file_meta(SOP_CLASS, SOP_INSTANCE, EXPLICIT), "no dataset"),
    (bytes(128) + b"DICM" + b"\x02\x00\x00\x00UL\x04\x00" + (1 << 20).to_bytes(4, "little"),
     "more than"),
])
def test_what_is_not_a_part10_file_is_said(raw: bytes, problem: str) -> None:
    with pytest.raises(part10.NotPart10, match=problem):
        part10.read_file_meta(raw, complete=True)
