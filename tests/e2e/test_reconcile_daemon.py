"""The daemon (a child process, paper mode) reconciles each account at start and answers
``tradingd reconcile``; ``tradingd status`` shows the result per exchange."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

from tests.e2e.harness import DaemonProcess, ExchangeEndpoint, NotifyListener, run_cli, write_config
from tradingd.testing.fake_binance import FakeBinance


async def test_the_daemon_reconciles_at_start_and_on_demand(
    tmp_path: Path, database_url: str, redis_url: str, binance: FakeBinance
) -> None:
    config = write_config(
        tmp_path / "tradingd.toml",
        state_dir=tmp_path / "state",
        database_url=database_url,
        redis_url=redis_url,
        exchanges={
            "binance": ExchangeEndpoint("binance", binance.ws_url, binance.rest_url, ["BTCUSDT"])
        },
    )
    async with NotifyListener(tmp_path / "notify.sock") as notify:
        daemon = await DaemonProcess(config, notify, tmp_path / "daemon.log").start()
        await daemon.wait_ready()
        status = await asyncio.to_thread(run_cli, config, "status", "--json")
        (account,) = json.loads(status.stdout)["accounts"]
        reconciled = await asyncio.to_thread(run_cli, config, "reconcile", "--json")
        text = await asyncio.to_thread(run_cli, config, "status")
        assert await daemon.stop() == 0, daemon.output()[-3000:]
    # READY=1 comes after every executor passed its start-up gate.
    assert account["exchange"] == "binance"
    assert account["reconciliation"]["trigger"] == "startup"
    assert account["reconciliation"]["outcome"] == "clean"
    assert reconciled.returncode == 0, reconciled.stderr
    (report,) = json.loads(reconciled.stdout)
    assert (report["exchange"], report["trigger"], report["outcome"]) == (
        "binance",
        "on_demand",
        "clean",
    )
    assert "    reconciliation: CLEAN " in text.stdout
    assert "(on_demand): clean: ledger and venue agree" in text.stdout
