"""``tradingd reconcile``, ``tradingd status`` and ``tradingd state history`` as an operator runs
them (the real CLI in a child process) against a running audited executor (the paper venue on
real PostgreSQL and Redis) behind the control channel."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import pytest
import redis.asyncio as aioredis

from tests.e2e.harness import offline_config, run_cli
from tests.execution._doubles import Clock, Harness, ticker, trade
from tests.execution.test_reconciliation import audited, recorded_healthy, venue_side_order
from tradingd.execution.control import ControlServer
from tradingd.supervisor import ActorContext


@pytest.fixture
def config_path(tmp_path: Path, migrated_database_url: str, redis_url: str) -> Path:
    return offline_config(
        tmp_path / "tradingd.toml",
        state_dir=tmp_path / "state",
        database_url=migrated_database_url,
        redis_url=redis_url,
    )


async def tradingd(config: Path, *args: str) -> tuple[int, str, str]:
    # In a thread: the control server of the test answers on this event loop meanwhile.
    result = await asyncio.to_thread(run_cli, config, *args, env={"USER": "olga"})
    return result.returncode, result.stdout, result.stderr


@pytest.fixture
async def daemon(pool: asyncpg.Pool, rds: aioredis.Redis) -> AsyncIterator[Harness]:
    await recorded_healthy(pool, rds)
    now = int(time.time() * 1_000_000)
    async with audited(pool, rds, clock=Clock(now)) as h:
        await h.feed(trade("60000", "1", 1, now), ticker("59999.99", "60000.00", now))
        server = ControlServer({"binance": h.executor}, rds)
        ready = asyncio.Event()
        task = asyncio.create_task(server.run(ActorContext("control", {}, ready)))
        await asyncio.wait_for(ready.wait(), 10)
        try:
            yield h
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)


async def test_reconcile_prints_the_diff_and_status_and_history_show_it(
    config_path: Path, pool: asyncpg.Pool, daemon: Harness
) -> None:
    code, out, err = await tradingd(config_path, "reconcile")
    assert code == 0, err
    assert out.startswith("binance: CLEAN (on_demand at ")
    assert "ledger and venue agree" in out
    # Another client of the account buys 0.01 BTC: the balances move without a fill of ours.
    paper_id = await venue_side_order(pool, "web_7", state="FILLED", filled="0.01")
    await pool.execute(
        "INSERT INTO paper_fills (paper_order_id, quantity, price, fee, fee_currency,"
        " liquidity, at) VALUES ($1, 0.01, 50000, 0, 'USDT', 'taker', now())",
        paper_id,
    )
    code, out, err = await tradingd(config_path, "reconcile", "--exchange", "binance")
    assert code == 1, err
    lines = out.splitlines()
    assert lines[0].startswith("binance: MISMATCH (on_demand at ")
    assert lines[1].split() == ["finding", "subject", "ledger", "venue"]
    assert lines[2].split() == ["balance", "BTC", "10", "10.01", "(difference", "0.01)"]
    assert lines[3].split() == ["balance", "USDT", "1000000", "999500", "(difference", "-500)"]
    code, out, err = await tradingd(config_path, "reconcile", "--json")
    assert code == 1, err
    (report,) = json.loads(out)
    assert (report["exchange"], report["outcome"]) == ("binance", "auditing")
    assert [(f["kind"], f["subject"]) for f in report["findings"]] == [
        ("balance", "BTC"),
        ("balance", "USDT"),
    ]

    code, out, err = await tradingd(config_path, "status")
    accounts = out[out.index("accounts:") :].splitlines()
    assert accounts[1:3] == [
        "  binance",
        accounts[2],
    ] and accounts[2].startswith("    reconciliation: AUDITING ")
    assert "(on_demand): auditing: balance BTC: ledger 10, venue 10.01" in accounts[2]
    assert [line.split(":")[0] for line in accounts[3:7]] == [
        "    orders",
        "    positions",
        "    day PnL",
        "    breaker",
    ]
    assert accounts[6] == "    breaker: state ok"
    code, out, err = await tradingd(config_path, "status", "--json")
    (view,) = json.loads(out)["accounts"]
    assert view["reconciliation"]["outcome"] == "auditing"
    assert view["breaker"] == {"state": "ok"}

    code, out, err = await tradingd(config_path, "state", "history", "--exchange", "binance")
    assert code == 0, err
    newest = out.splitlines()[:2]
    assert "HEALTHY -> AUDITING" in newest[0] + newest[1]
    assert "reconcile -> AUDITING" in newest[0] + newest[1]
    assert "balance USDT: ledger 1000000, venue 999500" in out


async def test_reconcile_without_a_daemon_exits_69(config_path: Path) -> None:
    code, out, err = await tradingd(config_path, "reconcile")
    assert code == 69 and out == ""
    assert "no running daemon" in err
    code, out, err = await tradingd(config_path, "reconcile", "--exchange", "nowhere")
    assert code == 64 and "unknown exchange 'nowhere'" in err
