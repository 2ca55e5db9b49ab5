"""The monitoring files shipped in ``deploy/``: every series they use is one the router
exports, and the Grafana dashboard is well formed. (promtool checks and unit-tests the alert
rules in ``tests/integration/test_monitoring_promtool.py``.)"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from tests.support.webkit import AUTH, WebKit, dicom_bytes, make_webkit, metric_value

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
ALERTS = DEPLOY / "prometheus" / "alerts.yml"
DASHBOARD = DEPLOY / "grafana" / "dde-dashboard.json"
SERIES = re.compile(r"\bdde_[a-z_]+\b")


@pytest.fixture
def kit(tmp_path: Path) -> WebKit:
    return make_webkit(tmp_path)


def exported_series(kit: WebKit) -> set[str]:
    """Names of the series a scrape declares: each family, and a histogram's _bucket,
    _count and _sum (a labelled histogram shows no sample before its first event)."""
    names: set[str] = set()
    for line in kit.client.get("/metrics").text.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split()
            names.add(name)
            if kind == "histogram":
                names.update(f"{name}{suffix}" for suffix in ("_bucket", "_count", "_sum"))
    return names


def alert_rules() -> list[dict[str, Any]]:
    document = yaml.safe_load(ALERTS.read_text())
    return [rule for group in document["groups"] for rule in group["rules"]]


def dashboard_exprs() -> list[str]:
    dashboard = json.loads(DASHBOARD.read_text())
    return [target["expr"] for panel in dashboard["panels"] for target in panel["targets"]]


def test_every_series_the_alert_rules_use_is_exported(kit: WebKit) -> None:
    exported = exported_series(kit)
    used = {name for rule in alert_rules() for name in SERIES.findall(rule["expr"])}

    assert used, "the alert rules use no dde_* series"
    assert used <= exported, f"not exported by the router: {sorted(used - exported)}"


def test_every_series_the_dashboard_uses_is_exported(kit: WebKit) -> None:
    exported = exported_series(kit)
    used = {name for expr in dashboard_exprs() for name in SERIES.findall(expr)}

    assert used <= exported, f"not exported by the router: {sorted(used - exported)}"
    assert {"dde_received_instances_total", "dde_queued_deliveries",
            "dde_ack_latency_seconds_bucket", "dde_spool_bytes"} <= used


def test_the_alerts_cover_what_an_operator_must_hear_about() -> None:
    by_name = {rule["alert"]: rule for rule in alert_rules()}

    assert set(by_name) == {"DdeNodeDown", "DdeDeliveriesStuck", "DdeDeliveriesFailed",
                            "DdeBreakerOpen", "DdeEndpointDown", "DdeInstancesRefused",
                            "DdeLeasesTakenOver", "DdeSpoolNearlyFull",
                            "DdeCommitmentsFailing"}
    for name, rule in by_name.items():
        assert rule["labels"]["severity"] in {"warning", "critical"}, name
        assert rule["annotations"]["summary"], name


def test_the_dashboard_is_well_formed() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    ids = [panel["id"] for panel in dashboard["panels"]]

    assert dashboard["uid"] and dashboard["title"]
    assert len(ids) == len(set(ids)) >= 10
    assert [v["name"] for v in dashboard["templating"]["list"]] == ["datasource"]
    for panel in dashboard["panels"]:
        assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
        assert panel["targets"] and all(t["expr"] for t in panel["targets"]), panel["title"]


def test_the_spool_gauges_follow_the_spool(kit: WebKit) -> None:
    response = kit.client.post("/api/instances", headers=AUTH,
                               files={"file": ("a.dcm", dicom_bytes()[0])})
    assert response.status_code == 200

    text = kit.client.get("/metrics").text

    spool = kit.services.spool
    assert metric_value(text, "dde_spool_bytes") == spool.used_bytes_cached > 0
    assert metric_value(text, "dde_spool_max_bytes") == spool.max_bytes
