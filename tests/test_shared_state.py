"""Redis flushed under a running executor: nothing is sent until the states (and the kill
switch, first) are restored from PostgreSQL's record; then trading resumes."""

from __future__ import annotations

import asyncio
from decimal import Decimal

import asyncpg
import redis.asyncio as aioredis

from tests.execution._doubles import EXCHANGE, running_executor, ticker, trade
from tradingd.execution.orders import OrderState
from tradingd.shared_state import SENTINEL_KEY, SharedStateWatch
from tradingd.state import (
    KILL_SWITCH_KEY,
    ExchangeState,
    may_trade,
    set_kill_switch,
    state_key,
    transition,
)
from tradingd.strategies.api import Accepted, Denied, OrderIntent, OrderType, Side
from tradingd.supervisor import ActorContext

NOW = 1_800_000_000_000_000
BUY = OrderIntent(
    instrument="BTCUSDT", side=Side.BUY, quantity=Decimal("0.1"), type=OrderType.MARKET
)


async def _healthy_on_record(pool: asyncpg.Pool, rds: aioredis.Redis) -> None:
    await pool.execute("DELETE FROM state_transitions WHERE exchange = $1", EXCHANGE)
    for to_state in ("BOOTSTRAPPING", "LOCKED", "HEALTHY"):
        await transition(
            pool, rds, EXCHANGE, ExchangeState(to_state), operator="test", reason="setup"
        )


async def _sent(pool: asyncpg.Pool) -> int:
    return int(await pool.fetchval("SELECT count(*) FROM paper_orders"))


async def test_a_flush_denies_every_order_until_the_record_is_restored(
    pool: asyncpg.Pool, rds: aioredis.Redis
) -> None:
    await _healthy_on_record(pool, rds)
    lost: list[str] = []
    watch = SharedStateWatch(
        pool, rds, [EXCHANGE], interval=0.05, on_lost=lambda _key, text: lost.append(text)
    )
    assert not await watch.check()  # the first check places the sentinel
    async with running_executor(pool, rds) as h:
        await h.feed(trade("100", "1", 1, NOW), ticker("99.9", "100.1", NOW))
        assert isinstance(await h.executor.submit("manual", BUY), Accepted)
        await h.settle()
        assert await _sent(pool) == 1

        await rds.flushdb()
        assert not await may_trade(rds, EXCHANGE)
        denied = await h.executor.submit("manual", BUY)
        assert isinstance(denied, Denied) and denied.reason.startswith("gate:")
        # A strategy's order decided before the executor saw the loss is denied at the send.
        decided = h.executor.decide("s1", BUY)
        assert isinstance(decided, Accepted)
        await h.settle()
        row = await h.ledger.order(decided.client_order_id)
        assert row is not None and row.state is OrderState.DENIED
        assert await _sent(pool) == 1

        ctx = ActorContext(watch.name, {})
        task = asyncio.create_task(watch.run(ctx))
        try:
            await asyncio.wait_for(watch.restored.wait(), 5)
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        assert await rds.get(state_key(EXCHANGE)) == b"HEALTHY"
        assert await rds.exists(SENTINEL_KEY)
        assert watch.losses == 1 and "restored: system:state:binance" in lost[0]
        assert isinstance(await h.executor.submit("manual", BUY), Accepted)
        await h.settle()
        assert await _sent(pool) == 2


async def test_the_kill_switch_comes_back_before_any_state(
    pool: asyncpg.Pool, rds: aioredis.Redis
) -> None:
    await _healthy_on_record(pool, rds)
    await set_kill_switch(pool, rds, on=True, operator="olga", reason="drill")
    watch = SharedStateWatch(pool, rds, [EXCHANGE])
    assert not await watch.check()
    await rds.flushdb()
    order: list[str] = []
    real_set = rds.set

    async def recording_set(name: str, *args: object, **kwargs: object) -> object:
        order.append(name)
        return await real_set(name, *args, **kwargs)  # type: ignore[arg-type]

    rds.set = recording_set  # type: ignore[method-assign]
    try:
        assert await watch.check()
    finally:
        rds.set = real_set  # type: ignore[method-assign]
    assert order[0] == KILL_SWITCH_KEY
    assert not await may_trade(rds, EXCHANGE)
    await set_kill_switch(pool, rds, on=False, operator="olga", reason="over")
    assert await may_trade(rds, EXCHANGE)
