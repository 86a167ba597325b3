"""The migrator against a real PostgreSQL: order, once-only, concurrency, edits, failures."""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
import sys
from pathlib import Path

import asyncpg
import pytest

from tradingd.storage.migrations import (
    MigrationError,
    default_sql_dir,
    load_migrations,
    migrate,
    pending_migrations,
)

# Slow enough that two migrators started together really overlap.
FIXTURE_MIGRATIONS = {
    "0001_accounts.sql": "CREATE TABLE accounts (id int PRIMARY KEY);\nSELECT pg_sleep(0.3);\n",
    "0002_balances.sql": (
        "CREATE TABLE balances (account int REFERENCES accounts, amount numeric);\n"
        "INSERT INTO accounts VALUES (1);\n"
    ),
    "0003_audit.sql": "CREATE TABLE audit (at timestamptz DEFAULT now());\n",
}

MIGRATOR_SCRIPT = """
import asyncio, json, sys
from pathlib import Path
import asyncpg
from tradingd.storage.migrations import migrate

async def main():
    connection = await asyncpg.connect(sys.argv[1])
    print("connected", flush=True)
    sys.stdin.readline()
    applied = await migrate(connection, Path(sys.argv[2]))
    await connection.close()
    print(json.dumps(applied), flush=True)

asyncio.run(main())
"""


@pytest.fixture
def sql_dir(tmp_path: Path) -> Path:
    directory = tmp_path / "sql"
    directory.mkdir()
    for name, text in FIXTURE_MIGRATIONS.items():
        (directory / name).write_text(text)
    return directory


async def recorded(url: str) -> list[tuple[int, str]]:
    connection = await asyncpg.connect(url)
    try:
        rows = await connection.fetch("SELECT version, name FROM schema_migrations ORDER BY 1")
    finally:
        await connection.close()
    return [(row["version"], row["name"]) for row in rows]


async def test_applies_in_order_once_and_records(database_url: str, sql_dir: Path) -> None:
    connection = await asyncpg.connect(database_url)
    try:
        assert await pending_migrations(connection, sql_dir) == list(FIXTURE_MIGRATIONS)
        assert await migrate(connection, sql_dir) == list(FIXTURE_MIGRATIONS)
        assert await migrate(connection, sql_dir) == []
        assert await pending_migrations(connection, sql_dir) == []
        (sql_dir / "0004_more.sql").write_text("ALTER TABLE audit ADD COLUMN note text;\n")
        assert await pending_migrations(connection, sql_dir) == ["0004_more.sql"]
        assert await migrate(connection, sql_dir) == ["0004_more.sql"]
        row = await connection.fetchrow(
            "SELECT checksum, applied_at FROM schema_migrations WHERE version = 4"
        )
        assert len(row["checksum"]) == 64 and row["applied_at"] is not None
    finally:
        await connection.close()
    assert await recorded(database_url) == [
        (1, "0001_accounts.sql"),
        (2, "0002_balances.sql"),
        (3, "0003_audit.sql"),
        (4, "0004_more.sql"),
    ]


async def test_accepts_a_pool(database_url: str, sql_dir: Path) -> None:
    pool = await asyncpg.create_pool(database_url, min_size=1, max_size=2)
    try:
        assert await migrate(pool, sql_dir) == list(FIXTURE_MIGRATIONS)
        assert await pending_migrations(pool, sql_dir) == []
    finally:
        await pool.close()


async def test_two_tasks_apply_each_file_once(database_url: str, sql_dir: Path) -> None:
    first, second = await asyncpg.connect(database_url), await asyncpg.connect(database_url)
    try:
        results = await asyncio.gather(migrate(first, sql_dir), migrate(second, sql_dir))
    finally:
        await first.close()
        await second.close()
    assert sorted(results[0] + results[1]) == list(FIXTURE_MIGRATIONS)
    assert await recorded(database_url) == [
        (1, "0001_accounts.sql"),
        (2, "0002_balances.sql"),
        (3, "0003_audit.sql"),
    ]


