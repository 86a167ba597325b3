"""``tradingd prune``: old trade months dropped whole, old snapshots and dead letters deleted,
nothing else touched; the daemon's writes are never stalled behind it."""

from __future__ import annotations

import asyncio
import subprocess
from datetime import UTC, date, datetime
from pathlib import Path

import asyncpg
import pytest

from tests.e2e.harness import offline_config, run_cli
from tradingd import retention
from tradingd.config import RetentionConfig
from tradingd.model import MarketType, Trade
from tradingd.retention import PruneDeferred, first_kept_month, run_prune, trade_partitions
from tradingd.storage.writer import write_trades

TODAY = datetime.now(UTC).date()


def month_back(months: int, day: int = 15) -> date:
    first = first_kept_month(TODAY, months) if months else TODAY.replace(day=1)
    assert first is not None
    return first.replace(day=day)


def trades_in(month: date, count: int, first_seq: int) -> list[Trade]:
    at_us = int(datetime(month.year, month.month, month.day, tzinfo=UTC).timestamp() * 1e6)
    return [
        Trade(
            exchange="binance",
            instrument_name="BTCUSDT",
            market_type=MarketType.SPOT,
            trade_id=str(seq),
            trade_seq=seq,
            price_text="100.5",
            quantity_text="0.1",
            is_buyer_maker=False,
            trade_us=at_us + seq,
            received_us=at_us + seq,
        )
        for seq in range(first_seq, first_seq + count)
    ]


async def seed(pool: asyncpg.Pool) -> None:
    """Trades in the current month and each of the five before it (10 each), a gap left open
    four months ago and one today, ticker snapshots and dead letters, old and new."""
    async with pool.acquire() as conn:
        for months in range(6):
            await write_trades(conn, trades_in(month_back(months), 10, 1000 * months + 1))
        await conn.execute(
            "INSERT INTO data_gaps (exchange, instrument_name, first_seq, last_seq, detected_at,"
            " reason) VALUES ('binance', 'BTCUSDT', 4001, 4005, $1, 'reconnect'),"
            " ('binance', 'BTCUSDT', 9001, 9002, now(), 'sequence jump')",
            datetime(*month_back(4).timetuple()[:3], tzinfo=UTC),
        )
        for age_days in (100, 1):
            await conn.execute(
                "INSERT INTO tickers (exchange, instrument_name, snapshot_at, ticker_timestamp,"
                " last_price) VALUES ('binance', 'BTCUSDT', now() - make_interval(days => $1),"
                " now() - make_interval(days => $1), 1)",
                age_days,
            )
        for age_days in (40, 1):
            await conn.execute(
                "INSERT INTO dead_letters (received_at, exchange, source, payload, error)"
                " VALUES (now() - make_interval(days => $1), 'binance', 'ws:x', 'x', 'bad')",
                age_days,
            )


async def counts(pool: asyncpg.Pool) -> dict[str, object]:
    async with pool.acquire() as conn:
        return {
            "partitions": [name for name, _ in await trade_partitions(conn)],
            "trades": await conn.fetchval("SELECT count(*) FROM public_trades"),
            "open_gaps": await conn.fetchval(
                "SELECT count(*) FROM data_gaps WHERE status = 'open'"
            ),
            "tickers": await conn.fetchval("SELECT count(*) FROM tickers"),
            "dead_letters": await conn.fetchval("SELECT count(*) FROM dead_letters"),
        }


def partition(months: int) -> str:
    month = month_back(months)
    return f"public_trades_y{month:%Y}m{month:%m}"


def test_the_kept_months_are_the_current_one_and_as_many_before_it() -> None:
    assert first_kept_month(date(2026, 11, 21), 0) is None
    assert first_kept_month(date(2026, 11, 21), 2) == date(2026, 9, 1)
    assert first_kept_month(date(2026, 1, 31), 1) == date(2025, 12, 1)
    assert first_kept_month(date(2026, 3, 1), 14) == date(2025, 1, 1)


