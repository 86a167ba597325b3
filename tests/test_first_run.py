"""Issue 14: the first minutes of an operator, run as the operator would (the real CLI)."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from tests.e2e.harness import offline_config, run_cli
from tradingd.status import STATUS_KEY, DaemonStatus, ExchangeStatus, encode_status

MINIMAL = """
[exchanges.binance]
ws_url = "ws://127.0.0.1:9"
rest_url = "http://127.0.0.1:9"
symbols = ["BTCUSDT"]
"""


def config_check(path: Path, *, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "tradingd", "config", "check", "--config", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=cwd,
        env={"PATH": "/usr/bin:/bin", "HOME": str(path.parent)},
    )


def one_error_line(result: subprocess.CompletedProcess[str], path: Path, key: str) -> str:
    assert result.returncode == 78, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"tradingd: configuration error: {path}: {key}: expected ")
    assert ", found " in lines[0]
    return lines[0]


# -- item 5: each adapter checks its symbols' syntax where they are configured ---------------


@pytest.mark.parametrize(
    ("section", "symbols", "key"),
    [
        ("binance", '["BTCUSDT", "ETH/USDT"]', "exchanges.binance.symbols[1]"),
        ("binance", '["btcusdt"]', "exchanges.binance.symbols[0]"),
        ("deribit", '["BTC-PERPETUAL", "eth-perpetual"]', "exchanges.deribit.symbols[1]"),
    ],
)
def test_malformed_symbol_is_refused_at_config_time(
    tmp_path: Path, section: str, symbols: str, key: str
) -> None:
    path = tmp_path / "tradingd.toml"
    text = MINIMAL.replace("binance", section).replace('["BTCUSDT"]', symbols)
    path.write_text(text)
    line = one_error_line(config_check(path), path, key)
    assert "symbol like" in line


def test_valid_deribit_names_pass(tmp_path: Path) -> None:
    path = tmp_path / "tradingd.toml"
    names = '["BTC-PERPETUAL", "BTC_USDC-PERPETUAL", "BTC-27DEC26-100000-C", "ETH_USDC"]'
    path.write_text(MINIMAL.replace("binance", "deribit").replace('["BTCUSDT"]', names))
    result = config_check(path)
    assert result.returncode == 0, result.stderr


# -- item 6: every configured secret file, in config check ----------------------------------


@pytest.mark.parametrize("mode", [0o644, None])
def test_exchange_key_file_is_checked(tmp_path: Path, mode: int | None) -> None:
    secrets = tmp_path / "secrets"
    secrets.mkdir()
    if mode is not None:
        (secrets / "binance_key").write_text("k")
        os.chmod(secrets / "binance_key", mode)
    path = tmp_path / "tradingd.toml"
    path.write_text(
        f'[daemon]\nsecrets_dir = "{secrets}"\n' + MINIMAL + 'api_key_secret = "binance_key"\n'
    )
    line = one_error_line(config_check(path), path, "exchanges.binance.api_key_secret")
    assert ("chmod 600" in line) if mode else ("does not exist" in line)
    os.chmod(secrets / "binance_key", 0o600) if mode else None


def test_private_key_file_passes(tmp_path: Path) -> None:
    (tmp_path / "secrets").mkdir()
    (tmp_path / "secrets" / "binance_key").write_text("k")
    os.chmod(tmp_path / "secrets" / "binance_key", 0o600)
    path = tmp_path / "tradingd.toml"
    path.write_text(
        '[daemon]\nsecrets_dir = "secrets"\n' + MINIMAL + 'api_key_secret = "binance_key"\n'
    )
    result = config_check(path, cwd=Path("/"))  # secrets_dir is relative to the file
    assert result.returncode == 0, result.stderr


# -- item 7: the state directory does not depend on the working directory ------------------


def test_state_dir_is_relative_to_the_config_file(tmp_path: Path) -> None:
    (tmp_path / "etc").mkdir()
    path = tmp_path / "etc" / "tradingd.toml"
    path.write_text('[daemon]\nstate_dir = "state"\n' + MINIMAL)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    result = config_check(path, cwd=elsewhere)
    assert result.returncode == 0, result.stderr
    assert (
        f"# state directory: {tmp_path / 'etc' / 'state'} (from daemon.state_dir" in result.stderr
    )
    assert json.loads(result.stdout)["daemon"]["state_dir"] == str(tmp_path / "etc" / "state")
    assert list(elsewhere.iterdir()) == []


def test_empty_state_dir_is_a_fixed_default(tmp_path: Path) -> None:
    path = tmp_path / "tradingd.toml"
    path.write_text(MINIMAL)
    result = config_check(path, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    expected = "/var/lib/tradingd" if os.geteuid() == 0 else f"{tmp_path}/.local/state/tradingd"
    assert f"# state directory: {expected} (from the default for" in result.stderr


async def test_command_on_an_unmigrated_database_says_so_in_one_line(
    tmp_path: Path, database_url: str, redis_url: str
) -> None:
    path = offline_config(
        tmp_path / "tradingd.toml",
        state_dir=tmp_path / "state",
        database_url=database_url,
        redis_url=redis_url,
    )
    result = run_cli(path, "state", "history")
    assert result.returncode == 69
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "not migrated" in lines[0] and "tradingd migrate" in lines[0]


# -- item 8: CLI shape ------------------------------------------------------------------------


def test_config_is_accepted_after_the_subcommand(tmp_path: Path) -> None:
    path = tmp_path / "tradingd.toml"
    path.write_text("[daemon]\nstop_timeout = -1\n")
    for argv in (["status", "--config", str(path)], ["state", "history", "--config", str(path)]):
        result = subprocess.run(
            [sys.executable, "-m", "tradingd", *argv], capture_output=True, text=True, timeout=60
        )
        assert result.returncode == 78, result.stderr  # it read that file
        assert str(path) in result.stderr


def test_bootstrap_subcommand_exists() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "tradingd", "bootstrap", "--help"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0 and "LOCKED" in result.stdout


# -- item 9 and 11: one format; unknown adapters and live mode refused ----------------------


def test_unknown_venue_is_the_first_thing_said(tmp_path: Path) -> None:
    path = tmp_path / "tradingd.toml"
    path.write_text('[exchanges.kraken]\nsymbols = ["XBTUSD"]\n')
    line = one_error_line(config_check(path), path, "exchanges.kraken")
    assert "installed exchange adapter (binance, deribit), found 'kraken'" in line


def test_live_mode_needs_both_key_files(tmp_path: Path) -> None:
    path = tmp_path / "tradingd.toml"
    path.write_text('[daemon]\nmode = "live"\n' + MINIMAL)
    line = one_error_line(config_check(path), path, "exchanges.binance.api_key_secret")
    assert "live mode signs with the venue's API key" in line


def test_config_check_validates_a_live_config_and_its_key_files(tmp_path: Path) -> None:
    secrets = tmp_path / "secrets"
    secrets.mkdir()
    path = tmp_path / "tradingd.toml"
    path.write_text(
        f'[daemon]\nmode = "live"\nsecrets_dir = "{secrets}"\n'
        + MINIMAL
        + 'api_key_secret = "binance-key"\napi_secret_secret = "binance-secret"\n'
        + 'ws_api_url = "wss://ws-api.testnet.binance.vision/ws-api/v3"\n'
    )
    (secrets / "binance-key").write_text("key\n")
    (secrets / "binance-key").chmod(0o600)
    line = one_error_line(config_check(path), path, "exchanges.binance.api_secret_secret")
    assert "binance-secret does not exist" in line
    (secrets / "binance-secret").write_text("secret\n")
    (secrets / "binance-secret").chmod(0o644)
    line = one_error_line(config_check(path), path, "exchanges.binance.api_secret_secret")
    assert "chmod 600" in line
    (secrets / "binance-secret").chmod(0o600)
    result = config_check(path)
    assert result.returncode == 0, result.stderr
    shown = json.loads(result.stdout)
    assert shown["daemon"]["mode"] == "live"
    assert shown["exchanges"]["binance"]["ws_api_url"].startswith("wss://ws-api.testnet")
    assert "secret\n" not in result.stdout and '"key"' not in result.stdout


# -- items 2, 3, 4: status that says what it knows ------------------------------------------


async def test_status_with_postgres_down_is_quick_and_honest(
    tmp_path: Path, redis_url: str
) -> None:
    path = offline_config(
        tmp_path / "tradingd.toml",
        state_dir=tmp_path / "state",
        database_url="postgresql://nobody@127.0.0.1:9/none",
        redis_url=redis_url,
    )
    started = time.monotonic()
    result = run_cli(path, "status")
    assert time.monotonic() - started < 30
    assert result.returncode == 69, result.stderr
    assert "database unreachable: PostgreSQL at" in result.stdout
    assert "redis ok" in result.stdout
    assert "open gaps: unknown" in result.stdout
    assert "dead letters: unknown" in result.stdout
    assert "daemon:   not running" in result.stdout
    waits = [line for line in result.stderr.splitlines() if "waiting for PostgreSQL" in line]
    assert len(waits) == len(set(waits))  # each retry once


def _snapshot(pid: int) -> DaemonStatus:
    now = time.time_ns() // 1000
    exchange = ExchangeStatus(
        name="binance",
        state=None,
        state_reason="",
        connections=1,
        connected=0,
        trades=0,
        dead_letters=0,
        gaps_open=0,
        seconds_since_frame=-1.0,
        last_error="OSError: connect call failed ('127.0.0.1', 9)",
        repair={
            "detected": 2,
            "repaired": 1,
            "unfillable": 0,
            "p50_latency_s": 0.5,
            "p99_latency_s": 0.9,
        },
    )
    return DaemonStatus(
        pid=pid,
        version="x",
        started_at_us=now,
        updated_at_us=now,
        mode="paper",
        exchanges=[exchange],
        actors=[],
        queues=[],
        persister={},
        clock={},
    )


@pytest.fixture
def status_config(tmp_path: Path, migrated_database_url: str, redis_url: str) -> Path:
    return offline_config(
        tmp_path / "tradingd.toml",
        state_dir=tmp_path / "state",
        database_url=migrated_database_url,
        redis_url=redis_url,
    )


async def test_status_of_a_dead_daemon_is_not_running(
    status_config: Path, rds: aioredis.Redis
) -> None:
    child = await asyncio.create_subprocess_exec("true")
    await child.wait()
    await rds.set(STATUS_KEY, encode_status(_snapshot(child.pid)))
    result = run_cli(status_config, "status")
    assert result.returncode == 0, result.stderr
    assert f"daemon:   not running (pid {child.pid} of its last status no longer runs)" in (
        result.stdout
    )
    as_json = json.loads(run_cli(status_config, "status", "--json").stdout)
    assert as_json["daemon"]["running"] is False
    assert as_json["dead_letters"] == 0 and isinstance(as_json["dead_letters"], int)


async def test_status_shows_last_error_never_and_integer_counts(
    status_config: Path, rds: aioredis.Redis
) -> None:
    await rds.set(STATUS_KEY, encode_status(_snapshot(os.getpid())))
    result = run_cli(status_config, "status")
    assert result.returncode == 0, result.stderr
    assert "last frame never" in result.stdout
    assert "last error: OSError: connect call failed" in result.stdout
    assert "gaps: 2 detected, 1 repaired" in result.stdout
    as_json = json.loads(run_cli(status_config, "status", "--json").stdout)
    assert as_json["daemon"] == {
        "running": True,
        "pid": os.getpid(),
        "status_age_s": as_json["daemon"]["status_age_s"],
        "note": "",
    }
    assert as_json["running"]["exchanges"][0]["repair"]["detected"] == 2
    assert isinstance(as_json["running"]["exchanges"][0]["repair"]["detected"], int)


async def test_every_instrument_the_venues_list_passes_its_adapters_syntax() -> None:
    """The syntax checks refuse typos, never a real name: every instrument the
    protocol-faithful fakes list (spot, perpetuals, futures, options) passes."""
    import aiohttp

    from tradingd.adapters import binance, deribit
    from tradingd.config import ExchangeConfig
    from tradingd.testing.fake_binance import FakeBinance
    from tradingd.testing.fake_deribit import FakeDeribit

    fake_binance = FakeBinance()
    await fake_binance.start()
    try:
        async with FakeDeribit() as fake_deribit, aiohttp.ClientSession() as http:
            venues = [
                (binance.BinanceAdapter, fake_binance, ["BTCUSDT"], []),
                (deribit.DeribitAdapter, fake_deribit, ["BTC-PERPETUAL"], ["BTC", "ETH"]),
            ]
            for factory, fake, symbols, currencies in venues:
                config = ExchangeConfig(
                    ws_url=fake.ws_url,
                    rest_url=fake.rest_url,
                    symbols=symbols,
                    currencies=currencies,
                )
                adapter = factory(config, exchange="x", http=http)
                names = [i.instrument_name for i in await adapter.fetch_instruments()]
                await adapter.close()
                module = binance if factory is binance.BinanceAdapter else deribit
                assert len(names) >= 4
                assert [n for n in names if not module.SYMBOL_SYNTAX.fullmatch(n)] == []
    finally:
        await fake_binance.stop()
