"""Which Orthancs the reference deployment runs, from ``dde.yaml``.

Each ``stack.orthancs`` entry names an endpoint: the Orthanc listens with that endpoint's
AE title and DICOM port, and serves HTTP on the port of its ``url``. The ports are written
once, in ``endpoints``. An entry of the older form (``name``, ``aet``, ``dicom_port``,
``http_port``) still works: its values must agree with the endpoint of that name, or stand
alone when there is none.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from dde.config import EndpointSettings, Settings, StackOrthanc
from dde.stack.errors import StackError


@dataclass(frozen=True)
class OrthancSpec:
    """One Orthanc of the stack, resolved: its name, AE title, ports, config file."""

    name: str
    aet: str
    dicom_port: int
    http_port: int
    config_file: str
    from_endpoint: bool = True
    """Described by an endpoint (else by an old-form ``stack.orthancs`` entry alone)."""
    router: tuple[str, int] | None = None
    """The router's AE title and DICOM port: listed in the Orthanc's ``DicomModalities``,
    so that it sends its storage commitment reports to the router."""

    def port_setting(self, port: int) -> str:
        """Where in dde.yaml ``port`` is configured, for error messages."""
        if self.from_endpoint:
            if port == self.dicom_port:
                return f"endpoints ({self.name}) port"
            return f"endpoints ({self.name}) url"
        key = "dicom_port" if port == self.dicom_port else "http_port"
        return f"stack.orthancs ({self.name}) {key}"


def stack_orthancs(settings: Settings, config_file: Path) -> list[OrthancSpec]:
    """The stack's Orthancs, in order; StackError (naming ``config_file``) when an entry
    names no endpoint, its endpoint has no url with a port, or an old-form entry disagrees
    with its endpoint."""
    router = (settings.receiver.ae_title, settings.receiver.port)
    return [dataclasses.replace(_resolve(entry, settings.endpoint(entry.endpoint), config_file),
                                router=router)
            for entry in settings.stack.orthancs]


def _resolve(entry: StackOrthanc, endpoint: EndpointSettings | None,
             config_file: Path) -> OrthancSpec:
    old = {"aet": entry.aet, "dicom_port": entry.dicom_port, "http_port": entry.http_port}
    where = f"{config_file}: stack.orthancs entry {entry.endpoint}"
    if endpoint is None:
        if entry.aet is not None and entry.dicom_port is not None \
                and entry.http_port is not None:
            return OrthancSpec(entry.endpoint, entry.aet, entry.dicom_port, entry.http_port,
                               entry.config_file, from_endpoint=False)
        raise StackError(f"{where} names no endpoint: add an endpoint {entry.endpoint} "
                         "(aet, port, url) to endpoints, or remove the entry")
    http_port = _http_port(endpoint, where)
    spec = OrthancSpec(endpoint.name, endpoint.aet, endpoint.port, http_port,
                       entry.config_file)
    found = {"aet": spec.aet, "dicom_port": spec.dicom_port, "http_port": spec.http_port}
    conflicts = [f"{key} {value} (the endpoint says {found[key]})"
                 for key, value in old.items() if value is not None and value != found[key]]
    if conflicts:
        raise StackError(
            f"{where} has {', '.join(conflicts)}: the stack now takes the AE title and the "
            f"DICOM port from the endpoint {endpoint.name} (aet, port) and the HTTP port from "
            "its url; remove aet, dicom_port and http_port from the entry and set them on "
            "the endpoint"
        )
    return spec


def _http_port(endpoint: EndpointSettings, where: str) -> int:
    hint = f"(e.g. url: http://127.0.0.1:8042) for the stack's Orthanc {endpoint.name}"
    if not endpoint.url:
        raise StackError(f"{where}: the endpoint has no url; give it one {hint}")
    try:
        port = urlsplit(endpoint.url).port
    except ValueError:
        port = None
    if port is None:
        raise StackError(f"{where}: the endpoint's url {endpoint.url} names no port; "
                         f"give it one {hint}")
    return port
