"""Binance spot wire parsing, sans-I/O: bytes in, canonical records (or ``ParseError``) out.

Nothing here reads a clock or touches a socket; the receive time is passed in. Frames are
decoded in two steps: the combined-stream envelope with ``data`` kept as ``msgspec.Raw``, then
``data`` with the typed decoder chosen by the stream name's suffix; the common market frames
(trade, kline, bookTicker) are recognised by their stream name near the start and decoded in one
pass. Prices and quantities stay the venue's text, checked by the model's one rule
(``is_positive_decimal``), once per distinct text (the parser's ``PositiveDecimalMemo``): the
records carry the text, never a ``Decimal`` built per frame.

Times: the adapter asks Binance for microseconds (``timeUnit=MICROSECOND`` on the WebSocket,
``X-MBX-TIME-UNIT: MICROSECOND`` on REST); recordings made without that option are in
milliseconds, so every parser takes the unit the venue was asked for.
"""

from __future__ import annotations

from collections.abc import Callable
from decimal import Decimal
from typing import Final, Literal

import msgspec

from tradingd.adapters.base import ParseError
from tradingd.model import (
    Bar,
    Channel,
    Instrument,
    MarketEvent,
    MarketType,
    PositiveDecimalMemo,
    StreamNotice,
    Subscription,
    Ticker,
    Trade,
    are_positive_decimals,
    is_non_negative_decimal,
    is_positive_decimal,
)
from tradingd.model import resolution_us as canonical_resolution_us

TimeUnit = Literal["MICROSECOND", "MILLISECOND"]

# Binance kline interval -> canonical resolution. "1M" (month) is spelled "1mo" in canonical
# form so that it cannot be mistaken for one minute by anything case-insensitive.
_RESOLUTION_OF_INTERVAL: Final = {
    "1s": "1s",
    "1m": "1m",
    "3m": "3m",
    "5m": "5m",
    "15m": "15m",
    "30m": "30m",
    "1h": "1h",
    "2h": "2h",
    "4h": "4h",
    "6h": "6h",
    "8h": "8h",
    "12h": "12h",
    "1d": "1d",
    "3d": "3d",
    "1w": "1w",
    "1M": "1mo",
}
_INTERVAL_OF_RESOLUTION: Final = {r: i for i, r in _RESOLUTION_OF_INTERVAL.items()}

# A class attribute of an enum is looked up through its metaclass: slow enough to show per frame.
_SPOT: Final = MarketType.SPOT
# A venue time outside 2000..2100 means a corrupt frame or a time unit other than the one
# asked for (a millisecond value read as microseconds lands in 1970).
_EARLIEST_US: Final = 946_684_800_000_000
_LATEST_US: Final = 4_102_444_800_000_000

SERVER_SHUTDOWN_STREAM: Final = "!serverShutdown"


class FrameParseError(ParseError):
    """A frame that is not what the protocol says; ``stream`` names its stream when known."""

    def __init__(self, reason: str, stream: str = "") -> None:
        super().__init__(reason)
        self.stream = stream


def binance_interval(resolution: str) -> str:
    """The Binance kline interval of a canonical resolution ("1m" -> "1m", "1mo" -> "1M")."""
    try:
        return _INTERVAL_OF_RESOLUTION[resolution]
    except KeyError:
        raise ValueError(f"Binance has no kline interval for resolution {resolution!r}") from None


def resolution_us(resolution: str) -> int:
    """Length of a canonical resolution Binance serves, in microseconds (fixed lengths only)."""
    binance_interval(resolution)
    return canonical_resolution_us(resolution)


def stream_name(subscription: Subscription, default_resolution: str = "1m") -> str:
    """The combined-stream name of a canonical subscription (symbols lowercase)."""
    symbol = subscription.instrument_name.lower()
    channel = subscription.channel
    if channel is Channel.TRADES:
        return f"{symbol}@trade"
    if channel is Channel.BARS:
        return f"{symbol}@kline_{binance_interval(subscription.resolution or default_resolution)}"
    if channel is Channel.TICKERS:
        return f"{symbol}@bookTicker"
    raise ValueError(f"Binance has no stream for channel {channel!r}")


def time_factor(time_unit: TimeUnit) -> int:
    """What a venue time in ``time_unit`` is multiplied by to become microseconds."""
    return 1 if time_unit == "MICROSECOND" else 1000


