"""EmbeddedStorage against the real bundled PostgreSQL and Redis: lifecycle, crash recovery."""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from pathlib import Path
from typing import Any

import asyncpg
import pytest
import redis.asyncio as aioredis
from hypothesis import given
from hypothesis import strategies as st

from tradingd.storage.embedded import (
    _POSTGRES_READY,
    SERVICE_USER,
    UNIX_SOCKET_PATH_MAX,
    EmbeddedStorage,
    EmbeddedStorageError,
    _LogPipe,
)

# Starts EmbeddedStorage, prints where it listens, then either waits forever ("wait") or
# replaces itself with sleep ("exec": same process, so no death signal, but the state
# directory lock is gone: the servers are left running without an owner).
OWNER_SCRIPT = """
import asyncio, json, os, sys
from pathlib import Path
from tradingd.storage.embedded import EmbeddedStorage

async def main():
    storage = EmbeddedStorage(Path(sys.argv[1]))
    dsn, redis_url = await storage.start()
    print(json.dumps({"dsn": dsn, "redis": redis_url, "postgres_pid": storage.postgres_pid,
                      "redis_pid": storage.redis_pid}), flush=True)
    if sys.argv[2] == "exec":
        os.execv("/bin/sleep", ["sleep", "600"])
    await asyncio.Event().wait()

asyncio.run(main())
"""


def resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


async def wait_gone(pids: list[int], limit: float) -> bool:
    """Wait (pidfd, no polling) until none of ``pids`` runs; False on timeout."""
    loop = asyncio.get_running_loop()
    waiters: list[asyncio.Future[None]] = []
    fds: list[int] = []
    for pid in pids:
        try:
            fd = os.pidfd_open(pid)
        except ProcessLookupError:
            continue
        gone: asyncio.Future[None] = loop.create_future()
        loop.add_reader(fd, resolve, gone)
        waiters.append(gone)
        fds.append(fd)
    try:
        async with asyncio.timeout(limit):
            await asyncio.gather(*waiters)
        return True
    except TimeoutError:
        return False
    finally:
        for fd in fds:
            loop.remove_reader(fd)
            os.close(fd)


def processes_under(directory: Path) -> list[int]:
    """Live processes whose working directory is inside ``directory``."""
    root = directory.resolve()
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            cwd = Path(os.readlink(f"/proc/{entry}/cwd"))
        except OSError:
            continue
        if cwd == root or root in cwd.parents:
            found.append(int(entry))
    return found


