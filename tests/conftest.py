"""Shared fixtures: real PostgreSQL and Redis for every test that needs storage.

With ``TRADINGD_TEST_DATABASE_URL`` / ``TRADINGD_TEST_REDIS_URL`` set, tests use those servers.
Otherwise ONE embedded PostgreSQL + Redis (``EmbeddedStorage``, the daemon's own mechanism) is
started for the session, lazily, the first time a test asks for storage, and stopped at the end.
It runs on its own event loop in a background thread, so its log pipes are drained while tests
run on their per-test loops.

* ``database_url``: a fresh, empty database for the test, dropped afterwards.
* ``migrated_database_url``: the same with all migrations applied (cloned from a template
  database migrated once per session, so it costs one CREATE DATABASE).
* ``redis_url``: a Redis database flushed before and after the test.
* ``storage_state_dir``: an empty state directory the embedded servers can use, removed after.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import os
import shutil
import stat
import tempfile
import threading
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest
import redis.asyncio as aioredis
from loguru import logger

from tradingd.storage.embedded import EmbeddedStorage
from tradingd.storage.migrations import migrate
from tradingd.testing.fake_binance import FakeBinance

DATABASE_URL_ENV = "TRADINGD_TEST_DATABASE_URL"
REDIS_URL_ENV = "TRADINGD_TEST_REDIS_URL"

_T = TypeVar("_T")


def run_async(make: Callable[[], Awaitable[_T]]) -> _T:
    """Run a coroutine to completion on a fresh loop in a helper thread (usable from sync
    fixtures whatever loop the current test uses)."""
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, _as_coroutine(make)).result()


async def _as_coroutine(make: Callable[[], Awaitable[_T]]) -> _T:
    return await make()


def with_database(url: str, database: str) -> str:
    """``url`` pointing at another database (TCP or unix-socket DSNs alike)."""
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path="/" + database))


def service_user_can_reach(path: Path) -> bool:
    """Whether the embedded servers can use ``path`` as their state directory: as root they
    run as an unprivileged user, who needs search permission on every ancestor."""
    if os.geteuid() != 0:
        return True
    return all(stat.S_IMODE(os.stat(p).st_mode) & 0o001 for p in path.parents)


def reachable_temp_dir(tmp_path_factory: pytest.TempPathFactory, name: str) -> tuple[Path, bool]:
    """A fresh directory under the pytest tmp dir, or under the system temp dir when the
    service user cannot reach the former (pytest's root is mode 0700). Second item: whether
    the caller must remove it."""
    candidate = tmp_path_factory.mktemp(name)
    if service_user_can_reach(candidate):
        return candidate, False
    return Path(tempfile.mkdtemp(prefix=f"tradingd-{name}-")), True


class EmbeddedServersThread:
    """An EmbeddedStorage running on its own event loop in a background thread."""

    def __init__(self, state_dir: Path) -> None:
        self.state_dir = state_dir
        self._started: concurrent.futures.Future[tuple[str, str]] = concurrent.futures.Future()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(target=self._run, name="embedded-storage", daemon=True)

    def start(self) -> tuple[str, str]:
        self._thread.start()
        return self._started.result(timeout=300)

    def stop(self) -> None:
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(timeout=120)

    def _run(self) -> None:
        try:
            import uvloop

            factory: Callable[[], asyncio.AbstractEventLoop] | None = uvloop.new_event_loop
        except ImportError:
            factory = None
        with asyncio.Runner(loop_factory=factory) as runner:
            runner.run(self._serve())

    async def _serve(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        storage = EmbeddedStorage(self.state_dir, durable=False)
        try:
            urls = await storage.start()
        except BaseException as exc:
            self._started.set_exception(exc)
            return
        self._started.set_result(urls)
        try:
            await self._stop.wait()
        finally:
            await storage.stop()


@dataclass(frozen=True)
class StorageServers:
    admin_database_url: str  # a database to connect to for CREATE/DROP DATABASE
    redis_url: str


@pytest.fixture(scope="session")
def _test_servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StorageServers]:
    database_env = os.environ.get(DATABASE_URL_ENV, "")
    redis_env = os.environ.get(REDIS_URL_ENV, "")
    if database_env and redis_env:
        yield StorageServers(database_env, redis_env)
        return
    state_dir, remove = reachable_temp_dir(tmp_path_factory, "storage")
    servers = EmbeddedServersThread(state_dir)
    try:
        dsn, embedded_redis = servers.start()
        yield StorageServers(
            database_env or with_database(dsn, "postgres"), redis_env or embedded_redis
        )
    finally:
        servers.stop()
        if remove:
            shutil.rmtree(state_dir, ignore_errors=True)


@pytest.fixture(scope="session")
def _migrated_template(_test_servers: StorageServers) -> Iterator[str]:
    """A database with every migration applied, cloned by ``migrated_database_url``."""
    name = f"tradingd_template_{uuid.uuid4().hex[:10]}"
    admin_url = _test_servers.admin_database_url

    async def create() -> None:
        admin = await asyncpg.connect(admin_url)
        try:
            await admin.execute(f'CREATE DATABASE "{name}"')
        finally:
            await admin.close()
        connection = await asyncpg.connect(with_database(admin_url, name))
        try:
            await migrate(connection)
        finally:
            await connection.close()

    async def drop() -> None:
        admin = await asyncpg.connect(admin_url)
        try:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await admin.close()

    run_async(create)
    try:
        yield name
    finally:
        run_async(drop)


async def _fresh_database(admin_url: str, template: str | None) -> AsyncIterator[str]:
    name = f"t_{uuid.uuid4().hex[:12]}"
    clause = f' TEMPLATE "{template}"' if template else ""
    admin = await asyncpg.connect(admin_url)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"{clause}')
        yield with_database(admin_url, name)
    finally:
        try:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await admin.close()


@pytest.fixture
async def database_url(_test_servers: StorageServers) -> AsyncIterator[str]:
    """A fresh, empty database for this test (dropped afterwards)."""
    async for url in _fresh_database(_test_servers.admin_database_url, None):
        yield url


@pytest.fixture
async def migrated_database_url(
    _test_servers: StorageServers, _migrated_template: str
) -> AsyncIterator[str]:
    """A fresh database with all migrations applied (dropped afterwards)."""
    async for url in _fresh_database(_test_servers.admin_database_url, _migrated_template):
        yield url


@pytest.fixture
async def redis_url(_test_servers: StorageServers) -> AsyncIterator[str]:
    """A flushed Redis database for this test."""
    url = _test_servers.redis_url
    client = aioredis.Redis.from_url(url)
    try:
        await client.flushdb()
        yield url
        await client.flushdb()
    finally:
        await client.aclose()


@pytest.fixture
def storage_state_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """An empty state directory for an EmbeddedStorage of the test's own."""
    directory, remove = reachable_temp_dir(tmp_path_factory, "state")
    try:
        yield directory
    finally:
        if remove:
            shutil.rmtree(directory, ignore_errors=True)


# -- clients and fakes shared by many test files --------------------------------------------


@pytest.fixture
async def pool(migrated_database_url: str) -> AsyncIterator[asyncpg.Pool]:
    """A small pool on a fresh, migrated database."""
    async with asyncpg.create_pool(migrated_database_url, min_size=1, max_size=4) as created:
        yield created


@pytest.fixture
async def rds(redis_url: str) -> AsyncIterator[aioredis.Redis]:
    """A Redis client (bytes responses) on the test's flushed database."""
    client = aioredis.Redis.from_url(redis_url)
    try:
        yield client
    finally:
        await client.aclose()


class LoopTurns:
    """``async with LoopTurns() as loop_turns``: ``loop_turns.count`` is how many event-loop
    turns have begun since it was entered (a task that counts one per step and yields)."""

    def __init__(self) -> None:
        self.count = 0
        self._counter: asyncio.Task[None] | None = None

    async def __aenter__(self) -> LoopTurns:
        self._counter = asyncio.create_task(self._count())
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        if self._counter is not None:
            self._counter.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._counter

    async def _count(self) -> None:
        while True:
            self.count += 1
            await asyncio.sleep(0)  # one step per event-loop turn


@pytest.fixture
def transactions_started(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """A one-item list: how many asyncpg transactions (or savepoints) started so far."""
    started = [0]
    start = asyncpg.transaction.Transaction.start

    async def counted_start(self: asyncpg.transaction.Transaction) -> None:
        started[0] += 1
        await start(self)

    monkeypatch.setattr(asyncpg.transaction.Transaction, "start", counted_start)
    return started


@pytest.fixture
def logged() -> Iterator[list[str]]:
    """Every log line (DEBUG and up) written during the test, formatted."""
    lines: list[str] = []
    sink = logger.add(lambda message: lines.append(str(message)), level="DEBUG")
    try:
        yield lines
    finally:
        logger.remove(sink)


@pytest.fixture
async def fake_binance() -> AsyncIterator[FakeBinance]:
    fake = FakeBinance()
    await fake.start()
    try:
        yield fake
    finally:
        await fake.stop()
