"""Deribit private API, sans-I/O: JSON-RPC requests for authentication, order entry, queries
and user subscriptions; parsers of their results and of the ``user.*`` notifications; ONE
table classifying the venue's error codes.

Deribit has no client order id: our client id travels as the order's ``label``. Labels are not
unique at the venue, so a lookup by label that matches more than once is a fault (the exchange
must be LOCKED), never a guess. Amounts and prices go out as JSON numbers written from the
``Decimal``'s text and come back into ``Decimal`` the same way; nothing passes through a float.
"""

from __future__ import annotations

import re
from decimal import Decimal
from typing import Annotated, Final, Literal, TypeVar

import msgspec
from msgspec import Meta

from tradingd.adapters.base import ParseError
from tradingd.adapters.trading import Classified, Verdict

Direction = Literal["buy", "sell"]
OrderType = Literal["limit", "market"]
TimeInForce = Literal["good_til_cancelled", "good_til_day", "fill_or_kill", "immediate_or_cancel"]
OrderState = Literal["open", "filled", "rejected", "cancelled", "untriggered", "triggered"]
Liquidity = Literal["M", "T"]

MAX_LABEL: Final = 64
LABEL: Final = re.compile(r"[\x21-\x7e]{1,64}")
# A token is refreshed once this share of its lifetime has passed, and never later than
# REFRESH_MARGIN_US before it expires: a refresh that fails leaves time for a full re-auth.
REFRESH_AT_FRACTION: Final = 0.8
REFRESH_MARGIN_US: Final = 60_000_000

_MAX_MS: Final = 253_402_300_799_999
Millis = Annotated[int, Meta(ge=0, le=_MAX_MS)]

_encoder: Final = msgspec.json.Encoder(decimal_format="number")
_DECODE_ERRORS: Final = (msgspec.DecodeError, msgspec.ValidationError, UnicodeDecodeError)

T = TypeVar("T")

Params = dict[str, str | int | bool | Decimal | list[str]]


# --- the one error table ---------------------------------------------------------------------

ERROR_TABLE: Final[dict[int, Verdict]] = {
    # definitive: the order was refused and does not exist
    10002: Verdict.REJECTED,  # qty_too_low
    10003: Verdict.REJECTED,  # order_overlap
    10005: Verdict.REJECTED,  # price_too_low
    10006: Verdict.REJECTED,  # price_too_low4idx
    10007: Verdict.REJECTED,  # price_too_high
    10009: Verdict.REJECTED,  # not_enough_funds
    10012: Verdict.REJECTED,  # book_closed
    10020: Verdict.REJECTED,  # invalid_or_unsupported_instrument
    10021: Verdict.REJECTED,  # invalid_amount
    10023: Verdict.REJECTED,  # invalid_price
    10025: Verdict.REJECTED,  # invalid_order_id
    10026: Verdict.REJECTED,  # price_precision_exceeded
    10027: Verdict.REJECTED,  # non_integer_contract_amount
    10029: Verdict.REJECTED,  # not_owner_of_order
    10043: Verdict.REJECTED,  # price_wrong_tick
    11029: Verdict.REJECTED,  # invalid_arguments
    11050: Verdict.REJECTED,  # bad_request
    11054: Verdict.REJECTED,  # post_only_reject
    13020: Verdict.REJECTED,  # not_found (instrument)
    -32600: Verdict.REJECTED,  # request entity too large
    -32601: Verdict.REJECTED,  # method not found
    -32602: Verdict.REJECTED,  # invalid params
    -32700: Verdict.REJECTED,  # parse error
    -32000: Verdict.REJECTED,  # missing params
    # valid_until passed before the engine processed it: never placed
    13888: Verdict.REJECTED,  # timed_out
    # a cancel or query that found nothing, or an order already closed
    10004: Verdict.NOT_FOUND,  # order_not_found
    10010: Verdict.REJECTED,  # already_closed (a cancel refused: the order is done)
    11008: Verdict.REJECTED,  # already_filled
    11044: Verdict.REJECTED,  # not_open_order
    # rate limits: refused before processing (10028 also ends the session)
    10028: Verdict.RATE_LIMITED,  # too_many_requests
    10047: Verdict.RATE_LIMITED,  # matching_engine_queue_full
    10066: Verdict.RATE_LIMITED,  # too_many_concurrent_requests
    # the venue is paused
    10041: Verdict.MAINTENANCE,  # settlement_in_progress
    11051: Verdict.MAINTENANCE,  # system_maintenance
    # credentials
    10000: Verdict.AUTH_FAILED,  # authorization_required
    13004: Verdict.AUTH_FAILED,  # invalid_credentials
    13009: Verdict.AUTH_FAILED,  # unauthorized (expired token, token of another connection)
    13021: Verdict.AUTH_FAILED,  # forbidden (scope)
    # labels are ours and unique by construction: a duplicate means something is wrong
    13032: Verdict.FAULT,  # non_unique_order_label
    # ambiguous: the order may exist
    10001: Verdict.UNKNOWN,  # error
    10040: Verdict.UNKNOWN,  # retry
    13028: Verdict.UNKNOWN,  # temporarily_unavailable
}
# Deribit tells no Retry-After; its credit pools refill in about a second.
RATE_LIMIT_PAUSE: Final = 1.0


