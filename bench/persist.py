"""Persist benchmark: rows/s of the persister actor into PostgreSQL (the production path).

The real ``Persister`` (batches of ``persister.batch_size``, one transaction per batch through
``tradingd.storage.writer``: idempotent ``INSERT ... ON CONFLICT DO NOTHING`` into the monthly
partition of ``public_trades``) reads a BLOCK queue that a producer fills as fast as the queue
takes it. The clock runs from the first put to the commit of the last trade. Every run starts
from empty tables. The duplicate variant offers the same number of trades of which every tenth
repeats one committed 1.5 batches earlier (what a reconnect overlap or a repair produces).
"""

from __future__ import annotations

import asyncio
import os
import random
import statistics
import time
from collections.abc import Callable, Sequence
from decimal import Decimal
from typing import Any

from bench.frames import BASE_US, BINANCE_SYMBOLS, binance_text
from bench.procs import CpuMeter
from bench.stats import summarize
from bench.storage import BenchStorage
from tradingd.actors.persister import Persister, Record
from tradingd.config import PersisterConfig
from tradingd.model import MarketType, Ticker, Trade
from tradingd.queues import BoundedQueue, OverflowPolicy
from tradingd.supervisor import ActorContext

# Trades are offered to the queue in chunks this size (a receiver offers one frame's worth).
PRODUCER_CHUNK = 1_000


def make_trades(count: int, *, duplicate_every: int = 0, seed: int = 5) -> list[Trade]:
    """``count`` trades on four symbols; with ``duplicate_every`` = k, every k-th one repeats
    an earlier trade (same key) from 7,500 trades before."""
    rng = random.Random(seed)
    prices: list[list[Decimal]] = []
    quantities: list[list[Decimal]] = []
    for symbol in BINANCE_SYMBOLS:
        pd, qd = symbol.price_decimals, symbol.quantity_decimals
        base = symbol.start_price_units
        prices.append([Decimal(binance_text(base + rng.randint(-500, 500), pd)) for _ in range(97)])
        quantities.append([Decimal(binance_text(rng.randint(1, 10**qd), qd)) for _ in range(89)])
    trades: list[Trade] = []
    next_ids = [rng.randrange(1_000_000_000, 4_000_000_000) for _ in BINANCE_SYMBOLS]
    trade_us = BASE_US + 14 * 86_400_000_000  # mid-month: one partition
    for index in range(count):
        if duplicate_every and index % duplicate_every == duplicate_every - 1 and index >= 7_500:
            trades.append(trades[index - 7_500])
            continue
        slot = index % len(BINANCE_SYMBOLS)
        seq = next_ids[slot]
        next_ids[slot] += 1
        trade_us += 7
        trades.append(
            Trade(
                exchange="binance",
                instrument_name=BINANCE_SYMBOLS[slot].name,
                market_type=MarketType.SPOT,
                trade_id=str(seq),
                trade_seq=seq,
                price_text=str(prices[slot][index % 97]),
                quantity_text=str(quantities[slot][index % 89]),
                is_buyer_maker=index % 3 == 0,
                was_best_price_match=True,
                trade_us=trade_us,
                received_us=trade_us + 900,
            )
        )
    return trades


async def persist_once(
    storage: BenchStorage, trades: Sequence[Trade], config: PersisterConfig
) -> dict[str, Any]:
    """One run: empty tables, the persister started, every trade offered and committed."""
    await storage.reset()
    records: BoundedQueue[Record] = BoundedQueue("records", config.queue_size, OverflowPolicy.BLOCK)
    tickers: BoundedQueue[Ticker] = BoundedQueue(
        "tickers",
        config.ticker_queue_size,
        OverflowPolicy.KEEP_LATEST,
        key=lambda t: (t.exchange, t.instrument_name),
    )
    persister = Persister(config, storage.pool, storage.redis, records, tickers)
    total = len(trades)
    # This process is the persister (plus a producer that only fills the queue).
    meter = CpuMeter({"persister": os.getpid(), "postgres": storage.postgres_pid()})
    async with asyncio.TaskGroup() as group:
        actor = group.create_task(persister.run(ActorContext("persister", {})))
        meter.start()
        started = time.perf_counter()
        for start in range(0, total, PRODUCER_CHUNK):
            await records.put_many(trades[start : start + PRODUCER_CHUNK])
        await persister.wait_until(lambda: persister.trades_offered >= total)
        elapsed = time.perf_counter() - started
        cpu = meter.percent()
        records.close()
        tickers.close()
        await actor
    rows = await storage.trade_rows()
    stats = persister.stats()
    if stats["trades_offered"] != total or rows != stats["trades_written"]:
        raise AssertionError(
            f"persister offered {stats['trades_offered']} of {total} trades, wrote "
            f"{stats['trades_written']}, the table holds {rows}"
        )
    return {
        "seconds": elapsed,
        "rows_offered_per_s": total / elapsed,
        "rows_inserted_per_s": stats["trades_written"] / elapsed,
        "rows_inserted": stats["trades_written"],
        "duplicates_skipped": stats["duplicates_skipped"],
        "batches": stats["batches"],
        "retries": stats["retries"],
        "flush_p50_ms": stats["flush_p50_us"] / 1000,
        "flush_p99_ms": stats["flush_p99_us"] / 1000,
        "cpu_percent_of_one_core": cpu,
        # CPU microseconds per trade offered: PostgreSQL's alone is the storage's own ceiling.
        "cpu_us_per_row": {
            name: round(pct / 100 * elapsed * 1e6 / total, 2) for name, pct in cpu.items()
        },
    }


async def bench_persist(
    storage: BenchStorage,
    count: int,
    repeats: int,
    *,
    progress: Callable[[str], None] = print,
) -> dict[str, Any]:
    config = PersisterConfig()
    variants: dict[str, Any] = {}
    for name, duplicate_every in (("unique", 0), ("10% duplicates", 10)):
        trades = make_trades(count, duplicate_every=duplicate_every)
        runs = [await persist_once(storage, trades, config) for _ in range(repeats)]
        del trades
        variants[name] = {
            "trades": count,
            "rows_offered_per_s": summarize([r["rows_offered_per_s"] for r in runs]),
            "rows_inserted_per_s": summarize([r["rows_inserted_per_s"] for r in runs]),
            "flush_p99_ms": summarize([r["flush_p99_ms"] for r in runs]),
            "runs": runs,
        }
        offered = variants[name]["rows_offered_per_s"]
        cpu_per_row = {
            who: statistics.median(r["cpu_us_per_row"].get(who, 0.0) for r in runs)
            for who in ("persister", "postgres")
        }
        progress(
            f"  persist {name:15s} {offered['median']:>10,.0f} rows/s offered "
            f"(min {offered['min']:,.0f}, max {offered['max']:,.0f}; "
            f"{runs[0]['rows_inserted']:,} inserted per run); CPU per row: persister "
            f"{cpu_per_row['persister']:.1f} us, PostgreSQL {cpu_per_row['postgres']:.1f} us"
        )
    await storage.reset()
    return {
        "batch_size": config.batch_size,
        "flush_interval_s": config.flush_interval,
        "queue_size": config.queue_size,
        "repeats": repeats,
        "variants": variants,
    }
