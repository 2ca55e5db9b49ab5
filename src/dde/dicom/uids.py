"""Readable names of DICOM UIDs for logs and messages."""

from __future__ import annotations

from pydicom.uid import UID


def uid_name(uid: str) -> str:
    """pydicom's name of a UID (\"CT Image Storage\"), or the UID itself when unknown."""
    name = UID(uid).name
    return name if name and name != uid else uid
