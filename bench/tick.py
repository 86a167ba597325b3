"""Tick-to-strategy benchmark: frame receipt → the strategies are handed the canonical record.

The daemon runs in this process (the whole composition root, ``tradingd.daemon.Daemon``, with
its persister writing to PostgreSQL as in production) so that two of its own histograms of
``now - received_us`` can be read directly: the executor's, taken when it hands a batch to its
strategies (the first consumer of a burst), and the analyzer's, taken when its queue hands it a
batch (the last consumer: after the executor and the persister have had their turns). The fake
exchange runs in its own process and offers a fixed rate. The histograms are reset after a
warm-up at each rate. A ``bench.looplag`` probe in the same process measures the event loop's
stalls over the same windows (the lateness of a 1 ms timer; uvloop's timers have millisecond
resolution, so about 1 ms of it is the timer itself).

Each rate runs in two layouts: shared cores, where the kernel places the daemon, PostgreSQL,
Redis and the fake venue as it likes; and the daemon alone on the last CPU (``daemon.cpus``)
with everything else on the others, as README "Latency: a core of its own" sets a box up.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import signal
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import psutil

from bench.looplag import STALL, LoopLagProbe
from bench.pipeline import INSTRUMENTS, daemon_sections
from bench.procs import FeederProcess, write_config
from bench.stats import load_average, summarize
from bench.storage import BenchStorage
from tradingd.config import load_config
from tradingd.cpus import (
    CpuLayout,
    available_cpus,
    cpu_layout,
    describe_cpus,
    pin_process,
    pin_this_process,
)
from tradingd.daemon import Daemon
from tradingd.metrics import LatencyHistogram
from tradingd.sdnotify import Notifier


class _ReadyNotifier(Notifier):
    """No systemd here: READY=1 becomes an event."""

    def __init__(self) -> None:
        super().__init__(environ={})
        self.is_ready = asyncio.Event()

    def ready(self, status: str | None = None) -> bool:
        self.is_ready.set()
        return True


async def _wait_ready(notifier: _ReadyNotifier, running: asyncio.Task[int]) -> None:
    ready = asyncio.ensure_future(notifier.is_ready.wait())
    try:
        await asyncio.wait({ready, running}, timeout=180.0, return_when=asyncio.FIRST_COMPLETED)
    finally:
        ready.cancel()
    if running.done():
        raise RuntimeError(f"the in-process daemon stopped before READY: {running.result()}")
    if not notifier.is_ready.is_set():
        raise TimeoutError("the in-process daemon was not READY within 180 s")


async def _at_rate(
    feeder: FeederProcess,
    latency: LatencyHistogram,
    strategy_latency: LatencyHistogram,
    probe: LoopLagProbe,
    rate: float,
    seconds: float,
    warmup: float,
    repeats: int,
) -> dict[str, Any]:
    runs: list[dict[str, float]] = []
    load_before = load_average()
    await feeder.command("rate", per_second=rate, seconds=warmup)
    for _ in range(repeats):
        latency.reset()
        strategy_latency.reset()
        probe.reset()
        published = (await feeder.command("rate", per_second=rate, seconds=seconds))["published"]
        runs.append(
            {
                "offered": published,
                "offered_per_s": published / seconds,
                "observed": latency.count,
                "p50_us": latency.p50,
                "p99_us": latency.p99,
                "max_us": latency.max,
                "strategy_p50_us": strategy_latency.p50,
                "strategy_p99_us": strategy_latency.p99,
                "strategy_max_us": strategy_latency.max,
                "loop_lag_p99_us": probe.lag.p99,
                "loop_lag_max_us": probe.lag.max,
                **{f"gc{n}_pauses": h.count for n, h in enumerate(probe.gc_pauses)},
                **{f"gc{n}_pause_max_us": h.max for n, h in enumerate(probe.gc_pauses)},
                **probe.stalled.as_dict(),
                "schedstat": probe.schedstat,
            }
        )
    return {
        **{key: summarize([r[key] for r in runs]) for key in _SUMMARIZED},
        "runs": runs,
        "load_average": {"before": load_before, "after": load_average()},
    }


def _stall_split(runs: Sequence[dict[str, float]]) -> str:
    """Where the stalled wake-ups' time went, over all runs at one rate."""
    if not all(r["schedstat"] for r in runs):
        return "no schedstat to split stalls by"
    wall = sum(r["stall_wall_us"] for r in runs)
    if not wall:
        return "no stalls"
    cpu = sum(r["stall_cpu_us"] for r in runs) / wall
    runqueue = sum(r["stall_runqueue_us"] for r in runs) / wall
    stalls = sum(r["stalls"] for r in runs)
    return (
        f"{stalls:.0f} stalls > {STALL / 1000:g} ms: {runqueue:.0%} of their time waiting for "
        f"a core, {cpu:.0%} on it, {max(0.0, 1 - cpu - runqueue):.0%} blocked"
    )


_SUMMARIZED = (
    "p50_us",
    "p99_us",
    "max_us",
    "strategy_p50_us",
    "strategy_p99_us",
    "strategy_max_us",
    "loop_lag_p99_us",
    "loop_lag_max_us",
    "gc2_pause_max_us",
    "gc1_pause_max_us",
    "runqueue_share",
    "cpu_share",
    "offered_per_s",
)


