"""The shipped Grafana dashboard and Prometheus example name only families the daemon exports,
every query evaluates against a real scrape, and the preview renderer draws the dashboard."""

from __future__ import annotations

import asyncio
import importlib.util
import itertools
import json
import math
import random
import re
import shutil
import socket
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import ModuleType

import pytest

from tests.e2e.harness import eventually
from tests.e2e.test_metrics import FAMILIES
from tradingd.promql import SeriesStore, parse, scrape_samples

REPO = Path(__file__).resolve().parents[1]
DASHBOARD = REPO / "deploy" / "grafana" / "tradingd.json"
PREVIEW = REPO / "deploy" / "grafana" / "render_preview.py"
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


def load_preview() -> ModuleType:
    spec = importlib.util.spec_from_file_location("render_preview", PREVIEW)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["render_preview"] = module  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


def test_every_dashboard_query_parses_in_the_preview_subset() -> None:
    preview = load_preview()
    dashboard = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    assert len(exprs) >= 40
    for expr in exprs:
        assert "$" not in preview.substitute(expr), expr
        parse(preview.substitute(expr))


def assert_dashboard_evaluates(scrapes: list[tuple[float, str]]) -> None:
    """Called by the e2e metrics test with its scrapes of a running daemon (before and after
    200 trades, a parse error and a denied order): every panel's queries evaluate, and the
    panels that must show something do."""
    assert len(scrapes) >= 2
    preview = load_preview()
    store = SeriesStore()
    for t, text in scrapes:
        store.add_scrape(t, scrape_samples(text, "127.0.0.1:9464"))
    dashboard = json.loads(DASHBOARD.read_text())
    panels = {
        data.panel["title"]: {name: points[-1][1] for name, points in data.series.items()}
        for data in preview.evaluate_dashboard(dashboard, store, [scrapes[-1][0]])
    }
    assert panels["Frames received /s"]["binance"] > 0
    assert panels["Records received /s"]["binance trade"] > 0
    assert panels["Rows written /s"]["trade"] > 0
    assert panels["Parse errors and dead letters /min"]["parse errors binance"] > 0
    for title in ("Persister commit latency", "Frame → commit latency"):
        assert 0 < panels[title]["p50"] <= panels[title]["p99"] < 60, panels[title]
    assert 0 <= panels["Queue fill"]["records"] <= 1
    assert panels["Connections"]["connected deribit"] == 1
    assert panels["Ready"] == {"ready": 1}
    assert panels["Kill switch"] == {"kill switch": 0}
    assert panels["UNKNOWN orders"] == {"unknown": 0}
    assert panels["Actors overdue or failed"] == {"overdue": 0}
    assert panels["Exchange state"] == {}  # never bootstrapped: no state is 1
    assert panels["Trading allowed"]["binance"] == 0
    assert panels["Actor restarts /h"] == {}  # "> 0" keeps only restarted actors
    assert "persister" in panels["Seconds since check-in"]
    assert all(not math.isinf(v) for values in panels.values() for v in values.values())


def synthetic_scrapes() -> list[tuple[float, str]]:
    """Five minutes of a hand-made exposition: steady counters, one histogram, gauges."""
    scrapes = []
    for i in range(0, 301, 5):
        t = 1_800_000_000.0 + i
        text = (
            "# TYPE tradingd_frames_received counter\n"
            f'tradingd_frames_received_total{{exchange="binance",connection="0"}} {40 * i}\n'
            f'tradingd_frames_received_total{{exchange="deribit",connection="0"}} {25 * i}\n'
            "# TYPE tradingd_persister_commit_seconds histogram\n"
            f'tradingd_persister_commit_seconds_bucket{{le="0.001"}} {i}\n'
            f'tradingd_persister_commit_seconds_bucket{{le="0.01"}} {4 * i}\n'
            f'tradingd_persister_commit_seconds_bucket{{le="+Inf"}} {4 * i}\n'
            f"tradingd_persister_commit_seconds_count {4 * i}\n"
            f"tradingd_persister_commit_seconds_sum {0.01 * i}\n"
            "# TYPE tradingd_ready gauge\ntradingd_ready 1\n"
            "# TYPE tradingd_kill_switch gauge\ntradingd_kill_switch 0\n"
            "# TYPE tradingd_exchange_state gauge\n"
            'tradingd_exchange_state{exchange="binance",state="HEALTHY"} 1\n'
            'tradingd_exchange_state{exchange="binance",state="LOCKED"} 0\n'
        )
        scrapes.append((t, text))
    return scrapes


