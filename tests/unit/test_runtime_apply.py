"""One assembly, one ``apply(settings)``: every live-changeable setting reaches the part that
uses it, in the main process as in a receiver process, and the rest is named in the log."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from dde.config import Home, Settings, Strategy, parse_settings, settings_to_yaml
from dde.config_store import ConfigStore
from dde.routing.rules import default_ruleset
from dde.runtime.core import RouterCore, restart_needed
from dde.runtime.main import RouterApp


def settings(**sections: object) -> Settings:
    base: dict[str, object] = {"receiver": {"host": "127.0.0.1", "port": 0, "processes": 0},
                               "web": {"enabled": False}}
    base.update(sections)
    return parse_settings(base, environment=False)


@pytest.fixture
def app(tmp_path: Path) -> Iterator[RouterApp]:
    home = Home(tmp_path / "home")
    home.ensure()
    first = settings()
    home.config_file.write_text(settings_to_yaml(first))
    router = RouterApp(home, first)
    yield router
    # apply() starts delivery workers (sync): stop them before their connections close
    router.dispatcher.stop()
    router.core.close()


def changed(current: Settings, section: str, **values: object) -> Settings:
    data = current.model_dump(mode="python")
    data[section] = {**data[section], **values}
    return parse_settings(data, environment=False)


def test_the_main_process_applies_new_spool_limits(app: RouterApp) -> None:
    new = changed(app.settings, "spool", max_bytes=12345, min_free_bytes=678)

    app.apply(new, default_ruleset())

    assert (app.spool.max_bytes, app.spool.min_free_bytes) == (12345, 678)
    assert app.settings is new


def test_the_main_process_restarts_delivery_workers_with_new_delivery_settings(
        app: RouterApp, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[dict[str, object]] = []
    monkeypatch.setattr(app.dispatcher, "reconfigure",
                        lambda policy, **options: calls.append({"policy": policy, **options}))
    new = changed(app.settings, "delivery", max_attempts=3, batch_size=7)

    app.apply(new, default_ruleset())

    assert len(calls) == 1
    assert calls[0]["batch_size"] == 7
    assert calls[0]["policy"].max_attempts == 3  # type: ignore[attr-defined]
    app.apply(new, default_ruleset())  # nothing changed in delivery: workers stay
    assert len(calls) == 1


def test_a_setting_read_at_start_is_named_in_a_warning(app: RouterApp,
                                                       caplog: pytest.LogCaptureFixture) -> None:
    new = changed(changed(app.settings, "receiver", ae_title="OTHER_AE"), "reconcile",
                  interval_seconds=60.0)

    app.apply(new, default_ruleset())

    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert "receiver changed; it takes effect at the next restart" in warnings
    assert "reconcile.interval_seconds changed; it takes effect at the next restart" in warnings


def test_restart_needed_lists_only_what_waits_for_a_restart() -> None:
    old = settings()
    assert restart_needed(old, changed(old, "spool", max_bytes=1)) == []
    assert restart_needed(old, changed(old, "routing", strategy=Strategy.ROUND_ROBIN)) == []
    assert restart_needed(old, changed(old, "web", port=9999)) == ["web"]
    assert restart_needed(old, changed(old, "routing", load_refresh_seconds=9.0)) == [
        "routing.load_refresh_seconds"]


def test_a_receiver_process_core_follows_the_files(tmp_path: Path) -> None:
    home = Home(tmp_path / "home")
    store = ConfigStore(home)
    core = RouterCore.for_tool(store)
    try:
        store.update(lambda s: changed(s, "spool", max_bytes=4242))
        store.update(lambda s: changed(s, "health", failover_after_seconds=7.0))

        assert core.reload() is True

        assert core.spool.max_bytes == 4242
        assert core.published is not None and core.published.failover_after == 7.0
        assert core.reload() is False  # nothing changed since
    finally:
        core.close()
