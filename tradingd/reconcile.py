"""What the daemon does with each exchange's state when it starts, and reconciliation.

- never bootstrapped: not traded; the log says to run ``tradingd --bootstrap`` (market data
  capture still runs);
- HEALTHY: goes RECONCILING, and back to HEALTHY only when reconciliation passes (the clock is
  verified, instruments are fresh, market data flows); otherwise LOCKED with the reason;
- LOCKED, BOOTSTRAPPING, AUDITING: left as they are, and said so.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Protocol

import asyncpg
from loguru import logger
from redis.exceptions import RedisError

from tradingd.adapters.base import ExchangeAdapter
from tradingd.clock import ClockCheck
from tradingd.config import Config
from tradingd.state import (
    ExchangeState,
    IllegalTransition,
    StateUnavailable,
    read_state,
    restore_redis_from_record,
    transition,
)
from tradingd.storage import Storage
from tradingd.supervisor import ActorContext

DAEMON_OPERATOR = "tradingd"
# Instruments synchronised longer ago than this are stale: run the bootstrap again.
INSTRUMENTS_FRESH_FOR = "7 days"
RECONCILE_TIMEOUT = 120.0


class MarketDataFlow(Protocol):
    """What reconciliation needs to know of the receivers: does market data flow."""

    def flowing(self, exchange: str) -> bool:
        """Fresh trades (or tickers) on every connection of ``exchange`` right now."""
        ...

    async def wait_flowing(self, exchange: str) -> None:
        """Return once ``flowing(exchange)`` holds."""
        ...


class StartupStates:
    def __init__(
        self,
        config: Config,
        storage: Storage,
        adapters: Mapping[str, ExchangeAdapter],
        clock: ClockCheck,
    ) -> None:
        self._config = config
        self._storage = storage
        self._adapters = adapters
        self._clock = clock
        self._cache: dict[str, tuple[str | None, str]] = {}
        self.reconciling: list[str] = []

    def cached(self, exchange: str) -> tuple[str | None, str]:
        return self._cache.get(exchange, (None, "unknown"))

    async def restore_redis(self) -> None:
        """Redis's copy of the states and kill switch, rewritten from PostgreSQL where it
        lacks or disagrees."""
        await restore_redis_from_record(self._storage.pool, self._storage.redis, self._adapters)

    async def refresh(self) -> None:
        await self.restore_redis()
        for name in self._adapters:
            try:
                state = await read_state(self._storage.redis, name)
            except StateUnavailable as exc:
                self._cache[name] = (None, f"state unavailable: {exc}")
                continue
            previous = self._cache.get(name, (None, ""))
            if state is not None and state.value != previous[0]:
                self._cache[name] = (state.value, "")

    async def on_start(self) -> None:
        try:
            await self.restore_redis()
        except (RedisError, OSError, asyncpg.PostgresError) as exc:
            # Reads below fail closed; the reconciler retries the restore while running.
            logger.error("cannot restore the Redis state from PostgreSQL: {}", exc)
        for name in self._adapters:
            log = logger.bind(EXCHANGE=name)
            try:
                state = await read_state(self._storage.redis, name)
            except StateUnavailable as exc:
                self._cache[name] = (None, str(exc))
                log.error("cannot read the state of {} ({}); it will not trade", name, exc)
                continue
            if state is None:
                reason = "never bootstrapped: run `tradingd --bootstrap`"
                self._cache[name] = (None, reason)
                log.warning(
                    "{} was never bootstrapped and will not trade; run `tradingd --bootstrap`, "
                    "verify, then `tradingd unlock` (market data is captured meanwhile)",
                    name,
                )
            elif state is ExchangeState.HEALTHY:
                await transition(
                    self._storage.pool,
                    self._storage.redis,
                    name,
                    ExchangeState.RECONCILING,
                    operator=DAEMON_OPERATOR,
                    reason="daemon start: reconciling before trading",
                    only_from=frozenset({ExchangeState.HEALTHY}),
                )
                self._cache[name] = (ExchangeState.RECONCILING.value, "reconciling")
                self.reconciling.append(name)
            else:
                hint = {
                    ExchangeState.LOCKED: "locked; verify the data and run `tradingd unlock`",
                    ExchangeState.BOOTSTRAPPING: "bootstrap unfinished; run `tradingd --bootstrap`",
                    ExchangeState.AUDITING: "under audit",
                    ExchangeState.RECONCILING: "was reconciling when stopped; locking",
                }[state]
                if state is ExchangeState.RECONCILING:
                    await self._lock(name, "daemon restarted during reconciliation")
                    continue
                self._cache[name] = (state.value, hint)
                log.info("{} is {}: {}", name, state.value, hint)

    async def reconciliation_failures(self, name: str, flow: MarketDataFlow) -> list[str]:
        failures = []
        if not self._clock.verified.is_set():
            failures.append(self._clock.unverified_reason)
        fresh = await self._storage.pool.fetchval(
            "SELECT count(*) FROM instruments WHERE exchange = $1 AND is_active"
            f" AND updated_at > now() - interval '{INSTRUMENTS_FRESH_FOR}'",
            name,
        )
        if not fresh:
            failures.append(f"no active instruments synchronised within {INSTRUMENTS_FRESH_FOR}")
        if not flow.flowing(name):
            failures.append("market data is not flowing on every connection")
        return failures

    async def _reconcile_one(self, name: str, flow: MarketDataFlow) -> None:
        try:
            async with asyncio.timeout(RECONCILE_TIMEOUT):
                await asyncio.gather(flow.wait_flowing(name), self._clock.verified.wait())
        except TimeoutError:
            pass
        failures = await self.reconciliation_failures(name, flow)
        if failures:
            await self._lock(name, "reconciliation failed: " + "; ".join(failures))
            return
        try:
            await transition(
                self._storage.pool,
                self._storage.redis,
                name,
                ExchangeState.HEALTHY,
                operator=DAEMON_OPERATOR,
                reason="reconciliation passed: clock verified, instruments fresh, data flowing",
                only_from=frozenset({ExchangeState.RECONCILING}),
            )
        except IllegalTransition as exc:
            # The executor's account reconciliation locked it or put it under audit meanwhile.
            logger.bind(EXCHANGE=name).warning("{} not made HEALTHY: {}", name, exc)
            return
        self._cache[name] = (ExchangeState.HEALTHY.value, "reconciled")

    async def _reconcile_and_forget(self, name: str, flow: MarketDataFlow) -> None:
        await self._reconcile_one(name, flow)
        # Done: a restarted reconciler does not take it up again.
        self.reconciling.remove(name)

    async def run_reconciliation(self, flow: MarketDataFlow) -> None:
        if self.reconciling:
            await asyncio.gather(
                *(self._reconcile_and_forget(n, flow) for n in list(self.reconciling))
            )
        # Keep the cached view (STATUS=, `tradingd status`) in step with operators' commands.
        while True:
            await asyncio.sleep(self._config.daemon.status_interval)
            await self.refresh()

    async def _lock(self, name: str, reason: str) -> None:
        try:
            await transition(
                self._storage.pool,
                self._storage.redis,
                name,
                ExchangeState.LOCKED,
                operator=DAEMON_OPERATOR,
                reason=reason,
            )
        except IllegalTransition as exc:
            logger.bind(EXCHANGE=name).info("not locking {}: {}", name, exc)
            return
        self._cache[name] = (ExchangeState.LOCKED.value, reason)
        logger.bind(EXCHANGE=name, STATE="LOCKED").warning("{} locked: {}", name, reason)

    async def lock_all(self, reason: str) -> None:
        for name in self._adapters:
            try:
                state = await read_state(self._storage.redis, name)
            except StateUnavailable:
                continue
            if state in (ExchangeState.HEALTHY, ExchangeState.RECONCILING):
                await self._lock(name, reason)


class Reconciler:
    """Startup reconciliation, then the cached state view, as a supervised actor: a PostgreSQL
    or Redis error restarts it (it takes up the exchanges not yet reconciled)."""

    name = "reconciler"

    def __init__(self, states: StartupStates, flow: MarketDataFlow) -> None:
        self._states = states
        self._flow = flow

    async def run(self, ctx: ActorContext) -> None:
        ctx.ready()
        await self._states.run_reconciliation(self._flow)
