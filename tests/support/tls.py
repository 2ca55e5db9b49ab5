"""Certificates made by the test with the ``openssl`` command: a CA, and leaf certificates
it signs (for 127.0.0.1 and localhost)."""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path

OPENSSL = "/usr/bin/openssl"


@dataclass(frozen=True)
class Leaf:
    cert: Path
    key: Path


@dataclass(frozen=True)
class Pki:
    ca_cert: Path
    server: Leaf
    client: Leaf


def _run(*args: str) -> None:
    subprocess.run([OPENSSL, *args], check=True, capture_output=True, timeout=60)


def _leaf(folder: Path, name: str, ca_cert: Path, ca_key: Path) -> Leaf:
    key, csr, cert = folder / f"{name}.key", folder / f"{name}.csr", folder / f"{name}.crt"
    extensions = folder / f"{name}.ext"
    extensions.write_text("subjectAltName = IP:127.0.0.1, DNS:localhost\n"
                          "basicConstraints = CA:FALSE\n")
    _run("req", "-new", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(csr),
         "-subj", f"/CN={name}")
    _run("x509", "-req", "-in", str(csr), "-CA", str(ca_cert), "-CAkey", str(ca_key),
         "-CAcreateserial", "-days", "2", "-sha256", "-extfile", str(extensions),
         "-out", str(cert))
    return Leaf(cert, key)


def make_pki(folder: Path) -> Pki:
    folder.mkdir(parents=True, exist_ok=True)
    ca_key, ca_cert = folder / "ca.key", folder / "ca.crt"
    _run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(ca_key),
         "-out", str(ca_cert), "-days", "2", "-subj", "/CN=DDE test CA")
    return Pki(ca_cert, _leaf(folder, "server", ca_cert, ca_key),
                   _leaf(folder, "client", ca_cert, ca_key))
