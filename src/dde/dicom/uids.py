"""Readable names of DICOM UIDs for logs and messages, and the router's implementation
identity (announced in every association it requests or accepts)."""

from __future__ import annotations

from typing import Final

from pydicom.uid import UID

IMPLEMENTATION_CLASS_UID: Final = "2.25.186154305853371911618702539440383766891"
"""The router's implementation class UID (a UUID-derived UID, fixed for the product)."""
IMPLEMENTATION_VERSION_NAME: Final = "DDE_010"

APPLICATION_CONTEXT_NAME: Final = "1.2.840.10008.3.1.1.1"
"""The DICOM application context (PS3.7 Annex A)."""


def uid_name(uid: str) -> str:
    """pydicom's name of a UID (\"CT Image Storage\"), or the UID itself when unknown."""
    name = UID(uid).name
    return name if name and name != uid else uid
