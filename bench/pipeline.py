"""One benchmark session: the feeder and the daemon as separate processes, storage shared.

The daemon is configured as an operator would (``python -m tradingd --config PATH``) except
that its PostgreSQL and Redis are the benchmark's (so that the benchmark can read the table and
hold locks on it) and it captures trades only.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

import psutil

from bench.procs import (
    DaemonProcess,
    FeederProcess,
    NotifyListener,
    read_status,
    write_config,
)
from bench.storage import BenchStorage
from tradingd.status import DaemonStatus

INSTRUMENTS = ("BTCUSDT", "ETHUSDT", "BNBUSDT", "ETHBTC")
STATUS_INTERVAL = 0.5
# Status is read across a process boundary, where there is no event to await: re-read at
# this cadence, within a deadline.
POLL_INTERVAL = 0.25


def daemon_sections(
    state_dir: Path,
    ws_url: str,
    rest_url: str,
    instruments: Sequence[str],
    *,
    database_url: str = "",
    redis_url: str = "",
    extra: Mapping[str, Mapping[str, Any]] | None = None,
    tickers: bool = False,
) -> dict[str, dict[str, Any]]:
    sections: dict[str, dict[str, Any]] = {
        "daemon": {
            "state_dir": str(state_dir),
            "status_interval": STATUS_INTERVAL,
            "stop_timeout": 120.0,
        },
        "database": {"url": database_url},
        "redis": {"url": redis_url},
        "exchanges.binance": {
            "adapter": "binance",
            "ws_url": ws_url,
            "rest_url": rest_url,
            "symbols": list(instruments),
            "channels": ["trades", "tickers"] if tickers else ["trades"],
        },
    }
    for name, values in (extra or {}).items():
        sections.setdefault(name, {}).update(values)
    return sections


class Pipeline:
    """``async with Pipeline(storage, workdir) as p``: empty tables, a feeder, a READY daemon
    streaming every instrument."""

    def __init__(
        self,
        storage: BenchStorage,
        workdir: Path,
        *,
        instruments: Sequence[str] = INSTRUMENTS,
        pong_timeout: float = 60.0,
        extra: Mapping[str, Mapping[str, Any]] | None = None,
        tickers: bool = True,
    ) -> None:
        self.storage = storage
        self.tickers = tickers
        self.workdir = workdir
        self.instruments = list(instruments)
        workdir.mkdir(parents=True, exist_ok=True)
        self.feeder = FeederProcess(
            workdir / "feeder.log",
            instruments=self.instruments,
            pong_timeout=pong_timeout,
            tickers=tickers,
        )
        self._extra = extra
        self._notify: NotifyListener | None = None
        self.daemon: DaemonProcess | None = None
        self.ready_seconds = 0.0
        self.exit_code: int | None = None

    async def __aenter__(self) -> Pipeline:
        await self.storage.reset()
        await self.feeder.__aenter__()
        try:
            config = write_config(
                self.workdir / "tradingd.toml",
                daemon_sections(
                    self.workdir / "state",
                    self.feeder.ws_url,
                    self.feeder.rest_url,
                    self.instruments,
                    database_url=self.storage.database_url,
                    redis_url=self.storage.redis_url,
                    extra=self._extra,
                    tickers=self.tickers,
                ),
            )
            self._notify = await NotifyListener(self.workdir / "notify.sock").__aenter__()
            self.daemon = DaemonProcess(config, self._notify, self.workdir / "daemon.log")
            await self.daemon.start()
            self.ready_seconds = await self.daemon.wait_ready()
            await self.feeder.command("wait_subscribed", timeout=120.0)
        except BaseException:
            await self._close()
            raise
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self._close()

    async def _close(self) -> None:
        try:
            if self.daemon is not None and self.daemon.process is not None:
                self.exit_code = await self.daemon.stop()
        finally:
            if self._notify is not None:
                await self._notify.__aexit__(None, None, None)
            await self.feeder.__aexit__(None, None, None)

    @property
    def daemon_pid(self) -> int:
        assert self.daemon is not None
        return self.daemon.pid

    def daemon_rss_mb(self) -> float:
        rss: int = psutil.Process(self.daemon_pid).memory_info().rss
        return rss / 1_048_576

    async def status(self) -> DaemonStatus:
        """The daemon's latest published status (waits for the first one)."""
        deadline = time.monotonic() + 30.0
        while (status := await read_status(self.storage.redis)) is None:
            if time.monotonic() > deadline:
                raise TimeoutError("the daemon published no status within 30 s")
            await asyncio.sleep(POLL_INTERVAL)
        return status

    async def wait_committed(self, trades: int, timeout: float) -> float:
        """Seconds until the persister reports ``trades`` committed (from the status)."""
        started = time.monotonic()
        deadline = started + timeout
        while True:
            status = await self.status()
            if status.persister.get("trades_offered", 0) >= trades:
                return time.monotonic() - started
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"{status.persister.get('trades_offered', 0):.0f} of {trades} trades "
                    f"committed after {timeout} s"
                )
            await asyncio.sleep(POLL_INTERVAL)
