"""Issue 14 against the real daemon: an unlisted symbol does not stop the others; a stopped
daemon leaves no status behind."""

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
from tradingd.status import STATUS_KEY
from tradingd.testing.fake_binance import FakeBinance


async def test_unlisted_symbol_is_skipped_and_the_others_stream_then_stop_clears_status(
    tmp_path: Path, database_url: str, redis_url: str, binance: FakeBinance
) -> None:
    config = write_config(
        tmp_path / "tradingd.toml",
        state_dir=tmp_path / "state",
        database_url=database_url,
        redis_url=redis_url,
        exchanges={
            "binance": ExchangeEndpoint(
                "binance", binance.ws_url, binance.rest_url, ["BTCUSDT", "NOPEUSDT"]
            )
        },
    )
    redis = aioredis.Redis.from_url(redis_url)
    pool = await asyncpg.create_pool(database_url, min_size=1, max_size=2)
    try:
        async with NotifyListener(tmp_path / "notify.sock") as notify:
            daemon = await DaemonProcess(config, notify, tmp_path / "daemon.log").start()
            await daemon.wait_ready()
            await binance.wait_subscribed("BTCUSDT", "trades")
            binance.publish_trades("BTCUSDT", 20)

            async def stored() -> bool:
                return int(await pool.fetchval("SELECT count(*) FROM public_trades")) == 20

            await eventually(stored, what="20 BTCUSDT trades in PostgreSQL")
            assert "not listed by the venue, skipped: NOPEUSDT" in daemon.output()

            async def published() -> bool:
                return bool(await redis.exists(STATUS_KEY))

            await eventually(published, what="the daemon's status in Redis")
            assert await daemon.stop() == 0, daemon.output()[-3000:]
            assert not await redis.exists(STATUS_KEY)
    finally:
        await pool.close()
        await redis.aclose()
