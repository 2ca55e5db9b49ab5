"""The receiver's allow-list decisions (pure) and their settings."""

from __future__ import annotations

from pathlib import Path

import pytest

from dde.config import ConfigError, ReceiverSettings, parse_settings
from dde.receiving.access import (
    RejectReason,
    aet_allowed,
    check_association,
    ip_allowed,
    server_tls_context,
)


@pytest.mark.parametrize(("aet", "patterns", "allowed"), [
    ("ANY", [], True),
    ("CT_1", ["CT_1"], True),
    ("CT_1 ", ["CT_1"], True),
    ("ct_1", ["CT_1"], False),
    ("CT_12", ["CT_?"], False),
    ("CT_1", ["CT_?"], True),
    ("WS_READING_ROOM", ["MR*", "WS*"], True),
    ("MODALITY", ["MR*", "WS*"], False),
    ("X", ["*"], True),
    ("X", [""], False),
])
def test_aet_allowed(aet: str, patterns: list[str], allowed: bool) -> None:
    assert aet_allowed(aet, patterns) is allowed


@pytest.mark.parametrize(("address", "networks", "allowed"), [
    ("10.1.2.3", [], True),
    ("10.1.2.3", ["10.0.0.0/8"], True),
    ("10.1.2.3", ["10.1.2.4"], False),
    ("10.1.2.3", ["192.168.0.0/16", "10.1.2.3"], True),
    ("::ffff:10.1.2.3", ["10.0.0.0/8"], True),
    ("2001:db8::5", ["2001:db8::/32"], True),
    ("2001:db8::5", ["10.0.0.0/8"], False),
    ("not-an-ip", ["0.0.0.0/0"], False),
])
def test_ip_allowed(address: str, networks: list[str], allowed: bool) -> None:
    assert ip_allowed(address, networks) is allowed


def test_check_association_names_the_rule() -> None:
    settings = ReceiverSettings(ae_title="ROUTER", allowed_calling_aets=["CT*"],
                                allowed_source_ips=["10.0.0.0/8"], require_called_aet=True)
    assert check_association(settings, "CT1", "ROUTER", "10.0.0.1") is None
    ip = check_association(settings, "CT1", "ROUTER", "192.0.2.1")
    assert ip is not None and ip.rule == "allowed_source_ips"
    assert ip.reason is RejectReason.NO_REASON_GIVEN
    calling = check_association(settings, "MR1", "ROUTER", "10.0.0.1")
    assert calling is not None and calling.reason is RejectReason.CALLING_AE_NOT_RECOGNISED
    called = check_association(settings, "CT1", "OTHER", "10.0.0.1")
    assert called is not None and called.reason is RejectReason.CALLED_AE_NOT_RECOGNISED
    assert called.rule == "require_called_aet"
    lenient = ReceiverSettings(ae_title="ROUTER")
    assert check_association(lenient, "X", "OTHER", "192.0.2.1") is None


def test_reasons_are_the_standard_codes() -> None:
    assert int(RejectReason.NO_REASON_GIVEN) == 1
    assert int(RejectReason.CALLING_AE_NOT_RECOGNISED) == 3
    assert int(RejectReason.CALLED_AE_NOT_RECOGNISED) == 7


def test_settings_validate_networks_and_tls() -> None:
    with pytest.raises(ConfigError, match="allowed_source_ips"):
        parse_settings({"receiver": {"allowed_source_ips": ["10.0.0.0/33"]}},
                       environment=False)
    with pytest.raises(ConfigError, match="cert_file"):
        parse_settings({"receiver": {"tls": {"enabled": True}}}, environment=False)
    with pytest.raises(ConfigError, match="ca_file"):
        parse_settings({"receiver": {"tls": {"enabled": True, "cert_file": "c.pem",
                                             "require_client_cert": True}}},
                       environment=False)


def test_tls_context_off_by_default_and_bad_files_fail(tmp_path: Path) -> None:
    assert server_tls_context(ReceiverSettings().tls) is None
    settings = parse_settings({"receiver": {"tls": {
        "enabled": True, "cert_file": str(tmp_path / "missing.pem")}}}, environment=False)
    with pytest.raises(OSError, match="receiver TLS: cannot load cert_file .*missing.pem"):
        server_tls_context(settings.receiver.tls)
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a certificate")
    settings = parse_settings({"receiver": {"tls": {
        "enabled": True, "cert_file": str(garbage)}}}, environment=False)
    with pytest.raises(OSError, match="garbage.pem"):
        server_tls_context(settings.receiver.tls)
