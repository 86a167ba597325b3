"""Schema migrations: ``tradingd/sql/NNNN_description.sql`` files applied in order, once each.

Each file runs in its own transaction together with its row in ``schema_migrations`` (so a
failing file leaves no trace and the ones before it stay applied). A session-level advisory
lock serialises migrators: two processes starting together apply each file once. The checksum
recorded for each file makes an applied file that was edited afterwards an error: changes go
into a new file.
"""

from __future__ import annotations

import contextlib
import hashlib
import re
import time
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass
from importlib.resources import files
from pathlib import Path
from typing import Any

import asyncpg
from loguru import logger

_FILE_NAME = re.compile(r"^(?P<version>\d{4})_(?P<description>[a-z0-9][a-z0-9_]*)\.sql$")

# pg_advisory_lock key: the first 8 bytes of sha256("tradingd.schema_migrations").
MIGRATION_LOCK_KEY = int.from_bytes(
    hashlib.sha256(b"tradingd.schema_migrations").digest()[:8], "big", signed=True
)

_CREATE_TABLE = """
CREATE TABLE IF NOT EXISTS schema_migrations (
    version    integer     PRIMARY KEY,
    name       text        NOT NULL UNIQUE,
    checksum   text        NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now()
)
"""


class MigrationError(Exception):
    """A migration that cannot be applied, or a database that disagrees with the files;
    the message names the file."""


@dataclass(frozen=True, slots=True)
class Migration:
    version: int
    name: str  # the file name, e.g. "0001_core.sql"
    sql: str
    checksum: str  # sha256 of the file's bytes


def default_sql_dir() -> Path:
    return Path(str(files("tradingd") / "sql"))


def load_migrations(sql_dir: Path | None = None) -> list[Migration]:
    """The migration files in ``sql_dir`` (default: the package's), in version order."""
    directory = sql_dir if sql_dir is not None else default_sql_dir()
    migrations: dict[int, Migration] = {}
    for path in sorted(directory.glob("*.sql")):
        match = _FILE_NAME.match(path.name)
        if match is None:
            raise MigrationError(
                f"{path.name}: expected a migration file name like 0001_description.sql "
                "(four digits, lowercase letters, digits and _)"
            )
        raw = path.read_bytes()
        try:
            sql = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise MigrationError(f"{path.name}: not UTF-8 text") from None
        version = int(match["version"])
        if version in migrations:
            raise MigrationError(
                f"{path.name}: version {version:04d} is also used by {migrations[version].name}"
            )
        migrations[version] = Migration(version, path.name, sql, hashlib.sha256(raw).hexdigest())
    return [migrations[version] for version in sorted(migrations)]


async def migrate(conn_or_pool: Any, sql_dir: Path | None = None) -> list[str]:
    """Apply the pending migrations; returns the file names applied by this call."""
    migrations = load_migrations(sql_dir)
    log = logger.bind(SERVICE="postgres")
    async with _connection(conn_or_pool) as connection:
        await connection.execute("SELECT pg_advisory_lock($1)", MIGRATION_LOCK_KEY)
        try:
            await connection.execute(_CREATE_TABLE)
            pending = _pending(migrations, await _applied(connection))
            applied_now: list[str] = []
            for migration in pending:
                started = time.perf_counter()
                try:
                    async with connection.transaction():
                        await connection.execute(migration.sql)
                        await connection.execute(
                            "INSERT INTO schema_migrations (version, name, checksum) "
                            "VALUES ($1, $2, $3)",
                            migration.version,
                            migration.name,
                            migration.checksum,
                        )
                except asyncpg.PostgresError as exc:
                    raise MigrationError(
                        f"{migration.name} failed and was rolled back: {type(exc).__name__}: {exc}"
                    ) from exc
                applied_now.append(migration.name)
                log.info(
                    "applied migration {} in {:.0f} ms",
                    migration.name,
                    (time.perf_counter() - started) * 1000,
                )
            return applied_now
        finally:
            # A broken connection has already dropped the lock (it is session-level).
            with contextlib.suppress(asyncpg.PostgresError, asyncpg.InterfaceError, OSError):
                await connection.execute("SELECT pg_advisory_unlock($1)", MIGRATION_LOCK_KEY)


async def pending_migrations(conn_or_pool: Any, sql_dir: Path | None = None) -> list[str]:
    """The file names ``migrate`` would apply; raises MigrationError like it would."""
    migrations = load_migrations(sql_dir)
    async with _connection(conn_or_pool) as connection:
        exists = await connection.fetchval("SELECT to_regclass('schema_migrations') IS NOT NULL")
        applied = await _applied(connection) if exists else {}
    return [migration.name for migration in _pending(migrations, applied)]


@contextlib.asynccontextmanager
async def _connection(conn_or_pool: Any) -> AsyncIterator[Any]:
    if isinstance(conn_or_pool, asyncpg.Pool):
        async with conn_or_pool.acquire() as connection:
            yield connection
    else:
        yield conn_or_pool


async def _applied(connection: Any) -> dict[int, tuple[str, str]]:
    rows = await connection.fetch("SELECT version, name, checksum FROM schema_migrations")
    return {row["version"]: (row["name"], row["checksum"]) for row in rows}


def _pending(
    migrations: Iterable[Migration], applied: dict[int, tuple[str, str]]
) -> list[Migration]:
    on_disk = {migration.version: migration for migration in migrations}
    for version, (name, checksum) in sorted(applied.items()):
        migration = on_disk.get(version)
        if migration is None:
            raise MigrationError(
                f"{name} is applied in the database but missing from the migration files: "
                "this tradingd is older than the database schema"
            )
        if migration.name != name or migration.checksum != checksum:
            raise MigrationError(
                f"{migration.name} was edited after it was applied (the database recorded "
                f"{name} with checksum {checksum[:12]}, the file now has "
                f"{migration.checksum[:12]}): restore it and put the change in a new migration"
            )
    return [migration for migration in on_disk.values() if migration.version not in applied]
