"""A protocol-faithful fake Deribit (API v2) on loopback: JSON-RPC over WebSocket and HTTP.

It speaks the wire formats of the real venue (envelopes with usIn/usOut/usDiff/testnet,
``subscription`` notifications, heartbeats with ``test_request``, the error codes of the
official table, credit-based rate limiting with ``10028``) so that the adapter, the demo and
the benchmark run against something that behaves like Deribit, without the internet.

Run standalone: ``python -m tradingd.testing.fake_deribit [--port N] [--trades-per-second R]``.
"""

from __future__ import annotations

import argparse
import asyncio
import calendar
import collections
import contextlib
import datetime as dt
import inspect
import itertools
import json
import random
import re
import signal
import sys
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, Final, cast

import msgspec
from aiohttp import WSCloseCode, WSMsgType, web
from loguru import logger

# ------------------------------------------------------------------------------ wire helpers

_ENCODER: Final = msgspec.json.Encoder(decimal_format="number")
_MAX_REQUEST_BYTES: Final = 32 * 1024
_PERPETUAL_EXPIRATION_MS: Final = 32_503_708_800_000
_VERSION: Final = "1.2.26"

# Error codes and messages from Deribit's complete RPC error table.
AUTHORIZATION_REQUIRED: Final = (10000, "authorization_required")
TOO_MANY_REQUESTS: Final = (10028, "too_many_requests")
MUST_BE_WEBSOCKET_REQUEST: Final = (10030, "must_be_websocket_request")
BAD_REQUEST: Final = (11050, "bad_request")
RAW_NOT_AVAILABLE: Final = (13778, "raw_subscriptions_not_available_for_unauthorized")
ENTITY_TOO_LARGE: Final = (-32600, "request entity too large")
METHOD_NOT_FOUND: Final = (-32601, "Method not found")
INVALID_PARAMS: Final = (-32602, "Invalid params")
PARSE_ERROR: Final = (-32700, "Parse error")

_CHART_RESOLUTIONS: Final[Mapping[str, int]] = {
    **{str(m): m * 60_000 for m in (1, 3, 5, 10, 15, 30, 60, 120, 180, 360, 720)},
    "1D": 86_400_000,
}
_CHANNEL = re.compile(
    r"^(?:(?P<kind>trades|ticker)\.(?P<inst>[^.]+)\.(?P<interval>100ms|agg2|raw)"
    r"|chart\.trades\.(?P<chart_inst>[^.]+)\.(?P<resolution>1D|[0-9]+))$"
)
_WS_ONLY: Final = frozenset(
    {
        "public/subscribe",
        "public/unsubscribe",
        "public/unsubscribe_all",
        "public/set_heartbeat",
        "public/disable_heartbeat",
    }
)
# Credits: cost per request and the pool each method draws from (documented defaults).
_POOL_OF: Final[Mapping[str, str]] = {
    "public/get_instruments": "get_instruments",
    "public/subscribe": "subscribe",
}
_COST_OF_POOL: Final[Mapping[str, int]] = {
    "default": 500,
    "get_instruments": 10_000,
    "subscribe": 3_000,
}


def _now_us() -> int:
    return time.time_ns() // 1000


class _RpcFailure(Exception):
    def __init__(self, error: tuple[int, str], data: object = None) -> None:
        super().__init__(error[1])
        self.code, self.message = error
        self.data = data

    def as_dict(self) -> dict[str, object]:
        error: dict[str, object] = {"code": self.code, "message": self.message}
        if self.data is not None:
            error["data"] = self.data
        return error


def _invalid(param: str, reason: str) -> _RpcFailure:
    return _RpcFailure(INVALID_PARAMS, {"reason": reason, "param": param})


@dataclass
class CreditPool:
    """One of the venue's leaky buckets: ``capacity`` credits, refilled at ``refill_per_s``."""

    capacity: float
    refill_per_s: float
    available: float = -1.0
    updated: float = field(default_factory=time.monotonic)

    def __post_init__(self) -> None:
        if self.available < 0:
            self.available = self.capacity

    def try_spend(self, cost: float) -> bool:
        now = time.monotonic()
        self.available = min(
            self.capacity, self.available + (now - self.updated) * self.refill_per_s
        )
        self.updated = now
        if self.available < cost:
            return False
        self.available -= cost
        return True


def _default_pools() -> dict[str, CreditPool]:
    return {
        "default": CreditPool(50_000, 10_000),
        "get_instruments": CreditPool(500_000, 10_000),
        "subscribe": CreditPool(30_000, 10_000),
    }


# ------------------------------------------------------------------------------ instruments


def _last_friday(year: int, month: int) -> dt.date:
    last = dt.date(year, month, calendar.monthrange(year, month)[1])
    return last - dt.timedelta(days=(last.weekday() - 4) % 7)


def _expiry_name(day: dt.date) -> str:
    return f"{day.day}{day.strftime('%b').upper()}{day.strftime('%y')}"


def _next_quarterly(today: dt.date) -> dt.date:
    """The first last-Friday of a month that is at least 30 days away."""
    year, month = today.year, today.month
    while True:
        expiry = _last_friday(year, month)
        if (expiry - today).days >= 30:
            return expiry
        year, month = (year + 1, 1) if month == 12 else (year, month + 1)


def _decimals(value: Decimal) -> int:
    exponent = value.as_tuple().exponent
    return -exponent if isinstance(exponent, int) and exponent < 0 else 0


