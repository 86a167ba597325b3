"""Retention: what ``tradingd prune`` deletes, so that the store does not grow without bound.

- ``public_trades``: the monthly partitions of months before the kept ones
  (``retention.trades_months`` whole months before the current month) are dropped whole. A
  DROP is instant and leaves nothing to vacuum; trades are never deleted row by row. Open gaps
  detected before the first kept month are closed as unfillable in the same transaction, so a
  late repair cannot bring a dropped month back.
- ``tickers`` snapshots and ``dead_letters`` older than their number of days are deleted, then
  the tables are vacuumed.
- ``reconciliations`` older than their number of days are deleted, except each exchange's
  latest baseline (the next start compares the venue's balances with it).

The daemon keeps capturing meanwhile: each step is its own transaction under a lock timeout, so
a step that cannot get its lock promptly gives up (and is retried) instead of stalling the
persister behind it.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Awaitable, Callable
from datetime import UTC, date, datetime
from typing import TypeVar

import asyncpg
import msgspec
from loguru import logger

from tradingd.config import RetentionConfig

_T = TypeVar("_T")

PARTITION_NAME = re.compile(r"^public_trades_y(\d{4})m(\d{2})$")
LOCK_TIMEOUT = "5s"
LOCK_ATTEMPTS = 3
PAST_RETENTION = " (past the retention period: its month was dropped)"


class PruneReport(msgspec.Struct, kw_only=True):
    dry_run: bool
    # Months before this one are dropped from public_trades; None: trades are kept forever.
    trades_kept_from: date | None
    partitions: list[str]
    # The rows in those partitions, as PostgreSQL estimates them (exact if never analysed).
    trades_estimate: int
    gaps_closed: int
    tickers: int
    dead_letters: int
    reconciliations: int = 0


class PruneDeferred(Exception):
    """A lock could not be had within the timeout, several times: try again later."""


def first_kept_month(today: date, months: int) -> date | None:
    """The oldest month whose trades are kept: the current month and ``months`` before it."""
    if months == 0:
        return None
    index = today.year * 12 + (today.month - 1) - months
    return date(index // 12, index % 12 + 1, 1)


async def trade_partitions(conn: asyncpg.Connection) -> list[tuple[str, date]]:
    """tradingd's monthly partitions of ``public_trades`` and their months, oldest first."""
    rows = await conn.fetch(
        "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid"
        " WHERE i.inhparent = 'public_trades'::regclass"
    )
    months: list[tuple[str, date]] = []
    for row in rows:
        match = PARTITION_NAME.match(row["relname"])
        if match is None:
            logger.info("leaving partition {} alone: not one of tradingd's", row["relname"])
            continue
        months.append((row["relname"], date(int(match[1]), int(match[2]), 1)))
    return sorted(months, key=lambda pair: pair[1])


async def run_prune(
    pool: asyncpg.Pool, retention: RetentionConfig, *, today: date, dry_run: bool
) -> PruneReport:
    kept_from = first_kept_month(today, retention.trades_months)
    report = PruneReport(
        dry_run=dry_run,
        trades_kept_from=kept_from,
        partitions=[],
        trades_estimate=0,
        gaps_closed=0,
        tickers=0,
        dead_letters=0,
    )
    if kept_from is not None:
        await _with_lock_retries(functools.partial(_drop_old_months, pool, kept_from, report))
    for table, column, days, field in (
        ("tickers", "snapshot_at", retention.tickers_days, "tickers"),
        ("dead_letters", "received_at", retention.dead_letters_days, "dead_letters"),
    ):
        if days == 0:
            continue
        count = await _with_lock_retries(
            functools.partial(_delete_older, pool, table, column, days, dry_run)
        )
        setattr(report, field, count)
        if count and not dry_run:
            await pool.execute(f"VACUUM (ANALYZE) {table}")
    if retention.reconciliations_days:
        report.reconciliations = await _with_lock_retries(
            functools.partial(
                _delete_old_reconciliations, pool, retention.reconciliations_days, dry_run
            )
        )
    return report


