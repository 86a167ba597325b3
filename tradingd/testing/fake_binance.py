"""A fake Binance spot exchange on loopback: real WebSocket and HTTP, the venue's wire formats.

It serves the market-stream endpoints (``/ws/<stream>``, ``/stream?streams=``, ``timeUnit``,
SUBSCRIBE / UNSUBSCRIBE / LIST_SUBSCRIPTIONS / SET_PROPERTY / GET_PROPERTY with the official
responses and error frames, a ping every ``ping_interval`` seconds, a disconnect after more than
5 incoming messages in a second or without a pong for ``pong_timeout`` seconds, at most 1024
streams per connection) and the REST market-data endpoints (exchangeInfo with filters, time,
klines, trades, historicalTrades by ``fromId``, with ``X-MBX-USED-WEIGHT-1M`` headers, 429 with
``Retry-After`` once the weight budget of the window is spent, and 418 for a client that keeps
going). Tests, ``make demo`` and ``make bench`` drive it through the control API shared with
the other fake exchanges.

Where the venue's behaviour is not documented the fake picks something plausible and says so:
too many streams is an error frame (SUBSCRIBE) or HTTP 400 (URL); a ``fromId`` older than what
is still served answers from the oldest served trade; kline updates are pushed only to
``@kline_1m`` streams.

Run standalone: ``python -m tradingd.testing.fake_binance [--port N] [--trades-per-second R]``.
"""

from __future__ import annotations

import argparse
import array
import asyncio
import collections
import functools
import json
import math
import random
import re
import signal
import time
import zlib
from bisect import bisect_left, bisect_right
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, Final

import msgspec
import uvloop
from aiohttp import WSMsgType, web

_encode: Final = msgspec.json.encode

MINUTE_US: Final = 60_000_000
_INTERVAL_US: Final = {
    "1m": 60_000_000,
    "3m": 180_000_000,
    "5m": 300_000_000,
    "15m": 900_000_000,
    "30m": 1_800_000_000,
    "1h": 3_600_000_000,
    "2h": 7_200_000_000,
    "4h": 14_400_000_000,
    "6h": 21_600_000_000,
    "8h": 28_800_000_000,
    "12h": 43_200_000_000,
    "1d": 86_400_000_000,
    "3d": 259_200_000_000,
    "1w": 604_800_000_000,
}
_STREAM_NAME: Final = re.compile(
    r"^[a-z0-9]+@(trade|aggTrade|bookTicker|avgPrice|miniTicker|ticker|ticker_(1h|4h|1d)"
    r"|depth(5|10|20)?(@100ms)?|kline_(1s|1m|3m|5m|15m|30m|1h|2h|4h|6h|8h|12h|1d|3d|1w|1M)"
    r"(@\+08:00)?)$"
)
_METHODS: Final = ("SUBSCRIBE", "UNSUBSCRIBE", "LIST_SUBSCRIPTIONS", "SET_PROPERTY", "GET_PROPERTY")
# The WebSocket API documentation's example ORDERS limits: 50 per 10 s, 160,000 per day.
DEFAULT_ORDER_LIMITS: Final[tuple[tuple[str, int, int], ...]] = (
    ("SECOND", 10, 50),
    ("DAY", 1, 160_000),
)
_ENDPOINT_WEIGHT: Final = {
    "/api/v3/ping": 1,
    "/api/v3/time": 1,
    "/api/v3/exchangeInfo": 20,
    "/api/v3/klines": 2,
    "/api/v3/trades": 25,
    "/api/v3/historicalTrades": 25,
}
# Milliseconds stay below this until the year 5138; microseconds are above it since 1973.
_MICROSECOND_THRESHOLD: Final = 100_000_000_000_000


@dataclass
class _Symbol:
    name: str
    base: str
    quote: str
    status: str
    price_decimals: int
    quantity_decimals: int
    min_notional: str
    price_units: int
    first_trade_id: int
    # The tape, one column per field (a benchmark publishes millions of trades): price and
    # quantity in integer units, trade time in µs, buyer-is-maker flags; ids are consecutive.
    tape_price: array.array[int] = field(default_factory=lambda: array.array("q"))
    tape_quantity: array.array[int] = field(default_factory=lambda: array.array("q"))
    tape_time: array.array[int] = field(default_factory=lambda: array.array("q"))
    tape_maker: bytearray = field(default_factory=bytearray)
    # Trades with a smaller id are no longer served by the history endpoints.
    served_from_id: int = 0
    # Minute open time (µs) -> [open, high, low, close, volume, count, first id, last id]
    # in integer units, for every minute that has trades; ``minutes`` keeps them sorted.
    minute_bars: dict[int, list[int]] = field(default_factory=dict)
    minutes: list[int] = field(default_factory=list)
    book_update_id: int = 1
    _price_texts: dict[int, str] = field(default_factory=dict)
    _quantity_texts: dict[int, str] = field(default_factory=dict)

    @property
    def next_trade_id(self) -> int:
        return self.first_trade_id + len(self.tape_time)

    def trade(self, index: int) -> dict[str, object]:
        """The tape's trade at ``index`` as a µs wire dict."""
        time_us = self.tape_time[index]
        return {
            "e": "trade",
            "E": time_us,
            "s": self.name,
            "t": self.first_trade_id + index,
            "p": self.price_text(self.tape_price[index]),
            "q": self.quantity_text(self.tape_quantity[index]),
            "T": time_us,
            "m": bool(self.tape_maker[index]),
            "M": True,
        }

    def price_text(self, units: int) -> str:
        return _decimal_text(units, self.price_decimals)

    def quantity_text(self, units: int) -> str:
        return _decimal_text(units, self.quantity_decimals)

    def decimal_texts(self) -> tuple[Callable[[int], str], Callable[[int], str]]:
        """``price_text`` and ``quantity_text`` for a loop over many trades: a lookup in a
        dict of this symbol's texts, formatting only the values not seen before."""
        prices, quantities = self._price_texts, self._quantity_texts
        if len(prices) > _TEXTS_PER_SYMBOL:
            prices.clear()
        if len(quantities) > _TEXTS_PER_SYMBOL:
            quantities.clear()
        price_decimals, quantity_decimals = self.price_decimals, self.quantity_decimals

        def price_text(units: int) -> str:
            text = prices.get(units)
            if text is None:
                text = prices[units] = _decimal_text(units, price_decimals)
            return text

        def quantity_text(units: int) -> str:
            text = quantities.get(units)
            if text is None:
                text = quantities[units] = _decimal_text(units, quantity_decimals)
            return text

        return price_text, quantity_text


