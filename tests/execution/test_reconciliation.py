"""The account's reconciliation with the venue (the paper venue on real PostgreSQL and Redis):
the start-up gate (unknown order -> LOCKED, foreign order -> reported, a fill missed while
down -> booked, a balance changed behind the daemon's back -> AUDITING) and the runs while
trading (a mismatch on two runs in a row -> AUDITING; cancels still go through)."""

from __future__ import annotations

from datetime import date
from decimal import Decimal

import asyncpg
import redis.asyncio as aioredis

from tests.execution._doubles import (
    EXCHANGE,
    INSTRUMENTS,
    PAPER,
    Clock,
    running_executor,
    ticker,
    trade,
)
from tradingd.config import PaperConfig, RetentionConfig
from tradingd.execution.audit import Kind, Outcome, Trigger
from tradingd.execution.audit_record import recent_reports
from tradingd.execution.ledger import Ledger
from tradingd.execution.orders import OrderState
from tradingd.execution.paper import PaperVenue
from tradingd.execution.wiring import exchange_locker
from tradingd.retention import run_prune
from tradingd.state import ExchangeState, history, read_state, transition
from tradingd.strategies.api import Accepted, Denied, OrderIntent, OrderType, Side

S = OrderState
NOW = 1_800_000_000_000_000
RESTING_BUY = OrderIntent(
    instrument="BTCUSDT", side=Side.BUY, quantity=Decimal("0.01"), price=Decimal(59_000)
)
MARKET_BUY = OrderIntent(
    instrument="BTCUSDT", side=Side.BUY, quantity=Decimal("0.01"), type=OrderType.MARKET
)


async def recorded_healthy(pool: asyncpg.Pool, rds: aioredis.Redis) -> None:
    for state in (ExchangeState.BOOTSTRAPPING, ExchangeState.LOCKED, ExchangeState.HEALTHY):
        await transition(pool, rds, EXCHANGE, state, operator="test", reason="setup")


async def venue_side_order(
    pool: asyncpg.Pool, client_id: str, *, state: str = "OPEN", filled: str = "0"
) -> int:
    """An order the venue holds that the daemon never sent through the ledger."""
    paper_id: int = await pool.fetchval(
        "INSERT INTO paper_orders (exchange, client_order_id, instrument_name, side, order_type,"
        " time_in_force, quantity, price, state, filled_quantity)"
        " VALUES ($1, $2, 'BTCUSDT', 'buy', 'limit', 'GTC', 0.01, 50000, $3, $4) RETURNING id",
        EXCHANGE,
        client_id,
        state,
        Decimal(filled),
    )
    return paper_id


def audited(pool: asyncpg.Pool, rds: aioredis.Redis, **kwargs: object):  # type: ignore[no-untyped-def]
    return running_executor(
        pool,
        rds,
        audited=True,
        lock_exchange=exchange_locker(pool, rds, EXCHANGE),
        **kwargs,  # type: ignore[arg-type]
    )


async def test_an_order_of_ours_the_ledger_does_not_know_locks_at_start(
    pool: asyncpg.Pool, rds: aioredis.Redis
) -> None:
    await recorded_healthy(pool, rds)
    await venue_side_order(pool, "td999_0")
    async with audited(pool, rds) as h:
        assert await read_state(rds, EXCHANGE) is ExchangeState.LOCKED
        decision = h.executor.decide("manual", MARKET_BUY)
        assert isinstance(decision, Denied) and decision.reason.startswith("locked:")
        (report,) = await recent_reports(pool, EXCHANGE)
    assert (report.trigger, report.outcome) == (Trigger.STARTUP, Outcome.LOCKED)
    assert [(f.kind, f.subject) for f in report.findings] == [(Kind.UNKNOWN_ORDER, "td999_0")]
    (last, *_) = await history(pool, EXCHANGE)
    assert last.to_state == "LOCKED"
    assert "unknown_order td999_0" in last.reason


async def test_a_foreign_order_is_left_alone_and_reported(
    pool: asyncpg.Pool, rds: aioredis.Redis
) -> None:
    await recorded_healthy(pool, rds)
    await venue_side_order(pool, "web_42")
    async with audited(pool, rds) as h:
        assert await read_state(rds, EXCHANGE) is ExchangeState.HEALTHY
        assert h.executor.locked_reason == ""
        (report,) = await recent_reports(pool, EXCHANGE)
    assert report.outcome is Outcome.FOREIGN
    assert report.summary == "foreign: 1 foreign order left alone"
    assert [(f.kind, f.subject) for f in report.findings] == [(Kind.FOREIGN_ORDER, "web_42")]
    state = await pool.fetchval("SELECT state FROM paper_orders WHERE client_order_id = 'web_42'")
    assert state == "OPEN"  # never cancelled


