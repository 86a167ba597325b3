"""Deribit wire format → canonical records: pure functions, no I/O, no clock reads.

Every frame is a JSON-RPC 2.0 message. Trades and tickers, the busy channels, are decoded with
the envelope in one pass (``params.data`` as a trades array or a ticker object). Any other frame,
or one that fails that decode, is decoded in two stages: the envelope with ``params.data`` (or
``result``) kept as ``msgspec.Raw``, then the payload by a precompiled decoder chosen from the
channel prefix, so that an error names the channel and says what is wrong.

Deribit sends prices and amounts as JSON numbers. Each is kept as ``msgspec.Raw`` and stored as
its exact text, as sent (``1.10`` stays ``1.10``; no float or ``Decimal`` is built per frame),
once ``tradingd.model``'s rules accept it (the positive rule once per distinct text, through the
connection's ``PositiveDecimalMemo``).

Anything that is not what the protocol says raises ``ParseError`` with the reason.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Mapping
from decimal import Decimal, InvalidOperation
from typing import Annotated, Final, Literal

import msgspec
from msgspec import Meta

from tradingd.adapters.base import ParseError
from tradingd.model import (
    Bar,
    Channel,
    Instrument,
    MarketType,
    PositiveDecimalMemo,
    Subscription,
    Ticker,
    Trade,
    is_finite_decimal,
    is_non_negative_decimal,
    is_positive_decimal,
    resolution_us,
)

# Millisecond timestamps between the epoch and the end of year 9999: keeps ``* 1000`` in int64.
_MAX_MS: Final = 253_402_300_799_999
Millis = Annotated[int, Meta(ge=0, le=_MAX_MS)]
Name = Annotated[str, Meta(min_length=1, max_length=128)]

# The channel interval used for market data. ``raw`` needs an authenticated connection
# (error 13778 otherwise); tradingd's market-data connections are public, so it uses ``100ms``,
# which delivers every trade too, batched per 100 ms (a trades notification is an array).
PUBLIC_INTERVAL: Final = "100ms"

# Canonical bar resolution → Deribit chart resolution. Deribit has no 4h resolution.
RESOLUTION_TO_DERIBIT: Final[Mapping[str, str]] = {
    "1m": "1",
    "3m": "3",
    "5m": "5",
    "15m": "15",
    "30m": "30",
    "1h": "60",
    "2h": "120",
    "6h": "360",
    "12h": "720",
    "1d": "1D",
}
_RESOLUTION_FROM_DERIBIT: Final[Mapping[str, str]] = {
    **{code: canonical for canonical, code in RESOLUTION_TO_DERIBIT.items()},
    "10": "10m",
    "180": "3h",
}
RESOLUTION_US: Final[Mapping[str, int]] = {
    canonical: resolution_us(canonical) for canonical in _RESOLUTION_FROM_DERIBIT.values()
}

# Perpetuals report this expiration (year 3000): it means "never".
PERPETUAL_EXPIRATION_MS: Final = 32_503_708_800_000

_INFINITY: Final = Decimal("Infinity")
_ZERO: Final = Decimal(0)


# --------------------------------------------------------------------------------------------
# Wire structs (only the fields tradingd uses; unknown fields are skipped by msgspec)


class _Params(msgspec.Struct, gc=False):
    channel: str = ""
    data: msgspec.Raw = msgspec.Raw()
    type: str = ""


class _WireTrade(msgspec.Struct, gc=False):
    trade_id: Name
    trade_seq: Annotated[int, Meta(ge=0)]
    timestamp: Millis
    price: msgspec.Raw
    amount: msgspec.Raw
    direction: Literal["buy", "sell"]
    instrument_name: Name


class RpcError(msgspec.Struct, frozen=True, gc=False):
    code: int
    message: str = ""
    data: msgspec.Raw = msgspec.Raw()

    def describe(self) -> str:
        detail = f"{self.code} {self.message}"
        if self.data and bytes(self.data) != b"null":
            detail += f" {bytes(self.data).decode('utf-8', 'replace')}"
        return detail


class _Envelope(msgspec.Struct, gc=False):
    method: str = ""
    params: _Params | None = None
    id: int | str | None = None
    result: msgspec.Raw = msgspec.Raw()
    error: RpcError | None = None


# A number field left out is an empty Raw; a JSON null is the Raw text "null".
class _WireTicker(msgspec.Struct, gc=False):
    instrument_name: Name
    timestamp: Millis
    best_bid_price: msgspec.Raw = msgspec.Raw()
    best_bid_amount: msgspec.Raw = msgspec.Raw()
    best_ask_price: msgspec.Raw = msgspec.Raw()
    best_ask_amount: msgspec.Raw = msgspec.Raw()
    last_price: msgspec.Raw = msgspec.Raw()
    mark_price: msgspec.Raw = msgspec.Raw()
    index_price: msgspec.Raw = msgspec.Raw()


class _DecodedParams(msgspec.Struct, gc=False):
    channel: str = ""
    # The shapes of the busy channels' data, decoded with the envelope (one pass); anything else
    # fails that decode, and is read again as sent (``_Params``).
    data: list[_WireTrade] | _WireTicker | None = None
    type: str = ""


class _DecodedEnvelope(msgspec.Struct, gc=False):
    method: str = ""
    params: _DecodedParams | None = None
    id: int | str | None = None
    result: msgspec.Raw = msgspec.Raw()
    error: RpcError | None = None


class _WireBar(msgspec.Struct, gc=False):
    tick: Millis
    open: msgspec.Raw
    high: msgspec.Raw
    low: msgspec.Raw
    close: msgspec.Raw
    volume: msgspec.Raw


class _WireChart(msgspec.Struct, gc=False):
    status: str = "ok"
    ticks: list[Millis] = []
    open: list[msgspec.Raw] = []
    high: list[msgspec.Raw] = []
    low: list[msgspec.Raw] = []
    close: list[msgspec.Raw] = []
    volume: list[msgspec.Raw] = []


class _WireTradesPage(msgspec.Struct, gc=False):
    trades: list[_WireTrade]
    has_more: bool = False


class _WireInstrument(msgspec.Struct, gc=False):
    instrument_name: Name
    kind: Literal["future", "option", "spot", "future_combo", "option_combo"]
    base_currency: Name
    quote_currency: Name
    tick_size: Decimal
    min_trade_amount: Decimal
    contract_size: Decimal = Decimal(1)
    expiration_timestamp: Millis | None = None
    is_active: bool = True
    settlement_period: str = ""


# msgspec reports invalid UTF-8 inside a JSON string as UnicodeDecodeError.
_DECODE_ERRORS: Final = (msgspec.DecodeError, UnicodeDecodeError)
_ENVELOPE = msgspec.json.Decoder(_Envelope)
_DECODED_ENVELOPE = msgspec.json.Decoder(_DecodedEnvelope)
_TRADES = msgspec.json.Decoder(list[_WireTrade])
_TICKER = msgspec.json.Decoder(_WireTicker)
_BAR = msgspec.json.Decoder(_WireBar)
_CHART = msgspec.json.Decoder(_WireChart)
_TRADES_PAGE = msgspec.json.Decoder(_WireTradesPage)
_RAW_LIST = msgspec.json.Decoder(list[msgspec.Raw])
_INSTRUMENT = msgspec.json.Decoder(_WireInstrument)
_STRINGS = msgspec.json.Decoder(list[str])
_INT = msgspec.json.Decoder(Millis)


# --------------------------------------------------------------------------------------------
# Instrument names


_UNDERLYING = r"[A-Z0-9]+(?:_[A-Z0-9]+)?"
_DATE = r"[0-9]{1,2}[A-Z]{3}[0-9]{2}"
_NAME_KINDS: Final = (
    (re.compile(rf"^{_UNDERLYING}-PERPETUAL$"), MarketType.PERPETUAL, False),
    (re.compile(rf"^{_UNDERLYING}-{_DATE}$"), MarketType.FUTURE, False),
    (re.compile(rf"^{_UNDERLYING}-{_DATE}-[0-9]+(?:d[0-9]+)?-[CP]$"), MarketType.OPTION, False),
    (re.compile(r"^[A-Z0-9]+_[A-Z0-9]+$"), MarketType.SPOT, False),
    # Combos: future spreads "BTC-FS-27DEC24_PERP", option strategies "BTC-CS-19MAY26-70000_75000".
    (re.compile(rf"^{_UNDERLYING}-FS-[A-Z0-9_]+$"), MarketType.FUTURE, True),
    (re.compile(rf"^{_UNDERLYING}-[A-Z][A-Z0-9]*-[0-9][0-9A-Za-z_-]*$"), MarketType.OPTION, True),
)
_name_cache: dict[str, tuple[MarketType, bool]] = {}
_NAME_CACHE_LIMIT: Final = 65_536


def classify_instrument(name: str) -> tuple[MarketType, bool]:
    """The market type of a Deribit instrument from its name alone, and whether it is a combo.

    Combo (spread/strategy) prices may legitimately be zero or negative.
    """
    known = _name_cache.get(name)
    if known is not None:
        return known
    for pattern, market_type, combo in _NAME_KINDS:
        if pattern.match(name):
            if len(_name_cache) >= _NAME_CACHE_LIMIT:
                _name_cache.clear()
            _name_cache[name] = (market_type, combo)
            return market_type, combo
    raise ParseError(f"unrecognised instrument name {name!r}")


def market_type_of(name: str) -> MarketType:
    return classify_instrument(name)[0]


# --------------------------------------------------------------------------------------------
# Channels


def resolution_code(resolution: str) -> str:
    """Deribit's chart resolution for a canonical one ("1m" → "1"); ValueError if it has none."""
    try:
        return RESOLUTION_TO_DERIBIT[resolution]
    except KeyError:
        raise ValueError(
            f"Deribit has no {resolution!r} chart resolution; "
            f"supported: {', '.join(RESOLUTION_TO_DERIBIT)}"
        ) from None