# Decimal texts kept per symbol and kind (``_Symbol.decimal_texts``) before starting afresh.
_TEXTS_PER_SYMBOL: Final = 262_144


@functools.lru_cache(maxsize=65_536)
def _decimal_text(units: int, decimals: int) -> str:
    """Binance's 8-decimal text of ``units`` * 10**-decimals ("60650.00000000").

    Cached: a random walk revisits the same prices and lot sizes, and formatting them was a
    fifth of a flooding feeder's CPU.
    """
    scale = 10**decimals
    return f"{units // scale}.{units % scale:0{decimals}d}{'0' * (8 - decimals)}"


@dataclass(eq=False)
class _Connection:
    ws: web.WebSocketResponse
    request: web.Request
    streams: dict[str, None]
    combined: bool
    microseconds: bool
    outbox: collections.deque[bytes] = field(default_factory=collections.deque)
    wakeup: asyncio.Event = field(default_factory=asyncio.Event)
    incoming: collections.deque[float] = field(default_factory=collections.deque)
    unanswered_pings: dict[bytes, float] = field(default_factory=dict)
    pongs: int = 0

    def push(self, frame: bytes) -> None:
        self.outbox.append(frame)
        self.wakeup.set()


@dataclass(frozen=True)
class SymbolRules:
    base: str
    quote: str
    tick: Decimal
    step: Decimal
    min_notional: Decimal
    bid: Decimal
    ask: Decimal


