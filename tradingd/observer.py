"""The daemon's view of operator actions taken elsewhere (``tradingd unlock``, ``lock``,
``kill-switch``): every change of an exchange state or of the kill switch that the daemon
observes in Redis is written to its own log, so the journal of the service holds them too.

Polled at ``daemon.status_interval``: a change is logged within one interval.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable

import redis.asyncio as aioredis
from loguru import logger

from tradingd.state import StateUnavailable, read_kill_switch, read_state

Observed = dict[str, str]


async def observe(redis: aioredis.Redis, exchanges: Iterable[str]) -> Observed:
    """What Redis says now: each exchange's state and the kill switch, as text."""
    seen: Observed = {}
    for name in exchanges:
        try:
            state = await read_state(redis, name)
            seen[name] = state.value if state else "NEW"
        except StateUnavailable:
            seen[name] = "unknown"
    try:
        switch = await read_kill_switch(redis)
        seen["kill switch"] = (
            "off" if switch is None else f"ON by {switch.operator}: {switch.reason}"
        )
    except StateUnavailable:
        seen["kill switch"] = "unknown"
    return seen


def log_changes(before: Observed, after: Observed) -> None:
    for name, now in after.items():
        was = before.get(name)
        if was is None or was == now:
            continue
        log = logger.bind(STATE="KILL_SWITCH" if name == "kill switch" else now, EXCHANGE=name)
        level = "WARNING" if name == "kill switch" else "INFO"
        log.log(level, "observed {}: {} -> {}", name, was, now)


async def log_state_changes(redis: aioredis.Redis, exchanges: list[str], interval: float) -> None:
    """Run until cancelled; Redis errors are skipped (the next poll retries)."""
    before: Observed | None = None
    this_task = asyncio.current_task()
    while True:
        try:
            after = await observe(redis, exchanges)
        except Exception as exc:  # Redis down must not stop the daemon
            logger.debug("state changes not observed: {}", exc)
        else:
            if before is not None:
                log_changes(before, after)
            before = after
        if this_task is not None and this_task.cancelling():
            # redis-py can swallow a cancellation that lands mid-command.
            raise asyncio.CancelledError()
        await asyncio.sleep(interval)
