"""Item 12: the daemon's log holds the operator actions taken from another process."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import asyncpg
import redis.asyncio as aioredis
from loguru import logger

from tests.e2e.harness import offline_config, run_cli
from tradingd import observer
from tradingd.observer import StateChangeObserver
from tradingd.state import ExchangeState, set_kill_switch, transition
from tradingd.supervisor import ActorContext

_ELSEWHERE = """
import asyncio, sys
import asyncpg, redis.asyncio as aioredis
from tradingd.state import ExchangeState, set_kill_switch, transition

async def main():
    pool = await asyncpg.create_pool(sys.argv[1], min_size=1, max_size=1)
    rds = aioredis.Redis.from_url(sys.argv[2])
    await transition(pool, rds, "binance", ExchangeState.BOOTSTRAPPING, operator="olga", reason="b")
    await transition(pool, rds, "binance", ExchangeState.LOCKED, operator="olga", reason="done")
    await set_kill_switch(pool, rds, on=True, operator="olga", reason="drill")
    await set_kill_switch(pool, rds, on=False, operator="olga", reason="over")
    await rds.aclose()
    await pool.close()

asyncio.run(main())
"""


async def _observe_until(pool: asyncpg.Pool, marks: observer.Marks, wanted: list[str]) -> list[str]:
    """Run the observer from ``marks`` until every ``wanted`` line was logged."""
    lines: list[str] = []
    all_seen = asyncio.Event()

    def sink(message: object) -> None:
        lines.append(str(message).strip())
        if all(any(w in line for line in lines) for w in wanted):
            all_seen.set()

    handle = logger.add(sink, level="DEBUG", format="{level} {message}")
    actor = StateChangeObserver(pool, 0.05, marks)
    task = asyncio.create_task(actor.run(ActorContext(actor.name, {})))
    try:
        async with asyncio.timeout(10):
            await all_seen.wait()
    finally:
        task.cancel()
        logger.remove(handle)
    return lines


async def test_state_and_kill_switch_changes_made_elsewhere_are_logged(
    pool: asyncpg.Pool, migrated_database_url: str, redis_url: str
) -> None:
    wanted = [
        "INFO observed binance: none -> BOOTSTRAPPING by olga: b",
        "INFO observed binance: BOOTSTRAPPING -> LOCKED by olga: done",
        "WARNING observed kill switch ON by olga: drill",
        "WARNING observed kill switch off by olga: over",
    ]
    marks = await observer.current_marks(pool)
    # Made and undone between two polls, by another process: still logged, from the records.
    done = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        _ELSEWHERE,
        migrated_database_url,
        redis_url,
        stderr=asyncio.subprocess.PIPE,
    )
    _, stderr = await asyncio.wait_for(done.communicate(), 60)
    assert done.returncode == 0, stderr.decode()
    lines = await _observe_until(pool, marks, wanted)
    observed = [line for line in lines if "observed" in line]
    assert observed == wanted  # each once, in order


async def test_changes_made_by_the_daemon_itself_are_logged_once(
    pool: asyncpg.Pool, rds: aioredis.Redis
) -> None:
    lines: list[str] = []
    handle = logger.add(lambda m: lines.append(str(m).strip()), format="{level} {message}")
    marks = await observer.current_marks(pool)
    try:
        await transition(
            pool, rds, "binance", ExchangeState.BOOTSTRAPPING, operator="d", reason="b"
        )
        await set_kill_switch(pool, rds, on=True, operator="d", reason="drill")
    finally:
        logger.remove(handle)
    assert "INFO state none -> BOOTSTRAPPING by d: b" in lines
    assert "WARNING kill switch ON by d: drill" in lines
    # A later change from elsewhere is the observer's signal that it has read past ours.
    later = await pool.fetchval(
        "INSERT INTO system_events (kind, exchange, detail)"
        ' VALUES (\'kill_switch_off\', \'all\', \'{"operator": "olga", "reason": "over"}\')'
        " RETURNING id"
    )
    assert later
    seen = await _observe_until(pool, marks, ["WARNING observed kill switch off by olga: over"])
    assert [line for line in seen if "observed" in line] == [
        "WARNING observed kill switch off by olga: over"
    ]


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
