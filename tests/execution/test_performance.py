"""The performance report's figures against an example computed by hand (the arithmetic is in
the comments), and the self-contained HTML page."""

from __future__ import annotations

import math
from datetime import UTC, date, datetime
from decimal import Decimal

import pytest

from tradingd.execution.accounting import FillRecord
from tradingd.execution.performance import TOTAL, Performance, compute, ratios
from tradingd.execution.performance_html import thin
from tradingd.strategies.api import Side

D = Decimal
ROOT_365 = math.sqrt(365)


def at(day: int, hour: int) -> int:
    return int(datetime(2026, 1, day, hour, tzinfo=UTC).timestamp()) * 1_000_000


def fill(
    strategy: str,
    n: int,
    side: str,
    qty: str,
    price: str,
    fee: str,
    when: int,
    *,
    inverse: bool = False,
) -> FillRecord:
    return FillRecord(
        strategy=strategy,
        exchange="deribit" if inverse else "binance",
        instrument="BTC-PERPETUAL" if inverse else "BTCUSDT",
        base="BTC",
        quote="USD" if inverse else "USDT",
        side=Side(side),
        quantity=D(qty),
        price=D(price),
        fee=D(fee),
        fee_currency="BTC" if inverse else "USDT",
        trade_id=f"{strategy}-{n}",
        at_us=when,
        inverse=inverse,
    )


FILLS = [
    # trend, BTCUSDT: net = realised - fee per fill
    fill("trend", 1, "buy", "1", "100", "0.1", at(1, 10)),  # opens; net -0.1
    fill("trend", 2, "sell", "1", "110", "0.1", at(1, 16)),  # +10 - 0.1 = +9.9: a win
    fill("trend", 3, "buy", "2", "100", "0.2", at(3, 0)),  # opens; net -0.2
    fill("trend", 4, "sell", "2", "95", "0.2", at(3, 12)),  # 2 x -5 = -10 - 0.2 = -10.2: loss
    fill("trend", 5, "buy", "1", "100", "0", at(4, 0)),  # opens; net 0
    fill("trend", 6, "sell", "0.5", "120", "0", at(4, 6)),  # 0.5 x 20 = +10: a win; 0.5 open
    # grid, BTCUSDT: one round trip on day 2
    fill("grid", 1, "buy", "1", "100", "0", at(2, 12)),
    fill("grid", 2, "sell", "1", "101", "0", at(2, 18)),  # +1: a win
    # carry, BTC-PERPETUAL (inverse: 1000 USD, PnL in BTC)
    fill("carry", 1, "buy", "1000", "50000", "0.00001", at(1, 12), inverse=True),  # net -0.00001
    # 1000 x (1/50000 - 1/40000) = 1000 x (0.00002 - 0.000025) = -0.005 BTC: a loss
    fill("carry", 2, "sell", "1000", "40000", "0", at(2, 12), inverse=True),
]
# The period: 2026-01-01 00:00 (the first fill's day) to 2026-01-05 00:00: 4 days, 96 hours.
END = int(datetime(2026, 1, 5, tzinfo=UTC).timestamp()) * 1_000_000


def one(rows: list[Performance], strategy: str, currency: str) -> Performance:
    found = [r for r in rows if r.strategy == strategy and r.currency == currency]
    assert len(found) == 1, rows
    return found[0]