def channel_name(subscription: Subscription, default_resolution: str = "1m") -> str:
    instrument = subscription.instrument_name
    if subscription.channel is Channel.TRADES:
        return f"trades.{instrument}.{PUBLIC_INTERVAL}"
    if subscription.channel is Channel.TICKERS:
        return f"ticker.{instrument}.{PUBLIC_INTERVAL}"
    code = resolution_code(subscription.resolution or default_resolution)
    return f"chart.trades.{instrument}.{code}"


# --------------------------------------------------------------------------------------------
# Frames


class FrameKind(enum.Enum):
    DATA = "data"  # a subscription notification carrying market data
    TEST_REQUEST = "test_request"  # heartbeat asking for a public/test reply
    HEARTBEAT = "heartbeat"  # heartbeat that needs no reply
    REPLY = "reply"  # response to one of our requests (result or error)
    IGNORED = "ignored"  # valid, but not something tradingd consumes


class RpcReply(msgspec.Struct, frozen=True, gc=False):
    id: int | str | None
    result: msgspec.Raw
    error: RpcError | None


class ParsedFrame(msgspec.Struct, gc=False):
    kind: FrameKind
    records: list[Trade] | list[Ticker] | list[Bar]
    channel: str = ""
    reply: RpcReply | None = None
    method: str = ""


