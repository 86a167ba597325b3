"""Kill switch to flat, across both live venues' execution clients (the fake venues on loopback).

Two executors (Binance spot through ``BinanceExecution``, Deribit through ``DeribitExecution``),
the daemon's control server, ``orders`` resting orders in all (half on each venue) and, with
``flatten``, a position on each. Timed: what ``tradingd kill-switch on [--flatten]`` does, from
recording the switch to the printed, verified report (the venues' bulk cancels, the verification
with their open orders, the closing orders).

``python -m bench.kill_switch --database-url URL --redis-url URL [--orders 100] [--flatten]``:
a scratch database is created on that server (and dropped); Redis is flushed afterwards.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import io
import json
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from decimal import Decimal
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import aiohttp
import asyncpg
import redis.asyncio as aioredis

from tradingd import ordercmds
from tradingd.adapters.binance import trading
from tradingd.adapters.binance.execution import BinanceExecution
from tradingd.adapters.binance.private import BinancePrivateClient
from tradingd.adapters.deribit.execution import DeribitExecution
from tradingd.config import RiskConfig
from tradingd.execution.control import ControlServer
from tradingd.execution.executor import Executor
from tradingd.execution.ledger import Ledger
from tradingd.execution.risk import InstrumentInfo
from tradingd.model import MarketEvent, Ticker
from tradingd.queues import BoundedQueue, OverflowPolicy
from tradingd.state import set_kill_switch, state_key
from tradingd.storage.migrations import migrate
from tradingd.strategies.api import Accepted, InstrumentRules, OrderIntent, OrderType, Side
from tradingd.supervisor import ActorContext
from tradingd.testing.fake_binance import FakeBinance
from tradingd.testing.fake_binance_trading import FakeBinanceTrading
from tradingd.testing.fake_deribit import FakeDeribit
from tradingd.testing.fake_deribit_trading import FakeDeribitTrading

SPOT, PERP = "BTCUSDT", "BTC-PERPETUAL"
LIMITS = RiskConfig(
    max_order_notional=Decimal(100_000),
    max_position_notional=Decimal(1_000_000),
    max_open_orders=500,
    max_orders_per_second=10_000,
)
SPOT_INFO = InstrumentInfo(
    rules=InstrumentRules(
        name=SPOT, base="BTC", quote="USDT", tick_size=Decimal("0.01"),
        step_size=Decimal("0.001"), min_quantity=Decimal("0.001"), min_notional=Decimal(5),
    )
)  # fmt: skip
PERP_INFO = InstrumentInfo(
    rules=InstrumentRules(
        name=PERP, base="BTC", quote="USD", tick_size=Decimal("0.5"),
        step_size=Decimal(10), min_quantity=Decimal(10), contract_size=Decimal(10),
    ),
    spot=False,
    inverse=True,
)  # fmt: skip
GUARD = 30.0  # seconds: a bound on every wait, never the expected duration


def _now_us() -> int:
    return time.time_ns() // 1000


@dataclass
class Drill:
    """Both venues, their executors and the control server, running."""

    binance: FakeBinanceTrading
    deribit: FakeDeribitTrading
    executors: dict[str, Executor]
    pool: asyncpg.Pool
    redis: aioredis.Redis

    async def rest(self, orders: int) -> None:
        """``orders`` resting buys, half on each venue, open at the venue."""
        for index in range(orders):
            exchange = "binance" if index % 2 == 0 else "deribit"
            if exchange == "binance":
                intent = OrderIntent(
                    instrument=SPOT, side=Side.BUY, quantity=Decimal("0.002"),
                    price=Decimal(50_000) + index,
                )  # fmt: skip
            else:
                intent = OrderIntent(
                    instrument=PERP, side=Side.BUY, quantity=Decimal(20),
                    price=Decimal(40_000) + index,
                )  # fmt: skip
            decision = await self.executors[exchange].submit("manual", intent)
            assert isinstance(decision, Accepted), decision
        await self.settle()

    async def buy(self) -> None:
        """A market buy on each venue: a position to flatten."""
        for exchange, intent in (
            ("binance", OrderIntent(instrument=SPOT, side=Side.BUY, quantity=Decimal("0.01"),
                                    type=OrderType.MARKET)),
            ("deribit", OrderIntent(instrument=PERP, side=Side.BUY, quantity=Decimal(50),
                                    type=OrderType.MARKET)),
        ):  # fmt: skip
            decision = await self.executors[exchange].submit("manual", intent)
            assert isinstance(decision, Accepted), decision
        await self.settle()

    async def settle(self) -> None:
        async with asyncio.timeout(GUARD):
            for executor in self.executors.values():
                # Settled, and every order the venue has taken has its answer (OPEN or final).
                while True:
                    executor.settled.clear()
                    executor._wake.set()
                    await executor.settled.wait()
                    if not any(
                        r.state.value in ("INTENT", "SENDING") for r in executor._orders.values()
                    ):
                        break
                    executor.changed.clear()
                    await executor.changed.wait()

    def open_at_venues(self) -> int:
        return sum(1 for o in self.binance.orders if o.open) + sum(
            1 for o in self.deribit.orders if o.state == "open"
        )

    async def kill(self, *, flatten: bool) -> tuple[float, int, str]:
        """What ``tradingd kill-switch on`` does; (seconds, exit code, printed report)."""
        out = io.StringIO()
        started = time.perf_counter()
        reason = "kill switch on by bench: drill"
        await set_kill_switch(self.pool, self.redis, on=True, operator="bench", reason="drill")
        with contextlib.redirect_stdout(out):
            code = await ordercmds.cancel_everything(
                self.redis, self.pool, reason, GUARD, flatten=flatten
            )
        return time.perf_counter() - started, code, out.getvalue()


def _ticker(exchange: str, instrument: str, bid: Decimal, ask: Decimal) -> Ticker:
    now = _now_us()
    return Ticker(
        exchange=exchange, instrument_name=instrument, best_bid_price_text=str(bid),
        best_ask_price_text=str(ask), timestamp_us=now, received_us=now,
    )  # fmt: skip


@contextlib.asynccontextmanager
async def running_drill(pool: asyncpg.Pool, redis: aioredis.Redis) -> AsyncIterator[Drill]:
    binance_fake, deribit_fake = FakeBinance(seed=41), FakeDeribit(seed=43)
    binance, deribit = FakeBinanceTrading(binance_fake), FakeDeribitTrading(deribit_fake)
    binance.add_account("drill-key", "drill-secret", {"USDT": "10000000", "BTC": "10"})
    deribit.add_account("drill-client", "drill-secret", {"BTC": "100"})
    await binance_fake.start()
    await deribit_fake.start()
    try:
        async with aiohttp.ClientSession() as http, asyncio.TaskGroup() as group:
            private = BinancePrivateClient(
                http, binance_fake.rest_url, trading.Credentials("drill-key", "drill-secret"),
                request_timeout=5.0,
            )  # fmt: skip
            venues = {
                "binance": (BinanceExecution("binance", http, private, binance.ws_api_url),
                            {SPOT: SPOT_INFO}),
                "deribit": (DeribitExecution("deribit", http, deribit_fake.ws_url, "drill-client",
                                             "drill-secret", currencies=["BTC"]),
                            {PERP: PERP_INFO}),
            }  # fmt: skip
            executors: dict[str, Executor] = {}
            tasks: list[asyncio.Task[None]] = []
            for exchange, (venue, instruments) in venues.items():
                await redis.set(state_key(exchange), "HEALTHY")
                market: BoundedQueue[MarketEvent] = BoundedQueue(
                    f"market:{exchange}", 1000, OverflowPolicy.BLOCK
                )
                executor = Executor(
                    exchange, mode="live", ledger=Ledger(pool), venue=venue, redis=redis,
                    limits=LIMITS, instruments=instruments, market=market,
                )  # fmt: skip
                executors[exchange] = executor
                tasks.append(group.create_task(executor.run(ActorContext(executor.name, {}))))
                await asyncio.wait_for(executor.reconciled.wait(), GUARD)
                book = deribit_fake.book(PERP) if exchange == "deribit" else None
                bid, ask = (book.bid, book.ask) if book else (Decimal("59999.99"), Decimal(60000))
                executor.market_idle.clear()
                market.put_many_nowait([_ticker(exchange, next(iter(instruments)), bid, ask)])
                await asyncio.wait_for(executor.market_idle.wait(), GUARD)
            ready = asyncio.Event()
            server = ControlServer(executors, redis)
            tasks.append(group.create_task(server.run(ActorContext("control", {}, ready))))
            await asyncio.wait_for(ready.wait(), GUARD)
            try:
                yield Drill(binance, deribit, executors, pool, redis)
            finally:
                for task in tasks:
                    task.cancel()
    finally:
        await binance_fake.stop()
        await deribit_fake.stop()


async def drill(
    pool: asyncpg.Pool, redis: aioredis.Redis, orders: int, *, flatten: bool
) -> dict[str, Any]:
    async with running_drill(pool, redis) as d:
        if flatten:
            await d.buy()
        await d.rest(orders)
        before = d.open_at_venues()
        seconds, code, report = await d.kill(flatten=flatten)
        return {
            "open_orders": before,
            "flatten": flatten,
            "kill_switch_s": round(seconds, 3),
            "exit_code": code,
            "open_at_venues_after": d.open_at_venues(),
            "report": report.splitlines(),
        }


async def _main(args: argparse.Namespace) -> dict[str, Any]:
    name = f"tradingd_bench_kill_{uuid.uuid4().hex[:8]}"
    admin = await asyncpg.connect(args.database_url)
    await admin.execute(f'CREATE DATABASE "{name}"')
    url = urlunsplit(urlsplit(args.database_url)._replace(path="/" + name))
    try:
        async with asyncpg.create_pool(url, min_size=1, max_size=10) as pool:
            await migrate(pool)
            redis = aioredis.Redis.from_url(args.redis_url)
            try:
                return await drill(pool, redis, args.orders, flatten=args.flatten)
            finally:
                await redis.flushdb()
                await redis.aclose()
    finally:
        await admin.execute(f'DROP DATABASE "{name}" WITH (FORCE)')
        await admin.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--database-url", required=True)
    parser.add_argument("--redis-url", required=True)
    parser.add_argument("--orders", type=int, default=100)
    parser.add_argument("--flatten", action="store_true")
    print(json.dumps(asyncio.run(_main(parser.parse_args())), indent=2))


if __name__ == "__main__":
    main()
