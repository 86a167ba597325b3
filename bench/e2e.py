"""End-to-end benchmark: fake exchange process → loopback WebSocket → daemon process → rows.

The feeder floods trades as fast as the daemon's connection takes them. After a warm-up the
daemon's published status is sampled at fixed intervals: the committed-trades counter over the
status's own timestamps gives the sustained rate per window. Latency is the persister's
frame-to-commit histogram (``received_us`` stamped by the transport when the frame is read,
to the commit of its batch) over the whole run. At the end every published trade must be in
the table.

Fixed-rate runs offer a set rate instead, which shows the latency below saturation (and at
the target rate).
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from bench.pipeline import Pipeline
from bench.procs import CpuMeter
from bench.stats import load_average, summarize
from bench.storage import BenchStorage
from tradingd.status import DaemonStatus

DRAIN_TIMEOUT = 300.0


def _committed(status: DaemonStatus) -> float:
    return float(status.persister.get("trades_offered", 0))


def _received(status: DaemonStatus) -> float:
    return float(sum(ex.trades for ex in status.exchanges))


def _latency_ms(status: DaemonStatus) -> dict[str, float]:
    p = status.persister
    return {
        "p50": p.get("commit_latency_p50_us", 0) / 1000,
        "p99": p.get("commit_latency_p99_us", 0) / 1000,
        "max": p.get("commit_latency_max_us", 0) / 1000,
    }


def _queues(status: DaemonStatus) -> dict[str, dict[str, int]]:
    return {
        q.name: {
            "capacity": q.capacity,
            "depth": q.depth,
            "high_water": q.high_water,
            "dropped": q.dropped,
        }
        for q in status.queues
    }


async def _measure(
    pipeline: Pipeline,
    storage: BenchStorage,
    *,
    op: str,
    op_args: dict[str, Any],
    warmup: float,
    windows: int,
    window: float,
) -> dict[str, Any]:
    feeder = pipeline.feeder
    seconds = warmup + windows * window
    meter = CpuMeter(
        {"daemon": pipeline.daemon_pid, "feeder": feeder.pid, "postgres": storage.postgres_pid()}
    )
    load_before = load_average()
    feeding = asyncio.ensure_future(feeder.command(op, seconds=seconds, **op_args))
    try:
        await asyncio.sleep(warmup)
        meter.start()
        loop_wait = LoopThreadWait(pipeline.daemon_pid)
        samples = [await pipeline.status()]
        for _ in range(windows):
            await asyncio.sleep(window)
            samples.append(await pipeline.status())
        cpu = meter.percent()
        runqueue_share = loop_wait.share()
        published = int((await feeding)["published"])
    finally:
        if not feeding.done():
            feeding.cancel()
    drain_seconds = await pipeline.wait_committed(published, DRAIN_TIMEOUT)
    final = await pipeline.status()
    rates, receive_rates = [], []
    for before, after in itertools.pairwise(samples):
        elapsed = (after.updated_at_us - before.updated_at_us) / 1e6
        rates.append((_committed(after) - _committed(before)) / elapsed)
        receive_rates.append((_received(after) - _received(before)) / elapsed)
    span = (samples[-1].updated_at_us - samples[0].updated_at_us) / 1e6
    sustained = (_committed(samples[-1]) - _committed(samples[0])) / span
    rows = await storage.trade_rows()
    return {
        "published": published,
        "rows_in_table": rows,
        "all_committed": rows == published,
        "window_seconds": window,
        "windows": windows,
        "committed_per_s": summarize(rates),
        "sustained_committed_per_s": sustained,
        "received_per_s": summarize(receive_rates),
        "latency_ms": _latency_ms(final),
        "drain_seconds_after_feed": round(drain_seconds, 2),
        "queues_at_end_of_feed": _queues(samples[-1]),
        "cpu_percent_of_one_core": cpu,
        "cpu_us_per_committed_trade": _cpu_per_trade(cpu, sustained),
        "daemon_loop_runqueue_share": runqueue_share,
        "load_average": {"before": load_before, "after": load_average()},
        "persister": {
            k: final.persister.get(k, 0)
            for k in ("batches", "retries", "flush_p50_us", "flush_p99_us", "duplicates_skipped")
        },
    }


class LoopThreadWait:
    """How much of the time since construction the daemon's main thread (its event loop) was
    runnable but waiting for a core (Linux ``schedstat``); None where unreadable."""

    def __init__(self, pid: int | None) -> None:
        self._path = f"/proc/{pid}/task/{pid}/schedstat" if pid is not None else None
        self._started = time.monotonic()
        self._waited = self._read()

    def _read(self) -> int | None:
        if self._path is None:
            return None
        try:
            with open(self._path) as stat:
                return int(stat.read().split()[1])
        except (OSError, IndexError, ValueError):
            return None

    def share(self) -> float | None:
        now = self._read()
        if now is None or self._waited is None:
            return None
        return (now - self._waited) / 1e9 / max(time.monotonic() - self._started, 1e-9)


def _cpu_per_trade(cpu_percent: dict[str, float], committed_per_s: float) -> dict[str, float]:
    """CPU microseconds per committed trade, per process and for the daemon with PostgreSQL
    (the feeder stands in for the venue)."""
    if committed_per_s <= 0:
        return {}
    per = {name: pct / 100 * 1e6 / committed_per_s for name, pct in cpu_percent.items()}
    per["daemon+postgres"] = per.get("daemon", 0.0) + per.get("postgres", 0.0)
    return {name: round(us, 2) for name, us in per.items()}


def _describe(result: dict[str, Any]) -> str:
    latency = result["latency_ms"]
    windows = result["committed_per_s"]
    return (
        f"{result['sustained_committed_per_s']:>9,.0f} trades/s committed (windows: median "
        f"{windows['median']:,.0f}, min {windows['min']:,.0f}, max {windows['max']:,.0f}); "
        f"frame to commit p50 {latency['p50']:,.0f} ms, p99 {latency['p99']:,.0f} ms, "
        f"max {latency['max']:,.0f} ms; all committed: {result['all_committed']}; CPU per "
        f"trade (daemon + PostgreSQL) "
        f"{result['cpu_us_per_committed_trade'].get('daemon+postgres', float('nan')):.1f} us"
        f"{_waited(result['daemon_loop_runqueue_share'])}"
    )


def _waited(share: float | None) -> str:
    if share is None:
        return ""
    return f"; the daemon's event loop waited for a core {share:.0%} of the time"


async def bench_e2e(
    storage: BenchStorage,
    workdir: Path,
    *,
    warmup: float,
    windows: int,
    window: float,
    fixed_rates: Sequence[float],
    fixed_seconds: float,
    progress: Callable[[str], None] = print,
) -> dict[str, Any]:
    """The flood run, then one run per offered rate in ``fixed_rates``."""
    async with Pipeline(storage, workdir / "flood") as pipeline:
        flood = await _measure(
            pipeline, storage, op="flood", op_args={}, warmup=warmup, windows=windows, window=window
        )
    flood["daemon_exit_code"] = pipeline.exit_code
    progress(f"  e2e flood: {_describe(flood)}")
    fixed: dict[str, Any] = {}
    for rate in fixed_rates:
        fixed_window = min(window, fixed_seconds / 4)
        async with Pipeline(storage, workdir / f"rate-{int(rate)}") as pipeline:
            run = await _measure(
                pipeline,
                storage,
                op="rate",
                op_args={"per_second": rate},
                warmup=min(warmup, fixed_seconds / 4),
                windows=4,
                window=fixed_window,
            )
        run["offered_per_s"] = rate
        run["daemon_exit_code"] = pipeline.exit_code
        fixed[str(int(rate))] = run
        progress(f"  e2e at {rate:,.0f}/s offered: {_describe(run)}")
    return {"flood": flood, "fixed_rates": fixed}