def classify_error(code: int, message: str) -> Classified:
    """One JSON-RPC error -> its verdict; a code not in the table is UNKNOWN."""
    verdict = ERROR_TABLE.get(code, Verdict.UNKNOWN)
    return Classified(
        verdict=verdict,
        reason=f"{code} {message}".strip(),
        code=code,
        retry_after=RATE_LIMIT_PAUSE if verdict is Verdict.RATE_LIMITED else None,
    )


# --- requests ----------------------------------------------------------------------------------


def rpc(request_id: int, method: str, params: Params) -> bytes:
    """One JSON-RPC 2.0 request frame."""
    return _encoder.encode({"jsonrpc": "2.0", "id": request_id, "method": method, "params": params})


def auth_client_credentials(request_id: int, client_id: str, client_secret: str) -> bytes:
    return rpc(
        request_id,
        "public/auth",
        {"grant_type": "client_credentials", "client_id": client_id,
         "client_secret": client_secret},
    )  # fmt: skip


def auth_refresh(request_id: int, refresh_token: str) -> bytes:
    return rpc(
        request_id,
        "public/auth",
        {"grant_type": "refresh_token", "refresh_token": refresh_token},
    )


def enable_cancel_on_disconnect(request_id: int) -> bytes:
    """Orders sent on this connection are cancelled by the venue when it drops."""
    return rpc(request_id, "private/enable_cancel_on_disconnect", {"scope": "connection"})


def check_label(label: str) -> str:
    if not LABEL.fullmatch(label):
        raise ValueError(f"label {label!r} must be 1..{MAX_LABEL} printable ASCII characters")
    return label


def place_order(
    request_id: int,
    *,
    direction: Direction,
    instrument_name: str,
    amount: Decimal,
    label: str,
    valid_until_ms: int,
    order_type: OrderType = "limit",
    price: Decimal | None = None,
    time_in_force: TimeInForce = "good_til_cancelled",
    post_only: bool = False,
    reduce_only: bool = False,
) -> bytes:
    """``private/buy`` or ``private/sell`` with our client id as ``label``. ``valid_until``
    (venue ms) bounds when the engine may still act on it: past it, the answer is 13888."""
    if amount <= 0 or not amount.is_finite():
        raise ValueError(f"amount {amount} is not positive")
    params: Params = {
        "instrument_name": instrument_name,
        "amount": amount,
        "type": order_type,
        "label": check_label(label),
        "time_in_force": time_in_force,
        "reduce_only": reduce_only,
        "valid_until": valid_until_ms,
    }
    if order_type == "limit":
        if price is None or price <= 0 or not price.is_finite():
            raise ValueError("a limit order needs a positive price")
        params["price"] = price
        # Sent explicitly: the venue's default has changed; a post-only order that would take
        # is rejected (11054) rather than silently repriced.
        params["post_only"] = post_only
        if post_only:
            params["reject_post_only"] = True
    elif price is not None or post_only:
        raise ValueError("a market order takes neither a price nor post_only")
    return rpc(request_id, f"private/{direction}", params)


def cancel(request_id: int, order_id: str) -> bytes:
    return rpc(request_id, "private/cancel", {"order_id": order_id})


def cancel_all(request_id: int) -> bytes:
    return rpc(request_id, "private/cancel_all", {})


def cancel_all_by_instrument(request_id: int, instrument_name: str) -> bytes:
    return rpc(request_id, "private/cancel_all_by_instrument", {"instrument_name": instrument_name})