# --- wire shapes -----------------------------------------------------------------------------

_ABSENT: Final = msgspec.Raw()


class _ErrorBody(msgspec.Struct):
    code: int | None = None
    msg: str = ""


class _Envelope(msgspec.Struct):
    """Everything a market-stream connection can send, with the payload left undecoded."""

    stream: str | None = None
    data: msgspec.Raw = _ABSENT
    result: msgspec.Raw = _ABSENT
    id: int | str | None = None
    code: int | None = None
    msg: str | None = None
    error: _ErrorBody | None = None
    e: str | None = None
    E: int | None = None


# Wire structs hold only str, int, bool and each other: no reference cycles, so the garbage
# collector need not track them (gc=False), which also makes them cheaper to build.


class _TradeData(msgspec.Struct, gc=False):
    s: str
    t: int
    p: str
    q: str
    T: int
    m: bool
    M: bool | None = None


class _TradeFrame(msgspec.Struct, gc=False):
    """A whole combined-stream trade frame, for the one-pass fast path."""

    stream: str
    data: _TradeData


class _Kline(msgspec.Struct, gc=False):
    t: int
    T: int
    i: str
    o: str
    c: str
    h: str
    l: str  # noqa: E741  (the venue's field name)
    v: str
    x: bool


class _KlineData(msgspec.Struct, gc=False):
    s: str
    k: _Kline


class _KlineFrame(msgspec.Struct, gc=False):
    stream: str
    data: _KlineData


class _BookTickerData(msgspec.Struct, gc=False):
    s: str
    b: str
    B: str
    a: str
    A: str
    # Spot sends no event time; some captures (and USD-M) carry one.
    E: int | None = None


class _BookTickerFrame(msgspec.Struct, gc=False):
    stream: str
    data: _BookTickerData


class _ShutdownData(msgspec.Struct):
    e: str
    E: int | None = None


class _RestTrade(msgspec.Struct, gc=False):
    id: int
    price: str
    qty: str
    time: int
    isBuyerMaker: bool
    isBestMatch: bool | None = None


class _RestKline(msgspec.Struct, array_like=True, gc=False):
    open_time: int
    open: str
    high: str
    low: str
    close: str
    volume: str
    close_time: int


class _Filter(msgspec.Struct):
    filterType: str
    tickSize: Decimal | None = None
    minQty: Decimal | None = None
    minNotional: Decimal | None = None


class _Symbol(msgspec.Struct):
    symbol: str
    status: str
    baseAsset: str
    quoteAsset: str
    filters: list[_Filter]


class _RateLimit(msgspec.Struct):
    rateLimitType: str
    interval: str
    intervalNum: int
    limit: int


class _ExchangeInfo(msgspec.Struct):
    symbols: list[msgspec.Raw]
    rateLimits: list[_RateLimit] = []


class _ServerTime(msgspec.Struct):
    serverTime: int


class _RestError(msgspec.Struct):
    code: int
    msg: str = ""


_envelope_decoder: Final = msgspec.json.Decoder(_Envelope)
_trade_decoder: Final = msgspec.json.Decoder(_TradeData)
_trade_frame_decoder: Final = msgspec.json.Decoder(_TradeFrame)
_kline_decoder: Final = msgspec.json.Decoder(_KlineData)
_kline_frame_decoder: Final = msgspec.json.Decoder(_KlineFrame)
_book_ticker_decoder: Final = msgspec.json.Decoder(_BookTickerData)
_book_ticker_frame_decoder: Final = msgspec.json.Decoder(_BookTickerFrame)
# Market frames are recognised by the first "@" (their stream name's, in the venue's key order)
# and decoded in one pass by the decoder the next byte picks; the decoded stream's route then
# confirms the kind. Anything unusual falls back to the general path, which also words the errors.
_TRADE_INITIAL: Final = ord("t")
_KLINE_INITIAL: Final = ord("k")
_BOOK_TICKER_INITIAL: Final = ord("b")
_shutdown_decoder: Final = msgspec.json.Decoder(_ShutdownData)
_rest_trades_decoder: Final = msgspec.json.Decoder(list[_RestTrade])
_rest_klines_decoder: Final = msgspec.json.Decoder(list[_RestKline])
_exchange_info_decoder: Final = msgspec.json.Decoder(_ExchangeInfo)
_symbol_decoder: Final = msgspec.json.Decoder(_Symbol)
_server_time_decoder: Final = msgspec.json.Decoder(_ServerTime)
_rest_error_decoder: Final = msgspec.json.Decoder(_RestError)

