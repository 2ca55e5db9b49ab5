"""Which transfer syntax the receiver accepts when a sender proposes several.

A sender may propose several transfer syntaxes in one presentation context (DCMTK's
``storescu +C``) and converts the dataset to the one accepted. The receiver prefers, like the
PACS behind it, explicit VR little endian, then implicit VR little endian, then the sender's
own order (``receiver.transfer_syntax_preference``). A syntax unknown to the router (a
private or made-up UID) is never accepted unless the preference names it: a context that
proposes only such syntaxes is rejected.
"""

from __future__ import annotations

from collections.abc import Sequence

from pydicom._uid_dict import UID_dictionary

STANDARD_ARC = "1.2.840.10008.1.2."
"""The DICOM standard's transfer syntaxes live under this arc (newer ones than pydicom's
dictionary too: JPEG XL, deflated image frames)."""

KNOWN_TRANSFER_SYNTAXES = frozenset(
    uid for uid, entry in UID_dictionary.items() if entry[1] == "Transfer Syntax")


def is_known_transfer_syntax(uid: str) -> bool:
    """A transfer syntax of the DICOM standard (pydicom's dictionary, or the standard's arc)."""
    return uid in KNOWN_TRANSFER_SYNTAXES or uid.startswith(STANDARD_ARC)


def order_transfer_syntaxes(proposed: Sequence[str], preferred: Sequence[str],
                            sender_rest: bool) -> list[str]:
    """The syntaxes of ``proposed`` the receiver accepts, best first: those named in
    ``preferred`` in that order, then (``sender_rest``) the other known ones in the sender's
    order. Empty: none is acceptable (the context is rejected)."""
    offered = list(dict.fromkeys(str(uid).strip() for uid in proposed))
    ordered = [uid for uid in preferred if uid in offered]
    if sender_rest:
        ordered += [uid for uid in offered
                    if uid not in ordered and is_known_transfer_syntax(uid)]
    return ordered
