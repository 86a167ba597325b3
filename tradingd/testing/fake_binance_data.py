"""A fake Binance public data repository on loopback: spot ``trades`` zips and their
``.CHECKSUM`` files, laid out as the real one (``data/spot/{daily,monthly}/trades/SYM/...``).

Tests give it trades; it groups them by UTC day into daily files (and, for the months named in
``publish_monthly``, a monthly file), writing times in milliseconds for days before 2025 and in
microseconds from then on, as the real repository does. Anything not added answers 404.

Control: ``corrupt(name, times)`` serves a zip whose bytes do not match its checksum the next
``times`` downloads; ``hold(name)`` makes downloads of that zip wait until ``release(name)``;
``downloads`` counts completed zip downloads per file name.
"""

from __future__ import annotations

import asyncio
import calendar
import collections
import hashlib
import io
import zipfile
from collections.abc import Iterable
from datetime import date

from aiohttp import web

from tradingd.adapters.binance.public_data import (
    MICROSECONDS_FROM,
    TradesFile,
    daily_files,
    format_trade_line,
)
from tradingd.model import Trade, us_to_datetime


class FakeBinanceData:
    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        self.host = host
        self.port = port
        self._trades: dict[str, dict[date, list[Trade]]] = collections.defaultdict(dict)
        self._monthly: set[tuple[str, date]] = set()
        self._corrupt: collections.Counter[str] = collections.Counter()
        self._held: dict[str, asyncio.Event] = {}
        self.downloads: collections.Counter[str] = collections.Counter()
        self.requested: list[str] = []
        self.waiting: set[str] = set()
        self._changed = asyncio.Condition()
        self._runner: web.AppRunner | None = None
        self._archives: dict[TradesFile, bytes | None] = {}

    async def start(self) -> FakeBinanceData:
        app = web.Application()
        app.router.add_get("/data/spot/{period}/trades/{symbol}/{name}", self._serve)
        self._runner = web.AppRunner(app, handle_signals=False, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port)
        await site.start()
        server = site._server
        assert server is not None
        sockets = getattr(server, "sockets", None) or []
        self.port = sockets[0].getsockname()[1]
        return self

    async def stop(self) -> None:
        for event in self._held.values():
            event.set()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> FakeBinanceData:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    # -- control ------------------------------------------------------------------------------

    def add_trades(self, trades: Iterable[Trade]) -> None:
        for trade in trades:
            day = us_to_datetime(trade.trade_us).date()
            self._trades[trade.instrument_name].setdefault(day, []).append(trade)
        self._archives.clear()

    def publish_monthly(self, symbol: str, month: date) -> None:
        self._monthly.add((symbol, month.replace(day=1)))
        self._archives.clear()

    def corrupt(self, name: str, times: int = 1) -> None:
        self._corrupt[name] += times

    def hold(self, name: str) -> None:
        self._held[name] = asyncio.Event()

    def release(self, name: str) -> None:
        self._held.pop(name).set()

    async def wait_requested(self, name: str) -> None:
        """Until a download of ``name`` has started (and, when held, is waiting)."""
        async with self._changed:
            await self._changed.wait_for(lambda: name in self.waiting or name in self.requested)

    # -- content ------------------------------------------------------------------------------

    def file_trades(self, file: TradesFile) -> list[Trade] | None:
        days = self._trades.get(file.symbol, {})
        if file.monthly:
            if (file.symbol, file.first_day) not in self._monthly:
                return None
            wanted = [d.first_day for d in daily_files(file.symbol, file.first_day, file.last_day)]
            found = [t for day in wanted for t in days.get(day, [])]
            return found or None
        return days.get(file.first_day)

    def archive(self, file: TradesFile) -> bytes | None:
        if file not in self._archives:
            self._archives[file] = self._build_archive(file)
        return self._archives[file]

    def _build_archive(self, file: TradesFile) -> bytes | None:
        trades = self.file_trades(file)
        if trades is None:
            return None
        milliseconds = file.first_day < MICROSECONDS_FROM
        text = "".join(
            format_trade_line(t, milliseconds=milliseconds) + "\n"
            for t in sorted(trades, key=lambda t: t.trade_seq)
        )
        buffer = io.BytesIO()
        with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
            # A fixed timestamp keeps the bytes (and so the checksum) the same on every request.
            info = zipfile.ZipInfo(file.name.removesuffix(".zip") + ".csv", (2025, 1, 1, 0, 0, 0))
            archive.writestr(info, text, zipfile.ZIP_DEFLATED)
        return buffer.getvalue()

    # -- serving ------------------------------------------------------------------------------

    async def _serve(self, request: web.Request) -> web.StreamResponse:
        period, symbol, name = (request.match_info[k] for k in ("period", "symbol", "name"))
        zip_name = name.removesuffix(".CHECKSUM")
        file = _file_of(period, symbol, zip_name)
        body = self.archive(file) if file is not None else None
        if body is None or file is None:
            raise web.HTTPNotFound()
        if name.endswith(".CHECKSUM"):
            digest = hashlib.sha256(body).hexdigest()
            return web.Response(body=f"{digest}  {zip_name}\n".encode())
        async with self._changed:
            self.requested.append(zip_name)
            self._changed.notify_all()
        held = self._held.get(zip_name)
        if held is not None:
            async with self._changed:
                self.waiting.add(zip_name)
                self._changed.notify_all()
            await held.wait()
        if self._corrupt[zip_name] > 0:
            self._corrupt[zip_name] -= 1
            body = body[:-1] + bytes([body[-1] ^ 0xFF])
        self.downloads[zip_name] += 1
        return web.Response(body=body, content_type="application/zip")


def _file_of(period: str, symbol: str, name: str) -> TradesFile | None:
    prefix = f"{symbol}-trades-"
    if not name.startswith(prefix) or not name.endswith(".zip"):
        return None
    stamp = name[len(prefix) : -len(".zip")]
    try:
        if period == "monthly":
            first = date.fromisoformat(stamp + "-01")
            return TradesFile(symbol, first, _last_day(first), monthly=True)
        if period == "daily":
            day = date.fromisoformat(stamp)
            return TradesFile(symbol, day, day, monthly=False)
    except ValueError:
        return None
    return None


def _last_day(first: date) -> date:
    return first.replace(day=calendar.monthrange(first.year, first.month)[1])
