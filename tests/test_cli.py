"""The operator's commands, run as an operator would: the real CLI against real storage."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import asyncpg
import pytest
import redis.asyncio as aioredis

from tests.e2e.harness import offline_config, run_cli, write_config
from tradingd.state import ExchangeState, may_trade, read_state, transition


@pytest.fixture
def config_path(tmp_path: Path, migrated_database_url: str, redis_url: str) -> Path:
    return offline_config(
        tmp_path / "tradingd.toml",
        state_dir=tmp_path / "state",
        database_url=migrated_database_url,
        redis_url=redis_url,
    )


def tradingd(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return run_cli(config, *args, env={"USER": "olga"})


@pytest.mark.parametrize(
    "command",
    [
        [],
        ["run"],
        ["migrate"],
        ["config", "check"],
        ["status"],
        ["unlock"],
        ["lock"],
        ["kill-switch"],
        ["prune"],
        ["state", "history"],
        ["dlq", "list"],
        ["dlq", "show"],
        ["dlq", "purge"],
    ],
)
def test_every_command_has_help(command: list[str]) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "tradingd", *command, "--help"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert "usage: tradingd" in result.stdout


def test_usage_errors_exit_64() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "tradingd", "frobnicate"], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 64
    assert "invalid choice" in result.stderr


def test_version() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "tradingd", "--version"], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0 and result.stdout.startswith("tradingd ")


async def test_dead_letters_list_show_purge(config_path: Path, pool: asyncpg.Pool) -> None:
    assert "no dead letters" in tradingd(config_path, "dlq", "list").stdout
    await pool.executemany(
        "INSERT INTO dead_letters (received_at, exchange, source, payload, error)"
        " VALUES (now(), $1, $2, $3, $4)",
        [
            ("binance", "ws:btcusdt@trade", b'{"p":"abc"}', "trade price is not a number"),
            ("binance", "ws:btcusdt@trade", b"\xff\x00 not json", "not JSON"),
        ],
    )
    listed = tradingd(config_path, "dlq", "list")
    assert listed.returncode == 0
    assert "trade price is not a number" in listed.stdout and "not JSON" in listed.stdout
    first = await pool.fetchval("SELECT min(id) FROM dead_letters")
    shown = tradingd(config_path, "dlq", "show", str(first))
    assert shown.returncode == 0
    assert '{"p":"abc"}' in shown.stdout and "ws:btcusdt@trade" in shown.stdout
    assert tradingd(config_path, "dlq", "show", "999999").returncode == 1

    refused = tradingd(config_path, "dlq", "purge")  # not a terminal, no --yes
    assert refused.returncode == 64 and "add --yes" in refused.stderr
    assert await pool.fetchval("SELECT count(*) FROM dead_letters") == 2
    purged = tradingd(config_path, "dlq", "purge", "--yes")
    assert purged.returncode == 0 and "deleted 2" in purged.stdout
    assert await pool.fetchval("SELECT count(*) FROM dead_letters") == 0


async def test_lock_and_state_history_record_the_operator(
    config_path: Path, pool: asyncpg.Pool, redis_url: str
) -> None:
    redis = aioredis.Redis.from_url(redis_url)
    try:
        for state in (ExchangeState.BOOTSTRAPPING, ExchangeState.LOCKED, ExchangeState.HEALTHY):
            await transition(pool, redis, "binance", state, operator="setup", reason="test setup")
    finally:
        await redis.aclose()
    assert tradingd(config_path, "lock", "--exchange", "binance").returncode == 64
    locked = tradingd(config_path, "lock", "--exchange", "binance", "--reason", "venue incident")
    assert locked.returncode == 0, locked.stderr
    assert "binance: LOCKED (venue incident)" in locked.stdout
    history = tradingd(config_path, "state", "history", "--exchange", "binance")
    lines = history.stdout.splitlines()
    assert "HEALTHY -> LOCKED" in lines[0] and "by olga: venue incident" in lines[0]
    assert len(lines) == 4

    unknown = tradingd(config_path, "lock", "--exchange", "kraken", "--reason", "x")
    assert unknown.returncode != 0 and "unknown exchange 'kraken'" in unknown.stderr


async def test_kill_switch_stops_trading_everywhere_and_is_recorded(
    config_path: Path, pool: asyncpg.Pool, rds: aioredis.Redis
) -> None:
    for state in (ExchangeState.BOOTSTRAPPING, ExchangeState.LOCKED, ExchangeState.HEALTHY):
        await transition(pool, rds, "binance", state, operator="setup", reason="test setup")
    assert await may_trade(rds, "binance")
    shown = tradingd(config_path, "kill-switch")
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout == "kill switch: off\n"

    assert tradingd(config_path, "kill-switch", "on").returncode == 64  # no reason
    assert await may_trade(rds, "binance")
    on = tradingd(config_path, "kill-switch", "on", "--reason", "venue hacked")
    assert on.returncode == 0, on.stderr
    assert "kill switch: ON since " in on.stdout and "by olga: venue hacked" in on.stdout
    assert not await may_trade(rds, "binance")
    assert await read_state(rds, "binance") is ExchangeState.HEALTHY
    report = json.loads(tradingd(config_path, "status", "--json").stdout)
    assert report["kill_switch"].startswith("ON since ")
    assert "kill switch: ON since" in tradingd(config_path, "status").stdout

    off = tradingd(config_path, "kill-switch", "off", "--reason", "all clear")
    assert off.returncode == 0 and off.stdout == "kill switch: off\n"
    assert await may_trade(rds, "binance")
    events = await pool.fetch(
        "SELECT kind, detail FROM system_events WHERE exchange = 'all' ORDER BY id"
    )
    assert [(e["kind"], json.loads(e["detail"])) for e in events] == [
        ("kill_switch_on", {"operator": "olga", "reason": "venue hacked"}),
        ("kill_switch_off", {"operator": "olga", "reason": "all clear"}),
    ]


async def test_status_and_migrate(config_path: Path) -> None:
    status = tradingd(config_path, "status", "--json")
    assert status.returncode == 0, status.stderr
    report = json.loads(status.stdout)
    assert report["database"] == "ok" and report["redis"] == "ok"
    assert report["daemon"]["running"] is False
    assert report["states"]["binance"]["state"] is None
    assert "never bootstrapped" in report["states"]["binance"]["note"]
    text = tradingd(config_path, "status")
    assert "binance" in text.stdout and "NEW" in text.stdout
    migrated = tradingd(config_path, "migrate")
    assert migrated.returncode == 0 and "up to date" in migrated.stdout


def test_status_with_storage_down_exits_69(tmp_path: Path) -> None:
    config = write_config(
        tmp_path / "tradingd.toml",
        state_dir=tmp_path / "state",
        database_url="postgresql://tradingd@127.0.0.1:9/tradingd",
        redis_url="redis://127.0.0.1:9/0",
        exchanges={},
        sections={"database": {"connect_timeout": 1.0, "connect_backoff_max": 0.2}},
    )
    result = tradingd(config, "status")
    assert result.returncode == 69
    assert "unreachable" in result.stdout
