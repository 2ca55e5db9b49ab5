"""Several router nodes on one machine: the stack's PostgreSQL, the nodes, HAProxy.

``dde stack up --nodes N`` (N ≥ 2) writes ``stack.nodes: N`` into ``dde.yaml`` and, when
the ledger was SQLite, points ``store`` at a PostgreSQL server the stack runs itself:
Debian's ``postgres`` with its data in ``$DDE_HOME/postgres/data``, listening on a Unix
socket in ``$DDE_HOME/postgres/socket`` only (no TCP port; run as the ``postgres`` user when
``dde`` runs as root, as PostgreSQL refuses root). The ``dde.yaml`` of the state folder
then reaches the cluster's ledger, so every ``dde`` command works from it as from any node's.

Node ``router-K`` has its own state folder, ``$DDE_HOME/nodes/router-K``, whose ``dde.yaml``
is written at each ``up`` from the main one: the same endpoints, rules and settings, its
own ports (``receiver.port + K``, ``web.port + K``, on 127.0.0.1), ``store.node:
router-K``, and the main state folder's spool as the shared ``spool.folder``. The API token
is the main one. HAProxy (Debian's, TCP mode) listens on the public ports (``receiver.host``:
``receiver.port``, ``web.host``:``web.port``) and spreads associations over the nodes that
pass its health checks (a TCP connect on DICOM, ``GET /healthz`` on the web port).

Each ``receivers:`` entry gets the same: node K listens for it on its ``port + K`` (on
127.0.0.1, its rules file the main state folder's), HAProxy on its own ``host:port`` with a
frontend of its own. Leave room between the receivers' ports (e.g. 11113, 11123): a node's
port must not be another receiver's.

Behind HAProxy the nodes see HAProxy's address (127.0.0.1) as the sender's: allow-lists by
calling AE title still apply, allow-lists by address do not.
"""

from __future__ import annotations

import grp
import os
import pwd
import shutil
import subprocess
from pathlib import Path
from typing import Any

import yaml

from dde.config import Home, Settings, StoreBackend, load_settings, settings_to_data
from dde.config.yaml_rewrite import rewrite_yaml
from dde.config_store import ConfigStore, write_atomically
from dde.stack.errors import StackError
from dde.stack.parts import HAPROXY, POSTGRESQL, Part, PartKind, more_receivers
from dde.store.postgres import database_exists
from dde.web.auth import load_token, token_file

HAPROXY_BINARY = Path("/usr/sbin/haproxy")
POSTGRES_ROOT = Path("/usr/lib/postgresql")
POSTGRES_PORT = 5432
"""Names the Unix socket (``.s.PGSQL.5432``) in the stack's own folder; no TCP port."""
POSTGRES_USER = "postgres"
DATABASE = "dde"
NODE_HEADER = ("# Written by `dde stack up` from {main} at each start: edit that file, not "
               "this one.\n")


def node_name(number: int) -> str:
    return f"router-{number}"


def node_home(home: Home, number: int) -> Path:
    return home.root / "nodes" / node_name(number)


def postgres_folder(home: Home) -> Path:
    return home.root / "postgres"


def managed_url(home: Home) -> str:
    """The store URL of the stack's own PostgreSQL (its socket folder in the state folder)."""
    return (f"postgresql://{POSTGRES_USER}@/{DATABASE}?host={postgres_folder(home)}/socket"
            f"&port={POSTGRES_PORT}")


def runs_postgres(home: Home, settings: Settings) -> bool:
    """Whether the stack runs the ledger's PostgreSQL itself (``store.url`` is its own)."""
    store = settings.store
    return store.backend is StoreBackend.POSTGRESQL and store.url == managed_url(home)


# ---------------------------------------------------------------------------------------
# the parts


def cluster_parts(home: Home, settings: Settings) -> list[Part]:
    """``postgresql`` (when the stack runs it), ``router-1`` … ``router-N``, ``haproxy``."""
    parts: list[Part] = []
    if runs_postgres(home, settings):
        parts.append(Part(
            name=POSTGRESQL, ports=(), log=home.logs_dir / f"{POSTGRESQL}.log",
            pid_file=home.run_dir / f"{POSTGRESQL}.pid",
            config=postgres_folder(home) / "data" / "postgresql.conf",
            kind=PartKind.POSTGRESQL))
    for number in range(1, settings.stack.nodes + 1):
        name, folder = node_name(number), node_home(home, number)
        ports: tuple[int, ...] = (settings.receiver.port + number,)
        if settings.web.enabled:
            ports += (settings.web.port + number,)
        more = tuple((receiver, port + number) for receiver, port in more_receivers(settings))
        parts.append(Part(
            name=name, ports=ports + tuple(port for _, port in more),
            log=home.logs_dir / f"{name}.log",
            pid_file=home.run_dir / f"{name}.pid", config=folder / "dde.yaml",
            kind=PartKind.ROUTER, home=folder, ae_title=settings.receiver.ae_title,
            more_receivers=more))
    public = (settings.receiver.port,) + ((settings.web.port,) if settings.web.enabled else ())
    parts.append(Part(
        name=HAPROXY, ports=public + tuple(port for _, port in more_receivers(settings)),
        log=home.logs_dir / f"{HAPROXY}.log",
        pid_file=home.run_dir / f"{HAPROXY}.pid", config=home.root / "haproxy.cfg",
        kind=PartKind.HAPROXY, ae_title=settings.receiver.ae_title,
        more_receivers=more_receivers(settings)))
    return parts


