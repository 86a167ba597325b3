"""The per-exchange state machine against real PostgreSQL and Redis."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import asyncpg
import msgspec
import pytest
import redis.asyncio as aioredis
from redis.exceptions import ConnectionError as RedisConnectionError

from tradingd.state import (
    KILL_SWITCH_KEY,
    LEGAL_TRANSITIONS,
    ExchangeState,
    IllegalTransition,
    KillSwitch,
    StateUnavailable,
    Transition,
    history,
    history_key,
    may_trade,
    read_kill_switch,
    read_state,
    restore_redis_from_record,
    set_kill_switch,
    state_key,
    transition,
)

S = ExchangeState


@pytest.fixture
async def redis(redis_url: str) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.Redis.from_url(redis_url)
    yield client
    await client.aclose()


async def test_the_operator_workflow_is_recorded_in_both_stores(
    pool: asyncpg.Pool, redis: aioredis.Redis
) -> None:
    steps = [
        (S.BOOTSTRAPPING, "alice", "first bootstrap"),
        (S.LOCKED, "alice", "bootstrap finished"),
        (S.HEALTHY, "bob", "verified instruments and trades"),
        (S.RECONCILING, "tradingd", "daemon start"),
        (S.HEALTHY, "tradingd", "reconciled"),
        (S.LOCKED, "carol", "exchange maintenance"),
    ]
    for to_state, operator, reason in steps:
        record = await transition(
            pool, redis, "binance", to_state, operator=operator, reason=reason
        )
        assert record.to_state == to_state.value
    assert await read_state(redis, "binance") is S.LOCKED

    recorded = await history(pool, "binance")
    assert [(r.to_state, r.operator, r.reason) for r in reversed(recorded)] == [
        (s.value, o, r) for s, o, r in steps
    ]
    assert recorded[-1].from_state is None
    assert recorded[0].from_state == "HEALTHY"

    listed = await redis.lrange(history_key("binance"), 0, -1)
    decoded = [msgspec.json.decode(item, type=Transition) for item in listed]
    assert [d.to_state for d in reversed(decoded)] == [s.value for s, _, _ in steps]
    assert await history(pool, "deribit") == []


@pytest.mark.parametrize(
    ("path", "illegal"),
    [
        ([], S.HEALTHY),  # never bootstrapped
        ([], S.LOCKED),
        ([S.BOOTSTRAPPING], S.HEALTHY),  # bootstrap must end LOCKED first
        ([S.BOOTSTRAPPING, S.LOCKED], S.RECONCILING),
        ([S.BOOTSTRAPPING, S.LOCKED, S.AUDITING], S.RECONCILING),
    ],
)
async def test_illegal_transitions_are_rejected_and_leave_no_trace(
    pool: asyncpg.Pool, redis: aioredis.Redis, path: list[ExchangeState], illegal: ExchangeState
) -> None:
    for step in path:
        await transition(pool, redis, "deribit", step, operator="t", reason="setup")
    with pytest.raises(IllegalTransition) as caught:
        await transition(pool, redis, "deribit", illegal, operator="mallory", reason="skip ahead")
    assert illegal.value in str(caught.value)
    assert len(await history(pool, "deribit")) == len(path)
    assert await redis.llen(history_key("deribit")) == len(path)
    state = await read_state(redis, "deribit")
    assert state == (path[-1] if path else None)


async def test_only_from_narrows_the_table(pool: asyncpg.Pool, redis: aioredis.Redis) -> None:
    for step in (S.BOOTSTRAPPING, S.LOCKED):
        await transition(pool, redis, "binance", step, operator="t", reason="setup")
    with pytest.raises(IllegalTransition):
        await transition(
            pool,
            redis,
            "binance",
            S.HEALTHY,
            operator="t",
            reason="start",
            only_from=frozenset({S.RECONCILING}),
        )


async def test_concurrent_transitions_serialise(pool: asyncpg.Pool, redis: aioredis.Redis) -> None:
    for step in (S.BOOTSTRAPPING, S.LOCKED, S.HEALTHY):
        await transition(pool, redis, "binance", step, operator="t", reason="setup")
    results = await asyncio.gather(
        *(
            transition(
                pool,
                redis,
                "binance",
                S.RECONCILING,
                operator=f"p{i}",
                reason="race",
                only_from=frozenset({S.HEALTHY}),
            )
            for i in range(5)
        ),
        return_exceptions=True,
    )
    winners = [r for r in results if isinstance(r, Transition)]
    assert len(winners) == 1
    assert all(isinstance(r, IllegalTransition) for r in results if r not in winners)
    assert len(await history(pool, "binance")) == 4


async def test_trading_requires_healthy_and_no_kill_switch(
    pool: asyncpg.Pool, redis: aioredis.Redis
) -> None:
    assert not await may_trade(redis, "binance")
    for step in (S.BOOTSTRAPPING, S.LOCKED, S.HEALTHY):
        await transition(pool, redis, "binance", step, operator="t", reason="setup")
    assert await may_trade(redis, "binance")
    # Set by hand: any value is on, and says why.
    await redis.set(KILL_SWITCH_KEY, "operator pressed the button")
    assert not await may_trade(redis, "binance")
    assert await read_kill_switch(redis) == KillSwitch(
        reason="operator pressed the button", operator="unknown", at_us=0
    )
    assert await set_kill_switch(pool, redis, on=False, operator="t", reason="all clear") is None
    assert await may_trade(redis, "binance")
    switch = await set_kill_switch(pool, redis, on=True, operator="t", reason="venue hacked")
    assert await read_kill_switch(redis) == switch
    assert not await may_trade(redis, "binance")
    assert await read_state(redis, "binance") is S.HEALTHY  # the states are left as they are
    with pytest.raises(ValueError, match="needs a reason"):
        await set_kill_switch(pool, redis, on=False, operator="t", reason=" ")
    assert await read_kill_switch(redis) == switch


class _CountingRedis(aioredis.Redis):
    """Counts the commands sent (a pipeline would count as one)."""

    commands = 0

    async def execute_command(self, *args: object, **options: object) -> object:
        self.commands += 1
        return await super().execute_command(*args, **options)


async def test_the_gate_is_one_round_trip(
    pool: asyncpg.Pool, redis: aioredis.Redis, redis_url: str
) -> None:
    # The executor reads the gate before every send: state and kill switch in one MGET.
    counting = _CountingRedis.from_url(redis_url)
    for step in (S.BOOTSTRAPPING, S.LOCKED, S.HEALTHY):
        await transition(pool, redis, "binance", step, operator="t", reason="setup")
    assert await may_trade(counting, "binance")
    await redis.set(KILL_SWITCH_KEY, "stop")
    assert not await may_trade(counting, "binance")
    await redis.delete(KILL_SWITCH_KEY)
    await redis.set(state_key("binance"), "PARTYING")
    assert not await may_trade(counting, "binance")
    assert counting.commands == 3
    await counting.aclose()


async def test_reads_fail_closed() -> None:
    unreachable = aioredis.Redis.from_url("redis://127.0.0.1:9/0", socket_connect_timeout=0.5)
    with pytest.raises(StateUnavailable):
        await read_state(unreachable, "binance")
    with pytest.raises(StateUnavailable):
        await read_kill_switch(unreachable)
    assert not await may_trade(unreachable, "binance")
    await unreachable.aclose()


async def test_garbage_in_redis_is_not_a_state(redis: aioredis.Redis) -> None:
    await redis.set(state_key("binance"), "PARTYING")
    with pytest.raises(StateUnavailable):
        await read_state(redis, "binance")
    assert not await may_trade(redis, "binance")


def test_every_state_can_reach_locked_or_is_locked() -> None:
    for source, targets in LEGAL_TRANSITIONS.items():
        if source is not None:
            assert S.LOCKED in targets, source


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


async def test_a_failed_record_leaves_redis_untouched(
    pool: asyncpg.Pool, redis: aioredis.Redis
) -> None:
    # PostgreSQL refuses the row (text may not hold NUL): Redis must not show the state.
    bad = "bin\x00ance"
    with pytest.raises(asyncpg.PostgresError):
        await transition(pool, redis, bad, S.BOOTSTRAPPING, operator="op", reason="start")
    assert await redis.get(state_key(bad)) is None
    assert await redis.llen(history_key(bad)) == 0


async def test_redis_is_restored_from_the_record_when_its_write_failed(
    pool: asyncpg.Pool, redis: aioredis.Redis
) -> None:
    await transition(pool, redis, "binance", S.BOOTSTRAPPING, operator="op", reason="start")
    down = aioredis.Redis(host="127.0.0.1", port=_free_port())
    try:
        with pytest.raises(RedisConnectionError):
            await transition(pool, down, "binance", S.LOCKED, operator="op", reason="done")
        await set_kill_switch(pool, redis, on=True, operator="op", reason="halt")
        await redis.delete(KILL_SWITCH_KEY)
    finally:
        await down.aclose()
    # PostgreSQL recorded the lock; Redis's copy is behind until restored.
    assert [t.to_state for t in await history(pool, "binance")] == ["LOCKED", "BOOTSTRAPPING"]
    assert await read_state(redis, "binance") is S.BOOTSTRAPPING
    await redis.set(state_key("deribit"), "HEALTHY")  # a copy with no record is left alone

    restored = await restore_redis_from_record(pool, redis, ["binance", "deribit"])

    # The kill switch first: a state restored before it would open the gate for a moment.
    assert restored == [KILL_SWITCH_KEY, state_key("binance")]
    assert await read_state(redis, "binance") is S.LOCKED
    listed = [
        msgspec.json.decode(raw, type=Transition)
        for raw in await redis.lrange(history_key("binance"), 0, -1)
    ]
    assert [t.to_state for t in listed] == ["LOCKED", "BOOTSTRAPPING"]
    switch = await read_kill_switch(redis)
    assert switch is not None and switch.reason == "halt" and switch.operator == "op"
    assert not await may_trade(redis, "binance")
    # In step now: nothing more to restore, and the next transition starts from LOCKED.
    assert await restore_redis_from_record(pool, redis, ["binance"]) == []
    record = await transition(pool, redis, "binance", S.HEALTHY, operator="op", reason="ok")
    assert record.from_state == "LOCKED"
