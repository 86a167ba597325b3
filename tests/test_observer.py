"""Item 12: the daemon's log holds the operator actions taken from another process."""

from __future__ import annotations

import asyncio
from pathlib import Path

import asyncpg
import pytest
import redis.asyncio as aioredis
from loguru import logger

from tests.e2e.harness import offline_config, run_cli
from tradingd import observer
from tradingd.observer import log_state_changes
from tradingd.state import ExchangeState, set_kill_switch, transition


async def test_state_and_kill_switch_changes_made_elsewhere_are_logged(
    pool: asyncpg.Pool, rds: aioredis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    lines: list[str] = []
    wanted = {
        "observed binance: NEW -> LOCKED": asyncio.Event(),
        "observed kill switch: off -> ON by olga: drill": asyncio.Event(),
        "observed kill switch: ON by olga: drill -> off": asyncio.Event(),
    }
    polled = asyncio.Event()

    def sink(message: object) -> None:
        text = str(message)
        lines.append(text)
        for needle, event in wanted.items():
            if needle in text:
                event.set()

    handle = logger.add(sink, level="DEBUG", format="{level} {message}")
    real_observe = observer.observe

    async def observing(redis: aioredis.Redis, exchanges: object) -> dict[str, str]:
        seen = await real_observe(redis, exchanges)
        polled.set()
        return seen

    monkeypatch.setattr(observer, "observe", observing)
    task = asyncio.create_task(log_state_changes(rds, ["binance"], 0.05))
    try:
        async with asyncio.timeout(10):
            await polled.wait()  # the baseline is taken before anything changes
            await transition(
                pool, rds, "binance", ExchangeState.BOOTSTRAPPING, operator="olga", reason="b"
            )
            await transition(
                pool, rds, "binance", ExchangeState.LOCKED, operator="olga", reason="done"
            )
            await wanted["observed binance: NEW -> LOCKED"].wait()
            await set_kill_switch(pool, rds, on=True, operator="olga", reason="drill")
            await wanted["observed kill switch: off -> ON by olga: drill"].wait()
            await set_kill_switch(pool, rds, on=False, operator="olga", reason="over")
            await wanted["observed kill switch: ON by olga: drill -> off"].wait()
    finally:
        task.cancel()
        logger.remove(handle)
    assert any(line.startswith("WARNING observed kill switch") for line in lines)


async def test_state_history_shows_kill_switch_changes(
    tmp_path: Path, migrated_database_url: str, redis_url: str
) -> None:
    path = offline_config(
        tmp_path / "tradingd.toml",
        state_dir=tmp_path / "state",
        database_url=migrated_database_url,
        redis_url=redis_url,
    )
    env = {"USER": "olga"}
    assert run_cli(path, "kill-switch", "on", "--reason", "drill", env=env).returncode == 0
    assert run_cli(path, "kill-switch", "off", "--reason", "over", env=env).returncode == 0
    shown = run_cli(path, "state", "history", env=env)
    assert shown.returncode == 0, shown.stderr
    lines = shown.stdout.splitlines()
    assert "kill switch -> off" in lines[0] and "by olga: over" in lines[0]
    assert "kill switch -> ON" in lines[1] and "by olga: drill" in lines[1]
