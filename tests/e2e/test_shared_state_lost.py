"""Redis flushed under the running daemon: the daemon restores the kill switch and the states
from PostgreSQL's record within seconds, says so, and capture goes on meanwhile."""

from __future__ import annotations

from pathlib import Path

import asyncpg
import redis.asyncio as aioredis

from tests.e2e.harness import (
    DaemonProcess,
    ExchangeEndpoint,
    NotifyListener,
    eventually,
    write_config,
)
from tradingd.shared_state import SENTINEL_KEY
from tradingd.state import (
    KILL_SWITCH_KEY,
    ExchangeState,
    read_kill_switch,
    set_kill_switch,
    state_key,
    transition,
)
from tradingd.testing.fake_binance import FakeBinance


async def test_a_flushed_redis_is_restored_from_the_record_while_capture_goes_on(
    tmp_path: Path, migrated_database_url: str, redis_url: str, binance: FakeBinance
) -> None:
    pool = await asyncpg.create_pool(migrated_database_url, min_size=1, max_size=2)
    redis = aioredis.Redis.from_url(redis_url)
    try:
        for state in (ExchangeState.BOOTSTRAPPING, ExchangeState.LOCKED):
            await transition(pool, redis, "binance", state, operator="test", reason="setup")
        await set_kill_switch(pool, redis, on=True, operator="olga", reason="drill")
        config = write_config(
            tmp_path / "tradingd.toml",
            state_dir=tmp_path / "state",
            database_url=migrated_database_url,
            redis_url=redis_url,
            exchanges={
                "binance": ExchangeEndpoint(
                    "binance", binance.ws_url, binance.rest_url, ["BTCUSDT"]
                )
            },
        )
        async with NotifyListener(tmp_path / "notify.sock") as notify:
            daemon = await DaemonProcess(config, notify, tmp_path / "daemon.log").start()
            try:
                await daemon.wait_ready()
                await binance.wait_subscribed("BTCUSDT", "trades")

                async def sentinel() -> bool:
                    return bool(await redis.exists(SENTINEL_KEY))

                await eventually(sentinel, 30, "the daemon's sentinel key")
                await redis.flushdb()
                binance.publish_trades("BTCUSDT", 50)

                async def restored() -> bool:
                    return await redis.get(state_key("binance")) == b"LOCKED" and bool(
                        await redis.exists(KILL_SWITCH_KEY)
                    )

                await eventually(restored, 10, "the state and kill switch restored")
                switch = await read_kill_switch(redis)
                assert switch is not None and switch.reason == "drill"

                async def captured() -> bool:
                    count = await pool.fetchval("SELECT count(*) FROM public_trades")
                    return int(count) >= 50

                await eventually(captured, 30, "the trades published after the flush stored")

                async def said_so() -> bool:
                    return "Redis lost the shared state" in daemon.output()

                await eventually(said_so, 10, "the loss logged")
                assert await redis.exists(SENTINEL_KEY)
            finally:
                assert await daemon.stop() == 0, daemon.output()[-3000:]
    finally:
        await redis.aclose()
        await pool.close()
