"""``tradingd backup`` / ``tradingd restore`` end to end on the test PostgreSQL: backup, damage,
restore, the same rows; refused while another session (the daemon) uses the database; a broken
archive changes nothing."""

from __future__ import annotations

import asyncio
import stat
import subprocess
from datetime import UTC, datetime
from pathlib import Path

import asyncpg
import pytest

from tests.e2e.harness import offline_config, run_cli
from tradingd.model import MarketType, Trade
from tradingd.storage.writer import write_trades

TABLES = ("public_trades", "data_gaps", "state_transitions", "system_events", "schema_migrations")


def trades(first_seq: int, count: int) -> list[Trade]:
    at_us = int(datetime(2026, 11, 20, tzinfo=UTC).timestamp()) * 1_000_000
    return [
        Trade(
            exchange="binance",
            instrument_name="BTCUSDT",
            market_type=MarketType.SPOT,
            trade_id=str(seq),
            trade_seq=seq,
            price_text="60000.12345678",
            quantity_text="0.001",
            is_buyer_maker=seq % 2 == 0,
            trade_us=at_us + seq,
            received_us=at_us + seq + 5,
        )
        for seq in range(first_seq, first_seq + count)
    ]


async def snapshot(url: str) -> dict[str, list[tuple[object, ...]]]:
    """Every row of the tables that matter, in a stable order (applied_at included)."""
    conn = await asyncpg.connect(url)
    try:
        return {
            table: [tuple(r) for r in await conn.fetch(f"SELECT * FROM {table} ORDER BY 1, 2")]
            for table in TABLES
        }
    finally:
        await conn.close()


async def seed(url: str) -> None:
    conn = await asyncpg.connect(url)
    try:
        await write_trades(conn, trades(1, 500))
        await conn.execute(
            "INSERT INTO data_gaps (exchange, instrument_name, first_seq, last_seq, reason)"
            " VALUES ('binance', 'BTCUSDT', 501, 510, 'reconnect')"
        )
        await conn.execute(
            "INSERT INTO state_transitions (exchange, from_state, to_state, operator, reason)"
            " VALUES ('binance', NULL, 'LOCKED', 'alice', 'bootstrap done')"
        )
    finally:
        await conn.close()


@pytest.fixture
def config(tmp_path: Path, migrated_database_url: str, redis_url: str) -> Path:
    return offline_config(
        tmp_path / "tradingd.toml",
        state_dir=tmp_path / "state",
        database_url=migrated_database_url,
        redis_url=redis_url,
    )