def cancel_by_label(request_id: int, label: str, currency: str) -> bytes:
    return rpc(
        request_id, "private/cancel_by_label", {"label": check_label(label), "currency": currency}
    )


def get_open_orders_by_currency(request_id: int, currency: str) -> bytes:
    return rpc(request_id, "private/get_open_orders_by_currency", {"currency": currency})


def get_order_state_by_label(request_id: int, currency: str, label: str) -> bytes:
    return rpc(
        request_id,
        "private/get_order_state_by_label",
        {"currency": currency, "label": check_label(label)},
    )


def get_user_trades_by_currency(
    request_id: int, currency: str, *, start_id: str | None = None, count: int = 1000
) -> bytes:
    """Our trades, oldest first, from trade id ``start_id`` (inclusive) when given."""
    if not 1 <= count <= 1000:
        raise ValueError("count must be in 1..1000")
    params: Params = {"currency": currency, "count": count, "sorting": "asc"}
    if start_id is not None:
        params["start_id"] = start_id
    return rpc(request_id, "private/get_user_trades_by_currency", params)


def get_positions(request_id: int, currency: str) -> bytes:
    return rpc(request_id, "private/get_positions", {"currency": currency})


def get_account_summary(request_id: int, currency: str) -> bytes:
    return rpc(request_id, "private/get_account_summary", {"currency": currency})


def user_channels(currency: str) -> list[str]:
    """The private channels an execution connection subscribes to."""
    return [
        f"user.orders.any.{currency}.raw",
        f"user.trades.any.{currency}.raw",
        f"user.portfolio.{currency.lower()}",
    ]


def private_subscribe(request_id: int, channels: list[str]) -> bytes:
    return rpc(request_id, "private/subscribe", {"channels": channels})


# --- authentication ----------------------------------------------------------------------------


class _WireAuth(msgspec.Struct):
    access_token: str
    refresh_token: str
    expires_in: Annotated[int, Meta(gt=0)]
    scope: str = ""


class Token(msgspec.Struct, frozen=True, kw_only=True):
    access_token: str
    refresh_token: str
    expires_us: int
    refresh_due_us: int

    def __repr__(self) -> str:
        return f"Token(expires_us={self.expires_us}, refresh_due_us={self.refresh_due_us})"


def parse_auth(result: bytes | msgspec.Raw, received_us: int) -> Token:
    """``public/auth``'s result -> the token and when to refresh it."""
    try:
        wire = msgspec.json.decode(result, type=_WireAuth)
    except _DECODE_ERRORS as exc:
        raise ParseError(f"public/auth: {exc}") from None
    lifetime_us = wire.expires_in * 1_000_000
    due = min(
        received_us + int(lifetime_us * REFRESH_AT_FRACTION),
        received_us + lifetime_us - REFRESH_MARGIN_US,
    )
    return Token(
        access_token=wire.access_token,
        refresh_token=wire.refresh_token,
        expires_us=received_us + lifetime_us,
        refresh_due_us=max(received_us, due),
    )


# --- orders, trades, positions, account --------------------------------------------------------


class _WireOrder(msgspec.Struct):
    order_id: str
    order_state: OrderState
    instrument_name: str
    direction: Direction
    label: str = ""
    amount: Decimal = Decimal(0)
    filled_amount: Decimal = Decimal(0)
    # A number, or the string "market_price" for trigger-market orders (msgspec cannot take
    # Decimal | str, so it is read in two steps).
    price: msgspec.Raw = msgspec.Raw()
    average_price: Decimal | None = None
    order_type: str = ""
    last_update_timestamp: Millis = 0
    cancel_reason: str = ""


class _WireUserTrade(msgspec.Struct):
    trade_id: str
    order_id: str
    instrument_name: str
    direction: Direction
    price: Decimal
    amount: Decimal
    fee: Decimal
    fee_currency: str
    liquidity: Liquidity
    timestamp: Millis
    trade_seq: int = 0
    label: str = ""
    state: str = ""


class Order(msgspec.Struct, frozen=True, kw_only=True):
    order_id: str
    label: str  # our client id ("" for an order not sent by us)
    instrument_name: str
    direction: Direction
    state: OrderState
    amount: Decimal
    filled_amount: Decimal
    price: Decimal | None
    average_price: Decimal | None
    updated_us: int
    cancel_reason: str = ""


