"""The record of the account's reconciliations: table ``reconciliations`` in PostgreSQL, read
by ``tradingd status`` and ``tradingd state history`` (no venue, no Redis here)."""

from __future__ import annotations

import time
from decimal import Decimal

import asyncpg
import msgspec

from tradingd.execution.audit import Finding, Outcome, Report, Trigger
from tradingd.model import us_to_datetime


def _wall_clock_us() -> int:
    return time.time_ns() // 1000


# -- the record -----------------------------------------------------------------------------

_COLUMNS = (
    "exchange, trigger, outcome, summary, findings::text AS findings, fills_booked,"
    " open_orders, venue_balances::text AS venue_balances, fill_watermark, baseline,"
    " (extract(epoch FROM at) * 1e6)::bigint AS at_us"
)
_findings = msgspec.json.Decoder(list[Finding])
_balances = msgspec.json.Decoder(dict[str, Decimal])


def _report_of(record: asyncpg.Record) -> Report:
    return Report(
        exchange=record["exchange"],
        trigger=Trigger(record["trigger"]),
        outcome=Outcome(record["outcome"]),
        summary=record["summary"],
        findings=_findings.decode(record["findings"]),
        fills_booked=record["fills_booked"],
        open_orders=record["open_orders"],
        venue_balances=_balances.decode(record["venue_balances"]),
        fill_watermark=record["fill_watermark"],
        baseline=record["baseline"],
        at_us=record["at_us"],
    )


async def record_report(pool: asyncpg.Pool, report: Report) -> None:
    await pool.execute(
        "INSERT INTO reconciliations (exchange, trigger, outcome, summary, findings,"
        " fills_booked, open_orders, venue_balances, fill_watermark, baseline, at)"
        " VALUES ($1, $2, $3, $4, $5::jsonb, $6, $7, $8::jsonb, $9, $10, $11)",
        report.exchange,
        report.trigger.value,
        report.outcome.value,
        report.summary,
        msgspec.json.encode(report.findings).decode(),
        report.fills_booked,
        report.open_orders,
        msgspec.json.encode({c: str(v) for c, v in report.venue_balances.items()}).decode(),
        report.fill_watermark,
        report.baseline,
        us_to_datetime(report.at_us) if report.at_us else us_to_datetime(_wall_clock_us()),
    )


async def baseline_report(pool: asyncpg.Pool, exchange: str) -> Report | None:
    record = await pool.fetchrow(
        f"SELECT {_COLUMNS} FROM reconciliations WHERE exchange = $1 AND baseline"
        " ORDER BY id DESC LIMIT 1",
        exchange,
    )
    return _report_of(record) if record is not None else None


async def recent_reports(
    pool: asyncpg.Pool, exchange: str | None = None, limit: int = 50
) -> list[Report]:
    """Newest first."""
    records = await pool.fetch(
        f"SELECT {_COLUMNS} FROM reconciliations WHERE $1::text IS NULL OR exchange = $1"
        " ORDER BY id DESC LIMIT $2",
        exchange,
        limit,
    )
    return [_report_of(record) for record in records]


async def latest_reports(pool: asyncpg.Pool, exchanges: list[str]) -> dict[str, Report]:
    records = await pool.fetch(
        f"SELECT DISTINCT ON (exchange) {_COLUMNS} FROM reconciliations"
        " WHERE exchange = ANY($1::text[]) ORDER BY exchange, id DESC",
        exchanges,
    )
    return {record["exchange"]: _report_of(record) for record in records}