class NotificationError(ParseError):
    """A notification whose envelope was valid but whose data was not; names the channel."""

    def __init__(self, reason: str, channel: str) -> None:
        super().__init__(reason)
        self.channel = channel


def parse_frame(
    frame: bytes | str,
    *,
    exchange: str,
    received_us: int,
    positive: PositiveDecimalMemo | None = None,
) -> ParsedFrame:
    """One WebSocket text frame → its canonical records or what the session must do with it.

    ``positive`` is the connection's memo of the texts accepted so far (None: one for this frame).
    """
    if positive is None:
        positive = PositiveDecimalMemo()
    try:
        envelope: _DecodedEnvelope | _Envelope = _DECODED_ENVELOPE.decode(frame)
    except _DECODE_ERRORS:
        envelope = _decode_envelope(frame)
    method = envelope.method
    params = envelope.params
    if method == "subscription":
        if params is None or not params.channel:
            raise ParseError("subscription notification without params.channel")
        channel = params.channel
        data = params.data
        try:
            if isinstance(data, list) and channel.startswith("trades."):
                if not data:
                    raise ParseError("trades notification with no trades")
                trades = _to_trades(data, exchange, received_us, positive)
                return ParsedFrame(_DATA, trades, channel)
            if isinstance(data, _WireTicker) and channel.startswith("ticker."):
                ticker = _to_ticker(data, exchange, received_us, positive)
                return ParsedFrame(_DATA, [ticker], channel)
            if not isinstance(data, msgspec.Raw):
                # Decoded in another channel's shape (or null): this channel's decoder reads it.
                data = _data_as_sent(frame)
            records = _parse_notification(channel, data, exchange, received_us, positive)
        except (*_DECODE_ERRORS, ParseError) as exc:
            raise NotificationError(f"{channel}: {exc}", channel) from None
        if records is None:
            return ParsedFrame(FrameKind.IGNORED, [], channel, None, method)
        return ParsedFrame(_DATA, records, channel)
    if method == "heartbeat":
        kind = params.type if params is not None else ""
        if kind == "test_request":
            return ParsedFrame(FrameKind.TEST_REQUEST, [], "", None, method)
        if kind == "heartbeat":
            return ParsedFrame(FrameKind.HEARTBEAT, [], "", None, method)
        raise ParseError(f"heartbeat with unknown type {kind!r}")
    if method:
        return ParsedFrame(FrameKind.IGNORED, [], "", None, method)
    if envelope.error is not None or envelope.result:
        return ParsedFrame(
            FrameKind.REPLY, [], "", RpcReply(envelope.id, envelope.result, envelope.error)
        )
    raise ParseError("neither a notification nor a response (no method, result or error)")


