"""The canonical, exchange-agnostic market-data model shared by every adapter and actor.

Market prices and quantities travel as the venue's own decimal text (``price_text``), checked
once by the parser (``is_positive_decimal``, ``is_non_negative_decimal``): the text is already
exact, PostgreSQL's ``numeric`` reads it as it is, and building a ``Decimal`` for every frame
would cost more than parsing the frame. Whoever computes with a number asks for it: ``price``,
``quantity`` and the like are ``Decimal`` properties built from the text on access. Times are
integer microseconds since the Unix epoch, UTC: exact at the venue's full precision, and cheap to
carry through the hot path (they are converted to ``timestamptz`` inside PostgreSQL, in bulk).
"""

from __future__ import annotations

import enum
from datetime import UTC, datetime
from decimal import Decimal
from typing import Final

import msgspec

# The range a market price or quantity must lie in: a sanity bound on what a venue sends, not a
# venue rule. Beyond it a number is a corrupt frame, not a market.
SMALLEST_AMOUNT: Final = Decimal("1e-20")
TOO_LARGE_AMOUNT: Final = Decimal("1e20")
# Near a bound the float is not exact enough to decide; within this relative margin of a bound
# the exact Decimal decides (rarely taken: no market trades at 1e-20 or 1e20).
_NEAR: Final = 1e-9
_SURELY_ABOVE_SMALLEST: Final = 1e-20 * (1 + _NEAR)
_SURELY_BELOW_TOO_LARGE: Final = 1e20 * (1 - _NEAR)
_MAYBE_ABOVE_SMALLEST: Final = 1e-20 * (1 - _NEAR)
_MAYBE_BELOW_TOO_LARGE: Final = 1e20 * (1 + _NEAR)
# A venue's number is short; a long text is a corrupt frame (and PostgreSQL caps numeric's digits).
_LONGEST_TEXT: Final = 64
_MAGNITUDE_FIRST: Final = frozenset("0123456789.")
_ZERO: Final = Decimal(0)


# A plain text of at most this many characters (digits and at most one dot) lies in the range
# whenever it has a non-zero digit: at most 20 digits before the dot (below 1e20), and at most 19
# after it (at least 1e-19). Venues' amounts are such texts.
_SHORT_PLAIN_TEXT: Final = 20


def is_positive_decimal(text: str) -> bool:
    """True when ``text`` is a decimal number in [1e-20, 1e20) that ``Decimal`` and
    PostgreSQL's ``numeric`` both read as the same value.

    Every parser runs this on every price of every frame, hence one flat function. A short
    plain text (ASCII digits, at most one dot, a non-zero digit) is in the range as it stands,
    and three string methods tell that for less than ``float()`` costs alone; anything else
    takes ``positive_decimal_float``, the rule in full.
    """
    # (Written out, not called: a call costs as much as the test, on every price of every frame.)
    if (
        len(text) <= _SHORT_PLAIN_TEXT
        and text.replace(".", "", 1).isdigit()
        and text.isascii()
        and text.lstrip("0.")
    ):
        return True
    return positive_decimal_float(text) is not None


def positive_decimal_float(text: str) -> float | None:
    """``float(text)`` when ``is_positive_decimal(text)``, else None: the rule in full, with
    one ``float()``.

    ``float()`` is the fast first reading; it also accepts what ``Decimal`` and ``numeric`` read
    differently or not at all ("1_000", non-ASCII digits, surrounding whitespace) or what is no
    amount ("nan", "inf"), refused here.
    """
    try:
        value = float(text)
    except ValueError:
        return None
    # float() also reads "1_000", non-ASCII digits and surrounding whitespace; the text goes to
    # PostgreSQL as it is (a tab or newline would end a COPY field or row), so none of those.
    if len(text) <= _LONGEST_TEXT and text.isascii() and "_" not in text and text.strip() == text:
        if _SURELY_ABOVE_SMALLEST < value < _SURELY_BELOW_TOO_LARGE:
            return value
        if _MAYBE_ABOVE_SMALLEST <= value <= _MAYBE_BELOW_TOO_LARGE and _exactly_in_range(text):
            return value
    return None


def are_positive_decimals(first: str, second: str) -> bool:
    """``is_positive_decimal(first) and is_positive_decimal(second)``, in one call: a book's two
    amounts are checked on every frame, and a call costs as much as one of the tests."""
    # is_positive_decimal's short plain texts, for both at once; anything else is left to it.
    if (
        len(first) <= _SHORT_PLAIN_TEXT
        and len(second) <= _SHORT_PLAIN_TEXT
        and first.replace(".", "", 1).isdigit()
        and second.replace(".", "", 1).isdigit()
        and first.isascii()
        and second.isascii()
        and first.lstrip("0.")
        and second.lstrip("0.")
    ):
        return True
    return is_positive_decimal(first) and is_positive_decimal(second)


def is_non_negative_decimal(text: str) -> bool:
    """``is_positive_decimal``, or a zero (a venue's "nothing on this side of the book")."""
    try:
        value = float(text)
    except ValueError:
        return False
    # The same plain-text test as is_positive_decimal's.
    if len(text) <= _LONGEST_TEXT and text.isascii() and "_" not in text and text.strip() == text:
        if _SURELY_ABOVE_SMALLEST < value < _SURELY_BELOW_TOO_LARGE:
            return True
        if value == 0.0:
            # "1e-400" reads as a float zero but is a (too small) number, not a zero.
            return Decimal(text) == _ZERO
        return _MAYBE_ABOVE_SMALLEST <= value <= _MAYBE_BELOW_TOO_LARGE and _exactly_in_range(text)
    return False


