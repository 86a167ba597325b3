"""Connecting with retry: capped backoff, reported waits, timeouts, redaction, open_storage."""

from __future__ import annotations

import asyncio
import os
import re
import socket
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager, suppress
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from tradingd.config import parse_config
from tradingd.storage import (
    StorageRejected,
    StorageUnavailable,
    connect_postgres,
    connect_redis,
    migrate,
    open_storage,
)
from tradingd.storage.connect import ATTEMPT_FLOOR, WITHHELD, OnWait, scrub
from tradingd.storage.migrations import load_migrations

NEXT_TRY = re.compile(r"next try in (\d+\.\d) s")


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def delays(messages: list[str]) -> list[float]:
    return [float(NEXT_TRY.search(message)[1]) for message in messages]  # type: ignore[index]


def upstream_of(url: str) -> Callable[[], object]:
    """How to open a stream to the server behind a test URL (TCP or unix socket)."""
    parts = urlsplit(url)
    if parts.scheme == "unix":
        return lambda: asyncio.open_unix_connection(unquote(parts.path))
    host_dir = parse_qs(parts.query).get("host", [""])[0]
    if host_dir.startswith("/"):
        port = parse_qs(parts.query).get("port", ["5432"])[0]
        return lambda: asyncio.open_unix_connection(f"{host_dir}/.s.PGSQL.{port}")
    return lambda: asyncio.open_connection(parts.hostname, parts.port)