class UserTrade(msgspec.Struct, frozen=True, kw_only=True):
    trade_id: str  # unique per currency: with the exchange, the fill's identity
    order_id: str
    label: str
    instrument_name: str
    direction: Direction
    price: Decimal
    amount: Decimal
    fee: Decimal  # negative: a maker rebate
    fee_currency: str
    maker: bool
    at_us: int


class PlaceResult(msgspec.Struct, frozen=True, kw_only=True):
    order: Order
    trades: list[UserTrade]


class TradesPage(msgspec.Struct, frozen=True, kw_only=True):
    trades: list[UserTrade]
    has_more: bool


class Position(msgspec.Struct, frozen=True, kw_only=True):
    instrument_name: str
    size: Decimal  # signed: negative is short (USD for inverse futures)
    average_price: Decimal
    kind: str


class AccountSummary(msgspec.Struct, frozen=True, kw_only=True):
    currency: str
    balance: Decimal
    equity: Decimal
    available_funds: Decimal


class _WirePlace(msgspec.Struct):
    order: _WireOrder
    trades: list[_WireUserTrade] = []


class _WireTradesPage(msgspec.Struct):
    trades: list[_WireUserTrade]
    has_more: bool = False


class _WirePosition(msgspec.Struct):
    instrument_name: str
    size: Decimal
    average_price: Decimal = Decimal(0)
    kind: str = ""


class _WireSummary(msgspec.Struct):
    currency: str
    balance: Decimal
    equity: Decimal
    available_funds: Decimal


def _finite(value: Decimal, what: str) -> Decimal:
    if not value.is_finite():
        raise ParseError(f"{what} {value} is not a finite number")
    return value


_decimal_decoder: Final = msgspec.json.Decoder(Decimal | None)


def _price(raw: msgspec.Raw, order_id: str) -> Decimal | None:
    if not raw or bytes(raw).startswith(b'"'):
        return None  # absent, or "market_price": no limit price
    try:
        price = _decimal_decoder.decode(raw)
    except _DECODE_ERRORS as exc:
        raise ParseError(f"order {order_id}: price: {exc}") from None
    if price is not None and not (price.is_finite() and price >= 0):
        raise ParseError(f"order {order_id}: price {price} is not a number >= 0")
    return price


def _order(wire: _WireOrder) -> Order:
    if wire.amount < 0 or wire.filled_amount < 0 or wire.filled_amount > wire.amount:
        raise ParseError(
            f"order {wire.order_id}: filled {wire.filled_amount} of amount {wire.amount}"
        )
    price = _price(wire.price, wire.order_id)
    average = wire.average_price if wire.average_price else None
    return Order(
        order_id=wire.order_id,
        label=wire.label,
        instrument_name=wire.instrument_name,
        direction=wire.direction,
        state=wire.order_state,
        amount=_finite(wire.amount, "amount"),
        filled_amount=_finite(wire.filled_amount, "filled_amount"),
        price=price,
        average_price=average,
        updated_us=wire.last_update_timestamp * 1000,
        cancel_reason=wire.cancel_reason,
    )


def _trade(wire: _WireUserTrade) -> UserTrade:
    if not (wire.price > 0 and wire.amount > 0) or not wire.fee.is_finite():
        raise ParseError(f"user trade {wire.trade_id}: not a positive fill")
    return UserTrade(
        trade_id=wire.trade_id,
        order_id=wire.order_id,
        label=wire.label,
        instrument_name=wire.instrument_name,
        direction=wire.direction,
        price=wire.price,
        amount=wire.amount,
        fee=wire.fee,
        fee_currency=wire.fee_currency,
        maker=wire.liquidity == "M",
        at_us=wire.timestamp * 1000,
    )


def _decode(result: bytes | msgspec.Raw, kind: type[T], what: str) -> T:
    try:
        return msgspec.json.decode(result, type=kind)
    except _DECODE_ERRORS as exc:
        raise ParseError(f"{what}: {exc}") from None


def parse_place(result: bytes | msgspec.Raw) -> PlaceResult:
    """``private/buy|sell``'s result: the order and the trades it made at once."""
    wire = _decode(result, _WirePlace, "order placed")
    return PlaceResult(order=_order(wire.order), trades=[_trade(t) for t in wire.trades])


