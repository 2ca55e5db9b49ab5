"""Several receiving AE titles and ports against real Orthancs and DCMTK: each receiver
admits by its own allow-lists, what it takes goes by its own rules (or rules.yaml, which
may test ``Receiver`` and ``CalledAET``), a receiver's rules file changed live is in force
for the next association, TLS on one receiver only; one ``receiver:`` alone works as it
always did."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from tests.integration.test_security_tls import client_context, pynetdicom_store
from tests.integration.test_stack_nodes import free_port_run
from tests.integration.test_stack_router import orthanc_uids
from tests.support.datagen import write_series
from tests.support.faults import sop_instance_uids
from tests.support.fixtures import OrthancFactory
from tests.support.orthanc import ECHOSCU, RunningOrthanc, free_port, storescu, wait_until
from tests.support.router import ROUTER_AET, InProcessRouter, router_settings, start_router
from tests.support.stackcli import dde, kill_processes_naming, stack_status
from tests.support.tls import make_pki

from dde.config_store import ConfigStore

pytestmark = pytest.mark.integration

CARDIO_AET = "DDE_CARDIO"
RESEARCH_AET = "DDE_RESEARCH"
MAIN_RULES = """rules:
  - name: research-to-2
    when: {Receiver: research, CalledAET: DDE_RESEARCH}
    route: [ORTHANC2]
  - name: all-to-1
    route: [ORTHANC1]