async def _delete_old_reconciliations(pool: asyncpg.Pool, days: int, dry_run: bool) -> int:
    where = (
        "at < now() - make_interval(days => $1) AND id NOT IN"
        " (SELECT max(id) FROM reconciliations WHERE baseline GROUP BY exchange)"
    )
    async with pool.acquire() as conn, conn.transaction():
        await conn.execute(f"SET LOCAL lock_timeout = '{LOCK_TIMEOUT}'")
        if dry_run:
            count = await conn.fetchval(f"SELECT count(*) FROM reconciliations WHERE {where}", days)
            return int(count)
        status = await conn.execute(f"DELETE FROM reconciliations WHERE {where}", days)
        return int(status.split()[-1])


async def _drop_old_months(pool: asyncpg.Pool, kept_from: date, report: PruneReport) -> None:
    kept_from_at = datetime(kept_from.year, kept_from.month, 1, tzinfo=UTC)
    async with pool.acquire() as conn, conn.transaction():
        await conn.execute(f"SET LOCAL lock_timeout = '{LOCK_TIMEOUT}'")
        doomed = [name for name, month in await trade_partitions(conn) if month < kept_from]
        estimate = 0
        for name in doomed:
            estimate += await _row_estimate(conn, name)
        if report.dry_run:
            gaps = await conn.fetchval(
                "SELECT count(*) FROM data_gaps WHERE status = 'open' AND detected_at < $1",
                kept_from_at,
            )
        else:
            status = await conn.execute(
                "UPDATE data_gaps SET status = 'unfillable', repaired_at = now(),"
                " reason = reason || $2 WHERE status = 'open' AND detected_at < $1",
                kept_from_at,
                PAST_RETENTION,
            )
            gaps = int(status.split()[-1])
            for name in doomed:
                await conn.execute(f'DROP TABLE "{name}"')
        report.partitions = doomed
        report.trades_estimate = int(estimate)
        report.gaps_closed = int(gaps)


async def _row_estimate(conn: asyncpg.Connection, table: str) -> int:
    """PostgreSQL's estimate from the last ANALYZE (summed over a month's hash partitions); a
    count if a part was never analysed (small)."""
    estimate = await conn.fetchval(
        "SELECT CASE WHEN bool_and(c.reltuples >= 0) THEN sum(c.reltuples)::bigint END"
        " FROM pg_partition_tree($1::regclass) AS t JOIN pg_class c ON c.oid = t.relid"
        " WHERE t.isleaf",
        f'"{table}"',
    )
    if estimate is None or estimate < 0:
        return int(await conn.fetchval(f'SELECT count(*) FROM "{table}"'))
    return int(estimate)


async def _delete_older(
    pool: asyncpg.Pool, table: str, column: str, days: int, dry_run: bool
) -> int:
    where = f"{column} < now() - make_interval(days => $1)"
    async with pool.acquire() as conn, conn.transaction():
        await conn.execute(f"SET LOCAL lock_timeout = '{LOCK_TIMEOUT}'")
        if dry_run:
            return int(await conn.fetchval(f"SELECT count(*) FROM {table} WHERE {where}", days))
        status = await conn.execute(f"DELETE FROM {table} WHERE {where}", days)
        return int(status.split()[-1])


async def _with_lock_retries(step: Callable[[], Awaitable[_T]]) -> _T:
    for attempt in range(1, LOCK_ATTEMPTS + 1):
        try:
            return await step()
        except asyncpg.LockNotAvailableError as exc:
            logger.warning("prune: {} (attempt {} of {})", exc, attempt, LOCK_ATTEMPTS)
    raise PruneDeferred(
        f"could not lock what prune needs within {LOCK_TIMEOUT}, {LOCK_ATTEMPTS} times;"
        " the next run will try again"
    )
