"""The analyzer actor: real-time volume anomalies on the live trade stream.

It reads a DROP_OLDEST queue (under overload the analyzer may lose ticks, the persister never
does), feeds ``tradingd.analysis.VolumeAnomalyDetector`` and reports each anomaly as a WARNING
log line and a ``system_events`` row (kind ``volume_anomaly``). Buckets close on trade time when
a later trade arrives, and on the wall clock ``CLOSE_GRACE`` seconds after their end so that a
spike followed by silence is still reported. Events waiting for a PostgreSQL that is down are
kept (up to ``MAX_PENDING_EVENTS``) and retried with capped backoff.
"""

from __future__ import annotations

import asyncio
import collections
import time
from collections.abc import Callable

import asyncpg

from tradingd.actors import RateLimiter, checked_in
from tradingd.actors.persister import DATA_ERRORS, TRANSIENT_ERRORS
from tradingd.analysis import VolumeAnomaly, VolumeAnomalyDetector
from tradingd.backoff import backoff_delay
from tradingd.config import AnalyzerConfig
from tradingd.metrics import LatencyHistogram, record_latencies
from tradingd.model import Trade, us_to_datetime
from tradingd.queues import BoundedQueue
from tradingd.storage.writer import SystemEvent, insert_system_events
from tradingd.supervisor import ActorContext

EVENT_KIND = "volume_anomaly"
MAX_BATCH = 10_000
# How long after a bucket's end (wall clock) trades for it are still waited for.
CLOSE_GRACE = 2.0
MAX_PENDING_EVENTS = 10_000
WRITE_TIMEOUT = 10.0
RETRY_BACKOFF_INITIAL = 0.5
RETRY_BACKOFF_MAX = 30.0
WARNING_INTERVAL = 30.0


def anomaly_event(anomaly: VolumeAnomaly, threshold: float, at_us: int) -> SystemEvent:
    return SystemEvent(
        kind=EVENT_KIND,
        exchange=anomaly.exchange,
        instrument_name=anomaly.instrument_name,
        at_us=at_us,
        detail={
            "bucket_start": us_to_datetime(anomaly.bucket_start_us).isoformat(),
            "bucket_start_us": anomaly.bucket_start_us,
            "bucket_seconds": anomaly.bucket_seconds,
            "volume": str(anomaly.volume),
            "mean": anomaly.mean,
            "stddev": anomaly.stddev,
            "z": anomaly.z,
            "threshold": threshold,
            "history_buckets": anomaly.history_buckets,
        },
    )


