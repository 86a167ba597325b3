"""Test doubles for the executor's tests: a recording strategy host (the real one is
``tradingd.execution.strategy_host``), a market-data feeder and the executor's harness."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path

import asyncpg
import redis.asyncio as aioredis

from tradingd.config import PaperConfig, RiskConfig
from tradingd.execution.auditing import Auditor
from tradingd.execution.breaker import Breaker
from tradingd.execution.desk import StrategyStatus
from tradingd.execution.executor import ExchangeLocker, Executor
from tradingd.execution.ledger import Ledger
from tradingd.execution.orders import OrderState
from tradingd.execution.paper import PaperFaults, PaperVenue
from tradingd.execution.risk import InstrumentInfo
from tradingd.model import Bar, MarketEvent, MarketType, Ticker, Trade, optional_text
from tradingd.queues import BoundedQueue, OverflowPolicy
from tradingd.state import state_key
from tradingd.strategies.api import FillView, InstrumentRules, OrderUpdate, SystemEvent
from tradingd.supervisor import ActorContext

REPO = Path(__file__).resolve().parents[2]
EXCHANGE = "binance"
BTCUSDT = InstrumentInfo(
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
INSTRUMENTS = {"BTCUSDT": BTCUSDT}
PAPER = PaperConfig(
    maker_fee=Decimal("0.001"),
    taker_fee=Decimal("0.001"),
    slippage=Decimal(0),
    balances={EXCHANGE: {"USDT": Decimal(1_000_000), "BTC": Decimal(10)}},
)
LIMITS = RiskConfig(
    max_order_notional=Decimal(100_000),
    max_position_notional=Decimal(1_000_000),
    max_open_orders=500,
    max_orders_per_second=10_000,
)


@dataclass
class RecordingHost:
    """Records what the executor tells the strategies (StrategyHost's interface)."""

    orders: list[tuple[str, OrderUpdate]] = field(default_factory=list)
    fills: list[tuple[str, FillView]] = field(default_factory=list)
    trades: list[Trade] = field(default_factory=list)
    paused: dict[str, str] = field(default_factory=dict)

    def names(self) -> list[str]:
        return ["s1"]

    def start(self) -> None: ...
    def stop(self) -> None: ...

    def on_trades(self, trades: Sequence[Trade]) -> None:
        self.trades.extend(trades)

    def on_bars(self, bars: Sequence[Bar]) -> None: ...
    def on_tickers(self, tickers: Sequence[Ticker]) -> None: ...
    def on_system_event(self, event: SystemEvent) -> None: ...

    def on_order(self, strategy: str, update: OrderUpdate) -> None:
        self.orders.append((strategy, update))

    def on_fill(self, strategy: str, fill: FillView) -> None:
        self.fills.append((strategy, fill))

    def set_timer(self, strategy: str, name: str, interval_s: float, now_us: int) -> None: ...
    def fire_due_timers(self, now_us: int) -> None: ...

    def next_timer_due_us(self) -> int | None:
        return None

    def pause(self, name: str, reason: str) -> bool:
        self.paused[name] = reason
        return True

    def resume(self, name: str) -> bool:
        return self.paused.pop(name, None) is not None

    def is_paused(self, name: str) -> bool:
        return name in self.paused

    def status(self) -> list[StrategyStatus]:
        return []


class Clock:
    def __init__(self, now_us: int) -> None:
        self.now = now_us

    def __call__(self) -> int:
        return self.now


def trade(price: str, quantity: str, seq: int, at_us: int) -> Trade:
    return Trade(
        exchange=EXCHANGE,
        instrument_name="BTCUSDT",
        market_type=MarketType.SPOT,
        trade_id=str(seq),
        trade_seq=seq,
        price_text=str(Decimal(price)),
        quantity_text=str(Decimal(quantity)),
        is_buyer_maker=True,
        trade_us=at_us,
        received_us=at_us,
    )


def ticker(bid: str, ask: str, at_us: int) -> Ticker:
    return Ticker(
        exchange=EXCHANGE,
        instrument_name="BTCUSDT",
        best_bid_price_text=optional_text(Decimal(bid)),
        best_ask_price_text=optional_text(Decimal(ask)),
        timestamp_us=at_us,
        received_us=at_us,
    )


@dataclass
class Harness:
    executor: Executor
    venue: PaperVenue
    ledger: Ledger
    market: BoundedQueue[MarketEvent]
    clock: Clock
    task: asyncio.Task[None]

    async def feed(self, *events: MarketEvent) -> None:
        """Hand market data to the executor and wait until it has taken it all."""
        self.executor.market_idle.clear()
        self.market.put_many_nowait(events)
        await asyncio.wait_for(self.executor.market_idle.wait(), 5)

    async def until_state(self, client_id: str, state: OrderState) -> None:
        """Wait until the executor has moved ``client_id`` to ``state`` (not terminal)."""
        while True:
            row = self.executor._orders.get(client_id)
            if row is not None and row.state is state:
                return
            self.executor.changed.clear()
            await asyncio.wait_for(self.executor.changed.wait(), 5)

    async def settle(self) -> None:
        self.executor._wake.set()
        self.executor.settled.clear()
        await asyncio.wait_for(self.executor.settled.wait(), 5)


async def healthy(redis: aioredis.Redis) -> None:
    await redis.set(state_key(EXCHANGE), "HEALTHY")


@asynccontextmanager
async def running_executor(
    pool: asyncpg.Pool,
    redis: aioredis.Redis,
    *,
    faults: PaperFaults | None = None,
    host: RecordingHost | None = None,
    clock: Clock | None = None,
    open_gaps: Callable[[], frozenset[str]] = frozenset,
    limits: RiskConfig = LIMITS,
    lock_exchange: ExchangeLocker | None = None,
    breaker: Breaker | None = None,
    audited: bool = False,
    paper: PaperConfig = PAPER,
) -> AsyncIterator[Harness]:
    clock = clock or Clock(1_800_000_000_000_000)
    ledger = Ledger(pool)
    venue = PaperVenue(EXCHANGE, pool, paper, INSTRUMENTS, clock, faults)
    market: BoundedQueue[MarketEvent] = BoundedQueue("market", 10_000, OverflowPolicy.BLOCK)
    executor = Executor(
        EXCHANGE,
        mode="paper",
        ledger=ledger,
        venue=venue,
        redis=redis,
        limits=limits,
        instruments=INSTRUMENTS,
        market=market,
        open_gaps=open_gaps,
        taker_fee=PAPER.taker_fee,
        clock_us=clock,
        lock_exchange=lock_exchange,
        breaker=breaker,
    )
    if host is not None:
        executor.attach_host(host, {"s1": ["BTCUSDT"]})
    if audited:
        executor.audit = Auditor(
            executor,
            pool=pool,
            redis=redis,
            venue=venue,
            instruments=INSTRUMENTS,
            interval_s=60.0,
            clock_us=clock,
        )
    task = asyncio.create_task(executor.run(ActorContext(executor.name, {})))
    try:
        await asyncio.wait_for(executor.reconciled.wait(), 10)
        yield Harness(executor, venue, ledger, market, clock, task)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
