"""The benchmark code must not rot: its parse benchmark and report on a handful of frames.

cryptofeed is only in the ``bench`` extra; the half that drives it skips without it.
"""

from __future__ import annotations

import importlib.util

import pytest

from bench.frames import binance_ticks, binance_trade_frame, deribit_trade_frames, json_number
from bench.parse import bench_parse, ours_runner, ours_trades, parse_cases
from bench.report import render
from bench.stats import machine, slope_per_second, summarize

NO_CRYPTOFEED = importlib.util.find_spec("cryptofeed") is None


def _quiet(_message: str) -> None:
    return None


def test_fixture_frames_are_deterministic() -> None:
    first = [binance_trade_frame(t) for t in binance_ticks(10, seed=3)]
    again = [binance_trade_frame(t) for t in binance_ticks(10, seed=3)]
    other = [binance_trade_frame(t) for t in binance_ticks(10, seed=4)]
    assert first == again
    assert first != other
    assert [f.frame for f in deribit_trade_frames(5, 1)] == [
        f.frame for f in deribit_trade_frames(5, 1)
    ]


def test_json_numbers_are_exact_text() -> None:
    assert json_number(606505, 1) == "60650.5"
    assert json_number(606500, 1) == "60650"
    assert json_number(-5, 4) == "-0.0005"


def test_tradingd_parses_every_case_into_the_expected_records() -> None:
    for case in parse_cases(40):
        assert ours_trades(case) == case.trades, case.kind
        records = ours_runner(case.venue)(case.ours, 2)
        expected = case.trades if case.kind.endswith("1..10 per frame") else len(case.ours)
        assert records == 2 * expected, case.kind


def test_parse_benchmark_runs_without_cryptofeed() -> None:
    result = bench_parse(20, 2, 0.001, include_cryptofeed=False, progress=_quiet)
    assert result["cryptofeed"] is None
    for case in result["cases"]:
        assert case["tradingd"]["frames_per_s"]["median"] > 0
        assert case["cryptofeed"] is None
        assert case["ratio"] is None


@pytest.mark.skipif(
    NO_CRYPTOFEED, reason="cryptofeed is only in the bench extra: pip install -e '.[bench]'"
)
def test_cryptofeed_handlers_read_the_same_frames() -> None:
    result = bench_parse(20, 1, 0.001, progress=_quiet)
    for case in result["cases"]:
        produced = case["trades_produced"]
        assert produced["tradingd"] == produced["cryptofeed"] == case["trades_per_pass"]
        assert case["ratio"]["median"] > 0


def test_report_renders_parse_results() -> None:
    parse = bench_parse(10, 1, 0.001, include_cryptofeed=False, progress=_quiet)
    results = {
        "meta": {
            "mode": "quick",
            "started_at": "2026-01-01 00:00 UTC",
            "command": "make bench-quick",
            "duration_seconds": 1.0,
            "load_average": {"start": [0.0, 0.0, 0.0], "end": [0.0, 0.0, 0.0]},
            "machine": machine(),
        },
        "parse": parse,
    }
    table = render(results)
    assert "| Parse binance trade | tradingd frames/s |" in table
    assert "deribit ticker" in table


def test_summaries_and_slopes() -> None:
    assert summarize([3.0, 1.0, 2.0]) == {"median": 2.0, "min": 1.0, "max": 3.0, "n": 3}
    assert slope_per_second([0, 1, 2, 3], [5, 7, 9, 11]) == pytest.approx(2.0)
    assert slope_per_second([0, 1, 2], [4, 4, 4]) == 0.0


def test_report_renders_both_tick_layouts() -> None:
    def rate(p99_us: float) -> dict[str, object]:
        keys = ("strategy_p50_us", "strategy_p99_us", "p50_us", "p99_us")
        return {key: summarize([p99_us if "p99" in key else 100.0]) for key in keys}

    results = {
        "meta": {
            "mode": "full",
            "started_at": "2026-01-01 00:00 UTC",
            "command": "make bench",
            "duration_seconds": 1.0,
            "load_average": {"start": [0.0, 0.0, 0.0], "end": [0.0, 0.0, 0.0]},
            "machine": machine(),
        },
        "tick": {
            "rates": {"50000": rate(1700.0)},
            "own_core": {"daemon_cpus": [1], "other_cpus": [0], "rates": {"50000": rate(650.0)}},
        },
    }
    table = render(results)
    assert "| Tick to strategy, 50,000 msgs/s | p99 ms (executor) | 1.700 |" in table
    assert (
        "| Tick to strategy, 50,000 msgs/s, the daemon alone on CPU 1 | p99 ms (executor) | 0.650 |"
        in table
    )
