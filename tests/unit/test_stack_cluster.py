"""``dde stack`` with several nodes, without starting any process: the parts, dde.yaml's
``stack.nodes`` and ``store``, the nodes' state folders, HAProxy's configuration."""

from __future__ import annotations

import types
from pathlib import Path

import yaml
from click.testing import CliRunner

from dde.cli.stack_commands import stack
from dde.config import Home, StoreBackend, load_settings
from dde.stack import cluster, supervisor
from dde.stack.parts import PartKind


def home_with(tmp_path: Path, text: str = "") -> Home:
    home = Home(tmp_path / "home")
    home.root.mkdir()
    home.config_file.write_text(text or "# my comment\nreceiver:\n  port: 21113\n")
    return home


def test_one_node_is_todays_stack(tmp_path: Path) -> None:
    home = home_with(tmp_path)
    names = [p.name for p in supervisor.stack_parts(home, load_settings(home))]
    assert names == ["ORTHANC1", "ORTHANC2", "ORTHANC-PROBE", "router"]


def test_set_nodes_writes_nodes_and_the_stacks_postgresql_keeping_comments(
        tmp_path: Path) -> None:
    home = home_with(tmp_path)
    said = cluster.set_nodes(home, 3)
    assert said[0] == "stack.nodes: 3" and "PostgreSQL" in said[1]
    text = home.config_file.read_text()
    assert "# my comment" in text
    settings = load_settings(home)
    assert settings.stack.nodes == 3
    assert settings.store.backend is StoreBackend.POSTGRESQL
    assert settings.store.url == cluster.managed_url(home)
    assert f"host={home.root}/postgres/socket" in settings.store.url
    assert cluster.set_nodes(home, 3) == []  # nothing to change
    assert cluster.set_nodes(home, 2) == ["stack.nodes: 2"]  # the ledger stays


def test_a_ledger_elsewhere_is_kept_and_not_run_by_the_stack(tmp_path: Path) -> None:
    home = home_with(tmp_path, "store:\n  backend: postgresql\n"
                               "  url: postgresql://dde@db.example/dde\n")
    cluster.set_nodes(home, 2)
    settings = load_settings(home)
    assert settings.store.url == "postgresql://dde@db.example/dde"
    names = [p.name for p in supervisor.stack_parts(home, settings)]
    assert "postgresql" not in names
    assert names[-3:] == ["router-1", "router-2", "haproxy"]


def test_the_parts_of_three_nodes(tmp_path: Path) -> None:
    home = home_with(tmp_path, "receiver:\n  port: 21113\nweb:\n  port: 28080\n")
    cluster.set_nodes(home, 3)
    parts = supervisor.stack_parts(home, load_settings(home))
    by_name = {p.name: p for p in parts}
    assert list(by_name) == ["ORTHANC1", "ORTHANC2", "ORTHANC-PROBE", "postgresql",
                             "router-1", "router-2", "router-3", "haproxy"]
    assert by_name["haproxy"].ports == (21113, 28080)
    assert by_name["router-2"].ports == (21115, 28082)
    assert by_name["router-2"].home == home.root / "nodes" / "router-2"
    assert by_name["postgresql"].ports == ()
    assert by_name["postgresql"].kind is PartKind.POSTGRESQL


def test_a_node_port_taken_by_an_orthanc_is_refused(tmp_path: Path) -> None:
    home = home_with(tmp_path, "receiver:\n  port: 4241\n")  # router-1 would take 4242
    cluster.set_nodes(home, 2)
    result = CliRunner().invoke(stack, ["up", "--detach"], obj=types.SimpleNamespace(home=home))
    assert result.exit_code == 1
    assert "port 4242 is configured for both" in result.output


def test_a_node_state_folder_is_the_main_one_with_its_own_ports(tmp_path: Path) -> None:
    home = home_with(tmp_path, "receiver:\n  port: 21113\n  host: 0.0.0.0\n"
                               "endpoints:\n  - {name: PACS, aet: PACS, host: pacs, port: 104,"
                               " password: s3cret, kind: orthanc-rest, username: dde, url: 'http://pacs:8042'}\n"
                               "stack:\n  orthancs: []\n")
    (home.root / "rules.yaml").write_text("rules:\n  - name: all\n    route: {group: storage}\n")
    cluster.set_nodes(home, 2)
    settings = load_settings(home)
    node = next(p for p in supervisor.stack_parts(home, settings) if p.name == "router-2")
    cluster.write_node_home(home, settings, node)
    assert node.home is not None
    written = yaml.safe_load((node.home / "dde.yaml").read_text())
    assert written["receiver"] == {"port": 21115, "host": "127.0.0.1"}
    assert written["store"] == {"backend": "postgresql", "url": cluster.managed_url(home),
                                "node": "router_2"}
    assert written["spool"]["folder"] == str(home.spool_dir)
    assert written["endpoints"][0]["password"] == "s3cret"  # as the user wrote it
    assert "stack" not in written
    assert (node.home / "rules.yaml").read_text() == (home.root / "rules.yaml").read_text()
    assert (node.home / "api-token").read_text() == (home.root / "api-token").read_text()
    assert (node.home / "dde.yaml").stat().st_mode & 0o077 == 0  # passwords: private
    loaded = load_settings(Home(node.home))
    assert loaded.store.node == "router_2" and loaded.receiver.port == 21115


def test_haproxy_spreads_dicom_and_web_over_the_nodes_with_health_checks(
        tmp_path: Path) -> None:
    home = home_with(tmp_path, "receiver:\n  port: 21113\nweb:\n  port: 28080\n")
    cluster.set_nodes(home, 2)
    settings = load_settings(home)
    nodes = [p for p in supervisor.stack_parts(home, settings) if p.kind is PartKind.ROUTER]
    text = cluster.haproxy_config(settings, nodes)
    assert "bind 0.0.0.0:21113" in text and "bind 0.0.0.0:28080" in text
    assert "server router-1 127.0.0.1:21114 check" in text
    assert "server router-2 127.0.0.1:28082 check" in text
    assert "option httpchk GET /healthz" in text
    assert "mode tcp" in text and "balance leastconn" in text


def test_status_lists_every_part_of_the_cluster(tmp_path: Path) -> None:
    home = home_with(tmp_path)
    cluster.set_nodes(home, 2)
    parts = supervisor.status(home, load_settings(home))
    assert set(parts) >= {"postgresql", "router-1", "router-2", "haproxy"}
    assert all(info == {**info, "pid": None, "running": False} for info in parts.values())


def test_up_with_nodes_says_what_it_wrote(tmp_path: Path) -> None:
    home = home_with(tmp_path, "receiver:\n  port: 0\n")  # refused before anything starts
    result = CliRunner().invoke(stack, ["up", "--nodes", "2", "--detach"],
                                obj=types.SimpleNamespace(home=home))
    assert "dde.yaml now has stack.nodes: 2" in result.output
    assert "2 router nodes behind HAProxy" in result.output
    assert result.exit_code == 1 and "must be a fixed port" in result.output
