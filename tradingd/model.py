"""The canonical, exchange-agnostic market-data model shared by every adapter and actor.

Prices and quantities are ``Decimal`` built straight from the venue's text (msgspec decodes
JSON strings and JSON numbers into ``Decimal`` without a float round trip). Times are integer
microseconds since the Unix epoch, UTC: exact at the venue's full precision, and cheap to carry
through the hot path (they are converted to ``timestamptz`` inside PostgreSQL, in bulk).
"""

from __future__ import annotations

import enum
from datetime import UTC, datetime
from decimal import Decimal

import msgspec


class MarketType(enum.StrEnum):
    SPOT = "spot"
    PERPETUAL = "perpetual"
    FUTURE = "future"
    OPTION = "option"


class Channel(enum.StrEnum):
    """A kind of market-data subscription, named the same for every venue."""

    TRADES = "trades"
    BARS = "bars"
    TICKERS = "tickers"


class Subscription(msgspec.Struct, frozen=True, gc=False):
    channel: Channel
    instrument_name: str
    # Bar resolution in canonical form ("1m", "1h", "1d"); empty for other channels.
    resolution: str = ""


class Instrument(msgspec.Struct, frozen=True, kw_only=True):
    exchange: str
    instrument_name: str
    market_type: MarketType
    base_currency: str
    quote_currency: str
    tick_size: Decimal
    min_trade_amount: Decimal
    contract_size: Decimal = Decimal(1)
    min_notional: Decimal | None = None
    expiration_us: int | None = None
    is_active: bool = True
    # The venue's own description, kept verbatim (JSON text) for operators and audits.
    raw: str = "{}"


class Trade(msgspec.Struct, frozen=True, gc=False, kw_only=True):
    exchange: str
    instrument_name: str
    market_type: MarketType
    trade_id: str
    # The venue's per-instrument consecutive sequence (Binance ``t``, Deribit ``trade_seq``).
    trade_seq: int
    price: Decimal
    quantity: Decimal
    # True when the taker sold (the buyer was the resting maker order).
    is_buyer_maker: bool
    was_best_price_match: bool | None = None
    trade_us: int
    received_us: int


class Bar(msgspec.Struct, frozen=True, gc=False, kw_only=True):
    exchange: str
    instrument_name: str
    resolution: str
    # Bar open time.
    tick_us: int
    open: Decimal
    high: Decimal
    low: Decimal
    close: Decimal
    volume: Decimal
    closed: bool
    received_us: int


class Ticker(msgspec.Struct, frozen=True, gc=False, kw_only=True):
    exchange: str
    instrument_name: str
    best_bid_price: Decimal | None = None
    best_bid_amount: Decimal | None = None
    best_ask_price: Decimal | None = None
    best_ask_amount: Decimal | None = None
    last_price: Decimal | None = None
    mark_price: Decimal | None = None
    index_price: Decimal | None = None
    # Venue event time when the venue sends one (Binance bookTicker has none: receive time).
    timestamp_us: int
    received_us: int


class DeadLetter(msgspec.Struct, frozen=True, kw_only=True):
    """A frame that could not be turned into canonical records; kept verbatim with the reason."""

    exchange: str
    source: str
    payload: bytes
    error: str
    received_us: int


class StreamNotice(msgspec.Struct, frozen=True, kw_only=True):
    """Something the venue said about the connection itself (not market data)."""

    exchange: str
    kind: str  # "server_shutdown", "subscribed", "unsubscribed", "error"
    detail: str = ""
    received_us: int


MarketEvent = Trade | Bar | Ticker | DeadLetter | StreamNotice


# The one definition of a bar resolution's length: "<count><unit>", unit s, m, h, d or w.
# Months ("1mo") have no fixed length and are refused.
_RESOLUTION_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def resolution_seconds(resolution: str) -> int:
    """Seconds in a canonical bar resolution ("1m", "15m", "1h", "1d"); ValueError otherwise."""
    count, unit = resolution[:-1], resolution[-1:]
    if not count.isdigit() or unit not in _RESOLUTION_UNITS or int(count) < 1:
        raise ValueError(f"not a fixed-length bar resolution: {resolution!r}")
    return int(count) * _RESOLUTION_UNITS[unit]


def resolution_us(resolution: str) -> int:
    """Microseconds in a canonical bar resolution; ValueError if it is none."""
    return resolution_seconds(resolution) * 1_000_000


def us_to_datetime(us: int) -> datetime:
    return datetime.fromtimestamp(us / 1_000_000, tz=UTC).replace(microsecond=us % 1_000_000)


def datetime_to_us(moment: datetime) -> int:
    if moment.tzinfo is None:
        raise ValueError("naive datetime: tradingd works in UTC only")
    delta = moment - datetime(1970, 1, 1, tzinfo=UTC)
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds
