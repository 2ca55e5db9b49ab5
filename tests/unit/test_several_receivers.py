"""Several receiving AE titles and ports (``receivers:``): the settings and their checks,
each receiver's rules (own file or rules.yaml), the ``ReceivingPort`` and ``Receiver``
fields rules may test, and each receiver's own admission."""

from __future__ import annotations

import types
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner
from tests.support.webkit import AUTH, TOKEN, dicom_bytes, make_webkit
from tests.unit.test_router_rules import View, endpoints, header, make_router

from dde.cli import main
from dde.cli.stack_commands import stack
from dde.config import (
    MAIN_RECEIVER,
    ConfigError,
    Home,
    load_settings,
    parse_settings,
    settings_to_data,
    settings_to_yaml,
)
from dde.config_store import ConfigStore
from dde.dicom.engine.acceptance import RejectReason
from dde.receiving.access import check_association
from dde.routing.router import Origin
from dde.routing.rules import RulesError, parse_rules
from dde.runtime.core import restart_needed
from dde.stack import cluster, supervisor
from dde.stack.parts import Part, PartKind, router_ports
from dde.stack.supervisor import status
from dde.store.ledger import Ledger

CARDIO = {"name": "cardio", "ae_title": "DDE_CARDIO", "port": 11114,
          "allowed_calling_aets": ["ECHO_*"], "rules": "rules-cardio.yaml"}
NAMES = ["ORTHANC1", "ORTHANC2", "ORTHANC-PROBE"]
TO_ORTHANC2 = "rules:\n  - name: cardio-to-2\n    route: [ORTHANC2]\n"
TO_ORTHANC1 = "rules:\n  - name: all-to-1\n    route: [ORTHANC1]\n"


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for variable in ("DDE_AE_TITLE", "DDE_DICOM_PORT", "DDE_DICOM_HOST", "DDE_HOME"):
        monkeypatch.delenv(variable, raising=False)


# -- settings -------------------------------------------------------------------------

def test_without_receivers_the_main_receiver_is_the_only_one() -> None:
    settings = parse_settings({"receiver": {"ae_title": "ONLY", "port": 104}})
    [only] = settings.receiving_aes()
    assert (only.name, only.settings.ae_title, only.settings.port, only.rules) == \
        (MAIN_RECEIVER, "ONLY", 104, None)
    assert "receivers" not in settings_to_data(settings)  # dde.yaml reads as before
    assert "receivers" not in settings_to_yaml(parse_settings({}))


def test_an_entry_has_its_own_address_lists_tls_and_rules_and_shares_the_rest() -> None:
    settings = parse_settings({"receiver": {"max_associations": 7, "processes": 0},
                               "receivers": [CARDIO]})
    main, cardio = settings.receiving_aes()
    assert main.name == MAIN_RECEIVER and main.settings.allowed_calling_aets == []
    assert cardio.name == "cardio" and cardio.rules == "rules-cardio.yaml"
    assert (cardio.settings.ae_title, cardio.settings.port) == ("DDE_CARDIO", 11114)
    assert cardio.settings.allowed_calling_aets == ["ECHO_*"]
    assert cardio.settings.max_associations == 7 and cardio.settings.processes == 0
    assert settings.receiving_ae("cardio") == cardio
    assert settings.receiving_ae("nobody") is None
    assert settings_to_data(settings)["receivers"][0]["rules"] == "rules-cardio.yaml"


@pytest.mark.parametrize(("entry", "said"), [
    ({**CARDIO, "name": MAIN_RECEIVER}, "names used twice: main"),
    ({**CARDIO, "ae_title": "DYNAMIC_DICOM_MW"}, "AE titles used twice: DYNAMIC_DICOM_MW"),
    ({**CARDIO, "port": 11113}, "ports used twice: 11113"),
])
def test_names_ae_titles_and_ports_are_each_receivers_own(entry: dict[str, Any],
                                                          said: str) -> None:
    with pytest.raises(ConfigError, match=said):
        parse_settings({"receivers": [entry]})


