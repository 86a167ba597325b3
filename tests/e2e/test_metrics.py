"""/metrics and /health of the real daemon process against the fake venues, parsed with
Prometheus's own parser."""

from __future__ import annotations

import re
import time
from pathlib import Path

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from tests.e2e.harness import (
    DaemonProcess,
    ExchangeEndpoint,
    NotifyListener,
    eventually,
    run_cli,
    write_config,
)
from tradingd.testing.fake_binance import FakeBinance
from tradingd.testing.fake_deribit import FakeDeribit

# Every family the issue asks for, with its Prometheus type.
FAMILIES = {
    "tradingd_ready": "gauge",
    "tradingd_kill_switch": "gauge",
    "tradingd_exchange_state": "gauge",
    "tradingd_actor_restarts": "counter",
    "tradingd_actor_seconds_since_checkin": "gauge",
    "tradingd_actor_overdue": "gauge",
    "tradingd_frames_received": "counter",
    "tradingd_records_received": "counter",
    "tradingd_parse_errors": "counter",
    "tradingd_reconnects": "counter",
    "tradingd_rotations": "counter",
    "tradingd_connected": "gauge",
    "tradingd_seconds_since_frame": "gauge",
    "tradingd_queue_depth": "gauge",
    "tradingd_queue_capacity": "gauge",
    "tradingd_queue_high_water": "gauge",
    "tradingd_queue_dropped": "counter",
    "tradingd_rows_written": "counter",
    "tradingd_dead_letters_written": "counter",
    "tradingd_persister_retries": "counter",
    "tradingd_persister_batch_rows": "histogram",
    "tradingd_persister_commit_seconds": "histogram",
    "tradingd_frame_to_commit_seconds": "histogram",
    "tradingd_gaps_open": "gauge",
    "tradingd_instrument_gap_open": "gauge",
    "tradingd_gaps_detected": "counter",
    "tradingd_gaps_repaired": "counter",
    "tradingd_gaps_unfillable": "counter",
    "tradingd_repaired_rows": "counter",
    "tradingd_repair_latency_seconds": "histogram",
    "tradingd_orders_open": "gauge",
    "tradingd_orders": "counter",
    "tradingd_orders_unknown": "gauge",
    "tradingd_fills": "counter",
    "tradingd_order_denials": "counter",
    "tradingd_trading_allowed": "gauge",
    "tradingd_position": "gauge",
    "tradingd_balance": "gauge",
    "tradingd_realised_pnl": "gauge",
    "tradingd_unrealised_pnl": "gauge",
    "tradingd_order_round_trip_seconds": "histogram",
    "tradingd_tick_to_strategy_seconds": "histogram",
}

SYMBOLS = ["BTCUSDT", "ETHUSDT"]


def sample(families: dict, name: str, **labels: str) -> float:
    values = [
        s.value
        for s in families[name].samples
        if s.name in (name, f"{name}_total")
        and all(s.labels.get(k) == v for k, v in labels.items())
    ]
    assert len(values) == 1, (name, labels, families[name].samples)
    return float(values[0])


async def test_metrics_of_a_running_daemon_parse_with_every_family_and_type(
    tmp_path: Path, database_url: str, redis_url: str, binance: FakeBinance, deribit: FakeDeribit
) -> None:
    config = write_config(
        tmp_path / "tradingd.toml",
        state_dir=tmp_path / "state",
        database_url=database_url,
        redis_url=redis_url,
        exchanges={
            "binance": ExchangeEndpoint("binance", binance.ws_url, binance.rest_url, SYMBOLS),
            "deribit": ExchangeEndpoint(
                "deribit",
                deribit.ws_url,
                deribit.rest_url,
                ["BTC-PERPETUAL"],
                {"currencies": ["BTC"]},
            ),
        },
        sections={"metrics": {"listen": "127.0.0.1:0"}},
    )
    async with NotifyListener(tmp_path / "notify.sock") as notify:
        daemon = await DaemonProcess(config, notify, tmp_path / "daemon.log").start()
        await daemon.wait_ready()
        found = re.search(r"serving /metrics and /health on 127\.0\.0\.1:(\d+)", daemon.output())
        assert found, daemon.output()[-3000:]
        base = f"http://127.0.0.1:{found.group(1)}"
        # Every scrape, timed, from before the trades on: the dashboard's queries run over them.
        scrapes: list[tuple[float, str]] = []
        async with aiohttp.ClientSession() as http, http.get(f"{base}/metrics") as response:
            scrapes.append((time.time(), await response.text()))
        for symbol in SYMBOLS:
            await binance.wait_subscribed(symbol, "trades")
            binance.publish_trades(symbol, 100)
        binance.inject_raw(b'{"stream":"btcusdt@trade","data":{"e":"trade","p":"abc"}}')
        # Never bootstrapped, so not HEALTHY: the executor denies at the gate.
        denied = run_cli(
            config,
            "order",
            "submit",
            "--exchange",
            "binance",
            "--symbol",
            "BTCUSDT",
            "--side",
            "buy",
            "--type",
            "limit",
            "--qty",
            "0.001",
            "--price",
            "100",
        )
        assert denied.returncode == 1, denied.stdout + denied.stderr

        async with aiohttp.ClientSession() as http:

            async def scrape() -> dict:
                async with http.get(f"{base}/metrics") as response:
                    assert response.status == 200
                    assert response.headers["Content-Type"].startswith("text/plain")
                    text = await response.text()
                scrapes.append((time.time(), text))
                return {f.name: f for f in text_string_to_metric_families(text)}

            async def landed() -> bool:
                families = await scrape()
                return (
                    sample(families, "tradingd_rows_written", kind="trade") >= 200
                    and sample(families, "tradingd_parse_errors", exchange="binance") >= 1
                )

            await eventually(landed, what="200 trades and a parse error counted")
            families = await scrape()
            async with http.get(f"{base}/health") as response:
                health_status, health = response.status, await response.json()

        assert await daemon.stop() == 0, daemon.output()[-3000:]

    types = {name: families[name].type for name in FAMILIES if name in families}
    assert types == FAMILIES, sorted(set(FAMILIES) ^ set(types))
    assert sample(families, "tradingd_ready") == 1
    assert sample(families, "tradingd_kill_switch") == 0
    assert sample(families, "tradingd_records_received", exchange="binance", kind="trade") == 200
    assert sample(families, "tradingd_frames_received", exchange="binance", connection="0") > 0
    assert sample(families, "tradingd_order_denials", exchange="binance", reason="gate") == 1
    assert sample(families, "tradingd_connected", exchange="deribit", connection="0") == 1
    # Never bootstrapped: no state is 1.
    assert sample(families, "tradingd_exchange_state", exchange="binance", state="HEALTHY") == 0
    commits = families["tradingd_persister_commit_seconds"].samples
    count = next(s.value for s in commits if s.name.endswith("_count"))
    inf = next(s.value for s in commits if s.labels.get("le") == "+Inf")
    assert count == inf > 0
    queues = {s.labels["queue"] for s in families["tradingd_queue_depth"].samples}
    assert {"records", "tickers", "gaps:binance", "gaps:deribit"} <= queues
    # The supervisor's view: every actor, ready, checking in.
    assert health_status == 200, health
    assert health["ready"] is True and health["healthy"] is True
    names = {a["name"] for a in health["actors"]}
    assert {"persister", "metrics", "executor:binance", "repairer:deribit"} <= names
    assert all(a["overdue"] is False for a in health["actors"])

    from tests.test_dashboard import assert_dashboard_evaluates  # it imports FAMILIES from here

    assert_dashboard_evaluates(scrapes)
