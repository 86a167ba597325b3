"""The pure volume anomaly detector (and the latency histogram): property tests."""

from __future__ import annotations

import math
import random
from decimal import Decimal

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tradingd.analysis import STDDEV_FLOOR_RATIO, VolumeAnomaly, VolumeAnomalyDetector
from tradingd.metrics import LatencyHistogram, record_latencies
from tradingd.model import MarketType, Trade

BUCKET_S = 60
BUCKET_US = BUCKET_S * 1_000_000
START_US = 1_798_761_600_000_000  # a bucket boundary


def trade(at_us: int, quantity: Decimal | str, instrument: str = "BTCUSDT") -> Trade:
    return Trade(
        exchange="binance",
        instrument_name=instrument,
        market_type=MarketType.SPOT,
        trade_id=str(at_us),
        trade_seq=0,
        price_text="1",
        quantity_text=str(Decimal(quantity)),
        is_buyer_maker=False,
        trade_us=at_us,
        received_us=at_us,
    )


def detector(
    window: int = 20, min_buckets: int = 5, threshold: float = 4.0
) -> VolumeAnomalyDetector:
    return VolumeAnomalyDetector(BUCKET_S, window, min_buckets, threshold)


def bucket_trades(bucket: int, quantities: list[Decimal], rng: random.Random) -> list[Trade]:
    base = START_US + bucket * BUCKET_US
    trades = [trade(base + rng.randrange(BUCKET_US), q) for q in quantities]
    rng.shuffle(trades)
    return trades


quantities = st.lists(
    st.decimals(min_value=Decimal("0.00000001"), max_value=Decimal(1000), places=8),
    min_size=1,
    max_size=8,
)


@settings(max_examples=150, deadline=None)
@given(
    quantities,
    st.integers(1, 80),
    st.integers(1, 30),
    st.floats(0.5, 10.0),
    st.randoms(use_true_random=False),
)
def test_no_anomaly_on_constant_volume(
    per_bucket: list[Decimal], buckets: int, window: int, threshold: float, rng: random.Random
) -> None:
    found = detector(window, min(5, window), threshold)
    anomalies: list[VolumeAnomaly] = []
    for bucket in range(buckets):
        anomalies += found.observe(bucket_trades(bucket, per_bucket, rng))
    anomalies += found.close_due(START_US + (buckets + 1) * BUCKET_US)
    assert anomalies == []


@settings(max_examples=150, deadline=None)
@given(
    st.lists(st.integers(1, 1000), min_size=5, max_size=40),
    st.integers(5, 40),
    st.floats(0.5, 50.0),
    st.randoms(use_true_random=False),
    st.booleans(),
)
def test_a_spike_is_found(
    baseline: list[int], window: int, threshold: float, rng: random.Random, closed_by_clock: bool
) -> None:
    found = detector(window, 5, threshold)
    for bucket, volume in enumerate(baseline):
        found.observe(bucket_trades(bucket, [Decimal(volume)], rng))
    spike_bucket = len(baseline)
    spike = Decimal(max(baseline) * 1000) + Decimal("0.5")
    halves = [spike / 2, spike - spike / 2]
    # Closes the last baseline bucket (whatever it was); the spike's bucket stays open.
    found.observe(bucket_trades(spike_bucket, halves, rng))
    anomalies: list[VolumeAnomaly] = []
    if closed_by_clock:
        anomalies += found.close_due(START_US + (spike_bucket + 1) * BUCKET_US)
    else:
        anomalies += found.observe([trade(START_US + (spike_bucket + 3) * BUCKET_US, "1")])
    assert len(anomalies) == 1
    anomaly = anomalies[0]
    assert anomaly.bucket_start_us == START_US + spike_bucket * BUCKET_US
    assert anomaly.volume == spike
    assert anomaly.z > threshold
    history = baseline[-window:]
    assert anomaly.history_buckets == len(history)
    assert anomaly.mean == pytest.approx(sum(history) / len(history))


# Any order, any timestamps, several instruments: invariants hold and nothing is lost.
trades_anywhere = st.lists(
    st.tuples(
        st.integers(0, 40 * BUCKET_US),
        st.sampled_from(["0.5", "1", "2.25", "100", "0.00000001"]),
        st.sampled_from(["BTCUSDT", "ETHUSDT"]),
    ),
    max_size=200,
)