# ---------------------------------------------------------------------------------------
# --nodes N


def set_nodes(home: Home, nodes: int) -> list[str]:
    """Write ``stack.nodes`` (and, from 2 nodes on a SQLite ledger, the stack's own
    PostgreSQL as ``store``) into ``dde.yaml``; what changed, for the user."""
    config = ConfigStore(home)
    with config.locked():
        current = load_settings(home, environment=False)
        stack = current.stack.model_copy(update={"nodes": nodes})
        changes: dict[str, object] = {"stack": stack}
        said: list[str] = []
        if current.stack.nodes != nodes:
            said.append(f"stack.nodes: {nodes}")
        if nodes > 1 and current.store.backend is StoreBackend.SQLITE:
            changes["store"] = current.store.model_copy(update={
                "backend": StoreBackend.POSTGRESQL, "url": managed_url(home), "node": ""})
            said.append("store: the stack's own PostgreSQL (the SQLite ledger "
                        f"{home.database} is left as it is, not carried over)")
        if not said:
            return []
        changed = current.model_copy(update=changes)
        text = home.config_file.read_text()
        write_atomically(home.config_file, rewrite_yaml(
            text, settings_to_data(current), settings_to_data(changed)))
    load_settings(home)  # the result must load (the settings model checks it)
    return said


def write_node_home(home: Home, settings: Settings, part: Part) -> None:
    """The node's state folder and its ``dde.yaml`` (from the main file's own text, so
    its passwords stay as written), ``rules.yaml`` and the API token."""
    assert part.home is not None and part.config is not None
    part.home.mkdir(mode=0o700, parents=True, exist_ok=True)
    raw: dict[str, Any] = yaml.safe_load(home.config_file.read_text()) or {}
    raw.pop("stack", None)
    raw["receiver"] = {**(raw.get("receiver") or {}), "host": "127.0.0.1",
                       "port": part.dicom_port}
    if raw.get("receivers"):
        raw["receivers"] = _node_receivers(home, settings, part, raw["receivers"])
    web = {**(raw.get("web") or {}), "host": "127.0.0.1"}
    if part.web_port is not None:
        web["port"] = part.web_port
    raw["web"] = web
    raw["store"] = {**(raw.get("store") or {}), "backend": "postgresql",
                    "url": settings.store.url, "node": part.name.replace("-", "_")}
    raw["spool"] = {**(raw.get("spool") or {}),
                    "folder": settings.spool.folder or str(home.spool_dir)}
    text = NODE_HEADER.format(main=home.config_file) + yaml.safe_dump(raw, sort_keys=False)
    write_atomically(part.config, text)
    load_token(home)  # one token for all nodes (HAProxy's web port reaches any of them)
    for source, target in ((home.rules_file, Home(part.home).rules_file),
                           (token_file(home), token_file(Home(part.home)))):
        if source.exists():
            write_atomically(target, source.read_text())
        else:
            target.unlink(missing_ok=True)


# ---------------------------------------------------------------------------------------
# PostgreSQL


def postgres_binaries() -> Path:
    """The newest installed PostgreSQL's binaries (Debian: /usr/lib/postgresql/N/bin)."""
    found = sorted((p for p in POSTGRES_ROOT.glob("*/bin") if (p / "postgres").exists()),
                   key=lambda p: int(p.parent.name) if p.parent.name.isdigit() else 0)
    if not found:
        raise StackError("PostgreSQL is not installed (several nodes share its ledger): "
                         "`apt-get install -y postgresql`")
    return found[-1]


def _server_user() -> tuple[str, str] | None:
    """(user, group) the server runs as: ``postgres`` when we are root, else ourselves."""
    if os.geteuid() != 0:
        return None
    try:
        pwd.getpwnam(POSTGRES_USER)
        group = grp.getgrgid(pwd.getpwnam(POSTGRES_USER).pw_gid).gr_name
    except KeyError:
        raise StackError("PostgreSQL refuses to run as root and there is no postgres user: "
                         "`apt-get install -y postgresql` creates it") from None
    return POSTGRES_USER, group


