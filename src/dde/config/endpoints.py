"""An endpoint (a destination PACS) and the checks on its address."""

from __future__ import annotations

import contextlib
import ipaddress
import socket
from typing import Annotated, Any
from urllib.parse import urlsplit

from pydantic import (
    Field,
    SecretStr,
    ValidationInfo,
    field_validator,
    model_validator,
)

from dde.config.base import HTTP_KINDS, EndpointKind, EndpointState, _Strict


class TlsSettings(_Strict):
    """DICOM TLS (or HTTPS verification) towards one destination."""

    enabled: bool = False
    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None
    verify: bool = True


def forbidden_host(host: str) -> str | None:
    """Why ``host`` is no PACS: link-local or cloud metadata (in any spelling; no DNS)."""
    metadata = {"metadata.google.internal", "metadata.goog", "metadata", "instance-data",
                "instance-data.ec2.internal", "169.254.169.254", "fd00:ec2::254", "100.100.100.200"}
    name, ip = host.strip("[]").split("%")[0].rstrip(".").lower(), None
    for parse in (ipaddress.ip_address, lambda n: ipaddress.IPv4Address(socket.inet_aton(n))):
        with contextlib.suppress(OSError, ValueError):  # inet_aton: 2852039166, 0xa9fea9fe
            ip = ip or parse(name)
    ip = getattr(ip, "ipv4_mapped", None) or ip
    if name in metadata or (ip is not None and (ip.is_link_local or str(ip) in metadata)):
        return f"{host} is link-local or a cloud metadata service"
    return None


class EndpointSettings(_Strict):
    """One destination PACS (link-local and metadata addresses: see :class:`Settings`)."""

    name: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.\-]+$")
    kind: EndpointKind = EndpointKind.DICOM
    aet: str = Field(min_length=1, max_length=16)
    host: str = "127.0.0.1"
    port: int = Field(default=104, ge=1, le=65535)
    url: str | None = None
    """Orthanc's HTTP root (load statistics, the target of ``orthanc-rest`` deliveries), or
    a ``dicomweb`` endpoint's DICOMweb service root (``POST {url}/studies``)."""
    groups: list[Annotated[str, Field(pattern=r"^\S+$")]] = Field(default_factory=list)
    weight: float = Field(default=1.0, gt=0)
    state: EndpointState = EndpointState.ENABLED
    username: str | None = None
    password: SecretStr | None = None
    password_file: str | None = None
    """A file holding the HTTP basic password (a mounted secret): read when a connection is
    made, never copied into ``dde.yaml``; with ``username``."""
    token: SecretStr | None = None
    """An HTTP bearer token (``Authorization: Bearer …``); never shown or logged."""
    token_file: str | None = None
    """A file holding the bearer token (a mounted secret), read when a connection is made."""
    qido_load: bool = True
    """``dicomweb``: the load for least-loaded is the count of studies QIDO-RS lists
    (``GET {url}/studies``); false: the load is unknown (only its queue counts)."""
    tls: TlsSettings = Field(default_factory=TlsSettings)
    associations: int | None = Field(default=None, ge=1, le=16)
    """Associations (or HTTP connections) delivering to it at once; None:
    ``delivery.associations``."""
    storage_commitment: bool = False
    """``dicom``: after each delivered batch, ask the destination to commit to the
    instances (Storage Commitment Push Model, one N-ACTION per study); its report comes to
    the router's receiver (the PACS must know the router's AE title, host and port), and
    an instance it does not commit to is sent again."""

    @model_validator(mode="before")
    @classmethod
    def _http_aet_from_name(cls, data: Any) -> Any:
        """An HTTP endpoint sends no association: its AE title (a label in listings) is
        its name unless given."""
        if (isinstance(data, dict) and data.get("kind") in HTTP_KINDS
                and data.get("aet") is None and isinstance(data.get("name"), str)):
            return {**data, "aet": data["name"][:16]}
        return data

    @model_validator(mode="after")
    def _http_needs_url(self) -> EndpointSettings:
        if self.kind is EndpointKind.ORTHANC_REST and not self.url:
            raise ValueError("an orthanc-rest endpoint needs a url (Orthanc's HTTP root)")
        if self.kind is EndpointKind.DICOMWEB and not self.url:
            raise ValueError("a dicomweb endpoint needs a url (the DICOMweb service root, "
                             "e.g. http://host:8042/dicom-web)")
        return self

    @model_validator(mode="after")
    def _commitment_is_dicom(self) -> EndpointSettings:
        if self.storage_commitment and self.kind is not EndpointKind.DICOM:
            raise ValueError("storage_commitment is a DICOM service: only dicom endpoints "
                             "have it")
        return self

    @model_validator(mode="after")
    def _one_credential(self) -> EndpointSettings:
        basic = self.password is not None or self.password_file is not None
        bearer = self.token is not None or self.token_file is not None
        if self.password is not None and self.password_file is not None:
            raise ValueError("password or password_file, not both")
        if self.token is not None and self.token_file is not None:
            raise ValueError("token or token_file, not both")
        if basic and bearer:
            raise ValueError("basic credentials (username, password) or a bearer token, "
                             "not both")
        if self.password_file is not None and not self.username:
            raise ValueError("password_file needs a username")
        return self

    @field_validator("host", "url")
    @classmethod
    def _an_address(cls, value: str | None, info: ValidationInfo) -> str | None:
        url = urlsplit(value if info.field_name == "url" and value else "http://h")
        refused = " /@?#" if info.field_name == "host" else " "
        if value is not None and (not value or not value.isprintable() or "@" in url.netloc
                                  or any(c in refused for c in value)):
            raise ValueError("no spaces or control characters; credentials: username, password")
        if url.scheme.lower() not in ("http", "https") or not url.hostname:
            raise ValueError("a url is http://HOST… or https://HOST…")
        return value

    @field_validator("aet")
    @classmethod
    def _aet_is_ascii(cls, value: str) -> str:
        if not (value.isascii() and value.isprintable()) or "\\" in value or value.strip() != value:
            raise ValueError("an AE title is at most 16 ASCII characters, no backslash")
        return value