@pytest.mark.parametrize(("change", "said"), [
    ({"name": "two words"}, "receivers.0.name"),
    ({"ae_title": "A" * 17}, "receivers.0.ae_title"),
    ({"allowed_source_ips": ["not-a-network"]}, "not an IP address or network"),
    ({"tls": {"enabled": True}}, "needs cert_file"),
    ({"processes": 2}, "receivers.0.processes"),  # a shared knob stays in receiver:
])
def test_a_bad_entry_is_refused_with_where_and_why(change: dict[str, Any], said: str) -> None:
    with pytest.raises(ConfigError, match=said):
        parse_settings({"receivers": [{**CARDIO, **change}]})


def test_port_zero_may_repeat_for_tests() -> None:
    settings = parse_settings({"receiver": {"port": 0},
                               "receivers": [{**CARDIO, "port": 0}]})
    assert [r.settings.port for r in settings.receiving_aes()] == [0, 0]


def test_a_change_of_receivers_waits_for_a_restart() -> None:
    before = parse_settings({})
    after = parse_settings({"receivers": [CARDIO]})
    assert restart_needed(before, after) == ["receivers"]


# -- admission per receiver -------------------------------------------------------------

def test_each_receiver_admits_by_its_own_lists() -> None:
    settings = parse_settings({"receiver": {"allowed_calling_aets": ["CT_*"]},
                               "receivers": [{**CARDIO, "require_called_aet": True}]})
    main, cardio = (r.settings for r in settings.receiving_aes())
    assert check_association(main, "CT_1", "X", "10.0.0.1") is None
    refused = check_association(cardio, "CT_1", "DDE_CARDIO", "10.0.0.1")
    assert refused is not None and refused.reason is RejectReason.CALLING_AE_NOT_RECOGNISED
    assert check_association(cardio, "ECHO_2", "DDE_CARDIO", "10.0.0.1") is None
    wrong_called = check_association(cardio, "ECHO_2", "DYNAMIC_DICOM_MW", "10.0.0.1")
    assert wrong_called is not None
    assert wrong_called.reason is RejectReason.CALLED_AE_NOT_RECOGNISED
    refused_main = check_association(main, "ECHO_2", "X", "10.0.0.1")
    assert refused_main is not None


# -- rules may test the receiver ---------------------------------------------------------

def test_rules_match_the_receiving_port_the_receiver_and_the_called_aet() -> None:
    rules = parse_rules(
        "rules:\n"
        "  - name: by-port\n    when: {ReceivingPort: '11114'}\n    route: [ORTHANC2]\n"
        "  - name: by-name\n    when: {Receiver: {in: [research]}}\n    route: [ORTHANC1]\n"
        "  - name: by-called\n    when: {CalledAET: 'DDE_*'}\n    route: [ORTHANC-PROBE]\n"
        "  - name: rest\n    route: {group: storage}\n", NAMES, {"storage", "probe"})
    router = make_router(rules)
    assert router.route(header(), View(), Origin(receiving_port=11114)).rule == "by-port"
    assert router.route(header(), View(), Origin(receiver="research")).rule == "by-name"
    assert router.route(header(), View(), Origin(called_aet="DDE_X")).rule == "by-called"
    assert router.route(header(), View(), Origin(receiving_port=11113)).rule == "rest"
    assert router.route(header(), View()).rule == "rest"  # no port: a web upload


def test_a_receiver_with_its_own_rules_routes_by_them_the_others_by_the_main_ones() -> None:
    main = parse_rules(TO_ORTHANC1, NAMES)
    cardio = parse_rules(TO_ORTHANC2, NAMES)
    ruleset = main.__class__(main.rules, main.mirror, (("cardio", cardio),))
    router = make_router(ruleset, endpoints())
    assert router.route(header(), View(), Origin(receiver="cardio")).destinations == \
        ("ORTHANC2",)
    assert router.route(header(), View(), Origin(receiver="main")).destinations == \
        ("ORTHANC1",)
    assert router.route(header(), View(), Origin(receiver="other")).destinations == \
        ("ORTHANC1",)
    assert ruleset.every() == (ruleset, cardio)