async def test_two_processes_apply_each_file_once(database_url: str, sql_dir: Path) -> None:
    children = [
        await asyncio.create_subprocess_exec(
            sys.executable,
            "-c",
            MIGRATOR_SCRIPT,
            database_url,
            str(sql_dir),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
        )
        for _ in range(2)
    ]
    try:
        async with asyncio.timeout(60):
            for child in children:
                assert child.stdout is not None
                assert await child.stdout.readline() == b"connected\n"
            for child in children:  # both connected: release them together
                assert child.stdin is not None
                child.stdin.write(b"go\n")
                await child.stdin.drain()
            outputs = [await child.communicate() for child in children]
    finally:
        for child in children:
            if child.returncode is None:
                child.kill()
                await child.wait()
    assert [child.returncode for child in children] == [0, 0]
    applied = [json.loads(stdout) for stdout, _ in outputs]
    assert sorted(applied[0] + applied[1]) == list(FIXTURE_MIGRATIONS)
    assert len(await recorded(database_url)) == len(FIXTURE_MIGRATIONS)


async def test_edited_migration_is_an_error_naming_the_file(
    database_url: str, sql_dir: Path
) -> None:
    connection = await asyncpg.connect(database_url)
    try:
        await migrate(connection, sql_dir)
        (sql_dir / "0002_balances.sql").write_text(
            "-- tweaked\n" + FIXTURE_MIGRATIONS["0002_balances.sql"]
        )
        (sql_dir / "0004_more.sql").write_text("CREATE TABLE more (id int);\n")
        with pytest.raises(MigrationError, match=r"0002_balances\.sql was edited"):
            await migrate(connection, sql_dir)
        with pytest.raises(MigrationError, match=r"0002_balances\.sql was edited"):
            await pending_migrations(connection, sql_dir)
        assert await connection.fetchval("SELECT to_regclass('more')") is None
    finally:
        await connection.close()


async def test_failing_migration_rolls_back_alone(database_url: str, sql_dir: Path) -> None:
    (sql_dir / "0003_audit.sql").write_text(
        "CREATE TABLE audit (id int);\nINSERT INTO no_such_table VALUES (1);\n"
    )
    connection = await asyncpg.connect(database_url)
    try:
        with pytest.raises(MigrationError, match=r"0003_audit\.sql failed.*no_such_table"):
            await migrate(connection, sql_dir)
        assert await connection.fetchval("SELECT to_regclass('audit')") is None
        assert await connection.fetchval("SELECT count(*) FROM accounts") == 1
        # The lock was released: a fixed file applies.
        (sql_dir / "0003_audit.sql").write_text(FIXTURE_MIGRATIONS["0003_audit.sql"])
        assert await migrate(connection, sql_dir) == ["0003_audit.sql"]
    finally:
        await connection.close()
    assert [name for _, name in await recorded(database_url)] == list(FIXTURE_MIGRATIONS)


async def test_database_newer_than_the_files_is_an_error(database_url: str, sql_dir: Path) -> None:
    connection = await asyncpg.connect(database_url)
    try:
        await migrate(connection, sql_dir)
        (sql_dir / "0003_audit.sql").unlink()
        with pytest.raises(MigrationError, match=r"0003_audit\.sql is applied in the database"):
            await migrate(connection, sql_dir)
    finally:
        await connection.close()


def test_bad_file_names_and_duplicate_versions_are_errors(tmp_path: Path) -> None:
    (tmp_path / "0001_one.sql").write_text("SELECT 1;")
    (tmp_path / "notes.txt").write_text("ignored: not .sql")
    assert [m.name for m in load_migrations(tmp_path)] == ["0001_one.sql"]
    (tmp_path / "0001_again.sql").write_text("SELECT 1;")
    with pytest.raises(MigrationError, match="version 0001 is also used"):
        load_migrations(tmp_path)
    (tmp_path / "0001_again.sql").unlink()
    (tmp_path / "2-Bad Name.sql").write_text("SELECT 1;")
    with pytest.raises(MigrationError, match=r"2-Bad Name\.sql: expected a migration file name"):
        load_migrations(tmp_path)


def test_package_migrations_are_found() -> None:
    names = [migration.name for migration in load_migrations()]
    assert names[:2] == ["0001_core.sql", "0002_market_data.sql"]
    assert default_sql_dir().is_dir()


async def test_project_schema_applies(migrated_database_url: str) -> None:
    connection = await asyncpg.connect(migrated_database_url)
    try:
        assert await pending_migrations(connection) == []
        assert await migrate(connection) == []
        for table in ("state_transitions", "dead_letters", "public_trades", "ohlc", "tickers"):
            assert await connection.fetchval("SELECT to_regclass($1)", table) is not None
    finally:
        await connection.close()


