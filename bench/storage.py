"""The benchmark's own PostgreSQL and Redis: the daemon's embedded servers, in a temp directory.

Durable (fsync on), as a production install runs them. Migrated once; ``reset()`` empties the
market-data tables between runs so that every run starts from the same state.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from types import TracebackType

import asyncpg
import redis.asyncio as aioredis

from tradingd.storage.embedded import EmbeddedStorage
from tradingd.storage.migrations import migrate

_MARKET_DATA_TABLES = (
    "public_trades",
    "ohlc",
    "tickers",
    "dead_letters",
    "data_gaps",
    "system_events",
)


def scratch_dir(prefix: str) -> Path:
    """A fresh directory under the system temp dir. As root, the embedded servers run as an
    unprivileged user who must be able to reach it, which the system temp dir allows."""
    return Path(tempfile.mkdtemp(prefix=f"tradingd-bench-{prefix}-"))


class BenchStorage:
    """``async with BenchStorage() as storage``: embedded servers, a pool, a Redis client."""

    def __init__(self, state_dir: Path | None = None) -> None:
        self._owns_dir = state_dir is None
        self.state_dir = state_dir or scratch_dir("storage")
        self.embedded = EmbeddedStorage(self.state_dir, durable=True)
        self.database_url = ""
        self.redis_url = ""
        self._pool: asyncpg.Pool | None = None
        self._redis: aioredis.Redis | None = None

    @property
    def pool(self) -> asyncpg.Pool:
        assert self._pool is not None, "storage not started"
        return self._pool

    @property
    def redis(self) -> aioredis.Redis:
        assert self._redis is not None, "storage not started"
        return self._redis

    async def __aenter__(self) -> BenchStorage:
        self.database_url, self.redis_url = await self.embedded.start()
        try:
            self._pool = await asyncpg.create_pool(self.database_url, min_size=1, max_size=6)
            self._redis = aioredis.Redis.from_url(self.redis_url)
            await migrate(self.pool)
        except BaseException:
            await self._close()
            raise
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self._close()

    async def _close(self) -> None:
        try:
            if self._pool is not None:
                await self._pool.close()
            if self._redis is not None:
                await self._redis.aclose()
        finally:
            await self.embedded.stop()
            if self._owns_dir:
                shutil.rmtree(self.state_dir, ignore_errors=True)

    async def reset(self) -> None:
        """Empty the market-data tables (partitions included) and the Redis database."""
        await self.pool.execute(f"TRUNCATE {', '.join(_MARKET_DATA_TABLES)}")
        await self.redis.flushdb()

    async def trade_rows(self) -> int:
        count: int = await self.pool.fetchval("SELECT count(*) FROM public_trades")
        return count

    def postgres_pid(self) -> int | None:
        return self.embedded.postgres_pid