class _RequestProblem(Exception):
    def __init__(self, status: int, code: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


class FakeBinance:
    """The fake venue; see the module docstring. All times it sends are now + clock_offset_ms."""

    def __init__(
        self,
        *,
        seed: int = 1,
        host: str = "127.0.0.1",
        port: int = 0,
        ping_interval: float = 20.0,
        pong_timeout: float = 60.0,
        max_streams_per_connection: int = 1024,
        max_incoming_per_second: int = 5,
        weight_limit: int = 6000,
        weight_window: float = 60.0,
        ban_seconds: float = 120.0,
        order_limits: tuple[tuple[str, int, int], ...] = DEFAULT_ORDER_LIMITS,
    ) -> None:
        self.seed = seed
        self.host = host
        self.port = port
        self.ping_interval = ping_interval
        self.pong_timeout = pong_timeout
        self.max_streams_per_connection = max_streams_per_connection
        self.max_incoming_per_second = max_incoming_per_second
        self.weight_limit = weight_limit
        self.weight_window = weight_window
        self.ban_seconds = ban_seconds
        # ORDERS limits as exchangeInfo serves them: (interval, intervalNum, limit); the
        # trading side enforces them (-1015) and names them in X-MBX-ORDER-COUNT-* headers.
        self.order_limits = order_limits
        self.clock_offset_ms = 0
        self.requests: list[tuple[str, str]] = []
        self.instruments: list[str] = []
        self.pongs_received = 0
        self.disconnects_for_rate = 0
        self._rng = random.Random(seed)
        self._symbols: dict[str, _Symbol] = {}
        self._connections: set[_Connection] = set()
        self._changed = asyncio.Condition()
        self._runner: web.AppRunner | None = None
        self._weight_used = 0
        self._weight_window_index = -1
        self._rate_limited_until = 0.0
        self._banned_until = 0.0
        self._injected_errors: collections.deque[tuple[int, float | None]] = collections.deque()
        self.http_delay = 0.0
        # Extensions (the trading side, ``fake_binance_trading``): routes added at start, and
        # listeners told of every trade appended to a tape.
        self.route_installers: list[Callable[[web.Application], None]] = []
        self.tape_listeners: list[Callable[[str, list[dict[str, object]]], None]] = []
        for name, details in _DEFAULT_SYMBOLS:
            self._add_symbol(name, **details)
        self.instruments = ["BTCUSDT", "ETHUSDT"]

    # --- lifecycle ------------------------------------------------------------------------

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/stream", self._handle_combined)
        app.router.add_get("/ws", self._handle_raw)
        app.router.add_get("/ws/{tail:.*}", self._handle_raw)
        for path in _ENDPOINT_WEIGHT:
            app.router.add_get(path, self._handle_rest)
        for install in self.route_installers:
            install(app)
        self._runner = web.AppRunner(app, handle_signals=False, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port)
        await site.start()
        server = site._server
        assert server is not None
        sockets = getattr(server, "sockets", None) or []
        self.port = sockets[0].getsockname()[1]

    async def stop(self) -> None:
        for conn in list(self._connections):
            await conn.ws.close(code=1001, message=b"server stopping")
        await self._wait_until(lambda: not self._connections)
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    @property
    def ws_url(self) -> str:
        return f"ws://{self.host}:{self.port}"

    @property
    def rest_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    # --- control API ----------------------------------------------------------------------

    def add_instrument(self, name: str, **details: object) -> None:
        """Add a symbol: ``status``, ``base``, ``quote``, ``price`` (str), ``price_decimals``,
        ``quantity_decimals``, ``min_notional`` (str) may be given."""
        self._add_symbol(name, **details)
        if name not in self.instruments:
            self.instruments.append(name)

    def publish_trades(
        self, instrument: str, count: int, *, deliver: bool = True
    ) -> list[dict[str, object]]:
        """Append ``count`` trades to the tape; returns them as µs wire dicts (``timeUnit``
        MICROSECOND form). ``deliver=False`` keeps them off the streams (history only)."""
        symbol = self._symbols[instrument]
        first = len(symbol.tape_time)
        self._extend_tape(symbol, count)
        price_text, quantity_text = symbol.decimal_texts()
        tape_price, tape_quantity = symbol.tape_price, symbol.tape_quantity
        tape_time, tape_maker = symbol.tape_time, symbol.tape_maker
        first_id = symbol.first_trade_id
        trades: list[dict[str, object]] = [
            {
                "e": "trade",
                "E": tape_time[index],
                "s": instrument,
                "t": first_id + index,
                "p": price_text(tape_price[index]),
                "q": quantity_text(tape_quantity[index]),
                "T": tape_time[index],
                "m": tape_maker[index] == 1,
                "M": True,
            }
            for index in range(first, first + count)
        ]
        if deliver and trades:
            self._deliver(f"{instrument.lower()}@trade", trades, ("E", "T"))
        for listener in self.tape_listeners:
            listener(instrument, trades)
        return trades

    def flood_trades(self, instrument: str, count: int) -> None:
        """``publish_trades`` for a flood: the same tape and byte for byte the same frames,
        rendered from the tape without a wire dict per trade (unless a tape listener wants
        them)."""
        if self.tape_listeners:
            self.publish_trades(instrument, count)
            return
        symbol = self._symbols[instrument]
        first = len(symbol.tape_time)
        self._extend_tape(symbol, count)
        stream = f"{instrument.lower()}@trade"
        self._fan_out(
            stream,
            lambda conn: self._trade_frames(
                symbol, stream, first, count, (conn.combined, conn.microseconds)
            ),
        )

    def _trade_frames(
        self, symbol: _Symbol, stream: str, first: int, count: int, shape: tuple[bool, bool]
    ) -> list[bytes]:
        """The tape's trades ``first`` .. ``first + count - 1`` as the frames ``_render`` makes
        of their wire dicts for a connection of ``shape`` (combined, microseconds)."""
        combined, microseconds = shape
        price_text, quantity_text = symbol.decimal_texts()
        tape_price, tape_quantity = symbol.tape_price, symbol.tape_quantity
        tape_time, tape_maker = symbol.tape_time, symbol.tape_maker
        divisor = 1 if microseconds else 1000
        opening = f'{{"stream":"{stream}","data":' if combined else ""
        closing = "}" if combined else ""
        first_id, name = symbol.first_trade_id, symbol.name
        frames: list[bytes] = []
        append = frames.append
        before_id = between_quantity_and_side = ""
        frame_time = -1
        for index in range(first, first + count):
            if tape_time[index] != frame_time:
                # The parts of a frame before its id and between its quantity and its side
                # change only with its time: a flood's trades mostly share one.
                frame_time = tape_time[index]
                time_text = str(frame_time // divisor)
                before_id = f'{opening}{{"e":"trade","E":{time_text},"s":"{name}","t":'
                between_quantity_and_side = f'","T":{time_text},"m":'
            append(
                f'{before_id}{first_id + index},"p":"{price_text(tape_price[index])}",'
                f'"q":"{quantity_text(tape_quantity[index])}{between_quantity_and_side}'
                f'{"true" if tape_maker[index] else "false"},"M":true}}{closing}'.encode()
            )
        return frames

    def _extend_tape(self, symbol: _Symbol, count: int) -> None:
        """``count`` new trades on ``symbol``'s tape (and its minute bars), all at this µs."""
        now = self._now_us()
        units = symbol.price_units
        next_id = symbol.next_trade_id
        max_lots = 10**symbol.quantity_decimals // 10 or 1
        minute = now - now % MINUTE_US
        bar = symbol.minute_bars.get(minute)
        tape_price, tape_quantity = symbol.tape_price, symbol.tape_quantity
        tape_time, tape_maker = symbol.tape_time, symbol.tape_maker
        draw = self._rng.getrandbits
        for offset in range(count):
            # One draw per trade: a step, a lot count, a size multiplier and a side from its bits.
            bits = draw(64)
            units = max(1, units + _PRICE_STEPS[bits & 15])
            quantity = (1 + (bits >> 8) % max_lots) * _QUANTITY_MULTIPLIERS[(bits >> 4) & 7]
            maker = bits >> 63
            trade_id = next_id + offset
            tape_price.append(units)
            tape_quantity.append(quantity)
            tape_time.append(now)
            tape_maker.append(maker)
            if bar is None:
                bar = [units, units, units, units, 0, 0, trade_id, trade_id]
                symbol.minute_bars[minute] = bar
                symbol.minutes.insert(bisect_left(symbol.minutes, minute), minute)
            elif units > bar[1]:
                bar[1] = units
            elif units < bar[2]:
                bar[2] = units
            bar[3] = units
            bar[4] += quantity
            bar[5] += 1
            bar[7] = trade_id
        symbol.price_units = units

    def tape(self, instrument: str) -> list[dict[str, object]]:
        """Every trade ever published on ``instrument``, in order, as µs wire dicts."""
        symbol = self._symbols[instrument]
        return [symbol.trade(i) for i in range(len(symbol.tape_time))]

    def publish_bar(self, instrument: str, *, closed: bool) -> dict[str, object]:
        """Push the current minute's kline to ``@kline_1m`` subscribers. ``closed=True`` sends it
        final (``x: true``), as if the minute ended now. Returns the µs wire dict."""
        now = self._now_us()
        return self._publish_bar_at(instrument, now - now % MINUTE_US, closed=closed)

    def publish_ticker(self, instrument: str) -> dict[str, object]:
        """Push a bookTicker around the last trade price; returns the wire dict."""
        symbol = self._symbols[instrument]
        symbol.book_update_id += self._rng.randint(1, 5)
        qty_scale = 10**symbol.quantity_decimals
        payload: dict[str, object] = {
            "u": symbol.book_update_id,
            "s": instrument,
            "b": symbol.price_text(max(1, symbol.price_units - 1)),
            "B": symbol.quantity_text(self._rng.randint(1, qty_scale)),
            "a": symbol.price_text(symbol.price_units),
            "A": symbol.quantity_text(self._rng.randint(1, qty_scale)),
        }
        self._deliver(f"{instrument.lower()}@bookTicker", [payload], ())
        return payload

    def send_server_shutdown(self) -> None:
        """Send the ``serverShutdown`` event to every live connection."""
        payload: dict[str, object] = {"e": "serverShutdown", "E": self._now_us()}
        for conn in self._connections:
            conn.push(self._render(conn, "!serverShutdown", payload, ("E",)))

    def inject_raw(self, frame: str | bytes) -> None:
        data = frame.encode() if isinstance(frame, str) else frame
        for conn in self._connections:
            conn.push(data)

    async def abort_connections(self) -> None:
        for conn in list(self._connections):
            transport = conn.request.transport
            if transport is not None:
                transport.abort()
        await self._wait_until(lambda: not self._connections)

    def connection_count(self) -> int:
        return len(self._connections)

    async def wait_subscribed(self, instrument: str, channel: str, connections: int = 1) -> None:
        symbol = instrument.lower()
        matches: Callable[[str], bool]
        if channel == "trades":
            matches = f"{symbol}@trade".__eq__
        elif channel == "tickers":
            matches = f"{symbol}@bookTicker".__eq__
        elif channel == "bars":
            matches = re.compile(rf"^{re.escape(symbol)}@kline_").match  # type: ignore[assignment]
        else:
            raise ValueError(f"unknown channel {channel!r}")

        def enough() -> bool:
            subscribed = sum(1 for c in self._connections if any(map(matches, c.streams)))
            return subscribed >= connections

        await self._wait_until(enough)

    async def wait_for(self, predicate: Callable[[], bool]) -> None:
        """Return once ``predicate()`` holds; re-checked whenever connections, subscriptions
        or pongs change."""
        await self._wait_until(predicate)

    def subscriptions(self) -> list[list[str]]:
        """The streams of every live connection."""
        return [list(c.streams) for c in self._connections]

    async def stream_trades(self, instrument: str, rate_per_s: float, duration: float) -> int:
        """Publish trades at about ``rate_per_s`` for ``duration`` seconds; returns the count."""
        loop = asyncio.get_running_loop()
        start = loop.time()
        total = int(rate_per_s * duration)
        published = 0
        # Batching per loop tick keeps the cost per trade low at benchmark rates.
        tick = min(max(1.0 / rate_per_s, 0.001), 0.05) if rate_per_s > 0 else duration
        while published < total:
            elapsed = loop.time() - start
            due = min(total, int(rate_per_s * elapsed)) - published
            if due > 0:
                self.flood_trades(instrument, due)
                published += due
            if elapsed >= duration:
                due = total - published
                if due > 0:
                    self.publish_trades(instrument, due)
                    published += due
                break
            await asyncio.sleep(tick)
        return published

    # --- extra controls for tests ---------------------------------------------------------

    def forget_trades_before(self, instrument: str, trade_id: int) -> None:
        """History endpoints stop serving trades older than ``trade_id`` (as if archived)."""
        self._symbols[instrument].served_from_id = trade_id

    def inject_http_error(
        self, status: int, count: int = 1, retry_after: float | None = None
    ) -> None:
        """The next ``count`` REST requests answer ``status`` (with ``Retry-After`` if given)."""
        for _ in range(count):
            self._injected_errors.append((status, retry_after))

    def take_injected_error(self) -> tuple[int, float | None] | None:
        """The next injected HTTP error (status, Retry-After), consumed; None if none."""
        return self._injected_errors.popleft() if self._injected_errors else None

    def symbol_rules(self, instrument: str) -> SymbolRules:
        """What the trading side needs of a symbol: assets, tick and step, top of book."""
        symbol = self._symbols[instrument]
        tick = Decimal(1).scaleb(-symbol.price_decimals)
        return SymbolRules(
            base=symbol.base,
            quote=symbol.quote,
            tick=tick,
            step=Decimal(1).scaleb(-symbol.quantity_decimals),
            min_notional=Decimal(symbol.min_notional),
            bid=Decimal(max(1, symbol.price_units - 1)) * tick,
            ask=Decimal(symbol.price_units) * tick,
        )

    def now_us(self) -> int:
        """The venue's clock (µs): real time plus ``clock_offset_ms``."""
        return self._now_us()

    # --- internals: market streams ---------------------------------------------------------

    def _add_symbol(self, name: str, **details: object) -> None:
        price_decimals = int(str(details.get("price_decimals", 2)))
        quantity_decimals = int(str(details.get("quantity_decimals", 5)))
        price = Decimal(str(details.get("price", "100")))
        self._symbols[name] = _Symbol(
            name=name,
            base=str(details.get("base", name[:-4] if name.endswith("USDT") else name[:3])),
            quote=str(details.get("quote", "USDT" if name.endswith("USDT") else name[3:])),
            status=str(details.get("status", "TRADING")),
            price_decimals=price_decimals,
            quantity_decimals=quantity_decimals,
            min_notional=str(details.get("min_notional", "5.00000000")),
            price_units=int(price.scaleb(price_decimals)),
            first_trade_id=self._rng.randrange(1_000_000, 3_000_000_000),
        )
        symbol = self._symbols[name]
        symbol.served_from_id = symbol.first_trade_id

    def _now_us(self) -> int:
        return time.time_ns() // 1000 + self.clock_offset_ms * 1000

    def _render(
        self, conn: _Connection, stream: str, payload: dict[str, object], time_keys: Iterable[str]
    ) -> bytes:
        if not conn.microseconds:
            payload = _in_milliseconds(payload, time_keys)
        if conn.combined:
            return b'{"stream":"%s","data":%s}' % (stream.encode(), _encode(payload))
        return _encode(payload)

    def _deliver(
        self, stream: str, payloads: list[dict[str, object]], time_keys: tuple[str, ...]
    ) -> None:
        self._fan_out(
            stream, lambda conn: [self._render(conn, stream, p, time_keys) for p in payloads]
        )

    def _fan_out(self, stream: str, render: Callable[[_Connection], list[bytes]]) -> None:
        """Queue frames on every connection streaming ``stream``; ``render`` makes them once
        per connection shape (combined or not, µs or ms)."""
        frames: dict[tuple[bool, bool], list[bytes]] = {}
        for conn in self._connections:
            if stream not in conn.streams:
                continue
            shape = (conn.combined, conn.microseconds)
            rendered = frames.get(shape)
            if rendered is None:
                rendered = frames[shape] = render(conn)
            conn.outbox.extend(rendered)
            conn.wakeup.set()

    def _publish_bar_at(self, instrument: str, open_us: int, *, closed: bool) -> dict[str, object]:
        symbol = self._symbols[instrument]
        kline = self._kline(symbol, open_us, MINUTE_US)
        payload: dict[str, object] = {
            "e": "kline",
            "E": self._now_us(),
            "s": instrument,
            "k": {
                "t": open_us,
                "T": open_us + MINUTE_US - 1,
                "s": instrument,
                "i": "1m",
                "f": kline.first_id,
                "L": kline.last_id,
                "o": symbol.price_text(kline.open),
                "c": symbol.price_text(kline.close),
                "h": symbol.price_text(kline.high),
                "l": symbol.price_text(kline.low),
                "v": symbol.quantity_text(kline.volume),
                "n": kline.count,
                "x": closed,
                "q": _quote_volume(symbol, kline),
                "V": "0.00000000",
                "Q": "0.00000000",
                "B": "0",
            },
        }
        self._deliver(f"{instrument.lower()}@kline_1m", [payload], ("E", "k.t", "k.T"))
        return payload

    def _kline(self, symbol: _Symbol, open_us: int, length_us: int) -> _Kline:
        """The bar [open_us, open_us + length_us): from the tape, or synthetic without trades."""
        minutes = symbol.minutes
        start = bisect_left(minutes, open_us)
        stop = bisect_right(minutes, open_us + length_us - 1)
        if start < stop:
            bars = [symbol.minute_bars[m] for m in minutes[start:stop]]
            return _Kline(
                open=bars[0][0],
                high=max(b[1] for b in bars),
                low=min(b[2] for b in bars),
                close=bars[-1][3],
                volume=sum(b[4] for b in bars),
                count=sum(b[5] for b in bars),
                first_id=bars[0][6],
                last_id=bars[-1][7],
            )
        seed = zlib.crc32(f"{self.seed}/{symbol.name}/{length_us}/{open_us}".encode())
        rng = random.Random(seed)
        base = max(10, symbol.price_units)
        spread = max(1, base // 500)
        open_ = base + rng.randint(-spread, spread)
        close = base + rng.randint(-spread, spread)
        return _Kline(
            open=open_,
            high=max(open_, close) + rng.randint(0, spread),
            low=max(1, min(open_, close) - rng.randint(0, spread)),
            close=close,
            volume=rng.randint(1, 10 ** (symbol.quantity_decimals + 2)),
            count=rng.randint(1, 500),
            first_id=-1,
            last_id=-1,
        )

    async def _handle_combined(self, request: web.Request) -> web.StreamResponse:
        raw = request.query.get("streams", "")
        return await self._serve_websocket(request, [s for s in raw.split("/") if s], True)

    async def _handle_raw(self, request: web.Request) -> web.StreamResponse:
        tail = request.match_info.get("tail", "")
        return await self._serve_websocket(request, [s for s in tail.split("/") if s], False)

    async def _serve_websocket(
        self, request: web.Request, streams: list[str], combined: bool
    ) -> web.StreamResponse:
        unit = request.query.get("timeUnit", "MILLISECOND").upper()
        if unit not in ("MILLISECOND", "MICROSECOND"):
            return web.json_response({"code": -1100, "msg": "Invalid timeUnit."}, status=400)
        bad = [s for s in streams if not _STREAM_NAME.match(s)]
        if bad:
            return web.json_response({"code": 2, "msg": f"Invalid stream {bad[0]!r}"}, status=400)
        if len(set(streams)) > self.max_streams_per_connection:
            return web.json_response(
                {"code": 2, "msg": f"more than {self.max_streams_per_connection} streams"},
                status=400,
            )
        ws = web.WebSocketResponse(autoping=False, compress=False)
        await ws.prepare(request)
        conn = _Connection(
            ws=ws,
            request=request,
            streams=dict.fromkeys(streams),
            combined=combined,
            microseconds=unit == "MICROSECOND",
        )
        self._connections.add(conn)
        await self._notify()
        writer = asyncio.create_task(self._write_loop(conn))
        pinger = asyncio.create_task(self._ping_loop(conn))
        try:
            await self._read_loop(conn)
        finally:
            self._connections.discard(conn)
            writer.cancel()
            pinger.cancel()
            await asyncio.gather(writer, pinger, return_exceptions=True)
            if not ws.closed:
                await ws.close()
            await self._notify()
        return ws

    async def _read_loop(self, conn: _Connection) -> None:
        loop = asyncio.get_running_loop()
        async for message in conn.ws:
            now = loop.time()
            incoming = conn.incoming
            incoming.append(now)
            while incoming and incoming[0] <= now - 1.0:
                incoming.popleft()
            if len(incoming) > self.max_incoming_per_second:
                self.disconnects_for_rate += 1
                await conn.ws.close(code=1008, message=b"Too many messages")
                return
            if message.type is WSMsgType.TEXT:
                reply = self._control(conn, message.data)
                if reply is not None:
                    conn.push(_encode(reply))
                await self._notify()
            elif message.type is WSMsgType.PING:
                await conn.ws.pong(message.data)
            elif (
                message.type is WSMsgType.PONG
                and conn.unanswered_pings.pop(bytes(message.data), None) is not None
            ):
                conn.pongs += 1
                self.pongs_received += 1
                await self._notify()

    async def _write_loop(self, conn: _Connection) -> None:
        ws, outbox, wakeup = conn.ws, conn.outbox, conn.wakeup
        while True:
            await wakeup.wait()
            wakeup.clear()
            while outbox:
                await ws.send_frame(outbox.popleft(), WSMsgType.TEXT)

    async def _ping_loop(self, conn: _Connection) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(self.ping_interval)
            now = loop.time()
            if any(now - sent > self.pong_timeout for sent in conn.unanswered_pings.values()):
                await conn.ws.close(code=1008, message=b"Pong timeout")
                return
            payload = str(self._now_us() // 1000).encode()
            conn.unanswered_pings[payload] = now
            await conn.ws.ping(payload)

    def _control(self, conn: _Connection, text: str) -> dict[str, Any] | None:
        try:
            request = json.loads(text)
        except ValueError as exc:
            return {"code": 3, "msg": f"Invalid JSON: {exc}"}
        if not isinstance(request, dict):
            return {"code": 3, "msg": "Invalid JSON: expected an object"}
        request_id = request.get("id")
        if not (
            request_id is None
            or (isinstance(request_id, int) and not isinstance(request_id, bool))
            or (isinstance(request_id, str) and re.fullmatch(r"[A-Za-z0-9-]{1,36}", request_id))
        ):
            return {"code": 2, "msg": "Invalid request: request ID must be an unsigned integer"}
        method = request.get("method")
        if method not in _METHODS:
            return {
                "code": 2,
                "msg": f"Invalid request: unknown variant `{method}`, expected one of "
                + ", ".join(f"`{m}`" for m in _METHODS),
                "id": request_id,
            }
        params = request.get("params", [])
        self.requests.append((str(method), json.dumps(params)))
        if not isinstance(params, list):
            return {"code": 2, "msg": "Invalid request: params must be an array", "id": request_id}
        if method == "LIST_SUBSCRIPTIONS":
            return {"result": list(conn.streams), "id": request_id}
        if method == "SET_PROPERTY":
            if len(params) == 2 and params[0] == "combined" and isinstance(params[1], bool):
                conn.combined = params[1]
                return {"result": None, "id": request_id}
            return {"code": 0, "msg": "Unknown property", "id": request_id}
        if method == "GET_PROPERTY":
            if params == ["combined"]:
                return {"result": conn.combined, "id": request_id}
            return {"code": 0, "msg": "Unknown property", "id": request_id}
        bad = [p for p in params if not isinstance(p, str) or not _STREAM_NAME.match(p)]
        if bad:
            return {
                "code": 2,
                "msg": f"Invalid request: invalid stream {bad[0]!r}",
                "id": request_id,
            }
        if method == "SUBSCRIBE":
            after = dict.fromkeys([*conn.streams, *params])
            if len(after) > self.max_streams_per_connection:
                return {
                    "code": 2,
                    "msg": f"Invalid request: at most {self.max_streams_per_connection} streams "
                    "per connection",
                    "id": request_id,
                }
            conn.streams = after
        else:
            for stream in params:
                conn.streams.pop(stream, None)
        return {"result": None, "id": request_id}

    async def _notify(self) -> None:
        async with self._changed:
            self._changed.notify_all()

    async def _wait_until(self, predicate: Callable[[], bool]) -> None:
        async with self._changed:
            await self._changed.wait_for(predicate)

    # --- internals: REST ------------------------------------------------------------------

    async def _handle_rest(self, request: web.Request) -> web.StreamResponse:
        self.requests.append((request.method, request.path_qs))
        if self.http_delay:
            await asyncio.sleep(self.http_delay)
        microseconds = request.headers.get("X-MBX-TIME-UNIT", "").upper() == "MICROSECOND"
        if self._injected_errors:
            status, retry_after = self._injected_errors.popleft()
            return self._error_response(
                status, -1003 if status in (418, 429) else -1000, "Injected.", retry_after
            )
        refused = self.charge_weight(_ENDPOINT_WEIGHT[request.path])
        if refused is not None:
            return refused
        try:
            body = self._rest_body(request.path, request.query, microseconds)
        except _RequestProblem as problem:
            return self._error_response(problem.status, problem.code, problem.message, None)
        return web.Response(
            body=_encode(body),
            content_type="application/json",
            headers={"X-MBX-USED-WEIGHT-1M": str(self._weight_used)},
        )

    def charge_weight(self, weight: int) -> web.Response | None:
        """Count a request's weight against the IP's minute (market data and trading share
        it): None if it may be answered, else the venue's 418 (banned) or 429 (over)."""
        now = time.time()
        if now < self._banned_until:
            return self._error_response(
                418,
                -1003,
                "Way too much request weight used; IP banned until "
                f"{int(self._banned_until * 1000)}. Please use WebSocket Streams for live "
                "updates to avoid bans.",
                self._banned_until - now,
            )
        window = int(now // self.weight_window)
        if window != self._weight_window_index:
            self._weight_window_index = window
            self._weight_used = 0
        if now < self._rate_limited_until:
            self._banned_until = now + self.ban_seconds
            return self._error_response(
                418, -1003, "IP banned after ignoring a 429.", self.ban_seconds
            )
        self._weight_used += weight
        if self._weight_used > self.weight_limit:
            window_end = (window + 1) * self.weight_window
            self._rate_limited_until = window_end
            return self._error_response(
                429,
                -1003,
                f"Too much request weight used; current limit is {self.weight_limit} request "
                "weight per 1 MINUTE. Please use WebSocket Streams for live updates to avoid "
                "polling the API.",
                window_end - now,
            )
        return None

    def weight_headers(self) -> dict[str, str]:
        return {"X-MBX-USED-WEIGHT-1M": str(self._weight_used)}

    def _error_response(
        self, status: int, code: int, message: str, retry_after: float | None
    ) -> web.Response:
        headers = {"X-MBX-USED-WEIGHT-1M": str(self._weight_used)}
        if retry_after is not None:
            headers["Retry-After"] = str(max(0, math.ceil(retry_after)))
        return web.Response(
            body=_encode({"code": code, "msg": message}),
            status=status,
            content_type="application/json",
            headers=headers,
        )

    def _rest_body(self, path: str, query: Any, microseconds: bool) -> object:
        factor = 1 if microseconds else 1000
        if path == "/api/v3/ping":
            return {}
        if path == "/api/v3/time":
            return {"serverTime": self._now_us() // factor}
        if path == "/api/v3/exchangeInfo":
            return self._exchange_info(query, factor)
        symbol = self._symbol_param(query)
        limit = _int_param(query, "limit", 500)
        if not 1 <= limit <= 1000:
            raise _RequestProblem(400, -1130, "Data sent for parameter 'limit' is not valid.")
        if path == "/api/v3/klines":
            return self._klines(symbol, query, limit, factor)
        served = range(symbol.served_from_id - symbol.first_trade_id, len(symbol.tape_time))
        if path == "/api/v3/historicalTrades" and "fromId" in query:
            from_id = max(_int_param(query, "fromId", 0), symbol.served_from_id)
            start = from_id - symbol.served_from_id
            rows = served[start : start + limit]
        else:
            rows = served[-limit:]
        return [_rest_trade(symbol, index, factor) for index in rows]

    def _symbol_param(self, query: Any) -> _Symbol:
        name = query.get("symbol")
        if not name:
            raise _RequestProblem(
                400,
                -1102,
                "Mandatory parameter 'symbol' was not sent, was empty/null, or malformed.",
            )
        symbol = self._symbols.get(name)
        if symbol is None:
            raise _RequestProblem(400, -1121, "Invalid symbol.")
        return symbol

    def _exchange_info(self, query: Any, factor: int) -> dict[str, object]:
        names = list(self._symbols)
        if "symbol" in query:
            names = [self._symbol_param(query).name]
        elif "symbols" in query:
            try:
                names = list(json.loads(query["symbols"]))
            except ValueError:
                raise _RequestProblem(
                    400, -1100, "Illegal characters found in parameter 'symbols'."
                ) from None
            if any(n not in self._symbols for n in names):
                raise _RequestProblem(400, -1121, "Invalid symbol.")
        return {
            "timezone": "UTC",
            "serverTime": self._now_us() // factor,
            "rateLimits": [
                {
                    "rateLimitType": "REQUEST_WEIGHT",
                    "interval": "MINUTE",
                    "intervalNum": 1,
                    "limit": self.weight_limit,
                },
                *(
                    {
                        "rateLimitType": "ORDERS",
                        "interval": interval,
                        "intervalNum": number,
                        "limit": limit,
                    }
                    for interval, number, limit in self.order_limits
                ),
                {
                    "rateLimitType": "RAW_REQUESTS",
                    "interval": "MINUTE",
                    "intervalNum": 5,
                    "limit": 61000,
                },
            ],
            "exchangeFilters": [],
            "symbols": [_symbol_info(self._symbols[n]) for n in names],
        }

    def _klines(self, symbol: _Symbol, query: Any, limit: int, factor: int) -> list[list[object]]:
        interval = query.get("interval", "")
        length = _INTERVAL_US.get(interval)
        if length is None:
            raise _RequestProblem(400, -1120, "Invalid interval.")
        now = self._now_us()
        current_open = now - now % length
        end = min(_time_param(query, "endTime", current_open), current_open)
        if "startTime" in query:
            start = _time_param(query, "startTime", 0)
            first = -(-start // length) * length
        else:
            first = end - end % length - (limit - 1) * length
        opens = range(first, end + 1, length)[:limit]
        rows: list[list[object]] = []
        for open_us in opens:
            kline = self._kline(symbol, open_us, length)
            rows.append(
                [
                    open_us // factor,
                    symbol.price_text(kline.open),
                    symbol.price_text(kline.high),
                    symbol.price_text(kline.low),
                    symbol.price_text(kline.close),
                    symbol.quantity_text(kline.volume),
                    (open_us + length - 1) // factor,
                    _quote_volume(symbol, kline),
                    kline.count,
                    "0.00000000",
                    "0.00000000",
                    "0",
                ]
            )
        return rows


@dataclass
class _Kline:
    open: int
    high: int
    low: int
    close: int
    volume: int
    count: int
    first_id: int
    last_id: int


# Indexed by 4 and 3 random bits: small steps and small sizes are the common ones.
_PRICE_STEPS: Final = (-3, -2, -2, -1, -1, -1, 0, 0, 0, 0, 1, 1, 1, 2, 2, 3)
_QUANTITY_MULTIPLIERS: Final = (1, 1, 1, 1, 2, 2, 5, 10)

_DEFAULT_SYMBOLS: Final[list[tuple[str, dict[str, object]]]] = [
    ("BTCUSDT", {"price": "60000.00", "price_decimals": 2, "quantity_decimals": 5}),
    ("ETHUSDT", {"price": "3000.00", "price_decimals": 2, "quantity_decimals": 4}),
    ("BNBUSDT", {"price": "550.0", "price_decimals": 1, "quantity_decimals": 3}),
    (
        "ETHBTC",
        {
            "price": "0.05000",
            "price_decimals": 5,
            "quantity_decimals": 4,
            "min_notional": "0.00010000",
        },
    ),
    (
        "LUNAUSDT",
        {
            "price": "0.40",
            "status": "BREAK",
            "price_decimals": 4,
            "quantity_decimals": 2,
            "min_notional": "1.00000000",
        },
    ),
]


def _in_milliseconds(payload: dict[str, object], time_keys: Iterable[str]) -> dict[str, object]:
    converted = dict(payload)
    for key in time_keys:
        if key.startswith("k."):
            inner = dict(converted["k"])  # type: ignore[call-overload]
            inner[key[2:]] = int(inner[key[2:]]) // 1000
            converted["k"] = inner
        else:
            converted[key] = int(converted[key]) // 1000  # type: ignore[call-overload]
    return converted


def _quote_volume(symbol: _Symbol, kline: _Kline) -> str:
    average = Decimal(kline.open + kline.close).scaleb(-symbol.price_decimals) / 2
    volume = Decimal(kline.volume).scaleb(-symbol.quantity_decimals)
    return f"{(average * volume).quantize(Decimal('0.00000001')):f}"


def _rest_trade(symbol: _Symbol, index: int, factor: int) -> dict[str, object]:
    price = symbol.price_text(symbol.tape_price[index])
    quantity = symbol.quantity_text(symbol.tape_quantity[index])
    quote = (Decimal(price) * Decimal(quantity)).quantize(Decimal("0.00000001"))
    return {
        "id": symbol.first_trade_id + index,
        "price": price,
        "qty": quantity,
        "quoteQty": f"{quote:f}",
        "time": symbol.tape_time[index] // factor,
        "isBuyerMaker": bool(symbol.tape_maker[index]),
        "isBestMatch": True,
    }


def _symbol_info(symbol: _Symbol) -> dict[str, object]:
    tick = _decimal_text(1, symbol.price_decimals)
    step = _decimal_text(1, symbol.quantity_decimals)
    return {
        "symbol": symbol.name,
        "status": symbol.status,
        "baseAsset": symbol.base,
        "baseAssetPrecision": 8,
        "quoteAsset": symbol.quote,
        "quotePrecision": 8,
        "quoteAssetPrecision": 8,
        "baseCommissionPrecision": 8,
        "quoteCommissionPrecision": 8,
        "orderTypes": ["LIMIT", "LIMIT_MAKER", "MARKET", "STOP_LOSS_LIMIT", "TAKE_PROFIT_LIMIT"],
        "icebergAllowed": True,
        "ocoAllowed": True,
        "otoAllowed": True,
        "quoteOrderQtyMarketAllowed": True,
        "allowTrailingStop": True,
        "cancelReplaceAllowed": True,
        "isSpotTradingAllowed": True,
        "isMarginTradingAllowed": False,
        "filters": [
            {
                "filterType": "PRICE_FILTER",
                "minPrice": tick,
                "maxPrice": "1000000.00000000",
                "tickSize": tick,
            },
            {"filterType": "LOT_SIZE", "minQty": step, "maxQty": "9000.00000000", "stepSize": step},
            {"filterType": "ICEBERG_PARTS", "limit": 10},
            {
                "filterType": "MARKET_LOT_SIZE",
                "minQty": "0.00000000",
                "maxQty": "100.00000000",
                "stepSize": "0.00000000",
            },
            {
                "filterType": "TRAILING_DELTA",
                "minTrailingAboveDelta": 10,
                "maxTrailingAboveDelta": 2000,
                "minTrailingBelowDelta": 10,
                "maxTrailingBelowDelta": 2000,
            },
            {
                "filterType": "PERCENT_PRICE_BY_SIDE",
                "bidMultiplierUp": "5",
                "bidMultiplierDown": "0.2",
                "askMultiplierUp": "5",
                "askMultiplierDown": "0.2",
                "avgPriceMins": 5,
            },
            {
                "filterType": "NOTIONAL",
                "minNotional": symbol.min_notional,
                "applyMinToMarket": True,
                "maxNotional": "9000000.00000000",
                "applyMaxToMarket": False,
                "avgPriceMins": 5,
            },
            {"filterType": "MAX_NUM_ORDERS", "maxNumOrders": 200},
            {"filterType": "MAX_NUM_ALGO_ORDERS", "maxNumAlgoOrders": 5},
        ],
        "permissions": [],
        "permissionSets": [["SPOT"]],
        "defaultSelfTradePreventionMode": "EXPIRE_MAKER",
        "allowedSelfTradePreventionModes": ["EXPIRE_TAKER", "EXPIRE_MAKER", "EXPIRE_BOTH"],
    }


def _int_param(query: Any, name: str, default: int) -> int:
    raw = query.get(name)
    if raw is None:
        return default
    try:
        return int(raw)
    except ValueError:
        raise _RequestProblem(
            400,
            -1100,
            f"Illegal characters found in parameter '{name}'; legal range is '^[0-9]{{1,20}}$'.",
        ) from None


def _time_param(query: Any, name: str, default_us: int) -> int:
    """A timestamp parameter in µs (the venue accepts ms or µs and tells them apart by size)."""
    if name not in query:
        return default_us
    value = _int_param(query, name, 0)
    return value if value >= _MICROSECOND_THRESHOLD else value * 1000


# --- standalone -------------------------------------------------------------------------------


async def _feed(fake: FakeBinance, trades_per_second: float) -> None:
    """Trades, kline updates (every 2 s, final at each minute's end) and book tickers."""
    loop = asyncio.get_running_loop()
    start = loop.time()
    published = dict.fromkeys(fake.instruments, 0)
    last_bar = last_ticker = start
    current_minute = fake._now_us() // MINUTE_US
    while True:
        await asyncio.sleep(0.01)
        now = loop.time()
        for name in fake.instruments:
            due = int(trades_per_second * (now - start)) - published[name]
            if due > 0:
                fake.publish_trades(name, due)
                published[name] += due
        minute = fake._now_us() // MINUTE_US
        if minute != current_minute:
            for name in fake.instruments:
                fake._publish_bar_at(name, current_minute * MINUTE_US, closed=True)
            current_minute = minute
        if now - last_bar >= 2.0:
            last_bar = now
            for name in fake.instruments:
                fake.publish_bar(name, closed=False)
        if now - last_ticker >= 0.1:
            last_ticker = now
            for name in fake.instruments:
                fake.publish_ticker(name)


async def _serve(host: str, port: int, seed: int, trades_per_second: float) -> None:
    fake = FakeBinance(seed=seed, host=host, port=port)
    await fake.start()
    print(json.dumps({"ws_url": fake.ws_url, "rest_url": fake.rest_url}), flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    try:
        async with asyncio.TaskGroup() as group:
            feeder = group.create_task(_feed(fake, trades_per_second))
            await stop.wait()
            feeder.cancel()
    finally:
        await fake.stop()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m tradingd.testing.fake_binance",
        description="A fake Binance spot exchange on loopback. Prints its ws_url and rest_url "
        "as JSON on the first line, then publishes market data until SIGINT/SIGTERM.",
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0: any free port")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument(
        "--trades-per-second",
        type=float,
        default=10.0,
        help="trades per second published for each default instrument",
    )
    args = parser.parse_args(argv)
    uvloop.run(_serve(args.host, args.port, args.seed, args.trades_per_second))


if __name__ == "__main__":
    main()
