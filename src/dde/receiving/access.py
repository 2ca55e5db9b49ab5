"""Who may associate with the receiver: calling-AE and source-IP allow-lists, the called AE.

Pure decisions over the three facts an A-ASSOCIATE-RQ gives (calling AE title, called AE
title, source address); the SCP turns a :class:`Refusal` into an A-ASSOCIATE-RJ. Also the
receiver's TLS context.
"""

from __future__ import annotations

import fnmatch
import ipaddress
import ssl
from collections.abc import Iterable
from dataclasses import dataclass

from dde.config import ReceiverSettings, ReceiverTlsSettings
from dde.dicom.engine.acceptance import RejectReason


@dataclass(frozen=True)
class Refusal:
    reason: RejectReason
    rule: str
    """Which setting refused the association, for the log line."""


def aet_allowed(aet: str, patterns: Iterable[str]) -> bool:
    """Whether ``aet`` matches one of ``patterns`` (``*`` and ``?`` wildcards, exact case;
    surrounding spaces ignored). No patterns: any AE title is allowed."""
    patterns = [p.strip() for p in patterns]
    if not patterns:
        return True
    aet = aet.strip()
    return any(fnmatch.fnmatchcase(aet, p) for p in patterns if p)


def ip_allowed(address: str, networks: Iterable[str]) -> bool:
    """Whether ``address`` is in one of ``networks`` (addresses or CIDR networks). No
    networks: any address is allowed. An unparsable address is never allowed."""
    networks = [n.strip() for n in networks]
    if not networks:
        return True
    try:
        ip = ipaddress.ip_address(address.strip())
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    for entry in networks:
        try:
            network = ipaddress.ip_network(entry, strict=False)
        except ValueError:
            continue
        if ip.version == network.version and ip in network:
            return True
    return False


def check_association(settings: ReceiverSettings, calling_aet: str, called_aet: str,
                      source_ip: str) -> Refusal | None:
    """None when the association may proceed, else why it is refused."""
    if not ip_allowed(source_ip, settings.allowed_source_ips):
        return Refusal(RejectReason.NO_REASON_GIVEN, "allowed_source_ips")
    if not aet_allowed(calling_aet, settings.allowed_calling_aets):
        return Refusal(RejectReason.CALLING_AE_NOT_RECOGNISED, "allowed_calling_aets")
    if settings.require_called_aet and called_aet.strip() != settings.ae_title.strip():
        return Refusal(RejectReason.CALLED_AE_NOT_RECOGNISED, "require_called_aet")
    return None


def server_tls_context(tls: ReceiverTlsSettings) -> ssl.SSLContext | None:
    """The receiver's TLS context, or None when TLS is off. A file that cannot be loaded
    raises OSError naming the setting and the file."""
    if not tls.enabled:
        return None
    if tls.cert_file is None:  # the settings' validator prevents it
        raise ValueError("TLS on the receiver needs cert_file")
    # asyncio handshakes each connection on the event loop (bounded by the request
    # timeout), never in an accept loop that a silent client could hold.
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(tls.cert_file, tls.key_file)
    except OSError as exc:  # ssl.SSLError included
        raise OSError(f"receiver TLS: cannot load cert_file {tls.cert_file} / key_file "
                      f"{tls.key_file or '(in cert_file)'}: {exc.strerror or exc}") from exc
    if tls.ca_file:
        try:
            context.load_verify_locations(cafile=tls.ca_file)
        except OSError as exc:
            raise OSError(f"receiver TLS: cannot load ca_file {tls.ca_file}: "
                          f"{exc.strerror or exc}") from exc
    if tls.require_client_cert:
        context.verify_mode = ssl.CERT_REQUIRED
    elif tls.ca_file:
        context.verify_mode = ssl.CERT_OPTIONAL
    return context
