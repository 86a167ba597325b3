"""The actors' shared waits (``tradingd.actors``): ``next_batch``."""

from __future__ import annotations

import asyncio

import pytest

from tradingd.actors import next_batch
from tradingd.queues import BoundedQueue, OverflowPolicy
from tradingd.supervisor import ActorContext

WAIT = 5.0


class CountingContext(ActorContext):
    """Counts check-ins; ``checked_in(n)`` is set once ``n`` have been made."""

    def __init__(self) -> None:
        super().__init__("test", {})
        self.checkins = 0
        self._wanted: tuple[int, asyncio.Event] | None = None

    def checkin(self) -> None:
        super().checkin()
        self.checkins += 1
        if self._wanted is not None and self.checkins >= self._wanted[0]:
            self._wanted[1].set()

    def checked_in(self, count: int) -> asyncio.Event:
        event = asyncio.Event()
        self._wanted = (count, event)
        if self.checkins >= count:
            event.set()
        return event


def _queue(*items: int) -> BoundedQueue[int]:
    queue: BoundedQueue[int] = BoundedQueue("test", 100, OverflowPolicy.BLOCK)
    queue.put_many_nowait(list(items))
    return queue


async def test_a_batch_in_hand_is_taken_without_suspending() -> None:
    queue = _queue(1, 2, 3, 4, 5)
    waiting = next_batch(CountingContext(), queue, 3)
    with pytest.raises(StopIteration) as done:
        waiting.send(None)
    assert done.value.value == [1, 2, 3]
    assert queue.get_batch_nowait(10) == [4, 5]


async def test_the_wait_is_the_callers_own_no_task_is_made() -> None:
    queue = _queue()
    before = asyncio.all_tasks()
    waiting = asyncio.create_task(next_batch(CountingContext(), queue, 10))
    await asyncio.sleep(0)  # one turn: the wait has started
    assert asyncio.all_tasks() - before == {waiting}
    queue.put_many_nowait([7, 8])
    async with asyncio.timeout(WAIT):
        assert await waiting == [7, 8]


async def test_it_checks_in_while_it_waits() -> None:
    ctx = CountingContext()
    queue = _queue()
    waiting = asyncio.create_task(next_batch(ctx, queue, 10, period=0.01))
    async with asyncio.timeout(WAIT):
        await ctx.checked_in(3).wait()
        assert not waiting.done()
        queue.put_many_nowait([1])
        assert await waiting == [1]


async def test_it_is_empty_once_the_queue_is_closed_and_drained() -> None:
    queue = _queue(1)
    queue.close()
    ctx = CountingContext()
    assert await next_batch(ctx, queue, 10) == [1]
    assert await next_batch(ctx, queue, 10) == []
    open_queue = _queue()
    waiting = asyncio.create_task(next_batch(ctx, open_queue, 10))
    await asyncio.sleep(0)
    open_queue.close()
    async with asyncio.timeout(WAIT):
        assert await waiting == []


async def test_cancelling_the_wait_leaves_the_queue_whole() -> None:
    queue = _queue()
    waiting = asyncio.create_task(next_batch(CountingContext(), queue, 10))
    await asyncio.sleep(0)
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    queue.put_many_nowait([1, 2])
    assert queue.get_batch_nowait(10) == [1, 2]
