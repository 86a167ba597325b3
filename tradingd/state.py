"""The per-exchange operational state: one table of legal transitions, one function to move.

PostgreSQL is the record: every transition is a row of ``state_transitions`` (who, why, when),
and the current state is the last row's. Redis holds its copy where every actor can read it
(``system:state:<exchange>``, and the list ``system:state:<exchange>:history``), written only
after the row commits; ``restore_redis_from_record`` rewrites the copy when Redis lacks or
disagrees with it (daemon start, then periodically). Above every exchange's state sits the kill
switch (``system:kill_switch``, recorded in ``system_events``): while it is on, nothing trades
anywhere. Reads fail closed: when the state or the switch cannot be read, nothing may trade.
"""

from __future__ import annotations

import enum
import getpass
import os
import time
from collections.abc import Iterable

import asyncpg
import msgspec
import redis.asyncio as aioredis
from loguru import logger
from redis.exceptions import RedisError


class ExchangeState(enum.StrEnum):
    BOOTSTRAPPING = "BOOTSTRAPPING"
    RECONCILING = "RECONCILING"
    HEALTHY = "HEALTHY"
    LOCKED = "LOCKED"
    AUDITING = "AUDITING"


S = ExchangeState

# from-state (None: never set) -> the states it may move to.
LEGAL_TRANSITIONS: dict[ExchangeState | None, frozenset[ExchangeState]] = {
    None: frozenset({S.BOOTSTRAPPING}),
    S.BOOTSTRAPPING: frozenset({S.BOOTSTRAPPING, S.LOCKED}),
    S.LOCKED: frozenset({S.BOOTSTRAPPING, S.HEALTHY, S.AUDITING, S.LOCKED}),
    S.HEALTHY: frozenset({S.RECONCILING, S.LOCKED, S.AUDITING, S.BOOTSTRAPPING}),
    # AUDITING: the account's reconciliation found a difference (tradingd.execution.audit).
    S.RECONCILING: frozenset({S.HEALTHY, S.LOCKED, S.BOOTSTRAPPING, S.AUDITING}),
    S.AUDITING: frozenset({S.LOCKED, S.HEALTHY}),
}

KILL_SWITCH_KEY = "system:kill_switch"
HISTORY_LENGTH = 1000


def state_key(exchange: str) -> str:
    return f"system:state:{exchange}"


def history_key(exchange: str) -> str:
    return f"system:state:{exchange}:history"


class IllegalTransition(Exception):
    def __init__(
        self, exchange: str, from_state: ExchangeState | None, to_state: ExchangeState
    ) -> None:
        allowed = ", ".join(sorted(LEGAL_TRANSITIONS[from_state])) or "nothing"
        super().__init__(
            f"{exchange}: {from_state or 'no state'} -> {to_state} is not allowed "
            f"(from {from_state or 'no state'} only: {allowed})"
        )
        self.exchange = exchange
        self.from_state = from_state
        self.to_state = to_state


class StateUnavailable(Exception):
    """The shared state cannot be read; callers must act as if trading were locked."""


class Transition(msgspec.Struct, frozen=True):
    exchange: str
    from_state: str | None
    to_state: str
    operator: str
    reason: str
    at_us: int


def current_operator() -> str:
    """The human behind a CLI command (through sudo too), else the process's user."""
    for variable in ("SUDO_USER", "USER", "LOGNAME"):
        value = os.environ.get(variable)
        if value:
            return value
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return f"uid:{os.getuid()}"


async def read_state(redis: aioredis.Redis, exchange: str) -> ExchangeState | None:
    try:
        raw = await redis.get(state_key(exchange))
    except (RedisError, OSError) as exc:
        raise StateUnavailable(f"cannot read {state_key(exchange)}: {exc}") from exc
    return _state_of(raw, exchange)


def _state_of(raw: bytes | str | None, exchange: str) -> ExchangeState | None:
    if raw is None:
        return None
    text = _text(raw)
    try:
        return ExchangeState(text)
    except ValueError:
        raise StateUnavailable(f"{state_key(exchange)} holds an unknown state {text!r}") from None


def _text(raw: bytes | str) -> str:
    return raw.decode() if isinstance(raw, bytes) else raw


class KillSwitch(msgspec.Struct, frozen=True):
    """The kill switch while it is on: nothing trades on any exchange, whatever its state."""

    reason: str
    operator: str
    at_us: int


