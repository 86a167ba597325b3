"""The account's reconciliation through the live execution clients against the fake venues on
loopback (Binance; Deribit's ``fills_since`` in test_reconciliation_deribit): a testnet-style
wipe of the venue means AUDITING (while running and at the next start), never a crash;
``fills_since`` gives every fill with its client id (other clients' too)."""

from __future__ import annotations

import time
from decimal import Decimal

import asyncpg
import redis.asyncio as aioredis

from tests.execution._doubles import INSTRUMENTS, ticker
from tests.execution._live import live_executor
from tests.execution.test_live_binance import (  # noqa: F401 (fixtures)
    MARKET_BUY,
    RESTING_BUY,
    client,
    venue,
)
from tradingd.adapters.binance.execution import BinanceExecution
from tradingd.execution.audit import Kind, Outcome, Trigger
from tradingd.execution.audit_record import recent_reports
from tradingd.execution.orders import OrderState
from tradingd.execution.venue import PlaceRequest
from tradingd.state import ExchangeState, read_state, transition
from tradingd.strategies.api import OrderType, Side, TimeInForce
from tradingd.testing.fake_binance_trading import FakeBinanceTrading

S = OrderState
EXCHANGE = "binance"


def now_us() -> int:
    return int(time.time() * 1_000_000)


async def recorded_healthy(pool: asyncpg.Pool, rds: aioredis.Redis, exchange: str) -> None:
    for state in (ExchangeState.BOOTSTRAPPING, ExchangeState.LOCKED, ExchangeState.HEALTHY):
        await transition(pool, rds, exchange, state, operator="test", reason="setup")


async def test_a_testnet_wipe_means_auditing_never_a_crash(
    pool: asyncpg.Pool,
    rds: aioredis.Redis,
    client: BinanceExecution,  # noqa: F811
    venue: FakeBinanceTrading,  # noqa: F811
) -> None:
    await recorded_healthy(pool, rds, EXCHANGE)
    tickers = [ticker("59999.99", "60000.00", now_us())]
    async with live_executor(pool, rds, EXCHANGE, client, INSTRUMENTS, tickers, audited=True) as h:
        await h.until_state(await h.submit(MARKET_BUY), S.FILLED)
        resting = await h.submit(RESTING_BUY)
        await h.until_state(resting, S.OPEN)
        clean = await h.executor.reconcile()
        assert clean is not None and clean.outcome is Outcome.CLEAN, clean.summary
        venue.wipe()
        once = await h.executor.reconcile()
        assert once is not None and once.outcome is Outcome.MISMATCH
        twice = await h.executor.reconcile()
        assert twice is not None and twice.outcome is Outcome.AUDITING
        assert {f.kind for f in twice.findings} == {Kind.MISSING_AT_VENUE, Kind.BALANCE}
        assert await read_state(rds, EXCHANGE) is ExchangeState.AUDITING
    # The next start meets the wiped venue too.
    tickers = [ticker("59999.99", "60000.00", now_us())]
    async with live_executor(pool, rds, EXCHANGE, client, INSTRUMENTS, tickers, audited=True):
        report = (await recent_reports(pool, EXCHANGE))[0]
        assert (report.trigger, report.outcome) == (Trigger.STARTUP, Outcome.AUDITING)
        assert await read_state(rds, EXCHANGE) is ExchangeState.AUDITING


async def test_binance_fills_since_names_every_fills_client_id(
    client: BinanceExecution,  # noqa: F811
) -> None:
    await client.start()
    try:
        started = now_us() - 1_000_000
        for client_id in ("td1_0", "web_1"):
            await client.place(
                PlaceRequest(
                    client_order_id=client_id,
                    instrument="BTCUSDT",
                    side=Side.BUY,
                    type=OrderType.MARKET,
                    tif=TimeInForce.GTC,
                    quantity=Decimal("0.002"),
                    price=None,
                )
            )
        # A client that never saw these orders learns their client ids from the venue.
        fresh = BinanceExecution(EXCHANGE, client._http, client.private, "ws://unused")
        fills = await fresh.fills_since(["BTCUSDT"], started)
        assert {f.client_order_id for f in fills} == {"td1_0", "web_1"}
        assert sum(f.quantity for f in fills) == Decimal("0.004")
        assert await fresh.fills_since(["BTCUSDT"], now_us() + 60_000_000) == []
    finally:
        await client.close()


async def test_an_order_filled_while_its_event_was_lost_is_asked_about_not_reported_missing(
    pool: asyncpg.Pool,
    rds: aioredis.Redis,
    client: BinanceExecution,  # noqa: F811
    venue: FakeBinanceTrading,  # noqa: F811
) -> None:
    await recorded_healthy(pool, rds, EXCHANGE)
    tickers = [ticker("59999.99", "60000.00", now_us())]
    async with live_executor(pool, rds, EXCHANGE, client, INSTRUMENTS, tickers, audited=True) as h:
        resting = await h.submit(RESTING_BUY)
        await h.until_state(resting, S.OPEN)
        # The venue fills the order and its execution report is lost with the user stream.
        venue.faults.disconnect_user_stream_after = 0
        venue._on_tape("BTCUSDT", [{"p": "49999.00000000", "q": "1.00000000"}])
        assert venue.order_by_client_id(resting).status == "FILLED"  # type: ignore[union-attr]
        report = await h.executor.reconcile()
        assert report is not None and report.outcome is Outcome.CLEAN, report.summary
        row = await h.until_state(resting, S.FILLED)
        assert row.filled_quantity == RESTING_BUY.quantity
