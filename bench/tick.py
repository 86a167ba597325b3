"""Tick-to-strategy benchmark: frame receipt → the analyzer (an in-process subscriber) has the
canonical record.

The daemon runs in this process (the whole composition root, ``tradingd.daemon.Daemon``, with
its persister writing to PostgreSQL as in production) so that the analyzer's own histogram,
``now - received_us`` taken when its queue hands it a batch, can be read directly; the fake
exchange runs in its own process and offers a fixed rate. The histogram is reset after a
warm-up at each rate.
"""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from bench.pipeline import INSTRUMENTS, daemon_sections
from bench.procs import FeederProcess, write_config
from bench.stats import load_average, summarize
from bench.storage import BenchStorage
from tradingd.config import load_config
from tradingd.daemon import Daemon
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
    workdir.mkdir(parents=True, exist_ok=True)
    await storage.reset()
    results: dict[str, Any] = {"seconds_per_run": seconds, "repeats": repeats, "rates": {}}
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
            ),
        )
        notifier = _ReadyNotifier()
        daemon = Daemon(load_config(path), path, notifier=notifier)
        running = asyncio.ensure_future(daemon.run())
        try:
            await _wait_ready(notifier, running)
            await feeder.command("wait_subscribed", timeout=120.0)
            analyzer = daemon.analyzer
            if analyzer is None:
                raise RuntimeError("the analyzer is disabled in the configuration")
            for rate in rates:
                runs: list[dict[str, float]] = []
                load_before = load_average()
                await feeder.command("rate", per_second=rate, seconds=warmup)
                for _ in range(repeats):
                    analyzer.latency.reset()
                    published = (await feeder.command("rate", per_second=rate, seconds=seconds))[
                        "published"
                    ]
                    latency = analyzer.latency
                    runs.append(
                        {
                            "offered": published,
                            "observed": latency.count,
                            "p50_us": latency.p50,
                            "p99_us": latency.p99,
                            "max_us": latency.max,
                        }
                    )
                results["rates"][str(int(rate))] = {
                    "p50_us": summarize([r["p50_us"] for r in runs]),
                    "p99_us": summarize([r["p99_us"] for r in runs]),
                    "max_us": summarize([r["max_us"] for r in runs]),
                    "runs": runs,
                    "load_average": {"before": load_before, "after": load_average()},
                }
                p50 = results["rates"][str(int(rate))]["p50_us"]["median"]
                p99 = results["rates"][str(int(rate))]["p99_us"]["median"]
                progress(
                    f"  tick to strategy at {rate:>7,.0f} msgs/s: p50 {p50 / 1000:.3f} ms, "
                    f"p99 {p99 / 1000:.3f} ms (median of {repeats} runs of {seconds:g} s)"
                )
        finally:
            daemon.request_stop("benchmark finished")
            exit_code = await running
            loop = asyncio.get_running_loop()
            for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
                loop.remove_signal_handler(signum)
        results["daemon_exit_code"] = exit_code
    return results
