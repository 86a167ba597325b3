"""The clock check at daemon start, through the real CLI against a fake venue's server clock.

120 s off: ``CRITICAL TIME SKEW DETECTED`` and exit 69. 5 s off: a warning, and the daemon
starts (READY=1 on our NOTIFY_SOCKET), then stops on SIGTERM with 0. No venue reachable: the
daemon starts, trading stays locked, and capture keeps retrying until the venue appears.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import socket
import sys
import uuid
from pathlib import Path
from typing import Any

import asyncpg
import pytest
import redis.asyncio as aioredis

from tradingd.state import ExchangeState, may_trade, read_state, transition
from tradingd.testing.demo import render_toml
from tradingd.testing.fake_binance import FakeBinance

REPO = Path(__file__).resolve().parents[1]


class NotifySocket:
    """The service manager's end of sd_notify: an abstract datagram socket we bind."""

    def __init__(self) -> None:
        self.address = f"@tradingd-test-{uuid.uuid4().hex}"
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_NONBLOCK)
        self.sock.bind(b"\0" + self.address[1:].encode())
        self.messages: list[dict[str, str]] = []

    async def wait_for(self, key: str, value: str) -> dict[str, str]:
        loop = asyncio.get_running_loop()
        while True:
            datagram = await loop.sock_recv(self.sock, 4096)
            fields = dict(
                line.split("=", 1) for line in datagram.decode().splitlines() if "=" in line
            )
            self.messages.append(fields)
            if fields.get(key) == value:
                return fields

    def close(self) -> None:
        self.sock.close()


class Daemon:
    """``python -m tradingd --config <file>`` as a child, its stderr collected as it comes."""

    def __init__(self, process: asyncio.subprocess.Process) -> None:
        self.process = process
        self.lines: list[str] = []
        self._reader = asyncio.ensure_future(self._read())

    async def _read(self) -> None:
        assert self.process.stderr is not None
        async for raw in self.process.stderr:
            self.lines.append(raw.decode(errors="replace"))

    @property
    def output(self) -> str:
        return "".join(self.lines)

    async def wait(self) -> int:
        async with asyncio.timeout(90):
            code = await self.process.wait()
            await self._reader
        return code

    async def stop(self) -> int:
        if self.process.returncode is None:
            self.process.send_signal(signal.SIGTERM)
        return await self.wait()


@pytest.fixture
def notify_socket() -> Any:
    sock = NotifySocket()
    try:
        yield sock
    finally:
        sock.close()


async def start_daemon(config: dict[str, Any], tmp_path: Path, notify: NotifySocket) -> Daemon:
    path = tmp_path / "tradingd.toml"
    path.write_text(render_toml(config))
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("NOTIFY_SOCKET", "JOURNAL_STREAM", "WATCHDOG_USEC", "WATCHDOG_PID")
    }
    env["NOTIFY_SOCKET"] = notify.address
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "tradingd",
        "--config",
        str(path),
        cwd=REPO,
        env=env,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    return Daemon(process)


def daemon_config(
    database_url: str, redis_url: str, tmp_path: Path, ws_url: str, rest_url: str
) -> dict[str, Any]:
    return {
        "daemon": {"state_dir": str(tmp_path), "stop_timeout": 10.0, "status_interval": 1.0},
        "database": {"url": database_url},
        "redis": {"url": redis_url},
        "analyzer": {"enabled": False},
        "exchanges": {
            "binance": {
                "ws_url": ws_url,
                "rest_url": rest_url,
                "symbols": ["BTCUSDT"],
                "request_timeout": 2.0,
                "reconnect_backoff_initial": 0.1,
                "reconnect_backoff_max": 0.5,
            }
        },
    }


async def test_a_clock_120_s_off_refuses_to_start_with_exit_69(
    migrated_database_url: str,
    redis_url: str,
    tmp_path: Path,
    fake_binance: FakeBinance,
    notify_socket: NotifySocket,
) -> None:
    fake_binance.clock_offset_ms = 120_000
    config = daemon_config(
        migrated_database_url, redis_url, tmp_path, fake_binance.ws_url, fake_binance.rest_url
    )
    daemon = await start_daemon(config, tmp_path, notify_socket)
    assert await daemon.wait() == 69, daemon.output
    assert "CRITICAL TIME SKEW DETECTED" in daemon.output
    assert "-120." in daemon.output  # the measured skew (we are behind the venue)
    assert "timedatectl set-ntp true" in daemon.output  # and the fix


async def test_a_clock_5_s_off_only_warns_and_the_daemon_runs(
    migrated_database_url: str,
    redis_url: str,
    tmp_path: Path,
    fake_binance: FakeBinance,
    notify_socket: NotifySocket,
) -> None:
    fake_binance.clock_offset_ms = -5_000
    config = daemon_config(
        migrated_database_url, redis_url, tmp_path, fake_binance.ws_url, fake_binance.rest_url
    )
    daemon = await start_daemon(config, tmp_path, notify_socket)
    try:
        async with asyncio.timeout(60):
            await notify_socket.wait_for("READY", "1")
    finally:
        code = await daemon.stop()
    assert code == 0, daemon.output
    assert "CRITICAL TIME SKEW" not in daemon.output
    assert re.search(r"WARNING .*clock skew \+(4\.9|5\.0)\d* s against binance", daemon.output)


async def test_with_no_venue_reachable_trading_stays_locked_while_capture_retries(
    migrated_database_url: str,
    redis_url: str,
    tmp_path: Path,
    notify_socket: NotifySocket,
) -> None:
    probe = FakeBinance()
    await probe.start()
    port = probe.port
    await probe.stop()  # nothing listens on that port now
    pool = await asyncpg.create_pool(migrated_database_url, min_size=1, max_size=2)
    redis = aioredis.Redis.from_url(redis_url)
    try:
        for state in (ExchangeState.BOOTSTRAPPING, ExchangeState.LOCKED, ExchangeState.HEALTHY):
            await transition(pool, redis, "binance", state, operator="test", reason="setup")
        config = daemon_config(
            migrated_database_url,
            redis_url,
            tmp_path,
            f"ws://127.0.0.1:{port}",
            f"http://127.0.0.1:{port}",
        )
        daemon = await start_daemon(config, tmp_path, notify_socket)
        try:
            async with asyncio.timeout(60):
                await notify_socket.wait_for("READY", "1")
            assert "no exchange answered the clock check" in daemon.output
            # HEALTHY before the restart, but nothing verified it: not tradable.
            assert await read_state(redis, "binance") is ExchangeState.RECONCILING
            assert not await may_trade(redis, "binance")
            venue = FakeBinance(port=port)
            await venue.start()
            try:
                async with asyncio.timeout(30):
                    await venue.wait_subscribed("BTCUSDT", "trades")
                assert not await may_trade(redis, "binance")
            finally:
                await venue.stop()
        finally:
            code = await daemon.stop()
        assert code == 0, daemon.output
        assert "connect failed" in daemon.output
    finally:
        await redis.aclose()
        await pool.close()
