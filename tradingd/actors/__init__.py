"""The daemon's actors (receivers, persister, analyzer, repairer) and their shared wait helpers.

Actors must check in with their supervisor every few seconds even while they wait on storage, so
every wait here is bounded by ``CHECKIN_PERIOD``.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

from tradingd.queues import BoundedQueue
from tradingd.supervisor import ActorContext

T = TypeVar("T")

CHECKIN_PERIOD = 1.0


async def checked_in(
    ctx: ActorContext, awaitable: Awaitable[T], period: float = CHECKIN_PERIOD
) -> T:
    """Await ``awaitable`` while checking in every ``period`` seconds; cancel it if cancelled."""
    task = asyncio.ensure_future(awaitable)
    try:
        while True:
            done, _ = await asyncio.wait({task}, timeout=period)
            ctx.checkin()
            if done:
                return task.result()
    finally:
        if not task.done():
            task.cancel()
            await asyncio.wait({task})
            if not task.cancelled():
                task.exception()  # retrieved: it is reported by whoever cancelled us


async def next_batch(
    ctx: ActorContext, queue: BoundedQueue[T], max_items: int, period: float = CHECKIN_PERIOD
) -> list[T]:
    """``queue.get_batch(max_items)``, checking in every ``period`` seconds while it waits.

    A busy feed wakes its consumer once per burst: this wakes it directly, where ``checked_in``
    would run the wait as a task of its own (a task, a timer and a wait set per batch, and an
    extra event-loop hop before the consumer sees its batch). Cancelling ``get_batch`` loses
    nothing: items leave the queue only when it returns.
    """
    while True:
        ctx.checkin()
        if len(queue):
            return queue.get_batch_nowait(max_items)
        try:
            async with asyncio.timeout(period):
                return await queue.get_batch(max_items)
        except TimeoutError:
            continue


async def pause(ctx: ActorContext, seconds: float, period: float = CHECKIN_PERIOD) -> None:
    """A timed backoff delay that keeps checking in."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    while True:
        ctx.checkin()
        remaining = deadline - loop.time()
        if remaining <= 0:
            return
        await asyncio.sleep(min(remaining, period))


class RateLimiter:
    """Lets a repeated warning through at most once per ``interval``; counts the rest."""

    def __init__(self, interval: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.interval = interval
        self._clock = clock
        self._last: float | None = None
        self.suppressed = 0

    def allow(self) -> int | None:
        """The number suppressed since the last allowed one if this one may go out, else None."""
        now = self._clock()
        if self._last is not None and now - self._last < self.interval:
            self.suppressed += 1
            return None
        self._last = now
        count, self.suppressed = self.suppressed, 0
        return count

    def reset(self) -> None:
        self._last = None
        self.suppressed = 0