@settings(max_examples=200, deadline=None)
@given(trades_anywhere, st.integers(1, 60), st.integers(1, 10), st.floats(0.1, 10.0))
def test_arbitrary_orders_keep_invariants(
    raw: list[tuple[int, str, str]], window: int, min_buckets: int, threshold: float
) -> None:
    min_buckets = min(min_buckets, window)
    found = detector(window, min_buckets, threshold)
    trades = [trade(START_US + offset, q, name) for offset, q, name in raw]
    anomalies = found.observe(trades)
    anomalies += found.close_due(START_US + 50 * BUCKET_US)
    for anomaly in anomalies:
        assert anomaly.history_buckets >= min_buckets
        assert anomaly.mean > 0
        scale = max(anomaly.stddev, anomaly.mean * STDDEV_FLOOR_RATIO)
        assert float(anomaly.volume) > anomaly.mean + threshold * scale * (1 - 1e-9)
        assert anomaly.bucket_start_us % BUCKET_US == 0
    for name in ("BTCUSDT", "ETHUSDT"):
        history = found.history("binance", name)
        assert len(history) <= window
        assert all(v >= 0 for v in history)
        expected = sum(float(t.quantity) for t in trades if t.instrument_name == name)
        if window >= 51:  # every bucket still in the window: volume is conserved
            assert math.fsum(history) == pytest.approx(expected)
    if window >= 51:
        assert found.ignored_trades == 0