_PRICE_STEPS: Final = (-2, -1, 0, 0, 1, 2)


@dataclass
class _Bar:
    open: Decimal
    high: Decimal
    low: Decimal
    close: Decimal
    volume: Decimal = Decimal(0)
    cost: Decimal = Decimal(0)

    def add(self, price: Decimal, volume: Decimal, cost: Decimal) -> None:
        self.high = max(self.high, price)
        self.low = min(self.low, price)
        self.close = price
        self.volume += volume
        self.cost += cost

    def wire(self, tick_ms: int) -> dict[str, object]:
        return {
            "volume": self.volume,
            "tick": tick_ms,
            "open": self.open,
            "low": self.low,
            "high": self.high,
            "cost": self.cost,
            "close": self.close,
        }


@dataclass
class _Instrument:
    name: str
    wire: dict[str, object]
    tick_size: Decimal
    amount_step: Decimal
    price_ticks: int
    contract_size: Decimal
    inverse: bool
    rng: random.Random
    trade_seq: int = 0
    tape: list[dict[str, object]] = field(default_factory=list)
    served_from_seq: int = 1
    last_price: Decimal | None = None
    bar: _Bar | None = None
    bar_tick_ms: int = 0
    # Final state of every published 1-minute bar, by open time (ms): the chart history.
    bars: dict[int, _Bar] = field(default_factory=dict)

    @property
    def price(self) -> Decimal:
        return self.tick_size * self.price_ticks

    @property
    def currency(self) -> str:
        return str(self.wire["base_currency"])

    @property
    def kind(self) -> str:
        return str(self.wire["kind"])

    def walk(self) -> Decimal:
        step = _PRICE_STEPS[int(self.rng.random() * len(_PRICE_STEPS))]
        self.price_ticks = max(1, self.price_ticks + step)
        return self.tick_size * self.price_ticks

    def random_amount(self) -> Decimal:
        return self.amount_step * (1 + int(self.rng.random() * 20))


def _instrument_wire(
    name: str, instrument_id: int, today: dt.date
) -> tuple[dict[str, Any], Decimal]:
    """Deribit-shaped get_instruments entry for a name, and a plausible starting price."""
    base = re.split(r"[-_]", name, maxsplit=1)[0]
    underlying = name.split("-", 1)[0]
    linear = "_" in underlying
    quote = underlying.split("_", 1)[1] if linear else "USD"
    spot_price = {"BTC": Decimal(60000), "ETH": Decimal(3000)}.get(base, Decimal(100))
    created = int(dt.datetime(2024, 1, 1, tzinfo=dt.UTC).timestamp() * 1000)
    wire: dict[str, Any] = {
        "tick_size": Decimal("0.5") if base == "BTC" else Decimal("0.05"),
        "tick_size_steps": [],
        "taker_commission": Decimal("0.0005"),
        "maker_commission": Decimal(0),
        "settlement_currency": quote if linear else base,
        "quote_currency": quote,
        "price_index": f"{base.lower()}_usd",
        "min_trade_amount": Decimal(10) if base == "BTC" else Decimal(1),
        "max_liquidation_commission": Decimal("0.0075"),
        "max_leverage": 50,
        "kind": "future",
        "is_active": True,
        "instrument_name": name,
        "instrument_id": instrument_id,
        "instrument_type": "linear" if linear else "reversed",
        "expiration_timestamp": _PERPETUAL_EXPIRATION_MS,
        "creation_timestamp": created,
        "counter_currency": quote,
        "contract_size": Decimal(10) if base == "BTC" else Decimal(1),
        "block_trade_tick_size": Decimal("0.01"),
        "block_trade_min_trade_amount": 200_000,
        "block_trade_commission": Decimal("0.00025"),
        "base_currency": base,
        "state": "open",
        "settlement_period": "perpetual",
    }
    parts = name.split("-")
    price = spot_price
    if len(parts) == 1:  # spot: BTC_USDC
        wire.update(
            kind="spot",
            tick_size=Decimal("0.01"),
            min_trade_amount=Decimal("0.0001"),
            contract_size=Decimal("0.0001"),
            settlement_period="perpetual",
            instrument_type="linear",
        )
        del wire["settlement_currency"]
    elif parts[-1] == "PERPETUAL":
        if linear:
            wire.update(min_trade_amount=Decimal("0.001"), contract_size=Decimal("0.001"))
    else:
        expiry = _parse_expiry(parts[1]) or _next_quarterly(today)
        expiration = (
            int(dt.datetime(expiry.year, expiry.month, expiry.day, 8, tzinfo=dt.UTC).timestamp())
            * 1000
        )
        wire.update(expiration_timestamp=expiration, settlement_period="month")
        if len(parts) == 2:
            wire.update(tick_size=Decimal("2.5") if base == "BTC" else Decimal("0.25"))
            price = spot_price + spot_price / 100
        else:
            strike = Decimal(parts[2].replace("d", "."))
            option_type = "call" if parts[3] == "C" else "put"
            tick = Decimal("0.0001") if linear else Decimal("0.0005")
            wire.update(
                kind="option",
                option_type=option_type,
                strike=strike,
                tick_size=tick,
                min_trade_amount=Decimal("0.1") if not linear else Decimal(1),
                contract_size=Decimal(1),
                quote_currency=quote if linear else base,
                max_leverage=1,
                taker_commission=Decimal("0.0003"),
                maker_commission=Decimal("0.0003"),
            )
            intrinsic = max(
                Decimal(0),
                (spot_price - strike) if option_type == "call" else (strike - spot_price),
            )
            premium = (intrinsic + spot_price * Decimal("0.05")) / spot_price
            price = premium if not linear else intrinsic + spot_price * Decimal("0.05")
    return wire, price


