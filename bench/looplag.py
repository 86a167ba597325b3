"""Event-loop stall probe: how late a timer set for every ``interval`` actually fires, and how
much of that lateness the loop's thread spent waiting for a core.

A timer can only fire between loop turns, so its lateness bounds from below the longest turn
(one callback or task step that kept the loop) in progress when it fell due. The probe runs in
the process it measures (``async with LoopLagProbe() as probe``: the task is owned by the
context and cancelled on exit); ``reset()`` starts a new window; ``lag`` holds the lateness of
every wake-up in microseconds.

Where Linux's ``/proc/thread-self/schedstat`` is readable, every wake-up also reads the loop
thread's CPU time and run-queue wait (runnable, but another process had the core): for the
wake-ups later than ``STALL``, ``stalled`` sums the wall time between wake-ups, the CPU time and
the run-queue wait in it. What is neither CPU nor run-queue wait is time the thread blocked
(a system call that waited). A stall that is mostly run-queue wait is the machine's load, not a
long turn.
"""

from __future__ import annotations

import asyncio
import gc
import os
import time
from types import TracebackType

from tradingd.metrics import LatencyHistogram

INTERVAL = 0.001
# Wake-ups later than this (µs) count as stalls in ``stalled``.
STALL = 2_000
_SCHEDSTAT = "/proc/thread-self/schedstat"


class StallTotals:
    """Sums over the stalled wake-ups (µs): wall time since the previous wake-up, the loop
    thread's CPU time and its run-queue wait in that time."""

    def __init__(self) -> None:
        self.count = 0
        self.wall_us = 0
        self.cpu_us = 0
        self.runqueue_us = 0
        # Over every wake-up of the window, stalled or not.
        self.window_wall_us = 0
        self.window_cpu_us = 0
        self.window_runqueue_us = 0

    def as_dict(self) -> dict[str, float]:
        return {
            "stalls": self.count,
            "stall_wall_us": self.wall_us,
            "stall_cpu_us": self.cpu_us,
            "stall_runqueue_us": self.runqueue_us,
            # Share of the window the loop thread was runnable but had no core.
            "runqueue_share": self.window_runqueue_us / max(self.window_wall_us, 1),
            # Share of the window the loop thread ran: with the above near 1, the loop is never
            # idle and every tick waits behind the backlog.
            "cpu_share": self.window_cpu_us / max(self.window_wall_us, 1),
        }


class LoopLagProbe:
    def __init__(self, interval: float = INTERVAL) -> None:
        self.interval = interval
        self.lag = LatencyHistogram("bench.loop_lag_us")
        self.stalled = StallTotals()
        # Whether the loop thread's schedstat is readable (else ``stalled`` has no CPU or wait).
        self.schedstat = False
        # The cyclic garbage collector's pauses (they stall the loop too), by generation.
        self.gc_pauses = [LatencyHistogram(f"bench.gc{n}_pause_us") for n in range(3)]
        self._gc_started = 0
        self._task: asyncio.Task[None] | None = None

    def reset(self) -> None:
        self.lag.reset()
        self.stalled = StallTotals()
        for pauses in self.gc_pauses:
            pauses.reset()

    def _on_gc(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._gc_started = time.perf_counter_ns()
        elif self._gc_started:
            pause_us = (time.perf_counter_ns() - self._gc_started) // 1000
            self.gc_pauses[info["generation"]].record(pause_us)

    async def __aenter__(self) -> LoopLagProbe:
        self._task = asyncio.create_task(self._probe(), name="bench:loop-lag")
        gc.callbacks.append(self._on_gc)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        assert self._task is not None
        gc.callbacks.remove(self._on_gc)
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)

    async def _probe(self) -> None:
        interval_ns = int(self.interval * 1e9)
        try:
            schedstat: int | None = os.open(_SCHEDSTAT, os.O_RDONLY)
        except OSError:
            schedstat = None
        self.schedstat = schedstat is not None
        try:
            previous = time.perf_counter_ns()
            cpu0, wait0 = _read_schedstat(schedstat)
            while True:
                due = time.perf_counter_ns() + interval_ns
                # A schedule, not a wait for a condition: the lateness of this timer is the
                # measure.
                await asyncio.sleep(self.interval)
                now = time.perf_counter_ns()
                cpu, wait = _read_schedstat(schedstat)
                lag_us = (now - due) // 1000
                self.lag.record(lag_us)
                totals = self.stalled
                totals.window_wall_us += (now - previous) // 1000
                totals.window_runqueue_us += (wait - wait0) // 1000
                totals.window_cpu_us += (cpu - cpu0) // 1000
                if lag_us > STALL:
                    totals.count += 1
                    totals.wall_us += (now - previous) // 1000
                    totals.cpu_us += (cpu - cpu0) // 1000
                    totals.runqueue_us += (wait - wait0) // 1000
                previous, cpu0, wait0 = now, cpu, wait
        finally:
            if schedstat is not None:
                os.close(schedstat)


def _read_schedstat(fd: int | None) -> tuple[int, int]:
    """The loop thread's CPU time and run-queue wait so far (ns); zeros where unreadable."""
    if fd is None:
        return 0, 0
    cpu, wait, _ = os.pread(fd, 128, 0).split()
    return int(cpu), int(wait)