_DATA: Final = FrameKind.DATA


def _decode_envelope(frame: bytes | str) -> _Envelope:
    """The envelope with ``params.data`` as sent: the payload's errors are then the payload
    decoder's, named by channel."""
    try:
        return _ENVELOPE.decode(frame)
    except _DECODE_ERRORS as exc:
        raise ParseError(f"not a JSON-RPC frame: {exc}") from None


def _data_as_sent(frame: bytes | str) -> msgspec.Raw:
    params = _decode_envelope(frame).params
    return msgspec.Raw() if params is None else params.data


def _parse_notification(
    channel: str, data: msgspec.Raw, exchange: str, received_us: int, positive: PositiveDecimalMemo
) -> list[Trade] | list[Ticker] | list[Bar] | None:
    if not data:
        raise ParseError("notification without params.data")
    if channel.startswith("trades."):
        return parse_trades(data, exchange=exchange, received_us=received_us, positive=positive)
    if channel.startswith("ticker."):
        return [parse_ticker(data, exchange=exchange, received_us=received_us, positive=positive)]
    if channel.startswith("chart.trades."):
        instrument, _, code = channel[13:].rpartition(".")
        resolution = _RESOLUTION_FROM_DERIBIT.get(code)
        if not instrument or resolution is None:
            raise ParseError(f"malformed chart channel {channel!r}")
        return [
            parse_bar(
                data,
                exchange=exchange,
                instrument_name=instrument,
                resolution=resolution,
                received_us=received_us,
            )
        ]
    return None


def _positive(value: Decimal, what: str) -> None:
    try:
        if _ZERO < value < _INFINITY:
            return
    except InvalidOperation:
        pass
    raise ParseError(f"{what} must be a positive number, got {value}")


# A number's text is ``str(raw, _AS_TEXT)``: latin-1 reads any bytes, so what is no JSON number
# (a string, null, non-ASCII) still becomes text, which the number rules then refuse.
_AS_TEXT: Final = "latin-1"


def _refused(what: str, rule: str, text: str) -> ParseError:
    shown = text if len(text) <= 40 else f"{text[:40]}... ({len(text)} characters)"
    return ParseError(f"{what} must be {rule}, got {shown}")


_POSITIVE: Final = "a positive number in [1e-20, 1e20)"
_NON_NEGATIVE: Final = "zero or a positive number in [1e-20, 1e20)"
_FINITE: Final = "zero or a number of magnitude in [1e-20, 1e20)"


def parse_trades(
    data: bytes | msgspec.Raw,
    *,
    exchange: str,
    received_us: int,
    positive: PositiveDecimalMemo | None = None,
) -> list[Trade]:
    """A trades notification's ``data`` (an array of 1..N trades) → one Trade per element
    (``positive``: as for ``parse_frame``)."""
    try:
        wire_trades = _TRADES.decode(data)
    except _DECODE_ERRORS as exc:
        raise ParseError(f"trade schema: {exc}") from None
    if not wire_trades:
        raise ParseError("trades notification with no trades")
    return _to_trades(wire_trades, exchange, received_us, positive or PositiveDecimalMemo())