def _parse_expiry(text: str) -> dt.date | None:
    try:
        return dt.datetime.strptime(text.title(), "%d%b%y").date()
    except ValueError:
        return None


# ------------------------------------------------------------------------------ connections


@dataclass(eq=False)
class _Connection:
    ws: web.WebSocketResponse
    request: web.Request
    tasks: asyncio.TaskGroup
    outbox: asyncio.Queue[bytes | None] = field(default_factory=asyncio.Queue)
    channels: set[str] = field(default_factory=set)
    heartbeat: asyncio.Task[None] | None = None
    tested: asyncio.Event = field(default_factory=asyncio.Event)

    def send(self, frame: bytes) -> None:
        self.outbox.put_nowait(frame)

    def close_after_pending(self) -> None:
        self.outbox.put_nowait(None)


_Method = Callable[[dict[str, Any], _Connection | None], object]
# One WebSocket connection, as extensions see it (``send``, ``channels``, ``request``).
Connection = _Connection
RpcFailure = _RpcFailure


@dataclass(frozen=True)
class InstrumentBook:
    currency: str
    tick: Decimal
    min_amount: Decimal
    inverse: bool
    bid: Decimal
    ask: Decimal


class FakeDeribit:
    """The fake exchange; see the module docstring and the common fake control API."""

    def __init__(self, *, seed: int = 1, host: str = "127.0.0.1", port: int = 0) -> None:
        self.seed = seed
        self.host = host
        self.port = port
        self.ws_url = ""
        self.rest_url = ""
        self.instruments: list[str] = []
        self.clock_offset_ms = 0
        self.requests: list[tuple[str, str]] = []
        self.testnet = False
        # Trades per notification frame (the 100ms channel batches what happened in 100 ms).
        self.trades_per_frame = 10
        # Seconds between test_requests actually used (None: the interval the client set).
        self.heartbeat_period: float | None = None
        # Seconds the client has to answer a test_request (None: one heartbeat period).
        self.heartbeat_grace: float | None = None
        self.credit_pools: dict[str, CreditPool] = _default_pools()
        self._instruments: dict[str, _Instrument] = {}
        self._connections: set[_Connection] = set()
        self._changed = asyncio.Condition()
        self._runner: web.AppRunner | None = None
        self._http_failures: collections.deque[tuple[int, float | None]] = collections.deque()
        self._trade_ids: dict[str, itertools.count[int]] = {}
        self._instrument_ids = itertools.count(124_972)
        self._method_table = self._methods()
        # Extensions (the trading side, ``fake_deribit_trading``): methods served before the
        # built-in ones (a handler may be a coroutine function), listeners told of every trade
        # appended to a tape and of every WebSocket connection that ends.
        self.extra_methods: dict[str, _Method] = {}
        self.tape_listeners: list[Callable[[str, list[dict[str, object]]], None]] = []
        self.disconnect_listeners: list[Callable[[Connection], None]] = []
        self._today = dt.datetime.now(dt.UTC).date()
        expiry = _expiry_name(_next_quarterly(self._today))
        for name in ("BTC-PERPETUAL", "ETH-PERPETUAL", f"BTC-{expiry}", f"BTC-{expiry}-60000-C"):
            self.add_instrument(name)

    # -------------------------------------------------------------------------- lifecycle

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/ws/api/v2", self._websocket)
        app.router.add_get("/ws/api/v2/", self._websocket)
        app.router.add_route("GET", "/api/v2/{scope}/{method}", self._http)
        app.router.add_route("POST", "/api/v2/{scope}/{method}", self._http)
        self._runner = web.AppRunner(app, shutdown_timeout=1.0, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port)
        await site.start()
        self.port = int(self._runner.addresses[0][1])
        self.ws_url = f"ws://{self.host}:{self.port}/ws/api/v2"
        self.rest_url = f"http://{self.host}:{self.port}/api/v2"

    async def stop(self) -> None:
        """Close every connection (going away) and the server."""
        async with asyncio.TaskGroup() as group:
            for connection in list(self._connections):
                group.create_task(
                    connection.ws.close(code=WSCloseCode.GOING_AWAY, message=b"server shutdown")
                )
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> FakeDeribit:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    # -------------------------------------------------------------------------- control API

    def add_instrument(self, name: str, **details: object) -> None:
        """Add (or redefine) an instrument; ``details`` override its get_instruments fields.

        ``price`` sets the starting trade price instead of a get_instruments field.
        """
        wire, price = _instrument_wire(name, next(self._instrument_ids), self._today)
        start_price = details.pop("price", None)
        wire.update(details)
        tick = Decimal(str(wire["tick_size"]))
        if start_price is not None:
            price = Decimal(str(start_price))
        rng = random.Random(f"{self.seed}:{name}")
        ticks = max(1, int(price / tick))
        self._instruments[name] = _Instrument(
            name=name,
            wire=wire,
            tick_size=tick,
            amount_step=Decimal(str(wire["min_trade_amount"])),
            price_ticks=ticks,
            contract_size=Decimal(str(wire["contract_size"])),
            inverse=wire["instrument_type"] == "reversed" and wire["kind"] != "option",
            rng=rng,
        )
        if name not in self.instruments:
            self.instruments.append(name)

    def publish_trades(
        self, instrument: str, count: int, *, deliver: bool = True
    ) -> list[dict[str, object]]:
        state = self._instrument(instrument)
        now_ms = self._now_ms()
        trades = [self._next_trade(state, now_ms) for _ in range(count)]
        for listener in self.tape_listeners:
            listener(instrument, trades)
        if deliver and trades:
            step = max(1, self.trades_per_frame)
            for start in range(0, len(trades), step):
                self._publish(
                    (f"trades.{instrument}.100ms", f"trades.{instrument}.agg2"),
                    trades[start : start + step],
                )
        return trades

    def tape(self, instrument: str) -> list[dict[str, object]]:
        return list(self._instrument(instrument).tape)

    def forget_trades_before(self, instrument: str, seq: int) -> None:
        """History retention: trades with a lower trade_seq are no longer served."""
        self._instrument(instrument).served_from_seq = seq

    def publish_bar(self, instrument: str, *, closed: bool) -> dict[str, object]:
        """Push a 1-minute bar update; ``closed`` makes it the last update of its minute."""
        state = self._instrument(instrument)
        now_ms = self._now_ms()
        minute = now_ms - now_ms % 60_000
        if state.bar is None or state.bar_tick_ms < minute:
            state.bar_tick_ms = max(minute, state.bar_tick_ms)
            opening = state.last_price or state.price
            state.bar = _Bar(opening, opening, opening, opening)
        bar = state.bar
        price = state.walk()
        state.last_price = price
        amount = state.random_amount()
        bar.add(price, *self._volume_cost(state, price, amount))
        state.bars[state.bar_tick_ms] = _Bar(**vars(bar))
        data = bar.wire(state.bar_tick_ms)
        if closed:
            state.bar = None
            state.bar_tick_ms += 60_000
        self._publish((f"chart.trades.{instrument}.1",), data)
        return data

    def publish_ticker(self, instrument: str) -> dict[str, object]:
        state = self._instrument(instrument)
        data = self._ticker(state)
        self._publish((f"ticker.{instrument}.100ms", f"ticker.{instrument}.agg2"), data)
        return data

    def inject_raw(self, frame: str | bytes) -> None:
        payload = frame.encode() if isinstance(frame, str) else bytes(frame)
        for connection in self._connections:
            connection.send(payload)

    async def abort_connections(self) -> None:
        """Drop every live WebSocket connection abruptly (no close frame)."""
        for connection in list(self._connections):
            transport = connection.request.transport
            if transport is not None:
                transport.abort()
        async with self._changed:
            await self._changed.wait_for(lambda: not self._connections)

    def connection_count(self) -> int:
        return len(self._connections)

    async def wait_subscribed(self, instrument: str, channel: str, connections: int = 1) -> None:
        prefix = {
            "trades": f"trades.{instrument}.",
            "tickers": f"ticker.{instrument}.",
            "bars": f"chart.trades.{instrument}.",
        }[channel]

        def enough() -> bool:
            subscribed = sum(
                1 for c in self._connections if any(name.startswith(prefix) for name in c.channels)
            )
            return subscribed >= connections

        async with self._changed:
            await self._changed.wait_for(enough)

    async def stream_trades(self, instrument: str, rate_per_s: float, duration: float) -> int:
        """Publish trades at about ``rate_per_s`` for ``duration`` seconds; returns the count."""
        loop = asyncio.get_running_loop()
        started = loop.time()
        total = int(rate_per_s * duration)
        published = 0
        while published < total:
            elapsed = loop.time() - started
            due = min(total, int(rate_per_s * elapsed)) - published
            if due > 0:
                self.publish_trades(instrument, due)
                published += due
            if elapsed >= duration:
                due = total - published
                if due > 0:
                    self.publish_trades(instrument, due)
                    published += due
                break
            # Pacing: publish whatever is due once per tick, batched.
            await asyncio.sleep(0.002)
        return published

    # -------------------------------------------------------------------------- extra controls

    def inject_http_error(
        self, status: int, count: int = 1, retry_after: float | None = None
    ) -> None:
        """The next ``count`` HTTP requests answer ``status`` (with ``Retry-After`` if given)."""
        self._http_failures.extend([(status, retry_after)] * count)

    async def wait_for(self, predicate: Callable[[], bool]) -> None:
        """Return once ``predicate()`` holds; re-checked whenever connections or subscriptions
        change."""
        async with self._changed:
            await self._changed.wait_for(predicate)

    def subscriptions(self) -> list[list[str]]:
        """The channels of every live connection."""
        return [sorted(c.channels) for c in self._connections]

    # -------------------------------------------------------------------------- market data

    def _instrument(self, name: str) -> _Instrument:
        try:
            return self._instruments[name]
        except KeyError:
            raise KeyError(f"unknown instrument {name!r}; add_instrument() it first") from None

    def _now_ms(self) -> int:
        return time.time_ns() // 1_000_000 + self.clock_offset_ms

    def _volume_cost(
        self, state: _Instrument, price: Decimal, amount: Decimal
    ) -> tuple[Decimal, Decimal]:
        if state.inverse:
            return (amount / price).quantize(Decimal("1e-8")), amount
        return amount, (amount * price).quantize(Decimal("1e-8"))

    def _trade_id(self, currency: str) -> str:
        counter = self._trade_ids.get(currency)
        if counter is None:
            counter = self._trade_ids[currency] = itertools.count(
                random.Random(f"{self.seed}:{currency}").randrange(10_000_000, 400_000_000)
            )
        number = next(counter)
        return str(number) if currency == "BTC" else f"{currency}-{number}"

    def _next_trade(self, state: _Instrument, now_ms: int) -> dict[str, object]:
        previous = state.last_price
        price = state.walk()
        rng = state.rng
        amount = state.random_amount()
        if previous is None or price == previous:
            last_direction = state.tape[-1]["tick_direction"] if state.tape else 0
            tick_direction = 1 if last_direction in (0, 1) else 3
        else:
            tick_direction = 0 if price > previous else 2
        state.last_price = price
        state.trade_seq += 1
        index = self._index_price(state)
        trade: dict[str, object] = {
            "trade_seq": state.trade_seq,
            "trade_id": self._trade_id(state.currency),
            "timestamp": now_ms,
            "tick_direction": tick_direction,
            "price": price,
            "mark_price": price,
            "instrument_name": state.name,
            "index_price": index,
            "direction": "sell" if rng.random() < 0.5 else "buy",
            "amount": amount,
            "contracts": amount / state.contract_size,
        }
        if state.kind == "option":
            trade["iv"] = Decimal("55.5")
        state.tape.append(trade)
        return trade

    def _index_price(self, state: _Instrument) -> Decimal:
        if state.kind == "option":
            return {"BTC": Decimal("60000.00"), "ETH": Decimal("3000.00")}.get(
                state.currency, Decimal("100.00")
            )
        return state.price.quantize(Decimal("0.01"))

    def _ticker(self, state: _Instrument) -> dict[str, object]:
        price = state.last_price or state.price
        tick = state.tick_size
        bid, ask = price - tick if price > tick else price, price + tick
        rng = state.rng
        index = self._index_price(state)
        data: dict[str, object] = {
            "timestamp": self._now_ms(),
            "stats": {
                "volume": Decimal("1234.5678"),
                "price_change": Decimal("1.25"),
                "low": price * Decimal("0.97"),
                "high": price * Decimal("1.03"),
                "volume_usd": Decimal(74_000_000),
            },
            "state": "open",
            "settlement_price": price,
            "open_interest": Decimal(500_000_000),
            "min_price": (price * Decimal("0.985")).quantize(tick),
            "max_price": (price * Decimal("1.015")).quantize(tick),
            "mark_price": price,
            "last_price": price,
            "instrument_name": state.name,
            "index_price": index,
            "estimated_delivery_price": index,
            "best_bid_price": bid,
            "best_bid_amount": state.amount_step * rng.randint(1, 500),
            "best_ask_price": ask,
            "best_ask_amount": state.amount_step * rng.randint(1, 500),
        }
        if state.kind == "option":
            data.update(
                underlying_price=index,
                underlying_index=f"SYN.{state.name.rsplit('-', 2)[0]}",
                mark_iv=Decimal("55.5"),
                bid_iv=Decimal("54.1"),
                ask_iv=Decimal("56.9"),
                interest_rate=Decimal(0),
                greeks={
                    "delta": Decimal("0.5"),
                    "gamma": Decimal("0.00002"),
                    "vega": Decimal("60.1"),
                    "theta": Decimal("-40.2"),
                    "rho": Decimal("20.3"),
                },
            )
        elif state.wire["settlement_period"] == "perpetual" and state.kind == "future":
            data.update(
                current_funding=Decimal(0),
                funding_8h=Decimal("0.0000211"),
                interest_value=Decimal("0.0028213400122472977"),
            )
        return data

    def _publish(self, channels: Iterable[str], data: object) -> None:
        frames: dict[str, bytes] = {}
        for connection in self._connections:
            for channel in channels:
                if channel in connection.channels:
                    frame = frames.get(channel)
                    if frame is None:
                        frame = frames[channel] = _ENCODER.encode(
                            {
                                "jsonrpc": "2.0",
                                "method": "subscription",
                                "params": {"channel": channel, "data": data},
                            }
                        )
                    connection.send(frame)

    def now_ms(self) -> int:
        """The venue's clock (ms): real time plus ``clock_offset_ms``."""
        return self._now_ms()

    def next_trade_id(self, currency: str) -> str:
        """A fresh trade id of the venue's per-currency sequence."""
        return self._trade_id(currency)

    def book(self, instrument: str) -> InstrumentBook:
        """What the trading side needs of an instrument: its top of book and sizes."""
        state = self._instrument(instrument)
        price = state.last_price or state.price
        tick = state.tick_size
        return InstrumentBook(
            currency=state.currency,
            tick=tick,
            min_amount=state.amount_step,
            inverse=state.inverse,
            bid=price - tick if price > tick else price,
            ask=price,
        )

    # -------------------------------------------------------------------------- JSON-RPC

    def _envelope(
        self,
        request_id: object,
        received_us: int,
        *,
        result: object = None,
        error: _RpcFailure | None = None,
    ) -> bytes:
        out_us = _now_us()
        message: dict[str, object] = {"jsonrpc": "2.0"}
        if request_id is not None or error is not None:
            message["id"] = request_id
        if error is not None:
            message["error"] = error.as_dict()
        else:
            message["result"] = result
        message.update(
            usIn=received_us, usOut=out_us, usDiff=out_us - received_us, testnet=self.testnet
        )
        return _ENCODER.encode(message)

    def _charge(self, method: str) -> None:
        pool_name = _POOL_OF.get(method, "default")
        pool = self.credit_pools.get(pool_name)
        if pool is not None and not pool.try_spend(_COST_OF_POOL[pool_name]):
            raise _RpcFailure(TOO_MANY_REQUESTS)

    def _dispatch(
        self, method: str, params: dict[str, Any], connection: _Connection | None
    ) -> object:
        extra = self.extra_methods.get(method)
        if extra is not None:
            self._charge(method)
            return extra(params, connection)
        if not method.startswith("public/"):
            if method.startswith("private/"):
                raise _RpcFailure(AUTHORIZATION_REQUIRED)
            raise _RpcFailure(METHOD_NOT_FOUND)
        handler = self._method_table.get(method)
        if handler is None:
            raise _RpcFailure(METHOD_NOT_FOUND)
        if method in _WS_ONLY and connection is None:
            raise _RpcFailure(MUST_BE_WEBSOCKET_REQUEST)
        self._charge(method)
        return handler(params, connection)

    def _methods(self) -> dict[str, _Method]:
        return {
            "public/test": lambda params, _c: {"version": _VERSION},
            "public/get_time": lambda params, _c: self._now_ms(),
            "public/get_instruments": self._get_instruments,
            "public/get_instrument": self._get_instrument,
            "public/ticker": lambda params, _c: self._ticker(
                self._known(_text(params, "instrument_name"))
            ),
            "public/get_tradingview_chart_data": self._get_chart_data,
            "public/get_last_trades_by_instrument": self._get_last_trades,
            "public/subscribe": self._subscribe,
            "public/unsubscribe": self._unsubscribe,
            "public/unsubscribe_all": self._unsubscribe_all,
            "public/set_heartbeat": self._set_heartbeat,
            "public/disable_heartbeat": self._disable_heartbeat,
        }

    def _known(self, name: str) -> _Instrument:
        state = self._instruments.get(name)
        if state is None:
            raise _invalid("instrument_name", "instrument not found")
        return state

    def _get_instruments(self, params: dict[str, Any], _c: _Connection | None) -> object:
        currency = _text(params, "currency")
        kind = params.get("kind")
        if kind is not None and kind not in (
            "future",
            "option",
            "spot",
            "future_combo",
            "option_combo",
        ):
            raise _invalid(
                "kind", "must be one of future, option, spot, future_combo, option_combo"
            )
        result = []
        for state in self._instruments.values():
            wire = state.wire
            if currency != "any" and currency not in (
                wire["base_currency"],
                wire.get("settlement_currency"),
                wire["quote_currency"],
            ):
                continue
            if kind is not None and wire["kind"] != kind:
                continue
            result.append(wire)
        return result

    def _get_instrument(self, params: dict[str, Any], _c: _Connection | None) -> object:
        return self._known(_text(params, "instrument_name")).wire

    def _get_chart_data(self, params: dict[str, Any], _c: _Connection | None) -> object:
        state = self._known(_text(params, "instrument_name"))
        start = _integer(params, "start_timestamp")
        end = _integer(params, "end_timestamp")
        resolution = _text(params, "resolution")
        period = _CHART_RESOLUTIONS.get(resolution)
        if period is None:
            raise _invalid("resolution", f"must be one of {', '.join(_CHART_RESOLUTIONS)}")
        bars: dict[int, _Bar] = {}
        for trade in state.tape:
            timestamp = _int_field(trade, "timestamp")
            tick = timestamp - timestamp % period
            price = _decimal_field(trade, "price")
            volume, cost = self._volume_cost(state, price, _decimal_field(trade, "amount"))
            bar = bars.get(tick)
            if bar is None:
                bars[tick] = _Bar(price, price, price, price, volume, cost)
            else:
                bar.add(price, volume, cost)
        if period == 60_000:
            bars.update(state.bars)
        ticks = sorted(tick for tick in bars if start <= tick <= end)
        wires = [bars[tick].wire(tick) for tick in ticks]
        columns = {
            name: [wire[name] for wire in wires]
            for name in ("volume", "cost", "open", "low", "high", "close")
        }
        return {**columns, "ticks": ticks, "status": "ok" if ticks else "no_data"}

    def _get_last_trades(self, params: dict[str, Any], _c: _Connection | None) -> object:
        state = self._known(_text(params, "instrument_name"))
        count = _integer(params, "count", 10)
        if not 1 <= count <= 10_000:
            raise _invalid("count", "must be between 1 and 10000")
        sorting = params.get("sorting", "default")
        if sorting not in ("asc", "desc", "default"):
            raise _invalid("sorting", "must be one of asc, desc, default")
        start_seq = _integer(params, "start_seq", None)
        end_seq = _integer(params, "end_seq", None)
        start_ts = _integer(params, "start_timestamp", None)
        end_ts = _integer(params, "end_timestamp", None)
        first_seq = max(state.served_from_seq, start_seq or 0)
        matching = [
            trade
            for trade in state.tape
            if _int_field(trade, "trade_seq") >= first_seq
            and (end_seq is None or _int_field(trade, "trade_seq") <= end_seq)
            and (start_ts is None or _int_field(trade, "timestamp") >= start_ts)
            and (end_ts is None or _int_field(trade, "timestamp") <= end_ts)
        ]
        if sorting == "desc":
            page = list(reversed(matching))[:count]
        elif start_seq is None and start_ts is None:
            page = matching[-count:]  # "last trades": the newest ones
        else:
            page = matching[:count]
        return {"trades": page, "has_more": len(matching) > count}

    def _subscribe(self, params: dict[str, Any], connection: _Connection | None) -> object:
        assert connection is not None
        channels = params.get("channels")
        if not isinstance(channels, list) or not all(isinstance(c, str) for c in channels):
            raise _invalid("channels", "must be an array of channel names")
        granted: list[str] = []
        for channel in channels:
            match = _CHANNEL.match(channel)
            if match is None:
                continue
            if match["interval"] == "raw":
                raise _RpcFailure(RAW_NOT_AVAILABLE)
            instrument = match["inst"] or match["chart_inst"]
            if match["resolution"] is not None and match["resolution"] not in _CHART_RESOLUTIONS:
                continue
            if instrument in self._instruments:
                granted.append(channel)
        connection.channels.update(granted)
        return granted

    def _unsubscribe(self, params: dict[str, Any], connection: _Connection | None) -> object:
        assert connection is not None
        channels = params.get("channels")
        if not isinstance(channels, list):
            raise _invalid("channels", "must be an array of channel names")
        removed = [c for c in channels if c in connection.channels]
        connection.channels.difference_update(removed)
        return removed

    def _unsubscribe_all(self, params: dict[str, Any], connection: _Connection | None) -> object:
        assert connection is not None
        connection.channels.clear()
        return "ok"

    def _set_heartbeat(self, params: dict[str, Any], connection: _Connection | None) -> object:
        assert connection is not None
        interval = params.get("interval")
        if isinstance(interval, bool) or not isinstance(interval, int | float):
            raise _invalid("interval", "must be a number")
        if interval < 10:
            raise _invalid("interval", "must be greater or equal to 10")
        if connection.heartbeat is not None:
            connection.heartbeat.cancel()
        connection.heartbeat = connection.tasks.create_task(
            self._heartbeat(connection, float(interval))
        )
        return "ok"

    def _disable_heartbeat(self, params: dict[str, Any], connection: _Connection | None) -> object:
        assert connection is not None
        if connection.heartbeat is not None:
            connection.heartbeat.cancel()
            connection.heartbeat = None
        return "ok"

    async def _heartbeat(self, connection: _Connection, interval: float) -> None:
        frame = _ENCODER.encode(
            {"jsonrpc": "2.0", "method": "heartbeat", "params": {"type": "test_request"}}
        )
        while True:
            period = self.heartbeat_period if self.heartbeat_period is not None else interval
            await asyncio.sleep(period)  # the venue's heartbeat interval, not a condition wait
            connection.tested.clear()
            connection.send(frame)
            grace = self.heartbeat_grace if self.heartbeat_grace is not None else period
            try:
                async with asyncio.timeout(grace):
                    await connection.tested.wait()
            except TimeoutError:
                logger.debug("fake Deribit: test_request unanswered, closing the connection")
                connection.close_after_pending()
                return

    # -------------------------------------------------------------------------- transports

    async def _websocket(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(autoping=True, timeout=2.0, max_msg_size=1 << 20)
        await ws.prepare(request)
        async with asyncio.TaskGroup() as tasks:
            connection = _Connection(ws=ws, request=request, tasks=tasks)
            self._connections.add(connection)
            await self._notify()
            writer = tasks.create_task(self._write(connection))
            try:
                async for message in ws:
                    if message.type is WSMsgType.TEXT:
                        await self._on_ws_request(connection, message.data, _now_us())
                    elif message.type is WSMsgType.BINARY:
                        failure = _RpcFailure(PARSE_ERROR)
                        connection.send(self._envelope(None, _now_us(), error=failure))
            finally:
                writer.cancel()
                if connection.heartbeat is not None:
                    connection.heartbeat.cancel()
                self._connections.discard(connection)
                for listener in self.disconnect_listeners:
                    listener(connection)
                await self._notify()
        return ws

    async def _write(self, connection: _Connection) -> None:
        ws = connection.ws
        while True:
            frame = await connection.outbox.get()
            if frame is None:
                await ws.close(code=WSCloseCode.OK, message=b"session terminated")
                return
            try:
                await ws.send_frame(frame, WSMsgType.TEXT)
            except (ConnectionError, RuntimeError):
                return

    async def _on_ws_request(self, connection: _Connection, text: str, received_us: int) -> None:
        if len(text) > _MAX_REQUEST_BYTES:
            failure = _RpcFailure(ENTITY_TOO_LARGE)
            connection.send(self._envelope(None, received_us, error=failure))
            return
        try:
            request = msgspec.json.decode(text)
        except msgspec.DecodeError:
            connection.send(self._envelope(None, received_us, error=_RpcFailure(PARSE_ERROR)))
            return
        request_id = request.get("id") if isinstance(request, dict) else None
        method = request.get("method") if isinstance(request, dict) else None
        params = request.get("params", {}) if isinstance(request, dict) else None
        if (
            not isinstance(method, str)
            or not isinstance(params, dict)
            or request_id is None
            or isinstance(request_id, bool | float | list | dict)
        ):
            connection.send(self._envelope(request_id, received_us, error=_RpcFailure(BAD_REQUEST)))
            return
        self.requests.append((method, json.dumps(params, sort_keys=True)))
        if method == "public/test":
            connection.tested.set()
        try:
            result = self._dispatch(method, params, connection)
            if inspect.isawaitable(result):
                result = await result
        except _RpcFailure as failure:
            connection.send(self._envelope(request_id, received_us, error=failure))
            if failure.code == TOO_MANY_REQUESTS[0]:
                connection.close_after_pending()  # the venue terminates the session
            return
        connection.send(self._envelope(request_id, received_us, result=result))
        if method in ("public/subscribe", "public/unsubscribe", "public/unsubscribe_all"):
            await self._notify()

    async def _http(self, request: web.Request) -> web.Response:
        received_us = _now_us()
        method = f"{request.match_info['scope']}/{request.match_info['method']}"
        self.requests.append((method, request.path_qs))
        if self._http_failures:
            status, retry_after = self._http_failures.popleft()
            headers = {"Retry-After": f"{retry_after:g}"} if retry_after is not None else {}
            return web.Response(status=status, text=f"{status} injected failure", headers=headers)
        request_id: object = None
        params: dict[str, Any]
        if request.method == "POST":
            try:
                body = msgspec.json.decode(await request.read())
            except msgspec.DecodeError:
                return self._http_error(None, received_us, _RpcFailure(PARSE_ERROR))
            if not isinstance(body, dict) or not isinstance(body.get("params", {}), dict):
                return self._http_error(None, received_us, _RpcFailure(BAD_REQUEST))
            request_id = body.get("id")
            params = body.get("params", {})
        else:
            params = {key: _query_value(value) for key, value in request.query.items()}
        try:
            result = self._dispatch(method, params, None)
            if inspect.isawaitable(result):
                result = await result
        except _RpcFailure as failure:
            return self._http_error(request_id, received_us, failure)
        return web.Response(
            body=self._envelope(request_id, received_us, result=result),
            content_type="application/json",
        )

    def _http_error(
        self, request_id: object, received_us: int, failure: _RpcFailure
    ) -> web.Response:
        status = 429 if failure.code == TOO_MANY_REQUESTS[0] else 400
        return web.Response(
            status=status,
            body=self._envelope(request_id, received_us, error=failure),
            content_type="application/json",
        )

    async def _notify(self) -> None:
        async with self._changed:
            self._changed.notify_all()


def _int_field(wire: Mapping[str, object], name: str) -> int:
    return cast(int, wire[name])


def _decimal_field(wire: Mapping[str, object], name: str) -> Decimal:
    return cast(Decimal, wire[name])


def _query_value(value: str) -> object:
    if value in ("true", "false"):
        return value == "true"
    with contextlib.suppress(ValueError):
        return int(value)
    return value


def _text(params: dict[str, Any], name: str) -> str:
    value = params.get(name)
    if value is None:
        raise _RpcFailure(INVALID_PARAMS, {"reason": "missing", "param": name})
    if not isinstance(value, str):
        value = str(value)
    return value


_REQUIRED: Final = object()


def _integer(params: dict[str, Any], name: str, default: Any = _REQUIRED) -> Any:
    value = params.get(name)
    if value is None:
        if default is _REQUIRED:
            raise _RpcFailure(INVALID_PARAMS, {"reason": "missing", "param": name})
        return default
    if isinstance(value, bool):
        raise _invalid(name, "must be an integer")
    try:
        return int(value)
    except (TypeError, ValueError):
        raise _invalid(name, "must be an integer") from None


# ------------------------------------------------------------------------------ standalone


async def _feed(fake: FakeDeribit, trades_per_second: float, stop: asyncio.Event) -> None:
    """Trades (spread over the instruments), tickers and bars until ``stop`` is set."""
    loop = asyncio.get_running_loop()
    started = loop.time()
    published = 0
    next_quotes = started
    while not stop.is_set():
        now = loop.time()
        due = int(trades_per_second * (now - started)) - published
        if due > 0:
            names = fake.instruments
            share, extra = divmod(due, len(names))
            for offset in range(len(names)):
                count = share + (1 if offset < extra else 0)
                if count:
                    fake.publish_trades(names[(published + offset) % len(names)], count)
            published += due
        if now >= next_quotes:
            next_quotes = now + 1.0
            for name in fake.instruments:
                fake.publish_ticker(name)
                # Real time: a new minute starts a new bar (the client closes the old one).
                fake.publish_bar(name, closed=False)
        # Pacing: wake every 10 ms (or at once on stop) and publish what is due, batched.
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(0.01):
                await stop.wait()


async def _serve(arguments: argparse.Namespace) -> None:
    fake = FakeDeribit(seed=arguments.seed, host=arguments.host, port=arguments.port)
    await fake.start()
    print(json.dumps({"ws_url": fake.ws_url, "rest_url": fake.rest_url}), flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    try:
        await _feed(fake, arguments.trades_per_second, stop)
    finally:
        await fake.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="A fake Deribit API v2 on loopback.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--trades-per-second", type=float, default=10.0)
    arguments = parser.parse_args(argv)
    logger.remove()
    logger.add(sys.stderr, level="INFO")
    asyncio.run(_serve(arguments))
    return 0


if __name__ == "__main__":
    sys.exit(main())
