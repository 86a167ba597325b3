"""The analyzer actor: a volume spike becomes a WARNING and a system_events row."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from decimal import Decimal
from typing import Any

import asyncpg
import msgspec
import pytest
from loguru import logger

from tradingd.actors.analyzer import Analyzer
from tradingd.config import AnalyzerConfig
from tradingd.model import MarketType, Trade, datetime_to_us
from tradingd.queues import BoundedQueue, OverflowPolicy
from tradingd.supervisor import ActorContext

START_US = 1_798_761_600_000_000  # a minute boundary
MINUTE_US = 60_000_000
WAIT = 30.0


def trade(at_us: int, quantity: str, *, received_delay_us: int = 250) -> Trade:
    return Trade(
        exchange="binance",
        instrument_name="BTCUSDT",
        market_type=MarketType.SPOT,
        trade_id=str(at_us),
        trade_seq=0,
        price_text="97000.5",
        quantity_text=str(Decimal(quantity)),
        is_buyer_maker=True,
        trade_us=at_us,
        received_us=at_us + received_delay_us,
    )


def baseline_then_spike(spike: str = "250.125") -> list[Trade]:
    trades = []
    for minute in range(15):
        for second in (5, 30):
            volume = "0.5" if minute % 2 else "0.6"
            trades.append(trade(START_US + minute * MINUTE_US + second * 1_000_000, volume))
    trades.append(trade(START_US + 15 * MINUTE_US + 1_000_000, spike))
    return trades


class FakeClock:
    def __init__(self, now_us: int) -> None:
        self.now_us = now_us

    def __call__(self) -> int:
        return self.now_us * 1000


def config(**overrides: Any) -> AnalyzerConfig:
    base: dict[str, Any] = {"bucket_seconds": 60, "window_buckets": 30, "min_buckets": 10}
    base.update(overrides)
    return msgspec.convert(base, AnalyzerConfig)


def trades_queue() -> BoundedQueue[Trade]:
    return BoundedQueue("analysis", 10_000, OverflowPolicy.DROP_OLDEST)


@contextlib.asynccontextmanager
async def running(analyzer: Analyzer) -> AsyncIterator[asyncio.Task[None]]:
    task = asyncio.ensure_future(analyzer.run(ActorContext(analyzer.name, {})))
    try:
        yield task
    finally:
        if not task.done():
            task.cancel()
        await asyncio.gather(task, return_exceptions=True)


@contextlib.contextmanager
def captured_warnings() -> Any:
    records: list[Any] = []
    sink = logger.add(lambda m: records.append(m.record), level="WARNING")
    try:
        yield records
    finally:
        logger.remove(sink)


async def test_a_spike_becomes_a_system_event(pool: asyncpg.Pool) -> None:
    trades = baseline_then_spike()
    clock = FakeClock(trades[-1].trade_us + 1_000_000)
    queue = trades_queue()
    analyzer = Analyzer(config(), pool, queue, clock=clock)
    with captured_warnings() as warnings:
        async with running(analyzer) as task:
            queue.put_many_nowait(trades)
            await asyncio.wait_for(analyzer.wait_until(lambda: analyzer.trades_seen == 31), WAIT)
            assert analyzer.anomalies == 0  # the spike's minute is still open
            clock.now_us += MINUTE_US
            queue.put_many_nowait([trade(START_US + 16 * MINUTE_US + 1, "0.5")])
            await asyncio.wait_for(analyzer.wait_until(lambda: analyzer.events_written == 1), WAIT)
            queue.close()
            await asyncio.wait_for(task, WAIT)

    row = await pool.fetchrow("SELECT * FROM system_events")
    assert (row["kind"], row["exchange"], row["instrument_name"]) == (
        "volume_anomaly",
        "binance",
        "BTCUSDT",
    )
    detail = json.loads(row["detail"])
    assert detail["bucket_start_us"] == START_US + 15 * MINUTE_US
    assert detail["bucket_start"] == "2027-01-01T00:15:00+00:00"
    assert detail["volume"] == "250.125"
    assert detail["mean"] == pytest.approx(1.1, rel=0.01)
    assert detail["stddev"] == pytest.approx(0.1, rel=0.1)
    assert detail["z"] > 4.0
    assert datetime_to_us(row["at"]) == clock.now_us

    [warning] = [w for w in warnings if "volume anomaly" in w["message"]]
    assert warning["level"].name == "WARNING"
    assert warning["extra"]["EXCHANGE"] == "binance"
    assert warning["extra"]["SYMBOL"] == "BTCUSDT"
    assert analyzer.latency.count == 32
    assert analyzer.stats()["latency_p50_us"] > 0


async def test_a_spike_followed_by_silence_is_reported_by_the_clock(pool: asyncpg.Pool) -> None:
    trades = baseline_then_spike()
    clock = FakeClock(trades[-1].trade_us + 1_000_000)
    queue = trades_queue()
    analyzer = Analyzer(config(), pool, queue, clock=clock)
    async with running(analyzer):
        queue.put_many_nowait(trades)
        await asyncio.wait_for(analyzer.wait_until(lambda: analyzer.trades_seen == 31), WAIT)
        clock.now_us = START_US + 16 * MINUTE_US + 2_500_000  # past the minute and its grace
        await asyncio.wait_for(analyzer.wait_until(lambda: analyzer.events_written == 1), WAIT)
    assert await pool.fetchval("SELECT count(*) FROM system_events") == 1


async def test_tick_to_analyzer_latency_and_graceful_return(pool: asyncpg.Pool) -> None:
    clock = FakeClock(START_US + 10_000)
    queue = trades_queue()
    analyzer = Analyzer(config(), pool, queue, clock=clock)
    queue.put_many_nowait(
        [trade(START_US + i, "1", received_delay_us=10_000 - i - 1000) for i in range(100)]
    )
    queue.close()
    await asyncio.wait_for(analyzer.run(ActorContext("analyzer", {})), WAIT)
    assert analyzer.latency.count == 100
    assert analyzer.latency.min == analyzer.latency.max == 1000
    assert analyzer.stats()["latency_p99_us"] == 1000


async def test_events_wait_while_postgres_is_down() -> None:
    probe = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    port = probe.sockets[0].getsockname()[1]
    probe.close()
    await probe.wait_closed()
    dead = await asyncpg.create_pool(f"postgresql://postgres@127.0.0.1:{port}/x", min_size=0)
    trades = baseline_then_spike()
    clock = FakeClock(START_US + 16 * MINUTE_US + 2_500_000)
    queue = trades_queue()
    analyzer = Analyzer(config(), dead, queue, clock=clock)
    try:
        with captured_warnings() as warnings:
            async with running(analyzer):
                queue.put_many_nowait(trades)
                await asyncio.wait_for(analyzer.wait_until(lambda: analyzer.anomalies == 1), WAIT)
                await asyncio.wait_for(
                    analyzer.wait_until(lambda: analyzer.event_write_failures >= 1), WAIT
                )
                stats = analyzer.stats()
                assert stats["events_pending"] == 1 and stats["events_written"] == 0
        assert any("anomaly events not written" in w["message"] for w in warnings)
    finally:
        await dead.close()
