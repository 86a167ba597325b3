"""Memory benchmark: the daemon's RSS while PostgreSQL is slower than the input.

The feeder offers a steady rate that the daemon sustains; once trades flow, the benchmark holds
an ACCESS EXCLUSIVE lock on ``public_trades`` for the burst, so every write of the persister
waits (and times out and is retried). The records queue is BLOCK: it fills to capacity, then
the receiver stops reading and TCP back-pressure stops the feeder; nothing is dropped. RSS and
the daemon's status are sampled every second; the RSS slope over the second half of the burst
(once the queue is full) must be about zero, and so must the trades received meanwhile. The feeder
leaves pings unanswered for as long as the burst lasts (the real venue would cut the connection
after a minute, which the receiver and the gap repairer handle; that is not what is measured).
After the lock is released every published trade must reach the table.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil

from bench.pipeline import Pipeline
from bench.stats import load_average, slope_per_second
from bench.storage import BenchStorage
from tradingd.status import DaemonStatus

DRAIN_TIMEOUT = 600.0
SAMPLE_INTERVAL = 1.0


def _records_queue(status: DaemonStatus) -> dict[str, int]:
    for queue in status.queues:
        if queue.name == "records":
            return {
                "capacity": queue.capacity,
                "depth": queue.depth,
                "high_water": queue.high_water,
                "dropped": queue.dropped,
            }
    return {}


def _counters(status: DaemonStatus) -> dict[str, Any]:
    return {
        "received_trades": sum(ex.trades for ex in status.exchanges),
        "committed_trades": status.persister.get("trades_offered", 0),
        "persister_retries": status.persister.get("retries", 0),
        "storage_down": status.persister.get("storage_down", 0),
        "queues": {
            q.name: {
                "policy": q.policy,
                "depth": q.depth,
                "high_water": q.high_water,
                "dropped": q.dropped,
                "capacity": q.capacity,
            }
            for q in status.queues
        },
    }


async def bench_memory(
    storage: BenchStorage,
    workdir: Path,
    *,
    idle_seconds: float,
    warmup: float,
    burst_seconds: float,
    rate: float,
    progress: Callable[[str], None] = print,
) -> dict[str, Any]:
    load_before = load_average()
    async with Pipeline(
        storage, workdir / "memory", pong_timeout=burst_seconds + 600.0
    ) as pipeline:
        daemon = psutil.Process(pipeline.daemon_pid)
        await asyncio.sleep(idle_seconds)
        idle_rss = daemon.memory_info().rss / 1_048_576
        feeding = asyncio.ensure_future(
            pipeline.feeder.command("rate", per_second=rate, seconds=warmup + burst_seconds)
        )
        try:
            await asyncio.sleep(warmup)
            before = await pipeline.status()
            rss_at_lock = daemon.memory_info().rss / 1_048_576
            times: list[float] = []
            rss: list[float] = []
            received: list[float] = []
            async with storage.pool.acquire() as conn:
                transaction = conn.transaction()
                await transaction.start()
                try:
                    await conn.execute("LOCK TABLE public_trades IN ACCESS EXCLUSIVE MODE")
                    started = time.monotonic()
                    while (elapsed := time.monotonic() - started) < burst_seconds:
                        times.append(elapsed)
                        rss.append(daemon.memory_info().rss / 1_048_576)
                        status = await pipeline.status()
                        received.append(sum(ex.trades for ex in status.exchanges))
                        await asyncio.sleep(SAMPLE_INTERVAL)
                    stalled = await pipeline.status()
                finally:
                    await transaction.rollback()
            published = int((await feeding)["published"])
        finally:
            if not feeding.done():
                feeding.cancel()
        drain_seconds = await pipeline.wait_committed(published, DRAIN_TIMEOUT)
        after = await pipeline.status()
        rows = await storage.trade_rows()
    half = len(times) // 2
    result = {
        "burst_seconds": burst_seconds,
        "offered_per_s": rate,
        "idle_rss_mb": round(idle_rss, 1),
        "rss_at_lock_mb": round(rss_at_lock, 1),
        "peak_rss_mb": round(max(rss), 1),
        "final_rss_mb": round(rss[-1], 1),
        "slope_mb_per_min": round(60 * slope_per_second(times, rss), 2),
        "slope_second_half_mb_per_min": round(60 * slope_per_second(times[half:], rss[half:]), 2),
        "received_in_second_half": received[-1] - received[half],
        "samples_s_rss_mb_received": [
            [round(t, 1), round(r, 1), n] for t, r, n in zip(times, rss, received, strict=True)
        ],
        "records_queue_at_end_of_burst": _records_queue(stalled),
        "counters_before_lock": _counters(before),
        "counters_at_end_of_burst": _counters(stalled),
        "counters_after_drain": _counters(after),
        "published": published,
        "rows_in_table": rows,
        "all_committed": rows == published,
        "drain_seconds_after_release": round(drain_seconds, 2),
        "daemon_exit_code": pipeline.exit_code,
        "load_average": {"before": load_before, "after": load_average()},
    }
    progress(
        f"  memory at {rate:,.0f} trades/s offered: idle {idle_rss:.0f} MB, "
        f"peak {result['peak_rss_mb']:.0f} MB over a "
        f"{burst_seconds:g} s stall; slope {result['slope_mb_per_min']:+.2f} MB/min "
        f"(second half {result['slope_second_half_mb_per_min']:+.2f}); records queue "
        f"{result['records_queue_at_end_of_burst'].get('depth', 0):,}/"
        f"{result['records_queue_at_end_of_burst'].get('capacity', 0):,}, "
        f"{result['received_in_second_half']:,} trades received in the second half; "
        f"all committed after release: {result['all_committed']}"
    )
    return result