# -- the receivers' rules files -----------------------------------------------------------

@pytest.fixture
def store(tmp_path: Path) -> ConfigStore:
    home = Home(tmp_path / "home")
    home.ensure()
    home.config_file.write_text(yaml.safe_dump({"receivers": [CARDIO]}))
    return ConfigStore(home)


def test_a_receivers_rules_file_is_read_with_the_main_rules(store: ConfigStore) -> None:
    (store.home.root / "rules-cardio.yaml").write_text(TO_ORTHANC2)
    ruleset = store.ruleset(store.settings())
    assert [r.name for r in ruleset.rules] == ["default"]  # no rules.yaml: the default
    assert [r.name for r in ruleset.for_receiver("cardio").rules] == ["cardio-to-2"]
    assert ruleset.for_receiver(MAIN_RECEIVER) is ruleset


def test_a_missing_or_invalid_receivers_rules_file_is_a_config_error_naming_it(
        store: ConfigStore) -> None:
    with pytest.raises(ConfigError, match=r"rules-cardio.yaml \(rules of receiver cardio\)"):
        store.ruleset(store.settings())
    (store.home.root / "rules-cardio.yaml").write_text(
        "rules:\n  - name: x\n    route: [NOWHERE]\n")
    with pytest.raises(ConfigError, match="unknown endpoint 'NOWHERE'"):
        store.ruleset(store.settings())


def test_apply_rules_for_a_receiver_writes_its_file_only(store: ConfigStore) -> None:
    ruleset = store.apply_rules(TO_ORTHANC2, receiver="cardio")
    assert [r.name for r in ruleset.rules] == ["cardio-to-2"]
    assert (store.home.root / "rules-cardio.yaml").read_text() == TO_ORTHANC2
    assert not store.rules_path.exists()
    assert store.rules_text(store.settings(), "cardio") == TO_ORTHANC2
    assert store.rules_text(store.settings(), MAIN_RECEIVER) is None  # the default rule
    with pytest.raises(RulesError):
        store.apply_rules("rules:\n  - name: x\n    route: [NOWHERE]\n", receiver="cardio")
    assert (store.home.root / "rules-cardio.yaml").read_text() == TO_ORTHANC2


def test_apply_rules_for_a_receiver_without_a_file_or_unknown_says_so(
        store: ConfigStore) -> None:
    with pytest.raises(ConfigError, match="receiver 'main' has no rules file of its own"):
        store.apply_rules(TO_ORTHANC2, receiver=MAIN_RECEIVER)
    with pytest.raises(ConfigError, match="no receiver 'nobody' .*main, cardio"):
        store.apply_rules(TO_ORTHANC2, receiver="nobody")


def test_a_change_of_a_receivers_rules_file_changes_the_fingerprint(
        store: ConfigStore) -> None:
    path = store.home.root / "rules-cardio.yaml"
    path.write_text(TO_ORTHANC2)
    fresh = ConfigStore(store.home)  # never asked for the rules (a receiver process's)
    before = fresh.fingerprint()
    path.write_text(TO_ORTHANC1 + "# changed\n")
    assert fresh.fingerprint() != before


def test_removing_an_endpoint_a_receivers_rules_need_is_refused(store: ConfigStore) -> None:
    (store.home.root / "rules-cardio.yaml").write_text(TO_ORTHANC2)

    def without_orthanc2(settings: Any) -> Any:
        return settings.model_copy(update={"endpoints": [
            e for e in settings.endpoints if e.name != "ORTHANC2"]})

    with pytest.raises(ConfigError, match="would break the rules of .*rules-cardio.yaml"):
        store.update(without_orthanc2)


