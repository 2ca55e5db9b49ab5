"""DICOM TLS with certificates the test makes: on the receiver (pynetdicom and DCMTK clients;
a plain client fails) and towards a destination (a second router with a TLS receiver plays
the PACS)."""

from __future__ import annotations

import os
import socket
import ssl
import subprocess
import time
from pathlib import Path

import pytest
from pydicom.uid import generate_uid
from pynetdicom import AE, build_context
from tests.support.datagen import make_instance, write_series
from tests.support.faults import deliveries, sop_instance_uids
from tests.support.fixtures import OrthancFactory
from tests.support.orthanc import ECHOSCU, STORESCU, wait_until
from tests.support.router import ROUTER_AET, router_settings, start_router
from tests.support.tls import Pki, make_pki

pytestmark = pytest.mark.integration

TLS_AET = "TLS_ROUTER"


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


def tls_receiver(pki: Pki, require_client_cert: bool) -> dict[str, object]:
    return {"ae_title": TLS_AET, "tls": {
        "enabled": True, "cert_file": str(pki.server.cert), "key_file": str(pki.server.key),
        "ca_file": str(pki.ca_cert), "require_client_cert": require_client_cert}}


def client_context(pki: Pki, with_certificate: bool) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(pki.ca_cert))
    if with_certificate:
        context.load_cert_chain(str(pki.client.cert), str(pki.client.key))
    return context


def pynetdicom_store(port: int, context: ssl.SSLContext | None) -> int | None:
    """C-STORE one new instance; its status, or None when no association was made."""
    dataset = make_instance(study_uid=generate_uid(), series_uid=generate_uid(), number=1)
    ae = AE(ae_title="TLS_SCU")
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = ae.connection_timeout = 10
    try:
        assoc = ae.associate(
            "127.0.0.1", port, ae_title=TLS_AET,
            contexts=[build_context(dataset.SOPClassUID, [dataset.file_meta.TransferSyntaxUID])],
            tls_args=(context, "127.0.0.1") if context is not None else None)
    except (OSError, ssl.SSLError):
        return None
    if not assoc.is_established:
        return None
    try:
        response = assoc.send_c_store(dataset)
    finally:
        assoc.release()
    return int(response.Status) if "Status" in response else None


def test_tls_receiver(orthanc_factory: OrthancFactory, tmp_path: Path, pki: Pki) -> None:
    storage = orthanc_factory("ORTHANC1")
    settings = router_settings([storage], None, receiver=tls_receiver(pki, True))
    router = start_router(tmp_path / "router", settings)
    env = {**os.environ, "TCP_NODELAY": "1"}
    # A connection that never starts its handshake must not hold up the others.
    idle = socket.create_connection(("127.0.0.1", router.port))
    try:
        started = time.monotonic()
        assert pynetdicom_store(router.port, client_context(pki, True)) == 0x0000
        assert time.monotonic() - started < 5
        # A client certificate is required; a plain client gets no association at all.
        assert pynetdicom_store(router.port, client_context(pki, False)) is None
        assert pynetdicom_store(router.port, None) is None
        plain = subprocess.run([ECHOSCU, "-aec", TLS_AET, "127.0.0.1", str(router.port)],
                               env=env, capture_output=True, text=True, timeout=60)
        assert plain.returncode != 0
        # DCMTK's storescu over TLS, with the client certificate, trusting the test CA.
        files = write_series(tmp_path / "series", 2)
        dcmtk = subprocess.run(
            [STORESCU, "-v", "+tls", str(pki.client.key), str(pki.client.cert),
             "+cf", str(pki.ca_cert), "-aet", "TLS_SCU", "-aec", TLS_AET, "127.0.0.1",
             str(router.port), *(str(f) for f in files)],
            env=env, capture_output=True, text=True, timeout=60)
        assert dcmtk.returncode == 0, dcmtk.stdout + dcmtk.stderr
        wait_until(lambda: len(storage.instances()) == 3, 60, "three instances delivered")
    finally:
        idle.close()
        router.stop()


def test_tls_destination(orthanc_factory: OrthancFactory, tmp_path: Path, pki: Pki) -> None:
    storage = orthanc_factory("ORTHANC1")
    pacs = start_router(tmp_path / "pacs-router",
                        router_settings([storage], None, receiver=tls_receiver(pki, True)))
    try:
        endpoint = {"name": "TLS_PACS", "aet": TLS_AET, "host": "127.0.0.1",
                    "port": pacs.port, "groups": ["storage"],
                    "tls": {"enabled": True, "ca_file": str(pki.ca_cert),
                            "cert_file": str(pki.client.cert),
                            "key_file": str(pki.client.key)}}
        front = start_router(tmp_path / "front-router",
                             router_settings([], None, endpoints=[endpoint]))
        try:
            files = write_series(tmp_path / "series", 3)
            sent = subprocess.run(
                [STORESCU, "-aet", "TEST_SCU", "-aec", ROUTER_AET, "127.0.0.1",
                 str(front.port), *(str(f) for f in files)],
                env={**os.environ, "TCP_NODELAY": "1"}, capture_output=True, text=True,
                timeout=60)
            assert sent.returncode == 0, sent.stdout + sent.stderr
            expected = set(sop_instance_uids(files))
            front.wait_idle()
            rows = deliveries(front.ledger, "TLS_PACS")
            assert {r["state"] for r in rows} == {"delivered"}, rows
            wait_until(lambda: storage.sop_instance_uids() >= expected, 60,
                       "delivered through the TLS hop")
        finally:
            front.stop()
    finally:
        pacs.stop()