"""
CARDIO_RULES = "rules:\n  - name: cardio-to-2\n    route: [ORTHANC2]\n"
CARDIO_RULES_CHANGED = "rules:\n  - name: cardio-to-1\n    route: [ORTHANC1]\n"


def echoscu(port: int, calling: str, called: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [ECHOSCU, "-v", "-aet", calling, "-aec", called, "127.0.0.1", str(port)],
        env={**os.environ, "TCP_NODELAY": "1"}, capture_output=True, text=True, timeout=60,
        check=False)


def refused_with(port: int, calling: str, called: str, reason: str) -> None:
    result = echoscu(port, calling, called)
    output = result.stdout + result.stderr
    assert result.returncode != 0, output
    assert "Association Rejected" in output and reason in output, output


@pytest.fixture
def orthancs(orthanc_factory: OrthancFactory) -> tuple[RunningOrthanc, RunningOrthanc]:
    return orthanc_factory("ORTHANC1"), orthanc_factory("ORTHANC2")


@pytest.fixture(params=[0, 1], ids=["in-process", "receiver-process"])
def router(request: pytest.FixtureRequest, orthancs: tuple[RunningOrthanc, RunningOrthanc],
           tmp_path: Path) -> Iterator[InProcessRouter]:
    home = tmp_path / "home"
    home.mkdir()
    (home / "rules.yaml").write_text(MAIN_RULES)
    (home / "rules-cardio.yaml").write_text(CARDIO_RULES)
    settings = router_settings(
        list(orthancs), None,
        receiver={"processes": request.param, "allowed_calling_aets": ["CT_*", "BOTH"]},
        receivers=[
            {"name": "cardio", "ae_title": CARDIO_AET, "host": "127.0.0.1", "port": 0,
             "allowed_calling_aets": ["ECHO_*", "BOTH"], "require_called_aet": True,
             "rules": "rules-cardio.yaml"},
            {"name": "research", "ae_title": RESEARCH_AET, "host": "127.0.0.1", "port": 0}])
    running = start_router(home, settings)
    yield running
    running.stop()


def test_each_receiver_admits_by_its_own_lists_and_routes_by_its_own_rules(
        router: InProcessRouter, orthancs: tuple[RunningOrthanc, RunningOrthanc],
        tmp_path: Path) -> None:
    orthanc1, orthanc2 = orthancs
    ports = router.app.receiver.ports
    assert set(ports) == {"main", "cardio", "research"}
    assert len(set(ports.values())) == 3 and 0 not in ports.values()

    # Admission: each receiver's own calling-AE list, and cardio's called AE check.
    assert echoscu(ports["main"], "BOTH", ROUTER_AET).returncode == 0
    assert echoscu(ports["cardio"], "BOTH", CARDIO_AET).returncode == 0
    refused_with(ports["cardio"], "CT_1", CARDIO_AET, "Calling AE Title Not Recognized")
    refused_with(ports["main"], "ECHO_1", ROUTER_AET, "Calling AE Title Not Recognized")
    refused_with(ports["cardio"], "ECHO_1", ROUTER_AET, "Called AE Title Not Recognized")

    # Routing: main by rules.yaml (to ORTHANC1), cardio by its own file (to ORTHANC2),
    # research by rules.yaml's rule on Receiver and CalledAET (to ORTHANC2).
    ct = write_series(tmp_path / "ct", 3, modality="CT")
    echo = write_series(tmp_path / "echo", 3, modality="MR")
    research = write_series(tmp_path / "research", 2, modality="MR")
    storescu(ct, ports["main"], ROUTER_AET, calling_ae="CT_1")
    storescu(echo, ports["cardio"], CARDIO_AET, calling_ae="ECHO_1")
    storescu(research, ports["research"], RESEARCH_AET, calling_ae="ANY")
    ct_uids, echo_uids = set(sop_instance_uids(ct)), set(sop_instance_uids(echo))
    research_uids = set(sop_instance_uids(research))
    orthanc1.wait_for_sop_instance_uids(ct_uids, 60)
    orthanc2.wait_for_sop_instance_uids(echo_uids | research_uids, 60)
    router.wait_idle(60)
    assert orthanc1.sop_instance_uids() == ct_uids
    assert orthanc2.sop_instance_uids() == echo_uids | research_uids
    rules = {uid: record.rule for uid in ct_uids | echo_uids | research_uids
             for record in router.ledger.operators.where(uid)}
    assert {rules[u] for u in ct_uids} == {"all-to-1"}
    assert {rules[u] for u in echo_uids} == {"cardio-to-2"}
    assert {rules[u] for u in research_uids} == {"research-to-2"}
    called = {r.called_aet for u in echo_uids for r in router.ledger.operators.where(u)}
    assert called == {CARDIO_AET}

    # cardio's rules changed live (as `dde rules apply FILE --receiver cardio` does).
    ConfigStore(router.home).apply_rules(CARDIO_RULES_CHANGED, receiver="cardio")
    later = write_series(tmp_path / "later", 2, modality="MR")
    later_uids = set(sop_instance_uids(later))

    wait_until(lambda: [r.name for r in router.app.router.ruleset.for_receiver("cardio")
                        .rules] == ["cardio-to-1"], 10, "the main process reloaded the rules")
    storescu(later, ports["cardio"], CARDIO_AET, calling_ae="ECHO_1")  # a receiver process
    orthanc1.wait_for_sop_instance_uids(later_uids, 60)                 # reloads per association
    assert {r.rule for u in later_uids for r in router.ledger.operators.where(u)} == \
        {"cardio-to-1"}
    assert not later_uids & orthanc2.sop_instance_uids()


def test_one_receiver_alone_works_as_before(
        orthancs: tuple[RunningOrthanc, RunningOrthanc], tmp_path: Path) -> None:
    orthanc1, orthanc2 = orthancs
    router = start_router(tmp_path / "home", router_settings(list(orthancs), None))
    try:
        assert "receivers" not in yaml.safe_load(router.home.config_file.read_text())
        assert router.app.receiver.ports == {"main": router.port}
        assert echoscu(router.port, "ANY", ROUTER_AET).returncode == 0
        files = write_series(tmp_path / "files", 4)
        storescu(files, router.port, ROUTER_AET)
        uids = set(sop_instance_uids(files))
        wait_until(lambda: uids <= orthanc1.sop_instance_uids() | orthanc2.sop_instance_uids(),
                   60, "the series delivered")
        held = [orthanc1.sop_instance_uids(), orthanc2.sop_instance_uids()]
        assert uids <= held[0] or uids <= held[1]  # the default rule: one study, one storage
    finally:
        router.stop()


def test_tls_on_one_receiver_only(orthancs: tuple[RunningOrthanc, RunningOrthanc],
                                  tmp_path: Path) -> None:
    pki = make_pki(tmp_path / "pki")
    router = start_router(tmp_path / "home", router_settings(
        list(orthancs), None, receiver={"processes": 1},
        receivers=[{"name": "secure", "ae_title": "TLS_ROUTER", "host": "127.0.0.1",
                    "port": 0, "tls": {"enabled": True, "cert_file": str(pki.server.cert),
                                       "key_file": str(pki.server.key),
                                       "ca_file": str(pki.ca_cert),
                                       "require_client_cert": True}}]))
    try:
        ports = router.app.receiver.ports
        assert echoscu(ports["main"], "ANY", ROUTER_AET).returncode == 0  # plain on main
        assert echoscu(ports["secure"], "ANY", "TLS_ROUTER").returncode != 0
        assert pynetdicom_store(ports["secure"], client_context(pki, True)) == 0x0000
        assert pynetdicom_store(ports["secure"], client_context(pki, False)) is None
    finally:
        router.stop()


StackPorts = dict[str, tuple[int, int]]


def write_stack_home(home: Path, main_port: int, cardio_port: int, web_port: int) -> StackPorts:
    """dde.yaml (two Orthancs of the stack, the main receiver and cardio), rules.yaml and
    cardio's rules file; the Orthancs' (DICOM, HTTP) ports."""
    home.mkdir()
    ports = {name: (free_port(), free_port()) for name in ("ORTHANC1", "ORTHANC2")}
    config = {
        "receiver": {"host": "127.0.0.1", "port": main_port},
        "receivers": [{"name": "cardio", "ae_title": CARDIO_AET, "host": "127.0.0.1",
                       "port": cardio_port, "rules": "rules-cardio.yaml"}],
        "web": {"host": "127.0.0.1", "port": web_port},
        "endpoints": [{"name": name, "aet": name, "host": "127.0.0.1", "port": dicom,
                       "url": f"http://127.0.0.1:{http}", "groups": ["storage"]}
                      for name, (dicom, http) in ports.items()],
        "routing": {"mirror": []},
        "delivery": {"backoff_base_seconds": 0.2, "poll_seconds": 0.2},
        "stack": {"orthancs": [{"endpoint": name, "config_file": f"orthanc_{name}.json"}
                               for name in ports]},
    }
    (home / "dde.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    (home / "rules.yaml").write_text(MAIN_RULES)
    (home / "rules-cardio.yaml").write_text(CARDIO_RULES)
    return ports


def send_to_each_receiver(folder: Path, ports: StackPorts, main_port: int,
                          cardio_port: int) -> None:
    """A CT series to the main receiver ends in ORTHANC1 (rules.yaml), an MR series to
    cardio in ORTHANC2 only (its own rules)."""
    ct, echo = write_series(folder / "ct", 3), write_series(folder / "echo", 3, modality="MR")
    storescu(ct, main_port, ROUTER_AET)
    storescu(echo, cardio_port, CARDIO_AET)
    ct_uids, echo_uids = set(sop_instance_uids(ct)), set(sop_instance_uids(echo))
    http1, http2 = ports["ORTHANC1"][1], ports["ORTHANC2"][1]
    wait_until(lambda: ct_uids <= orthanc_uids(http1), 60, "ORTHANC1 holds the CT")
    wait_until(lambda: echo_uids <= orthanc_uids(http2), 60, "ORTHANC2 holds cardio's")
    assert not echo_uids & orthanc_uids(http1)


@pytest.mark.slow
def test_dde_stack_runs_every_receiver(tmp_path: Path) -> None:
    """``dde stack up`` with a second receiver: the router part holds both ports, each
    receiver routes by its own rules into the stack's Orthancs, ``dde stack down`` ends it."""
    home = tmp_path / "home"
    main_port, cardio_port, web_port = free_port(), free_port(), free_port()
    ports = write_stack_home(home, main_port, cardio_port, web_port)
    try:
        started = dde(home, "stack", "up", "--detach")
        assert started.returncode == 0, started.stdout + started.stderr
        assert stack_status(home)["router"]["ports"] == [main_port, web_port, cardio_port]
        send_to_each_receiver(tmp_path, ports, main_port, cardio_port)
    finally:
        down = dde(home, "stack", "down")
    assert down.returncode == 0, down.stdout + down.stderr


