"""Bounded in-process queues between actors, each with an explicit overflow policy.

Items move in batches (``put_many`` / ``get_batch``) so that no stage pays a per-message
queue operation it could pay once per frame or per flush.
"""

from __future__ import annotations

import asyncio
import collections
import enum
from collections.abc import Callable, Hashable, Iterable, Sequence
from typing import Generic, TypeVar

import msgspec

T = TypeVar("T")


class OverflowPolicy(enum.StrEnum):
    # The producer waits for room: nothing is lost, back-pressure reaches the producer.
    BLOCK = "block"
    # The oldest queued item is discarded to make room (and counted).
    DROP_OLDEST = "drop-oldest"
    # One slot per key; a newer item replaces the queued one with the same key (and is counted).
    KEEP_LATEST = "keep-latest-per-key"


class QueueClosed(Exception):
    pass


class QueueStats(msgspec.Struct, frozen=True):
    name: str
    policy: str
    capacity: int
    depth: int
    high_water: int
    dropped: int
    put_total: int
    get_total: int


class BoundedQueue(Generic[T]):
    def __init__(
        self,
        name: str,
        capacity: int,
        policy: OverflowPolicy,
        key: Callable[[T], Hashable] | None = None,
    ) -> None:
        if capacity < 1:
            raise ValueError("capacity must be at least 1")
        if (policy is OverflowPolicy.KEEP_LATEST) != (key is not None):
            raise ValueError("a key function goes with the keep-latest-per-key policy only")
        self.name = name
        self.capacity = capacity
        self.policy = policy
        self._key = key
        self._items: collections.deque[T] = collections.deque()
        self._latest: dict[Hashable, T] = {}
        self._not_empty = asyncio.Event()
        self._not_full = asyncio.Event()
        self._not_full.set()
        self._closed = False
        self.high_water = 0
        self.dropped = 0
        self.put_total = 0
        self.get_total = 0

    def __len__(self) -> int:
        return len(self._latest) if self._key is not None else len(self._items)

    @property
    def closed(self) -> bool:
        return self._closed

    def stats(self) -> QueueStats:
        return QueueStats(
            name=self.name,
            policy=self.policy.value,
            capacity=self.capacity,
            depth=len(self),
            high_water=self.high_water,
            dropped=self.dropped,
            put_total=self.put_total,
            get_total=self.get_total,
        )

    async def put_many(self, items: Sequence[T]) -> None:
        """Enqueue all items; under BLOCK waits for room as often as needed."""
        if self._closed:
            raise QueueClosed(self.name)
        if self.policy is not OverflowPolicy.BLOCK:
            self.put_many_nowait(items)
            return
        start = 0
        while start < len(items):
            room = self.capacity - len(self._items)
            if room <= 0:
                self._not_full.clear()
                await self._not_full.wait()
                if self._closed:
                    raise QueueClosed(self.name)
                continue
            chunk = items[start : start + room]
            self._items.extend(chunk)
            start += len(chunk)
            self._after_put(len(chunk))

    def put_many_nowait(self, items: Iterable[T]) -> None:
        """Enqueue without waiting. Under BLOCK, raises ``asyncio.QueueFull`` if out of room."""
        if self._closed:
            raise QueueClosed(self.name)
        if self._key is not None:
            latest, key = self._latest, self._key
            count = 0
            for item in items:
                k = key(item)
                if k in latest:
                    self.dropped += 1
                elif len(latest) >= self.capacity:
                    del latest[next(iter(latest))]
                    self.dropped += 1
                latest[k] = item
                count += 1
            self._after_put(count)
            return
        # A list is only read here (the deque keeps its own copy): no copy of it first.
        batch = items if type(items) is list else list(items)
        if self.policy is OverflowPolicy.BLOCK:
            if len(self._items) + len(batch) > self.capacity:
                raise asyncio.QueueFull(self.name)
            self._items.extend(batch)
        else:
            overflow = len(self._items) + len(batch) - self.capacity
            if overflow > 0:
                self.dropped += overflow
                if overflow >= len(self._items):
                    self._items.clear()
                    batch = batch[len(batch) - self.capacity :]
                else:
                    for _ in range(overflow):
                        self._items.popleft()
            self._items.extend(batch)
        self._after_put(len(batch))

    def _after_put(self, count: int) -> None:
        if count == 0:
            return
        self.put_total += count
        depth = len(self)
        if depth > self.high_water:
            self.high_water = depth
        self._not_empty.set()

    def get_batch_nowait(self, max_items: int) -> list[T]:
        if self._key is not None:
            latest = self._latest
            if len(latest) <= max_items:
                batch = list(latest.values())
                latest.clear()
            else:
                keys = [k for k, _ in zip(latest, range(max_items), strict=False)]
                batch = [latest.pop(k) for k in keys]
        else:
            items = self._items
            if len(items) <= max_items:
                batch = list(items)
                items.clear()
            else:
                batch = [items.popleft() for _ in range(max_items)]
        if batch:
            self.get_total += len(batch)
            self._not_full.set()
        if not len(self):
            self._not_empty.clear()
        return batch

    async def get_batch(self, max_items: int, linger: float = 0.0) -> list[T]:
        """Up to ``max_items`` items; waits for the first, then up to ``linger`` s for more.

        Returns an empty list only when the queue is closed and drained, whatever the number
        of consumers: one that lingered while another took everything waits again.
        """
        while True:
            while not len(self):
                if self._closed:
                    return []
                self._not_empty.clear()
                await self._not_empty.wait()
            if linger > 0 and len(self) < max_items and not self._closed:
                await self._linger(max_items, linger)
            batch = self.get_batch_nowait(max_items)
            if batch:
                return batch

    async def _linger(self, max_items: int, linger: float) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + linger
        while 0 < len(self) < max_items and not self._closed:
            remaining = deadline - loop.time()
            if remaining <= 0:
                return
            self._not_empty.clear()
            try:
                await asyncio.wait_for(self._not_empty.wait(), remaining)
            except TimeoutError:
                return

    def close(self) -> None:
        """No more puts; consumers drain what is left, then get an empty batch."""
        self._closed = True
        self._not_empty.set()
        self._not_full.set()