def _exactly_in_range(text: str) -> bool:
    return SMALLEST_AMOUNT <= Decimal(text) < TOO_LARGE_AMOUNT


def is_finite_decimal(text: str) -> bool:
    """``is_non_negative_decimal``, or its negative (a combo's price: a spread of two prices
    may be worth nothing or less than nothing)."""
    if is_non_negative_decimal(text):
        return True
    # A second sign, a space or an empty magnitude after the minus is no number.
    return (
        len(text) > 1
        and text[0] == "-"
        and text[1] in _MAGNITUDE_FIRST
        and is_positive_decimal(text[1:])
    )


class PositiveDecimalMemo:
    """The texts ``is_positive_decimal`` accepted, each with its ``float``, so that a parser
    pays the rule once per distinct text rather than once per frame: a venue sends the same
    texts over and over (a price level trades many times, a book's side moves by a tick), and a
    dict lookup costs a third of the rule.

    A parser looks a text up in ``floats`` first and asks ``reading`` only when it is not there.
    Only texts the rule accepted are kept, at most ``capacity`` of them (all forgotten at once
    when full), so the memo's answer is always the rule's.
    """

    __slots__ = ("_capacity", "floats")

    def __init__(self, capacity: int = 16_384) -> None:
        self.floats: dict[str, float] = {}
        self._capacity = capacity

    def reading(self, text: str) -> float | None:
        """The ``float`` of ``text`` if ``is_positive_decimal`` accepts it (then remembered in
        ``floats``; never 0.0), else None."""
        value = positive_decimal_float(text)
        if value is None:
            return None
        floats = self.floats
        if len(floats) >= self._capacity:
            floats.clear()
        floats[text] = value
        return value


def optional_decimal(text: str | None) -> Decimal | None:
    return None if text is None else Decimal(text)


def optional_text(value: Decimal | None) -> str | None:
    return None if value is None else str(value)


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


class Trade(msgspec.Struct, frozen=True, gc=False):
    # Not keyword-only: the parsers build one per trade positionally, a quarter cheaper than by
    # keywords. Elsewhere pass keywords (the optional field comes last).
    exchange: str
    instrument_name: str
    market_type: MarketType
    trade_id: str
    # The venue's per-instrument consecutive sequence (Binance ``t``, Deribit ``trade_seq``).
    trade_seq: int
    # The venue's exact decimal text (see the module's docstring); ``price``/``quantity`` read it.
    price_text: str
    quantity_text: str
    # True when the taker sold (the buyer was the resting maker order).
    is_buyer_maker: bool
    trade_us: int
    received_us: int
    # Binance's ``M``; None where the venue does not say.
    was_best_price_match: bool | None = None

    @property
    def price(self) -> Decimal:
        return Decimal(self.price_text)

    @property
    def quantity(self) -> Decimal:
        return Decimal(self.quantity_text)


class Bar(msgspec.Struct, frozen=True, gc=False, kw_only=True):
    exchange: str
    instrument_name: str
    resolution: str
    # Bar open time.
    tick_us: int
    # The venue's exact decimal text; ``open`` .. ``volume`` read it as ``Decimal``.
    open_text: str
    high_text: str
    low_text: str
    close_text: str
    volume_text: str
    closed: bool
    received_us: int

    @property
    def open(self) -> Decimal:
        return Decimal(self.open_text)

    @property
    def high(self) -> Decimal:
        return Decimal(self.high_text)

    @property
    def low(self) -> Decimal:
        return Decimal(self.low_text)

    @property
    def close(self) -> Decimal:
        return Decimal(self.close_text)

    @property
    def volume(self) -> Decimal:
        return Decimal(self.volume_text)


class Ticker(msgspec.Struct, frozen=True, gc=False):
    # Not keyword-only: the parsers build one per frame positionally, a quarter cheaper than by
    # keywords. Elsewhere pass keywords (the required fields come first).
    exchange: str
    instrument_name: str
    # Venue event time when the venue sends one (Binance bookTicker has none: receive time).
    timestamp_us: int
    received_us: int
    # The venue's exact decimal text, or None where the venue has no such number now; the
    # properties without ``_text`` read it as ``Decimal``.
    best_bid_price_text: str | None = None
    best_bid_amount_text: str | None = None
    best_ask_price_text: str | None = None
    best_ask_amount_text: str | None = None
    last_price_text: str | None = None
    mark_price_text: str | None = None
    index_price_text: str | None = None

    @property
    def best_bid_price(self) -> Decimal | None:
        return optional_decimal(self.best_bid_price_text)

    @property
    def best_bid_amount(self) -> Decimal | None:
        return optional_decimal(self.best_bid_amount_text)

    @property
    def best_ask_price(self) -> Decimal | None:
        return optional_decimal(self.best_ask_price_text)

    @property
    def best_ask_amount(self) -> Decimal | None:
        return optional_decimal(self.best_ask_amount_text)

    @property
    def last_price(self) -> Decimal | None:
        return optional_decimal(self.last_price_text)

    @property
    def mark_price(self) -> Decimal | None:
        return optional_decimal(self.mark_price_text)

    @property
    def index_price(self) -> Decimal | None:
        return optional_decimal(self.index_price_text)


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
