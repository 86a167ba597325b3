"""The circuit breaker: its pure rules (hypothesis), and each trip on a running executor with
the paper venue, real PostgreSQL and Redis: LOCKED recorded with the reason and figures, kept
over a restart, reset only by an unlock (HEALTHY recorded from LOCKED)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from decimal import Decimal

import asyncpg
import redis.asyncio as aioredis
from hypothesis import given
from hypothesis import strategies as st

from tests.execution._doubles import (
    EXCHANGE,
    LIMITS,
    Clock,
    Harness,
    running_executor,
    ticker,
    trade,
)
from tradingd.config import RiskConfig
from tradingd.execution.breaker import (
    Breaker,
    Day,
    FailureWindow,
    Figures,
    breaker_status,
    evaluate,
    roll,
)
from tradingd.execution.orders import OrderState
from tradingd.execution.paper import PaperFaults
from tradingd.execution.wiring import exchange_locker
from tradingd.state import ExchangeState, state_key, transition
from tradingd.strategies.api import Accepted, Denied, OrderIntent, OrderType, Side

NOW = 1_800_000_000_000_000
NO_LIMITS = RiskConfig(daily_loss_limit={}, max_drawdown={})
money = st.decimals(min_value=-10_000, max_value=10_000, places=2)


@given(start=money, now=money, limit=st.decimals(min_value=0, max_value=5_000, places=2))
def test_the_daily_loss_rule_trips_exactly_past_the_limit(
    start: Decimal, now: Decimal, limit: Decimal
) -> None:
    limits = RiskConfig(daily_loss_limit={"USDT": limit}, max_drawdown={})
    day = Day(day="2027-01-15", start={"USDT": start}, peak={"USDT": start})
    trip = evaluate(limits, Figures(equity={"USDT": now}), day)
    assert (trip is not None) == (start - now > limit)
    if trip is not None:
        assert trip.rule == "daily_loss" and trip.figures["loss"] == str(start - now)


@given(values=st.lists(money, min_size=1, max_size=20))
def test_the_peak_follows_the_equity_up_within_a_day_and_restarts_each_day(
    values: list[Decimal],
) -> None:
    day = None
    for value in values:
        day = roll(day, "2027-01-15", {"USDT": value})
    assert day is not None and day.peak["USDT"] == max(values)
    assert day.start["USDT"] == values[0]
    assert roll(day, "2027-01-16", {"USDT": values[-1]}).start == {"USDT": values[-1]}


def test_other_rules_and_the_failure_window() -> None:
    day = Day(day="d", start={}, peak={})
    limits = RiskConfig(max_data_age=10.0, max_venue_failures=2)
    assert evaluate(limits, Figures(equity={}, data_age={"BTCUSDT": 9.0}), day) is None
    stale = evaluate(limits, Figures(equity={}, data_age={"BTCUSDT": 11.0}), day)
    assert stale is not None and stale.rule == "stale_data"
    assert evaluate(limits, Figures(equity={}, failures=2), day) is None
    failing = evaluate(limits, Figures(equity={}, failures=3), day)
    assert failing is not None and failing.rule == "venue_failures"
    banned = evaluate(limits, Figures(equity={}, banned="418 until 12:00"), day)
    assert banned is not None and banned.rule == "banned"
    window = FailureWindow(60.0)
    for at in (0, 30_000_000, 61_000_000):
        window.record(at)
    assert window.count(61_000_000) == 2


async def _healthy_on_record(pool: asyncpg.Pool, rds: aioredis.Redis) -> None:
    await pool.execute("DELETE FROM state_transitions WHERE exchange = $1", EXCHANGE)
    for to_state in ("BOOTSTRAPPING", "LOCKED", "HEALTHY"):
        await transition(
            pool, rds, EXCHANGE, ExchangeState(to_state), operator="test", reason="setup"
        )


@asynccontextmanager
async def guarded(
    pool: asyncpg.Pool,
    rds: aioredis.Redis,
    limits: RiskConfig,
    *,
    clock: Clock | None = None,
    faults: PaperFaults | None = None,
) -> AsyncIterator[Harness]:
    async with running_executor(
        pool, rds, limits=limits, clock=clock or Clock(NOW), faults=faults,
        lock_exchange=exchange_locker(pool, rds, EXCHANGE),
        breaker=Breaker(pool, EXCHANGE, limits),
    ) as h:  # fmt: skip
        yield h


async def _assert_locked_by(pool: asyncpg.Pool, rds: aioredis.Redis, h: Harness, rule: str) -> str:
    reason = h.executor.locked_reason
    assert reason.startswith("circuit breaker: "), reason
    assert await rds.get(state_key(EXCHANGE)) == b"LOCKED"
    last = await pool.fetchrow(
        "SELECT operator, reason FROM state_transitions WHERE exchange = $1"
        " ORDER BY id DESC LIMIT 1",
        EXCHANGE,
    )
    assert last is not None and (last["operator"], last["reason"]) == ("executor", reason)
    status = await breaker_status(pool, EXCHANGE)
    assert status.tripped and status.rule == rule and status.reason == reason
    return reason


MARKET_BUY = OrderIntent(
    instrument="BTCUSDT", side=Side.BUY, quantity=Decimal("0.1"), type=OrderType.MARKET
)


async def test_a_day_loss_trips_survives_a_restart_and_only_an_unlock_resets_it(
    pool: asyncpg.Pool, rds: aioredis.Redis
) -> None:
    await _healthy_on_record(pool, rds)
    limits = RiskConfig(**{**_fields(LIMITS), "daily_loss_limit": {"USDT": Decimal(5)},
                           "max_drawdown": {}})  # fmt: skip
    async with guarded(pool, rds, limits) as h:
        await h.feed(trade("100", "1", 1, NOW), ticker("99.9", "100.1", NOW))
        assert isinstance(h.executor.decide("s1", MARKET_BUY), Accepted)
        await h.settle()
        assert h.executor.locked_reason == ""
        # Bought 0.1 at 100.1 (fee 0.01001): marked at 40, the day lost 6.02001 USDT.
        await h.feed(trade("40", "1", 2, NOW))
        await h.settle()
        reason = await _assert_locked_by(pool, rds, h, "daily_loss")
        assert "day loss 6.02001 USDT past risk.daily_loss_limit 5 USDT" in reason
        denied = h.executor.decide("s1", MARKET_BUY)
        assert isinstance(denied, Denied) and denied.reason.startswith("locked: circuit breaker")
    # A restart does not reset it: the executor locks again at start.
    async with guarded(pool, rds, limits) as h:
        assert h.executor.locked_reason == reason
        assert (await breaker_status(pool, EXCHANGE)).tripped
        await h.feed(trade("40", "1", 3, NOW), ticker("39.9", "40.1", NOW))
        await transition(
            pool, rds, EXCHANGE, ExchangeState.HEALTHY, operator="olga", reason="unlock"
        )
        await h.settle()
        assert not (await breaker_status(pool, EXCHANGE)).tripped
        # The day's baseline starts again from the unlock: the same loss does not trip again.
        await h.settle()
        assert h.executor.locked_reason == ""
        buy_more = OrderIntent(
            instrument="BTCUSDT", side=Side.BUY, quantity=Decimal("0.2"), type=OrderType.MARKET
        )
        assert isinstance(await h.executor.submit("manual", buy_more), Accepted)
        await h.settle()


async def test_a_drawdown_from_the_days_peak_trips(pool: asyncpg.Pool, rds: aioredis.Redis) -> None:
    await _healthy_on_record(pool, rds)
    limits = RiskConfig(**{**_fields(LIMITS), "daily_loss_limit": {},
                           "max_drawdown": {"USDT": Decimal(3)}})  # fmt: skip
    async with guarded(pool, rds, limits) as h:
        await h.feed(trade("100", "1", 1, NOW), ticker("99.9", "100.1", NOW))
        assert isinstance(h.executor.decide("s1", MARKET_BUY), Accepted)
        await h.settle()
        await h.feed(trade("160", "1", 2, NOW))  # equity +5.98999: the day's peak
        await h.settle()
        assert h.executor.locked_reason == ""
        await h.feed(trade("120", "1", 3, NOW))  # 4 below the peak, still above the start
        await h.settle()
        reason = await _assert_locked_by(pool, rds, h, "drawdown")
        assert "drawdown 4.00000 USDT from the day's peak past risk.max_drawdown 3 USDT" in reason


async def test_stale_market_data_with_orders_open_trips(
    pool: asyncpg.Pool, rds: aioredis.Redis
) -> None:
    await _healthy_on_record(pool, rds)
    clock = Clock(NOW)
    limits = RiskConfig(**{**_fields(LIMITS), "max_data_age": 10.0})
    async with guarded(pool, rds, limits, clock=clock) as h:
        await h.feed(trade("100", "1", 1, NOW), ticker("99.9", "100.1", NOW))
        limit_buy = OrderIntent(
            instrument="BTCUSDT", side=Side.BUY, quantity=Decimal("0.1"), price=Decimal(99)
        )
        assert isinstance(h.executor.decide("s1", limit_buy), Accepted)
        await h.settle()
        clock.now = NOW + 9_000_000
        await h.settle()
        assert h.executor.locked_reason == ""
        clock.now = NOW + 12_000_000
        await h.settle()
        reason = await _assert_locked_by(pool, rds, h, "stale_data")
        assert "market data of BTCUSDT is 12.0 s old with orders open" in reason


async def test_venue_failures_past_the_rate_trip(pool: asyncpg.Pool, rds: aioredis.Redis) -> None:
    await _healthy_on_record(pool, rds)
    limits = RiskConfig(**{**_fields(LIMITS), "max_venue_failures": 2})
    faults = PaperFaults(drop_requests=3)
    async with guarded(pool, rds, limits, faults=faults) as h:
        await h.feed(trade("100", "1", 1, NOW), ticker("99.9", "100.1", NOW))
        ids = []
        for price in ("97", "98", "99"):
            intent = OrderIntent(
                instrument="BTCUSDT", side=Side.BUY, quantity=Decimal("0.1"), price=Decimal(price)
            )
            decision = h.executor.decide("s1", intent)
            assert isinstance(decision, Accepted)
            ids.append(decision.client_order_id)
        for client_id in ids:
            await h.until_state(client_id, OrderState.UNKNOWN)
        # The loop's next pass runs the check; run it here so that the test need not poll.
        async with h.executor._lock:
            await h.executor._check_breaker()
        reason = await _assert_locked_by(pool, rds, h, "venue_failures")
        assert "3 venue rejects or UNKNOWN outcomes within 60 s" in reason


async def test_an_ip_ban_trips_and_is_recorded(pool: asyncpg.Pool) -> None:
    breaker = Breaker(pool, EXCHANGE, NO_LIMITS)
    await breaker.load(NOW)
    assert await breaker.check(NOW, {}, {}) is None
    breaker.note_failure(NOW, banned="418: IP banned until 1800000060000")
    trip = await breaker.check(NOW + 1, {}, {})
    assert trip is not None and trip.rule == "banned"
    assert (await breaker_status(pool, EXCHANGE)).rule == "banned"
    again = Breaker(pool, EXCHANGE, NO_LIMITS)
    assert (await again.load(NOW)).tripped


def _fields(limits: RiskConfig) -> dict[str, object]:
    return {name: getattr(limits, name) for name in limits.__struct_fields__}


class _Flowing:
    def flowing(self, exchange: str) -> bool:
        return True

    async def wait_flowing(self, exchange: str) -> None:
        return None


async def test_a_trip_during_start_up_reconciliation_keeps_the_exchange_locked(
    pool: asyncpg.Pool, rds: aioredis.Redis
) -> None:
    from typing import Any, cast

    from tradingd.adapters.base import ExchangeAdapter
    from tradingd.clock import ClockCheck
    from tradingd.config import DaemonConfig, parse_config
    from tradingd.reconcile import StartupStates
    from tradingd.state import read_state
    from tradingd.storage import Storage

    await _healthy_on_record(pool, rds)
    await pool.execute(
        "INSERT INTO instruments (exchange, instrument_name, market_type, base_currency,"
        " quote_currency, tick_size, min_trade_amount, is_active, raw, updated_at)"
        " VALUES ('binance', 'BTCUSDT', 'spot', 'BTC', 'USDT', 0.01, 0.00001, true, '{}', now())"
    )
    config = parse_config(
        {"exchanges": {EXCHANGE: {"ws_url": "ws://127.0.0.1:1", "rest_url": "http://127.0.0.1:1",
                                  "symbols": ["BTCUSDT"]}}}
    )  # fmt: skip
    venue = cast(ExchangeAdapter, cast(Any, object()))
    check = ClockCheck(DaemonConfig(), {EXCHANGE: venue})
    check.verified.set()
    states = StartupStates(
        config, Storage(pool=pool, redis=rds, database_url="", redis_url=""), {EXCHANGE: venue},
        check,
    )  # fmt: skip
    await states.on_start()
    assert await read_state(rds, EXCHANGE) is ExchangeState.RECONCILING
    # The executor's breaker trips while the daemon still reconciles.
    await exchange_locker(pool, rds, EXCHANGE)("circuit breaker: market data of BTCUSDT ...")
    await states._reconcile_one(EXCHANGE, _Flowing())  # no IllegalTransition escapes
    assert await read_state(rds, EXCHANGE) is ExchangeState.LOCKED
