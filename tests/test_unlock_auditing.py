"""``tradingd unlock`` of an exchange under AUDITING: the running daemon reconciles the account
now; a difference refuses the unlock (unless ``--force --reason``), a clean run allows it."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import pytest
import redis.asyncio as aioredis

from tests.execution._doubles import Clock, Harness
from tests.execution.test_reconciliation import audited, venue_side_order
from tests.test_unlock import last_transition, make_config, seed_verified, unlock_args
from tradingd.config import parse_config
from tradingd.execution.control import ControlServer
from tradingd.state import ExchangeState, read_state, transition
from tradingd.supervisor import ActorContext
from tradingd.testing.fake_binance import FakeBinance
from tradingd.verify import run_unlock


@pytest.fixture(autouse=True)
def operator(monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv("SUDO_USER", "alice")
    return "alice"


@pytest.fixture
async def under_audit(pool: asyncpg.Pool, rds: aioredis.Redis) -> AsyncIterator[Harness]:
    """Verified data, an audited executor behind the control channel, the exchange AUDITING."""
    await seed_verified(pool, rds, "binance")
    async with audited(pool, rds, clock=Clock(int(time.time() * 1_000_000))) as h:
        await transition(
            pool, rds, "binance", ExchangeState.AUDITING, operator="executor", reason="audit"
        )
        server = ControlServer({"binance": h.executor}, rds)
        ready = asyncio.Event()
        task = asyncio.create_task(server.run(ActorContext("control", {}, ready)))
        await asyncio.wait_for(ready.wait(), 10)
        try:
            yield h
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)


async def someone_else_trades(pool: asyncpg.Pool) -> None:
    paper_id = await venue_side_order(pool, "web_7", state="FILLED", filled="0.01")
    await pool.execute(
        "INSERT INTO paper_fills (paper_order_id, quantity, price, fee, fee_currency,"
        " liquidity, at) VALUES ($1, 0.01, 50000, 0, 'USDT', 'taker', now())",
        paper_id,
    )


async def test_unlock_from_auditing_is_refused_while_the_account_differs(
    migrated_database_url: str,
    redis_url: str,
    tmp_path: Path,
    fake_binance: FakeBinance,
    pool: asyncpg.Pool,
    rds: aioredis.Redis,
    under_audit: Harness,
    capsys: pytest.CaptureFixture[str],
) -> None:
    await someone_else_trades(pool)
    config = parse_config(
        make_config(migrated_database_url, redis_url, tmp_path, binance=fake_binance)
    )
    assert await run_unlock(unlock_args("--exchange", "binance", "--yes"), config) == 1
    captured = capsys.readouterr()
    assert "[FAIL] reconciliation fresh reconciliation: mismatch: balance BTC" in captured.out
    assert "refusing to unlock binance: reconciliation" in captured.err
    assert await read_state(rds, "binance") is ExchangeState.AUDITING
    # Forced, with a reason: recorded with what was overridden.
    forced = unlock_args("--exchange", "binance", "--force", "--reason", "deposit", "--yes")
    assert await run_unlock(forced, config) == 0
    assert await read_state(rds, "binance") is ExchangeState.HEALTHY
    row = await last_transition(pool, "binance")
    assert (row["from_state"], row["operator"]) == ("AUDITING", "alice")
    assert row["reason"] == "FORCED past failed checks (binance: reconciliation): deposit"
    # Trading again, the executor counts from the venue's balances: the next run is clean.
    under_audit.executor._wake.set()
    await under_audit.settle()
    report = await under_audit.executor.reconcile()
    assert report is not None and report.clean, report


async def test_unlock_from_auditing_with_a_clean_reconciliation(
    migrated_database_url: str,
    redis_url: str,
    tmp_path: Path,
    fake_binance: FakeBinance,
    pool: asyncpg.Pool,
    rds: aioredis.Redis,
    under_audit: Harness,
    capsys: pytest.CaptureFixture[str],
) -> None:
    config = parse_config(
        make_config(migrated_database_url, redis_url, tmp_path, binance=fake_binance)
    )
    assert await run_unlock(unlock_args("--exchange", "binance", "--yes"), config) == 0
    assert "[ok  ] reconciliation fresh reconciliation: clean" in capsys.readouterr().out
    assert await read_state(rds, "binance") is ExchangeState.HEALTHY


async def test_unlock_from_auditing_without_a_daemon_is_refused(
    migrated_database_url: str,
    redis_url: str,
    tmp_path: Path,
    fake_binance: FakeBinance,
    pool: asyncpg.Pool,
    rds: aioredis.Redis,
    capsys: pytest.CaptureFixture[str],
) -> None:
    await seed_verified(pool, rds, "binance")
    await transition(pool, rds, "binance", ExchangeState.AUDITING, operator="t", reason="audit")
    config = parse_config(
        make_config(migrated_database_url, redis_url, tmp_path, binance=fake_binance)
    )
    assert await run_unlock(unlock_args("--exchange", "binance", "--yes"), config) == 1
    assert "no running daemon to reconcile with" in capsys.readouterr().out
    assert await read_state(rds, "binance") is ExchangeState.AUDITING