async def test_prune_drops_old_months_whole_and_deletes_old_rows(pool: asyncpg.Pool) -> None:
    await seed(pool)
    before = await counts(pool)
    assert before["partitions"] == [partition(m) for m in range(5, -1, -1)]
    policy = RetentionConfig(trades_months=2, tickers_days=90, dead_letters_days=30)

    dry = await run_prune(pool, policy, today=TODAY, dry_run=True)
    assert dry.partitions == [partition(5), partition(4), partition(3)]
    assert dry.trades_estimate == 30  # never analysed: counted
    await pool.execute("ANALYZE public_trades")
    analysed = await run_prune(pool, policy, today=TODAY, dry_run=True)
    assert analysed.trades_estimate == 30  # the statistics of every hash part of each month
    assert (dry.gaps_closed, dry.tickers, dry.dead_letters) == (1, 1, 1)
    assert await counts(pool) == before  # a dry run changes nothing

    done = await run_prune(pool, policy, today=TODAY, dry_run=False)
    assert done.partitions == dry.partitions
    assert (done.gaps_closed, done.tickers, done.dead_letters) == (1, 1, 1)
    after = await counts(pool)
    assert after == {
        "partitions": [partition(2), partition(1), partition(0)],
        "trades": 30,
        "open_gaps": 1,
        "tickers": 1,
        "dead_letters": 1,
    }
    kept_seqs = await pool.fetch("SELECT trade_seq FROM public_trades ORDER BY trade_seq")
    assert [r["trade_seq"] for r in kept_seqs] == [
        seq for m in (0, 1, 2) for seq in range(1000 * m + 1, 1000 * m + 11)
    ]
    closed = await pool.fetchrow("SELECT status, reason FROM data_gaps WHERE first_seq = 4001")
    assert closed["status"] == "unfillable"
    assert closed["reason"] == "reconnect" + retention.PAST_RETENTION

    again = await run_prune(pool, policy, today=TODAY, dry_run=False)
    assert (again.partitions, again.gaps_closed, again.tickers, again.dead_letters) == (
        [],
        0,
        0,
        0,
    )
    # The writer still writes into the kept months and the current one.
    async with pool.acquire() as conn:
        assert await write_trades(conn, trades_in(month_back(0, day=1), 5, 50_000)) == 5


async def test_zero_keeps_everything(pool: asyncpg.Pool) -> None:
    await seed(pool)
    before = await counts(pool)
    keep_all = RetentionConfig(trades_months=0, tickers_days=0, dead_letters_days=0)
    report = await run_prune(pool, keep_all, today=TODAY, dry_run=False)
    assert report.trades_kept_from is None and report.partitions == []
    assert await counts(pool) == before


async def test_a_held_lock_defers_prune_instead_of_queueing_writers_behind_it(
    pool: asyncpg.Pool, monkeypatch: pytest.MonkeyPatch
) -> None:
    await seed(pool)
    monkeypatch.setattr(retention, "LOCK_TIMEOUT", "100ms")
    policy = RetentionConfig(trades_months=1)
    async with pool.acquire() as holder, holder.transaction():
        await holder.execute("LOCK TABLE public_trades IN ACCESS SHARE MODE")
        with pytest.raises(PruneDeferred, match="next run will try again"):
            await run_prune(pool, policy, today=TODAY, dry_run=False)
    assert len((await counts(pool))["partitions"]) == 6  # nothing was half done
    assert (await run_prune(pool, policy, today=TODAY, dry_run=False)).partitions == [
        partition(5),
        partition(4),
        partition(3),
        partition(2),
    ]


async def test_the_cli_command_reports_and_prunes(
    tmp_path: Path, migrated_database_url: str, redis_url: str, pool: asyncpg.Pool
) -> None:
    await seed(pool)
    config = offline_config(
        tmp_path / "tradingd.toml",
        state_dir=tmp_path / "state",
        database_url=migrated_database_url,
        redis_url=redis_url,
        sections={"retention": {"trades_months": 4, "dead_letters_days": 0}},
    )

    def tradingd(*args: str) -> subprocess.CompletedProcess[str]:
        return run_cli(config, "prune", *args)

    dry = await asyncio.to_thread(tradingd, "--dry-run")
    assert dry.returncode == 0, dry.stderr
    kept_from = month_back(4)
    assert dry.stdout.splitlines() == [
        f"public_trades: keeping {kept_from:%Y-%m} onwards; would drop {partition(5)}"
        " (about 10 trades)",
        "ticker snapshots: would delete 1 older than 90 days",
        "dead letters: kept forever",
        "reconciliation reports: would delete 0 older than 30 days",
    ]
    done = await asyncio.to_thread(tradingd)
    assert done.returncode == 0, done.stderr
    assert f"dropped {partition(5)}" in done.stdout
    assert "open gaps in those months" not in done.stdout  # the open one is in a kept month
    after = await counts(pool)
    assert after["trades"] == 50 and after["tickers"] == 1 and after["dead_letters"] == 2
