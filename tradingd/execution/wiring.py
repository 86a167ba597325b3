"""How the daemon builds the execution side: per exchange a market-data feed, the venue client
(the paper venue in paper mode), the executor with its strategies, and the control server that
the CLI's order commands reach.

The strategy host and the control server live in ``tradingd.execution.strategy_host`` and
``tradingd.execution.control``; they are looked up when the daemon starts, so that the executor
runs (manual orders, kill switch) even in a build without them.
"""

from __future__ import annotations

import importlib
import importlib.util
import time
from collections.abc import Callable, Mapping
from typing import Any

import asyncpg
import redis.asyncio as aioredis
from loguru import logger

from tradingd.config import Config
from tradingd.execution.executor import Executor, StrategyHostLike
from tradingd.execution.ledger import Ledger
from tradingd.execution.paper import PaperVenue
from tradingd.execution.risk import InstrumentInfo
from tradingd.model import MarketEvent
from tradingd.queues import BoundedQueue, OverflowPolicy

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
) -> Executor | None:
    """The exchange's executor, or None (logged) when its mode has no execution client yet."""
    mode = config.mode_of(exchange)
    if mode != "paper":
        logger.bind(EXCHANGE=exchange).error(
            "mode {!r}: no live execution client exists yet; {} will not trade", mode, exchange
        )
        return None
    every = frozenset(config.exchanges[exchange].symbols)

    def gapped() -> frozenset[str]:
        known = open_gaps()
        return every if known is None else known

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
    )
    host = _strategy_host(config, exchange, executor)
    if host is not None:
        executor.attach_host(host)
    return executor


def control_server(desks: Mapping[str, Executor], redis: aioredis.Redis) -> Any | None:
    """The control channel's server actor, when this build has one."""
    module = _optional("tradingd.execution.control")
    if module is None:
        logger.warning("no control channel in this build: order commands cannot reach it")
        return None
    return module.ControlServer(desks, redis)


def _strategy_host(config: Config, exchange: str, executor: Executor) -> StrategyHostLike | None:
    module = _optional("tradingd.execution.strategy_host")
    if module is None:
        return None
    host: StrategyHostLike = module.StrategyHost.build(
        config,
        exchange,
        lambda entry: executor.context_for(entry.name, entry.symbols),
        executor.record_pause,
    )
    return host


def _optional(name: str) -> Any | None:
    if importlib.util.find_spec(name) is None:
        return None
    return importlib.import_module(name)


def _wall_clock_us() -> int:
    return time.time_ns() // 1000