def prepare_postgres(home: Home) -> tuple[list[str], tuple[str, str] | None]:
    """Create the cluster in ``$DDE_HOME/postgres`` when absent; the server's argv and the
    (user, group) to run it as."""
    binaries = postgres_binaries()
    folder = postgres_folder(home)
    data, socket = folder / "data", folder / "socket"
    user = _server_user()
    for path in (folder, socket):
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
        if user is not None:
            shutil.chown(path, *user)
    if user is not None:
        _let_server_reach(home, folder, user)
    if not (data / "PG_VERSION").exists():
        result = subprocess.run(
            [str(binaries / "initdb"), "-D", str(data), "-U", POSTGRES_USER, "-A", "trust",
             "-E", "UTF8", "--locale=C.UTF-8"],
            capture_output=True, text=True, timeout=180, cwd=folder, check=False,
            user=user[0] if user else None, group=user[1] if user else None)
        if result.returncode != 0:
            raise StackError(f"initdb failed in {data}:\n{result.stderr.strip()[-2000:]}")
    argv = [str(binaries / "postgres"), "-D", str(data), "-p", str(POSTGRES_PORT),
            "-k", str(socket), "-c", "listen_addresses=", "-c", "max_connections=300"]
    return argv, user


def _let_server_reach(home: Home, folder: Path, user: tuple[str, str]) -> None:
    """The state folder is private (0700, root's): let the server's group pass through it
    (0710, search only); refuse with a way out when a folder above it stops the server."""
    root = home.root
    if root.stat().st_gid != grp.getgrnam(user[1]).gr_gid:
        os.chown(root, -1, grp.getgrnam(user[1]).gr_gid)
    os.chmod(root, (root.stat().st_mode & 0o777) | 0o010)
    check = subprocess.run(["test", "-x", str(folder)], user=user[0], group=user[1],
                           check=False, capture_output=True)
    if check.returncode != 0:
        raise StackError(
            f"PostgreSQL runs as the {user[0]} user, which cannot reach {folder}: a folder "
            f"above {root} is closed to it; use a state folder outside it (e.g. "
            f"--home /var/lib/dde) or let it pass (`chmod o+x` on that folder)")


def postgres_ready(home: Home) -> bool:
    """Whether the stack's server accepts connections; creates the ``dde`` database once."""
    return database_exists(managed_url(home), create=True)


# ---------------------------------------------------------------------------------------
# HAProxy


def _node_receivers(home: Home, settings: Settings, part: Part,
                    entries: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The node's ``receivers:``: each entry on 127.0.0.1 and the node's port for it, its
    rules file the main state folder's (every node reads the one file, so a change with
    ``dde rules apply --receiver`` reaches them all)."""
    ports = dict(part.more_receivers)
    written = []
    for entry, receiver in zip(entries, settings.receivers, strict=True):
        node_entry = {**entry, "host": "127.0.0.1", "port": ports[receiver.name]}
        if receiver.rules is not None and not Path(receiver.rules).expanduser().is_absolute():
            node_entry["rules"] = str(home.root / receiver.rules)
        written.append(node_entry)
    return written


def haproxy_argv(home: Home, settings: Settings, nodes: list[Part]) -> list[str]:
    """Write HAProxy's configuration (every start); its argv (foreground, ``-db``)."""
    if not HAPROXY_BINARY.exists():
        raise StackError("HAProxy is not installed (it spreads associations over the "
                         "nodes): `apt-get install -y haproxy`")
    config = home.root / "haproxy.cfg"
    write_atomically(config, haproxy_config(settings, nodes))
    return [str(HAPROXY_BINARY), "-db", "-f", str(config)]


def haproxy_config(settings: Settings, nodes: list[Part]) -> str:
    """TCP mode in front of the nodes' DICOM ports (least connections: associations are
    long) and their web ports (``/healthz`` checked); a node failing two checks a second
    apart gets no new connection until it passes two again."""
    timeout = max(int(settings.receiver.network_timeout) + 30, 300)
    lines = [
        "# Written by `dde stack up` at each start.",
        "global", "    maxconn 2048",
        "defaults", "    mode tcp", "    timeout connect 5s",
        f"    timeout client {timeout}s", f"    timeout server {timeout}s",
        "    retries 3", "    option redispatch",
        "frontend dicom", f"    bind {settings.receiver.host}:{settings.receiver.port}",
        "    default_backend routers_dicom",
        "backend routers_dicom", "    balance leastconn",
        *(f"    server {n.name} 127.0.0.1:{n.dicom_port} check inter 1s fall 2 rise 2"
          for n in nodes),
    ]
    for entry in settings.receivers:  # each receiver: its own public port, the same nodes
        lines += [
            f"frontend dicom_{entry.name}", f"    bind {entry.host}:{entry.port}",
            f"    default_backend routers_dicom_{entry.name}",
            f"backend routers_dicom_{entry.name}", "    balance leastconn",
            *(f"    server {n.name} 127.0.0.1:{dict(n.more_receivers)[entry.name]} check "
              "inter 1s fall 2 rise 2" for n in nodes),
        ]
    if settings.web.enabled:
        lines += [
            "frontend web", f"    bind {settings.web.host}:{settings.web.port}",
            "    default_backend routers_web",
            "backend routers_web", "    balance roundrobin",
            "    option httpchk GET /healthz",
            *(f"    server {n.name} 127.0.0.1:{n.web_port} check inter 1s fall 2 rise 2"
              for n in nodes),
        ]
    return "\n".join(lines) + "\n"
