"""HTTP clients towards a PACS (Orthanc REST), with credentials and TLS from the config."""

from __future__ import annotations

import ssl

import httpx

from dde.config import EndpointSettings


def http_client(endpoint: EndpointSettings, timeout: float = 10.0,
                transport: httpx.BaseTransport | None = None) -> httpx.Client:
    """A client with the endpoint's credentials and TLS; ``transport`` replaces the network
    (tests pass an ``httpx.MockTransport``)."""
    auth = None
    if endpoint.username and endpoint.password is not None:
        auth = httpx.BasicAuth(endpoint.username, endpoint.password.get_secret_value())
    verify: bool | ssl.SSLContext = endpoint.tls.verify
    if endpoint.tls.ca_file or endpoint.tls.cert_file:
        context = ssl.create_default_context(cafile=endpoint.tls.ca_file)
        if endpoint.tls.cert_file:
            context.load_cert_chain(endpoint.tls.cert_file, endpoint.tls.key_file)
        if not endpoint.tls.verify:
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        verify = context
    return httpx.Client(timeout=httpx.Timeout(timeout), auth=auth, verify=verify,
                        transport=transport)