async def test_a_fill_missed_while_down_is_booked_at_start(
    pool: asyncpg.Pool, rds: aioredis.Redis
) -> None:
    await recorded_healthy(pool, rds)
    clock = Clock(NOW)
    async with audited(pool, rds, clock=clock) as h:
        await h.feed(trade("60000", "1", 1, NOW), ticker("59999.99", "60000.00", NOW))
        decision = await h.executor.submit("manual", RESTING_BUY)
        assert isinstance(decision, Accepted)
        await h.until_state(decision.client_order_id, S.OPEN)
        client_id = decision.client_order_id
    # The daemon is down; the venue fills the order meanwhile.
    clock.now = NOW + 30_000_000
    venue = PaperVenue(EXCHANGE, pool, PAPER, INSTRUMENTS, clock)
    await venue.start()
    await venue.observe([trade("58000", "1", 2, clock.now)], [])
    assert await Ledger(pool).fills(EXCHANGE) == []
    async with audited(pool, rds, clock=clock) as h:
        (fill,) = await Ledger(pool).fills(EXCHANGE)
        row = await Ledger(pool).order(client_id)
        balances = h.executor.session_balances()
        venue_balances = await h.venue.balances()
        reports = await recent_reports(pool, EXCHANGE)
    assert (fill.client_order_id, fill.quantity, fill.price) == (
        client_id,
        Decimal("0.01"),
        Decimal(59_000),
    )
    assert row is not None and row.state is S.FILLED
    assert balances == venue_balances  # booked once: not twice on top of the venue's
    assert [r.outcome for r in reports] == [Outcome.CLEAN, Outcome.CLEAN]
    assert await read_state(rds, EXCHANGE) is ExchangeState.HEALTHY


async def test_a_balance_changed_behind_the_daemons_back_means_auditing_at_start(
    pool: asyncpg.Pool, rds: aioredis.Redis
) -> None:
    await recorded_healthy(pool, rds)
    async with audited(pool, rds):
        pass
    # A withdrawal while the daemon was down.
    withdrawn = PaperConfig(
        maker_fee=PAPER.maker_fee,
        taker_fee=PAPER.taker_fee,
        slippage=PAPER.slippage,
        balances={EXCHANGE: {"USDT": Decimal(990_000), "BTC": Decimal(10)}},
    )
    async with audited(pool, rds, paper=withdrawn) as h:
        assert await read_state(rds, EXCHANGE) is ExchangeState.AUDITING
        await h.feed(trade("60000", "1", 1, NOW), ticker("59999.99", "60000.00", NOW))
        decision = await h.executor.submit("manual", MARKET_BUY)
        assert isinstance(decision, Denied) and decision.reason.startswith("gate:")
    report = (await recent_reports(pool, EXCHANGE))[0]
    assert report.outcome is Outcome.AUDITING
    assert [(f.kind, f.subject, f.ledger, f.venue) for f in report.findings] == [
        (Kind.BALANCE, "USDT", "1000000", "990000 (difference -10000)")
    ]
    (last, *_) = await history(pool, EXCHANGE)
    assert (last.to_state, last.operator) == ("AUDITING", "executor")
    assert "balance USDT" in last.reason


async def test_a_mismatch_on_two_runs_in_a_row_means_auditing_and_cancels_still_go(
    pool: asyncpg.Pool, rds: aioredis.Redis
) -> None:
    await recorded_healthy(pool, rds)
    async with audited(pool, rds) as h:
        await h.feed(trade("60000", "1", 1, NOW), ticker("59999.99", "60000.00", NOW))
        decision = await h.executor.submit("manual", RESTING_BUY)
        assert isinstance(decision, Accepted)
        await h.until_state(decision.client_order_id, S.OPEN)
        first = await h.executor.reconcile()
        assert first is not None and first.outcome is Outcome.CLEAN
        # Another client of the account trades: the balances move without a fill of ours.
        paper_id = await venue_side_order(pool, "web_7", state="FILLED", filled="0.01")
        await pool.execute(
            "INSERT INTO paper_fills (paper_order_id, quantity, price, fee, fee_currency,"
            " liquidity, at) VALUES ($1, 0.01, 50000, 0, 'USDT', 'taker', now())",
            paper_id,
        )
        once = await h.executor.reconcile()
        assert once is not None and once.outcome is Outcome.MISMATCH
        assert await read_state(rds, EXCHANGE) is ExchangeState.HEALTHY
        twice = await h.executor.reconcile()
        assert twice is not None and twice.outcome is Outcome.AUDITING
        assert {f.subject for f in twice.findings} == {"BTC", "USDT"}
        assert await read_state(rds, EXCHANGE) is ExchangeState.AUDITING
        # AUDITING: no new order, cancels allowed.
        assert isinstance(await h.executor.submit("manual", MARKET_BUY), Denied)
        assert isinstance(await h.executor.cancel(decision.client_order_id), Accepted)
        row = await Ledger(pool).order(decision.client_order_id)
        assert row is not None and row.state is S.CANCELED


async def test_prune_keeps_each_exchanges_latest_baseline(
    pool: asyncpg.Pool, rds: aioredis.Redis
) -> None:
    await recorded_healthy(pool, rds)
    async with audited(pool, rds) as h:
        await h.executor.reconcile()  # a clean run: a baseline too
    await pool.execute("UPDATE reconciliations SET at = now() - interval '40 days'")
    # A newer report that is no baseline (a mismatch), and an older baseline of another venue.
    await pool.execute(
        "INSERT INTO reconciliations (exchange, trigger, outcome, summary, baseline, at) VALUES"
        " ('binance', 'periodic', 'mismatch', 'x', false, now()),"
        " ('deribit', 'startup', 'clean', 'y', true, now() - interval '90 days')"
    )
    policy = RetentionConfig(reconciliations_days=30)
    dry = await run_prune(pool, policy, today=date.today(), dry_run=True)
    done = await run_prune(pool, policy, today=date.today(), dry_run=False)
    assert dry.reconciliations == done.reconciliations == 1  # binance's older startup report
    kept = await pool.fetch("SELECT exchange, trigger, baseline FROM reconciliations ORDER BY id")
    assert [tuple(r) for r in kept] == [
        ("binance", "on_demand", True),
        ("binance", "periodic", False),
        ("deribit", "startup", True),
    ]
