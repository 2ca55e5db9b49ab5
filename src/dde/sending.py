"""``dde send``: C-STORE files and folders to a DICOM node, file by file, with a result each."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from pydicom.errors import InvalidDicomError
from pydicom.filereader import read_file_meta_info

from dde.config import DeliverySettings, EndpointSettings
from dde.endpoints.dicom_sender import DicomSender
from dde.endpoints.sending import SendStatus, Shipment

GIVE_UP_AFTER_UNREACHABLE = 3


@dataclass(frozen=True)
class FileResult:
    path: Path
    ok: bool
    detail: str


def collect_files(paths: Iterable[Path]) -> Iterator[Path]:
    for path in paths:
        if path.is_dir():
            for root, dirs, files in os.walk(path):
                dirs.sort()
                for name in sorted(files):
                    yield Path(root) / name
        else:
            yield path


def shipment_for(path: Path) -> Shipment | str:
    """The shipment for a Part-10 file, or why it cannot be sent as is."""
    try:
        meta = read_file_meta_info(path)
    except (InvalidDicomError, OSError, ValueError, EOFError) as exc:
        return f"not a DICOM Part-10 file ({type(exc).__name__})"
    try:
        return Shipment(path, str(meta.MediaStorageSOPClassUID),
                        str(meta.MediaStorageSOPInstanceUID), str(meta.TransferSyntaxUID))
    except AttributeError:
        return "the file meta header lacks SOP class, SOP instance or transfer syntax"


def send_files(files: list[Path], *, host: str, port: int, called_aet: str, calling_aet: str,
               timeout: float = 30.0,
               progress: Callable[[FileResult], None] | None = None) -> list[FileResult]:
    endpoint = EndpointSettings(name="target", aet=called_aet, host=host, port=port)
    sender = DicomSender(endpoint, DeliverySettings(connect_timeout=timeout,
                                                    dimse_timeout=timeout), calling_aet)
    shipments: dict[Path, Shipment | str] = {path: shipment_for(path) for path in files}
    sender.prepare([s for s in shipments.values() if isinstance(s, Shipment)])
    results: list[FileResult] = []
    unreachable = 0
    try:
        for path in files:
            shipment = shipments[path]
            if isinstance(shipment, str):
                result = FileResult(path, False, shipment)
            elif unreachable >= GIVE_UP_AFTER_UNREACHABLE:
                result = FileResult(path, False, "not sent: the destination is unreachable")
            else:
                outcome = sender.send(shipment)
                if outcome.status is SendStatus.UNREACHABLE:
                    unreachable += 1
                else:
                    unreachable = 0
                result = FileResult(path, outcome.status is SendStatus.DELIVERED,
                                    outcome.detail)
            results.append(result)
            if progress is not None:
                progress(result)
    finally:
        sender.release()
    return results
