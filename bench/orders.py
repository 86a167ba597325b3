"""Order-path and kill-switch benchmarks (the executor with the paper venue, real PostgreSQL
and Redis; durable intents).

* **order path**: market messages are offered to one executor at a fixed rate (trades and
  tickers alternately); every 100th trade makes a probe strategy decide to trade. Measured per
  order: message enqueued → decision returned → INTENT committed → request handed to the venue
  client. p50/p99 per rate.
* **kill switch**: 100 resting paper orders, then the kill switch is set in Redis (as
  ``tradingd kill-switch on`` does): time until the venue has none open.

``python -m bench.orders [--database-url URL --redis-url URL] [--seconds S]``: with URLs, a
scratch database is created on that server (and dropped); otherwise the benchmark's embedded,
durable storage is used.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
import uuid
from collections.abc import Sequence
from decimal import Decimal
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import redis.asyncio as aioredis
import uvloop

from tradingd.config import PaperConfig, RiskConfig
from tradingd.execution.desk import StrategyStatus
from tradingd.execution.executor import Executor
from tradingd.execution.ledger import Ledger, OrderRow
from tradingd.execution.paper import PaperVenue
from tradingd.execution.risk import InstrumentInfo
from tradingd.execution.venue import PlaceRequest, PlaceResult
from tradingd.model import Bar, MarketEvent, MarketType, Ticker, Trade
from tradingd.queues import BoundedQueue, OverflowPolicy
from tradingd.state import KILL_SWITCH_KEY, state_key
from tradingd.storage.migrations import migrate
from tradingd.strategies.api import (
    Accepted,
    FillView,
    InstrumentRules,
    OrderIntent,
    OrderType,
    OrderUpdate,
    Side,
    SystemEvent,
    TimeInForce,
)
from tradingd.supervisor import ActorContext

EXCHANGE = "binance"
INSTRUMENTS = {
    "BTCUSDT": InstrumentInfo(
        rules=InstrumentRules(
            name="BTCUSDT",
            base="BTC",
            quote="USDT",
            tick_size=Decimal("0.01"),
            step_size=Decimal("0.001"),
            min_quantity=Decimal("0.001"),
            min_notional=Decimal(5),
        )
    )
}
PAPER = PaperConfig(balances={EXCHANGE: {"USDT": Decimal(10**9), "BTC": Decimal(10**6)}})
LIMITS = RiskConfig(
    max_order_notional=Decimal(10**9),
    max_position_notional=Decimal(10**12),
    max_open_orders=10_000,
    max_orders_per_second=100_000,
)
ORDER_EVERY = 100


def _us() -> int:
    return time.time_ns() // 1000


class _Probe:
    """A strategy host whose one strategy trades on every ORDER_EVERY-th trade."""

    def __init__(self) -> None:
        self.executor: Executor | None = None
        self.trades = 0
        self.enqueued: dict[int, int] = {}  # trade seq -> enqueue time
        self.decided: dict[str, tuple[int, int]] = {}  # client id -> (enqueued, decided)
        self.side = Side.BUY

    def names(self) -> list[str]:
        return ["probe"]

    def start(self) -> None: ...
    def stop(self) -> None: ...

    def on_trades(self, trades: Sequence[Trade]) -> None:
        assert self.executor is not None
        for trade in trades:
            self.trades += 1
            if self.trades % ORDER_EVERY:
                continue
            self.side = Side.SELL if self.side is Side.BUY else Side.BUY
            intent = OrderIntent(
                instrument="BTCUSDT",
                side=self.side,
                quantity=Decimal("0.1"),
                type=OrderType.LIMIT,
                tif=TimeInForce.IOC,
                price=Decimal("99.5") if self.side is Side.BUY else Decimal("100.5"),
            )
            decision = self.executor.decide("probe", intent)
            if isinstance(decision, Accepted):
                self.decided[decision.client_order_id] = (
                    self.enqueued.pop(trade.trade_seq, 0),
                    _us(),
                )

    def on_bars(self, bars: Sequence[Bar]) -> None: ...
    def on_tickers(self, tickers: Sequence[Ticker]) -> None: ...
    def on_system_event(self, event: SystemEvent) -> None: ...
    def on_order(self, strategy: str, update: OrderUpdate) -> None: ...
    def on_fill(self, strategy: str, fill: FillView) -> None: ...
    def set_timer(self, strategy: str, name: str, interval_s: float, now_us: int) -> None: ...
    def fire_due_timers(self, now_us: int) -> None: ...

    def next_timer_due_us(self) -> int | None:
        return None

    def pause(self, name: str, reason: str) -> bool:
        return False

    def resume(self, name: str) -> bool:
        return False

    def is_paused(self, name: str) -> bool:
        return False

    def status(self) -> list[StrategyStatus]:
        return []


class _TimedLedger(Ledger):
    def __init__(self, pool: asyncpg.Pool) -> None:
        super().__init__(pool)
        self.committed: dict[str, int] = {}

    async def record_intents(
        self, intents: Sequence[tuple[str, str, str, OrderIntent]]
    ) -> list[OrderRow]:
        rows = await super().record_intents(intents)
        now = _us()
        for row in rows:
            self.committed[row.client_order_id] = now
        return rows

    async def record_sending(
        self, intents: Sequence[tuple[str, str, str, OrderIntent]], deadline_us: int
    ) -> list[OrderRow]:
        rows = await super().record_sending(intents, deadline_us)
        now = _us()
        for row in rows:
            self.committed[row.client_order_id] = now
        return rows


class _TimedVenue(PaperVenue):
    handed: dict[str, int]

    async def place(self, request: PlaceRequest) -> PlaceResult:
        self.handed[request.client_order_id] = _us()
        return await super().place(request)


def _trade(seq: int, at_us: int) -> Trade:
    return Trade(
        exchange=EXCHANGE,
        instrument_name="BTCUSDT",
        market_type=MarketType.SPOT,
        trade_id=str(seq),
        trade_seq=seq,
        price_text="100",
        quantity_text="1",
        is_buyer_maker=seq % 2 == 0,
        trade_us=at_us,
        received_us=at_us,
    )


def _ticker(at_us: int) -> Ticker:
    return Ticker(
        exchange=EXCHANGE,
        instrument_name="BTCUSDT",
        best_bid_price_text="99.99",
        best_ask_price_text="100.01",
        timestamp_us=at_us,
        received_us=at_us,
    )


def _quantiles(values: list[float]) -> dict[str, float]:
    ordered = sorted(values)
    if not ordered:
        return {"p50": float("nan"), "p99": float("nan"), "n": 0}

    def q(p: float) -> float:
        return ordered[min(len(ordered) - 1, int(p * len(ordered)))]

    return {"p50": round(q(0.5), 3), "p99": round(q(0.99), 3), "n": len(ordered)}


async def _executor(
    pool: asyncpg.Pool, redis: aioredis.Redis
) -> tuple[Executor, _Probe, _TimedLedger, _TimedVenue, BoundedQueue[MarketEvent]]:
    await redis.delete(KILL_SWITCH_KEY)
    await redis.set(state_key(EXCHANGE), "HEALTHY")
    ledger = _TimedLedger(pool)
    venue = _TimedVenue(EXCHANGE, pool, PAPER, INSTRUMENTS, _us)
    venue.handed = {}
    feed: BoundedQueue[MarketEvent] = BoundedQueue("feed", 100_000, OverflowPolicy.DROP_OLDEST)
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
    probe = _Probe()
    probe.executor = executor
    executor.attach_host(probe)
    return executor, probe, ledger, venue, feed


async def order_path(
    pool: asyncpg.Pool, redis: aioredis.Redis, rate: float, seconds: float
) -> dict[str, Any]:
    executor, probe, ledger, venue, feed = await _executor(pool, redis)
    task = asyncio.create_task(executor.run(ActorContext(executor.name, {})))
    await executor.reconciled.wait()
    loop = asyncio.get_running_loop()
    start = loop.time()
    sent = 0
    seq = 0
    # Offer messages in 1 ms slices at the target rate.
    while (elapsed := loop.time() - start) < seconds:
        due = int(elapsed * rate) - sent
        batch: list[MarketEvent] = []
        now = _us()
        for _ in range(due):
            if sent % 2:
                batch.append(_ticker(now))
            else:
                seq += 1
                probe.enqueued[seq] = now
                batch.append(_trade(seq, now))
            sent += 1
        if batch:
            feed.put_many_nowait(batch)
        await asyncio.sleep(0.001)  # the offered rate's clock, not a wait for a condition
    executor.settled.clear()
    executor._wake.set()
    await asyncio.wait_for(executor.settled.wait(), 30)
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    decision, intent, handed = [], [], []
    for client_id, (enqueued, decided) in probe.decided.items():
        if not enqueued or client_id not in venue.handed:
            continue
        decision.append((decided - enqueued) / 1000)
        intent.append((ledger.committed[client_id] - enqueued) / 1000)
        handed.append((venue.handed[client_id] - enqueued) / 1000)
    return {
        "rate": rate,
        "messages": sent,
        "orders": len(handed),
        "decision_ms": _quantiles(decision),
        "intent_committed_ms": _quantiles(intent),
        "handed_to_venue_ms": _quantiles(handed),
    }


async def kill_switch(pool: asyncpg.Pool, redis: aioredis.Redis, orders: int) -> dict[str, Any]:
    executor, _probe, _ledger, venue, feed = await _executor(pool, redis)
    executor.host = None
    task = asyncio.create_task(executor.run(ActorContext(executor.name, {})))
    await executor.reconciled.wait()
    executor.market_idle.clear()
    now = _us()
    feed.put_many_nowait([_trade(10**9, now), _ticker(now)])
    await executor.market_idle.wait()
    for index in range(orders):
        intent = OrderIntent(
            instrument="BTCUSDT",
            side=Side.BUY,
            quantity=Decimal("0.1"),
            price=Decimal(95) + Decimal(index % 100) / 100,
        )
        decision = await executor.submit("manual", intent)
        assert isinstance(decision, Accepted), decision
    executor.settled.clear()
    await asyncio.wait_for(executor.settled.wait(), 30)
    assert len(await venue.open_orders()) == orders
    started = time.perf_counter()
    await redis.set(KILL_SWITCH_KEY, "bench")
    executor._wake.set()
    while await venue.open_orders():
        executor.changed.clear()
        await asyncio.wait_for(executor.changed.wait(), 10)
    elapsed = time.perf_counter() - started
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    await redis.delete(KILL_SWITCH_KEY)
    return {"open_orders": orders, "all_cancelled_s": round(elapsed, 3)}


async def bench_orders(
    pool: asyncpg.Pool, redis: aioredis.Redis, rates: Sequence[float], seconds: float
) -> dict[str, Any]:
    paths = []
    for rate in rates:
        await pool.execute(
            "TRUNCATE fills, order_events, orders, paper_fills, paper_orders, system_events"
        )
        paths.append(await order_path(pool, redis, rate, seconds))
    await pool.execute(
        "TRUNCATE fills, order_events, orders, paper_fills, paper_orders, system_events"
    )
    return {"order_path": paths, "kill_switch": await kill_switch(pool, redis, 100)}


async def _main(args: argparse.Namespace) -> dict[str, Any]:
    rates = (1000.0, 10_000.0)
    if args.database_url:
        name = f"tradingd_bench_orders_{uuid.uuid4().hex[:8]}"
        admin = await asyncpg.connect(args.database_url)
        await admin.execute(f'CREATE DATABASE "{name}"')
        parts = urlsplit(args.database_url)
        url = urlunsplit(parts._replace(path="/" + name))
        try:
            async with asyncpg.create_pool(url, min_size=1, max_size=6) as pool:
                await migrate(pool)
                redis = aioredis.Redis.from_url(args.redis_url)
                try:
                    return await bench_orders(pool, redis, rates, args.seconds)
                finally:
                    await redis.flushdb()
                    await redis.aclose()
        finally:
            await admin.execute(f'DROP DATABASE "{name}" WITH (FORCE)')
            await admin.close()
    from bench.storage import BenchStorage

    async with BenchStorage() as storage:
        return await bench_orders(storage.pool, storage.redis, rates, args.seconds)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--database-url", default="")
    parser.add_argument("--redis-url", default="")
    parser.add_argument("--seconds", type=float, default=10.0)
    args = parser.parse_args()
    print(json.dumps(uvloop.run(_main(args)), indent=2))


if __name__ == "__main__":
    main()