# Runs of one instrument's trades, on two exchanges that share instrument names, starting
# anywhere (late, in the open bucket, past it) and crossing bucket edges; one quantity has so
# many digits that a sum with it rounds (at 28 digits), where the order of adding shows.
runs_anywhere = st.lists(
    st.tuples(
        st.sampled_from(["binance", "deribit"]),
        st.sampled_from(["BTCUSDT", "ETHUSDT"]),
        st.integers(0, 8 * BUCKET_US),
        st.integers(0, BUCKET_US // 3),
        st.lists(
            st.sampled_from(
                ["0.5", "1.50000000", "3", "1E+1", "0.00000001", "9999999999999999999.999999999"]
            ),
            min_size=1,
            max_size=12,
        ),
    ),
    max_size=25,
)


@settings(max_examples=200, deadline=None)
@given(runs_anywhere)
def test_a_batch_adds_up_exactly_as_its_trades_one_by_one(
    runs: list[tuple[str, str, int, int, list[str]]],
) -> None:
    trades = [
        msgspec.structs.replace(trade(START_US + start + i * step, q, name), exchange=exchange)
        for exchange, name, start, step, quantities in runs
        for i, q in enumerate(quantities)
    ]
    whole, single = detector(10, 1, 0.1), detector(10, 1, 0.1)
    found = whole.observe(trades)
    expected: list[VolumeAnomaly] = []
    for one in trades:
        expected += single.observe([one])
    keys = [(e, n) for e in ("binance", "deribit") for n in ("BTCUSDT", "ETHUSDT")]
    # Equal Decimals may differ in digits: the volume is also the same text.
    opened = [str(whole.open_volume(*key)) for key in keys]
    assert opened == [str(single.open_volume(*key)) for key in keys]
    found += whole.close_due(START_US + 20 * BUCKET_US)
    expected += single.close_due(START_US + 20 * BUCKET_US)
    assert found == expected
    assert [str(a.volume) for a in found] == [str(a.volume) for a in expected]
    assert [whole.history(*key) for key in keys] == [single.history(*key) for key in keys]
    assert (whole.late_trades, whole.ignored_trades) == (single.late_trades, single.ignored_trades)


def test_a_run_is_split_at_its_bucket_edges_and_exchanges_kept_apart() -> None:
    found = detector(window=5, min_buckets=1)
    edge = START_US + BUCKET_US
    found.observe(
        [
            trade(START_US, "1"),
            trade(edge - 1, "2"),
            # The same instrument name on another exchange: another series.
            msgspec.structs.replace(trade(edge - 1, "100"), exchange="deribit"),
            trade(edge, "4"),  # the next bucket: the first one closes at 3
            trade(edge - 1, "8"),  # late, into the closed bucket
            trade(edge + 1, "16"),
        ]
    )
    assert found.history("binance", "BTCUSDT") == [11.0]
    assert found.history("deribit", "BTCUSDT") == []
    assert found.late_trades == 1
    found.close_due(START_US + 2 * BUCKET_US)
    assert found.history("binance", "BTCUSDT") == [11.0, 20.0]
    assert found.history("deribit", "BTCUSDT") == [100.0, 0.0]


def test_a_volume_has_the_digits_of_adding_trade_by_trade() -> None:
    found = detector()
    next_bucket = START_US + BUCKET_US
    found.observe(
        [
            trade(START_US, "1"),
            trade(next_bucket, "1E+1"),  # opens the bucket with this very number
            trade(next_bucket + 1, "1E+1"),
            trade(next_bucket + 2, "1E+1"),
            trade(next_bucket, "2.50", "ETHUSDT"),  # a new series starts from zero
        ]
    )
    assert str(found.open_volume("binance", "BTCUSDT")) == "3E+1"
    assert str(found.open_volume("binance", "ETHUSDT")) == "2.50"
    assert found.open_volume("binance", "SOLUSDT") is None


def test_flat_history_uses_a_stddev_floor() -> None:
    found = detector(window=10, min_buckets=5, threshold=4.0)
    rng = random.Random(1)
    for bucket in range(10):
        assert found.observe(bucket_trades(bucket, [Decimal(10)], rng)) == []
    # stddev is 0: 10.5 is not infinitely anomalous (floor: 10 % of the mean = 1.0)
    found.observe(bucket_trades(10, [Decimal("10.5")], rng))
    assert found.observe(bucket_trades(11, [Decimal("14.5")], rng)) == []
    [anomaly] = found.observe(bucket_trades(12, [Decimal(10)], rng))
    assert anomaly.volume == Decimal("14.5")
    assert anomaly.stddev == pytest.approx(0.15, rel=0.01)
    assert anomaly.z == pytest.approx((14.5 - 10.05) / 1.005, rel=0.01)


def test_empty_buckets_count_as_zero_and_zero_mean_flags_nothing() -> None:
    found = detector(window=5, min_buckets=2, threshold=1.0)
    found.observe([trade(START_US, "3")])
    found.observe([trade(START_US + 3 * BUCKET_US, "3")])
    assert found.history("binance", "BTCUSDT") == [3.0, 0.0, 0.0]
    # After a silence longer than the window the baseline is all zeros: no anomaly.
    found.observe([trade(START_US + 20 * BUCKET_US, "1000")])
    assert found.history("binance", "BTCUSDT") == [0.0] * 5
    assert found.observe([trade(START_US + 21 * BUCKET_US, "1")]) == []


def test_late_trades_join_their_bucket_in_the_history() -> None:
    found = detector(window=5, min_buckets=2)
    found.observe([trade(START_US, "1"), trade(START_US + BUCKET_US, "2")])
    found.observe([trade(START_US + 2 * BUCKET_US, "4")])
    found.observe([trade(START_US + 10, "0.5"), trade(START_US - 10 * BUCKET_US, "9")])
    assert found.history("binance", "BTCUSDT") == [1.5, 2.0]
    assert (found.late_trades, found.ignored_trades) == (1, 1)
    # Before the first bucket seen but within the window: the gap counts as empty buckets.
    found.observe([trade(START_US - 2 * BUCKET_US, "7")])
    assert found.history("binance", "BTCUSDT") == [7.0, 0.0, 1.5, 2.0]


def test_rejects_nonsense_settings() -> None:
    with pytest.raises(ValueError):
        VolumeAnomalyDetector(60, 5, 6, 4.0)
    with pytest.raises(ValueError):
        VolumeAnomalyDetector(0, 5, 1, 4.0)
    with pytest.raises(ValueError):
        VolumeAnomalyDetector(60, 5, 1, 0.0)


# -- the latency histogram ------------------------------------------------------------------


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(0, 10**12), min_size=1, max_size=300), st.floats(0.0, 1.0))
def test_histogram_quantiles_within_relative_precision(values: list[int], q: float) -> None:
    histogram = LatencyHistogram("t")
    histogram.record_many(values)
    ordered = sorted(values)
    exact = ordered[max(1, round(q * len(values))) - 1]
    estimate = histogram.quantile(q)
    assert exact <= estimate <= exact + exact // 32
    assert histogram.max == ordered[-1] and histogram.min == ordered[0]
    assert histogram.count == len(values)

    one_by_one = LatencyHistogram("u")
    for value in values:
        one_by_one.record(value)
    assert one_by_one.snapshot() == histogram.snapshot()