async def bench_tick(
    storage: BenchStorage,
    workdir: Path,
    *,
    rates: Sequence[float],
    seconds: float,
    warmup: float,
    repeats: int,
    progress: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Every rate twice: on shared cores (the kernel places everything), then with the daemon
    on a core of its own (``daemon.cpus``: the last CPU; PostgreSQL, Redis and the fake venue
    on the others), which needs two CPUs."""
    results: dict[str, Any] = {"seconds_per_run": seconds, "repeats": repeats, "rates": {}}
    run = functools.partial(
        _bench_layout,
        storage,
        rates=rates,
        seconds=seconds,
        warmup=warmup,
        repeats=repeats,
        progress=progress,
    )
    shared = await run(workdir / "shared", layout=None)
    results["rates"] = shared["rates"]
    results["daemon_exit_code"] = shared["daemon_exit_code"]
    available = available_cpus()
    if len(available) < 2:
        progress("  tick to strategy, the daemon on a core of its own: skipped (one CPU)")
        return results
    layout = cpu_layout([max(available)], available)
    assert layout is not None
    progress(
        f"  the daemon on CPU {describe_cpus(layout.daemon)}; PostgreSQL, Redis and the fake "
        f"venue on {describe_cpus(layout.servers)}:"
    )
    own = await run(workdir / "own-core", layout=layout)
    results["own_core"] = {
        "daemon_cpus": sorted(layout.daemon),
        "other_cpus": sorted(layout.servers),
        **own,
    }
    return results


async def _bench_layout(
    storage: BenchStorage,
    workdir: Path,
    *,
    layout: CpuLayout | None,
    rates: Sequence[float],
    seconds: float,
    warmup: float,
    repeats: int,
    progress: Callable[[str], None],
) -> dict[str, Any]:
    workdir.mkdir(parents=True, exist_ok=True)
    await storage.reset()
    results: dict[str, Any] = {"rates": {}}
    # The daemon runs in this process: what it pins is this process, put back afterwards for
    # the benchmarks that follow (as are the servers and the feeder, children of this process).
    before = available_cpus()
    async with FeederProcess(workdir / "feeder.log", instruments=INSTRUMENTS) as feeder:
        path = write_config(
            workdir / "tradingd.toml",
            daemon_sections(
                workdir / "state",
                feeder.ws_url,
                feeder.rest_url,
                INSTRUMENTS,
                database_url=storage.database_url,
                redis_url=storage.redis_url,
                extra={"daemon": {"cpus": sorted(layout.daemon) if layout else []}},
            ),
        )
        notifier = _ReadyNotifier()
        daemon = Daemon(load_config(path), path, notifier=notifier)
        running = asyncio.ensure_future(daemon.run())
        try:
            await _wait_ready(notifier, running)
            if layout is not None:
                # Where an operator's systemd units would put them (README, "Latency: a core
                # of its own"); the fake venue stands for the network, not on the box.
                _pin_children(layout.servers)
            await feeder.command("wait_subscribed", timeout=120.0)
            analyzer = daemon.analyzer
            if analyzer is None:
                raise RuntimeError("the analyzer is disabled in the configuration")
            executor = daemon.executors["binance"]
            async with LoopLagProbe() as probe:
                for rate in rates:
                    results["rates"][str(int(rate))] = await _at_rate(
                        feeder,
                        analyzer.latency,
                        executor.tick_latency,
                        probe,
                        rate,
                        seconds,
                        warmup,
                        repeats,
                    )
                    data = results["rates"][str(int(rate))]
                    progress(
                        f"  tick to strategy at {rate:>7,.0f} msgs/s "
                        f"(offered {data['offered_per_s']['median']:,.0f}/s): "
                        f"p50 {data['strategy_p50_us']['median'] / 1000:.3f} ms, "
                        f"p99 {data['strategy_p99_us']['median'] / 1000:.3f} ms (to the "
                        f"analyzer, the last consumer: p50 {data['p50_us']['median'] / 1000:.3f}"
                        f" ms, p99 {data['p99_us']['median'] / 1000:.3f} ms); loop stall (probe "
                        f"lateness) p99 {data['loop_lag_p99_us']['median'] / 1000:.2f} ms, "
                        f"max {data['loop_lag_max_us']['median'] / 1000:.2f} ms; longest GC pause "
                        f"gen1 {data['gc1_pause_max_us']['median'] / 1000:.2f} ms, "
                        f"gen2 {data['gc2_pause_max_us']['median'] / 1000:.2f} ms; "
                        f"the loop thread on a core {data['cpu_share']['median']:.0%} and "
                        f"waiting for one {data['runqueue_share']['median']:.0%} of the time, "
                        f"{_stall_split(data['runs'])} "
                        f"(median of {repeats} runs of {seconds:g} s)"
                    )
        finally:
            daemon.request_stop("benchmark finished")
            exit_code = await running
            loop = asyncio.get_running_loop()
            for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
                loop.remove_signal_handler(signum)
            if layout is not None:
                pin_this_process(before)
                _pin_children(before)
        results["daemon_exit_code"] = exit_code
    return results


def _pin_children(cpus: frozenset[int]) -> None:
    """Every process this one started (the servers with their backends, the feeder)."""
    for child in psutil.Process().children(recursive=True):
        with contextlib.suppress(ProcessLookupError, psutil.NoSuchProcess):
            pin_process(child.pid, cpus)
