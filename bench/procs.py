"""Child processes of the benchmark: the daemon (``python -m tradingd``) and the feeder (a fake
exchange, ``python -m bench.feeder``), plus a stand-in for systemd's notification socket.

Nothing here imports from ``tests/``: the e2e harness there has the same ideas.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

import msgspec
import psutil
import redis.asyncio as aioredis

from tradingd.status import STATUS_KEY, DaemonStatus, decode_status

REPO = Path(__file__).resolve().parents[1]


class NotifyListener:
    """A bound datagram socket standing in for systemd's ``$NOTIFY_SOCKET``; each message is
    kept with the monotonic time it arrived."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._sock.bind(str(path))
        self._sock.setblocking(False)
        self.messages: list[tuple[float, dict[str, str]]] = []
        self._arrived = asyncio.Condition()
        self._reader: asyncio.Task[None] | None = None

    async def __aenter__(self) -> NotifyListener:
        self._reader = asyncio.get_running_loop().create_task(self._read())
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if self._reader is not None:
            self._reader.cancel()
            await asyncio.gather(self._reader, return_exceptions=True)
        self._sock.close()
        self.path.unlink(missing_ok=True)

    async def _read(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            data = await loop.sock_recv(self._sock, 65536)
            arrived = time.monotonic()
            fields = dict(
                line.split("=", 1)
                for line in data.decode(errors="replace").splitlines()
                if "=" in line
            )
            async with self._arrived:
                self.messages.append((arrived, fields))
                self._arrived.notify_all()

    async def wait_for(self, key: str, value: str, since: int) -> float:
        """Monotonic arrival time of the first message from index ``since`` on with
        ``key=value`` (received already or still to come)."""
        async with self._arrived:
            while True:
                for arrived, fields in self.messages[since:]:
                    if fields.get(key) == value:
                        return arrived
                await self._arrived.wait()


def toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    raise TypeError(f"no TOML form for {type(value).__name__}")


def write_config(path: Path, sections: Mapping[str, Mapping[str, Any]]) -> Path:
    """A tradingd configuration file: ``{"daemon": {...}, "exchanges.binance": {...}}``."""
    lines: list[str] = []
    for name, values in sections.items():
        lines.append(f"[{name}]")
        lines.extend(f"{key} = {toml_value(value)}" for key, value in values.items())
        lines.append("")
    path.write_text("\n".join(lines))
    return path


def child_environment(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    environment = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("NOTIFY_", "WATCHDOG_", "JOURNAL_", "TRADINGD_"))
    }
    environment["PYTHONPATH"] = str(REPO)
    environment.update(extra or {})
    return environment


