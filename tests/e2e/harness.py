"""Run the real ``tradingd`` process against fake exchanges, as systemd would."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]


class NotifyListener:
    """A bound datagram socket standing in for systemd's notification socket."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.setblocking(False)
        self.messages: list[dict[str, str]] = []
        self._arrived = asyncio.Condition()
        self._reader: asyncio.Task[None] | None = None

    async def __aenter__(self) -> NotifyListener:
        self._reader = asyncio.get_running_loop().create_task(self._read())
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._reader is not None
        self._reader.cancel()
        await asyncio.gather(self._reader, return_exceptions=True)
        self.sock.close()

    async def _read(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            data = await loop.sock_recv(self.sock, 65536)
            fields = dict(line.split("=", 1) for line in data.decode().splitlines() if "=" in line)
            async with self._arrived:
                self.messages.append(fields)
                self._arrived.notify_all()

    async def wait_for(
        self,
        predicate: Callable[[dict[str, str]], bool],
        timeout: float = 60.0,
        since: int = 0,
    ) -> dict[str, str]:
        """The first message from index ``since`` on (received or still to come) that
        satisfies ``predicate``."""
        seen = since

        async def first_match() -> dict[str, str]:
            nonlocal seen
            async with self._arrived:
                while True:
                    for message in self.messages[seen:]:
                        seen += 1
                        if predicate(message):
                            return message
                    await self._arrived.wait()

        return await asyncio.wait_for(first_match(), timeout)


@dataclass
class ExchangeEndpoint:
    adapter: str
    ws_url: str
    rest_url: str
    symbols: Sequence[str]
    extra: Mapping[str, Any] = field(default_factory=dict)


def toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    raise TypeError(type(value))


def write_config(
    path: Path,
    *,
    state_dir: Path,
    database_url: str = "",
    redis_url: str = "",
    exchanges: Mapping[str, ExchangeEndpoint],
    sections: Mapping[str, Mapping[str, Any]] | None = None,
) -> Path:
    merged: dict[str, dict[str, Any]] = {
        "daemon": {"state_dir": str(state_dir), "status_interval": 0.2, "stop_timeout": 20.0},
        "database": {"url": database_url},
        "redis": {"url": redis_url},
        "persister": {"flush_interval": 0.05},
        # Off unless a test asks: daemons of parallel test runs must not share a port.
        "metrics": {"listen": ""},
    }
    for name, values in (sections or {}).items():
        merged.setdefault(name, {}).update(values)
    lines: list[str] = []
    for name, values in merged.items():
        lines.append(f"[{name}]")
        lines.extend(f"{k} = {toml_value(v)}" for k, v in values.items())
    for name, ex in exchanges.items():
        lines.append(f"[exchanges.{name}]")
        lines.append(f"adapter = {toml_value(ex.adapter)}")
        lines.append(f"ws_url = {toml_value(ex.ws_url)}")
        lines.append(f"rest_url = {toml_value(ex.rest_url)}")
        lines.append(f"symbols = {toml_value(list(ex.symbols))}")
        lines.extend(f"{k} = {toml_value(v)}" for k, v in ex.extra.items())
    path.write_text("\n".join(lines) + "\n")
    return path


def offline_config(
    path: Path,
    *,
    state_dir: Path,
    database_url: str,
    redis_url: str,
    sections: Mapping[str, Mapping[str, Any]] | None = None,
) -> Path:
    """A configuration for the operator commands that never connect to an exchange."""
    unreachable = ExchangeEndpoint("binance", "ws://127.0.0.1:9", "http://127.0.0.1:9", ["BTCUSDT"])
    return write_config(
        path,
        state_dir=state_dir,
        database_url=database_url,
        redis_url=redis_url,
        exchanges={"binance": unreachable},
        sections=sections,
    )


def run_cli(
    config: Path, *args: str, env: Mapping[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """``tradingd --config CONFIG ARGS...`` as an operator runs it: no terminal, a bare env."""
    return subprocess.run(
        [sys.executable, "-m", "tradingd", "--config", str(config), *args],
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
        env={"PATH": "/usr/bin:/bin", **(env or {})},
    )


LIVE_DAEMONS: set[DaemonProcess] = set()


class DaemonProcess:
    """``python -m tradingd`` in a child process, with a notification socket of our own."""

    def __init__(self, config: Path, notify: NotifyListener, log_path: Path) -> None:
        self.config = config
        self.notify = notify
        self.log_path = log_path
        self.process: asyncio.subprocess.Process | None = None

    async def start(self, *args: str, env: Mapping[str, str] | None = None) -> DaemonProcess:
        environment = {
            k: v for k, v in os.environ.items() if not k.startswith(("NOTIFY_", "WATCHDOG_"))
        }
        environment["NOTIFY_SOCKET"] = str(self.notify.path)
        environment["PYTHONFAULTHANDLER"] = "1"
        environment.update(env or {})
        self._notify_marker = len(self.notify.messages)
        self._log = open(self.log_path, "ab")  # noqa: SIM115 - closed in wait()
        self.process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "tradingd",
            "--config",
            str(self.config),
            *args,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=self._log,
            stderr=self._log,
            env=environment,
            cwd=str(REPO),
        )
        LIVE_DAEMONS.add(self)
        return self

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    async def wait_ready(self, timeout: float = 90.0) -> dict[str, str]:
        pid = self.pid
        since = self._notify_marker

        async def ready_or_exit() -> dict[str, str]:
            assert self.process is not None
            ready = asyncio.ensure_future(
                self.notify.wait_for(lambda m: m.get("READY") == "1", timeout, since)
            )
            exited = asyncio.ensure_future(self.process.wait())
            done, _ = await asyncio.wait({ready, exited}, return_when=asyncio.FIRST_COMPLETED)
            if ready in done:
                exited.cancel()
                return ready.result()
            ready.cancel()
            raise AssertionError(
                f"tradingd (pid {pid}) exited with {exited.result()} before READY=1:\n"
                + self.output()[-4000:]
            )

        return await ready_or_exit()

    def signal(self, signum: int) -> None:
        assert self.process is not None
        self.process.send_signal(signum)

    async def wait(self, timeout: float = 60.0) -> int:
        """The exit code; a daemon still running after ``timeout`` is killed (no orphans)."""
        assert self.process is not None
        try:
            return await asyncio.wait_for(self.process.wait(), timeout)
        except TimeoutError:
            self.process.kill()
            await self.process.wait()
            raise AssertionError(
                f"tradingd did not exit within {timeout} s; killed it:\n" + self.output()[-3000:]
            ) from None
        finally:
            self._log.close()
            LIVE_DAEMONS.discard(self)

    async def stop(self, timeout: float = 60.0) -> int:
        assert self.process is not None
        if self.process.returncode is None:
            self.signal(signal.SIGTERM)
        return await self.wait(timeout)

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")


async def eventually(
    check: Callable[[], Awaitable[bool]], timeout: float = 60.0, what: str = "condition"
) -> None:
    """Await a condition owned by another process (a database row count, a process exit).

    There is no event to await across the process boundary, so this re-checks on a short,
    bounded cadence until the deadline.
    """
    deadline = time.monotonic() + timeout
    while not await check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        await asyncio.sleep(0.05)


def processes_mentioning(text: str) -> list[tuple[int, str]]:
    """Live processes whose command line mentions ``text`` (zombies excluded)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            status = (entry / "status").read_text()
        except OSError:
            continue
        if "State:\tZ" in status:
            continue
        if text in cmdline:
            found.append((int(entry.name), cmdline))
    return found
