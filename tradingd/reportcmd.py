"""``tradingd report``: how the strategies did, from the ledger's fills (no daemon needed).

The figures are computed in ``tradingd.execution.performance``; the page of ``--html`` is
drawn by ``tradingd.execution.performance_html``.
"""

from __future__ import annotations

import argparse
import sys
import time
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import msgspec

from tradingd.config import Config
from tradingd.execution import performance, performance_html, reports
from tradingd.exitcodes import EX_FAILURE, EX_OK
from tradingd.operator_storage import storage_for


def add_arguments(commands: Any) -> None:
    report = commands.add_parser(
        "report",
        help="performance per strategy and in total (trades, win rate, PnL, fees, Sharpe, "
        "Sortino, max drawdown, exposure) from the ledger's fills",
    )
    report.add_argument("--strategy", metavar="NAME", help="only this strategy")
    report.add_argument(
        "--since", metavar="DATE", type=date.fromisoformat, help="from this day, YYYY-MM-DD (UTC)"
    )
    report.add_argument("--json", action="store_true", help="machine-readable output")
    report.add_argument(
        "--html",
        metavar="FILE",
        type=Path,
        help="also write one self-contained page with the equity curve and drawdown",
    )


async def command(args: argparse.Namespace, config: Config, path: Path) -> int:
    async with storage_for(config) as storage:
        records = await reports.fetch_fill_records(storage.pool)
    now_us = time.time_ns() // 1000
    report = performance.compute(records, end_us=now_us, since=args.since, strategy=args.strategy)
    if args.html is not None:
        try:
            args.html.write_text(performance_html.render(report, generated_us=now_us))
        except OSError as exc:
            print(f"tradingd: cannot write {args.html}: {exc.strerror or exc}", file=sys.stderr)
            return EX_FAILURE
    if args.json:
        print(msgspec.json.format(msgspec.json.encode(report), indent=2).decode())
        return EX_OK
    print_report(report)
    if args.html is not None:
        print(f"wrote {args.html}")
    return EX_OK


def _day(at_us: int) -> str:
    return datetime.fromtimestamp(at_us / 1_000_000, tz=UTC).strftime("%Y-%m-%d %H:%M")


def print_report(report: performance.PerformanceReport) -> None:
    fmt = performance_html.fmt
    days = f"{report.days} day" + ("" if report.days == 1 else "s")
    print(
        f"performance {_day(report.start_us)} to {_day(report.end_us)} UTC ({days});"
        " realised PnL, net of fees paid in the same currency"
    )
    rows = [*report.strategies, *report.total]
    if not rows:
        print("no fills in the period")
        return
    print(
        f"{'strategy':<16} {'cur':<5} {'trades':>6} {'win':>6} {'realised':>12} {'fees':>10}"
        f" {'net':>12} {'sharpe':>7} {'sortino':>7} {'max dd':>10} {'exposure':>8}"
    )
    for p in rows:
        win = "-" if p.win_rate is None else f"{p.win_rate:.0%}"
        print(
            f"{p.strategy:<16} {p.currency:<5} {p.trades:>6} {win:>6} {fmt(p.realised_pnl):>12}"
            f" {fmt(p.fees):>10} {fmt(p.net_pnl):>12} {fmt(p.sharpe):>7} {fmt(p.sortino):>7}"
            f" {fmt(p.max_drawdown):>10} {p.exposure:>8.1%}"
        )
        for currency, fee in sorted(p.other_fees.items()):
            print(f"{'':<16} also paid {fmt(fee)} {currency} in fees (not netted)")