# -- the stack --------------------------------------------------------------------------

def test_the_router_parts_ports_list_every_receivers_port() -> None:
    settings = parse_settings({"receivers": [CARDIO]})
    assert router_ports(settings) == (11113, 8080, 11114)
    part = Part("router", router_ports(settings), Path("l"), Path("p"), None,
                more_receivers=(("cardio", 11114),))
    assert (part.dicom_port, part.web_port) == (11113, 8080)
    assert part.port_setting(11114) == "the port of receivers entry cardio"
    no_web = parse_settings({"receivers": [CARDIO], "web": {"enabled": False}})
    part = Part("router", router_ports(no_web), Path("l"), Path("p"), None,
                more_receivers=(("cardio", 11114),))
    assert (part.ports, part.web_port) == ((11113, 11114), None)


# -- the API ------------------------------------------------------------------------------

def test_the_api_shows_applies_and_explains_a_receivers_rules(tmp_path: Path) -> None:
    kit = make_webkit(tmp_path, parse_settings({"receivers": [CARDIO]}))
    client = kit.client
    put = client.put("/api/rules", params={"receiver": "cardio"}, content=TO_ORTHANC2,
                     headers={**AUTH, "content-type": "application/yaml"})
    assert put.status_code == 200, put.text
    assert put.json()["rules"] == ["cardio-to-2"]
    shown = client.get("/api/rules", params={"receiver": "cardio"}, headers=AUTH).json()
    assert (shown["text"], shown["rules"]) == (TO_ORTHANC2, ["cardio-to-2"])
    assert client.get("/api/rules", headers=AUTH).json()["rules"] == ["default"]
    assert client.get("/api/rules", params={"receiver": "x"}, headers=AUTH).status_code == 404
    refused = client.put("/api/rules", params={"receiver": "main"}, content=TO_ORTHANC2,
                         headers={**AUTH, "content-type": "application/yaml"})
    assert refused.status_code == 409 and "no rules file of its own" in refused.text

    raw, _ = dicom_bytes()
    decision = client.post("/api/route/explain", files={"file": ("x.dcm", raw)},
                           data={"receiver": "cardio"}, headers=AUTH)
    assert decision.status_code == 200, decision.text
    assert decision.json()["rule"] == "cardio-to-2"
    assert client.post("/api/route/explain", files={"file": ("x.dcm", raw)},
                       data={"receiver": "x"}, headers=AUTH).status_code == 422


def test_the_dashboard_lists_every_receiver(tmp_path: Path) -> None:
    kit = make_webkit(tmp_path, parse_settings({"receivers": [CARDIO]}))
    assert kit.client.post("/login", json={"token": TOKEN}).status_code == 200
    html = kit.client.get("/").text
    assert "DYNAMIC_DICOM_MW on port 11113 · cardio: DDE_CARDIO on port 11114" in html


def test_dde_stack_status_lists_every_receivers_port(tmp_path: Path) -> None:
    home = Home(tmp_path / "home")
    home.ensure()
    parts = status(home, parse_settings({"receivers": [CARDIO]}))
    assert parts["router"]["ports"] == [11113, 8080, 11114]


