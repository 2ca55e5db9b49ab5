"""The container deployment (``Dockerfile``, ``compose.yaml``, ``deploy/docker/dde.yaml``),
checked without a Docker engine: the router's configuration is valid for the router itself,
every endpoint is a Compose service with the same AE title and ports, and the published ports
and AE titles are the reference stack's. ``docker-compose config`` (Debian's docker-compose,
installed by ``make test``) validates the Compose file offline."""

from __future__ import annotations

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


def test_docker_compose_accepts_the_file() -> None:
    tool = shutil.which("docker-compose")
    assert tool is not None, "docker-compose missing: `make test` installs Debian's package"
    result = subprocess.run([tool, "-f", str(COMPOSE), "config", "--quiet"],
                            capture_output=True, text=True, timeout=60, cwd=ROOT)

    assert result.returncode == 0, result.stdout + result.stderr
