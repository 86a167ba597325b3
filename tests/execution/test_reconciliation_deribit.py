"""Deribit against the fake Deribit venue on loopback: ``fills_since`` (the start-up gate's
source of missed fills), and a position changed behind the daemon's back -> AUDITING."""

from __future__ import annotations

import time
from decimal import Decimal

import asyncpg
import redis.asyncio as aioredis

from tests.execution._live import LiveHarness, live_executor
from tests.execution.test_live_deribit import (  # noqa: F401 (fixtures)
    CLIENT_ID,
    EXCHANGE,
    INSTRUMENTS,
    MARKET_BUY,
    PERP,
    client,
    live,
    perp_ticker,
    venue,
)
from tests.execution.test_reconciliation_live import recorded_healthy
from tradingd.adapters.deribit.execution import DeribitExecution
from tradingd.execution.audit import Kind, Outcome
from tradingd.execution.orders import OrderState
from tradingd.state import ExchangeState, read_state
from tradingd.testing.fake_deribit_trading import FakeDeribitTrading


async def test_deribit_fills_since_gives_our_fills(live: LiveHarness) -> None:  # noqa: F811
    started = int(time.time() * 1_000_000) - 1_000_000
    client_id = await live.submit(MARKET_BUY)
    await live.until_state(client_id, OrderState.FILLED)
    execution = live.executor._venue
    assert isinstance(execution, DeribitExecution)
    fills = await execution.fills_since([PERP], started)
    assert {f.client_order_id for f in fills} == {client_id}
    assert sum(f.quantity for f in fills) == Decimal(20)
    assert await execution.fills_since([PERP], started + 3_600_000_000) == []
    assert execution.connection_epoch() == 1


async def test_a_position_changed_behind_the_daemons_back_means_auditing(
    pool: asyncpg.Pool,
    rds: aioredis.Redis,
    client: DeribitExecution,  # noqa: F811
    venue: FakeDeribitTrading,  # noqa: F811
) -> None:
    await recorded_healthy(pool, rds, EXCHANGE)
    tickers = [perp_ticker(venue)]
    async with live_executor(pool, rds, EXCHANGE, client, INSTRUMENTS, tickers, audited=True) as h:
        await h.until_state(await h.submit(MARKET_BUY), OrderState.FILLED)
        clean = await h.executor.reconcile()
        assert clean is not None and clean.outcome is Outcome.CLEAN, clean.summary
        # Someone else on the account (the venue's UI, another bot) buys 30 USD more.
        venue.accounts[CLIENT_ID].positions[PERP] += Decimal(30)
        once = await h.executor.reconcile()
        assert once is not None and once.outcome is Outcome.MISMATCH
        twice = await h.executor.reconcile()
        assert twice is not None and twice.outcome is Outcome.AUDITING
        assert [(f.kind, f.subject, f.ledger, f.venue) for f in twice.findings] == [
            (Kind.POSITION, PERP, "20", "50 (difference 30)")
        ]
        assert await read_state(rds, EXCHANGE) is ExchangeState.AUDITING
