"""Issue item 13: an endpoint's address is a PACS, not anything a URL can name: http or
https only, no control characters, and no link-local or cloud metadata address unless
``security.allow_link_local_endpoints`` says so; for the API, the CLI and a hand-edited
``dde.yaml`` alike (the validation is in :mod:`dde.config`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import ValidationError
from tests.support.webkit import AUTH, WebKit, make_webkit

from dde.config import (
    ConfigError,
    EndpointSettings,
    Home,
    Settings,
    forbidden_host,
    load_settings,
    parse_settings,
)

METADATA_URLS = [
    "http://169.254.169.254/latest/meta-data/",
    "http://[fe80::1]:8042/",
    "http://[::ffff:169.254.169.254]/",
    "http://metadata.google.internal/computeMetadata/v1/",
    "http://METADATA.GOOGLE.INTERNAL./",
    "http://2852039166/",
    "http://0xa9fea9fe/",
    "http://[fd00:ec2::254]/",
    "http://100.100.100.200/latest/meta-data/",
]
METADATA_HOSTS = ["169.254.169.254", "169.254.10.20", "fe80::1", "metadata.google.internal",
                  "2852039166"]
BAD_URLS = ["file:///etc/passwd", "gopher://127.0.0.1:70/_x", "ftp://pacs/", "javascript:1",
            "http://pacs\n:8042", "http://pacs:8042/\r\nX: y", "http:///nohost"]
BAD_HOSTS = ["pacs\nevil", "pacs evil", "pacs\t", "", "pacs/../x", "\x00pacs"]


def endpoint(**fields: Any) -> dict[str, Any]:
    return {"name": "PACS", "aet": "PACS", "port": 104, **fields}


def settings_with(*endpoints: dict[str, Any], allow: bool | None = None) -> Settings:
    raw: dict[str, Any] = {"endpoints": list(endpoints)}
    if allow is not None:
        raw["security"] = {"allow_link_local_endpoints": allow}
    return parse_settings(raw, environment=False)


@pytest.mark.parametrize("url", BAD_URLS)
def test_a_url_is_http_or_https_without_control_characters(url: str) -> None:
    with pytest.raises(ValidationError):
        EndpointSettings(name="PACS", aet="PACS", url=url)
    with pytest.raises(ConfigError, match="url"):
        settings_with(endpoint(url=url))


@pytest.mark.parametrize("host", BAD_HOSTS)
def test_a_host_has_no_control_characters_or_spaces(host: str) -> None:
    with pytest.raises(ValidationError):
        EndpointSettings(name="PACS", aet="PACS", host=host)


def test_an_aet_or_group_with_a_newline_is_refused() -> None:
    with pytest.raises(ValidationError):
        EndpointSettings(name="PACS", aet="PA\nCS")
    with pytest.raises(ValidationError):
        EndpointSettings(name="PACS", aet="PACS", groups=["storage\nx"])


@pytest.mark.parametrize("url", METADATA_URLS)
def test_link_local_and_metadata_urls_are_refused_by_default(url: str) -> None:
    with pytest.raises(ConfigError, match="allow_link_local_endpoints"):
        settings_with(endpoint(url=url))
    with pytest.raises(ConfigError, match="allow_link_local_endpoints"):
        settings_with(endpoint(url=url), allow=False)
    assert settings_with(endpoint(url=url), allow=True).endpoints[0].url == url


@pytest.mark.parametrize("host", METADATA_HOSTS)
def test_link_local_and_metadata_hosts_are_refused_by_default(host: str) -> None:
    with pytest.raises(ConfigError, match="allow_link_local_endpoints"):
        settings_with(endpoint(host=host))
    assert settings_with(endpoint(host=host), allow=True).endpoints[0].host == host


@pytest.mark.parametrize("host", ["127.0.0.1", "10.1.2.3", "192.168.7.20", "::1", "pacs",
                                  "pacs.hospital.example", "metadata.hospital.example",
                                  "2001:db8::1"])
def test_ordinary_addresses_pass_and_names_are_not_resolved(host: str) -> None:
    assert forbidden_host(host) is None
    settings = settings_with(endpoint(host=host, url=f"https://{host}:8042/"
                                      if ":" not in host else f"https://[{host}]:8042/"))
    assert settings.endpoints[0].host == host


def test_the_defaults_pass_and_refuse_link_local() -> None:
    settings = Settings()
    assert settings.security.allow_link_local_endpoints is False


def test_a_hand_edited_dde_yaml_with_a_metadata_url_is_refused(tmp_path: Path) -> None:
    home = Home(tmp_path)
    home.ensure()
    home.config_file.write_text(yaml.safe_dump({"endpoints": [endpoint(
        url="http://169.254.169.254/latest/meta-data/")]}))
    with pytest.raises(ConfigError, match="169.254.169.254"):
        load_settings(home, environment=False)


@pytest.fixture
def kit(tmp_path: Path) -> WebKit:
    return make_webkit(tmp_path)


@pytest.mark.parametrize("fields", [
    {"url": "http://169.254.169.254/latest/meta-data/"},
    {"url": "file:///etc/passwd"},
    {"url": "gopher://127.0.0.1:70/"},
    {"host": "pacs\nORTHANC9 dicom"},
    {"host": "metadata.google.internal"},
])
def test_the_api_refuses_them_with_422_and_writes_nothing(kit: WebKit,
                                                          fields: dict[str, Any]) -> None:
    before = kit.services.home.config_file.read_text()
    response = kit.client.post("/api/endpoints", headers=AUTH, json={
        "name": "EVIL", "aet": "EVIL", "port": 104, **fields})
    assert response.status_code == 422, response.text
    assert response.json()["error"] == "validation_error"
    assert kit.services.home.config_file.read_text() == before
    patched = kit.client.patch("/api/endpoints/ORTHANC1", headers=AUTH, json=fields)
    assert patched.status_code == 422, patched.text
    assert kit.services.home.config_file.read_text() == before


def test_the_api_accepts_a_link_local_pacs_when_the_setting_allows_it(tmp_path: Path) -> None:
    kit = make_webkit(tmp_path, settings_with(
        endpoint(name="ORTHANC1", aet="ORTHANC1", groups=["storage"]),
        endpoint(name="ORTHANC-PROBE", aet="ORTHANC-PROBE", groups=["probe"]), allow=True))
    response = kit.client.post("/api/endpoints", headers=AUTH, json={
        "name": "LINKLOCAL", "aet": "LINKLOCAL", "host": "169.254.7.7", "port": 104})
    assert response.status_code == 201, response.text
