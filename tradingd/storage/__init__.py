"""Storage: PostgreSQL (asyncpg pool) and Redis, external or embedded, plus the migrator.

``open_storage(config)`` is the one way the daemon and the CLI commands get at storage: it starts
the embedded servers for whichever URL is empty, connects with retry, and returns a ``Storage``
whose ``close()`` undoes all of it. It does not migrate: the daemon and ``tradingd migrate`` call
``migrate(storage.pool)``.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass
from types import TracebackType

import asyncpg
import redis.asyncio as aioredis
from loguru import logger

from tradingd.config import Config
from tradingd.secrets import SecretStore, secret_store
from tradingd.storage.connect import (
    OnWait,
    StorageError,
    StorageRejected,
    StorageUnavailable,
    connect_postgres,
    connect_redis,
)
from tradingd.storage.embedded import EmbeddedStorage, EmbeddedStorageError
from tradingd.storage.migrations import MigrationError, migrate, pending_migrations

__all__ = [
    "EmbeddedStorage",
    "EmbeddedStorageError",
    "MigrationError",
    "OnWait",
    "Storage",
    "StorageError",
    "StorageRejected",
    "StorageUnavailable",
    "connect_postgres",
    "connect_redis",
    "migrate",
    "open_storage",
    "pending_migrations",
]

_POOL_CLOSE_TIMEOUT = 10.0


@dataclass(eq=False)
class Storage:
    """The open connections, and the embedded servers behind them if any."""

    pool: asyncpg.Pool
    redis: aioredis.Redis
    database_url: str  # as configured: show it only through tradingd.config.redact_url
    redis_url: str
    embedded: EmbeddedStorage | None = None

    async def close(self) -> None:
        """Close the pool and the client, then stop the embedded servers."""
        try:
            try:
                async with asyncio.timeout(_POOL_CLOSE_TIMEOUT):
                    await self.pool.close()
            except TimeoutError:
                logger.warning(
                    "connections still busy after {} s: terminating them", _POOL_CLOSE_TIMEOUT
                )
                self.pool.terminate()
            await self.redis.aclose()
        finally:
            if self.embedded is not None:
                await self.embedded.stop()

    async def __aenter__(self) -> Storage:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.close()


async def open_storage(
    config: Config,
    *,
    on_wait: OnWait | None = None,
    secrets: SecretStore | None = None,
    attach: bool = False,
    connect_timeout: float | None = None,
    server_cpus: frozenset[int] | None = None,
) -> Storage:
    """Connect to the configured servers, starting embedded ones for empty URLs.

    ``attach``: when a running daemon owns the embedded servers, use them (one-shot CLI
    commands) instead of failing (the daemon: two daemons must not share a state directory).
    Raises ``StorageUnavailable`` (a server stayed down past its ``connect_timeout``, or the
    embedded servers failed to start) or
    ``StorageRejected`` (credentials, missing database).
    ``connect_timeout`` replaces both configured ones (operator commands wait briefly).
    ``server_cpus``: where embedded servers started here run (``tradingd.cpus``).
    """
    if secrets is None:
        secrets = secret_store(config)
    database, redis_config = config.database, config.redis
    database_password = redis_password = None
    if database.url:
        secret = secrets.load_optional(database.password_secret)
        database_password = secret.reveal() if secret else None
    if redis_config.url:
        secret = secrets.load_optional(redis_config.password_secret)
        redis_password = secret.reveal() if secret else None
    async with contextlib.AsyncExitStack() as cleanup:
        embedded: EmbeddedStorage | None = None
        database_url, redis_url = database.url, redis_config.url
        if not database_url or not redis_url:
            embedded = EmbeddedStorage(config.state_path(), attach=attach, cpus=server_cpus)
            cleanup.push_async_callback(embedded.stop)
            if not database_url and not redis_url:
                database_url, redis_url = await embedded.start()
            elif not database_url:
                database_url = await embedded.start_postgres()
            else:
                redis_url = await embedded.start_redis()
        pool = await connect_postgres(
            database_url,
            password=database_password,
            pool_size=database.pool_size,
            backoff_max=database.connect_backoff_max,
            timeout=database.connect_timeout if connect_timeout is None else connect_timeout,
            on_wait=on_wait,
        )
        cleanup.push_async_callback(pool.close)
        redis = await connect_redis(
            redis_url,
            password=redis_password,
            backoff_max=redis_config.connect_backoff_max,
            timeout=redis_config.connect_timeout if connect_timeout is None else connect_timeout,
            on_wait=on_wait,
        )
        cleanup.pop_all()
    return Storage(pool, redis, database_url, redis_url, embedded)
