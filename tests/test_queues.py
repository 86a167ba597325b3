from __future__ import annotations

import asyncio

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tradingd.queues import BoundedQueue, OverflowPolicy, QueueClosed


async def test_block_policy_waits_for_room_and_loses_nothing() -> None:
    queue: BoundedQueue[int] = BoundedQueue("q", 10, OverflowPolicy.BLOCK)
    producer = asyncio.create_task(queue.put_many(list(range(35))))
    received: list[int] = []
    while len(received) < 35:
        received.extend(await queue.get_batch(7))
    await producer
    assert received == list(range(35))
    stats = queue.stats()
    assert stats.high_water == 10
    assert stats.dropped == 0
    assert stats.put_total == stats.get_total == 35


async def test_block_policy_nowait_refuses_when_full() -> None:
    queue: BoundedQueue[int] = BoundedQueue("q", 3, OverflowPolicy.BLOCK)
    queue.put_many_nowait([1, 2])
    with pytest.raises(asyncio.QueueFull):
        queue.put_many_nowait([3, 4])
    assert len(queue) == 2


async def test_drop_oldest_counts_drops() -> None:
    queue: BoundedQueue[int] = BoundedQueue("q", 5, OverflowPolicy.DROP_OLDEST)
    queue.put_many_nowait(range(3))
    queue.put_many_nowait(range(3, 12))
    assert await queue.get_batch(100) == [7, 8, 9, 10, 11]
    assert queue.stats().dropped == 7


async def test_keep_latest_per_key_coalesces() -> None:
    queue: BoundedQueue[tuple[str, int]] = BoundedQueue(
        "tickers", 2, OverflowPolicy.KEEP_LATEST, key=lambda item: item[0]
    )
    queue.put_many_nowait([("a", 1), ("b", 1), ("a", 2), ("a", 3)])
    assert len(queue) == 2
    queue.put_many_nowait([("c", 1)])  # a third key evicts the oldest key
    assert await queue.get_batch(10) == [("b", 1), ("c", 1)]
    assert queue.stats().dropped == 3


async def test_get_batch_lingers_for_more_items() -> None:
    queue: BoundedQueue[int] = BoundedQueue("q", 100, OverflowPolicy.BLOCK)
    queue.put_many_nowait([1])
    # Runs once get_batch is waiting for more (callbacks run in FIFO order).
    asyncio.get_running_loop().call_soon(queue.put_many_nowait, [2, 3])
    batch = await queue.get_batch(3, linger=5.0)
    assert batch == [1, 2, 3]


async def test_close_drains_then_returns_empty() -> None:
    queue: BoundedQueue[int] = BoundedQueue("q", 10, OverflowPolicy.BLOCK)
    queue.put_many_nowait([1, 2])
    queue.close()
    with pytest.raises(QueueClosed):
        await queue.put_many([3])
    assert await queue.get_batch(10) == [1, 2]
    assert await queue.get_batch(10) == []


async def test_close_wakes_a_blocked_producer() -> None:
    queue: BoundedQueue[int] = BoundedQueue("q", 1, OverflowPolicy.BLOCK)
    queue.put_many_nowait([1])
    producer = asyncio.create_task(queue.put_many([2]))
    # The producer's first step (which blocks on the full queue) runs before this callback.
    asyncio.get_running_loop().call_soon(queue.close)
    with pytest.raises(QueueClosed):
        await producer


@given(
    capacity=st.integers(1, 20),
    batches=st.lists(st.lists(st.integers(), max_size=30), max_size=20),
)
def test_drop_oldest_keeps_the_newest_and_accounts_for_all(
    capacity: int, batches: list[list[int]]
) -> None:
    queue: BoundedQueue[int] = BoundedQueue("q", capacity, OverflowPolicy.DROP_OLDEST)
    everything: list[int] = []
    for batch in batches:
        queue.put_many_nowait(batch)
        everything.extend(batch)
        assert len(queue) <= capacity
    kept = queue.get_batch_nowait(capacity)
    assert kept == everything[len(everything) - len(kept) :]
    assert len(kept) + queue.dropped == len(everything)


async def test_lingering_consumers_never_get_an_empty_batch_while_open() -> None:
    # Three consumers linger on one item; one takes it when the linger ends, and the other two
    # must wait again, not take the empty queue for a closed one.
    queue: BoundedQueue[int] = BoundedQueue("q", 100, OverflowPolicy.BLOCK)
    received: list[list[int]] = []
    took = asyncio.Event()

    async def consume() -> None:
        while batch := await queue.get_batch(10, linger=0.02):
            received.append(batch)
            took.set()

    queue.put_many_nowait([1])
    consumers = [asyncio.create_task(consume()) for _ in range(3)]
    try:
        await took.wait()
        # A negative claim needs a window: ten lingers long, no consumer may return.
        done, _ = await asyncio.wait(consumers, timeout=0.2)
        assert not done, "a consumer took an empty batch from an open queue"
        took.clear()
        queue.put_many_nowait([2, 3])
        await took.wait()
        queue.close()
        await asyncio.wait_for(asyncio.gather(*consumers), 5.0)
    finally:
        for consumer in consumers:
            consumer.cancel()
    assert received == [[1], [2, 3]]


@pytest.mark.parametrize("policy", [OverflowPolicy.BLOCK, OverflowPolicy.DROP_OLDEST])
async def test_a_list_put_is_not_changed_by_its_caller_afterwards(policy: OverflowPolicy) -> None:
    queue: BoundedQueue[int] = BoundedQueue("q", 10, policy)
    items = [1, 2, 3]
    queue.put_many_nowait(items)
    items.append(4)
    items[0] = 9
    assert queue.get_batch_nowait(10) == [1, 2, 3]
