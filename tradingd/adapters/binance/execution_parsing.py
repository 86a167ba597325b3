"""Binance spot private API answers, sans-I/O: order responses, account and trade queries, the
user-data stream's events, and ONE table classifying the venue's errors.

Money is decoded straight from the venue's text into ``Decimal``. Times are returned in
microseconds; ``time_unit`` says what the venue was asked for (as in ``parsing``).
"""

from __future__ import annotations

from decimal import Decimal
from typing import Final, Literal

import msgspec

from tradingd.adapters.base import ParseError
from tradingd.adapters.binance.parsing import TimeUnit, time_factor
from tradingd.adapters.trading import Classified, Verdict

OrderStatus = Literal[
    "NEW",
    "PENDING_NEW",
    "PARTIALLY_FILLED",
    "FILLED",
    "CANCELED",
    "PENDING_CANCEL",
    "REJECTED",
    "EXPIRED",
    "EXPIRED_IN_MATCH",
]
Side = Literal["BUY", "SELL"]

# --- the one error table --------------------------------------------------------------------

# code -> verdict, for 4xx answers carrying a venue error code. Codes not named here (and any
# answer without a code) are UNKNOWN: silence or the unexpected never counts as a rejection.
ERROR_TABLE: Final[dict[int, Verdict]] = {
    -1013: Verdict.REJECTED,  # filter failure: never reached the matching engine
    -2010: Verdict.REJECTED,  # the matching engine refused the new order
    -1100: Verdict.REJECTED,  # illegal characters in a parameter
    -1111: Verdict.REJECTED,  # too much precision
    -1102: Verdict.REJECTED,  # a mandatory parameter missing or malformed
    -1121: Verdict.REJECTED,  # invalid symbol
    -2011: Verdict.REJECTED,  # cancel refused (see the message exceptions below)
    -1006: Verdict.UNKNOWN,  # unexpected response from the backend: execution status unknown
    -1007: Verdict.UNKNOWN,  # backend timeout: "send status unknown; execution status unknown"
    -1021: Verdict.RESEND_AFTER_CLOCK_SYNC,  # refused at the gateway: outside recvWindow
    -2013: Verdict.NOT_FOUND,  # "Order does not exist." (lags a fill: not proof of absence)
    -1022: Verdict.AUTH_FAILED,  # signature not valid
    -2014: Verdict.AUTH_FAILED,  # API-key format invalid
    -2015: Verdict.AUTH_FAILED,  # invalid API-key, IP, or permissions
}
# (code, exact message) -> verdict, where the message changes the meaning of the code.
MESSAGE_EXCEPTIONS: Final[dict[tuple[int, str], Verdict]] = {
    # The client id is already live on the venue: our order exists, this request did nothing.
    (-2010, "Duplicate order sent."): Verdict.UNKNOWN,
    (-2011, "Unknown order sent."): Verdict.NOT_FOUND,
}
# Retry-After is documented on every 429/418; this is for an answer that lacks it.
FALLBACK_RETRY_AFTER: Final = 60.0


def classify_error(
    status: int, code: int | None, message: str, retry_after: float | None = None
) -> Classified:
    """One failed HTTP (or WebSocket API) answer -> its verdict."""
    reason = f"HTTP {status}" + (f" {code}: {message}" if code is not None else "")
    if status == 418:
        wait = retry_after if retry_after is not None else FALLBACK_RETRY_AFTER
        return Classified(verdict=Verdict.BANNED, reason=reason, code=code, retry_after=wait)
    if status == 429:
        wait = retry_after if retry_after is not None else FALLBACK_RETRY_AFTER
        return Classified(verdict=Verdict.RATE_LIMITED, reason=reason, code=code, retry_after=wait)
    if status >= 500 or code is None or not 400 <= status < 500:
        return Classified(verdict=Verdict.UNKNOWN, reason=reason, code=code)
    verdict = MESSAGE_EXCEPTIONS.get((code, message), ERROR_TABLE.get(code, Verdict.UNKNOWN))
    return Classified(verdict=verdict, reason=reason, code=code)


def parse_retry_after(value: str | None) -> float | None:
    """The ``Retry-After`` header (seconds), if present and a number."""
    if value is None:
        return None
    try:
        seconds = float(value)
    except ValueError:
        return None
    return seconds if seconds >= 0 else None


ORDER_COUNT_PREFIX: Final = "X-MBX-ORDER-COUNT-"
USED_WEIGHT_PREFIX: Final = "X-MBX-USED-WEIGHT-"


def _interval_headers(headers: dict[str, str], prefix: str) -> dict[str, int]:
    counts: dict[str, int] = {}
    lowered = prefix.lower()
    for name, value in headers.items():
        if name.lower().startswith(lowered):
            try:
                counts[name[len(prefix) :].upper()] = int(value)
            except ValueError:
                continue
    return counts