def test_histogram_small_values_are_exact_and_negative_clamps() -> None:
    histogram = LatencyHistogram("t")
    histogram.record_many([5, 1, 3, -7])
    assert (histogram.min, histogram.p50, histogram.max) == (0, 1, 5)
    other = LatencyHistogram("o")
    other.record(1000)
    histogram.merge(other)
    assert histogram.count == 5 and histogram.max == 1000
    assert histogram.snapshot()["p99"] == 1000
    histogram.reset()
    assert histogram.snapshot() == {"count": 0, "p50": 0, "p99": 0, "max": 0, "mean": 0.0}


@settings(max_examples=100, deadline=None)
@given(st.lists(st.integers(0, 10**9), min_size=1, max_size=2_000), st.integers(1, 300))
def test_record_latencies_keeps_count_and_max_exact(stamps: list[int], max_samples: int) -> None:
    now = 10**9 + 5
    trades = [msgspec.structs.replace(trade(1, "1"), received_us=s) for s in stamps]
    histogram = LatencyHistogram("t")
    record_latencies(histogram, now, trades, max_samples=max_samples)
    assert histogram.count == len(stamps)
    assert histogram.max == now - min(stamps)
    if len(stamps) <= max_samples:
        exact = LatencyHistogram("e")
        exact.record_many(now - s for s in stamps)
        assert histogram.snapshot() == exact.snapshot()
    else:
        assert histogram.min >= now - max(stamps)
        assert histogram.p50 <= histogram.max


def same_histogram(one: LatencyHistogram, other: LatencyHistogram) -> bool:
    """Equal in every reading: each rank's quantile, extremes, count and total."""
    ranks = [i / (2 * max(1, one.count)) for i in range(2 * one.count + 1)]
    return (one.count, one.total, one.min, one.max) == (
        other.count,
        other.total,
        other.min,
        other.max,
    ) and [one.quantile(q) for q in ranks] == [other.quantile(q) for q in ranks]


# Latencies repeat (a burst of frames shares one receive time), some fall on bucket edges, and
# a clock step can make one negative.
latencies = st.lists(
    st.sampled_from([-7, 0, 1, 63, 64, 65, 127, 128, 1_000, 1_023, 1_024, 10**6, 10**12])
    | st.integers(-100, 10**9),
    max_size=300,
)


@settings(max_examples=200, deadline=None)
@given(latencies)
def test_recording_a_batch_is_recording_each_value(values: list[int]) -> None:
    batch, each = LatencyHistogram("b"), LatencyHistogram("e")
    batch.record(50)
    each.record(50)
    batch.record_many(values)
    for value in values:
        each.record(value)
    assert same_histogram(batch, each)


@settings(max_examples=200, deadline=None)
@given(latencies.filter(bool), st.integers(0, 1_000))
def test_a_sample_counts_each_value_by_its_weight(values: list[int], more: int) -> None:
    population = len(values) + more
    sampled, each = LatencyHistogram("s"), LatencyHistogram("e")
    sampled.record_sample(values, population)
    base, extra = divmod(population, len(values))
    for position, value in enumerate(values):
        for _ in range(base + 1 if position < extra else base):
            each.record(value)
    assert same_histogram(sampled, each)


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 10**9), st.integers(1, 40)), min_size=1, max_size=30))
def test_record_latencies_of_bursts_is_each_trade_recorded(bursts: list[tuple[int, int]]) -> None:
    now = 10**9 + 5
    stamps = [stamp for stamp, size in bursts for _ in range(size)]
    trades = [msgspec.structs.replace(trade(1, "1"), received_us=s) for s in stamps]
    recorded, each = LatencyHistogram("r"), LatencyHistogram("e")
    record_latencies(recorded, now, trades, max_samples=len(trades))
    for stamp in stamps:
        each.record(now - stamp)
    assert same_histogram(recorded, each)