@asynccontextmanager
async def late_server(upstream: Callable[[], object]) -> AsyncIterator[tuple[int, OnWait]]:
    """A TCP port where nothing listens until the first reported wait; from then on it
    forwards to the real server. Yields the port and the on_wait callback."""
    port = closed_port()
    servers: list[asyncio.Server] = []
    pumps: set[asyncio.Task[None]] = set()

    async def pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            writer.close()

    async def forward(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await upstream()  # type: ignore[misc]
        pumps.add(asyncio.ensure_future(pump(reader, up_writer)))
        pumps.add(asyncio.ensure_future(pump(up_reader, writer)))

    opening: list[asyncio.Task[asyncio.Server]] = []

    def on_wait(message: str) -> None:
        if not opening:
            opening.append(asyncio.ensure_future(asyncio.start_server(forward, "127.0.0.1", port)))

    try:
        yield port, on_wait
    finally:
        for opened in opening:
            servers.append(await opened)
        for server in servers:
            server.close()
        for pumping in pumps:
            pumping.cancel()
        for pumping in pumps:
            with suppress(asyncio.CancelledError):
                await pumping
        for server in servers:
            await server.wait_closed()


@pytest.mark.parametrize("service", ["postgres", "redis"])
async def test_closed_port_retries_with_capped_backoff_then_times_out(service: str) -> None:
    port = closed_port()
    waits: list[str] = []
    started = time.monotonic()
    with pytest.raises(StorageUnavailable) as failure:
        if service == "postgres":
            await connect_postgres(
                f"postgresql://tradingd@127.0.0.1:{port}/tradingd",
                backoff_initial=0.05,
                backoff_max=0.2,
                timeout=1.2,
                on_wait=waits.append,
            )
        else:
            await connect_redis(
                f"redis://127.0.0.1:{port}/0",
                backoff_initial=0.05,
                backoff_max=0.2,
                timeout=1.2,
                on_wait=waits.append,
            )
    elapsed = time.monotonic() - started
    assert elapsed < 1.2 + 0.5
    observed = delays(waits)
    assert observed[:3] == [0.1, 0.1, 0.2]  # 0.05 · 2^n, shown to 0.1 s
    assert max(observed) == 0.2 and len(observed) >= 5
    name = "PostgreSQL" if service == "postgres" else "Redis"
    assert all(message.startswith(f"waiting for {name} at ") for message in waits)
    assert str(failure.value).startswith(f"{name} at ")
    # The time really waited, never more than the limit (issue 14: "10 s" shown at 7.5 s).
    said = re.search(r"gave up after (\d+\.\d) s", str(failure.value))
    # At most the limit plus the last attempt's floor (ATTEMPT_FLOOR: an attempt started just
    # before the deadline still gets 0.1 s) and the rounding of the message.
    assert said is not None and 0.8 <= float(said[1]) <= 1.2 + ATTEMPT_FLOOR + 0.05
    assert abs(float(said[1]) - elapsed) < 0.3
    assert "last error:" in str(failure.value)


async def test_password_never_reaches_messages_or_logs(logged: list[str]) -> None:
    port = closed_port()
    waits: list[str] = []
    with pytest.raises(StorageUnavailable) as failure:
        await connect_postgres(
            f"postgresql://trader:url-s3cret@127.0.0.1:{port}/tradingd",
            password="arg-s3cret",
            backoff_initial=0.05,
            backoff_max=0.05,
            timeout=0.3,
            on_wait=waits.append,
        )
    with pytest.raises(StorageUnavailable):
        await connect_redis(
            f"redis://:url-s3cret@127.0.0.1:{port}/0",
            password="arg-s3cret",
            backoff_initial=0.05,
            backoff_max=0.05,
            timeout=0.3,
            on_wait=waits.append,
        )
    everything = "\n".join([*waits, *logged, str(failure.value)])
    assert waits and logged
    assert "s3cret" not in everything
    assert "trader:***@127.0.0.1" in everything


async def test_postgres_that_comes_up_while_waiting_is_used(database_url: str) -> None:
    waits: list[str] = []
    async with late_server(upstream_of(database_url)) as (port, open_port):

        def on_wait(message: str) -> None:
            waits.append(message)
            open_port(message)

        user = urlsplit(database_url).username or "postgres"
        database = urlsplit(database_url).path.lstrip("/")
        pool = await connect_postgres(
            f"postgresql://{user}@127.0.0.1:{port}/{database}",
            password=urlsplit(database_url).password,
            backoff_initial=0.05,
            timeout=30,
            on_wait=on_wait,
        )
        try:
            assert await pool.fetchval("SELECT current_database()") == database
            assert await pool.fetchval("SHOW TimeZone") == "UTC"
        finally:
            await pool.close()
    assert len(waits) >= 1


async def test_redis_that_comes_up_while_waiting_is_used(redis_url: str) -> None:
    waits: list[str] = []
    async with late_server(upstream_of(redis_url)) as (port, open_port):

        def on_wait(message: str) -> None:
            waits.append(message)
            open_port(message)

        client = await connect_redis(
            f"redis://127.0.0.1:{port}/0", backoff_initial=0.05, timeout=30, on_wait=on_wait
        )
        try:
            assert await client.ping()
        finally:
            await client.aclose()
    assert len(waits) >= 1


async def test_missing_database_is_rejected_without_waiting(database_url: str) -> None:
    parts = urlsplit(database_url)
    missing = parts._replace(path="/no_such_database").geturl()
    waits: list[str] = []
    with pytest.raises(StorageRejected, match=r"refused the connection.*no_such_database"):
        await connect_postgres(missing, timeout=30, on_wait=waits.append)
    assert waits == []


async def test_open_storage_uses_configured_urls(
    migrated_database_url: str, redis_url: str
) -> None:
    config = parse_config(
        {
            "daemon": {"state_dir": "/nonexistent-not-needed"},
            "database": {"url": migrated_database_url, "pool_size": 2},
            "redis": {"url": redis_url},
        }
    )
    storage = await open_storage(config)
    try:
        assert storage.embedded is None
        assert await storage.pool.fetchval("SELECT count(*) FROM schema_migrations") >= 2
        await storage.redis.set("kill_switch", "off")
        assert await storage.redis.get("kill_switch") == b"off"
    finally:
        await storage.close()


async def test_open_storage_with_empty_urls_runs_embedded_servers(storage_state_dir: Path) -> None:
    config = parse_config({"daemon": {"state_dir": str(storage_state_dir)}})
    async with await open_storage(config) as storage:
        assert storage.embedded is not None
        pids = [storage.embedded.postgres_pid, storage.embedded.redis_pid]
        assert await migrate(storage.pool) == [m.name for m in load_migrations()]
        assert await storage.redis.ping()
        # A one-shot command beside the running owner uses the same servers.
        async with await open_storage(config, attach=True) as guest:
            assert guest.embedded is not None and guest.embedded.attached
            assert await guest.pool.fetchval("SELECT 1") == 1
        with pytest.raises(StorageUnavailable, match="in use by another tradingd"):
            await open_storage(config)
    for pid in pids:
        assert pid is not None
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)


@given(
    secret=st.text(min_size=4, max_size=16),
    other=st.text(min_size=4, max_size=16),
    parts=st.lists(st.text(max_size=12), min_size=1, max_size=6),
)
def test_scrub_never_lets_a_secret_through(secret: str, other: str, parts: list[str]) -> None:
    assume(secret not in WITHHELD and other not in WITHHELD)
    text = secret.join(parts) + other + parts[0] + secret
    result = scrub(text, (secret, other))
    assert secret not in result and other not in result
    if not any(s in "".join(parts) for s in (secret, other)) and "*" not in text:
        assert result.count("***") >= 2  # plain occurrences are masked, not withheld
