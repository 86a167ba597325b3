"""``make demo`` end to end: fakes, bootstrap, daemon, data landing, unlock, HEALTHY in status."""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import asyncpg
import pytest

from tradingd.config import parse_config
from tradingd.testing.demo import demo_document, render_toml

REPO = Path(__file__).resolve().parents[1]


def test_the_demo_configuration_round_trips_through_toml(tmp_path: Path) -> None:
    document = demo_document(
        tmp_path,
        ("ws://127.0.0.1:18080", "http://127.0.0.1:18080"),
        ("ws://127.0.0.1:18081/ws/api/v2", "http://127.0.0.1:18081/api/v2"),
        dt.date(2026, 11, 1),
    )
    text = render_toml(document)
    assert tomllib.loads(text) == document
    config = parse_config(tomllib.loads(text))
    assert config.database.url == "" and config.redis.url == ""  # embedded storage
    assert config.state_path() == tmp_path.absolute()
    assert set(config.enabled_exchanges()) == {"binance", "deribit"}


@pytest.fixture
def state_dir(storage_state_dir: Path) -> Iterator[Path]:
    # Its own directory (as root the embedded servers' user must be able to reach it).
    yield storage_state_dir


def _env() -> dict[str, str]:
    return {
        k: v
        for k, v in os.environ.items()
        if k not in ("NOTIFY_SOCKET", "JOURNAL_STREAM", "WATCHDOG_USEC", "WATCHDOG_PID")
    }


async def _cli(config: Path, *argv: str) -> tuple[int, str]:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "tradingd",
        "--config",
        str(config),
        *argv,
        cwd=REPO,
        env=_env(),
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    async with asyncio.timeout(120):
        out, _ = await process.communicate()
    assert process.returncode is not None
    return process.returncode, out.decode()


async def _wait_for_grid_orders(dsn: str) -> None:
    """Return once the grid strategy has resting orders: a statement trigger notifies us."""
    conn = await asyncpg.connect(dsn)
    changed = asyncio.Event()
    try:
        await conn.execute(
            "CREATE OR REPLACE FUNCTION test_orders_changed() RETURNS trigger LANGUAGE plpgsql"
            " AS $$ BEGIN PERFORM pg_notify('test_orders_changed', ''); RETURN NULL; END $$;"
            " CREATE OR REPLACE TRIGGER test_orders_changed AFTER INSERT OR UPDATE ON orders"
            " FOR EACH STATEMENT EXECUTE FUNCTION test_orders_changed()"
        )
        await conn.add_listener("test_orders_changed", lambda *_: changed.set())
        while True:
            changed.clear()
            resting = await conn.fetchval(
                "SELECT count(*) FROM orders WHERE strategy = 'grid' AND state = 'OPEN'"
            )
            if resting >= 2:
                return
            await changed.wait()
    finally:
        await conn.execute(
            "DROP TRIGGER IF EXISTS test_orders_changed ON orders;"
            " DROP FUNCTION IF EXISTS test_orders_changed()"
        )
        await conn.close()


async def _wait_for_trades(dsn: str, instruments: list[str]) -> None:
    """Return once every instrument has a stored trade: a statement trigger notifies us."""
    conn = await asyncpg.connect(dsn)
    landed = asyncio.Event()
    try:
        await conn.execute(
            "CREATE OR REPLACE FUNCTION test_trades_landed() RETURNS trigger LANGUAGE plpgsql"
            " AS $$ BEGIN PERFORM pg_notify('test_trades_landed', ''); RETURN NULL; END $$;"
            " CREATE OR REPLACE TRIGGER test_trades_landed AFTER INSERT ON public_trades"
            " FOR EACH STATEMENT EXECUTE FUNCTION test_trades_landed()"
        )
        await conn.add_listener("test_trades_landed", lambda *_: landed.set())
        while True:
            landed.clear()
            have = await conn.fetchval(
                "SELECT count(DISTINCT instrument_name) FROM public_trades"
                " WHERE instrument_name = ANY($1::text[])",
                instruments,
            )
            if have == len(instruments):
                return
            await landed.wait()
    finally:
        await conn.execute(
            "DROP TRIGGER IF EXISTS test_trades_landed ON public_trades;"
            " DROP FUNCTION IF EXISTS test_trades_landed()"
        )
        await conn.close()