def test_figures_per_strategy_and_in_total_match_the_hand_computed_example() -> None:
    report = compute(FILLS, end_us=END)
    assert report.days == 4
    assert report.start_us == at(1, 0) and report.end_us == END

    trend = one(report.strategies, "trend", "USDT")
    assert (trend.fills, trend.trades, trend.wins) == (6, 3, 2)
    assert trend.win_rate == pytest.approx(2 / 3)
    assert trend.realised_pnl == D("10")  # 10 - 10 + 10
    assert trend.fees == D("0.6")  # 0.1 + 0.1 + 0.2 + 0.2
    assert trend.net_pnl == D("9.4")
    # Daily net: day 1 -0.1 + 9.9 = 9.8; day 2 0; day 3 -0.2 - 10.2 = -10.4; day 4 +10.
    assert [d.pnl for d in trend.daily] == [D("9.8"), D("0"), D("-10.4"), D("10")]
    # mean 9.4 / 4 = 2.35; deviations 7.45, -2.35, -12.75, 7.65; squares 55.5025 + 5.5225
    # + 162.5625 + 58.5225 = 282.11; sample variance 282.11 / 3.
    assert trend.sharpe == pytest.approx(2.35 / math.sqrt(282.11 / 3) * ROOT_365)
    # Downside: only -10.4: sqrt(108.16 / 4) = sqrt(27.04) = 5.2.
    assert trend.sortino == pytest.approx(2.35 / 5.2 * ROOT_365)
    # Equity: -0.1, 9.8 (peak), 9.6, -0.6 (trough), -0.6, 9.4: drawdown 9.8 - -0.6 = 10.4.
    assert [p.equity for p in trend.equity] == [
        D(0),
        D("-0.1"),
        D("9.8"),
        D("9.6"),
        D("-0.6"),
        D("-0.6"),
        D("9.4"),
    ]
    assert trend.max_drawdown == D("10.4")
    # Open 10:00-16:00 on day 1 (6 h), 00:00-12:00 on day 3 (12 h), from 00:00 on day 4 to the
    # end (24 h): 42 h of 96.
    assert trend.exposure == pytest.approx(42 / 96)

    carry = one(report.strategies, "carry", "BTC")
    assert (carry.fills, carry.trades, carry.wins, carry.win_rate) == (2, 1, 0, 0.0)
    assert carry.realised_pnl == D("-0.005")
    assert carry.fees == D("0.00001")
    assert carry.net_pnl == D("-0.00501")
    assert carry.max_drawdown == D("0.00501")  # from 0 down to -0.00501
    assert carry.exposure == pytest.approx(24 / 96)  # day 1 12:00 to day 2 12:00
    # Daily: -0.00001, -0.005, 0, 0: mean -0.0012525.
    daily = [-0.00001, -0.005, 0.0, 0.0]
    mean = sum(daily) / 4
    sample_sd = math.sqrt(sum((d - mean) ** 2 for d in daily) / 3)
    downside = math.sqrt((0.00001**2 + 0.005**2) / 4)
    assert carry.sharpe == pytest.approx(mean / sample_sd * ROOT_365)
    assert carry.sortino == pytest.approx(mean / downside * ROOT_365)

    usdt = one(report.total, TOTAL, "USDT")
    assert (usdt.fills, usdt.trades, usdt.wins) == (8, 4, 3)
    assert usdt.realised_pnl == D("11") and usdt.fees == D("0.6") and usdt.net_pnl == D("10.4")
    # Daily 9.8, 1, -10.4, 10: mean 2.6; deviations 7.2, -1.6, -13, 7.4; squares 51.84 + 2.56
    # + 169 + 54.76 = 278.16.
    assert usdt.sharpe == pytest.approx(2.6 / math.sqrt(278.16 / 3) * ROOT_365)
    assert usdt.sortino == pytest.approx(2.6 / 5.2 * ROOT_365)
    # Equity in time order: -0.1, 9.8, 10.8 (peak, grid's +1 on day 2), 10.6, 0.4, 0.4, 10.4.
    assert usdt.max_drawdown == D("10.4")
    # trend's 42 h and grid's 6 h (day 2 12:00-18:00) do not overlap: 48 of 96.
    assert usdt.exposure == pytest.approx(48 / 96)
    assert one(report.total, TOTAL, "BTC").net_pnl == D("-0.00501")


def test_since_counts_the_fills_from_that_day_and_carries_positions_in() -> None:
    report = compute(FILLS, end_us=END, since=date(2026, 1, 3), strategy="trend")
    assert report.days == 2 and [r.strategy for r in report.strategies] == ["trend"]
    trend = report.strategies[0]
    assert (trend.fills, trend.trades, trend.wins) == (4, 2, 1)
    assert trend.realised_pnl == D("0")  # -10 + 10
    assert trend.net_pnl == D("-0.4")
    assert [d.pnl for d in trend.daily] == [D("-10.4"), D("10")]
    assert trend.max_drawdown == D("10.4")  # 0 to -10.4
    assert trend.exposure == pytest.approx(36 / 48)  # 12 h on day 3, 24 h on day 4

    # A position opened before the period and closed in it: exposure from the period's start.
    carried = compute(FILLS, end_us=END, since=date(2026, 1, 2), strategy="carry")
    carry = carried.strategies[0]
    assert (carry.fills, carry.trades) == (1, 1)
    assert carry.net_pnl == D("-0.005")
    assert carry.exposure == pytest.approx(12 / 72)  # day 2 00:00 to 12:00 of 3 days


def test_ratios_need_two_days_variance_and_a_losing_day() -> None:
    assert ratios([1.0]) == (None, None)
    assert ratios([1.0, 1.0]) == (None, None)
    sharpe, sortino = ratios([1.0, 3.0])
    assert sharpe == pytest.approx(2 / math.sqrt(2) * ROOT_365) and sortino is None


def test_no_fills_gives_an_empty_report() -> None:
    report = compute([], end_us=END)
    assert report.strategies == [] and report.total == [] and report.days == 1


def test_a_long_curve_is_thinned_for_the_page_without_losing_peaks_or_troughs() -> None:
    times = list(range(10_000))
    values = [float(i % 100) for i in times]
    values[4321], values[7777] = 1e6, -1e6
    kept_times, kept_values = thin(times, values, limit=400)
    assert len(kept_values) <= 400
    assert kept_times == sorted(kept_times)
    assert (kept_times[0], kept_times[-1]) == (0, 9999)
    assert 1e6 in kept_values and -1e6 in kept_values
    assert thin([1, 2], [3.0, 4.0], limit=400) == ([1, 2], [3.0, 4.0])