def tradingd(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return run_cli(config, *args)


async def test_backup_damage_restore_gives_back_the_same_rows(
    config: Path, migrated_database_url: str, tmp_path: Path
) -> None:
    url = migrated_database_url
    await seed(url)
    before = await snapshot(url)
    archive = tmp_path / "out" / "nightly.dump"

    made = await asyncio.to_thread(tradingd, config, "backup", "--output", str(archive))
    assert made.returncode == 0, made.stderr
    assert f"backup written: {archive}" in made.stdout
    assert "public_trades 500" in made.stdout
    assert stat.S_IMODE(archive.stat().st_mode) == 0o600
    assert archive.read_bytes()[:5] == b"PGDMP"
    assert not list(archive.parent.glob("*.partial"))

    # Damage: trades gone, rows added and deleted, a table the backup does not know.
    conn = await asyncpg.connect(url)
    try:
        await conn.execute("DROP TABLE public_trades CASCADE")
        await conn.execute("DELETE FROM state_transitions")
        await conn.execute(
            "INSERT INTO data_gaps (exchange, instrument_name, first_seq, last_seq, reason)"
            " VALUES ('binance', 'ETHUSDT', 1, 2, 'live stream')"
        )
        await conn.execute("CREATE TABLE stray (x int)")
    finally:
        await conn.close()

    restored = await asyncio.to_thread(tradingd, config, "restore", str(archive), "--yes")
    assert restored.returncode == 0, restored.stderr
    assert "public_trades 500" in restored.stdout and "start the daemon" in restored.stdout
    assert await snapshot(url) == before
    conn = await asyncpg.connect(url)
    try:
        assert await conn.fetchval("SELECT to_regclass('stray')") is None
        # The restored schema works for the writers: partitions, the function, the index.
        assert await write_trades(conn, trades(501, 10)) == 10
    finally:
        await conn.close()


async def test_restore_is_refused_while_another_session_uses_the_database(
    config: Path, migrated_database_url: str, tmp_path: Path
) -> None:
    await seed(migrated_database_url)
    archive = tmp_path / "b.dump"
    made = await asyncio.to_thread(tradingd, config, "backup", "--output", str(archive))
    assert made.returncode == 0, made.stderr
    before = await snapshot(migrated_database_url)

    daemon_like = await asyncpg.connect(
        migrated_database_url, server_settings={"application_name": "tradingd"}
    )
    try:
        refused = await asyncio.to_thread(tradingd, config, "restore", str(archive), "--yes")
    finally:
        await daemon_like.close()
    assert refused.returncode == 75
    assert "restore refused: 1 other session(s) use the database (pid" in refused.stderr
    assert "Stop the daemon first" in refused.stderr
    assert await snapshot(migrated_database_url) == before

    unconfirmed = await asyncio.to_thread(tradingd, config, "restore", str(archive))
    assert unconfirmed.returncode == 64 and "add --yes" in unconfirmed.stderr
    not_a_backup = await asyncio.to_thread(tradingd, config, "restore", str(config), "--yes")
    assert not_a_backup.returncode == 64 and "is not a backup" in not_a_backup.stderr


async def test_a_broken_archive_changes_nothing(
    config: Path, migrated_database_url: str, tmp_path: Path
) -> None:
    await seed(migrated_database_url)
    archive = tmp_path / "b.dump"
    made = await asyncio.to_thread(tradingd, config, "backup", "--output", str(archive))
    assert made.returncode == 0, made.stderr
    before = await snapshot(migrated_database_url)
    truncated = tmp_path / "truncated.dump"
    truncated.write_bytes(archive.read_bytes()[: archive.stat().st_size * 2 // 3])

    failed = await asyncio.to_thread(tradingd, config, "restore", str(truncated), "--yes")
    assert failed.returncode == 1, failed.stdout
    assert "the database is unchanged" in failed.stderr
    assert await snapshot(migrated_database_url) == before


async def test_embedded_storage_backfill_backup_restore(
    tmp_path: Path, storage_state_dir: Path
) -> None:
    """Embedded PostgreSQL (started by each command): pgserver's own pg_dump/pg_restore."""
    from datetime import date, timedelta

    from tests.test_backfill_trades import tape
    from tradingd.testing.fake_binance_data import FakeBinanceData

    day = datetime.now(UTC).date() - timedelta(3)
    async with FakeBinanceData() as repository:
        repository.add_trades(tape(day, 1, 100) + tape(day + timedelta(1), 101, 50))
        config = offline_config(
            tmp_path / "tradingd.toml",
            state_dir=storage_state_dir,
            database_url="",
            redis_url="",
            sections={"backfill": {"trades_base_url": repository.base_url}},
        )

        def backfill(first: date) -> subprocess.CompletedProcess[str]:
            return tradingd(
                config, "backfill", "trades", "--exchange", "binance", "--symbol", "BTCUSDT",
                "--from", f"{first}", "--to", f"{first}",
            )  # fmt: skip

        # A fresh state directory: commands other than the daemon refuse an unmigrated database.
        migrated = await asyncio.to_thread(tradingd, config, "migrate")
        assert migrated.returncode == 0, migrated.stderr
        loaded = await asyncio.to_thread(backfill, day)
        assert loaded.returncode == 0, loaded.stderr
        made = await asyncio.to_thread(tradingd, config, "backup")
        assert made.returncode == 0, made.stderr
        assert "public_trades 100" in made.stdout
        (archive,) = (storage_state_dir / "backups").glob("tradingd-*.dump")
        more = await asyncio.to_thread(backfill, day + timedelta(1))
        assert more.returncode == 0 and "trades: 50 read, 50 new" in more.stdout

    restored = await asyncio.to_thread(tradingd, config, "restore", str(archive), "--yes")
    assert restored.returncode == 0, restored.stderr
    assert "public_trades 100" in restored.stdout


def test_a_password_never_reaches_the_client_command_line(tmp_path: Path) -> None:
    from tradingd.backup import _client_connection
    from tradingd.config import parse_config

    config = parse_config(
        {"database": {"url": "postgresql://trader:s%40cret@db.example:5433/tradingd"}}
    )
    url, env = _client_connection(config, config.database.url)
    assert url == "postgresql://trader@db.example:5433/tradingd"
    assert env["PGPASSWORD"] == "s@cret"