@pytest.mark.slow
async def test_make_demo_runs_the_first_launch_runbook_end_to_end(state_dir: Path) -> None:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "tradingd.testing.demo",
        "--state-dir",
        str(state_dir),
        "--binance-port",
        "0",
        "--deribit-port",
        "0",
        "--history-days",
        "1",
        "--trades-per-second",
        "20",
        cwd=REPO,
        env=_env(),
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    assert process.stdout is not None and process.stderr is not None
    errors: list[bytes] = []

    async def drain() -> None:
        assert process.stderr is not None
        async for line in process.stderr:
            errors.append(line)

    drainer = asyncio.ensure_future(drain())
    shown: list[str] = []
    try:
        async with asyncio.timeout(180):
            while True:
                line = (await process.stdout.readline()).decode()
                assert line, "demo ended early:\n" + "".join(shown) + b"".join(errors).decode()
                shown.append(line)
                if line.startswith("The first-launch guide"):
                    break
        text = "".join(shown)
        assert "bootstrap summary:" in text and "binance      ok" in text
        assert "deribit      ok" in text
        config = state_dir.absolute() / "tradingd.toml"
        assert f"--config {config} unlock --all" in text
        psql = re.search(r"^  (\S*psql) (.+)$", text, re.MULTILINE)
        assert psql is not None
        params = dict(part.split("=", 1) for part in shlex.split(psql.group(2))[0].split())
        dsn = (
            f"postgresql://{params['user']}@/{params['dbname']}"
            f"?host={quote(params['host'], safe='')}&port={params['port']}"
        )
        async with asyncio.timeout(60):
            await _wait_for_trades(dsn, ["BTCUSDT", "ETHUSDT", "BTC-PERPETUAL", "ETH-PERPETUAL"])
        conn = await asyncpg.connect(dsn)
        try:
            by_type = await conn.fetch(
                "SELECT exchange, market_type, count(*) FROM instruments GROUP BY 1, 2"
            )
            assert {(r["exchange"], r["market_type"]) for r in by_type} >= {
                ("binance", "spot"),
                ("deribit", "perpetual"),
            }
            assert (
                await conn.fetchval(
                    "SELECT count(*) FROM ohlc WHERE tick > now() - interval '1 day'"
                )
                > 1000
            )
        finally:
            await conn.close()

        code, out = await _cli(config, "unlock", "--all", "--yes")
        assert code == 0, out
        assert "binance: HEALTHY" in out and "deribit: HEALTHY" in out
        code, out = await _cli(config, "status")
        assert code == 0, out
        assert re.search(r"^  binance\s+HEALTHY", out, re.MULTILINE), out
        assert re.search(r"^  deribit\s+HEALTHY", out, re.MULTILINE), out
        assert "daemon:   running" in out
        # HEALTHY: the grid lays its paper orders through the executor and the ledger.
        async with asyncio.timeout(60):
            await _wait_for_grid_orders(dsn)
        code, out = await _cli(config, "orders", "--open")
        assert code == 0, out
        assert "grid" in out and "ETHUSDT" in out, out
    finally:
        if process.returncode is None:
            process.send_signal(signal.SIGINT)
        async with asyncio.timeout(90):
            code = await process.wait()
            await drainer
    assert code == 0, b"".join(errors).decode()[-3000:]


def test_a_taken_port_is_one_clear_line_and_exit_69(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        demo = [sys.executable, "-m", "tradingd.testing.demo", "--state-dir", str(tmp_path)]
        ports = ["--binance-port", "0", "--deribit-port", str(port)]
        result = subprocess.run(
            [*demo, *ports, "--history-days", "0"],
            capture_output=True,
            text=True,
            timeout=120,
            stdin=subprocess.DEVNULL,
        )
    assert result.returncode == 69, result.stderr
    assert "Traceback" not in result.stderr
    assert "demo: cannot listen on 127.0.0.1 (" in result.stderr
    assert "--binance-port and --deribit-port" in result.stderr