def order_counts(headers: dict[str, str]) -> dict[str, int]:
    """``X-MBX-ORDER-COUNT-10S: 3`` -> ``{"10S": 3}`` (case-insensitive header names)."""
    return _interval_headers(headers, ORDER_COUNT_PREFIX)


def used_weights(headers: dict[str, str]) -> dict[str, int]:
    """``X-MBX-USED-WEIGHT-1M: 40`` -> ``{"1M": 40}`` (case-insensitive header names)."""
    return _interval_headers(headers, USED_WEIGHT_PREFIX)


# --- order responses and queries -------------------------------------------------------------


class Fill(msgspec.Struct, frozen=True, kw_only=True):
    trade_id: int
    price: Decimal
    quantity: Decimal
    commission: Decimal
    commission_asset: str
    maker: bool | None = None  # the FULL response does not say
    at_us: int | None = None


class Order(msgspec.Struct, frozen=True, kw_only=True):
    symbol: str
    order_id: int
    client_order_id: str  # ours: origClientOrderId on a cancel
    status: OrderStatus | None  # None: an ACK response (the order exists; nothing more known)
    side: Side | None = None
    price: Decimal | None = None
    quantity: Decimal | None = None
    executed_quantity: Decimal = Decimal(0)
    quote_quantity: Decimal = Decimal(0)
    fills: list[Fill] = []
    updated_us: int | None = None


class _WireFill(msgspec.Struct):
    price: Decimal
    qty: Decimal
    commission: Decimal
    commissionAsset: str
    tradeId: int


class _WireOrder(msgspec.Struct):
    symbol: str
    orderId: int
    clientOrderId: str
    origClientOrderId: str | None = None
    status: OrderStatus | None = None
    side: Side | None = None
    price: Decimal | None = None
    origQty: Decimal | None = None
    executedQty: Decimal = Decimal(0)
    cummulativeQuoteQty: Decimal = Decimal(0)
    transactTime: int | None = None
    updateTime: int | None = None
    fills: list[_WireFill] = []


class _Balance(msgspec.Struct):
    asset: str
    free: Decimal
    locked: Decimal


class _Account(msgspec.Struct):
    balances: list[_Balance]
    canTrade: bool = True


class _WireTrade(msgspec.Struct):
    symbol: str
    id: int
    orderId: int
    price: Decimal
    qty: Decimal
    commission: Decimal
    commissionAsset: str
    time: int
    isBuyer: bool
    isMaker: bool


_order_decoder: Final = msgspec.json.Decoder(_WireOrder)
_orders_decoder: Final = msgspec.json.Decoder(list[_WireOrder])
_account_decoder: Final = msgspec.json.Decoder(_Account)
_trades_decoder: Final = msgspec.json.Decoder(list[_WireTrade])


def _describe(exc: msgspec.MsgspecError) -> str:
    return str(exc).replace("`$.", "`")


def _order(wire: _WireOrder, factor: int) -> Order:
    for value, what in ((wire.executedQty, "executedQty"), (wire.cummulativeQuoteQty, "quote")):
        if not value.is_finite() or value < 0:
            raise ParseError(f"order {wire.clientOrderId}: {what} {value} is not >= 0")
    fills = []
    for fill in wire.fills:
        if not (fill.price > 0 and fill.qty > 0 and fill.commission >= 0):
            raise ParseError(f"order {wire.clientOrderId}: fill {fill.tradeId} not positive")
        fills.append(
            Fill(
                trade_id=fill.tradeId,
                price=fill.price,
                quantity=fill.qty,
                commission=fill.commission,
                commission_asset=fill.commissionAsset,
                at_us=None if wire.transactTime is None else wire.transactTime * factor,
            )
        )
    time = wire.updateTime if wire.updateTime is not None else wire.transactTime
    return Order(
        symbol=wire.symbol,
        order_id=wire.orderId,
        client_order_id=wire.origClientOrderId or wire.clientOrderId,
        status=wire.status,
        side=wire.side,
        price=wire.price,
        quantity=wire.origQty,
        executed_quantity=wire.executedQty,
        quote_quantity=wire.cummulativeQuoteQty,
        fills=fills,
        updated_us=None if time is None else time * factor,
    )


def parse_order(body: bytes | str, time_unit: TimeUnit) -> Order:
    """A new-order (ACK/RESULT/FULL), query or cancel response."""
    try:
        wire = _order_decoder.decode(body)
    except msgspec.MsgspecError as exc:
        raise ParseError(f"order: {_describe(exc)}") from None
    return _order(wire, time_factor(time_unit))