# Stream kinds, found from the part of the stream name after the first "@".
_TRADE: Final = 1
_KLINE: Final = 2
_BOOK_TICKER: Final = 3
_SHUTDOWN: Final = 4
_IGNORED: Final = 0
_ROUTE_CACHE_SIZE: Final = 4096


def _route_of(stream: str) -> int:
    if stream == SERVER_SHUTDOWN_STREAM:
        return _SHUTDOWN
    symbol, at, kind = stream.partition("@")
    if not at or not symbol:
        raise FrameParseError(f"malformed stream name {stream!r}", stream)
    if kind == "trade":
        return _TRADE
    if kind == "bookTicker":
        return _BOOK_TICKER
    if kind.startswith("kline_"):
        return _KLINE
    return _IGNORED


def _not_positive(what: str, text: str, stream: str) -> FrameParseError:
    return FrameParseError(
        f"{what} {text!r} is not a positive decimal number in [1e-20, 1e20)", stream
    )


def _positive(text: str, what: str, stream: str) -> str:
    if is_positive_decimal(text):
        return text
    raise _not_positive(what, text, stream)


def _non_negative(text: str, what: str, stream: str) -> str:
    if is_non_negative_decimal(text):
        return text
    raise FrameParseError(
        f"{what} {text!r} is not a zero or a positive decimal number in [1e-20, 1e20)", stream
    )


def _book_side(price: str, quantity: str, side: str, stream: str) -> tuple[str | None, str | None]:
    """A book side's price and quantity; both None when the price is the zero that says the side
    is empty."""
    _non_negative(price, f"best {side} price", stream)
    _non_negative(quantity, f"best {side} quantity", stream)
    if is_positive_decimal(price):
        return price, quantity
    return None, None


def _is_exactly_consistent_bar(open_: str, high: str, low: str, close: str) -> bool:
    """``low <= open, close <= high`` by the exact numbers (``_checked_bar`` tries floats first)."""
    exact_low, exact_high = Decimal(low), Decimal(high)
    return exact_low <= Decimal(open_) <= exact_high and exact_low <= Decimal(close) <= exact_high


def _venue_time(value: int, factor: int, what: str, stream: str) -> int:
    us = value * factor
    if _EARLIEST_US <= us < _LATEST_US:
        return us
    raise _not_a_venue_time(value, factor, what, stream)


def _not_a_venue_time(value: int, factor: int, what: str, stream: str) -> FrameParseError:
    return FrameParseError(
        f"{what} {value} is not a time in the years 2000..2100 "
        f"(expected {'microseconds' if factor == 1 else 'milliseconds'})",
        stream,
    )


def _describe(exc: msgspec.MsgspecError) -> str:
    if isinstance(exc, msgspec.ValidationError):
        return f"schema mismatch: {exc}"
    return f"not JSON: {exc}"


