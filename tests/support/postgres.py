"""A real PostgreSQL server for the tests, from Debian's package: ``initdb`` and ``pg_ctl``
into a private folder (run as the ``postgres`` user when the tests run as root, as
PostgreSQL refuses root), listening on a Unix socket only. One server per test session;
each test gets a database of its own."""

from __future__ import annotations

import itertools
import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import psycopg

from dde.stack.cluster import postgres_binaries
from dde.stack.errors import StackError
from tests.support.orthanc import free_port


def postgres_bin() -> Path:
    """The newest installed PostgreSQL's binaries (the stack's own lookup)."""
    try:
        return postgres_binaries()
    except StackError:
        raise RuntimeError("PostgreSQL is not installed: `make test` installs Debian's "
                           "postgresql package") from None


def _as_server_user(argv: list[str]) -> list[str]:
    return ["runuser", "-u", "postgres", "--", *argv] if os.geteuid() == 0 else argv


@dataclass
class PostgresServer:
    root: Path
    port: int
    _names: itertools.count[int] = field(default_factory=lambda: itertools.count(1))

    @property
    def socket_dir(self) -> Path:
        return self.root / "socket"

    @property
    def data_dir(self) -> Path:
        return self.root / "data"

    def url(self, database: str = "postgres") -> str:
        return (f"postgresql://postgres@/{database}?host={self.socket_dir}"
                f"&port={self.port}")

    def start(self, initialise: bool = True) -> None:
        """Create the cluster (``initialise``) and start the server; ``initialise=False``
        starts a stopped one again."""
        binaries = postgres_bin()
        if initialise:
            self.socket_dir.mkdir(parents=True)
            if os.geteuid() == 0:
                shutil.chown(self.root, "postgres", "postgres")
                shutil.chown(self.socket_dir, "postgres", "postgres")
            subprocess.run(_as_server_user([
                str(binaries / "initdb"), "-D", str(self.data_dir), "-U", "postgres",
                "-A", "trust", "-E", "UTF8", "--locale=C.UTF-8"]),
                check=True, capture_output=True, timeout=120)
        options = (f"-p {self.port} -k {self.socket_dir} -c listen_addresses='' "
                   f"-c max_connections=300")
        subprocess.run(_as_server_user([
            str(binaries / "pg_ctl"), "-D", str(self.data_dir), "-l",
            str(self.root / "server.log"), "-o", options, "-w", "-t", "60", "start"]),
            check=True, capture_output=True, timeout=90)

    def stop(self) -> None:
        subprocess.run(_as_server_user([
            str(postgres_bin() / "pg_ctl"), "-D", str(self.data_dir), "-m", "fast", "-w",
            "stop"]), capture_output=True, timeout=60)

    def create_database(self) -> str:
        """A new, empty database; its URL."""
        name = f"ledger_{next(self._names)}"
        with psycopg.connect(self.url(), autocommit=True) as admin:
            admin.execute(f'CREATE DATABASE "{name}"'.encode())
        return self.url(name)

    def drop_database(self, url: str) -> None:
        name = urlsplit(url).path.lstrip("/")  # the socket folder in the query has slashes
        with psycopg.connect(self.url(), autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'.encode())


def start_postgres() -> PostgresServer:
    root = Path(tempfile.mkdtemp(prefix="dde-pg-"))
    os.chmod(root, 0o755)
    server = PostgresServer(root, free_port())
    server.start()
    return server


def remove_postgres(server: PostgresServer) -> None:
    server.stop()
    shutil.rmtree(server.root, ignore_errors=True)
