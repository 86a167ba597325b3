"""Redis lost the shared state under a running daemon (restarted empty: a default Redis keeps
nothing on disk; or flushed).

Meanwhile nothing trades: an exchange without a state in Redis counts as LOCKED
(``state.may_trade``), whatever the executors last saw. Capture goes on: the writers need no
state. This actor notices the loss within ``interval`` seconds by a sentinel key the daemon
writes at start, and rewrites the kill switch (first) and the states from PostgreSQL's record
(``restore_redis_from_record``), then the sentinel; trading resumes where the record says.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterable

import asyncpg
import redis.asyncio as aioredis
from loguru import logger
from redis.exceptions import RedisError

from tradingd.state import restore_redis_from_record
from tradingd.supervisor import ActorContext

SENTINEL_KEY = "system:sentinel"
CHECK_INTERVAL = 1.0


class SharedStateWatch:
    """The supervised actor: sentinel check every ``interval`` s, restore when it is gone."""

    name = "shared-state"

    def __init__(
        self,
        pool: asyncpg.Pool,
        redis: aioredis.Redis,
        exchanges: Iterable[str],
        *,
        interval: float = CHECK_INTERVAL,
        on_lost: Callable[[str, str], None] | None = None,
    ) -> None:
        self._pool = pool
        self._redis = redis
        self._exchanges = list(exchanges)
        self._interval = interval
        self._on_lost = on_lost
        self._placed = False  # the sentinel was seen or written at least once
        self.losses = 0
        # Set after every restore following a loss (tests and the status await it).
        self.restored = asyncio.Event()

    async def check(self) -> bool:
        """One check; True when the sentinel was gone and the state has been restored."""
        if await self._redis.exists(SENTINEL_KEY):
            self._placed = True
            return False
        rewritten = await restore_redis_from_record(self._pool, self._redis, self._exchanges)
        await self._redis.set(SENTINEL_KEY, str(time.time_ns() // 1000))
        lost = self._placed
        self._placed = True
        if not lost:
            return False
        self.losses += 1
        message = (
            "Redis lost the shared state (restarted empty or flushed): every exchange counted as"
            " LOCKED until restored from PostgreSQL's record; restored: "
            + (", ".join(rewritten) or "nothing was recorded")
        )
        logger.critical(message)
        if self._on_lost is not None:
            self._on_lost(f"shared_state_lost:{time.time_ns()}", message)
        self.restored.set()
        return True

    async def run(self, ctx: ActorContext) -> None:
        first = True
        while True:
            try:
                await self.check()
            except (RedisError, OSError, asyncpg.PostgresError) as exc:
                # Redis down: every read fails closed meanwhile; checked again next time.
                ctx.log.warning("shared state not checked: {}", exc)
            if first:
                # Ready once the sentinel is placed: a loss after READY=1 is noticed.
                ctx.ready()
                first = False
            ctx.checkin()
            # A schedule: Redis announces no flush (keyspace events are off by default).
            await asyncio.sleep(self._interval)
