"""The executor driving a live venue's execution client (against a trading fake on loopback):
real PostgreSQL, Redis and wall-clock time, because the venue's deadlines are real."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass

import asyncpg
import redis.asyncio as aioredis

from tests.execution._doubles import LIMITS
from tradingd.config import RiskConfig
from tradingd.execution.auditing import Auditor
from tradingd.execution.executor import ExchangeLocker, Executor
from tradingd.execution.ledger import Ledger, OrderRow
from tradingd.execution.orders import TERMINAL_STATES, OrderState
from tradingd.execution.risk import InstrumentInfo
from tradingd.execution.venue import ExecutionClient
from tradingd.execution.wiring import exchange_locker
from tradingd.model import MarketEvent, Ticker
from tradingd.queues import BoundedQueue, OverflowPolicy
from tradingd.state import state_key
from tradingd.strategies.api import Accepted, OrderIntent
from tradingd.supervisor import ActorContext

GUARD = 20.0  # seconds: a bound on every wait, never the expected duration


def wall_clock_us() -> int:
    return int(time.time() * 1_000_000)


@dataclass
class LiveHarness:
    executor: Executor
    ledger: Ledger
    market: BoundedQueue[MarketEvent]

    async def feed(self, *events: MarketEvent) -> None:
        self.executor.market_idle.clear()
        self.market.put_many_nowait(events)
        await asyncio.wait_for(self.executor.market_idle.wait(), GUARD)

    async def submit(self, intent: OrderIntent) -> str:
        decision = await self.executor.submit("manual", intent)
        assert isinstance(decision, Accepted), decision
        return decision.client_order_id

    async def until(self, client_id: str, done: Callable[[OrderRow], bool]) -> OrderRow:
        """The ledger's row once ``done`` holds for it (re-checked at every executor change)."""
        async with asyncio.timeout(GUARD):
            while True:
                self.executor.changed.clear()
                row = await self.ledger.order(client_id)
                if row is not None and done(row):
                    return row
                await self.executor.changed.wait()

    async def until_locked(self) -> str:
        """The executor's lock reason, once it locked."""
        await asyncio.wait_for(self.executor.locked.wait(), GUARD)
        return self.executor.locked_reason

    async def until_state(self, client_id: str, *states: OrderState) -> OrderRow:
        return await self.until(client_id, lambda row: row.state in states)

    async def until_terminal(self, client_id: str) -> OrderRow:
        return await self.until(client_id, lambda row: row.state in TERMINAL_STATES)

    async def until_terminal_or_open(self, client_id: str) -> OrderRow:
        """Settled by the venue's word: final, or resting on its book."""
        return await self.until(
            client_id, lambda row: row.state in TERMINAL_STATES or row.state is OrderState.OPEN
        )


@asynccontextmanager
async def live_executor(
    pool: asyncpg.Pool,
    redis: aioredis.Redis,
    exchange: str,
    venue: ExecutionClient,
    instruments: Mapping[str, InstrumentInfo],
    tickers: list[Ticker],
    *,
    limits: RiskConfig = LIMITS,
    lock_exchange: ExchangeLocker | None = None,
    audited: bool = False,
) -> AsyncIterator[LiveHarness]:
    """With ``audited`` the account is reconciled (the exchange's state must be recorded)."""
    if not audited:
        await redis.set(state_key(exchange), "HEALTHY")
    ledger = Ledger(pool)
    market: BoundedQueue[MarketEvent] = BoundedQueue("market", 10_000, OverflowPolicy.BLOCK)
    executor = Executor(
        exchange,
        mode="live",
        ledger=ledger,
        venue=venue,
        redis=redis,
        limits=limits,
        instruments=instruments,
        market=market,
        clock_us=wall_clock_us,
        lock_exchange=lock_exchange
        or (exchange_locker(pool, redis, exchange) if audited else None),
    )
    if audited:
        executor.audit = Auditor(
            executor,
            pool=pool,
            redis=redis,
            venue=venue,
            instruments=instruments,
            interval_s=60.0,
            clock_us=wall_clock_us,
        )
    task = asyncio.create_task(executor.run(ActorContext(executor.name, {})))
    try:
        await asyncio.wait_for(executor.reconciled.wait(), GUARD)
        harness = LiveHarness(executor, ledger, market)
        await harness.feed(*tickers)
        yield harness
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