def parse_orders(body: bytes | str, time_unit: TimeUnit) -> list[Order]:
    """``GET /api/v3/openOrders`` or the answer of ``DELETE /api/v3/openOrders``."""
    try:
        wires = _orders_decoder.decode(body)
    except msgspec.MsgspecError as exc:
        raise ParseError(f"orders: {_describe(exc)}") from None
    factor = time_factor(time_unit)
    return [_order(wire, factor) for wire in wires]


class Balance(msgspec.Struct, frozen=True):
    free: Decimal
    locked: Decimal


def parse_account(body: bytes | str) -> dict[str, Balance]:
    """``GET /api/v3/account`` -> balance per asset."""
    try:
        account = _account_decoder.decode(body)
    except msgspec.MsgspecError as exc:
        raise ParseError(f"account: {_describe(exc)}") from None
    balances: dict[str, Balance] = {}
    for entry in account.balances:
        if not (entry.free >= 0 and entry.locked >= 0):
            raise ParseError(f"account: {entry.asset} balance is negative")
        balances[entry.asset] = Balance(entry.free, entry.locked)
    return balances


class AccountTrade(msgspec.Struct, frozen=True, kw_only=True):
    symbol: str
    trade_id: int
    order_id: int
    side: Side
    price: Decimal
    quantity: Decimal
    commission: Decimal
    commission_asset: str
    maker: bool
    at_us: int


def parse_my_trades(body: bytes | str, time_unit: TimeUnit) -> list[AccountTrade]:
    """``GET /api/v3/myTrades`` (they name the venue's order id, not our client id)."""
    try:
        wires = _trades_decoder.decode(body)
    except msgspec.MsgspecError as exc:
        raise ParseError(f"myTrades: {_describe(exc)}") from None
    factor = time_factor(time_unit)
    trades = []
    for wire in wires:
        if not (wire.price > 0 and wire.qty > 0 and wire.commission >= 0):
            raise ParseError(f"myTrades: trade {wire.id} is not positive")
        trades.append(
            AccountTrade(
                symbol=wire.symbol,
                trade_id=wire.id,
                order_id=wire.orderId,
                side="BUY" if wire.isBuyer else "SELL",
                price=wire.price,
                quantity=wire.qty,
                commission=wire.commission,
                commission_asset=wire.commissionAsset,
                maker=wire.isMaker,
                at_us=wire.time * factor,
            )
        )
    return trades


# --- the user-data stream (WebSocket API) ----------------------------------------------------


class ExecutionReport(msgspec.Struct, frozen=True, kw_only=True):
    symbol: str
    client_order_id: str  # ours (the original id on a cancel)
    order_id: int
    side: Side
    execution_type: str  # NEW, CANCELED, REPLACED, REJECTED, TRADE, EXPIRED, TRADE_PREVENTION
    status: OrderStatus
    reject_reason: str
    quantity: Decimal
    price: Decimal
    cumulative_quantity: Decimal
    fill: Fill | None  # with execution type TRADE
    event_us: int


class AccountPosition(msgspec.Struct, frozen=True, kw_only=True):
    balances: dict[str, Balance]
    event_us: int


class BalanceUpdate(msgspec.Struct, frozen=True, kw_only=True):
    asset: str
    delta: Decimal
    event_us: int


class StreamTerminated(msgspec.Struct, frozen=True, kw_only=True):
    """The venue ended the subscription: subscribe again, then catch up by query."""

    event_us: int


class ApiResponse(msgspec.Struct, frozen=True, kw_only=True):
    """The answer to one of our WebSocket API requests."""

    request_id: str
    status: int
    error: Classified | None  # None when ``status`` is 200
    subscription_id: int | None = None


UserEvent = ExecutionReport | AccountPosition | BalanceUpdate | StreamTerminated | ApiResponse


class _WireExecutionReport(msgspec.Struct):
    e: str
    E: int
    s: str
    c: str
    S: Side
    x: str
    X: OrderStatus
    r: str
    i: int
    q: Decimal
    p: Decimal
    l: Decimal  # noqa: E741 (the venue's field name)
    z: Decimal
    L: Decimal
    n: Decimal | None
    N: str | None
    T: int
    t: int
    m: bool = False
    C: str | None = None


class _WireBalance(msgspec.Struct):
    a: str
    f: Decimal
    l: Decimal  # noqa: E741


class _WireAccountPosition(msgspec.Struct):
    E: int
    B: list[_WireBalance]


class _WireBalanceUpdate(msgspec.Struct):
    E: int
    a: str
    d: Decimal


class _WireTerminated(msgspec.Struct):
    E: int


class _Kind(msgspec.Struct):
    e: str


class _StreamFrame(msgspec.Struct):
    # An empty Raw stands for an absent field (msgspec.Raw cannot be optional).
    event: msgspec.Raw = msgspec.Raw()
    subscriptionId: int | None = None
    id: str | int | None = None
    status: int | None = None
    result: msgspec.Raw = msgspec.Raw()
    error: msgspec.Raw = msgspec.Raw()


