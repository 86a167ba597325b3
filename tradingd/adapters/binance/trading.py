"""Binance spot private API requests, sans-I/O: signed REST requests and the WebSocket API's
user-data subscription, built from plain values (the caller owns the clock and the socket).

Order entry always carries our client id as ``newClientOrderId`` and asks for the FULL
response (its fills carry trade ids, deduplicated against the user stream's). Timestamps are
sent in milliseconds, already corrected by the caller's clock offset to the venue.
"""

from __future__ import annotations

import re
from decimal import Decimal
from typing import Final, Literal

import msgspec

from tradingd.adapters.binance.signing import (
    Param,
    Signer,
    hmac_signer,
    signed_query,
    ws_api_signature,
)

Method = Literal["GET", "POST", "DELETE"]
Side = Literal["BUY", "SELL"]
OrderType = Literal["LIMIT", "MARKET", "LIMIT_MAKER"]
TimeInForce = Literal["GTC", "IOC", "FOK"]

API_KEY_HEADER: Final = "X-MBX-APIKEY"
DEFAULT_RECV_WINDOW_MS: Final = 5000
MAX_RECV_WINDOW_MS: Final = 60_000
# Past timestamp + recvWindow the gateway refuses a request; a request it accepted just in time
# can still wait in the engine's queue. Binance's own guidance puts the hard bound 10 s later.
DEADLINE_MARGIN_MS: Final = 10_000
CLIENT_ORDER_ID: Final = re.compile(r"[a-zA-Z0-9_-]{1,36}")

# Request weights (rest-api.md endpoint table).
WEIGHT_ORDER: Final = 1
WEIGHT_EXCHANGE_INFO: Final = 20
WEIGHT_ORDER_COUNT: Final = 40
WEIGHT_QUERY_ORDER: Final = 4
WEIGHT_OPEN_ORDERS_SYMBOL: Final = 6
WEIGHT_OPEN_ORDERS_ALL: Final = 80
WEIGHT_ACCOUNT: Final = 20
WEIGHT_MY_TRADES: Final = 20
WEIGHT_MY_TRADES_ORDER: Final = 5


class Credentials:
    """An API key and what signs for it: its HMAC secret (``Credentials(key, secret)``) or
    another key type's ``Signer`` (``Credentials.signed_by``). The secret never shows in a
    repr or a log line."""

    __slots__ = ("api_key", "key_type", "sign")

    def __init__(self, api_key: str, secret: str) -> None:
        if not api_key or not secret:
            raise ValueError("an API key and its secret must both be non-empty")
        self.api_key = api_key
        self.key_type = "hmac"
        self.sign: Signer = hmac_signer(secret)

    @classmethod
    def signed_by(cls, api_key: str, signer: Signer, key_type: str) -> Credentials:
        if not api_key:
            raise ValueError("the API key must be non-empty")
        credentials = cls.__new__(cls)
        credentials.api_key = api_key
        credentials.key_type = key_type
        credentials.sign = signer
        return credentials

    def __repr__(self) -> str:
        return f"Credentials(api_key={self.api_key[:4]}…, {self.key_type}, secret=<redacted>)"


class SignedRequest(msgspec.Struct, frozen=True, kw_only=True):
    method: Method
    path: str
    query: str  # signed: ``signature`` is its last parameter
    headers: dict[str, str]
    weight: int
    places_order: bool = False  # counts against the ORDERS limits

    @property
    def target(self) -> str:
        return f"{self.path}?{self.query}"


class Clock(msgspec.Struct, frozen=True, kw_only=True):
    """When a request is signed: our time corrected to the venue's, and its recvWindow."""

    timestamp_ms: int
    recv_window_ms: int = DEFAULT_RECV_WINDOW_MS
    deadline_margin_ms: int = DEADLINE_MARGIN_MS

    def __post_init__(self) -> None:
        if not 0 < self.recv_window_ms <= MAX_RECV_WINDOW_MS:
            raise ValueError(f"recvWindow must be in 1..{MAX_RECV_WINDOW_MS} ms")

    @property
    def deadline_ms(self) -> int:
        """After this venue time the venue cannot act on the request any more."""
        return self.timestamp_ms + self.recv_window_ms + self.deadline_margin_ms


def check_client_order_id(client_order_id: str) -> str:
    if not CLIENT_ORDER_ID.fullmatch(client_order_id):
        raise ValueError(
            f"client order id {client_order_id!r} does not match ^[a-zA-Z0-9-_]{{1,36}}$"
        )
    return client_order_id


def _signed(
    method: Method,
    path: str,
    params: list[tuple[str, Param]],
    credentials: Credentials,
    clock: Clock,
    weight: int,
    *,
    places_order: bool = False,
) -> SignedRequest:
    params = [*params, ("recvWindow", clock.recv_window_ms), ("timestamp", clock.timestamp_ms)]
    return SignedRequest(
        method=method,
        path=path,
        query=signed_query(params, credentials.sign),
        headers={API_KEY_HEADER: credentials.api_key},
        weight=weight,
        places_order=places_order,
    )