class BinanceParser:
    """Turns frames of one combined-stream connection into canonical records.

    The only state is the table of request ids whose responses the session is waiting for
    (so a ``{"result": null, "id": N}`` can say what it answers), a cache of stream routes, the
    price and quantity texts already accepted, and a count of frames of stream types that carry
    nothing tradingd records.
    """

    def __init__(self, exchange: str, *, time_unit: TimeUnit = "MICROSECOND") -> None:
        self.exchange = exchange
        self.time_unit: TimeUnit = time_unit
        self._factor = time_factor(time_unit)
        self._routes: dict[str, int] = {}
        self._positive = PositiveDecimalMemo()
        self._pending: dict[int | str, str] = {}
        # Frames of valid but unrecorded stream types (depth, aggTrade, ...), by type.
        self.ignored: dict[str, int] = {}
        self._handlers: dict[int, Callable[[msgspec.Raw, str, int], list[MarketEvent]]] = {
            _TRADE: self._trade,
            _KLINE: self._kline,
            _BOOK_TICKER: self._book_ticker,
            _SHUTDOWN: self._shutdown,
        }

    def expect_response(self, request_id: int | str, kind: str) -> None:
        """The response to ``request_id`` becomes a ``StreamNotice`` of this ``kind``."""
        self._pending[request_id] = kind

    def parse_frame(self, frame: bytes | str, received_us: int) -> list[MarketEvent]:
        if type(frame) is bytes:
            # The one-pass paths are spelled out here rather than in a method: a call costs as
            # much as a check. A stream not yet routed takes the general path once, which routes
            # it; a frame that does not decode takes it too, which words the error. (Without an
            # "@", find gives -1 and the initial is the frame's first byte: no kind's.)
            try:
                initial = frame[frame.find(b"@") + 1]
                if initial == _TRADE_INITIAL:
                    trade = _trade_frame_decoder.decode(frame)
                    if self._routes.get(trade.stream) == _TRADE:
                        sale = trade.data
                        # _trade_record's usual case (both texts seen before, every check met)
                        # spelled out; anything else is left to it, which words the refusal.
                        accepted = self._positive.floats
                        trade_us = sale.T * self._factor
                        if (
                            sale.p in accepted
                            and sale.q in accepted
                            and sale.t >= 0
                            and _EARLIEST_US <= trade_us < _LATEST_US
                        ):
                            return [
                                Trade(
                                    self.exchange, sale.s, _SPOT, str(sale.t), sale.t, sale.p,
                                    sale.q, sale.m, trade_us, received_us, sale.M,
                                )
                            ]  # fmt: skip
                        return self._trade_record(sale, trade.stream, received_us)
                elif initial == _BOOK_TICKER_INITIAL:
                    book = _book_ticker_frame_decoder.decode(frame)
                    if self._routes.get(book.stream) == _BOOK_TICKER:
                        data = book.data
                        # _book_ticker_record's usual case (no event time, both prices seen
                        # before, two plain amounts) spelled out; anything else is left to it.
                        accepted = self._positive.floats
                        if (
                            data.E is None
                            and data.b in accepted
                            and data.a in accepted
                            and are_positive_decimals(data.B, data.A)
                        ):
                            return [
                                Ticker(
                                    self.exchange, data.s, received_us, received_us,
                                    data.b, data.B, data.a, data.A,
                                )
                            ]  # fmt: skip
                        return self._book_ticker_record(data, book.stream, received_us)
                elif initial == _KLINE_INITIAL:
                    kline = _kline_frame_decoder.decode(frame)
                    if self._routes.get(kline.stream) == _KLINE:
                        return self._kline_record(kline.data, kline.stream, received_us)
            except (msgspec.MsgspecError, IndexError):
                pass
        try:
            envelope = _envelope_decoder.decode(frame)
        except msgspec.MsgspecError as exc:
            raise FrameParseError(_describe(exc)) from None
        stream = envelope.stream
        if stream is not None and len(envelope.data):
            route = self._route(stream)
            if route == _IGNORED:
                kind = stream.partition("@")[2]
                self.ignored[kind] = self.ignored.get(kind, 0) + 1
                return []
            try:
                return self._handlers[route](envelope.data, stream, received_us)
            except msgspec.MsgspecError as exc:
                raise FrameParseError(_describe(exc), stream) from None
        return self._control(envelope, received_us)

    def _route(self, stream: str) -> int:
        route = self._routes.get(stream)
        if route is None:
            route = _route_of(stream)
            if len(self._routes) >= _ROUTE_CACHE_SIZE:
                self._routes.clear()
            self._routes[stream] = route
        return route

    def _trade(self, data: msgspec.Raw, stream: str, received_us: int) -> list[MarketEvent]:
        return self._trade_record(_trade_decoder.decode(data), stream, received_us)

    def _trade_record(self, trade: _TradeData, stream: str, received_us: int) -> list[MarketEvent]:
        trade_seq = trade.t
        if trade_seq < 0:
            raise FrameParseError(f"trade id {trade_seq} is negative", stream)
        positive = self._positive
        accepted = positive.floats
        price = trade.p
        if price not in accepted and positive.reading(price) is None:
            raise _not_positive("trade price", price, stream)
        quantity = trade.q
        if quantity not in accepted and positive.reading(quantity) is None:
            raise _not_positive("trade quantity", quantity, stream)
        # _venue_time's rule, inline: a call costs as much as the check.
        trade_us = trade.T * self._factor
        if not _EARLIEST_US <= trade_us < _LATEST_US:
            raise _not_a_venue_time(trade.T, self._factor, "trade time", stream)
        # Positional, in the model's field order: keywords cost a quarter of the record.
        record = Trade(
            self.exchange, trade.s, _SPOT, str(trade_seq), trade_seq, price, quantity, trade.m,
            trade_us, received_us, trade.M,
        )  # fmt: skip
        return [record]

    def _kline(self, data: msgspec.Raw, stream: str, received_us: int) -> list[MarketEvent]:
        return self._kline_record(_kline_decoder.decode(data), stream, received_us)

    def _kline_record(self, kline: _KlineData, stream: str, received_us: int) -> list[MarketEvent]:
        k = kline.k
        resolution = _RESOLUTION_OF_INTERVAL.get(k.i)
        if resolution is None:
            raise FrameParseError(f"unknown kline interval {k.i!r}", stream)
        # _venue_time's rule, inline: a call costs as much as the check.
        tick_us = k.t * self._factor
        if not _EARLIEST_US <= tick_us < _LATEST_US:
            raise _not_a_venue_time(k.t, self._factor, "kline open time", stream)
        # Positional, in the signature's order: passing twelve keywords costs as much as a check.
        bar = _checked_bar(
            self.exchange, kline.s, resolution, tick_us, k.o, k.h, k.l, k.c, k.v, k.x,
            received_us, stream, self._positive,
        )  # fmt: skip
        return [bar]

    def _book_ticker(self, data: msgspec.Raw, stream: str, received_us: int) -> list[MarketEvent]:
        return self._book_ticker_record(_book_ticker_decoder.decode(data), stream, received_us)

    def _book_ticker_record(
        self, book: _BookTickerData, stream: str, received_us: int
    ) -> list[MarketEvent]:
        bid_price: str | None
        bid_amount: str | None
        ask_price: str | None
        ask_amount: str | None
        bid_price = book.b
        bid_amount = book.B
        ask_price = book.a
        ask_amount = book.A
        positive = self._positive
        accepted = positive.floats
        # The prices repeat from frame to frame, the amounts mostly do not (a miss costs more
        # than the rule alone): only the prices are looked up.
        if not (
            (bid_price in accepted or positive.reading(bid_price) is not None)
            and (ask_price in accepted or positive.reading(ask_price) is not None)
            and are_positive_decimals(bid_amount, ask_amount)
        ):
            # A price of zero is Binance's way of saying that side of the book is empty.
            bid_price, bid_amount = _book_side(book.b, book.B, "bid", stream)
            ask_price, ask_amount = _book_side(book.a, book.A, "ask", stream)
        timestamp_us = (
            received_us
            if book.E is None
            else _venue_time(book.E, self._factor, "event time", stream)
        )
        # Positional, in the model's field order: keywords cost a quarter of the record.
        record = Ticker(
            self.exchange, book.s, timestamp_us, received_us,
            bid_price, bid_amount, ask_price, ask_amount,
        )  # fmt: skip
        return [record]

    def _shutdown(self, data: msgspec.Raw, stream: str, received_us: int) -> list[MarketEvent]:
        event = _shutdown_decoder.decode(data)
        return [self._shutdown_notice(event.E, received_us)]

    def _shutdown_notice(self, event_time: int | None, received_us: int) -> StreamNotice:
        detail = "" if event_time is None else f"E={event_time}"
        return StreamNotice(
            exchange=self.exchange, kind="server_shutdown", detail=detail, received_us=received_us
        )

    def _control(self, envelope: _Envelope, received_us: int) -> list[MarketEvent]:
        if len(envelope.result):
            kind = "response" if envelope.id is None else self._pending.pop(envelope.id, "response")
            result = bytes(envelope.result).decode("utf-8", errors="replace")
            detail = f"id={envelope.id}"
            if result != "null":
                detail += f" result={result}"
            return [
                StreamNotice(
                    exchange=self.exchange, kind=kind, detail=detail, received_us=received_us
                )
            ]
        if envelope.error is not None or envelope.code is not None:
            code = envelope.error.code if envelope.error is not None else envelope.code
            message = envelope.error.msg if envelope.error is not None else envelope.msg or ""
            if envelope.id is not None:
                self._pending.pop(envelope.id, None)
            return [
                StreamNotice(
                    exchange=self.exchange,
                    kind="error",
                    detail=f"code={code} msg={message} id={envelope.id}",
                    received_us=received_us,
                )
            ]
        if envelope.e == "serverShutdown":
            return [self._shutdown_notice(envelope.E, received_us)]
        raise FrameParseError("neither a stream frame, a response, nor an error frame")


