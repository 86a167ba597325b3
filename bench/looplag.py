"""Event-loop stall probe: how late a timer set for every ``interval`` actually fires.

A timer can only fire between loop turns, so its lateness bounds from below the longest turn
(one callback or task step that kept the loop) in progress when it fell due. The probe runs in
the process it measures (``async with LoopLagProbe() as probe``: the task is owned by the
context and cancelled on exit); ``reset()`` starts a new window; ``lag`` holds the lateness of
every wake-up in microseconds.
"""

from __future__ import annotations

import asyncio
import gc
import time
from types import TracebackType

from tradingd.metrics import LatencyHistogram

INTERVAL = 0.001


class LoopLagProbe:
    def __init__(self, interval: float = INTERVAL) -> None:
        self.interval = interval
        self.lag = LatencyHistogram("bench.loop_lag_us")
        # The cyclic garbage collector's pauses (they stall the loop too), by generation.
        self.gc_pauses = [LatencyHistogram(f"bench.gc{n}_pause_us") for n in range(3)]
        self._gc_started = 0
        self._task: asyncio.Task[None] | None = None

    def reset(self) -> None:
        self.lag.reset()
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
        while True:
            due = time.perf_counter_ns() + interval_ns
            # A schedule, not a wait for a condition: the lateness of this timer is the measure.
            await asyncio.sleep(self.interval)
            self.lag.record((time.perf_counter_ns() - due) // 1000)