def _to_trades(
    wire_trades: list[_WireTrade], exchange: str, received_us: int, positive: PositiveDecimalMemo
) -> list[Trade]:
    trades: list[Trade] = []
    append = trades.append
    names = _name_cache
    accepted = positive.floats
    for wire in wire_trades:
        name = wire.instrument_name
        known = names.get(name)
        market_type, combo = known if known is not None else classify_instrument(name)
        price = str(wire.price, _AS_TEXT)
        amount = str(wire.amount, _AS_TEXT)
        if amount not in accepted and positive.reading(amount) is None:
            raise _refused(f"trade {wire.trade_id} amount", _POSITIVE, amount)
        if not (
            is_finite_decimal(price)
            if combo
            else price in accepted or positive.reading(price) is not None
        ):
            raise _refused(f"trade {wire.trade_id} price", _FINITE if combo else _POSITIVE, price)
        # Positional, in the model's field order: keywords cost a quarter of the record.
        record = Trade(
            exchange, name, market_type, wire.trade_id, wire.trade_seq, price, amount,
            wire.direction == "sell", wire.timestamp * 1000, received_us,
        )  # fmt: skip
        append(record)
    return trades


def parse_ticker(
    data: bytes | msgspec.Raw,
    *,
    exchange: str,
    received_us: int,
    positive: PositiveDecimalMemo | None = None,
) -> Ticker:
    """A ticker notification's ``data`` → Ticker (``positive``: as for ``parse_frame``).

    Deribit reports an empty book side as price 0 and amount 0 (options) or null; both are kept
    as sent. Combo prices may be negative. The index price is always positive.
    """
    try:
        wire = _TICKER.decode(data)
    except _DECODE_ERRORS as exc:
        raise ParseError(f"ticker schema: {exc}") from None
    return _to_ticker(wire, exchange, received_us, positive or PositiveDecimalMemo())


def _to_ticker(
    wire: _WireTicker, exchange: str, received_us: int, positive: PositiveDecimalMemo
) -> Ticker:
    name = wire.instrument_name
    known = _name_cache.get(name)
    _market_type, combo = known if known is not None else classify_instrument(name)
    price, price_rule = (
        (is_finite_decimal, _FINITE) if combo else (is_non_negative_decimal, _NON_NEGATIVE)
    )
    # Spelled out field by field: a helper call per number costs a tenth of the ticker's parse.
    # A book number is nearly always positive and seen before: the memo of accepted texts, then
    # the positive rule, accept it first (the wider rule would call that rule too, a call deeper).
    # The mark and index prices move every tick, so a memo lookup would mostly miss: not asked.
    accepted = positive.floats
    text = str(wire.best_bid_price, _AS_TEXT)
    bid_price: str | None = None
    if text not in _NO_NUMBER:
        if not (text in accepted or positive.reading(text) is not None or price(text)):
            raise _refused("best_bid_price", price_rule, text)
        bid_price = text
    text = str(wire.best_bid_amount, _AS_TEXT)
    bid_amount: str | None = None
    if text not in _NO_NUMBER:
        if not (
            text in accepted or positive.reading(text) is not None or is_non_negative_decimal(text)
        ):
            raise _refused("best_bid_amount", _NON_NEGATIVE, text)
        bid_amount = text
    text = str(wire.best_ask_price, _AS_TEXT)
    ask_price: str | None = None
    if text not in _NO_NUMBER:
        if not (text in accepted or positive.reading(text) is not None or price(text)):
            raise _refused("best_ask_price", price_rule, text)
        ask_price = text
    text = str(wire.best_ask_amount, _AS_TEXT)
    ask_amount: str | None = None
    if text not in _NO_NUMBER:
        if not (
            text in accepted or positive.reading(text) is not None or is_non_negative_decimal(text)
        ):
            raise _refused("best_ask_amount", _NON_NEGATIVE, text)
        ask_amount = text
    text = str(wire.last_price, _AS_TEXT)
    last_price: str | None = None
    if text not in _NO_NUMBER:
        if not (
            is_finite_decimal(text)
            if combo
            else text in accepted or positive.reading(text) is not None
        ):
            raise _refused("last_price", _FINITE if combo else _POSITIVE, text)
        last_price = text
    text = str(wire.mark_price, _AS_TEXT)
    mark_price: str | None = None
    if text not in _NO_NUMBER:
        if not (is_positive_decimal(text) or price(text)):
            raise _refused("mark_price", price_rule, text)
        mark_price = text
    text = str(wire.index_price, _AS_TEXT)
    index_price: str | None = None
    if text not in _NO_NUMBER:
        if not is_positive_decimal(text):
            raise _refused("index_price", _POSITIVE, text)
        index_price = text
    # Positional, in the model's field order: keywords cost a quarter of the record.
    return Ticker(
        exchange, name, wire.timestamp * 1000, received_us,
        bid_price, bid_amount, ask_price, ask_amount, last_price, mark_price, index_price,
    )  # fmt: skip