@pytest.mark.slow
def test_two_nodes_behind_haproxy_serve_every_receiver() -> None:
    """``dde stack up --nodes 2`` with a second receiver: HAProxy has a public port for
    each receiver, every node listens for each, and each receiver's rules apply on every
    node (its rules file is the main state folder's)."""
    root = Path(tempfile.mkdtemp(prefix="dde-receivers-"))
    os.chmod(root, 0o755)  # PostgreSQL's own user reaches its socket folder in there
    home = root / "home"
    main_port, cardio_port, web_port = (free_port_run(3) for _ in range(3))
    ports = write_stack_home(home, main_port, cardio_port, web_port)
    try:
        started = dde(home, "stack", "up", "--nodes", "2", "--detach", timeout=180)
        assert started.returncode == 0, started.stdout + started.stderr
        parts = stack_status(home)
        assert parts["haproxy"]["ports"] == [main_port, web_port, cardio_port]
        assert parts["router-2"]["ports"] == [main_port + 2, web_port + 2, cardio_port + 2]
        for number in (1, 2):  # each node listens for cardio on its own port
            assert echoscu(cardio_port + number, "ANY", CARDIO_AET).returncode == 0
        send_to_each_receiver(root, ports, main_port, cardio_port)
    finally:
        dde(home, "stack", "down", timeout=120)
        kill_processes_naming(home)
        shutil.rmtree(root, ignore_errors=True)