class Analyzer:
    name = "analyzer"

    def __init__(
        self,
        config: AnalyzerConfig,
        pool: asyncpg.Pool,
        trades: BoundedQueue[Trade],
        *,
        clock: Callable[[], int] = time.time_ns,
    ) -> None:
        self._config = config
        self._pool = pool
        self._trades = trades
        self._clock = clock
        self.detector = VolumeAnomalyDetector(
            config.bucket_seconds,
            config.window_buckets,
            min(config.min_buckets, config.window_buckets),
            config.threshold,
        )
        self.latency = LatencyHistogram("analyzer.tick_to_analyzer_us")
        self._pending: collections.deque[SystemEvent] = collections.deque()
        self._retry_at = 0.0
        self._attempt = 0
        self._next_close_us = 0
        self._warnings = RateLimiter(WARNING_INTERVAL)
        self._progress = asyncio.Event()
        self.trades_seen = 0
        self.anomalies = 0
        self.events_written = 0
        self.events_dropped = 0
        self.event_write_failures = 0

    def stats(self) -> dict[str, float]:
        return {
            "trades_seen": self.trades_seen,
            "anomalies": self.anomalies,
            "events_written": self.events_written,
            "events_pending": len(self._pending),
            "events_dropped": self.events_dropped,
            "event_write_failures": self.event_write_failures,
            "late_trades": self.detector.late_trades,
            "instruments": len(self.detector),
            "latency_p50_us": self.latency.p50,
            "latency_p99_us": self.latency.p99,
            "latency_max_us": self.latency.max,
        }

    async def wait_until(self, predicate: Callable[[], bool]) -> None:
        """Return once ``predicate()`` holds; it is re-checked after every batch or write."""
        while True:
            progress = self._progress
            if predicate():
                return
            await progress.wait()

    def _notify(self) -> None:
        self._progress.set()
        self._progress = asyncio.Event()

    async def run(self, ctx: ActorContext) -> None:
        ctx.ready()
        grace_us = int(CLOSE_GRACE * 1_000_000)
        bucket_us = self.detector.bucket_us
        loop = asyncio.get_running_loop()
        while True:
            batch = await self._next_batch(ctx)
            now_us = self._clock() // 1000
            anomalies: list[VolumeAnomaly] = []
            if batch:
                self.trades_seen += len(batch)
                record_latencies(self.latency, now_us, batch)
                anomalies = self.detector.observe(batch)
            elif self._trades.closed and not len(self._trades):
                if self._pending:
                    await self._write_events(ctx)
                ctx.log.info("trade queue closed and drained")
                return
            if now_us >= self._next_close_us:
                anomalies.extend(self.detector.close_due(now_us - grace_us))
                self._next_close_us = ((now_us - grace_us) // bucket_us + 1) * bucket_us + grace_us
            for anomaly in anomalies:
                self._report(ctx, anomaly, now_us)
            if self._pending and loop.time() >= self._retry_at:
                await self._write_events(ctx)
            self._notify()

    async def _next_batch(self, ctx: ActorContext) -> list[Trade]:
        """Trades if any arrive within a second (or before the next bucket closes), else []."""
        ctx.checkin()
        queue = self._trades
        if len(queue):
            return queue.get_batch_nowait(MAX_BATCH)
        if queue.closed:
            return []
        until_close = (self._next_close_us - self._clock() // 1000) / 1_000_000
        try:
            async with asyncio.timeout(max(0.0, min(1.0, until_close))):
                return await queue.get_batch(MAX_BATCH)
        except TimeoutError:
            return []

    def _report(self, ctx: ActorContext, anomaly: VolumeAnomaly, now_us: int) -> None:
        self.anomalies += 1
        ctx.log.bind(EXCHANGE=anomaly.exchange, SYMBOL=anomaly.instrument_name).warning(
            "volume anomaly: {} traded in the {} s from {} (mean {:.6g}, stddev {:.6g}, z {:.1f})",
            anomaly.volume,
            anomaly.bucket_seconds,
            us_to_datetime(anomaly.bucket_start_us).isoformat(),
            anomaly.mean,
            anomaly.stddev,
            anomaly.z,
        )
        if len(self._pending) >= MAX_PENDING_EVENTS:
            self._pending.popleft()
            self.events_dropped += 1
        self._pending.append(anomaly_event(anomaly, self._config.threshold, now_us))

    async def _write_events(self, ctx: ActorContext) -> None:
        events = list(self._pending)
        try:
            written = await checked_in(ctx, self._insert(events))
        except DATA_ERRORS as exc:
            # Not an outage: retrying would fail forever. The log line above has the anomaly.
            self._pending.clear()
            self.events_dropped += len(events)
            ctx.log.error("anomaly events refused by PostgreSQL ({!r}); dropped", exc)
            return
        except TRANSIENT_ERRORS as exc:
            self._attempt += 1
            self.event_write_failures += 1
            delay = backoff_delay(self._attempt, RETRY_BACKOFF_INITIAL, RETRY_BACKOFF_MAX)
            self._retry_at = asyncio.get_running_loop().time() + delay
            suppressed = self._warnings.allow()
            if suppressed is not None:
                ctx.log.warning(
                    "anomaly events not written ({!r}); {} kept, retrying in {:.1f} s "
                    "({} similar warnings suppressed)",
                    exc,
                    len(self._pending),
                    delay,
                    suppressed,
                )
            return
        for _ in range(len(events)):
            self._pending.popleft()
        self.events_written += written
        self._attempt = 0
        self._warnings.reset()

    async def _insert(self, events: list[SystemEvent]) -> int:
        async with asyncio.timeout(WRITE_TIMEOUT), self._pool.acquire() as conn:
            return await insert_system_events(conn, events)