def parse_order(result: bytes | msgspec.Raw) -> Order:
    """``private/cancel``'s (or ``get_order_state``'s) result."""
    return _order(_decode(result, _WireOrder, "order"))


def parse_orders(result: bytes | msgspec.Raw) -> list[Order]:
    """``get_open_orders_by_currency`` or ``cancel_all`` with ``detailed``."""
    return [_order(w) for w in _decode(result, list[_WireOrder], "orders")]


class LabelNotUnique(ParseError):
    """The venue holds more than one order under one of our labels: lock, never guess."""

    def __init__(self, label: str, order_ids: list[str]) -> None:
        super().__init__(f"label {label!r} matches {len(order_ids)} orders: {order_ids}")
        self.label = label
        self.order_ids = order_ids

    def classified(self) -> Classified:
        return Classified(verdict=Verdict.FAULT, reason=str(self))


def parse_order_by_label(result: bytes | msgspec.Raw, label: str) -> Order | None:
    """``get_order_state_by_label``'s list -> the one order (None: the venue has none now);
    ``LabelNotUnique`` when more than one matches."""
    orders = [o for o in parse_orders(result) if o.label == label]
    if len(orders) > 1:
        raise LabelNotUnique(label, [o.order_id for o in orders])
    return orders[0] if orders else None


def parse_trades_page(result: bytes | msgspec.Raw) -> TradesPage:
    """``get_user_trades_by_currency``'s result."""
    wire = _decode(result, _WireTradesPage, "user trades")
    return TradesPage(trades=[_trade(t) for t in wire.trades], has_more=wire.has_more)


def parse_positions(result: bytes | msgspec.Raw) -> list[Position]:
    return [
        Position(
            instrument_name=w.instrument_name,
            size=_finite(w.size, "size"),
            average_price=w.average_price,
            kind=w.kind,
        )
        for w in _decode(result, list[_WirePosition], "positions")
    ]


def parse_account_summary(result: bytes | msgspec.Raw) -> AccountSummary:
    w = _decode(result, _WireSummary, "account summary")
    return AccountSummary(
        currency=w.currency,
        balance=_finite(w.balance, "balance"),
        equity=_finite(w.equity, "equity"),
        available_funds=_finite(w.available_funds, "available_funds"),
    )


def parse_cancel_count(result: bytes | msgspec.Raw) -> int:
    """``cancel_all`` / ``cancel_by_label`` without ``detailed``: how many were cancelled."""
    count = _decode(result, int, "cancel count")
    if count < 0:
        raise ParseError(f"cancel count {count} is negative")
    return count


# --- user notifications ------------------------------------------------------------------------


class OrdersUpdate(msgspec.Struct, frozen=True, kw_only=True):
    orders: list[Order]


class TradesUpdate(msgspec.Struct, frozen=True, kw_only=True):
    trades: list[UserTrade]


class PortfolioUpdate(msgspec.Struct, frozen=True, kw_only=True):
    currency: str
    balance: Decimal | None
    equity: Decimal | None
    available_funds: Decimal | None


class _WirePortfolio(msgspec.Struct):
    currency: str
    balance: Decimal | None = None
    equity: Decimal | None = None
    available_funds: Decimal | None = None


UserUpdate = OrdersUpdate | TradesUpdate | PortfolioUpdate


def parse_user_notification(channel: str, data: bytes | msgspec.Raw) -> UserUpdate | None:
    """The ``data`` of a ``user.orders.*``, ``user.trades.*`` or ``user.portfolio.*``
    notification; None for any other channel. ``user.orders.*.raw`` carries one order, the
    aggregated intervals a list."""
    if channel.startswith("user.orders."):
        if channel.endswith(".raw"):
            try:
                return OrdersUpdate(orders=[_order(_decode(data, _WireOrder, channel))])
            except ParseError:
                pass  # some venues' raw channels batch too: accept a list
        return OrdersUpdate(orders=[_order(w) for w in _decode(data, list[_WireOrder], channel)])
    if channel.startswith("user.trades."):
        return TradesUpdate(
            trades=[_trade(w) for w in _decode(data, list[_WireUserTrade], channel)]
        )
    if channel.startswith("user.portfolio."):
        wire = _decode(data, _WirePortfolio, channel)
        return PortfolioUpdate(
            currency=wire.currency,
            balance=wire.balance,
            equity=wire.equity,
            available_funds=wire.available_funds,
        )
    return None