def test_the_preview_evaluates_hand_made_series_and_draws_a_small_png(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib", reason="the [docs] extra draws the preview")
    preview = load_preview()
    saved = tmp_path / "scrapes.jsonl"
    saved.write_text(
        "".join(json.dumps({"t": t, "text": x}) + "\n" for t, x in synthetic_scrapes())
    )
    store = SeriesStore()
    for t, text in preview.load_scrapes(saved):
        store.add_scrape(t, scrape_samples(text, "127.0.0.1:9464"))
    dashboard = json.loads(DASHBOARD.read_text())
    panels = {
        d.panel["title"]: d.series
        for d in preview.evaluate_dashboard(dashboard, store, [1_800_000_300.0])
    }
    assert panels["Frames received /s"]["binance"][-1][1] == pytest.approx(40.0)
    assert panels["Frames received /s"]["deribit"][-1][1] == pytest.approx(25.0)
    # 1 of 4 commits under 1 ms, all under 10 ms: p50 at 1 + 9 * (1/3) ms, p99 at 9.88 ms.
    latency = panels["Persister commit latency"]
    assert latency["p50"][-1][1] == pytest.approx(0.004)
    assert latency["p99"][-1][1] == pytest.approx(0.00988)
    assert [name for name in panels["Exchange state"]] == ["binance HEALTHY"]
    assert panels["Rows written /s"] == {}
    out = tmp_path / "dashboard.png"
    assert preview.main(["--load", str(saved), "--out", str(out), "--step", "10"]) == 0
    header = out.read_bytes()[:24]
    assert header[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = int.from_bytes(header[16:20], "big"), int.from_bytes(header[20:24], "big")
    assert (width, height) == (1800, 70 + 83 * 26)
    assert out.stat().st_size < 400_000


def test_the_committed_preview_is_a_small_png_the_docs_show() -> None:
    picture = REPO / "docs" / "grafana-dashboard.png"
    assert picture.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert picture.stat().st_size < 400_000
    page = (REPO / "docs" / "dashboard.md").read_text()
    assert "](grafana-dashboard.png)" in page and "not a Grafana screenshot" in page
    assert "](docs/dashboard.md)" in (REPO / "README.md").read_text()


class SyntheticDaemon:
    """A /metrics with every family the daemon exports, for Prometheus to scrape: counters that
    grow by random steps (one restarts from zero on the 6th scrape), histograms, gauges."""

    BOUNDS = ("0.001", "0.01", "0.1", "1.0", "+Inf")

    def __init__(self) -> None:
        self.random = random.Random(13)
        self.scrapes = 0
        self.totals: dict[str, float] = {}
        self.lock = threading.Lock()

    def grow(self, key: str, most: float) -> float:
        self.totals[key] = self.totals.get(key, 0.0) + self.random.uniform(0, most)
        return self.totals[key]

    def text(self) -> str:
        with self.lock:
            self.scrapes += 1
            if self.scrapes == 6:
                self.totals = {k: v for k, v in self.totals.items() if "deribit" not in k}
            lines = []
            for family, kind in FAMILIES.items():
                lines.append(f"# TYPE {family} {kind}")
                for exchange in ("binance", "deribit"):
                    labels = f'exchange="{exchange}",queue="q",kind="trade",state="OPEN",actor="a"'
                    key = f"{family}{{{labels}}}"
                    if kind == "counter":
                        lines.append(f"{family}_total{{{labels}}} {self.grow(key, 50):.3f}")
                    elif kind == "gauge":
                        lines.append(f"{family}{{{labels}}} {self.random.choice((0, 1, 1, 2.5))}")
                    else:
                        count = 0.0
                        for bound in self.BOUNDS[:-1]:
                            count += self.grow(f"{key}{bound}", 20)  # cumulative, as exposed
                            lines.append(f'{family}_bucket{{{labels},le="{bound}"}} {count:.0f}')
                        lines.append(f'{family}_bucket{{{labels},le="+Inf"}} {count:.0f}')
                        lines.append(f"{family}_count{{{labels}}} {count:.0f}")
                        lines.append(f"{family}_sum{{{labels}}} {self.grow(key + 'sum', 5):.3f}")
            return "\n".join(lines) + "\n"


def serve(daemon: SyntheticDaemon) -> ThreadingHTTPServer:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = daemon.text().encode()
            self.send_response(200)
            self.send_header("Content-Type", "text/plain; version=0.0.4")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


@pytest.mark.skipif(
    shutil.which("prometheus") is None, reason="needs Debian's prometheus (.ci/run installs it)"
)
async def test_the_evaluator_agrees_with_prometheus_on_every_dashboard_query(
    tmp_path: Path,
) -> None:
    preview = load_preview()
    server = serve(SyntheticDaemon())
    target = f"127.0.0.1:{server.server_address[1]}"
    (tmp_path / "prometheus.yml").write_text(
        "global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: tradingd\n"
        f"    scrape_timeout: 1s\n    static_configs:\n      - targets: ['{target}']\n"
    )
    base = f"http://127.0.0.1:{free_port()}"
    prometheus = await asyncio.create_subprocess_exec(
        "prometheus",
        f"--config.file={tmp_path / 'prometheus.yml'}",
        f"--storage.tsdb.path={tmp_path / 'data'}",
        f"--web.listen-address={base.removeprefix('http://')}",
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:

        async def scraped_enough() -> bool:
            query = "count_over_time(tradingd_ready[5m])"
            try:
                result = await asyncio.to_thread(preview.prometheus_query, base, query, time.time())
            except OSError:
                return False  # not listening yet
            return bool(result) and float(result[0]["value"][1]) >= 12

        await eventually(scraped_enough, what="12 scrapes by Prometheus")
        agreed = await asyncio.to_thread(
            preview.compare_with_prometheus, base, json.loads(DASHBOARD.read_text()), 6
        )
        assert agreed == 0
    finally:
        prometheus.terminate()
        await prometheus.wait()
        server.shutdown()


def test_the_preview_scrapes_a_live_endpoint_and_survives_a_failed_scrape(
    tmp_path: Path,
) -> None:
    pytest.importorskip("matplotlib", reason="the [docs] extra draws the preview")
    preview = load_preview()
    server = serve(SyntheticDaemon())
    url = f"http://127.0.0.1:{server.server_address[1]}/metrics"
    try:
        taken = list(preview.scrape_for(url, 1.0, 0.25))
    finally:
        server.shutdown()
        server.server_close()
    # Paced by the clock, a quarter second apart (fewer on a loaded machine).
    assert 2 <= len(taken) <= 5
    assert all(b > a for (a, _), (b, _) in itertools.pairwise(taken))
    assert taken[-1][0] - taken[0][0] <= 1.0
    assert "tradingd_ready" in taken[-1][1]
    # The listener is gone now: the scrape fails, counts as empty, and the run goes on.
    [(_, text)] = list(preview.scrape_for(url, 0.1, 0.25))
    assert text == ""
    saved = tmp_path / "scrapes.jsonl"
    saved.write_text("".join(json.dumps({"t": t, "text": x}) + "\n" for t, x in taken))
    out = tmp_path / "live.png"
    assert preview.main(["--load", str(saved), "--out", str(out), "--step", "0.25"]) == 0
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
