"""The container deployment (``Dockerfile``, ``compose.yaml``, ``deploy/docker/dde.yaml``),
checked without a Docker engine: the router's configuration is valid for the router itself,
every endpoint is a Compose service with the same AE title and ports, and the published ports
and AE titles are the reference stack's. ``docker-compose config`` (Debian's docker-compose,
installed by ``make test``) validates the Compose file offline."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from dde.config import Settings, parse_settings

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "compose.yaml"
DOCKERFILE = ROOT / "Dockerfile"
ROUTER_CONFIG = ROOT / "deploy" / "docker" / "dde.yaml"
ORTHANCS = {"orthanc1", "orthanc2", "orthanc-probe"}


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    document = yaml.safe_load(COMPOSE.read_text())
    assert isinstance(document, dict)
    return document


def router_settings() -> Settings:
    return parse_settings(yaml.safe_load(ROUTER_CONFIG.read_text()))


def test_the_services_are_the_reference_stack(compose: dict[str, Any]) -> None:
    services = compose["services"]

    assert set(services) == ORTHANCS | {"router"}
    for name in ORTHANCS:
        assert services[name]["image"].startswith("orthancteam/orthanc:"), name
    assert set(services["router"]["depends_on"]) == ORTHANCS
    assert set(services["router"]["ports"]) == {"11113:11113", "8080:8080"}
    assert {p for n in ORTHANCS for p in services[n]["ports"]} == {
        "8042:8042", "8043:8042", "8044:8042"}


def test_the_router_configuration_is_valid_and_the_reference_one() -> None:
    settings = router_settings()
    reference = Settings()

    assert settings.receiver.ae_title == reference.receiver.ae_title == "DYNAMIC_DICOM_MW"
    assert settings.receiver.port == 11113 and settings.web.port == 8080
    assert settings.receiver.host == settings.web.host == "0.0.0.0"
    assert [(e.name, e.aet, e.groups) for e in settings.endpoints] == [
        (e.name, e.aet, e.groups) for e in reference.endpoints]
    assert settings.routing.mirror == reference.routing.mirror


def test_every_endpoint_is_a_service_with_its_ae_title_and_ports(
        compose: dict[str, Any]) -> None:
    services = compose["services"]
    for endpoint in router_settings().endpoints:
        service = services[endpoint.host]
        environment = service["environment"]
        assert environment["ORTHANC__DICOM_AET"] == endpoint.aet, endpoint.name
        assert environment["ORTHANC__NAME"] == endpoint.name, endpoint.name
        assert int(environment["ORTHANC__DICOM_PORT"]) == endpoint.port, endpoint.name
        url = urlsplit(endpoint.url or "")
        assert url.hostname == endpoint.host, endpoint.name
        assert int(environment["ORTHANC__HTTP_PORT"]) == url.port, endpoint.name
        # The router must be able to store into it and to read its load over HTTP.
        assert environment["ORTHANC__DICOM_ALWAYS_ALLOW_STORE"] == "true"
        assert environment["ORTHANC__REMOTE_ACCESS_ALLOWED"] == "true"
        assert environment["ORTHANC__AUTHENTICATION_ENABLED"] == "false"


@pytest.mark.parametrize(("path", "router_host"), [
    (COMPOSE, "router"), (ROOT / "deploy" / "docker" / "compose-cluster.yaml", "haproxy")])
def test_every_orthanc_knows_the_router_for_storage_commitment(path: Path,
                                                             router_host: str) -> None:
    """Orthanc answers storage commitment only to a modality it lists, and reports to it:
    the router's AE title and DICOM port, at the service that receives for it."""
    services = yaml.safe_load(path.read_text())["services"]
    receiver = router_settings().receiver
    assert router_host in services
    for name, service in services.items():
        if not str(service.get("image", "")).startswith("orthancteam/orthanc:"):
            continue
        modalities = json.loads(service["environment"]["ORTHANC__DICOM_MODALITIES"])
        assert modalities == {"router": [receiver.ae_title, router_host, receiver.port]}, name


def test_the_state_is_kept_in_volumes(compose: dict[str, Any]) -> None:
    services = compose["services"]
    named = set(compose["volumes"])
    assert "router-state:/var/lib/dde" in services["router"]["volumes"]
    assert services["router"]["environment"]["DDE_HOME"] == "/var/lib/dde"
    for name in ORTHANCS:
        (volume,) = services[name]["volumes"]
        assert volume.split(":")[0] in named and volume.endswith(":/var/lib/orthanc/db")