def process_uid(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Uid:"):
            return int(line.split()[1])
    raise AssertionError(f"no Uid line for {pid}")


@asynccontextmanager
async def owner_process(
    state_dir: Path, mode: str, log: Path
) -> AsyncIterator[tuple[int, dict[str, Any]]]:
    with log.open("wb") as stderr:
        child = await asyncio.create_subprocess_exec(
            sys.executable,
            "-c",
            OWNER_SCRIPT,
            str(state_dir),
            mode,
            stdout=subprocess.PIPE,
            stderr=stderr,
        )
    try:
        assert child.stdout is not None
        async with asyncio.timeout(120):
            line = await child.stdout.readline()
        if not line:
            await child.wait()
            output = await asyncio.to_thread(log.read_bytes)
            pytest.fail(f"owner process failed: {output[-3000:]!r}")
        yield child.pid, json.loads(line)
    finally:
        with suppress(ProcessLookupError):
            child.kill()
        await child.wait()


async def write_marker(dsn: str, redis_url: str) -> None:
    connection = await asyncpg.connect(dsn)
    try:
        await connection.execute("CREATE TABLE marker (value text)")
        await connection.execute("INSERT INTO marker VALUES ('survives')")
    finally:
        await connection.close()
    client = aioredis.Redis.from_url(redis_url)
    try:
        await client.set("kill_switch", "engaged")
    finally:
        await client.aclose()


async def read_marker(dsn: str, redis_url: str) -> tuple[str, Any]:
    connection = await asyncpg.connect(dsn)
    try:
        row = await connection.fetchval("SELECT value FROM marker")
    finally:
        await connection.close()
    client = aioredis.Redis.from_url(redis_url)
    try:
        value = await client.get("kill_switch")
    finally:
        await client.aclose()
    return row, value


async def test_start_connect_stop_leaves_no_process(storage_state_dir: Path) -> None:
    storage = EmbeddedStorage(storage_state_dir)
    dsn, redis_url = await storage.start()
    pids = [storage.postgres_pid, storage.redis_pid]
    assert None not in pids
    try:
        connection = await asyncpg.connect(dsn)
        try:
            assert await connection.fetchval("SELECT current_database()") == "tradingd"
            assert await connection.fetchval("SHOW listen_addresses") == ""
            assert await connection.fetchval("SHOW TimeZone") == "UTC"
        finally:
            await connection.close()
        client = aioredis.Redis.from_url(redis_url)
        try:
            assert await client.ping()
            assert (await client.config_get("port"))["port"] == "0"
            assert (await client.config_get("appendonly"))["appendonly"] == "yes"
        finally:
            await client.aclose()
        assert (storage_state_dir / "postgres" / "PG_VERSION").exists()
        assert (storage_state_dir / "redis").is_dir()
        if os.geteuid() == 0:
            import pwd

            service_uid = pwd.getpwnam(SERVICE_USER).pw_uid
            assert {process_uid(pid) for pid in pids if pid} == {service_uid}
    finally:
        await storage.stop()
    assert await wait_gone([pid for pid in pids if pid], 5)
    assert processes_under(storage_state_dir) == []


async def test_restart_keeps_data(storage_state_dir: Path) -> None:
    storage = EmbeddedStorage(storage_state_dir)
    dsn, redis_url = await storage.start()
    try:
        await write_marker(dsn, redis_url)
    finally:
        await storage.stop()
    dsn, redis_url = await storage.start()
    try:
        assert await read_marker(dsn, redis_url) == ("survives", b"engaged")
    finally:
        await storage.stop()


async def test_sigkill_of_owner_stops_servers_and_restart_recovers(
    storage_state_dir: Path, tmp_path: Path
) -> None:
    async with owner_process(storage_state_dir, "wait", tmp_path / "owner.log") as (pid, info):
        await write_marker(info["dsn"], info["redis"])
        os.kill(pid, signal.SIGKILL)
        servers = [info["postgres_pid"], info["redis_pid"]]
        assert await wait_gone(servers, 30), "servers outlived their owner (no PDEATHSIG?)"
    assert processes_under(storage_state_dir) == []

    storage = EmbeddedStorage(storage_state_dir)
    dsn, redis_url = await storage.start()
    try:
        assert await read_marker(dsn, redis_url) == ("survives", b"engaged")
    finally:
        await storage.stop()
    assert processes_under(storage_state_dir) == []


async def test_leftover_servers_of_a_dead_owner_are_stopped_first(
    storage_state_dir: Path, tmp_path: Path
) -> None:
    async with owner_process(storage_state_dir, "exec", tmp_path / "owner.log") as (_, info):
        leftovers = [info["postgres_pid"], info["redis_pid"]]
        assert not await wait_gone(leftovers, 0.2), "leftovers should still be running"
        storage = EmbeddedStorage(storage_state_dir)
        dsn, _ = await storage.start()
        try:
            assert await wait_gone(leftovers, 5)
            assert storage.postgres_pid not in leftovers
            assert storage.redis_pid not in leftovers
            connection = await asyncpg.connect(dsn)
            await connection.close()
        finally:
            await storage.stop()
    assert processes_under(storage_state_dir) == []


async def test_postmaster_pid_reused_by_another_process_is_recovered(
    storage_state_dir: Path,
) -> None:
    storage = EmbeddedStorage(storage_state_dir)
    await storage.start()
    pid_file = storage_state_dir / "postgres" / "postmaster.pid"
    recorded = pid_file.read_text().splitlines()
    await storage.stop()
    assert not pid_file.exists()

    # A crash leaves postmaster.pid behind; after a reboot its pid belongs to someone else
    # of the same user, which PostgreSQL itself takes for a running postmaster.
    import pwd

    owner = pwd.getpwnam(SERVICE_USER) if os.geteuid() == 0 else None
    squatter = subprocess.Popen(  # noqa: ASYNC220 - needs user=, a few ms
        ["sleep", "600"],
        user=owner.pw_uid if owner else None,
        group=owner.pw_gid if owner else None,
    )
    try:
        pid_file.write_text("\n".join([str(squatter.pid), *recorded[1:]]) + "\n")
        if owner:
            os.chown(pid_file, owner.pw_uid, owner.pw_gid)
        dsn, _ = await storage.start()
        try:
            connection = await asyncpg.connect(dsn)
            await connection.close()
            assert storage.postgres_pid != squatter.pid
        finally:
            await storage.stop()
    finally:
        squatter.kill()
        squatter.wait()


async def test_second_owner_is_refused_and_attach_shares(storage_state_dir: Path) -> None:
    storage = EmbeddedStorage(storage_state_dir)
    dsn, redis_url = await storage.start()
    try:
        with pytest.raises(
            EmbeddedStorageError, match=f"in use by another tradingd \\(pid {os.getpid()}\\)"
        ):
            await EmbeddedStorage(storage_state_dir).start()
        guest = EmbeddedStorage(storage_state_dir, attach=True)
        assert await guest.start() == (dsn, redis_url)
        assert guest.attached
        await guest.stop()
        connection = await asyncpg.connect(dsn)  # the owner's servers still run
        await connection.close()
    finally:
        await storage.stop()


async def test_long_state_path_puts_sockets_in_a_short_runtime_dir(
    storage_state_dir: Path,
) -> None:
    deep = storage_state_dir / ("d" * 60) / ("e" * 60)  # created by EmbeddedStorage
    os.chmod(storage_state_dir, 0o711)
    storage = EmbeddedStorage(deep)
    dsn, redis_url = await storage.start()
    try:
        socket_path = redis_url.removeprefix("unix://").split("?")[0]
        assert len(socket_path) <= UNIX_SOCKET_PATH_MAX
        assert not socket_path.startswith(str(deep))
        connection = await asyncpg.connect(dsn)
        await connection.close()
        client = aioredis.Redis.from_url(redis_url)
        assert await client.ping()
        await client.aclose()
    finally:
        await storage.stop()
    assert not Path(socket_path).parent.exists()  # the runtime directory is removed


async def test_watch_reports_a_server_that_dies(storage_state_dir: Path) -> None:
    storage = EmbeddedStorage(storage_state_dir)
    await storage.start()
    try:
        watcher = asyncio.ensure_future(storage.watch())
        assert storage.redis_pid is not None
        os.kill(storage.redis_pid, signal.SIGKILL)
        with pytest.raises(EmbeddedStorageError, match="embedded redis exited unexpectedly"):
            await asyncio.wait_for(watcher, 10)
    finally:
        await storage.stop()


READY_LINE = (
    b"2026-11-20 23:04:58.856 UTC [9371] LOG:  database system is ready to accept connections"
)


@given(
    lines=st.lists(st.binary(max_size=80).filter(lambda line: b"\n" not in line), max_size=20),
    ready_at=st.none() | st.integers(min_value=0, max_value=20),
    cuts=st.lists(st.integers(min_value=0, max_value=4000), max_size=12),
)
def test_log_pipe_reads_lines_whatever_the_chunking(
    lines: list[bytes], ready_at: int | None, cuts: list[int]
) -> None:
    if ready_at is not None:
        lines.insert(min(ready_at, len(lines)), READY_LINE)
    stream = b"\n".join(lines)
    loop = asyncio.new_event_loop()
    try:
        pipe = _LogPipe("postgres", _POSTGRES_READY, lambda line: "TRACE", loop.create_future())
        edges = sorted({0, len(stream), *(cut for cut in cuts if cut < len(stream))})
        for start, end in itertools.pairwise(edges):
            pipe.data_received(stream[start:end])
        pipe.eof_received()
        pipe.connection_lost(None)
        expected = [
            text for text in (line.decode("utf-8", "replace").rstrip() for line in lines) if text
        ]
        assert list(pipe.tail) == expected  # fewer lines than the tail keeps
        assert pipe.ready.result() == any(_POSTGRES_READY.search(line) for line in lines)
    finally:
        loop.close()
