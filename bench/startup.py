"""Start-up benchmark: exec of ``python -m tradingd`` to sd_notify READY=1.

The daemon owns its embedded PostgreSQL and Redis in a state directory of its own, as on a
fresh install. The first start initialises them (initdb, migrations) and is reported apart;
the timed starts find them initialised. Each start connects to the fake exchange (clock
check, subscriptions) as in production. Idle RSS is the daemon process's own, a few seconds
after READY (the embedded servers are separate processes, reported apart).
"""

from __future__ import annotations

import asyncio
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil

from bench.pipeline import INSTRUMENTS, daemon_sections
from bench.procs import DaemonProcess, FeederProcess, NotifyListener, write_config
from bench.stats import load_average, summarize
from bench.storage import scratch_dir

SETTLE_SECONDS = 3.0


def _rss_mb(pid: int) -> tuple[float, float]:
    """RSS of the process, and of its children (the embedded servers), in MB."""
    process = psutil.Process(pid)
    own = process.memory_info().rss / 1_048_576
    children = 0.0
    for child in process.children(recursive=True):
        try:
            children += child.memory_info().rss / 1_048_576
        except psutil.NoSuchProcess:
            continue
    return own, children


async def _one_start(
    config: Path, notify: NotifyListener, log: Path, settle: bool
) -> dict[str, float]:
    daemon = DaemonProcess(config, notify, log)
    await daemon.start()
    try:
        ready = await daemon.wait_ready()
        result = {"ready_seconds": ready}
        if settle:
            await asyncio.sleep(SETTLE_SECONDS)
            own, children = _rss_mb(daemon.pid)
            result |= {"idle_rss_mb": own, "embedded_servers_rss_mb": children}
    finally:
        stopping = time.monotonic()
        code = await daemon.stop()
    result |= {"stop_seconds": time.monotonic() - stopping, "exit_code": code}
    return result


async def bench_startup(
    workdir: Path, *, runs: int, progress: Callable[[str], None] = print
) -> dict[str, Any]:
    workdir.mkdir(parents=True, exist_ok=True)
    state_dir = scratch_dir("startup-state")
    load_before = load_average()
    try:
        async with FeederProcess(workdir / "feeder.log", instruments=INSTRUMENTS) as feeder:
            config = write_config(
                workdir / "tradingd.toml",
                daemon_sections(state_dir, feeder.ws_url, feeder.rest_url, INSTRUMENTS),
            )
            async with NotifyListener(workdir / "notify.sock") as notify:
                log = workdir / "daemon.log"
                first = await _one_start(config, notify, log, settle=False)
                starts = [await _one_start(config, notify, log, settle=True) for _ in range(runs)]
    finally:
        shutil.rmtree(state_dir, ignore_errors=True)
    result: dict[str, Any] = {
        "first_start_with_initdb_seconds": round(first["ready_seconds"], 3),
        "ready_seconds": summarize([s["ready_seconds"] for s in starts]),
        "idle_rss_mb": summarize([s["idle_rss_mb"] for s in starts]),
        "embedded_servers_rss_mb": summarize([s["embedded_servers_rss_mb"] for s in starts]),
        "stop_seconds": summarize([s["stop_seconds"] for s in starts]),
        "exit_codes": [first["exit_code"], *(s["exit_code"] for s in starts)],
        "runs": starts,
        "load_average": {"before": load_before, "after": load_average()},
    }
    ready = result["ready_seconds"]
    idle = result["idle_rss_mb"]
    progress(
        f"  start-up: exec to READY {ready['median']:.2f} s (min {ready['min']:.2f}, "
        f"max {ready['max']:.2f}; first start with initdb {first['ready_seconds']:.1f} s); "
        f"idle RSS {idle['median']:.0f} MB"
    )
    return result
