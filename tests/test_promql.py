"""The dashboard's PromQL subset against hand-made series, with Prometheus's own arithmetic."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tradingd.promql import PromQLError, SeriesStore, evaluate, parse, scrape_samples


def query(store: SeriesStore, text: str, t: float) -> dict[str, float] | float:
    value = evaluate(parse(text), store, t)
    if isinstance(value, float):
        return value
    return {",".join(f"{k}={v}" for k, v in s.labels if k != "__name__"): s.value for s in value}


def counter_store(points: dict[str, list[tuple[float, float]]]) -> SeriesStore:
    """One scrape per distinct time; ``points`` maps an exchange to its (time, value) pairs."""
    store = SeriesStore()
    times = sorted({t for series in points.values() for t, _ in series})
    for t in times:
        store.add_scrape(
            t,
            [
                ({"__name__": "c_total", "exchange": exchange}, v)
                for exchange, series in points.items()
                for at, v in series
                if at == t
            ],
        )
    return store


def test_rate_of_a_steady_counter_is_its_slope() -> None:
    store = counter_store({"binance": [(100.0 + i, 10.0 * i) for i in range(121)]})
    assert query(store, "rate(c_total[1m])", 200.0) == {"exchange=binance": pytest.approx(10.0)}
    assert query(store, "increase(c_total[1m])", 200.0) == {
        "exchange=binance": pytest.approx(600.0)
    }
    assert query(store, "irate(c_total[1m])", 200.0) == {"exchange=binance": pytest.approx(10.0)}
    assert query(store, "rate(c_total[1m]) * 60", 200.0) == {
        "exchange=binance": pytest.approx(600.0)
    }


def test_increase_extrapolates_as_prometheus_does_at_a_young_series() -> None:
    # Starts at t=100 with 50, +1 a second; at t=130 a 1m window began 30 s before the first
    # sample: more than 1.1 sampling intervals, so Prometheus extrapolates half an interval
    # (0.5 s) to the start and none to the end: 30 * 30.5 / 30.
    store = counter_store({"binance": [(100.0 + i, 50.0 + i) for i in range(31)]})
    assert query(store, "increase(c_total[1m])", 130.0) == {"exchange=binance": pytest.approx(30.5)}
    # From 2: zero lies 2 s back, still past 1.1 intervals, so again half an interval.
    store = counter_store({"binance": [(100.0 + i, 2.0 + i) for i in range(31)]})
    assert query(store, "increase(c_total[1m])", 130.0) == {"exchange=binance": pytest.approx(30.5)}
    # A counter from 0.2: zero is 0.2 s back, nearer than half an interval.
    store = counter_store({"binance": [(100.0 + i, 0.2 + i) for i in range(31)]})
    assert query(store, "increase(c_total[1m])", 130.0) == {"exchange=binance": pytest.approx(30.2)}


def test_a_counter_reset_counts_as_a_restart_from_zero() -> None:
    values = [0, 10, 20, 30, 5, 15]  # restarted between 30 and 5: +30 +5 +10 after it
    store = counter_store({"binance": [(float(i), float(v)) for i, v in enumerate(values)]})
    assert query(store, "increase(c_total[5s])", 5.0) == {"exchange=binance": pytest.approx(45.0)}
    assert query(store, "irate(c_total[5s])", 5.0) == {"exchange=binance": pytest.approx(10.0)}


def test_one_sample_in_the_window_gives_no_rate() -> None:
    store = counter_store({"binance": [(0.0, 1.0), (100.0, 2.0)]})
    assert query(store, "rate(c_total[1m])", 100.0) == {}


def test_sum_by_and_aggregations_group_on_the_named_labels() -> None:
    store = SeriesStore()
    store.add_scrape(
        1.0,
        [
            ({"__name__": "g", "exchange": "binance", "queue": "a"}, 1.0),
            ({"__name__": "g", "exchange": "binance", "queue": "b"}, 2.0),
            ({"__name__": "g", "exchange": "deribit", "queue": "a"}, 4.0),
        ],
    )
    assert query(store, "sum by (exchange) (g)", 1.0) == {
        "exchange=binance": 3.0,
        "exchange=deribit": 4.0,
    }
    assert query(store, "sum(g)", 1.0) == {"": 7.0}
    assert query(store, "max(g) by (queue)", 1.0) == {"queue=a": 4.0, "queue=b": 2.0}
    assert query(store, "sum without (queue) (g)", 1.0) == {
        "exchange=binance": 3.0,
        "exchange=deribit": 4.0,
    }
    assert query(store, 'count(g{exchange=~"bin.*"})', 1.0) == {"": 2.0}
    assert query(store, 'g{exchange!="binance"}', 1.0) == {"exchange=deribit,queue=a": 4.0}


def test_vector_arithmetic_matches_on_all_labels_but_the_name() -> None:
    store = SeriesStore()
    store.add_scrape(
        1.0,
        [
            ({"__name__": "depth", "queue": "records"}, 25.0),
            ({"__name__": "depth", "queue": "orphan"}, 1.0),
            ({"__name__": "capacity", "queue": "records"}, 100.0),
            ({"__name__": "capacity", "queue": "tickers"}, 0.0),
            ({"__name__": "depth", "queue": "tickers"}, 0.0),
        ],
    )
    fill = query(store, "depth / capacity", 1.0)
    assert isinstance(fill, dict)
    assert fill["queue=records"] == 0.25
    assert math.isnan(fill["queue=tickers"])  # 0 / 0, as Prometheus answers
    assert "queue=orphan" not in fill
    assert query(store, "depth == 25", 1.0) == {"queue=records": 25.0}
    assert query(store, "depth > 0", 1.0) == {"queue=records": 25.0, "queue=orphan": 1.0}
    assert query(store, "2 * 3 - 1", 1.0) == 5.0
    assert query(store, "-depth{queue='orphan'}", 1.0) == {"queue=orphan": -1.0}


def histogram(store: SeriesStore, t: float, counts: dict[str, float], exchange: str) -> None:
    store.add_scrape(
        t,
        [({"__name__": "h_bucket", "le": le, "exchange": exchange}, c) for le, c in counts.items()],
    )


def test_histogram_quantile_interpolates_inside_the_bucket() -> None:
    store = SeriesStore()
    histogram(store, 1.0, {"0.1": 10.0, "0.5": 60.0, "+Inf": 100.0}, "binance")
    # rank 50 falls in (0.1, 0.5] holding 50 observations, 40 of them below the rank.
    assert query(store, "histogram_quantile(0.5, h_bucket)", 1.0) == {
        "exchange=binance": pytest.approx(0.42)
    }
    # Past the last finite bucket: its upper bound.
    assert query(store, "histogram_quantile(0.99, h_bucket)", 1.0) == {"exchange=binance": 0.5}
    assert query(store, "histogram_quantile(0.05, sum by (le) (h_bucket))", 1.0) == {
        "": pytest.approx(0.05)
    }


def test_histogram_quantile_of_a_rate_and_of_no_observations() -> None:
    store = SeriesStore()
    histogram(store, 0.0, {"1": 0.0, "2": 0.0, "+Inf": 0.0}, "binance")
    histogram(store, 60.0, {"1": 30.0, "2": 60.0, "+Inf": 60.0}, "binance")
    p50 = query(store, "histogram_quantile(0.5, sum by (le) (rate(h_bucket[1m])))", 60.0)
    assert p50 == {"": pytest.approx(1.0)}
    store = SeriesStore()
    histogram(store, 0.0, {"1": 0.0, "+Inf": 0.0}, "binance")
    histogram(store, 1.0, {"1": 0.0, "+Inf": 0.0}, "binance")
    empty = query(store, "histogram_quantile(0.5, rate(h_bucket[1m]))", 1.0)
    assert isinstance(empty, dict) and math.isnan(empty["exchange=binance"])


def test_instant_selectors_look_back_five_minutes_and_honour_staleness() -> None:
    store = SeriesStore()
    store.add_scrape(
        0.0, [({"__name__": "g", "actor": "a"}, 1.0), ({"__name__": "g", "actor": "b"}, 2.0)]
    )
    store.add_scrape(10.0, [({"__name__": "g", "actor": "a"}, 3.0)])
    assert query(store, "g", 5.0) == {"actor=a": 1.0, "actor=b": 2.0}
    assert query(store, "g", 10.0) == {"actor=a": 3.0}  # b vanished from the scrape
    assert query(store, "g", 310.0) == {"actor=a": 3.0}
    assert query(store, "g", 311.0) == {}


def test_scrape_text_becomes_samples_with_job_and_instance() -> None:
    text = (
        "# HELP tradingd_fills_total Fills.\n# TYPE tradingd_fills_total counter\n"
        'tradingd_fills_total{exchange="binance"} 3.0\n'
    )
    samples = list(scrape_samples(text, "127.0.0.1:9464"))
    assert samples == [
        (
            {
                "__name__": "tradingd_fills_total",
                "exchange": "binance",
                "job": "tradingd",
                "instance": "127.0.0.1:9464",
            },
            3.0,
        )
    ]


@pytest.mark.parametrize(
    "text",
    [
        "topk(3, g)",
        "g offset 5m",
        "rate(g)",
        "g[5m]",
        "sum(g",
        'g{a~"x"}',
        "label_replace(g, 'a', 'b', 'c', 'd')",
    ],
)
def test_anything_outside_the_subset_is_refused(text: str) -> None:
    with pytest.raises(PromQLError):
        evaluate(parse(text), SeriesStore(), 0.0)


@given(
    steps=st.lists(
        st.tuples(st.integers(1, 30), st.floats(0.0, 1e6), st.booleans()), min_size=1, max_size=40
    )
)
def test_increase_over_exactly_the_sampled_span_is_the_total_added(
    steps: list[tuple[int, float, bool]],
) -> None:
    # Window edges on the first and last sample: no extrapolation, so increase() is the sum
    # of the increments, counting each reset as a restart from zero.
    t, value, added = 0.0, 0.0, 0.0
    points = [(t, value)]
    for gap, increment, reset in steps:
        t += gap
        value = increment if reset and increment < value else value + increment
        added += increment
        points.append((t, value))
    store = counter_store({"binance": points})
    result = query(store, f"increase(c_total[{t:.0f}s])", t)
    assert isinstance(result, dict)
    assert result["exchange=binance"] == pytest.approx(added, rel=1e-9, abs=1e-6)
