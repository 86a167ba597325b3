"""The shipped Grafana dashboard and Prometheus example name only families the daemon exports."""

from __future__ import annotations

import json
import re
from pathlib import Path

from tests.e2e.test_metrics import FAMILIES

REPO = Path(__file__).resolve().parents[1]
DASHBOARD = REPO / "deploy" / "grafana" / "tradingd.json"
SUFFIXES = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count")}


def exported_series() -> set[str]:
    names = set()
    for family, kind in FAMILIES.items():
        names.update(family + suffix for suffix in SUFFIXES.get(kind, ("",)))
    return names


def test_every_dashboard_query_names_exported_series_and_all_rows_are_there() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    rows = [p["title"] for p in dashboard["panels"] if p["type"] == "row"]
    assert rows == ["Data plane", "Executor", "Safety"]
    exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    used = {name for expr in exprs for name in re.findall(r"\btradingd_[a-z_]+", expr)}
    assert used, "no query names a tradingd series"
    assert used <= exported_series(), sorted(used - exported_series())
    # Every family the daemon exports is on the dashboard, in one form or another.
    shown = {name for name in FAMILIES if any(u.startswith(name) for u in used)}
    assert shown == set(FAMILIES), sorted(set(FAMILIES) - shown)
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))


def test_prometheus_example_scrapes_the_default_listener() -> None:
    # No YAML parser among the dependencies: the lines a scrape depends on, as written.
    text = (REPO / "deploy" / "prometheus" / "prometheus.yml").read_text()
    assert "metrics_path: /metrics\n" in text
    assert 'targets: ["127.0.0.1:9464"]' in text
    shipped = (REPO / "config" / "tradingd.toml").read_text()
    assert 'listen = "127.0.0.1:9464"' in shipped