# An empty Raw (left out) or JSON null.
_NO_NUMBER: Final = frozenset(("", "null"))


def _bar_texts(
    open_: msgspec.Raw,
    high: msgspec.Raw,
    low: msgspec.Raw,
    close: msgspec.Raw,
    volume: msgspec.Raw,
    combo: bool,
) -> tuple[str, str, str, str, str]:
    """A bar's numbers as sent, once checked: prices by the instrument's rule, the volume
    non-negative, and open and close within [low, high]."""
    check, rule = (
        (is_finite_decimal, _FINITE) if combo else (is_non_negative_decimal, _NON_NEGATIVE)
    )
    texts = (
        str(open_, _AS_TEXT),
        str(high, _AS_TEXT),
        str(low, _AS_TEXT),
        str(close, _AS_TEXT),
        str(volume, _AS_TEXT),
    )
    for text, what in zip(texts[:4], ("open", "high", "low", "close"), strict=True):
        if not check(text):
            raise _refused(what, rule, text)
    if not is_non_negative_decimal(texts[4]):
        raise _refused("volume", _NON_NEGATIVE, texts[4])
    open_value, high_value, low_value, close_value = (Decimal(text) for text in texts[:4])
    if not (low_value <= open_value <= high_value and low_value <= close_value <= high_value):
        raise ParseError(
            f"inconsistent bar: open {texts[0]} high {texts[1]} low {texts[2]} close {texts[3]}"
        )
    return texts


def parse_bar(
    data: bytes | msgspec.Raw,
    *,
    exchange: str,
    instrument_name: str,
    resolution: str,
    received_us: int,
) -> Bar:
    """A chart.trades notification's ``data`` → Bar (``closed=False``: the period may go on)."""
    try:
        wire = _BAR.decode(data)
    except _DECODE_ERRORS as exc:
        raise ParseError(f"bar schema: {exc}") from None
    _market_type, combo = classify_instrument(instrument_name)
    open_, high, low, close, volume = _bar_texts(
        wire.open, wire.high, wire.low, wire.close, wire.volume, combo
    )
    return Bar(
        exchange=exchange,
        instrument_name=instrument_name,
        resolution=resolution,
        tick_us=wire.tick * 1000,
        open_text=open_,
        high_text=high,
        low_text=low,
        close_text=close,
        volume_text=volume,
        closed=False,
        received_us=received_us,
    )


# --------------------------------------------------------------------------------------------
# RPC responses (WebSocket replies and HTTP bodies)


class RpcFailure(Exception):
    """The venue answered a request with a JSON-RPC error."""

    def __init__(self, error: RpcError) -> None:
        super().__init__(error.describe())
        self.error = error


def rpc_result(body: bytes | str) -> msgspec.Raw:
    """The ``result`` of a JSON-RPC response; ``RpcFailure`` for an error response."""
    try:
        envelope = _ENVELOPE.decode(body)
    except _DECODE_ERRORS as exc:
        raise ParseError(f"not a JSON-RPC response: {exc}") from None
    if envelope.error is not None:
        raise RpcFailure(envelope.error)
    if not envelope.result:
        raise ParseError("JSON-RPC response without result or error")
    return envelope.result


def parse_channel_list(result: bytes | msgspec.Raw) -> list[str]:
    """The result of public/subscribe or public/unsubscribe: channel names."""
    try:
        return _STRINGS.decode(result)
    except _DECODE_ERRORS as exc:
        raise ParseError(f"channel list: {exc}") from None


def parse_server_time_us(result: bytes | msgspec.Raw) -> int:
    """public/get_time's result (ms since the epoch) → µs."""
    try:
        return _INT.decode(result) * 1000
    except _DECODE_ERRORS as exc:
        raise ParseError(f"server time: {exc}") from None