def test_the_image_serves_the_reference_configuration_from_its_state_folder() -> None:
    lines = [line.strip() for line in DOCKERFILE.read_text().splitlines()]

    assert "EXPOSE 11113 8080" in lines
    assert "COPY deploy/docker/dde.yaml ./dde.yaml" in lines
    assert "DDE_HOME=/var/lib/dde \\" in lines and "TCP_NODELAY=1" in lines
    (command,) = [line for line in lines if line.startswith("CMD [\"sh\"")]
    assert 'cp /opt/dde/dde.yaml \\"$DDE_HOME/dde.yaml\\"; exec dde serve' in command
    assert any(line.startswith("USER ") and "root" not in line for line in lines)
    assert "&& install -d -o dde -g dde -m 0700 /var/lib/dde-spool" in lines  # shared spool


@pytest.mark.parametrize("name", ["compose.yaml", "deploy/docker/compose-cluster.yaml"])
def test_docker_compose_accepts_the_file(name: str) -> None:
    tool = shutil.which("docker-compose")
    assert tool is not None, "docker-compose missing: `make test` installs Debian's package"
    result = subprocess.run([tool, "-f", str(ROOT / name), "config", "--quiet"],
                            capture_output=True, text=True, timeout=60, cwd=ROOT)

    assert result.returncode == 0, result.stdout + result.stderr


# -- the cluster: two nodes behind HAProxy on one PostgreSQL ledger -------------------------
CLUSTER = ROOT / "deploy" / "docker" / "compose-cluster.yaml"
HAPROXY_CONFIG = ROOT / "deploy" / "haproxy" / "haproxy.cfg"
NODES = {"router-1", "router-2"}


@pytest.fixture(scope="module")
def cluster() -> dict[str, Any]:
    document = yaml.safe_load(CLUSTER.read_text())
    assert isinstance(document, dict)
    return document


def test_the_cluster_is_the_reference_stack_with_two_nodes_postgresql_and_haproxy(
        cluster: dict[str, Any], compose: dict[str, Any]) -> None:
    services = cluster["services"]

    assert set(services) == ORTHANCS | NODES | {"postgres", "haproxy"}
    for name in ORTHANCS:  # the same PACS as the single-node deployment (the router is
        # reached through HAProxy: see test_every_orthanc_knows_the_router_…)
        here, there = (dict(s[name]["environment"]) for s in (services, compose["services"]))
        here.pop("ORTHANC__DICOM_MODALITIES"), there.pop("ORTHANC__DICOM_MODALITIES")
        assert here == there
        assert services[name]["ports"] == compose["services"][name]["ports"]
    assert set(services["haproxy"]["ports"]) == {"11113:11113", "8080:8080"}
    assert not any("ports" in services[name] for name in NODES)  # only through HAProxy
    assert services["postgres"]["image"].startswith("postgres:")


def test_each_node_is_a_node_of_one_ledger_and_one_spool(
        cluster: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    services = cluster["services"]
    names, folders, urls = set(), set(), set()
    for node in NODES:
        environment = services[node]["environment"]
        for variable, value in environment.items():
            if variable.startswith("DDE_STORE") or variable == "DDE_SPOOL_FOLDER":
                monkeypatch.setenv(variable, value.replace("${DDE_DB_PASSWORD:-dde}", "dde"))
        settings = router_settings()  # the image's configuration, as that node reads it
        assert settings.store.backend.value == "postgresql"
        names.add(settings.store.node)
        folders.add(settings.spool.folder)
        urls.add(settings.store.url)
        assert f"shared-spool:{settings.spool.folder}" in services[node]["volumes"]
        assert services[node]["volumes"][0] == f"{node}-state:/var/lib/dde"  # its own
    assert len(names) == 2 and len(folders) == 1 and len(urls) == 1
    assert urlsplit(urls.pop()).hostname == "postgres"


def test_haproxy_sends_dicom_and_web_to_every_node() -> None:
    servers = [line.split() for line in HAPROXY_CONFIG.read_text().splitlines()
               if line.strip().startswith("server ")]
    targets = {(fields[1], fields[2]) for fields in servers}

    assert targets == {(n, f"{n}:{port}") for n in NODES for port in (11113, 8080)}
    result = subprocess.run(["/usr/sbin/haproxy", "-c", "-f", str(HAPROXY_CONFIG)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr

