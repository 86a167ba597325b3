"""The Binance public data repository's spot ``trades`` files, sans-I/O.

Layout (under a base URL, ``https://data.binance.vision`` in production)::

    data/spot/daily/trades/<SYMBOL>/<SYMBOL>-trades-<YYYY-MM-DD>.zip
    data/spot/monthly/trades/<SYMBOL>/<SYMBOL>-trades-<YYYY-MM>.zip
    <either>.CHECKSUM      "<64 hex sha256>  <zip name>"

Each zip holds one header-less CSV named like the zip: ``trade id, price, qty, quoteQty, time,
isBuyerMaker, isBestMatch``. Times are milliseconds in files dated before 2025-01-01 and
microseconds from then on; a row's unit is told by its magnitude (milliseconds stay below 1e14
until the year 5138), so a file re-published in the other unit still parses. Daily files appear
the next day, monthly ones early in the following month.

Nothing here reads a clock, a socket or a file: lines in, canonical ``Trade`` records out.
"""

from __future__ import annotations

import calendar
import re
from collections.abc import Iterable, Iterator
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Final

import msgspec

from tradingd.model import MarketType, Trade, is_positive_decimal

_MICROSECOND_THRESHOLD: Final = 100_000_000_000_000
_CHECKSUM: Final = re.compile(rb"^\s*([0-9a-fA-F]{64})\s+\*?(\S+)\s*$")
_TRUE: Final = frozenset({b"True", b"true", b"TRUE", b"1"})
_FALSE: Final = frozenset({b"False", b"false", b"FALSE", b"0"})
_DAY_US: Final = 86_400_000_000


class TradeFileError(ValueError):
    """A line of a trades file that is not what the repository documents."""

    def __init__(self, file_name: str, line: int, reason: str) -> None:
        super().__init__(f"{file_name} line {line}: {reason}")
        self.file_name = file_name
        self.line = line


class TradesFile(msgspec.Struct, frozen=True):
    """One daily or monthly trades file of one symbol, covering ``first_day..last_day``."""

    symbol: str
    first_day: date
    last_day: date
    monthly: bool

    @property
    def name(self) -> str:
        stamp = f"{self.first_day:%Y-%m}" if self.monthly else f"{self.first_day:%Y-%m-%d}"
        return f"{self.symbol}-trades-{stamp}.zip"

    @property
    def path(self) -> str:
        period = "monthly" if self.monthly else "daily"
        return f"data/spot/{period}/trades/{self.symbol}/{self.name}"

    @property
    def checksum_path(self) -> str:
        return self.path + ".CHECKSUM"

    @property
    def hours(self) -> int:
        return ((self.last_day - self.first_day).days + 1) * 24

    @property
    def start_us(self) -> int:
        return _day_us(self.first_day)

    @property
    def end_us(self) -> int:
        """The first microsecond after the file's period."""
        return _day_us(self.last_day) + _DAY_US


def _day_us(day: date) -> int:
    return int(datetime(day.year, day.month, day.day, tzinfo=UTC).timestamp()) * 1_000_000


def _month_end(day: date) -> date:
    return day.replace(day=calendar.monthrange(day.year, day.month)[1])


def daily_files(symbol: str, first: date, last: date) -> list[TradesFile]:
    days = (last - first).days + 1
    return [
        TradesFile(symbol, first + timedelta(d), first + timedelta(d), monthly=False)
        for d in range(max(0, days))
    ]


def plan_trade_files(symbol: str, first: date, last: date, *, today: date) -> list[TradesFile]:
    """The files covering ``first..last`` in order: a monthly file for every whole month that
    ended before ``today``'s month, daily files for the rest."""
    files: list[TradesFile] = []
    month = first.replace(day=1)
    while month <= last:
        end = _month_end(month)
        lo, hi = max(first, month), min(last, end)
        if lo == month and hi == end and end < today.replace(day=1):
            files.append(TradesFile(symbol, month, end, monthly=True))
        else:
            files.extend(daily_files(symbol, lo, hi))
        month = end + timedelta(1)
    return files


def parse_checksum(text: bytes, file_name: str) -> str:
    """The lowercase sha256 hex digest a ``.CHECKSUM`` file gives for ``file_name``."""
    for line in text.splitlines():
        match = _CHECKSUM.match(line)
        if match and match[2].decode(errors="replace").rsplit("/", 1)[-1] == file_name:
            return match[1].decode().lower()
    raise ValueError(
        f"{file_name}.CHECKSUM: expected '<sha256>  {file_name}', found {text[:120]!r}"
    )


def _flag(value: bytes, what: str) -> bool:
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise ValueError(f"{what} {value!r} is not True/False")


def _amount(value: bytes, what: str) -> str:
    """The file's exact decimal text, checked by the model's rule."""
    text = value.decode("ascii", errors="replace")
    if is_positive_decimal(text):
        return text
    raise ValueError(f"{what} {value!r} is not a positive decimal number in [1e-20, 1e20)")


def file_time_us(value: int) -> int:
    """A file's time in µs, whichever unit the row uses (ms before 2025, µs from then on)."""
    return value if value >= _MICROSECOND_THRESHOLD else value * 1000


def parse_trade_lines(
    lines: Iterable[bytes],
    file: TradesFile,
    *,
    exchange: str,
    received_us: int,
) -> Iterator[Trade]:
    """Trades of one file's CSV lines, in the file's order; ``TradeFileError`` names the line.

    A header line (futures-style files carry one) is skipped; blank lines are ignored. Every
    trade must fall inside the file's period.
    """
    start, end = file.start_us, file.end_us
    symbol = file.symbol
    for number, raw in enumerate(lines, start=1):
        line = raw.strip()
        if not line:
            continue
        fields = line.split(b",")
        if number == 1 and not fields[0][:1].isdigit():
            continue  # a header row
        try:
            if len(fields) not in (6, 7):
                raise ValueError(f"expected 7 columns, found {len(fields)}")
            trade_id = int(fields[0])
            if trade_id < 0:
                raise ValueError(f"trade id {trade_id} is negative")
            time_us = file_time_us(int(fields[4]))
            if not start <= time_us < end:
                raise ValueError(
                    f"trade time {int(fields[4])} is outside "
                    f"{file.first_day:%Y-%m-%d}..{file.last_day:%Y-%m-%d}"
                )
            yield Trade(
                exchange=exchange,
                instrument_name=symbol,
                market_type=MarketType.SPOT,
                trade_id=str(trade_id),
                trade_seq=trade_id,
                price_text=_amount(fields[1], "price"),
                quantity_text=_amount(fields[2], "quantity"),
                is_buyer_maker=_flag(fields[5], "isBuyerMaker"),
                was_best_price_match=_flag(fields[6], "isBestMatch") if len(fields) == 7 else None,
                trade_us=time_us,
                received_us=received_us,
            )
        except ValueError as exc:
            raise TradeFileError(file.name, number, str(exc)) from None


def format_trade_line(trade: Trade, *, milliseconds: bool) -> str:
    """A trade as the repository writes it (the fake repository serves these)."""
    time = trade.trade_us // 1000 if milliseconds else trade.trade_us
    quote = (trade.price * trade.quantity).quantize(Decimal("0.00000001"))
    best = "True" if trade.was_best_price_match is not False else "False"
    return (
        f"{trade.trade_seq},{trade.price:f},{trade.quantity:f},{quote:f},{time},"
        f"{'True' if trade.is_buyer_maker else 'False'},{best}"
    )


# Spot files dated from this day on carry microseconds.
MICROSECONDS_FROM: Final = date(2025, 1, 1)