class _ApiError(msgspec.Struct):
    code: int
    msg: str = ""


class _SubscribeResult(msgspec.Struct):
    subscriptionId: int | None = None


_frame_decoder: Final = msgspec.json.Decoder(_StreamFrame)
_kind_decoder: Final = msgspec.json.Decoder(_Kind)
_report_decoder: Final = msgspec.json.Decoder(_WireExecutionReport)
_position_decoder: Final = msgspec.json.Decoder(_WireAccountPosition)
_balance_update_decoder: Final = msgspec.json.Decoder(_WireBalanceUpdate)
_terminated_decoder: Final = msgspec.json.Decoder(_WireTerminated)
_api_error_decoder: Final = msgspec.json.Decoder(_ApiError)
_subscribe_result_decoder: Final = msgspec.json.Decoder(_SubscribeResult)

# Events this client does not act on (order lists, external locks): recognised, not errors.
IGNORED_EVENTS: Final = frozenset({"listStatus", "externalLockUpdate"})


def parse_user_frame(frame: bytes | str, time_unit: TimeUnit) -> UserEvent | None:
    """One WebSocket API frame: an event of the user-data subscription, or the answer to one
    of our requests. ``None`` for events this client does not act on."""
    try:
        outer = _frame_decoder.decode(frame)
    except msgspec.MsgspecError as exc:
        raise ParseError(f"user stream: {_describe(exc)}") from None
    factor = time_factor(time_unit)
    if not outer.event:
        return _api_response(outer)
    try:
        kind = _kind_decoder.decode(outer.event).e
        if kind == "executionReport":
            return _execution_report(_report_decoder.decode(outer.event), factor)
        if kind == "outboundAccountPosition":
            position = _position_decoder.decode(outer.event)
            return AccountPosition(
                balances={b.a: Balance(b.f, b.l) for b in position.B},
                event_us=position.E * factor,
            )
        if kind == "balanceUpdate":
            update = _balance_update_decoder.decode(outer.event)
            return BalanceUpdate(asset=update.a, delta=update.d, event_us=update.E * factor)
        if kind == "eventStreamTerminated":
            return StreamTerminated(event_us=_terminated_decoder.decode(outer.event).E * factor)
    except msgspec.MsgspecError as exc:
        raise ParseError(f"user stream event: {_describe(exc)}") from None
    if kind in IGNORED_EVENTS:
        return None
    raise ParseError(f"user stream: unknown event type {kind!r}")


def _api_response(outer: _StreamFrame) -> ApiResponse:
    if outer.status is None or outer.id is None:
        raise ParseError("user stream: a frame with neither an event nor a request id")
    request_id = str(outer.id)
    if outer.status == 200:
        subscription = None
        if outer.result:
            try:
                result = _subscribe_result_decoder.decode(outer.result)
            except msgspec.MsgspecError:
                result = _SubscribeResult()
            subscription = result.subscriptionId
        return ApiResponse(
            request_id=request_id, status=200, error=None, subscription_id=subscription
        )
    code, message = None, ""
    if outer.error:
        try:
            error = _api_error_decoder.decode(outer.error)
            code, message = error.code, error.msg
        except msgspec.MsgspecError:
            pass
    return ApiResponse(
        request_id=request_id,
        status=outer.status,
        error=classify_error(outer.status, code, message),
    )


def _execution_report(wire: _WireExecutionReport, factor: int) -> ExecutionReport:
    fill = None
    if wire.x == "TRADE":
        if not (wire.l > 0 and wire.L > 0 and wire.t >= 0):
            raise ParseError(f"executionReport {wire.c}: a TRADE without a positive fill")
        fill = Fill(
            trade_id=wire.t,
            price=wire.L,
            quantity=wire.l,
            commission=wire.n if wire.n is not None else Decimal(0),
            commission_asset=wire.N or "",
            maker=wire.m,
            at_us=wire.T * factor,
        )
    if not (wire.z >= 0 and wire.q >= 0):
        raise ParseError(f"executionReport {wire.c}: negative quantity")
    # On a cancel, ``c`` is the cancel request's own id and ``C`` the order's.
    client_order_id = wire.C if wire.x == "CANCELED" and wire.C else wire.c
    return ExecutionReport(
        symbol=wire.s,
        client_order_id=client_order_id,
        order_id=wire.i,
        side=wire.S,
        execution_type=wire.x,
        status=wire.X,
        reject_reason=wire.r,
        quantity=wire.q,
        price=wire.p,
        cumulative_quantity=wire.z,
        fill=fill,
        event_us=wire.E * factor,
    )