async def test_trade_partitions_are_utc_months_whatever_the_session_time_zone(
    migrated_database_url: str,
) -> None:
    connection = await asyncpg.connect(migrated_database_url)
    try:
        await connection.execute("SET TimeZone = 'America/New_York'")
        part = await connection.fetchval("SELECT tradingd_ensure_trades_partition('2026-11-15')")
        assert part == "public_trades_y2026m11"
        await connection.execute("SET TimeZone = 'UTC'")
        bounds = await connection.fetchval(
            "SELECT pg_get_expr(relpartbound, oid) FROM pg_class WHERE relname = $1", part
        )
        assert bounds == (
            "FOR VALUES FROM ('2026-11-01 00:00:00+00') TO ('2026-12-01 00:00:00+00')"
        )
    finally:
        await connection.close()


# Every query of public_trades by trade_seq, as the daemon, the repairer and the backfill run it.
_QUERIES_BY_SEQ = (
    "SELECT max(trade_seq) FROM public_trades WHERE exchange = $1 AND instrument_name = $2",
    "SELECT count(*) FROM public_trades WHERE exchange = $1 AND instrument_name = $2"
    " AND trade_seq BETWEEN 10 AND 20",
    "SELECT min(trade_seq) FROM public_trades WHERE exchange = $1 AND instrument_name = $2"
    " AND trade_seq > 10",
    "SELECT price FROM public_trades WHERE exchange = $1 AND instrument_name = $2"
    " ORDER BY trade_seq DESC LIMIT 1",
)


async def test_trades_have_one_index_that_serves_the_queries_by_seq(
    migrated_database_url: str,
) -> None:
    connection = await asyncpg.connect(migrated_database_url)
    try:
        await connection.fetchval("SELECT tradingd_ensure_trades_partition('2026-11-15')")
        indexes = await connection.fetch(
            "SELECT indexdef FROM pg_indexes WHERE tablename = 'public_trades'"
        )
        assert [r["indexdef"] for r in indexes] == [
            "CREATE UNIQUE INDEX public_trades_pkey ON ONLY public.public_trades USING btree"
            " (exchange, instrument_name, trade_seq, trade_id, trade_timestamp)"
        ]
        await connection.execute("SET enable_seqscan = off")
        for query in _QUERIES_BY_SEQ:
            plan = await connection.fetchval(
                "EXPLAIN (FORMAT JSON) " + query.replace("$1", "'binance'").replace("$2", "'X'")
            )
            assert "Seq Scan" not in plan and "_pkey" in plan, (query, plan)
    finally:
        await connection.close()


async def test_a_new_month_is_split_by_instrument_and_a_query_by_instrument_reads_one_part(
    migrated_database_url: str,
) -> None:
    connection = await asyncpg.connect(migrated_database_url)
    try:
        await connection.fetchval("SELECT tradingd_ensure_trades_partition('2026-10-15')")
        leaves = await connection.fetch(
            "SELECT relid::text AS name FROM pg_partition_tree('public_trades_y2026m10')"
            " WHERE isleaf ORDER BY 1"
        )
        assert [r["name"] for r in leaves] == [
            f"public_trades_y2026m10_h{r:02d}" for r in range(16)
        ]
        # Each instrument's trades in one part, whose key index they extend at its right end.
        await connection.execute(
            "INSERT INTO public_trades (exchange, instrument_name, market_type, trade_id,"
            " trade_seq, price, quantity, is_buyer_maker, trade_timestamp, received_at)"
            " SELECT 'binance', s, 'spot', n::text, n, 1, 1, false,"
            " '2026-10-02'::timestamptz + n * interval '1 s', now()"
            " FROM unnest(array['BTCUSDT', 'ETHUSDT', 'BNBUSDT']) AS s, generate_series(1, 5) n"
        )
        placed = await connection.fetch(
            "SELECT instrument_name, count(DISTINCT tableoid) AS parts FROM public_trades"
            " GROUP BY 1"
        )
        assert {r["instrument_name"]: r["parts"] for r in placed} == {
            "BTCUSDT": 1,
            "ETHUSDT": 1,
            "BNBUSDT": 1,
        }
        plan = await connection.fetchval(
            "EXPLAIN (FORMAT JSON) SELECT max(trade_seq) FROM public_trades"
            " WHERE exchange = 'binance' AND instrument_name = 'ETHUSDT'"
        )
        assert len(set(re.findall(r'"Relation Name": "(public_trades_[^"]+)"', plan))) == 1, plan
    finally:
        await connection.close()
