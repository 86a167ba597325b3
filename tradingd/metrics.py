"""Small in-process metrics: monotonic counters and a fixed-memory latency histogram.

The histogram is log-linear (HDR-style): values below ``2**(precision_bits + 1)`` are exact,
larger ones share a bucket with neighbours within ``2**-precision_bits`` relative error
(about 3 % with the default 5 bits). Recording is O(1) per distinct value (a batch's repeats
are counted first, in C), so actors can record every message; quantiles are computed on demand
for ``tradingd status`` and the benchmark. ``record_latencies`` bounds the per-batch cost on the
hot path by recording a systematic sample of a large batch, weighted so that counts stay exact.
"""

from __future__ import annotations

import bisect
import collections
import itertools
import operator
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

# Above this many records in one call, record_latencies samples evenly instead of recording all.
LATENCY_SAMPLES_PER_BATCH = 256

_received_us = operator.attrgetter("received_us")


class LatencyHistogram:
    """Counts of non-negative integer values (microseconds by convention) in log-linear buckets."""

    __slots__ = ("_counts", "_shift_base", "_sub_bits", "count", "max", "min", "name", "total")

    def __init__(self, name: str, precision_bits: int = 5) -> None:
        if not 1 <= precision_bits <= 16:
            raise ValueError("precision_bits must be between 1 and 16")
        self.name = name
        self._sub_bits = precision_bits
        self._shift_base = precision_bits + 1
        self._counts: dict[int, int] = {}
        self.count = 0
        self.total = 0
        self.max = 0
        self.min = 0

    def _index(self, value: int) -> int:
        shift = value.bit_length() - self._shift_base
        if shift <= 0:
            return value
        return (shift << self._sub_bits) + (value >> shift)

    def _upper_bound(self, index: int) -> int:
        """The largest value that falls into bucket ``index``."""
        first_shifted = 2 << self._sub_bits
        if index < first_shifted:
            return index
        shift = (index >> self._sub_bits) - 1
        mantissa = index - (shift << self._sub_bits)
        return ((mantissa + 1) << shift) - 1

    def record(self, value: int) -> None:
        if value < 0:
            # Clock steps can make "now - then" negative; count it as zero rather than lose it.
            value = 0
        index = self._index(value)
        counts = self._counts
        counts[index] = counts.get(index, 0) + 1
        if self.count == 0 or value < self.min:
            self.min = value
        if value > self.max:
            self.max = value
        self.count += 1
        self.total += value

    def record_many(self, values: Iterable[int]) -> None:
        self.record_counts(collections.Counter(values))

    def record_counts(self, tally: Mapping[int, int]) -> None:
        """Record each value of ``tally`` as many times as it maps to (a positive count).

        A batch's values repeat (a burst of frames shares one receive time): counted in C
        first, the bucket arithmetic runs once per distinct value instead of once per value.
        """
        counts = self._counts
        shift_base, sub_bits = self._shift_base, self._sub_bits
        low, high = self.min, self.max
        empty = self.count == 0
        count = total = 0
        for value, n in tally.items():
            if value < 0:
                value = 0
            shift = value.bit_length() - shift_base
            index = value if shift <= 0 else (shift << sub_bits) + (value >> shift)
            counts[index] = counts.get(index, 0) + n
            if value > high:
                high = value
            if empty or value < low:
                low = value
                empty = False
            count += n
            total += value * n
        self.count += count
        self.total += total
        self.min, self.max = low, high

    def record_sample(self, values: Sequence[int], population: int) -> None:
        """Record ``values`` as an even sample standing for ``population`` values in all.

        Each value is counted ``population // len(values)`` times (the first few once more), so
        the count stays exact; the extremes seen are those of the sample.
        """
        k = len(values)
        if k == 0:
            return
        if population < k:
            raise ValueError("a sample cannot be larger than its population")
        base, extra = divmod(population, k)
        tally = collections.Counter(values)
        if base > 1:
            for value, n in tally.items():
                tally[value] = n * base
        tally.update(values[:extra])
        self.record_counts(tally)

    def observe_max(self, value: int) -> None:
        """Raise the maximum without counting a value (a sample's true extreme)."""
        if self.count and value > self.max:
            self.max = value

    def quantile(self, q: float) -> int:
        """The value at quantile ``q`` (0..1): a bucket's upper bound, never above the maximum."""
        if not 0.0 <= q <= 1.0:
            raise ValueError("quantile must be between 0 and 1")
        if self.count == 0:
            return 0
        rank = max(1, round(q * self.count))
        seen = 0
        for index in sorted(self._counts):
            seen += self._counts[index]
            if seen >= rank:
                return max(self.min, min(self._upper_bound(index), self.max))
        return self.max

    def cumulative(self, bounds: Sequence[int]) -> list[int]:
        """How many values are at or below each of ``bounds`` (ascending), for an exposition
        with fixed buckets. A log-linear bucket counts under the first bound at or above its
        upper end, so a count may land one bound late (within the histogram's precision)."""
        below = [0] * len(bounds)
        for index, n in self._counts.items():
            slot = bisect.bisect_left(bounds, self._upper_bound(index))
            if slot < len(bounds):
                below[slot] += n
        return list(itertools.accumulate(below))

    @property
    def p50(self) -> int:
        return self.quantile(0.5)

    @property
    def p99(self) -> int:
        return self.quantile(0.99)

    @property
    def mean(self) -> float:
        return self.total / self.count if self.count else 0.0

    def merge(self, other: LatencyHistogram) -> None:
        if other._sub_bits != self._sub_bits:
            raise ValueError("cannot merge histograms of different precision")
        if other.count == 0:
            return
        for index, n in other._counts.items():
            self._counts[index] = self._counts.get(index, 0) + n
        self.min = other.min if self.count == 0 else min(self.min, other.min)
        self.max = max(self.max, other.max)
        self.count += other.count
        self.total += other.total

    def reset(self) -> None:
        self._counts.clear()
        self.count = self.total = self.max = self.min = 0

    def snapshot(self) -> dict[str, int | float]:
        return {
            "count": self.count,
            "p50": self.p50,
            "p99": self.p99,
            "max": self.max,
            "mean": round(self.mean, 1),
        }


def record_latencies(
    histogram: LatencyHistogram,
    now_us: int,
    records: Sequence[Any],
    max_samples: int = LATENCY_SAMPLES_PER_BATCH,
) -> None:
    """Record ``now_us - record.received_us`` for a batch of records.

    Batches up to ``max_samples`` are recorded exactly; larger ones through an evenly strided
    sample (the count stays exact and the maximum is exact; quantiles are estimates).
    """
    n = len(records)
    if n <= max_samples:
        received = collections.Counter(map(_received_us, records))
        histogram.record_counts({now_us - r: count for r, count in received.items()})
        return
    stride = -(-n // max_samples)
    sample = [now_us - r for r in map(_received_us, records[::stride])]
    histogram.record_sample(sample, n)
    histogram.observe_max(now_us - min(map(_received_us, records)))