def test_the_cli_applies_shows_and_explains_a_receivers_rules(store: ConfigStore,
                                                              tmp_path: Path) -> None:
    rules = tmp_path / "cardio.yaml"
    rules.write_text(TO_ORTHANC2)
    home = ["--home", str(store.home.root)]
    applied = CliRunner().invoke(main, [*home, "rules", "apply", str(rules),
                                        "--receiver", "cardio"])
    assert applied.exit_code == 0, applied.output
    assert "applied 1 rules from" in applied.output and "for receiver cardio" in applied.output
    shown = CliRunner().invoke(main, [*home, "rules", "show", "--receiver", "cardio"])
    assert shown.output == TO_ORTHANC2
    refused = CliRunner().invoke(main, [*home, "rules", "apply", str(rules),
                                        "--receiver", "main"])
    assert refused.exit_code != 0 and "no rules file of its own" in refused.output
    assert "Traceback" not in refused.output

    Ledger(store.home.database).close()  # route explain reads the published picture
    raw, _ = dicom_bytes()
    (tmp_path / "x.dcm").write_bytes(raw)
    explained = CliRunner().invoke(main, [*home, "route", "explain", str(tmp_path / "x.dcm"),
                                          "--receiver", "cardio", "--json"])
    assert explained.exit_code == 0, explained.output
    assert '"rule": "cardio-to-2"' in explained.output
    unknown = CliRunner().invoke(main, [*home, "route", "explain", str(tmp_path / "x.dcm"),
                                        "--receiver", "nobody"])
    assert unknown.exit_code != 0 and "no receiver 'nobody'" in unknown.output


def test_the_readme_example_is_valid(tmp_path: Path) -> None:
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    section = readme.split("### Several receiving AE titles and ports", 1)[1]
    blocks = [b.split("```", 1)[0] for b in section.split("```yaml\n")[1:4]]
    settings = parse_settings(yaml.safe_load(blocks[0]))
    assert [r.name for r in settings.receiving_aes()] == ["main", "cardio", "research"]
    names = [e.name for e in settings.endpoints]
    groups = {g for e in settings.endpoints for g in e.groups}
    assert parse_rules(blocks[1], names, groups).rules[0].name == "cardio-to-2"
    assert [r.name for r in parse_rules(blocks[2], names, groups).rules] == \
        ["research-to-2", "default"]


# -- several nodes --------------------------------------------------------------------------

CLUSTER_YAML = ("receiver:\n  port: 21113\nweb:\n  port: 28080\nreceivers:\n"
                "  - {name: cardio, ae_title: DDE_CARDIO, port: 21123, "
                "rules: rules-cardio.yaml}\nstack:\n  orthancs: []\n")


def test_every_node_listens_for_every_receiver_behind_haproxy(tmp_path: Path) -> None:
    home = Home(tmp_path / "home")
    home.root.mkdir()
    home.config_file.write_text(CLUSTER_YAML)
    cluster.set_nodes(home, 2)
    settings = load_settings(home)
    parts = {p.name: p for p in supervisor.stack_parts(home, settings)}
    assert parts["router-2"].ports == (21115, 28082, 21125)
    assert parts["router-2"].port_setting(21125) == \
        "the port of receivers entry cardio (+ the node's number)"
    assert parts["haproxy"].ports == (21113, 28080, 21123)
    nodes = [p for p in parts.values() if p.kind is PartKind.ROUTER]
    text = cluster.haproxy_config(settings, nodes)
    assert "frontend dicom_cardio\n    bind 0.0.0.0:21123" in text
    assert "server router-1 127.0.0.1:21124 check" in text
    assert "server router-2 127.0.0.1:21125 check" in text

    cluster.write_node_home(home, settings, parts["router-2"])
    assert parts["router-2"].home is not None
    node = load_settings(Home(parts["router-2"].home))
    [cardio] = node.receivers
    assert (cardio.host, cardio.port) == ("127.0.0.1", 21125)
    assert cardio.rules == str(home.root / "rules-cardio.yaml")  # the one file for all


def test_a_node_port_on_another_receivers_port_is_refused(tmp_path: Path) -> None:
    home = Home(tmp_path / "home")
    home.root.mkdir()
    home.config_file.write_text(CLUSTER_YAML.replace("21123", "21114"))
    cluster.set_nodes(home, 2)
    result = CliRunner().invoke(stack, ["up", "--detach"],
                                obj=types.SimpleNamespace(home=home))
    assert result.exit_code == 1
    assert "port 21115 is configured for both router-1 and router-2" in result.output
