"""How the strategies did: trades, win rate, PnL, fees, Sharpe, Sortino, drawdown, exposure.

Pure (no I/O, no clock): the ledger's fills in, figures out. Positions and realised PnL come
from replaying every fill through ``accounting.Book`` (the one place for those rules); the
figures count the fills from ``since`` on, with the positions held before it carried in.

Definitions (per strategy and in total, each in its PnL currency: the quote currency of linear
instruments, the base coin of inverse contracts):

* a *trade* is a fill that reduces or closes a position; it is a *win* when the PnL it realised
  minus its fee (when the fee is in the PnL currency) is above zero;
* *net PnL* is realised PnL minus the fees paid in the PnL currency; fees paid in another
  currency (BNB and the like) are listed apart and not netted;
* the *equity curve* is the net PnL accumulated fill by fill from zero; *max drawdown* is the
  largest fall from a running peak of that curve, in the currency;
* *daily returns* are the net PnL of each UTC day of the period, quiet days counted as zero
  (PnL, not percent: the ledger knows no capital, and both ratios are scale-free). Sharpe is
  their mean over their sample standard deviation, Sortino their mean over the downside
  deviation (root mean square of the losing days over all days), both times sqrt(365): crypto
  trades every day. None when they cannot be computed (fewer than two days, no variance, no
  losing day);
* *exposure* is the share of the period during which a position was open.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable, Sequence
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal

import msgspec

from tradingd.execution.accounting import ZERO, Book, FillRecord
from tradingd.strategies.api import Side

TOTAL = "(total)"
DAYS_PER_YEAR = 365
_DAY_US = 86_400 * 1_000_000


class EquityPoint(msgspec.Struct, frozen=True, array_like=True):
    at_us: int
    equity: Decimal
    drawdown: Decimal


class DailyPnl(msgspec.Struct, frozen=True, array_like=True):
    day: date
    pnl: Decimal


class Performance(msgspec.Struct, kw_only=True):
    strategy: str  # TOTAL for every strategy together
    currency: str
    fills: int = 0
    trades: int = 0
    wins: int = 0
    win_rate: float | None = None
    realised_pnl: Decimal = ZERO
    fees: Decimal = ZERO
    net_pnl: Decimal = ZERO
    other_fees: dict[str, Decimal] = {}
    sharpe: float | None = None
    sortino: float | None = None
    max_drawdown: Decimal = ZERO
    exposure: float = 0.0
    daily: list[DailyPnl] = []
    equity: list[EquityPoint] = []


class PerformanceReport(msgspec.Struct, kw_only=True):
    start_us: int
    end_us: int
    days: int
    strategies: list[Performance]
    total: list[Performance]


def midnight_us(day: date) -> int:
    return int(datetime(day.year, day.month, day.day, tzinfo=UTC).timestamp()) * 1_000_000


def day_of(at_us: int) -> date:
    return datetime.fromtimestamp(at_us / 1_000_000, tz=UTC).date()


class _Counted(msgspec.Struct, frozen=True):
    """One fill of the period, as the figures see it."""

    strategy: str
    currency: str
    at_us: int
    net: Decimal
    realised: Decimal
    fee: Decimal  # in ``currency``; 0 when paid in another one
    other_fee: tuple[str, Decimal] | None
    closing: bool


class _Exposure:
    """Open positions of one group over time: the time at least one was open."""

    def __init__(self) -> None:
        self.open: set[str] = set()
        self.since_us: int | None = None
        self.total_us = 0

    def change(self, instrument: str, is_open: bool, at_us: int) -> None:
        was_open = bool(self.open)
        if is_open:
            self.open.add(instrument)
        else:
            self.open.discard(instrument)
        if not was_open and self.open:
            self.since_us = at_us
        elif was_open and not self.open:
            assert self.since_us is not None
            self.total_us += at_us - self.since_us
            self.since_us = None

    def share(self, start_us: int, end_us: int) -> float:
        total = self.total_us + (end_us - self.since_us if self.since_us is not None else 0)
        return total / (end_us - start_us) if end_us > start_us else 0.0


def compute(
    records: Iterable[FillRecord],
    *,
    end_us: int,
    since: date | None = None,
    strategy: str | None = None,
) -> PerformanceReport:
    """The report of the fills up to ``end_us`` (the period's end: now, for the operator) from
    ``since`` (UTC midnight; from the first fill's day when None), for one strategy or all."""
    fills = sorted(
        (r for r in records if r.at_us <= end_us and (strategy is None or r.strategy == strategy)),
        key=lambda r: r.at_us,
    )
    since_us = midnight_us(since) if since is not None else None
    book = Book()
    counted: list[_Counted] = []
    exposures: dict[tuple[str, str], _Exposure] = {}
    for fill in fills:
        before = book.position(fill.strategy, fill.instrument)
        if not book.apply(fill):
            continue
        after = book.position(fill.strategy, fill.instrument)
        currency = fill.base if fill.inverse else fill.quote
        moment = fill.at_us if since_us is None else max(fill.at_us, since_us)
        for key in ((fill.strategy, currency), (TOTAL, currency)):
            exposure = exposures.setdefault(key, _Exposure())
            exposure.change(f"{fill.strategy} {fill.instrument}", after.quantity != 0, moment)
        if since_us is not None and fill.at_us < since_us:
            continue
        same = fill.fee_currency == currency
        realised = after.realised_pnl - before.realised_pnl
        fee = fill.fee if same else ZERO
        counted.append(
            _Counted(
                strategy=fill.strategy,
                currency=currency,
                at_us=fill.at_us,
                net=realised - fee,
                realised=realised,
                fee=fee,
                other_fee=None if same or not fill.fee else (fill.fee_currency, fill.fee),
                closing=before.quantity != 0 and (before.quantity > 0) != (fill.side is Side.BUY),
            )
        )
    if since_us is not None:
        start_us = since_us
    elif counted:
        start_us = midnight_us(day_of(counted[0].at_us))
    else:
        start_us = midnight_us(day_of(end_us))
    days = _days(start_us, end_us)
    groups: dict[tuple[str, str], list[_Counted]] = {}
    for c in counted:
        groups.setdefault((c.strategy, c.currency), []).append(c)
        groups.setdefault((TOTAL, c.currency), []).append(c)
    # A position carried into the period without a fill in it still counts as exposure.
    for key in exposures:
        groups.setdefault(key, [])

    def figures(key: tuple[str, str]) -> Performance:
        exposure = exposures.get(key)
        return _figures(
            key[0],
            key[1],
            groups[key],
            days,
            start_us,
            exposure.share(start_us, end_us) if exposure is not None else 0.0,
        )

    return PerformanceReport(
        start_us=start_us,
        end_us=end_us,
        days=len(days),
        strategies=[figures(k) for k in sorted(groups) if k[0] != TOTAL],
        total=[figures(k) for k in sorted(groups) if k[0] == TOTAL],
    )


def _days(start_us: int, end_us: int) -> list[date]:
    first, last = day_of(start_us), day_of(max(start_us, end_us - 1))
    return [first + timedelta(days=n) for n in range((last - first).days + 1)]


def _figures(
    strategy: str,
    currency: str,
    fills: Sequence[_Counted],
    days: Sequence[date],
    start_us: int,
    exposure: float,
) -> Performance:
    result = Performance(strategy=strategy, currency=currency, exposure=exposure)
    per_day = dict.fromkeys(days, ZERO)
    equity = ZERO
    peak = ZERO
    curve = [EquityPoint(start_us, ZERO, ZERO)]
    other: dict[str, Decimal] = {}
    for c in fills:
        result.fills += 1
        result.realised_pnl += c.realised
        result.fees += c.fee
        if c.other_fee is not None:
            other[c.other_fee[0]] = other.get(c.other_fee[0], ZERO) + c.other_fee[1]
        if c.closing:
            result.trades += 1
            result.wins += c.net > 0
        day = day_of(c.at_us)
        per_day[day] = per_day.get(day, ZERO) + c.net
        equity += c.net
        peak = max(peak, equity)
        curve.append(EquityPoint(c.at_us, equity, peak - equity))
        result.max_drawdown = max(result.max_drawdown, peak - equity)
    result.net_pnl = result.realised_pnl - result.fees
    result.other_fees = other
    result.win_rate = result.wins / result.trades if result.trades else None
    result.daily = [DailyPnl(day, pnl) for day, pnl in sorted(per_day.items())]
    result.equity = curve
    result.sharpe, result.sortino = ratios([float(d.pnl) for d in result.daily])
    return result


def ratios(daily: Sequence[float]) -> tuple[float | None, float | None]:
    """(Sharpe, Sortino) of daily returns, annualised over DAYS_PER_YEAR."""
    if len(daily) < 2:
        return None, None
    mean = statistics.fmean(daily)
    scale = math.sqrt(DAYS_PER_YEAR)
    deviation = statistics.stdev(daily)
    sharpe = mean / deviation * scale if deviation > 0 else None
    downside = math.sqrt(sum(min(0.0, r) ** 2 for r in daily) / len(daily))
    sortino = mean / downside * scale if downside > 0 else None
    return sharpe, sortino