def parse_trades_page(
    result: bytes | msgspec.Raw, *, exchange: str, received_us: int
) -> tuple[list[Trade], bool]:
    """public/get_last_trades_by_instrument's result → (trades as sent, has_more)."""
    try:
        page = _TRADES_PAGE.decode(result)
    except _DECODE_ERRORS as exc:
        raise ParseError(f"trades page: {exc}") from None
    return _to_trades(page.trades, exchange, received_us, PositiveDecimalMemo()), page.has_more


def parse_chart_data(
    result: bytes | msgspec.Raw,
    *,
    exchange: str,
    instrument_name: str,
    resolution: str,
    now_us: int,
    received_us: int,
) -> list[Bar]:
    """public/get_tradingview_chart_data's columnar result → Bars, oldest first.

    ``closed`` is True for bars whose period ended at or before ``now_us``.
    """
    try:
        chart = _CHART.decode(result)
    except _DECODE_ERRORS as exc:
        raise ParseError(f"chart data: {exc}") from None
    period_us = RESOLUTION_US.get(resolution)
    if period_us is None:
        raise ParseError(f"unknown resolution {resolution!r}")
    if chart.status == "no_data":
        return []
    if chart.status != "ok":
        raise ParseError(f"chart data status {chart.status!r}")
    count = len(chart.ticks)
    columns = (chart.open, chart.high, chart.low, chart.close, chart.volume)
    if any(len(column) != count for column in columns):
        raise ParseError("chart data columns have different lengths")
    _market_type, combo = classify_instrument(instrument_name)
    bars: list[Bar] = []
    for tick, open_raw, high_raw, low_raw, close_raw, volume_raw in zip(
        chart.ticks, *columns, strict=True
    ):
        open_, high, low, close, volume = _bar_texts(
            open_raw, high_raw, low_raw, close_raw, volume_raw, combo
        )
        tick_us = tick * 1000
        bars.append(
            Bar(
                exchange=exchange,
                instrument_name=instrument_name,
                resolution=resolution,
                tick_us=tick_us,
                open_text=open_,
                high_text=high,
                low_text=low,
                close_text=close,
                volume_text=volume,
                closed=tick_us + period_us <= now_us,
                received_us=received_us,
            )
        )
    bars.sort(key=lambda bar: bar.tick_us)
    return bars


_KIND_TO_MARKET_TYPE: Final[Mapping[str, MarketType]] = {
    "future": MarketType.FUTURE,
    "future_combo": MarketType.FUTURE,
    "option": MarketType.OPTION,
    "option_combo": MarketType.OPTION,
    "spot": MarketType.SPOT,
}


def parse_instruments(result: bytes | msgspec.Raw, *, exchange: str) -> list[Instrument]:
    """public/get_instruments' result → Instruments, each keeping its JSON text in ``raw``."""
    try:
        raws = _RAW_LIST.decode(result)
    except _DECODE_ERRORS as exc:
        raise ParseError(f"instruments: {exc}") from None
    return [parse_instrument(raw, exchange=exchange) for raw in raws]


def parse_instrument(raw: bytes | msgspec.Raw, *, exchange: str) -> Instrument:
    try:
        wire = _INSTRUMENT.decode(raw)
    except _DECODE_ERRORS as exc:
        raise ParseError(f"instrument: {exc}") from None
    name = wire.instrument_name
    try:
        text = bytes(raw).decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ParseError(f"instrument {name}: {exc}") from None
    _positive(wire.tick_size, f"{name} tick_size")
    _positive(wire.min_trade_amount, f"{name} min_trade_amount")
    _positive(wire.contract_size, f"{name} contract_size")
    market_type = _KIND_TO_MARKET_TYPE[wire.kind]
    if wire.kind == "future" and wire.settlement_period == "perpetual":
        market_type = MarketType.PERPETUAL
    expiration = wire.expiration_timestamp
    expires = (
        expiration is not None
        and expiration < PERPETUAL_EXPIRATION_MS
        and market_type not in (MarketType.PERPETUAL, MarketType.SPOT)
    )
    return Instrument(
        exchange=exchange,
        instrument_name=name,
        market_type=market_type,
        base_currency=wire.base_currency,
        quote_currency=wire.quote_currency,
        tick_size=wire.tick_size,
        min_trade_amount=wire.min_trade_amount,
        contract_size=wire.contract_size,
        expiration_us=expiration * 1000 if expires and expiration is not None else None,
        is_active=wire.is_active,
        raw=text,
    )
