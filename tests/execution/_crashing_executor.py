"""A process that runs one paper executor, places orders, and SIGKILLs itself at a chosen
point of the order path (the parent test then restarts an executor on the same storage).

    python -m tests.execution._crashing_executor DB_URL REDIS_URL POINT ORDERS

POINT: ``before_send`` (the intent is committed, claimed for sending, nothing sent) or
``after_send`` (the venue has the order, the reply is not recorded).
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time
from collections.abc import Sequence
from decimal import Decimal

import asyncpg
import redis.asyncio as aioredis

from tests.execution._doubles import EXCHANGE, INSTRUMENTS, LIMITS, PAPER, ticker, trade
from tradingd.execution.executor import Executor
from tradingd.execution.ledger import Ledger, OrderRow
from tradingd.execution.paper import PaperVenue
from tradingd.execution.venue import PlaceRequest, PlaceResult
from tradingd.model import MarketEvent
from tradingd.queues import BoundedQueue, OverflowPolicy
from tradingd.strategies.api import Accepted, OrderIntent, OrderType, Side
from tradingd.supervisor import ActorContext


def _die() -> None:
    sys.stdout.flush()
    os.kill(os.getpid(), signal.SIGKILL)


class CrashingLedger(Ledger):
    def __init__(self, pool: asyncpg.Pool, crash_at: int) -> None:
        super().__init__(pool)
        self._bursts = 0
        self._crash_at = crash_at

    async def record_sending(
        self, intents: Sequence[tuple[str, str, str, OrderIntent]], deadline_us: int
    ) -> list[OrderRow]:
        rows = await super().record_sending(intents, deadline_us)
        self._bursts += 1
        if self._bursts == self._crash_at:
            _die()
        return rows


class CrashingVenue(PaperVenue):
    crash_at = 0
    _places = 0

    async def place(self, request: PlaceRequest) -> PlaceResult:
        result = await super().place(request)
        self._places += 1
        if self._places == self.crash_at:
            _die()
        return result


async def main(db_url: str, redis_url: str, point: str, orders: int) -> None:
    pool = await asyncpg.create_pool(db_url, min_size=1, max_size=4)
    redis = aioredis.Redis.from_url(redis_url)
    now = time.time_ns() // 1000
    ledger = CrashingLedger(pool, orders if point == "before_send" else 0)
    venue = CrashingVenue(EXCHANGE, pool, PAPER, INSTRUMENTS, lambda: time.time_ns() // 1000)
    venue.crash_at = orders if point == "after_send" else 0
    feed: BoundedQueue[MarketEvent] = BoundedQueue("market", 100, OverflowPolicy.BLOCK)
    executor = Executor(
        EXCHANGE,
        mode="paper",
        ledger=ledger,
        venue=venue,
        redis=redis,
        limits=LIMITS,
        instruments=INSTRUMENTS,
        market=feed,
    )
    task = asyncio.create_task(executor.run(ActorContext(executor.name, {})))
    await executor.reconciled.wait()
    executor.market_idle.clear()
    feed.put_many_nowait([trade("100", "1", 1, now), ticker("99.9", "100.1", now)])
    await executor.market_idle.wait()
    for index in range(orders):
        kind = OrderType.MARKET if index % 2 else OrderType.LIMIT
        intent = OrderIntent(
            instrument="BTCUSDT",
            side=Side.BUY,
            quantity=Decimal("0.1"),
            type=kind,
            price=Decimal(99) if kind is OrderType.LIMIT else None,
        )
        decision = await executor.submit("manual", intent)
        assert isinstance(decision, Accepted), decision
        print(decision.client_order_id, flush=True)
    await task  # killed before this returns


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])))