def _checked_bar(
    exchange: str,
    instrument_name: str,
    resolution: str,
    tick_us: int,
    open_: str,
    high: str,
    low: str,
    close: str,
    volume: str,
    closed: bool,
    received_us: int,
    stream: str,
    positive: PositiveDecimalMemo,
) -> Bar:
    # An accepted text's float is never 0.0, so ``or`` asks the rule only for a text not seen.
    accepted = positive.floats
    o = accepted.get(open_) or positive.reading(open_)
    h = accepted.get(high) or positive.reading(high)
    lo = accepted.get(low) or positive.reading(low)
    c = accepted.get(close) or positive.reading(close)
    if o is None or h is None or lo is None or c is None or not is_non_negative_decimal(volume):
        # Which one: the rare path words the error.
        _positive(open_, "bar open", stream)
        _positive(high, "bar high", stream)
        _positive(low, "bar low", stream)
        _positive(close, "bar close", stream)
        _non_negative(volume, "bar volume", stream)
        raise AssertionError("unreachable: a refused text raised above")
    # Rounding to float keeps order (a < b => float(a) <= float(b)): a strict float order, or an
    # identical text, decides; a float order the other way refutes; only a float tie between
    # different texts needs the exact numbers. Inline: a call costs as much as this check.
    if not (
        (lo < o or low == open_)
        and (o < h or open_ == high)
        and (lo < c or low == close)
        and (c < h or close == high)
    ) and (
        lo > o
        or o > h
        or lo > c
        or c > h
        or not _is_exactly_consistent_bar(open_, high, low, close)
    ):
        raise FrameParseError(
            f"bar prices are inconsistent: open {open_} high {high} low {low} close {close}",
            stream,
        )
    return Bar(
        exchange=exchange,
        instrument_name=instrument_name,
        resolution=resolution,
        tick_us=tick_us,
        open_text=open_,
        high_text=high,
        low_text=low,
        close_text=close,
        volume_text=volume,
        closed=closed,
        received_us=received_us,
    )


