"""Kill switch to flat: 100 open orders on both live venues' clients (the fakes on loopback)
cancelled in bulk and verified with the venues, through the control channel as `tradingd
kill-switch on [--flatten]` does; with --flatten no position is left, through the ledger."""

from __future__ import annotations

from decimal import Decimal

import asyncpg
import redis.asyncio as aioredis

from bench.kill_switch import PERP, running_drill
from tests.execution._doubles import (
    EXCHANGE,
    INSTRUMENTS,
    PAPER,
    healthy,
    running_executor,
    ticker,
    trade,
)
from tradingd.execution.orders import TERMINAL_STATES
from tradingd.execution.paper import PaperVenue
from tradingd.execution.venue import CancelAllResult, Outcome
from tradingd.strategies.api import Accepted, OrderIntent, Side

NOW = 1_800_000_000_000_000


async def test_100_open_orders_on_both_venues_are_cancelled_and_verified(
    pool: asyncpg.Pool, rds: aioredis.Redis
) -> None:
    async with running_drill(pool, rds) as drill:
        await drill.rest(100)
        assert drill.open_at_venues() == 100
        seconds, code, report = await drill.kill(flatten=False)
        assert code == 0, report
        assert drill.open_at_venues() == 0
        assert "binance: cancelled 50 of 50, remaining 0; the venue lists 0 open" in report
        assert "deribit: cancelled 50 of 50, remaining 0; the venue lists 0 open" in report
        states = await pool.fetch("SELECT state, count(*) AS n FROM orders GROUP BY state")
        assert {r["state"]: r["n"] for r in states} == {"CANCELED": 100}
        # New orders are denied at once on every exchange.
        for executor in drill.executors.values():
            assert not executor.trading_allowed_hint()
        assert seconds < 5  # a bound; the measured time is in BENCHMARKS.md


async def test_flatten_closes_every_position_through_the_ledger(
    pool: asyncpg.Pool, rds: aioredis.Redis
) -> None:
    async with running_drill(pool, rds) as drill:
        await drill.buy()
        await drill.rest(10)
        held = {
            e: {i: Decimal(q) for i, q in x.snapshot().positions.items()}
            for e, x in drill.executors.items()
        }
        assert held == {"binance": {"BTCUSDT": Decimal("0.01")}, "deribit": {PERP: Decimal(50)}}
        _seconds, code, report = await drill.kill(flatten=True)
        assert code == 0, report
        assert drill.open_at_venues() == 0
        for executor in drill.executors.values():
            assert executor.snapshot().positions == {}
        closing = await pool.fetch(
            "SELECT client_order_id, state, reduce_only, order_type FROM orders"
            " WHERE tag = 'kill switch: flatten' ORDER BY exchange"
        )
        assert [(r["state"], r["reduce_only"], r["order_type"]) for r in closing] == [
            ("FILLED", True, "market"),
            ("FILLED", True, "market"),
        ]
        for row in closing:
            events = await pool.fetch(
                "SELECT to_state FROM order_events WHERE client_order_id = $1 ORDER BY id",
                row["client_order_id"],
            )
            assert [e["to_state"] for e in events][:2] == ["INTENT", "SENDING"]
        left = await pool.fetchval(
            "SELECT count(*) FROM orders WHERE NOT (state = ANY($1::text[]))",
            [s.value for s in TERMINAL_STATES],
        )
        assert left == 0


class _BulkCancelLost(PaperVenue):
    """A venue whose bulk cancel gets no answer (and does nothing)."""

    async def cancel_all(self, instrument: str | None = None) -> CancelAllResult:
        return CancelAllResult(outcome=Outcome.UNKNOWN, reason="timeout (test)")


async def test_without_a_bulk_answer_every_order_is_cancelled_one_by_one_and_verified(
    pool: asyncpg.Pool, rds: aioredis.Redis
) -> None:
    await healthy(rds)
    async with running_executor(pool, rds) as h:
        venue = _BulkCancelLost(EXCHANGE, pool, PAPER, INSTRUMENTS, h.clock)
        await venue.start()
        h.executor._venue = venue
        await h.feed(trade("100", "1", 1, NOW), ticker("99.9", "100.1", NOW))
        for i in range(10):
            intent = OrderIntent(
                instrument="BTCUSDT",
                side=Side.BUY,
                quantity=Decimal("0.1"),
                price=Decimal(96 + i % 4),
            )
            assert isinstance(h.executor.decide("s1", intent), Accepted)
        await h.settle()
        report = await h.executor.cancel_everything("kill switch: drill")
        assert (report.requested, report.cancelled, report.remaining) == (10, 10, 0)
        assert report.venue_open == 0
        assert report.errors == ["bulk cancel: UNKNOWN timeout (test)"]
        assert await venue.open_orders() == []
