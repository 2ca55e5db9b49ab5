"""Senders for interoperability tests: DCMTK's storescu with an explicit proposal profile,
and a raw C-STORE that ships a file's dataset bytes exactly as they are.

DCMTK 3.6.7's storescu has no "propose everything" switch (``+xa`` came later): a file whose
SOP class or transfer syntax is not in its built-in proposal is never sent. An association
profile (``-xf FILE PROFILE``) that proposes one presentation context per (SOP class,
transfer syntax) pair of the files lets storescu send every file in its own transfer syntax,
without converting it.

storescu refuses locally to send what it cannot read (a truncated element, a transfer
syntax newer than DCMTK, a dataset without SOP Class/Instance UID): the router then never
sees it. ``raw_c_store`` sends such bytes anyway (pynetdicom's chunked send streams the file
after its meta and never parses it), so that the router's own checks are what answers.
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydicom.dataset import FileMetaDataset
from pydicom.filebase import DicomBytesIO
from pydicom.filereader import read_file_meta_info
from pydicom.filewriter import write_file_meta_info
from pydicom.uid import UID
from pynetdicom import AE, _config, build_context

from tests.support.orthanc import STORESCU

# DCMTK refuses an association that proposes more presentation contexts than this.
MAX_CONTEXTS = 128
PROFILE = "AllPairs"

_RESPONSE = re.compile(r"Received Store Response \(([^)]*)\)")


def write_storescu_profile(path: Path, pairs: Iterable[tuple[str, str]]) -> list[str]:
    """Write a DCMTK association profile proposing each (SOP class, transfer syntax) pair as
    its own presentation context; return the storescu options that use it."""
    unique = list(dict.fromkeys(pairs))
    if len(unique) > MAX_CONTEXTS:
        raise ValueError(f"{len(unique)} pairs; storescu proposes at most {MAX_CONTEXTS}")
    syntaxes = list(dict.fromkeys(ts for _, ts in unique))
    lines = ["[[TransferSyntaxes]]"]
    for index, syntax in enumerate(syntaxes):
        lines += [f"[TS{index}]", f"TransferSyntax1 = {syntax}"]
    lines += ["", "[[PresentationContexts]]", "[Contexts]"]
    for index, (sop_class, syntax) in enumerate(unique, start=1):
        lines.append(f"PresentationContext{index} = {sop_class}\\TS{syntaxes.index(syntax)}")
    lines += ["", "[[Profiles]]", f"[{PROFILE}]", "PresentationContexts = Contexts", ""]
    path.write_text("\n".join(lines))
    return ["-xf", str(path), PROFILE]


def file_pair(path: Path) -> tuple[str, str]:
    """(SOP class, transfer syntax) from a Part-10 file's meta (KeyError if absent)."""
    meta = read_file_meta_info(path)
    return str(meta["MediaStorageSOPClassUID"].value), str(meta["TransferSyntaxUID"].value)


def run_storescu(files: Sequence[Path | str], port: int, called_ae: str, *options: str,
                 timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
    """Run DCMTK's storescu verbosely and return what happened, whatever its exit status."""
    argv = [STORESCU, "-v", *options, "-aet", "TEST_SCU", "-aec", called_ae, "127.0.0.1",
            str(port), *(str(f) for f in files)]
    return subprocess.run(argv, env={**os.environ, "TCP_NODELAY": "1"}, capture_output=True,
                          text=True, timeout=timeout, check=False)


def store_responses(result: subprocess.CompletedProcess[str]) -> list[str]:
    """The C-STORE-RSP statuses storescu -v printed, in order ("Success", "Error: …")."""
    return _RESPONSE.findall(result.stdout + result.stderr)


@dataclass(frozen=True)
class RawOutcome:
    sent: bool
    status: int | None
    detail: str


def raw_c_store(path: Path, port: int, called_ae: str, sop_class: str, sop_instance: str,
                transfer_syntax: str, *, dataset_offset: int | None = None,
                scratch: Path | None = None) -> RawOutcome:
    """C-STORE the bytes of ``path`` after its file meta (or from ``dataset_offset``) as they
    are, in ``transfer_syntax``, for the given SOP class and instance.

    When the file lacks a usable meta, give ``dataset_offset`` and a ``scratch`` folder: the
    bytes are wrapped behind a new meta there first.
    """
    if dataset_offset is not None:
        if scratch is None:
            raise ValueError("dataset_offset needs a scratch folder")
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = UID(sop_class)
        meta.MediaStorageSOPInstanceUID = UID(sop_instance)
        meta.TransferSyntaxUID = UID(transfer_syntax)
        buffer = DicomBytesIO()
        buffer.is_little_endian, buffer.is_implicit_VR = True, False
        write_file_meta_info(buffer, meta, enforce_standard=True)
        scratch.mkdir(parents=True, exist_ok=True)
        wrapped = scratch / f"{path.name}.wrapped"
        wrapped.write_bytes(b"\0" * 128 + b"DICM" + buffer.getvalue()
                            + path.read_bytes()[dataset_offset:])
        path = wrapped
    previous = _config.STORE_SEND_CHUNKED_DATASET
    _config.STORE_SEND_CHUNKED_DATASET = True
    ae = AE(ae_title="RAW_SCU")
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 30
    try:
        assoc = ae.associate("127.0.0.1", port, ae_title=called_ae,
                             contexts=[build_context(sop_class, [transfer_syntax])])
        if not assoc.is_established:
            return RawOutcome(False, None, "association not established")
        try:
            if not assoc.accepted_contexts:
                return RawOutcome(False, None, "presentation context rejected")
            response = assoc.send_c_store(path)
        finally:
            assoc.release()
    finally:
        _config.STORE_SEND_CHUNKED_DATASET = previous
    status = getattr(response, "Status", None)
    if status is None:
        return RawOutcome(True, None, "no response (association aborted)")
    return RawOutcome(True, int(status), f"0x{int(status):04X}")


def keep_responses_for_the_waiting_call(assoc: Any) -> None:
    """On a pynetdicom association used as a test client: let only ``send_c_store``'s
    blocking wait take C-STORE responses off its DIMSE queue. pynetdicom 3.0's reactor can
    otherwise take the response itself ("Received unexpected C-STORE service message") and
    the call waits out its whole DIMSE timeout."""
    take = assoc.dimse.get_msg

    def get_msg(block: bool = False) -> tuple[Any, Any]:
        return take(block=True) if block else (None, None)

    assoc.dimse.get_msg = get_msg


def read_pdu(sock: socket.socket) -> bytes:
    """What a raw-socket test reads as one PDU: its 6-byte header and as much of the body as
    the header announces (less when the peer closes first)."""
    pdu = bytearray()
    while len(pdu) < 6 or len(pdu) < 6 + int.from_bytes(pdu[2:6], "big"):
        data = sock.recv(65536)
        if not data:
            break
        pdu += data
    return bytes(pdu)
