"""The per-exchange operator view of ``tradingd status``: the last reconciliation and its age,
open orders, net positions and the day's PnL, from PostgreSQL (works without a daemon).

Day PnL, per currency: realised PnL of the fills since 00:00 UTC, minus their fees, plus the
open positions' unrealised PnL now (marked as ``tradingd positions`` marks them).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from datetime import UTC, datetime
from decimal import Decimal

import asyncpg
import msgspec
import redis.asyncio as aioredis

from tradingd.execution.accounting import Book
from tradingd.execution.audit_record import latest_reports
from tradingd.execution.breaker import breaker_status
from tradingd.execution.reports import TERMINAL_STATES, UNKNOWN_STATE, fetch_fill_records, marks_for


class ReconciliationView(msgspec.Struct, frozen=True, kw_only=True):
    outcome: str  # clean, foreign, mismatch, failed, auditing, locked
    trigger: str
    summary: str
    findings: int
    at_us: int
    age_s: float


class ExchangeView(msgspec.Struct, frozen=True, kw_only=True):
    exchange: str
    reconciliation: ReconciliationView | None  # None: never reconciled
    open_orders: int
    unknown_orders: int
    positions: dict[str, str]  # instrument -> net signed quantity, non-zero only
    day_pnl: dict[str, str]  # currency -> realised today - fees today + unrealised now
    unmarked: list[str] = []  # open positions without a mark (left out of day_pnl)
    # The circuit breaker of the exchange (tradingd.execution.breaker; None: not tracked).
    breaker: dict[str, str] | None = None


def _day_start_us(now_us: int) -> int:
    day = datetime.fromtimestamp(now_us / 1e6, UTC).replace(
        hour=0, minute=0, second=0, microsecond=0
    )
    return int(day.timestamp()) * 1_000_000


def _text(value: Decimal) -> str:
    return format(value.normalize(), "f")


async def exchange_views(
    pool: asyncpg.Pool,
    redis: aioredis.Redis,
    exchanges: Sequence[str],
    now_us: int | None = None,
) -> list[ExchangeView]:
    now_us = now_us if now_us is not None else time.time_ns() // 1000
    reports = await latest_reports(pool, list(exchanges))
    counts = {
        r["exchange"]: (r["open"], r["unknown"])
        for r in await pool.fetch(
            "SELECT exchange, count(*) FILTER (WHERE state <> ALL($1::text[])) AS open,"
            " count(*) FILTER (WHERE state = $2) AS unknown FROM orders"
            " WHERE exchange = ANY($3::text[]) GROUP BY exchange",
            list(TERMINAL_STATES),
            UNKNOWN_STATE,
            list(exchanges),
        )
    }
    records = await fetch_fill_records(pool)
    start_us = _day_start_us(now_us)
    views = []
    for exchange in exchanges:
        mine = [r for r in records if r.exchange == exchange]
        book = Book.replay(mine)
        before = Book.replay(r for r in mine if r.at_us < start_us)
        net: dict[str, Decimal] = {}
        for _strategy, position in book.positions():
            net[position.instrument] = net.get(position.instrument, Decimal(0)) + position.quantity
        held = {name: qty for name, qty in sorted(net.items()) if qty != 0}
        marks = await marks_for(redis, pool, dict.fromkeys(held, exchange))
        prices = {name: mark for name, (mark, _source) in marks.items()}
        pnl: dict[str, Decimal] = {}
        for part, sign in (
            (book.realised_pnl(), 1),
            (before.realised_pnl(), -1),
            (book.fees(), -1),
            (before.fees(), 1),
            (book.unrealised_pnl(prices), 1),
        ):
            for currency, amount in part.items():
                pnl[currency] = pnl.get(currency, Decimal(0)) + sign * amount
        report = reports.get(exchange)
        open_orders, unknown = counts.get(exchange, (0, 0))
        views.append(
            ExchangeView(
                exchange=exchange,
                reconciliation=(
                    ReconciliationView(
                        outcome=report.outcome.value,
                        trigger=report.trigger.value,
                        summary=report.summary,
                        findings=len(report.findings),
                        at_us=report.at_us,
                        age_s=round(max(0.0, (now_us - report.at_us) / 1e6), 1),
                    )
                    if report is not None
                    else None
                ),
                open_orders=open_orders,
                unknown_orders=unknown,
                positions={name: _text(qty) for name, qty in held.items()},
                day_pnl={c: _text(v) for c, v in sorted(pnl.items()) if v},
                unmarked=book.unmarked(prices),
                breaker=(await breaker_status(pool, exchange)).as_dict(),
            )
        )
    return views


def _age(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def render(views: Sequence[ExchangeView]) -> list[str]:
    lines = ["accounts:"]
    for view in views:
        lines.append(f"  {view.exchange}")
        rec = view.reconciliation
        if rec is None:
            lines.append("    reconciliation: never (the daemon reconciles at start)")
        else:
            lines.append(
                f"    reconciliation: {rec.outcome.upper()} {_age(rec.age_s)} ago"
                f" ({rec.trigger}): {rec.summary}"
            )
        lines.append(
            f"    orders: {view.open_orders} open, {view.unknown_orders} unknown"
            + (" (their instrument is blocked)" if view.unknown_orders else "")
        )
        shown = ", ".join(f"{name} {qty}" for name, qty in view.positions.items()) or "flat"
        lines.append(f"    positions: {shown}")
        pnl = ", ".join(f"{amount} {currency}" for currency, amount in view.day_pnl.items())
        lines.append(
            f"    day PnL: {pnl or '0'}"
            + (f" (no mark for {', '.join(view.unmarked)})" if view.unmarked else "")
        )
        breaker = view.breaker
        lines.append(
            "    breaker: "
            + (", ".join(f"{k} {v}" for k, v in breaker.items()) if breaker else "not tracked")
        )
    return lines