# --- REST bodies -----------------------------------------------------------------------------


class ExchangeInfo(msgspec.Struct, frozen=True):
    instruments: list[Instrument]
    # The REQUEST_WEIGHT limit per minute the venue announces, when it announces one.
    request_weight_per_minute: int | None


def parse_exchange_info(body: bytes | str, exchange: str) -> ExchangeInfo:
    """``GET /api/v3/exchangeInfo`` -> instruments (``raw`` is each symbol's own JSON text)."""
    try:
        info = _exchange_info_decoder.decode(body)
    except msgspec.MsgspecError as exc:
        raise ParseError(f"exchangeInfo: {_describe(exc)}") from None
    instruments = [_instrument(raw, exchange) for raw in info.symbols]
    weight_limit = None
    for limit in info.rateLimits:
        if limit.rateLimitType == "REQUEST_WEIGHT" and limit.interval == "MINUTE":
            weight_limit = limit.limit // max(limit.intervalNum, 1)
    return ExchangeInfo(instruments=instruments, request_weight_per_minute=weight_limit)


def _instrument(raw: msgspec.Raw, exchange: str) -> Instrument:
    try:
        symbol = _symbol_decoder.decode(raw)
    except msgspec.MsgspecError as exc:
        raise ParseError(f"exchangeInfo symbol: {_describe(exc)}") from None
    tick_size = min_quantity = notional = min_notional = None
    for item in symbol.filters:
        if item.filterType == "PRICE_FILTER":
            tick_size = item.tickSize
        elif item.filterType == "LOT_SIZE":
            min_quantity = item.minQty
        elif item.filterType == "NOTIONAL":
            notional = item.minNotional
        elif item.filterType == "MIN_NOTIONAL":
            min_notional = item.minNotional
    where = f"exchangeInfo symbol {symbol.symbol}"
    if tick_size is None:
        raise ParseError(f"{where}: no PRICE_FILTER tickSize")
    if min_quantity is None:
        raise ParseError(f"{where}: no LOT_SIZE minQty")
    for name, value in (("tickSize", tick_size), ("minQty", min_quantity)):
        if not (value.is_finite() and value >= 0):
            raise ParseError(f"{where}: {name} {value} is not a non-negative number")
    # NOTIONAL replaced MIN_NOTIONAL; a symbol carrying both is governed by NOTIONAL.
    chosen_notional = notional if notional is not None else min_notional
    if chosen_notional is not None and not chosen_notional.is_finite():
        raise ParseError(f"{where}: minNotional {chosen_notional} is not a number")
    return Instrument(
        exchange=exchange,
        instrument_name=symbol.symbol,
        market_type=MarketType.SPOT,
        base_currency=symbol.baseAsset,
        quote_currency=symbol.quoteAsset,
        tick_size=tick_size,
        min_trade_amount=min_quantity,
        min_notional=chosen_notional,
        is_active=symbol.status == "TRADING",
        raw=bytes(raw).decode("utf-8", errors="replace"),
    )