async def read_kill_switch(redis: aioredis.Redis) -> KillSwitch | None:
    """The kill switch if it is on, None if off; any value at all counts as on."""
    try:
        raw = await redis.get(KILL_SWITCH_KEY)
    except (RedisError, OSError) as exc:
        raise StateUnavailable(f"cannot read {KILL_SWITCH_KEY}: {exc}") from exc
    return _kill_switch_of(raw)


def _kill_switch_of(raw: bytes | str | None) -> KillSwitch | None:
    if raw is None:
        return None
    try:
        return msgspec.json.decode(raw, type=KillSwitch)
    except msgspec.MsgspecError:
        # Set by hand (``redis-cli SET system:kill_switch 1``): on, with the value as reason.
        return KillSwitch(reason=_text(raw), operator="unknown", at_us=0)


async def set_kill_switch(
    pool: asyncpg.Pool, redis: aioredis.Redis, *, on: bool, operator: str, reason: str
) -> KillSwitch | None:
    """Turn the kill switch on or off; recorded in ``system_events`` with who and why.

    The record commits first, then Redis gets its copy: a switch that cannot be recorded is
    not changed, and one recorded while Redis fails is restored from the record on start.
    """
    if not reason.strip():
        raise ValueError("the kill switch needs a reason")
    switch = KillSwitch(reason=reason, operator=operator, at_us=time.time_ns() // 1000)
    async with pool.acquire() as conn:
        async with conn.transaction():
            await conn.execute(
                "INSERT INTO system_events (kind, exchange, detail, at, writer_pid)"
                " VALUES ($1, 'all', $2::jsonb, to_timestamp($3::float8 / 1e6), $4)",
                KILL_SWITCH_ON if on else KILL_SWITCH_OFF,
                msgspec.json.encode({"operator": operator, "reason": reason}).decode(),
                switch.at_us,
                os.getpid(),
            )
        await _copy_kill_switch(redis, switch if on else None)
    logger.bind(STATE="KILL_SWITCH").warning(
        "kill switch {} by {}: {}", "ON" if on else "off", operator, reason
    )
    return switch if on else None


KILL_SWITCH_ON = "kill_switch_on"
KILL_SWITCH_OFF = "kill_switch_off"


async def _copy_kill_switch(redis: aioredis.Redis, switch: KillSwitch | None) -> None:
    if switch is not None:
        await redis.set(KILL_SWITCH_KEY, msgspec.json.encode(switch))
    else:
        await redis.delete(KILL_SWITCH_KEY)


async def may_trade(redis: aioredis.Redis, exchange: str) -> bool:
    """True only when the exchange is HEALTHY and the kill switch is off; False on any doubt."""
    # One round trip for both keys: the executor reads this before every send.
    try:
        state_raw, switch_raw = await redis.mget(state_key(exchange), KILL_SWITCH_KEY)
        state = _state_of(state_raw, exchange)
        switch = _kill_switch_of(switch_raw)
    except (RedisError, OSError, StateUnavailable):
        return False
    return state is ExchangeState.HEALTHY and switch is None


async def transition(
    pool: asyncpg.Pool,
    redis: aioredis.Redis,
    exchange: str,
    to_state: ExchangeState,
    *,
    operator: str,
    reason: str,
    only_from: frozenset[ExchangeState | None] | None = None,
) -> Transition:
    """Move ``exchange`` to ``to_state`` if the table allows it, and record who, why and when.

    ``only_from`` narrows the legal starting states further for this call (for example, daemon
    start-up moves HEALTHY to RECONCILING but must leave a LOCKED exchange alone); a state outside
    it raises ``IllegalTransition`` too. The current state is PostgreSQL's last recorded one;
    Redis is written only once the row has committed, so it never shows a state PostgreSQL did
    not record. If that Redis write fails the error is raised and the copy is restored later
    (``restore_redis_from_record``).
    """
    if not reason.strip():
        raise ValueError("a state transition needs a reason")
    async with pool.acquire() as conn:
        # Held until Redis has its copy: concurrent transitions of one exchange reach both
        # stores in the same order.
        await conn.execute("SELECT pg_advisory_lock(hashtext($1))", state_key(exchange))
        try:
            async with conn.transaction():
                current = await _recorded_state(conn, exchange)
                if to_state not in LEGAL_TRANSITIONS[current] or (
                    only_from is not None and current not in only_from
                ):
                    raise IllegalTransition(exchange, current, to_state)
                record = Transition(
                    exchange=exchange,
                    from_state=current.value if current else None,
                    to_state=to_state.value,
                    operator=operator,
                    reason=reason,
                    at_us=time.time_ns() // 1000,
                )
                await conn.execute(
                    "INSERT INTO state_transitions"
                    " (exchange, from_state, to_state, operator, reason, at, writer_pid)"
                    " VALUES ($1, $2, $3, $4, $5, to_timestamp($6::float8 / 1e6), $7)",
                    exchange,
                    record.from_state,
                    record.to_state,
                    operator,
                    reason,
                    record.at_us,
                    os.getpid(),
                )
            await _copy_state(redis, record)
        finally:
            await conn.execute("SELECT pg_advisory_unlock(hashtext($1))", state_key(exchange))
    logger.bind(EXCHANGE=exchange, STATE=to_state.value).info(
        "state {} -> {} by {}: {}", record.from_state or "none", to_state.value, operator, reason
    )
    return record


async def _recorded_state(conn: asyncpg.Connection, exchange: str) -> ExchangeState | None:
    raw = await conn.fetchval(
        "SELECT to_state FROM state_transitions WHERE exchange = $1 ORDER BY id DESC LIMIT 1",
        exchange,
    )
    return ExchangeState(raw) if raw is not None else None


async def _copy_state(redis: aioredis.Redis, record: Transition) -> None:
    async with redis.pipeline(transaction=True) as pipe:
        pipe.set(state_key(record.exchange), record.to_state)
        pipe.lpush(history_key(record.exchange), msgspec.json.encode(record))
        pipe.ltrim(history_key(record.exchange), 0, HISTORY_LENGTH - 1)
        await pipe.execute()


async def restore_redis_from_record(
    pool: asyncpg.Pool, redis: aioredis.Redis, exchanges: Iterable[str]
) -> list[str]:
    """Rewrite Redis's copy of the kill switch and of each exchange's state wherever it lacks
    or disagrees with PostgreSQL's record; returns what was rewritten (for the log).

    The kill switch first: a state restored before it would open the gate for a moment."""
    rewritten: list[str] = []
    async with pool.acquire() as conn:
        event = await conn.fetchrow(
            "SELECT kind, detail, (extract(epoch FROM at) * 1e6)::bigint AS at_us"
            " FROM system_events WHERE kind IN ($1, $2) ORDER BY id DESC LIMIT 1",
            KILL_SWITCH_ON,
            KILL_SWITCH_OFF,
        )
        if event is not None and event["kind"] == KILL_SWITCH_ON:
            detail = msgspec.json.decode(event["detail"])
            recorded = KillSwitch(
                reason=detail["reason"], operator=detail["operator"], at_us=event["at_us"]
            )
            # Only ever turned on here: a switch set in Redis by hand stays an emergency stop.
            if await read_kill_switch(redis) is None:
                await _copy_kill_switch(redis, recorded)
                rewritten.append(KILL_SWITCH_KEY)
        for exchange in exchanges:
            rows = await conn.fetch(
                "SELECT exchange, from_state, to_state, operator, reason,"
                " (extract(epoch FROM at) * 1e6)::bigint AS at_us"
                " FROM state_transitions WHERE exchange = $1 ORDER BY id DESC LIMIT $2",
                exchange,
                HISTORY_LENGTH,
            )
            if not rows:
                continue
            copy = await redis.get(state_key(exchange))
            if copy is not None and _text(copy) == rows[0]["to_state"]:
                continue
            records = [Transition(**dict(row)) for row in rows]
            async with redis.pipeline(transaction=True) as pipe:
                pipe.set(state_key(exchange), records[0].to_state)
                pipe.delete(history_key(exchange))
                pipe.rpush(history_key(exchange), *(msgspec.json.encode(r) for r in records))
                await pipe.execute()
            rewritten.append(state_key(exchange))
    for key in rewritten:
        logger.warning("{} restored in Redis from PostgreSQL's record", key)
    return rewritten


async def history(
    pool: asyncpg.Pool, exchange: str | None = None, limit: int = 50
) -> list[Transition]:
    rows = await pool.fetch(
        "SELECT exchange, from_state, to_state, operator, reason,"
        " (extract(epoch FROM at) * 1e6)::bigint AS at_us"
        " FROM state_transitions WHERE $1::text IS NULL OR exchange = $1"
        " ORDER BY at DESC, id DESC LIMIT $2",
        exchange,
        limit,
    )
    return [Transition(**dict(row)) for row in rows]
