"""The stack's files and bookkeeping, without starting any process."""

from __future__ import annotations

import json
import os
import socket
import sys
import threading
import time
import types
from pathlib import Path

import click
import pytest
import yaml
from click.testing import CliRunner

from dde.cli.stack_commands import stack
from dde.config import Home, load_settings
from dde.stack import supervisor
from dde.stack.errors import StackError
from dde.stack.layout import stack_orthancs
from dde.stack.orthanc import read_orthanc_config, render_orthanc_config, write_orthanc_config
from dde.stack.process import (
    PidRecord,
    is_running,
    offset_of_last_lines,
    port_in_use,
    read_pid_file,
    write_pid_file,
)

PARTS = ["ORTHANC1", "ORTHANC2", "ORTHANC-PROBE", "router"]


def test_rendered_config_is_an_open_local_pacs(tmp_path: Path) -> None:
    config = render_orthanc_config("ORTHANC1", "ORTHANC1", 4242, 8042, tmp_path / "db")

    assert config["Name"] == "ORTHANC1"
    assert config["DicomAet"] == "ORTHANC1"
    assert (config["DicomPort"], config["HttpPort"]) == (4242, 8042)
    assert config["StorageDirectory"] == config["IndexDirectory"] == str(tmp_path / "db")
    assert config["Plugins"] == []
    assert config["RemoteAccessAllowed"] is False
    assert config["AuthenticationEnabled"] is False
    assert config["DicomCheckCalledAet"] is False
    assert config["DicomCheckModalityHost"] is False
    assert config["DicomAlwaysAllowStore"] is True
    assert config["DicomAlwaysAllowEcho"] is True
    assert config["DicomServerEnabled"] is True
    assert config["UnknownSopClassAccepted"] is True
    assert config["AcceptedTransferSyntaxes"] == ["1.2.840.10008.1.*"]
    assert config["JpegTransferSyntaxAccepted"] is True
    assert "IngestTranscoding" not in config
    assert config["StableAge"] == 2
    assert config["LogExportedResources"] is False
    assert config["SaveJobs"] is False
    assert config["HttpDescribeErrors"] is True
    json.dumps(config)  # serialisable as is
    assert "DicomModalities" not in config


def test_the_router_is_a_modality_of_each_stack_orthanc(tmp_path: Path) -> None:
    config = render_orthanc_config("ORTHANC1", "ORTHANC1", 4242, 8042, tmp_path / "db",
                                   router=("DYNAMIC_DICOM_MW", 11112))

    # Orthanc answers storage commitment only to a modality it knows, and reports to it
    assert config["DicomModalities"] == {"router": ["DYNAMIC_DICOM_MW", "127.0.0.1", 11112]}


