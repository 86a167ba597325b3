"""How the daemon builds the execution side: per exchange a market-data feed, the venue client
(the paper venue in paper mode; in live mode the adapter package's ``execution_client``, found
through the adapter registry, with the keys read from their secret files), the executor with its
strategies, and the control server that the CLI's order commands reach.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path

import aiohttp
import asyncpg
import redis.asyncio as aioredis

from tradingd.adapters.registry import execution_client_factory
from tradingd.config import Config, ConfigError
from tradingd.execution.auditing import Auditor
from tradingd.execution.breaker import Breaker
from tradingd.execution.control import ControlServer, SubscriptionControl
from tradingd.execution.executor import Executor
from tradingd.execution.ledger import Ledger
from tradingd.execution.paper import PaperVenue
from tradingd.execution.risk import InstrumentInfo
from tradingd.execution.strategy_host import StrategyHost
from tradingd.execution.venue import ExecutionClient
from tradingd.model import MarketEvent
from tradingd.queues import BoundedQueue, OverflowPolicy
from tradingd.secrets import SecretError, secret_store
from tradingd.state import ExchangeState, transition

# Market events waiting for one executor. When it falls behind the oldest are dropped (the
# receivers never wait for it); its freshness check then denies orders on stale data.
FEED_CAPACITY = 100_000


def market_feed(exchange: str) -> BoundedQueue[MarketEvent]:
    return BoundedQueue(f"execution:{exchange}", FEED_CAPACITY, OverflowPolicy.DROP_OLDEST)


def build_executor(
    config: Config,
    exchange: str,
    *,
    pool: asyncpg.Pool,
    redis: aioredis.Redis,
    instruments: Mapping[str, InstrumentInfo],
    feed: BoundedQueue[MarketEvent],
    open_gaps: Callable[[], frozenset[str] | None],
    http: aiohttp.ClientSession,
    config_path: Path | str,
) -> Executor:
    """The exchange's executor, on the paper venue or (live) on the venue's own account."""
    mode = config.mode_of(exchange)
    every = frozenset(config.exchanges[exchange].symbols)

    def gapped() -> frozenset[str]:
        known = open_gaps()
        return every if known is None else known

    venue: ExecutionClient
    if mode == "live":
        venue = live_client(config, exchange, http, config_path)
    else:
        venue = PaperVenue(exchange, pool, config.paper, instruments, _wall_clock_us)
    executor = Executor(
        exchange,
        mode=mode,
        ledger=Ledger(pool),
        venue=venue,
        redis=redis,
        limits=config.risk,
        instruments=instruments,
        market=feed,
        open_gaps=gapped,
        taker_fee=config.paper.taker_fee,
        lock_exchange=exchange_locker(pool, redis, exchange),
        breaker=Breaker(pool, exchange, config.risk),
    )
    executor.audit = Auditor(
        executor,
        pool=pool,
        redis=redis,
        venue=venue,
        instruments=instruments,
        interval_s=config.risk.reconcile_interval,
        clock_us=_wall_clock_us,
    )
    executor.attach_host(
        StrategyHost.build(
            config,
            exchange,
            lambda entry: executor.context_for(entry.name, entry.symbols),
            executor.record_pause,
        )
    )
    return executor


def live_client(
    config: Config, exchange: str, http: aiohttp.ClientSession, config_path: Path | str
) -> ExecutionClient:
    """The venue's execution client for ``exchange``'s account (nothing connects yet)."""
    factory = execution_client_factory(config, exchange, config_path)
    section = config.exchanges[exchange]
    store = secret_store(config)
    keys: dict[str, str] = {}
    for key in ("api_key_secret", "api_secret_secret"):
        try:
            keys[key] = store.load(getattr(section, key)).reveal()
        except SecretError as exc:
            raise ConfigError(
                config_path,
                f"exchanges.{exchange}.{key}",
                f"expected a private, non-empty secret file, found {exc}",
            ) from None
    try:
        return factory(
            section,
            exchange=exchange,
            http=http,
            api_key=keys["api_key_secret"],
            api_secret=keys["api_secret_secret"],
        )
    except ValueError as exc:
        # The files' contents refused (an Ed25519 secret that is no such key).
        raise ConfigError(
            config_path, f"exchanges.{exchange}.api_secret_secret", f"expected {exc}"
        ) from None


def exchange_locker(
    pool: asyncpg.Pool, redis: aioredis.Redis, exchange: str
) -> Callable[[str], Awaitable[None]]:
    """Records LOCKED for ``exchange`` with the executor's reason (already LOCKED: recorded
    again, so the reason is in the history)."""

    async def lock(reason: str) -> None:
        await transition(
            pool, redis, exchange, ExchangeState.LOCKED, operator="executor", reason=reason
        )

    return lock


def control_server(
    desks: Mapping[str, Executor],
    redis: aioredis.Redis,
    subscriptions: SubscriptionControl | None = None,
) -> ControlServer:
    """The control channel's server actor: the CLI's order commands reach the executors here
    (and its subscription changes the receivers)."""
    return ControlServer(desks, redis, subscriptions)


def _wall_clock_us() -> int:
    return time.time_ns() // 1000
