"""The interface every venue adapter implements.

An adapter is three layers, in its own folder under ``tradingd/adapters/``:

- ``parsing``: pure functions, bytes in, canonical records (or ``ParseError``) out; no I/O,
  no clock reads (the receive time is passed in);
- ``websocket``: a thin transport that owns one WebSocket connection, answers the venue's
  keep-alives, and feeds frames through the parser;
- ``http``: the venue's REST/RPC calls used for instruments, server time, history and repair.

Reconnects, backoff, gap repair and persistence live outside the adapter, in the actors, so
every venue gets them the same way.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Mapping, Sequence
from decimal import Decimal
from typing import Protocol, runtime_checkable

import aiohttp

from tradingd.config import ExchangeConfig
from tradingd.model import Bar, Channel, Instrument, MarketEvent, Subscription, Trade


class SymbolRejected(ValueError):
    """A configured symbol that is not in the venue's syntax (raised by an adapter's
    constructor, so ``config check`` and start-up name the key)."""

    def __init__(self, index: int, problem: str) -> None:
        super().__init__(problem)
        self.index = index
        self.problem = problem


def check_symbols(
    symbols: Sequence[str], pattern: re.Pattern[str], venue: str, example: str
) -> None:
    """Raise SymbolRejected for the first symbol that does not match ``pattern``."""
    for index, symbol in enumerate(symbols):
        if not pattern.fullmatch(symbol):
            raise SymbolRejected(
                index, f"expected a {venue} symbol like {example!r}, found {symbol!r}"
            )


class ParseError(ValueError):
    """A frame or response that is not what the venue's protocol says it must be."""


class VenueUnavailable(ConnectionError):
    """The venue did not answer, answered with a server error, or closed the connection."""


class RateLimited(VenueUnavailable):
    """The venue asked us to slow down; ``retry_after`` is how long, in seconds."""

    def __init__(self, message: str, retry_after: float) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class RangeUnavailable(LookupError):
    """The venue no longer serves (all of) the requested history range.

    ``first_available_seq``, when known, is the oldest sequence still served: the part of the
    range from there on can still be fetched.
    """

    def __init__(self, message: str, first_available_seq: int | None = None) -> None:
        super().__init__(message)
        self.first_available_seq = first_available_seq


class MarketDataSession(Protocol):
    """One live market-data WebSocket connection of one venue."""

    async def subscribe(self, subscriptions: Sequence[Subscription]) -> None: ...

    async def unsubscribe(self, subscriptions: Sequence[Subscription]) -> None: ...

    frames_received: int
    """Frames read from the connection so far, keep-alives and replies included."""

    def batches(self) -> AsyncIterator[list[MarketEvent]]:
        """Canonical records, in arrival order; ends when the connection closes.

        One list per burst: the frame that ended the wait and those already received behind
        it, so a busy stream is handed over in few lists. A list may be empty (keep-alives,
        replies): every list is a sign of life. Keep-alives (pings, heartbeats,
        ``test_request``) are answered inside; a frame that cannot be parsed becomes a
        ``DeadLetter`` record and the stream goes on.
        """
        ...

    async def close(self) -> None: ...


@runtime_checkable
class ExchangeAdapter(Protocol):
    """Market data and REST/RPC calls of one venue."""

    name: str

    def plan_connections(self, subscriptions: Sequence[Subscription]) -> list[list[Subscription]]:
        """Split subscriptions over connections, within the venue's per-connection limits."""
        ...

    def stream_intervals(self) -> Mapping[Channel, float]:
        """The venue's documented cadence, in seconds, of each channel that has one.

        A subscription silent for a few of these intervals is stale. Channels without a cadence
        (trades, on-change tickers) are left out: a quiet market is not a failure.
        """
        ...

    async def connect(self, subscriptions: Sequence[Subscription]) -> MarketDataSession:
        """Open one connection and subscribe; raises ``VenueUnavailable`` on failure."""
        ...

    async def fetch_instruments(self) -> list[Instrument]: ...

    async def fetch_server_time_us(self) -> int: ...

    async def fetch_bars(
        self, instrument_name: str, resolution: str, start_us: int, end_us: int
    ) -> list[Bar]:
        """Closed bars whose open time is in [start_us, end_us], oldest first, one page."""
        ...

    async def fetch_trades(
        self, instrument_name: str, first_seq: int, last_seq: int
    ) -> list[Trade]:
        """Trades with sequence in [first_seq, last_seq], oldest first, one page (may be short).

        Raises ``RangeUnavailable`` when the venue no longer serves that range.
        """
        ...

    async def close(self) -> None: ...


class TradingAdapter(Protocol):
    """Order management of one venue. Declared here; implemented with the executor."""

    async def place_order(
        self,
        instrument_name: str,
        side: str,
        quantity: Decimal,
        price: Decimal | None,
        client_order_id: str,
    ) -> str: ...

    async def cancel_order(self, instrument_name: str, order_id: str) -> None: ...

    async def open_orders(self, instrument_name: str | None = None) -> list[dict[str, object]]: ...


class AdapterFactory(Protocol):
    def __call__(
        self, config: ExchangeConfig, *, exchange: str, http: aiohttp.ClientSession
    ) -> ExchangeAdapter: ...
