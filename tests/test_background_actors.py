"""The clock check and the reconciliation run as supervised actors: an error restarts them, not
the daemon."""

from __future__ import annotations

import asyncio
import time
from typing import Any, cast

import asyncpg
import redis.asyncio as aioredis

from tradingd.adapters.base import ExchangeAdapter
from tradingd.clock import ClockCheck, ClockWatch
from tradingd.config import DaemonConfig, SupervisorConfig
from tradingd.supervisor import ActorSpec, Supervisor


class SkewedVenue:
    """Answers the server-time request two minutes behind the local clock."""

    async def fetch_server_time_us(self) -> int:
        return time.time_ns() // 1000 - 120_000_000


async def test_a_storage_error_while_locking_restarts_the_clock_actor_only() -> None:
    locked = asyncio.Event()
    reasons: list[str] = []

    async def lock_all(reason: str) -> None:
        if not reasons:
            reasons.append("failed")
            raise ConnectionError("Redis went away")
        reasons.append(reason)
        locked.set()

    venue = cast(ExchangeAdapter, cast(Any, SkewedVenue()))
    check = ClockCheck(DaemonConfig(), {"binance": venue}, unverified_recheck=0.01)
    escalations: list[object] = []
    supervisor = Supervisor(
        SupervisorConfig(backoff_initial=0.01, backoff_max=0.02),
        on_escalation=escalations.append,
    )
    supervisor.start(ActorSpec(ClockWatch(check, lock_all)))
    try:
        await asyncio.wait_for(locked.wait(), 10.0)
        (status,) = supervisor.snapshot()
        assert status.name == "clock"
        assert status.restarts == 1
        assert status.last_error == "ConnectionError: Redis went away"
        assert status.state == "running"
        assert escalations == []
        assert supervisor.healthy()
        assert reasons[1].startswith("CRITICAL TIME SKEW DETECTED")
        assert not check.verified.is_set()
    finally:
        await supervisor.stop_all()


class FlakyFlow:
    """Market data flows, but the first look at it fails (as a storage error would)."""

    def __init__(self) -> None:
        self.looks = 0

    def flowing(self, exchange: str) -> bool:
        self.looks += 1
        if self.looks == 1:
            raise ConnectionError("PostgreSQL went away")
        return True

    async def wait_flowing(self, exchange: str) -> None:
        return None


async def test_a_failure_during_reconciliation_restarts_the_reconciler_which_finishes_the_job(
    pool: asyncpg.Pool, rds: aioredis.Redis
) -> None:
    from tradingd.config import parse_config
    from tradingd.reconcile import Reconciler, StartupStates
    from tradingd.state import ExchangeState, read_state, transition
    from tradingd.storage import Storage

    for to in (ExchangeState.BOOTSTRAPPING, ExchangeState.LOCKED, ExchangeState.HEALTHY):
        await transition(pool, rds, "binance", to, operator="test", reason="setup")
    await pool.execute(
        "INSERT INTO instruments (exchange, instrument_name, market_type, base_currency,"
        " quote_currency, tick_size, min_trade_amount, is_active, raw, updated_at)"
        " VALUES ('binance', 'BTCUSDT', 'spot', 'BTC', 'USDT', 0.01, 0.00001, true, '{}', now())"
    )
    config = parse_config(
        {
            "exchanges": {
                "binance": {
                    "ws_url": "ws://127.0.0.1:1",
                    "rest_url": "http://127.0.0.1:1",
                    "symbols": ["BTCUSDT"],
                }
            }
        }
    )
    venue = cast(ExchangeAdapter, cast(Any, SkewedVenue()))
    check = ClockCheck(DaemonConfig(), {"binance": venue})
    check.verified.set()
    storage = Storage(pool=pool, redis=rds, database_url="", redis_url="")
    states = StartupStates(config, storage, {"binance": venue}, check)
    await states.on_start()
    assert await read_state(rds, "binance") is ExchangeState.RECONCILING
    flow = FlakyFlow()
    listener = await pool.acquire()
    recorded = asyncio.Event()
    await listener.execute(
        "CREATE FUNCTION test_transition() RETURNS trigger LANGUAGE plpgsql"
        " AS $$ BEGIN PERFORM pg_notify('test_transition', ''); RETURN NULL; END $$;"
        " CREATE TRIGGER test_transition AFTER INSERT ON state_transitions"
        " FOR EACH STATEMENT EXECUTE FUNCTION test_transition()"
    )

    def on_record(*_: object) -> None:
        recorded.set()

    await listener.add_listener("test_transition", on_record)
    escalations: list[object] = []
    supervisor = Supervisor(
        SupervisorConfig(backoff_initial=0.01, backoff_max=0.02),
        on_escalation=escalations.append,
    )
    supervisor.start(ActorSpec(Reconciler(states, flow)))
    try:
        async with asyncio.timeout(10):
            while True:
                recorded.clear()
                # PostgreSQL's record, which the notification follows (Redis is written after).
                last = await pool.fetchval(
                    "SELECT to_state FROM state_transitions WHERE exchange = 'binance'"
                    " ORDER BY id DESC LIMIT 1"
                )
                if last == ExchangeState.HEALTHY.value:
                    break
                await recorded.wait()
        (status,) = supervisor.snapshot()
        assert status.name == "reconciler"
        assert status.restarts == 1
        assert status.last_error == "ConnectionError: PostgreSQL went away"
        assert status.state == "running"
        assert escalations == []
    finally:
        await supervisor.stop_all()
        await listener.remove_listener("test_transition", on_record)
        await pool.release(listener)
