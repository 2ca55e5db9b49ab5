"""A scripted STOW-RS origin server for unit tests (httpx's MockTransport, no network), and
spooled instances to send to it."""

from __future__ import annotations

import io
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pydicom

from dde.endpoints.sending import Shipment
from dde.store.spool import Spool, encode_file_meta
from tests.support.unitkit import generated

Answer = Callable[[httpx.Request, list[str]], httpx.Response]
"""``(request, SOP Instance UIDs of its parts) → response``."""


def parts_of(request: httpx.Request, body: bytes) -> list[bytes]:
    """The parts of a ``multipart/related`` body, split on the request's boundary."""
    boundary = request.headers["Content-Type"].split("boundary=")[1].strip('"').encode()
    chunks = body.split(b"--" + boundary)
    parts = []
    for chunk in chunks[1:]:
        if chunk.startswith(b"--"):
            break
        headers, _, content = chunk.partition(b"\r\n\r\n")
        assert b"Content-Type: application/dicom" in headers
        parts.append(content[:-2] if content.endswith(b"\r\n") else content)
    return parts


def sop_uid(part: bytes) -> str:
    return str(pydicom.dcmread(io.BytesIO(part)).SOPInstanceUID)


def stow_answer(stored: list[str], failed: dict[str, int] | None = None) -> dict[str, Any]:
    """A STOW-RS answer in DICOM JSON, shaped as Orthanc's DICOMweb plugin writes it."""
    def reference(uid: str) -> dict[str, Any]:
        return {"00081150": {"vr": "UI", "Value": ["1.2.840.10008.5.1.4.1.1.2"]},
                "00081155": {"vr": "UI", "Value": [uid]}}

    answer: dict[str, Any] = {"00081198": {"vr": "SQ"}, "00081199": {"vr": "SQ"}}
    if stored:
        answer["00081199"]["Value"] = [reference(uid) for uid in stored]
    if failed:
        answer["00081198"]["Value"] = [
            {**reference(uid), "00081197": {"vr": "US", "Value": [reason]}}
            for uid, reason in failed.items()]
    return answer


def store_everything(request: httpx.Request, uids: list[str]) -> httpx.Response:
    return httpx.Response(200, json=stow_answer(uids),
                          headers={"Content-Type": "application/dicom+json"})


@dataclass
class StowServer:
    """Records each request (headers, whether its body was streamed, the parts) and answers
    with ``answer``."""

    answer: Answer = store_everything
    requests: list[httpx.Request] = field(default_factory=list)
    parts: list[list[bytes]] = field(default_factory=list)
    streamed: list[bool] = field(default_factory=list)

    def __call__(self, request: httpx.Request) -> httpx.Response:
        # MockTransport reads the body before the handler sees it: a body sent from an
        # iterator shows in its headers (chunked, no length known in advance).
        self.streamed.append(request.headers.get("Transfer-Encoding") == "chunked"
                             and "Content-Length" not in request.headers)
        body = request.read()
        parts = parts_of(request, body) if request.method == "POST" else []
        self.requests.append(request)
        self.parts.append(parts)
        return self.answer(request, [sop_uid(p) for p in parts])

    @property
    def transport(self) -> httpx.MockTransport:
        return httpx.MockTransport(self)

    def request_uids(self) -> list[list[str]]:
        return [[sop_uid(p) for p in parts] for parts in self.parts]


def spooled_shipment(spool: Spool, study_uid: str | None = None, rows: int = 8) -> Shipment:
    """A generated instance written to ``spool``, as the worker would hand it over."""
    instance = generated(study_uid, rows=rows, columns=rows)
    written = spool.write(encode_file_meta(instance.sop_class_uid, instance.sop_instance_uid,
                                           instance.transfer_syntax_uid), instance.dataset)
    return Shipment(spool.path_of(written.relative_path), instance.sop_class_uid,
                    instance.sop_instance_uid, instance.transfer_syntax_uid,
                    instance.study_instance_uid)


def write_secret(folder: Path, name: str, value: str) -> str:
    path = folder / name
    path.write_text(value + "\n")
    path.chmod(0o600)
    return str(path)