def new_order(
    credentials: Credentials,
    clock: Clock,
    *,
    symbol: str,
    side: Side,
    order_type: OrderType,
    quantity: Decimal,
    client_order_id: str,
    price: Decimal | None = None,
    time_in_force: TimeInForce | None = None,
) -> SignedRequest:
    """``POST /api/v3/order`` (FULL response)."""
    params: list[tuple[str, Param]] = [("symbol", symbol), ("side", side), ("type", order_type)]
    if order_type == "LIMIT":
        if price is None or time_in_force is None:
            raise ValueError("a LIMIT order needs a price and a time in force")
        params.append(("timeInForce", time_in_force))
    elif order_type == "LIMIT_MAKER":
        if price is None:
            raise ValueError("a LIMIT_MAKER order needs a price")
    elif price is not None or time_in_force is not None:
        raise ValueError("a MARKET order takes neither a price nor a time in force")
    if quantity <= 0:
        raise ValueError(f"quantity {quantity} is not positive")
    params.append(("quantity", quantity))
    if price is not None:
        if price <= 0:
            raise ValueError(f"price {price} is not positive")
        params.append(("price", price))
    params.append(("newClientOrderId", check_client_order_id(client_order_id)))
    params.append(("newOrderRespType", "FULL"))
    return _signed(
        "POST", "/api/v3/order", params, credentials, clock, WEIGHT_ORDER, places_order=True
    )


def query_order(
    credentials: Credentials, clock: Clock, *, symbol: str, client_order_id: str
) -> SignedRequest:
    """``GET /api/v3/order`` by ``origClientOrderId``."""
    params: list[tuple[str, Param]] = [
        ("symbol", symbol),
        ("origClientOrderId", check_client_order_id(client_order_id)),
    ]
    return _signed("GET", "/api/v3/order", params, credentials, clock, WEIGHT_QUERY_ORDER)


def query_order_by_id(
    credentials: Credentials, clock: Clock, *, symbol: str, order_id: int
) -> SignedRequest:
    """``GET /api/v3/order`` by the venue's ``orderId`` (an order ``myTrades`` names)."""
    if order_id < 0:
        raise ValueError("orderId must be >= 0")
    params: list[tuple[str, Param]] = [("symbol", symbol), ("orderId", order_id)]
    return _signed("GET", "/api/v3/order", params, credentials, clock, WEIGHT_QUERY_ORDER)


def cancel_order(
    credentials: Credentials, clock: Clock, *, symbol: str, client_order_id: str
) -> SignedRequest:
    """``DELETE /api/v3/order`` by ``origClientOrderId``."""
    params: list[tuple[str, Param]] = [
        ("symbol", symbol),
        ("origClientOrderId", check_client_order_id(client_order_id)),
    ]
    return _signed("DELETE", "/api/v3/order", params, credentials, clock, WEIGHT_ORDER)


def cancel_open_orders(credentials: Credentials, clock: Clock, *, symbol: str) -> SignedRequest:
    """``DELETE /api/v3/openOrders``: every open order on one symbol."""
    return _signed(
        "DELETE", "/api/v3/openOrders", [("symbol", symbol)], credentials, clock, WEIGHT_ORDER
    )


def open_orders(credentials: Credentials, clock: Clock, *, symbol: str | None) -> SignedRequest:
    """``GET /api/v3/openOrders``, of one symbol or (heavier) of all."""
    if symbol is None:
        return _signed("GET", "/api/v3/openOrders", [], credentials, clock, WEIGHT_OPEN_ORDERS_ALL)
    return _signed(
        "GET",
        "/api/v3/openOrders",
        [("symbol", symbol)],
        credentials,
        clock,
        WEIGHT_OPEN_ORDERS_SYMBOL,
    )


def order_count(credentials: Credentials, clock: Clock) -> SignedRequest:
    """``GET /api/v3/rateLimit/order``: the account's unfilled order count per ORDERS limit."""
    return _signed("GET", "/api/v3/rateLimit/order", [], credentials, clock, WEIGHT_ORDER_COUNT)


def account(credentials: Credentials, clock: Clock) -> SignedRequest:
    """``GET /api/v3/account`` (zero balances omitted)."""
    return _signed(
        "GET",
        "/api/v3/account",
        [("omitZeroBalances", True)],
        credentials,
        clock,
        WEIGHT_ACCOUNT,
    )


def my_trades(
    credentials: Credentials, clock: Clock, *, symbol: str, from_id: int, limit: int = 1000
) -> SignedRequest:
    """``GET /api/v3/myTrades`` from trade id ``from_id`` (inclusive), oldest first."""
    if from_id < 0 or not 1 <= limit <= 1000:
        raise ValueError("fromId must be >= 0 and limit in 1..1000")
    params: list[tuple[str, Param]] = [
        ("symbol", symbol),
        ("fromId", from_id),
        ("limit", limit),
    ]
    return _signed("GET", "/api/v3/myTrades", params, credentials, clock, WEIGHT_MY_TRADES)


def order_trades(
    credentials: Credentials, clock: Clock, *, symbol: str, order_id: int, limit: int = 1000
) -> SignedRequest:
    """``GET /api/v3/myTrades`` of one order (``orderId``), oldest first: a quarter of the
    weight of a walk by ``fromId``, and no walk from the account's first trade."""
    if order_id < 0 or not 1 <= limit <= 1000:
        raise ValueError("orderId must be >= 0 and limit in 1..1000")
    params: list[tuple[str, Param]] = [
        ("symbol", symbol),
        ("orderId", order_id),
        ("limit", limit),
    ]
    return _signed("GET", "/api/v3/myTrades", params, credentials, clock, WEIGHT_MY_TRADES_ORDER)


def user_stream_subscribe(request_id: str, credentials: Credentials, timestamp_ms: int) -> str:
    """The WebSocket API request ``userDataStream.subscribe.signature`` (any key type), as the
    text of a text frame (the WebSocket API reads text frames only)."""
    params: dict[str, Param] = {"apiKey": credentials.api_key, "timestamp": timestamp_ms}
    signature = ws_api_signature(params, credentials.sign)
    body = {
        "id": request_id,
        "method": "userDataStream.subscribe.signature",
        "params": {
            "apiKey": credentials.api_key,
            "timestamp": timestamp_ms,
            "signature": signature,
        },
    }
    return msgspec.json.encode(body).decode()
