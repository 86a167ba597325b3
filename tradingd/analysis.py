"""Real-time volume anomaly detection: pure, no I/O, no clock reads.

Trades are summed per (exchange, instrument) into fixed buckets of trade time. When a bucket
closes (a trade of a later bucket arrives, or the caller says the time has passed) its volume is
compared with the previous ``window_buckets`` buckets (empty buckets count as zero volume): it is
an anomaly when it exceeds ``mean + threshold * stddev`` and at least ``min_buckets`` buckets of
history exist.

A perfectly flat history has a standard deviation of zero, which would turn the smallest wiggle
into an infinite z-score; the deviation used is therefore at least ``STDDEV_FLOOR_RATIO`` of the
mean. A history with zero mean (no trades at all in the window) has no baseline: nothing is
flagged until trading has been seen.
"""

from __future__ import annotations

import collections
import math
from collections.abc import Iterable
from decimal import Decimal

import msgspec

from tradingd.model import Trade

STDDEV_FLOOR_RATIO = 0.1

_ZERO = Decimal(0)


def _added(volume: Decimal, quantity_texts: list[str]) -> Decimal:
    """``volume`` plus each quantity in turn, in C: the order decides a sum's rounding and its
    digits, so that the volume is the one adding trade by trade gives."""
    return sum(map(Decimal, quantity_texts), volume)


class VolumeAnomaly(msgspec.Struct, frozen=True, kw_only=True):
    exchange: str
    instrument_name: str
    bucket_start_us: int
    bucket_seconds: int
    volume: Decimal
    mean: float
    stddev: float
    z: float
    history_buckets: int


class _Series:
    """The open bucket of one instrument and the closed buckets before it (oldest first)."""

    __slots__ = ("bucket", "history", "volume")

    def __init__(self, bucket: int, window: int) -> None:
        self.bucket = bucket
        self.volume = _ZERO
        self.history: collections.deque[float] = collections.deque(maxlen=window)


class VolumeAnomalyDetector:
    def __init__(
        self, bucket_seconds: int, window_buckets: int, min_buckets: int, threshold: float
    ) -> None:
        if bucket_seconds < 1 or window_buckets < 1 or min_buckets < 1:
            raise ValueError("bucket_seconds, window_buckets and min_buckets must be positive")
        if min_buckets > window_buckets:
            raise ValueError("min_buckets cannot exceed window_buckets")
        if not threshold > 0:
            raise ValueError("threshold must be positive")
        self.bucket_seconds = bucket_seconds
        self.bucket_us = bucket_seconds * 1_000_000
        self.window_buckets = window_buckets
        self.min_buckets = min_buckets
        self.threshold = threshold
        self._series: dict[tuple[str, str], _Series] = {}
        # Trades for a bucket that had already closed: added to its history, never re-judged.
        self.late_trades = 0
        # Trades older than the whole window: too old to affect anything.
        self.ignored_trades = 0

    def __len__(self) -> int:
        return len(self._series)

    def observe(self, trades: Iterable[Trade]) -> list[VolumeAnomaly]:
        """Add trades; return the anomalies of every bucket that these trades closed."""
        anomalies: list[VolumeAnomaly] = []
        series_by_key = self._series
        bucket_us = self.bucket_us
        # A live batch comes in runs of one instrument's trades: the series is looked up once
        # per run, and the quantities of a run's trades inside the open bucket (nearly all of
        # them) are added when the run ends, in one call.
        exchange: str | None = None
        instrument: str | None = None
        series = _Series(0, 0)  # replaced at the first trade
        start_us = end_us = 0
        in_bucket: list[str] = []
        for trade in trades:
            if trade.instrument_name != instrument or trade.exchange != exchange:
                if in_bucket:
                    series.volume = _added(series.volume, in_bucket)
                    in_bucket.clear()
                exchange, instrument = trade.exchange, trade.instrument_name
                found = series_by_key.get((exchange, instrument))
                if found is None:
                    found = series_by_key[exchange, instrument] = _Series(
                        trade.trade_us // bucket_us, self.window_buckets
                    )
                series = found
                start_us = series.bucket * bucket_us
                end_us = start_us + bucket_us
            if start_us <= trade.trade_us < end_us:
                in_bucket.append(trade.quantity_text)
                continue
            if in_bucket:
                series.volume = _added(series.volume, in_bucket)
                in_bucket.clear()
            bucket = trade.trade_us // bucket_us
            if bucket > series.bucket:
                self._close((trade.exchange, trade.instrument_name), series, bucket, anomalies)
                series.volume = trade.quantity
                start_us = bucket * bucket_us
                end_us = start_us + bucket_us
            else:
                self._add_late(series, bucket, trade.quantity)
        if in_bucket:
            series.volume = _added(series.volume, in_bucket)
        return anomalies

    def close_due(self, now_us: int) -> list[VolumeAnomaly]:
        """Close every open bucket that ended at or before ``now_us`` (trade time)."""
        anomalies: list[VolumeAnomaly] = []
        current = now_us // self.bucket_us
        for key, series in self._series.items():
            if series.bucket < current:
                self._close(key, series, current, anomalies)
        return anomalies

    def open_volume(self, exchange: str, instrument_name: str) -> Decimal | None:
        """The volume of the open bucket (for tests and diagnostics)."""
        series = self._series.get((exchange, instrument_name))
        return series.volume if series is not None else None

    def history(self, exchange: str, instrument_name: str) -> list[float]:
        """Closed bucket volumes, oldest first (for tests and diagnostics)."""
        series = self._series.get((exchange, instrument_name))
        return list(series.history) if series is not None else []

    def _close(
        self,
        key: tuple[str, str],
        series: _Series,
        next_bucket: int,
        anomalies: list[VolumeAnomaly],
    ) -> None:
        volume = series.volume
        anomaly = self._judge(key, series.bucket, volume, series.history)
        if anomaly is not None:
            anomalies.append(anomaly)
        history = series.history
        history.append(float(volume))
        empty = min(next_bucket - series.bucket - 1, self.window_buckets)
        if empty > 0:
            # An empty bucket cannot be an anomaly (zero never exceeds a non-negative mean).
            history.extend([0.0] * empty)
        series.bucket = next_bucket
        series.volume = _ZERO

    def _add_late(self, series: _Series, bucket: int, quantity: Decimal) -> None:
        age = series.bucket - bucket
        if age > self.window_buckets:
            self.ignored_trades += 1
            return
        self.late_trades += 1
        history = series.history
        if age > len(history):
            # Older than anything seen for this instrument: the buckets in between were empty.
            history.extendleft([0.0] * (age - len(history)))
        history[len(history) - age] += float(quantity)

    def _judge(
        self, key: tuple[str, str], bucket: int, volume: Decimal, history: collections.deque[float]
    ) -> VolumeAnomaly | None:
        count = len(history)
        if count < self.min_buckets or volume <= 0:
            return None
        mean = math.fsum(history) / count
        if mean <= 0.0:
            return None
        stddev = math.sqrt(math.fsum((v - mean) ** 2 for v in history) / count)
        scale = max(stddev, mean * STDDEV_FLOOR_RATIO)
        z = (float(volume) - mean) / scale
        if z <= self.threshold:
            return None
        return VolumeAnomaly(
            exchange=key[0],
            instrument_name=key[1],
            bucket_start_us=bucket * self.bucket_us,
            bucket_seconds=self.bucket_seconds,
            volume=volume,
            mean=mean,
            stddev=stddev,
            z=z,
            history_buckets=count,
        )