def parse_rest_trades(
    body: bytes | str,
    *,
    exchange: str,
    instrument_name: str,
    received_us: int,
    time_unit: TimeUnit = "MICROSECOND",
) -> list[Trade]:
    """``GET /api/v3/historicalTrades`` or ``/api/v3/trades`` -> trades, in the venue's order."""
    where = f"trades {instrument_name}"
    try:
        rows = _rest_trades_decoder.decode(body)
    except msgspec.MsgspecError as exc:
        raise ParseError(f"{where}: {_describe(exc)}") from None
    factor = time_factor(time_unit)
    trades: list[Trade] = []
    for row in rows:
        if row.id < 0:
            raise ParseError(f"{where}: trade id {row.id} is negative")
        trades.append(
            Trade(
                exchange=exchange,
                instrument_name=instrument_name,
                market_type=_SPOT,
                trade_id=str(row.id),
                trade_seq=row.id,
                price_text=_positive(row.price, f"{where} price", ""),
                quantity_text=_positive(row.qty, f"{where} quantity", ""),
                is_buyer_maker=row.isBuyerMaker,
                was_best_price_match=row.isBestMatch,
                trade_us=_venue_time(row.time, factor, f"{where} time", ""),
                received_us=received_us,
            )
        )
    return trades


def parse_klines(
    body: bytes | str,
    *,
    exchange: str,
    instrument_name: str,
    resolution: str,
    now_us: int,
    time_unit: TimeUnit = "MICROSECOND",
) -> list[Bar]:
    """``GET /api/v3/klines`` -> bars; a bar is closed only once its close time has passed."""
    where = f"klines {instrument_name} {resolution}"
    try:
        rows = _rest_klines_decoder.decode(body)
    except msgspec.MsgspecError as exc:
        raise ParseError(f"{where}: {_describe(exc)}") from None
    factor = time_factor(time_unit)
    positive = PositiveDecimalMemo()
    bars: list[Bar] = []
    for row in rows:
        close_us = _venue_time(row.close_time, factor, f"{where} close time", "")
        bars.append(
            _checked_bar(
                exchange=exchange,
                instrument_name=instrument_name,
                resolution=resolution,
                tick_us=_venue_time(row.open_time, factor, f"{where} open time", ""),
                open_=row.open,
                high=row.high,
                low=row.low,
                close=row.close,
                volume=row.volume,
                closed=close_us < now_us,
                received_us=now_us,
                stream="",
                positive=positive,
            )
        )
    return bars


def parse_server_time_us(body: bytes | str) -> int:
    """``GET /api/v3/time`` -> microseconds (the venue answers in ms or µs; both are accepted)."""
    try:
        server_time = _server_time_decoder.decode(body).serverTime
    except msgspec.MsgspecError as exc:
        raise ParseError(f"time: {_describe(exc)}") from None
    # Milliseconds stay below 1e14 until the year 5138; microseconds are above it since 1973.
    us = server_time * 1000 if server_time < 100_000_000_000_000 else server_time
    if not _EARLIEST_US <= us < _LATEST_US:
        raise ParseError(f"time: serverTime {server_time} is not a time in the years 2000..2100")
    return us


def parse_rest_error(body: bytes | str) -> tuple[int, str] | None:
    """The ``{"code": -1121, "msg": "..."}`` of an error response, if that is what it is."""
    try:
        error = _rest_error_decoder.decode(body)
    except msgspec.MsgspecError:
        return None
    return error.code, error.msg