class DaemonProcess:
    """``python -m tradingd --config PATH`` as a child, notifying our listener."""

    def __init__(self, config: Path, notify: NotifyListener, log_path: Path) -> None:
        self.config = config
        self.notify = notify
        self.log_path = log_path
        self.process: asyncio.subprocess.Process | None = None
        self.started_at = 0.0
        self._since = 0

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    async def start(self) -> DaemonProcess:
        self._since = len(self.notify.messages)
        with self.log_path.open("ab") as log:
            self.started_at = time.monotonic()
            self.process = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "tradingd",
                "--config",
                str(self.config),
                stdin=asyncio.subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                env=child_environment(
                    {"NOTIFY_SOCKET": str(self.notify.path), "PYTHONFAULTHANDLER": "1"}
                ),
                cwd=str(REPO),
            )
        return self

    async def wait_ready(self, timeout: float = 180.0) -> float:
        """Seconds from exec to READY=1; raises if the daemon exits first."""
        assert self.process is not None
        ready = asyncio.ensure_future(self.notify.wait_for("READY", "1", self._since))
        exited = asyncio.ensure_future(self.process.wait())
        try:
            done, _ = await asyncio.wait(
                {ready, exited}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED
            )
        finally:
            for waiter in (ready, exited):
                if not waiter.done():
                    waiter.cancel()
        if ready in done:
            return ready.result() - self.started_at
        if exited in done:
            raise RuntimeError(
                f"tradingd exited with {exited.result()} before READY=1:\n{self.tail()}"
            )
        raise TimeoutError(f"tradingd not READY after {timeout} s:\n{self.tail()}")

    async def stop(self, timeout: float = 120.0) -> int:
        """SIGTERM, then wait for a clean exit. Past ``timeout``: SIGABRT (the interpreter's
        fault handler writes every thread's stack to the log), then SIGKILL."""
        if self.process is None:
            return 0
        if self.process.returncode is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            async with asyncio.timeout(timeout):
                return await self.process.wait()
        except TimeoutError:
            pass
        self.process.send_signal(signal.SIGABRT)
        try:
            async with asyncio.timeout(10.0):
                return await self.process.wait()
        except TimeoutError:
            self.process.kill()
            return await self.process.wait()

    def tail(self, chars: int = 3000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return ""


async def read_status(redis: aioredis.Redis) -> DaemonStatus | None:
    raw = await redis.get(STATUS_KEY)
    if raw is None:
        return None
    try:
        return decode_status(raw)
    except msgspec.DecodeError:
        return None


class FeederProcess:
    """``python -m bench.feeder``: a fake exchange in its own process, driven by JSON lines."""

    def __init__(
        self,
        log_path: Path,
        *,
        instruments: Sequence[str],
        seed: int = 7,
        pong_timeout: float = 60.0,
        tickers: bool = False,
    ) -> None:
        self.log_path = log_path
        self.instruments = list(instruments)
        self.seed = seed
        self.pong_timeout = pong_timeout
        self.tickers = tickers
        self.process: asyncio.subprocess.Process | None = None
        self.ws_url = ""
        self.rest_url = ""
        self._lock = asyncio.Lock()

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    async def __aenter__(self) -> FeederProcess:
        with self.log_path.open("ab") as log:
            self.process = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "bench.feeder",
                "--seed",
                str(self.seed),
                "--instruments",
                ",".join(self.instruments),
                "--pong-timeout",
                str(self.pong_timeout),
                *(["--tickers"] if self.tickers else []),
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=log,
                env=child_environment(),
                cwd=str(REPO),
            )
        try:
            hello = await self._reply(timeout=60.0)
        except BaseException:
            await self._terminate()
            raise
        self.ws_url, self.rest_url = hello["ws_url"], hello["rest_url"]
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self._terminate()

    async def _terminate(self) -> None:
        if self.process is None or self.process.returncode is not None:
            return
        assert self.process.stdin is not None
        self.process.stdin.close()
        try:
            async with asyncio.timeout(30.0):
                await self.process.wait()
        except TimeoutError:
            self.process.kill()
            await self.process.wait()

    async def _reply(self, timeout: float) -> dict[str, Any]:
        assert self.process is not None and self.process.stdout is not None
        async with asyncio.timeout(timeout):
            line = await self.process.stdout.readline()
        if not line:
            raise RuntimeError(f"the feeder exited:\n{self.log_path.read_text()[-3000:]}")
        reply: dict[str, Any] = json.loads(line)
        if "error" in reply:
            raise RuntimeError(f"feeder: {reply['error']}")
        return reply

    async def command(self, op: str, timeout: float = 600.0, **args: Any) -> dict[str, Any]:
        """Send one command and wait for its reply."""
        assert self.process is not None and self.process.stdin is not None
        async with self._lock:
            self.process.stdin.write(json.dumps({"op": op, **args}).encode() + b"\n")
            await self.process.stdin.drain()
            return await self._reply(timeout)


class CpuMeter:
    """CPU seconds used by a set of processes (and their children) between two readings."""

    def __init__(self, pids: Mapping[str, int | None]) -> None:
        self._processes: dict[str, psutil.Process] = {}
        for name, pid in pids.items():
            if pid is not None:
                try:
                    self._processes[name] = psutil.Process(pid)
                except psutil.NoSuchProcess:
                    continue
        self._start: dict[str, float] = {}
        self._started_at = 0.0

    def _cpu(self, process: psutil.Process, with_children: bool) -> float:
        total = 0.0
        members = [process]
        if with_children:
            try:
                members += process.children(recursive=True)
            except psutil.NoSuchProcess:
                pass
        for member in members:
            try:
                times = member.cpu_times()
            except psutil.NoSuchProcess:
                continue
            total += times.user + times.system
        return total

    def _read(self) -> dict[str, float]:
        return {
            name: self._cpu(process, with_children=name == "postgres")
            for name, process in self._processes.items()
        }

    def start(self) -> None:
        self._start = self._read()
        self._started_at = time.monotonic()

    def percent(self) -> dict[str, float]:
        """Average CPU use since ``start()``, in percent of one core, per process group."""
        elapsed = max(time.monotonic() - self._started_at, 1e-9)
        now = self._read()
        return {
            name: round(100.0 * (now[name] - self._start.get(name, 0.0)) / elapsed, 1)
            for name in now
        }