def test_config_is_written_once_and_never_over_a_users_file(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "orthanc_storage_1.json"

    assert write_orthanc_config(path, "ORTHANC1", "ORTHANC1", 4242, 8042, tmp_path / "db")
    assert json.loads(path.read_text())["DicomPort"] == 4242
    assert sorted(p.name for p in path.parent.iterdir()) == [path.name]  # no .part left

    path.write_text('{"DicomPort": 5000} // edited by hand\n')
    assert not write_orthanc_config(path, "ORTHANC1", "ORTHANC1", 4242, 8042, tmp_path / "db")
    assert path.read_text() == '{"DicomPort": 5000} // edited by hand\n'


def test_orthanc_configs_with_comments_are_read(tmp_path: Path) -> None:
    path = tmp_path / "orthanc.json"
    path.write_text(
        '{\n  // the name\n  "Name" : "A // not a comment",\n'
        '  /* block\n comment */ "HttpPort" : 8042, "Url": "http://x/*y*/"\n}\n'
    )
    assert read_orthanc_config(path) == {
        "Name": "A // not a comment", "HttpPort": 8042, "Url": "http://x/*y*/",
    }
    path.write_text("{ nope")
    with pytest.raises(StackError, match="not a valid Orthanc configuration"):
        read_orthanc_config(path)


def test_status_of_a_fresh_home(tmp_path: Path) -> None:
    home = Home(tmp_path)
    parts = supervisor.status(home, load_settings(home))

    assert list(parts) == PARTS
    assert all(p["running"] is False and p["pid"] is None for p in parts.values())
    assert parts["ORTHANC1"]["ports"] == [4242, 8042]
    assert parts["ORTHANC-PROBE"]["config"] == str(home.root / "orthanc_probe.json")
    assert parts["router"]["ports"] == [11113, 8080]  # DICOM, then HTTP (UI, API)
    assert parts["router"]["log"] == str(home.logs_dir / "router.log")


def test_stale_pid_files_are_ignored_and_removed_by_down(tmp_path: Path) -> None:
    home = Home(tmp_path)
    settings = load_settings(home)
    # Our own PID, but another command line: a PID reused by an unrelated process.
    write_pid_file(home.run_dir / "ORTHANC1.pid",
                   PidRecord.now(os.getpid(), ["/usr/sbin/Orthanc", "elsewhere.json"]))
    (home.run_dir / "router.pid").write_text("not json")

    parts = supervisor.status(home, settings)
    assert parts["ORTHANC1"] == {**parts["ORTHANC1"], "running": False, "pid": None}
    assert parts["router"]["running"] is False

    assert supervisor.down(home, settings)["stopped"] == []
    assert list(home.run_dir.iterdir()) == []


def test_a_pid_is_ours_only_while_its_command_line_matches(tmp_path: Path) -> None:
    own = Path(f"/proc/{os.getpid()}/cmdline").read_bytes().rstrip(b"\0").decode().split("\0")
    path = tmp_path / "x.pid"
    write_pid_file(path, PidRecord.now(os.getpid(), own))

    record = read_pid_file(path)
    assert record is not None and record.running
    assert json.loads(path.read_text())["argv"] == own
    assert not is_running(os.getpid(), [sys.executable, "something else"])
    assert read_pid_file(tmp_path / "absent.pid") is None


def test_a_listening_port_is_in_use(tmp_path: Path) -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        assert port_in_use(port) is not None
    assert port_in_use(port) is None


def test_last_lines_offset(tmp_path: Path) -> None:
    log = tmp_path / "a.log"
    log.write_bytes(b"one\ntwo\nthree\n")
    assert log.read_bytes()[offset_of_last_lines(log, 2):] == b"two\nthree\n"
    assert offset_of_last_lines(log, 10) == 0
    assert offset_of_last_lines(log, 0) == log.stat().st_size
    assert offset_of_last_lines(tmp_path / "absent.log", 3) == 0


def test_logs_follow_prints_appended_lines_until_stopped(tmp_path: Path) -> None:
    home = Home(tmp_path)
    settings = load_settings(home)
    log = home.logs_dir / "ORTHANC2.log"
    log.write_text("old\n")
    printed: list[str] = []

    class Out:
        def write(self, text: str) -> None:
            printed.append(text)

        def flush(self) -> None:
            pass

    stop = threading.Event()
    follower = threading.Thread(target=supervisor.logs, args=(home, settings, None, True),
                                kwargs={"out": Out(), "stop": stop})
    follower.start()
    try:
        with open(log, "a") as append:
            append.write("half")
            append.flush()
            append.write(" a line\nnext\n")
        deadline = time.monotonic() + 10
        while len(printed) < 3 and time.monotonic() < deadline:
            time.sleep(0.02)
    finally:
        stop.set()
        follower.join(10)
    assert printed == [
        "ORTHANC2      | old\n", "ORTHANC2      | half a line\n", "ORTHANC2      | next\n",
    ]


@click.group()
@click.option("--home", "home_dir", type=click.Path(path_type=Path), required=True)
@click.pass_context
def _cli(ctx: click.Context, home_dir: Path) -> None:
    ctx.obj = types.SimpleNamespace(home=Home(home_dir))


_cli.add_command(stack)


def test_status_command(tmp_path: Path) -> None:
    runner = CliRunner()
    as_json = runner.invoke(_cli, ["--home", str(tmp_path), "stack", "status", "--json"])
    assert as_json.exit_code == 0, as_json.output
    assert list(json.loads(as_json.stdout)) == PARTS

    table = runner.invoke(_cli, ["--home", str(tmp_path), "stack", "status"])
    assert table.exit_code == 0, table.output
    assert "ORTHANC-PROBE" in table.stdout and "stopped" in table.stdout


def test_logs_command(tmp_path: Path) -> None:
    home = Home(tmp_path)
    home.ensure()
    (home.logs_dir / "ORTHANC1.log").write_text("a\nb\nc\n")
    (home.logs_dir / "router.log").write_text("r\n")
    runner = CliRunner()

    one = runner.invoke(_cli, ["--home", str(tmp_path), "stack", "logs", "-n", "2", "ORTHANC1"])
    assert one.exit_code == 0, one.output
    assert one.stdout == "b\nc\n"

    every = runner.invoke(_cli, ["--home", str(tmp_path), "stack", "logs"])
    assert every.exit_code == 0, every.output
    assert every.stdout.splitlines() == [
        "ORTHANC1      | a", "ORTHANC1      | b", "ORTHANC1      | c", "router        | r",
    ]


def test_errors_are_one_message_and_exit_1(tmp_path: Path) -> None:
    result = CliRunner().invoke(_cli, ["--home", str(tmp_path), "stack", "logs", "NOPE"])

    assert result.exit_code == 1
    assert result.stdout == ""
    assert result.stderr.startswith("dde: error: unknown part NOPE: the parts are ORTHANC1, ")
    assert "Traceback" not in result.output

    (tmp_path / "dde.yaml").write_text("stack: [1, 2]\n")
    bad = CliRunner().invoke(_cli, ["--home", str(tmp_path), "stack", "status"])
    assert bad.exit_code == 1
    assert bad.stderr.startswith("dde: error: ") and bad.stderr.count("\n") == 1


def test_without_the_web_part_the_router_has_one_port(tmp_path: Path) -> None:
    home = Home(tmp_path)
    home.config_file.write_text("web:\n  enabled: false\n")
    assert supervisor.status(home, load_settings(home))["router"]["ports"] == [11113]


def test_the_web_port_is_checked_like_the_others(tmp_path: Path) -> None:
    home = Home(tmp_path)
    home.config_file.write_text("web:\n  port: 0\n")
    with pytest.raises(StackError, match=r"web.port must be a fixed port"):
        supervisor.up(home, load_settings(home), detach=True, parts=["router"])
    home.config_file.write_text("web:\n  port: 8042\n")
    with pytest.raises(StackError, match="port 8042 is configured for both ORTHANC1 and router"):
        supervisor.up(home, load_settings(home), detach=True, parts=["router"])


def test_stack_up_prints_where_the_web_ui_is_and_the_token(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    home = Home(tmp_path)
    home.config_file.write_text("web:\n  port: 18080\n")
    (tmp_path / "api-token").write_text("the-token-of-this-test-0123456789\n")

    def fake_up(home: Home, settings: object, *, detach: bool, parts: object,
                on_ready: object) -> dict[str, list[str]]:
        result = {"started": ["router"], "already_running": []}
        on_ready(result)  # type: ignore[operator]
        return result

    monkeypatch.setattr(supervisor, "up", fake_up)
    result = CliRunner().invoke(stack, ["up", "--detach"],
                                obj=types.SimpleNamespace(home=home))

    assert result.exit_code == 0, result.output
    assert "web UI and API: http://localhost:18080" in result.output
    assert "API token: the-token-of-this-test-0123456789" in result.output
    assert str(tmp_path / "api-token") in result.output
    assert "started router" in result.output


# -- the stack's Orthancs are described once, as endpoints ------------------------------------

ENDPOINTS_MOVED = """\
endpoints:
- {name: ORTHANC1, aet: PACS_ONE, port: 5001, url: "http://127.0.0.1:9001", groups: [storage]}
- {name: ORTHANC2, aet: ORTHANC2, port: 5002, url: "http://127.0.0.1:9002", groups: [storage]}
- {name: ORTHANC-PROBE, aet: ORTHANC-PROBE, port: 5003, url: "http://127.0.0.1:9003",
   groups: [probe]}
"""


def test_the_default_stack_names_endpoints_and_writes_no_port_twice(tmp_path: Path) -> None:
    home = Home(tmp_path)
    load_settings(home)  # writes the defaults

    written = yaml.safe_load(home.config_file.read_text())
    assert [set(entry) for entry in written["stack"]["orthancs"]] == \
        [{"endpoint", "config_file"}] * 3
    assert [e["endpoint"] for e in written["stack"]["orthancs"]] == PARTS[:3]


def test_the_stack_takes_aet_and_ports_from_the_endpoints(tmp_path: Path) -> None:
    home = Home(tmp_path)
    home.config_file.write_text(ENDPOINTS_MOVED)

    parts = supervisor.status(home, load_settings(home))
    assert [parts[name]["ports"] for name in PARTS[:3]] == [[5001, 9001], [5002, 9002],
                                                            [5003, 9003]]
    settings = load_settings(home)
    specs = stack_orthancs(settings, home.config_file)
    assert (specs[0].aet, specs[0].config_file) == ("PACS_ONE", "orthanc_storage_1.json")
    assert specs[0].router == (settings.receiver.ae_title, settings.receiver.port)


def test_an_old_form_stack_that_agrees_still_loads(tmp_path: Path) -> None:
    home = Home(tmp_path)
    home.config_file.write_text(ENDPOINTS_MOVED + """\
stack:
  orthancs:
  - {name: ORTHANC1, aet: PACS_ONE, dicom_port: 5001, http_port: 9001,
     config_file: orthanc_storage_1.json}
""")
    settings = load_settings(home)
    assert supervisor.status(home, settings)["ORTHANC1"]["ports"] == [5001, 9001]
    assert list(supervisor.status(home, settings)) == ["ORTHANC1", "router"]


def test_an_old_form_entry_alone_still_describes_its_orthanc(tmp_path: Path) -> None:
    home = Home(tmp_path)
    home.config_file.write_text("""\
stack:
  orthancs:
  - {name: LEGACY, aet: LEGACY, dicom_port: 6001, http_port: 6002, config_file: l.json}
""")
    assert supervisor.status(home, load_settings(home))["LEGACY"]["ports"] == [6001, 6002]


def test_an_old_form_stack_that_disagrees_says_how_to_migrate(tmp_path: Path) -> None:
    home = Home(tmp_path)
    home.config_file.write_text(ENDPOINTS_MOVED + """\
stack:
  orthancs:
  - {name: ORTHANC1, aet: ORTHANC1, dicom_port: 4242, http_port: 8042,
     config_file: orthanc_storage_1.json}
""")
    with pytest.raises(StackError) as raised:
        supervisor.status(home, load_settings(home))
    message = str(raised.value)
    assert str(home.config_file) in message
    assert "dicom_port 4242 (the endpoint says 5001)" in message
    assert "http_port 8042 (the endpoint says 9001)" in message
    assert "remove aet, dicom_port and http_port from the entry" in message

    result = CliRunner().invoke(_cli, ["--home", str(tmp_path), "stack", "status"])
    assert result.exit_code == 1
    assert result.stderr.startswith("dde: error: ") and result.stderr.count("\n") == 1


@pytest.mark.parametrize(("config", "fragment"), [
    ("stack:\n  orthancs:\n  - {endpoint: NOPE, config_file: x.json}\n",
     "stack.orthancs entry NOPE names no endpoint"),
    ("endpoints:\n- {name: ORTHANC1, aet: ORTHANC1, port: 4242}\n"
     "stack:\n  orthancs:\n  - {endpoint: ORTHANC1, config_file: x.json}\n",
     "the endpoint has no url"),
    ("endpoints:\n- {name: ORTHANC1, aet: ORTHANC1, port: 4242, url: 'http://localhost'}\n"
     "stack:\n  orthancs:\n  - {endpoint: ORTHANC1, config_file: x.json}\n",
     "names no port"),
])
def test_a_stack_entry_that_cannot_be_resolved_is_explained(tmp_path: Path, config: str,
                                                            fragment: str) -> None:
    home = Home(tmp_path)
    home.config_file.write_text(config)
    with pytest.raises(StackError, match=fragment):
        supervisor.status(home, load_settings(home))


def test_a_port_taken_names_the_endpoint_setting(tmp_path: Path) -> None:
    home = Home(tmp_path)
    home.config_file.write_text(ENDPOINTS_MOVED)
    part = supervisor.stack_parts(home, load_settings(home))[0]
    assert part.port_setting(5001) == "endpoints (ORTHANC1) port"
    assert part.port_setting(9001) == "endpoints (ORTHANC1) url"


def test_stack_up_says_which_configuration_file_it_uses(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    home = Home(tmp_path / "fresh")

    def fake_up(home: Home, settings: object, *, detach: bool, parts: object,
                on_ready: object) -> dict[str, list[str]]:
        return {"started": [], "already_running": ["router"]}

    monkeypatch.setattr(supervisor, "up", fake_up)
    first = CliRunner().invoke(stack, ["up", "--detach"], obj=types.SimpleNamespace(home=home))
    assert first.exit_code == 0, first.output
    assert f"configuration: {home.config_file} (written now with the defaults" in first.stdout
    assert home.config_file.exists()

    again = CliRunner().invoke(stack, ["up", "--detach"], obj=types.SimpleNamespace(home=home))
    assert again.exit_code == 0, again.output
    assert f"configuration: {home.config_file}\n" in again.stdout
