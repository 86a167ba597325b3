"""The trading side of the fake Binance spot venue: accounts, a matching engine, the signed
private REST endpoints, the WebSocket API's user-data stream, and fault injection.

Attach it to a ``FakeBinance`` before starting that: ``FakeBinanceTrading(fake)``. It then
serves, on the same port:

* ``POST/GET/DELETE /api/v3/order``, ``GET/DELETE /api/v3/openOrders``, ``GET /api/v3/account``,
  ``GET /api/v3/myTrades`` (``fromId``, ``orderId``), ``GET /api/v3/rateLimit/order``: API-key
  check (``X-MBX-APIKEY``), real HMAC-SHA256 (or, for an account added with its public key,
  Ed25519) signature verification, the venue's timestamp rule (``-1021``), filters (``-1013``),
  precision (``-1111``), client-id charset (``-1100``), "Duplicate order sent." for a client id
  that is open, insufficient balance (``-2010``); the ORDERS limits ``exchangeInfo`` serves
  (``FakeBinance.order_limits``, counted over a sliding window) with an
  ``X-MBX-ORDER-COUNT-*`` header per limit and ``-1015`` (HTTP 429, Retry-After) for an order
  past one; every request's weight against the IP's minute shared with market data
  (``X-MBX-USED-WEIGHT-1M``; 429, then 418 for ignoring it);
* ``/ws-api/v3``: ``userDataStream.subscribe.signature``, ``userDataStream.unsubscribe``,
  ``session.subscriptions``; events wrapped in ``{"subscriptionId", "event"}``:
  ``executionReport``, ``outboundAccountPosition``, ``eventStreamTerminated``.

Matching: a marketable order takes the fake's top of book (ask for a buy, bid for a sell),
``top_size`` at each price level and then one tick further (a MARKET order walks on, a LIMIT
order rests what is left at its price); resting orders fill at their own price against every
trade the fake appends to its tape afterwards. Fees are ``taker_fee``/``maker_fee`` of what is
received, in the received asset. ``orders`` is the venue's own record of every order it
accepted: ``duplicate_client_ids()`` counts the venue orders per client id (the chaos tests'
"0 duplicates").

Where Binance's behaviour is not documented the fake picks something plausible and says so:
``DELETE /api/v3/openOrders`` with nothing open answers ``[]``; 5xx bodies carry code -1001.
"""

from __future__ import annotations

import asyncio
import base64
import collections
import hashlib
import hmac
import math
import re
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass, field
from decimal import ROUND_DOWN, Decimal, InvalidOperation
from typing import Any, Final

import msgspec
from aiohttp import WSMsgType, web

from tradingd.testing.fake_binance import FakeBinance, SymbolRules

_encode: Final = msgspec.json.encode

_NUMBER: Final = re.compile(r"^([0-9]{1,20})(\.[0-9]{1,20})?$")
_CLIENT_ID: Final = re.compile(r"^[a-zA-Z0-9-_]{1,36}$")
_MAX_DECIMALS: Final = 8
_OPEN: Final = frozenset({"NEW", "PARTIALLY_FILLED"})
_EIGHT: Final = Decimal("0.00000001")
_INTERVAL_SECONDS: Final = {"SECOND": 1, "MINUTE": 60, "HOUR": 3600, "DAY": 86_400}
_LETTER: Final = {"SECOND": "S", "MINUTE": "M", "HOUR": "H", "DAY": "D"}
# Request weights of the private endpoints (rest-api.md).
_WEIGHTS: Final = {
    ("POST", "/api/v3/order"): 1,
    ("DELETE", "/api/v3/order"): 1,
    ("GET", "/api/v3/order"): 4,
    ("DELETE", "/api/v3/openOrders"): 1,
    ("GET", "/api/v3/account"): 20,
    ("GET", "/api/v3/rateLimit/order"): 40,
}
# A market buy reserves its value at the ask plus this headroom, and walks no higher.
_MARKET_HEADROOM: Final = Decimal("1.05")


class _Refusal(Exception):
    def __init__(self, status: int, code: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


@dataclass
class Balance:
    free: Decimal
    locked: Decimal = Decimal(0)


@dataclass
class Account:
    api_key: str
    secret: str
    balances: dict[str, Balance]
    initial: dict[str, Decimal]
    order_times: collections.deque[float] = field(default_factory=collections.deque)
    # An Ed25519 key's public half (cryptography's Ed25519PublicKey): signatures are checked
    # with it instead of the HMAC secret.
    ed25519_public_key: Any = None

    def verifies(self, payload: str, signature: str) -> bool:
        """The venue's check: HMAC-SHA256 hex (any case), or Ed25519 base64."""
        if self.ed25519_public_key is None:
            expected = hmac.new(self.secret.encode(), payload.encode(), hashlib.sha256)
            return hmac.compare_digest(expected.hexdigest(), signature.lower())
        from cryptography.exceptions import InvalidSignature

        try:
            raw = base64.b64decode(signature, validate=True)
            self.ed25519_public_key.verify(raw, payload.encode())
        except (InvalidSignature, ValueError):
            return False
        return True

    def balance(self, asset: str) -> Balance:
        return self.balances.setdefault(asset, Balance(Decimal(0)))


@dataclass
class VenueFill:
    trade_id: int
    price: Decimal
    quantity: Decimal
    commission: Decimal
    commission_asset: str
    maker: bool
    time_ms: int


@dataclass
class VenueOrder:
    """One order the venue accepted (its own record)."""

    account: Account
    order_id: int
    client_order_id: str
    symbol: str
    side: str
    type: str
    time_in_force: str
    price: Decimal | None
    quantity: Decimal
    created_ms: int
    # What a buy reserved per unit of quantity (its limit price, or the ask plus headroom).
    reserve_price: Decimal = Decimal(0)
    status: str = "NEW"
    executed: Decimal = Decimal(0)
    quote: Decimal = Decimal(0)
    updated_ms: int = 0
    filled_at: float | None = None  # loop time of the last fill
    fills: list[VenueFill] = field(default_factory=list)

    @property
    def remaining(self) -> Decimal:
        return self.quantity - self.executed

    @property
    def open(self) -> bool:
        return self.status in _OPEN


@dataclass
class AccountTrade:
    symbol: str
    order: VenueOrder
    fill: VenueFill


@dataclass
class BinanceFaults:
    """Switches tests turn on; counters are consumed one request at a time."""

    # The order is matched, then the connection is cut before the answer.
    drop_response_after_match: int = 0
    # The order is matched, then the answer is HTTP 503 with -1007.
    timeout_after_match: int = 0
    # HTTP 500 before anything is matched.
    server_error_before_match: int = 0
    # Seconds an order request waits before it is processed (the gateway's latency).
    order_delay: float = 0.0
    # GET /api/v3/order answers -2013 for this long after an order's last fill.
    not_found_after_fill: float = 0.0
    # Every user-stream event is sent twice.
    duplicate_events: bool = False
    # After this many more events, every user-stream connection is cut (the rest are lost).
    disconnect_user_stream_after: int | None = None


@dataclass(eq=False)
class _Session:
    ws: web.WebSocketResponse
    request: web.Request
    microseconds: bool
    subscriptions: dict[int, Account] = field(default_factory=dict)
    next_subscription: int = 0
    outbox: collections.deque[str] = field(default_factory=collections.deque)
    wakeup: asyncio.Event = field(default_factory=asyncio.Event)

    def push(self, frame: str) -> None:
        self.outbox.append(frame)
        self.wakeup.set()

    async def write_loop(self) -> None:
        while True:
            await self.wakeup.wait()
            self.wakeup.clear()
            while self.outbox:
                await self.ws.send_str(self.outbox.popleft())


class FakeBinanceTrading:
    def __init__(
        self,
        fake: FakeBinance,
        *,
        taker_fee: Decimal = Decimal("0.001"),
        maker_fee: Decimal = Decimal("0.001"),
        top_size: Decimal | None = None,
    ) -> None:
        self.fake = fake
        self.taker_fee = taker_fee
        self.maker_fee = maker_fee
        self.top_size = top_size
        self.faults = BinanceFaults()
        self.accounts: dict[str, Account] = {}
        self.orders: list[VenueOrder] = []
        self.trades: list[AccountTrade] = []
        self.faults_injected: collections.Counter[str] = collections.Counter()
        # Every private REST request answered: (method, path, client order id, HTTP status).
        self.journal: list[tuple[str, str, str, int]] = []
        self._next_order_id = 1_000_001
        self._next_trade_id: dict[str, int] = {}
        self._sessions: set[_Session] = set()
        self._changed = asyncio.Condition()
        fake.route_installers.append(self._install)
        fake.tape_listeners.append(self._on_tape)

    # --- control API ------------------------------------------------------------------------

    @property
    def ws_api_url(self) -> str:
        return f"{self.fake.ws_url}/ws-api/v3"

    def add_account(
        self,
        api_key: str,
        secret: str,
        balances: dict[str, str],
        *,
        ed25519_public_pem: str | None = None,
    ) -> Account:
        """An account; with ``ed25519_public_pem`` its key is an Ed25519 one (the PEM public
        key registered at the venue, needs ``cryptography``) and ``secret`` is unused."""
        initial = {asset: Decimal(amount) for asset, amount in balances.items()}
        account = Account(
            api_key, secret, {a: Balance(v) for a, v in initial.items()}, dict(initial)
        )
        if ed25519_public_pem is not None:
            from cryptography.hazmat.primitives.serialization import load_pem_public_key

            account.ed25519_public_key = load_pem_public_key(ed25519_public_pem.encode())
        self.accounts[api_key] = account
        return account

    def duplicate_client_ids(self) -> dict[str, int]:
        """Client ids the venue accepted more than one order for (never, in a correct client)."""
        counts = collections.Counter(o.client_order_id for o in self.orders)
        return {cid: n for cid, n in counts.items() if n > 1}

    def order_by_client_id(self, client_order_id: str) -> VenueOrder | None:
        for order in reversed(self.orders):
            if order.client_order_id == client_order_id:
                return order
        return None

    def wipe(self) -> None:
        """A testnet-style reset: every order and trade gone, balances back to the start."""
        self.orders.clear()
        self.trades.clear()
        for account in self.accounts.values():
            account.balances = {a: Balance(v) for a, v in account.initial.items()}

    def terminate_user_streams(self) -> None:
        """Send ``eventStreamTerminated`` on every subscription and end them."""
        for session in self._sessions:
            for sid in list(session.subscriptions):
                self._send(session, sid, {"e": "eventStreamTerminated", "E": self._now_ms()})
            session.subscriptions.clear()

    async def abort_user_streams(self) -> None:
        for session in list(self._sessions):
            transport = session.request.transport
            if transport is not None:
                transport.abort()
        await self.wait_for(lambda: not self._sessions)

    def user_stream_count(self) -> int:
        return sum(len(s.subscriptions) for s in self._sessions)

    async def wait_for(self, predicate: Callable[[], bool]) -> None:
        """Return once ``predicate()`` holds; re-checked whenever an order is accepted or a
        user-stream connection or subscription changes."""
        async with self._changed:
            await self._changed.wait_for(predicate)

    # --- HTTP -------------------------------------------------------------------------------

    def _install(self, app: web.Application) -> None:
        app.router.add_route("*", "/api/v3/order", self._handle)
        app.router.add_route("*", "/api/v3/openOrders", self._handle)
        app.router.add_get("/api/v3/account", self._handle)
        app.router.add_get("/api/v3/rateLimit/order", self._handle)
        app.router.add_get("/api/v3/myTrades", self._handle)
        app.router.add_get("/ws-api/v3", self._handle_ws_api)

    def _now_ms(self) -> int:
        return self.fake.now_us() // 1000

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        response = await self._answer(request)
        client_id = request.query.get("newClientOrderId") or request.query.get("origClientOrderId")
        self.journal.append((request.method, request.path, client_id or "", response.status))
        response.headers.update(self.fake.weight_headers())
        return response

    @staticmethod
    def _weight(request: web.Request) -> int:
        key = (request.method, request.path)
        if key == ("GET", "/api/v3/openOrders"):
            return 6 if "symbol" in request.query else 80
        if key == ("GET", "/api/v3/myTrades"):
            return 5 if "orderId" in request.query else 20
        return _WEIGHTS.get(key, 1)

    async def _answer(self, request: web.Request) -> web.StreamResponse:
        factor = 1000 if request.headers.get("X-MBX-TIME-UNIT", "").upper() == "MICROSECOND" else 1
        injected = self.fake.take_injected_error()
        if injected is not None:
            status, retry_after = injected
            self.faults_injected[f"http_{status}"] += 1
            code = -1003 if status in (418, 429) else -1001
            return _error(status, code, "Injected.", retry_after)
        refused = self.fake.charge_weight(self._weight(request))
        if refused is not None:
            self.faults_injected[f"weight_{refused.status}"] += 1
            return refused
        try:
            body = (await request.text()) if request.can_read_body else ""
            params, account = self._authenticate(request, body)
            key = (request.method, request.path)
            if key == ("POST", "/api/v3/order"):
                return await self._new_order(request, params, account, factor)
            payload = self._dispatch(key, params, account, factor)
        except _Refusal as refusal:
            return _error(refusal.status, refusal.code, refusal.message, None)
        return web.Response(body=_encode(payload), content_type="application/json")

    def _authenticate(self, request: web.Request, body: str) -> tuple[dict[str, str], Account]:
        api_key = request.headers.get("X-MBX-APIKEY")
        if not api_key:
            raise _Refusal(401, -2014, "API-key format invalid.")
        account = self.accounts.get(api_key)
        if account is None:
            raise _Refusal(401, -2015, "Invalid API-key, IP, or permissions for action.")
        query = request.query_string
        signature = ""
        parts = []
        for part in (query, body):
            unsigned, marker, tail = part.partition("signature=")
            if marker:
                signature = urllib.parse.unquote(tail.split("&", 1)[0])
                rest = tail.split("&", 1)[1] if "&" in tail else ""
                part = (unsigned + rest).rstrip("&")
            parts.append(part)
        payload = "".join(parts)
        if not signature or not account.verifies(payload, signature):
            raise _Refusal(400, -1022, "Signature for this request is not valid.")
        params = {**dict(_form(body)), **dict(request.query)}
        params.pop("signature", None)
        self._check_timestamp(params)
        return params, account

    def _check_timestamp(self, params: dict[str, str]) -> None:
        try:
            timestamp = int(params["timestamp"])
            recv_window = int(params.get("recvWindow", "5000"))
        except (KeyError, ValueError):
            raise _Refusal(
                400,
                -1102,
                "Mandatory parameter 'timestamp' was not sent, was empty/null, or malformed.",
            ) from None
        server = self._now_ms()
        if timestamp >= server + 1000:
            raise _Refusal(
                400, -1021, "Timestamp for this request was 1000ms ahead of the server's time."
            )
        if server - timestamp > recv_window:
            raise _Refusal(400, -1021, "Timestamp for this request is outside of the recvWindow.")

    def _dispatch(
        self, key: tuple[str, str], params: dict[str, str], account: Account, factor: int
    ) -> object:
        if key == ("GET", "/api/v3/account"):
            omit = params.get("omitZeroBalances") == "true"
            return {
                "makerCommission": 10,
                "takerCommission": 10,
                "canTrade": True,
                "canWithdraw": False,
                "canDeposit": True,
                "accountType": "SPOT",
                "updateTime": self._now_ms() * factor,
                "balances": [
                    {"asset": a, "free": _text(b.free), "locked": _text(b.locked)}
                    for a, b in sorted(account.balances.items())
                    if not omit or b.free or b.locked
                ],
                "permissions": ["SPOT"],
            }
        if key == ("GET", "/api/v3/rateLimit/order"):
            loop_now = asyncio.get_running_loop().time()
            limits = zip(self.fake.order_limits, self._order_counts(account, loop_now), strict=True)
            return [
                {
                    "rateLimitType": "ORDERS",
                    "interval": interval,
                    "intervalNum": number,
                    "limit": limit,
                    "count": counted[3],
                }
                for (interval, number, limit), counted in limits
            ]
        if key == ("GET", "/api/v3/openOrders"):
            symbol = params.get("symbol")
            return [
                self._order_view(o, factor)
                for o in self.orders
                if o.account is account and o.open and (symbol is None or o.symbol == symbol)
            ]
        symbol = self._symbol(params)
        if key == ("GET", "/api/v3/myTrades"):
            from_id = int(params.get("fromId", "0"))
            order_id = int(params["orderId"]) if "orderId" in params else None
            limit = int(params.get("limit", "500"))
            rows = [
                t
                for t in self.trades
                if t.order.account is account
                and t.symbol == symbol
                and t.fill.trade_id >= from_id
                and (order_id is None or t.order.order_id == order_id)
            ]
            return [_my_trade(t, factor) for t in rows[:limit]]
        if key == ("DELETE", "/api/v3/openOrders"):
            cancelled = [
                o for o in self.orders if o.account is account and o.symbol == symbol and o.open
            ]
            for each in cancelled:
                self._cancel(each)
            return [self._order_view(o, factor, cancel=True) for o in cancelled]
        order = self._find(params, account, symbol)
        if key == ("GET", "/api/v3/order"):
            loop_now = asyncio.get_running_loop().time()
            if order is None or (
                order.filled_at is not None
                and loop_now - order.filled_at < self.faults.not_found_after_fill
            ):
                if order is not None:
                    self.faults_injected["not_found_after_fill"] += 1
                raise _Refusal(400, -2013, "Order does not exist.")
            return self._order_view(order, factor)
        if key == ("DELETE", "/api/v3/order"):
            if order is None or not order.open:
                raise _Refusal(400, -2011, "Unknown order sent.")
            self._cancel(order)
            return self._order_view(order, factor, cancel=True)
        raise _Refusal(405, -1000, f"{key[0]} {key[1]} is not supported.")

    def _symbol(self, params: dict[str, str]) -> str:
        name = params.get("symbol")
        if not name:
            raise _Refusal(
                400,
                -1102,
                "Mandatory parameter 'symbol' was not sent, was empty/null, or malformed.",
            )
        try:
            self.fake.symbol_rules(name)
        except KeyError:
            raise _Refusal(400, -1121, "Invalid symbol.") from None
        return name

    def _find(self, params: dict[str, str], account: Account, symbol: str) -> VenueOrder | None:
        client_id = params.get("origClientOrderId")
        order_id = params.get("orderId")
        for order in reversed(self.orders):
            if order.account is not account or order.symbol != symbol:
                continue
            if client_id is not None and order.client_order_id == client_id:
                return order
            if order_id is not None and str(order.order_id) == order_id:
                return order
        return None

    # --- order entry ------------------------------------------------------------------------

    async def _new_order(
        self, request: web.Request, params: dict[str, str], account: Account, factor: int
    ) -> web.StreamResponse:
        faults = self.faults
        if faults.order_delay:
            await asyncio.sleep(faults.order_delay)  # the venue's latency, simulated
        if faults.server_error_before_match:
            faults.server_error_before_match -= 1
            self.faults_injected["server_error_before_match"] += 1
            return _error(500, -1001, "Internal error; unable to process your request.", None)
        over = self._order_limit_passed(account)
        if over is not None:
            return over
        order = self._accept(params, account)
        headers = self._count_order(account)
        self._match_taker(order)
        await self._notify()
        if faults.drop_response_after_match:
            faults.drop_response_after_match -= 1
            self.faults_injected["drop_response_after_match"] += 1
            if request.transport is not None:
                request.transport.abort()
            return web.Response(status=500)
        if faults.timeout_after_match:
            faults.timeout_after_match -= 1
            self.faults_injected["timeout_after_match"] += 1
            return _error(
                503,
                -1007,
                "Timeout waiting for response from backend server. Send status unknown; "
                "execution status unknown.",
                None,
            )
        return web.Response(
            body=_encode(self._order_view(order, factor, full=True)),
            content_type="application/json",
            headers=headers,
        )

    def _accept(self, params: dict[str, str], account: Account) -> VenueOrder:
        symbol = self._symbol(params)
        rules = self.fake.symbol_rules(symbol)
        side = params.get("side", "")
        order_type = params.get("type", "")
        if side not in ("BUY", "SELL"):
            raise _Refusal(
                400, -1102, "Mandatory parameter 'side' was not sent, was empty/null, or malformed."
            )
        if order_type not in ("LIMIT", "MARKET", "LIMIT_MAKER"):
            raise _Refusal(400, -1116, "Invalid orderType.")
        quantity = _number(params, "quantity", rules.step)
        price = _number(params, "price", rules.tick) if order_type != "MARKET" else None
        tif = params.get("timeInForce", "GTC" if order_type != "MARKET" else "")
        if order_type == "LIMIT" and tif not in ("GTC", "IOC", "FOK"):
            raise _Refusal(
                400,
                -1102,
                "Mandatory parameter 'timeInForce' was not sent, was empty/null, or malformed.",
            )
        reference = price if price is not None else (rules.ask if side == "BUY" else rules.bid)
        if quantity * reference < rules.min_notional:
            raise _Refusal(400, -1013, "Filter failure: NOTIONAL")
        client_id = params.get("newClientOrderId") or f"fake{self._next_order_id}"
        if not _CLIENT_ID.match(client_id):
            raise _Refusal(
                400,
                -1100,
                "Illegal characters found in parameter 'newClientOrderId'; legal range is "
                "'^[a-zA-Z0-9-_]{1,36}$'.",
            )
        if any(
            o.open and o.client_order_id == client_id and o.account is account for o in self.orders
        ):
            raise _Refusal(400, -2010, "Duplicate order sent.")
        marketable = price is None or (price >= rules.ask if side == "BUY" else price <= rules.bid)
        if order_type == "LIMIT_MAKER" and marketable:
            raise _Refusal(400, -2010, "Order would immediately match and take.")
        # Funds: a buy reserves its limit value (a market buy its value at the ask, with room
        # for walking up the book); a sell reserves the quantity.
        reserve_price = price if price is not None else rules.ask * _MARKET_HEADROOM
        if side == "BUY":
            reserve, asset = quantity * reserve_price, rules.quote
        else:
            reserve, asset = quantity, rules.base
        balance = account.balance(asset)
        if balance.free < reserve:
            raise _Refusal(400, -2010, "Account has insufficient balance for requested action.")
        balance.free -= reserve
        balance.locked += reserve
        now = self._now_ms()
        order = VenueOrder(
            account=account,
            order_id=self._next_order_id,
            client_order_id=client_id,
            symbol=symbol,
            side=side,
            type=order_type,
            time_in_force=tif,
            price=price,
            quantity=quantity,
            created_ms=now,
            updated_ms=now,
            reserve_price=reserve_price,
        )
        self._next_order_id += 1
        self.orders.append(order)
        self._report(order, "NEW")
        return order

    def _order_counts(self, account: Account, loop_now: float) -> list[tuple[str, int, int, int]]:
        """Per ORDERS limit: (header key, seconds, limit, orders counted in its window)."""
        times = account.order_times
        while times and times[0] <= loop_now - 86_400:
            times.popleft()
        counts = []
        for interval, number, limit in self.fake.order_limits:
            seconds = _INTERVAL_SECONDS[interval] * number
            count = sum(1 for t in times if t > loop_now - seconds)
            counts.append((f"{number}{_LETTER[interval]}", seconds, limit, count))
        return counts

    def _order_limit_passed(self, account: Account) -> web.Response | None:
        """-1015 (HTTP 429) for an order past an ORDERS limit; it is not counted."""
        loop_now = asyncio.get_running_loop().time()
        for key, seconds, limit, count in self._order_counts(account, loop_now):
            if count + 1 > limit:
                self.faults_injected["orders_over_limit"] += 1
                inside = [t for t in account.order_times if t > loop_now - seconds]
                retry_after = inside[count - limit] + seconds - loop_now
                unit = {"S": "SECOND", "M": "MINUTE", "H": "HOUR", "D": "DAY"}[key[-1]]
                message = (
                    f"Too many new orders; current limit is {limit} orders per {key[:-1]} {unit}."
                )
                return _error(429, -1015, message, retry_after)
        return None

    def _count_order(self, account: Account) -> dict[str, str]:
        loop_now = asyncio.get_running_loop().time()
        account.order_times.append(loop_now)
        return {
            f"X-MBX-ORDER-COUNT-{key}": str(count)
            for key, _, _, count in self._order_counts(account, loop_now)
        }

    # --- matching ---------------------------------------------------------------------------

    def _match_taker(self, order: VenueOrder) -> None:
        rules = self.fake.symbol_rules(order.symbol)
        level = rules.ask if order.side == "BUY" else rules.bid
        step = rules.tick if order.side == "BUY" else -rules.tick
        crosses: Callable[[Decimal], bool]
        limit = order.reserve_price
        if order.side == "BUY":
            crosses = limit.__ge__
        elif order.price is None:
            crosses = Decimal(0).__lt__
        else:
            crosses = limit.__le__
        if order.time_in_force == "FOK":
            available = Decimal(0)
            probe = level
            while crosses(probe) and available < order.quantity and probe > 0:
                available += self.top_size if self.top_size is not None else order.quantity
                probe += step
            if available < order.quantity:
                self._expire(order)
                return
        while order.remaining > 0 and level > 0 and crosses(level):
            size = order.remaining if self.top_size is None else min(order.remaining, self.top_size)
            self._fill(order, level, size, maker=False)
            level += step
            if order.type == "LIMIT" and self.top_size is not None:
                break  # a limit order takes the top level; the rest rests at its price
        if order.remaining > 0 and (order.type == "MARKET" or order.time_in_force == "IOC"):
            self._expire(order)

    def _on_tape(self, symbol: str, trades: list[dict[str, object]]) -> None:
        resting = [o for o in self.orders if o.symbol == symbol and o.open and o.price is not None]
        if not resting:
            return
        for trade in trades:
            price = Decimal(str(trade["p"]))
            left = Decimal(str(trade["q"]))
            for order in resting:
                if left <= 0:
                    break
                assert order.price is not None
                if not order.open:
                    continue
                if (order.side == "BUY" and price <= order.price) or (
                    order.side == "SELL" and price >= order.price
                ):
                    size = min(order.remaining, left)
                    self._fill(order, order.price, size, maker=True)
                    left -= size

    def _fill(self, order: VenueOrder, price: Decimal, quantity: Decimal, *, maker: bool) -> None:
        rules = self.fake.symbol_rules(order.symbol)
        account = order.account
        rate = self.maker_fee if maker else self.taker_fee
        base, quote = account.balance(rules.base), account.balance(rules.quote)
        value = price * quantity
        if order.side == "BUY":
            commission = (quantity * rate).quantize(_EIGHT, ROUND_DOWN)
            commission_asset = rules.base
            reserved = quantity * order.reserve_price
            quote.locked -= reserved
            quote.free += reserved - value
            base.free += quantity - commission
        else:
            commission = (value * rate).quantize(_EIGHT, ROUND_DOWN)
            commission_asset = rules.quote
            base.locked -= quantity
            quote.free += value - commission
        trade_id = self._next_trade_id.get(order.symbol, 5_000_001)
        self._next_trade_id[order.symbol] = trade_id + 1
        fill = VenueFill(
            trade_id, price, quantity, commission, commission_asset, maker, self._now_ms()
        )
        order.fills.append(fill)
        order.executed += quantity
        order.quote += value
        order.status = "FILLED" if order.remaining == 0 else "PARTIALLY_FILLED"
        order.updated_ms = fill.time_ms
        order.filled_at = asyncio.get_running_loop().time()
        self.trades.append(AccountTrade(order.symbol, order, fill))
        self._report(order, "TRADE", fill)
        self._position(account, rules)

    def _release(self, order: VenueOrder) -> None:
        rules = self.fake.symbol_rules(order.symbol)
        account = order.account
        if order.side == "BUY":
            balance, amount = account.balance(rules.quote), order.remaining * order.reserve_price
        else:
            balance, amount = account.balance(rules.base), order.remaining
        balance.locked -= amount
        balance.free += amount
        self._position(account, rules)

    def _cancel(self, order: VenueOrder) -> None:
        self._release(order)
        order.status = "CANCELED"
        order.updated_ms = self._now_ms()
        self._report(order, "CANCELED")

    def _expire(self, order: VenueOrder) -> None:
        self._release(order)
        order.status = "EXPIRED"
        order.updated_ms = self._now_ms()
        self._report(order, "EXPIRED")

    # --- views ------------------------------------------------------------------------------

    def _order_view(
        self, order: VenueOrder, factor: int, *, full: bool = False, cancel: bool = False
    ) -> dict[str, object]:
        view: dict[str, object] = {
            "symbol": order.symbol,
            "orderId": order.order_id,
            "orderListId": -1,
            "clientOrderId": order.client_order_id,
            "price": _text(order.price or Decimal(0)),
            "origQty": _text(order.quantity),
            "executedQty": _text(order.executed),
            "origQuoteOrderQty": "0.00000000",
            "cummulativeQuoteQty": _text(order.quote),
            "status": order.status,
            "timeInForce": order.time_in_force or "GTC",
            "type": order.type,
            "side": order.side,
            "selfTradePreventionMode": "NONE",
        }
        if cancel:
            view["origClientOrderId"] = order.client_order_id
            view["clientOrderId"] = f"cancel{order.order_id}"
            view["transactTime"] = order.updated_ms * factor
        elif full:
            view["transactTime"] = order.created_ms * factor
            view["workingTime"] = order.created_ms * factor
            view["fills"] = [
                {
                    "price": _text(f.price),
                    "qty": _text(f.quantity),
                    "commission": _text(f.commission),
                    "commissionAsset": f.commission_asset,
                    "tradeId": f.trade_id,
                }
                for f in order.fills
            ]
        else:
            view["time"] = order.created_ms * factor
            view["updateTime"] = order.updated_ms * factor
            view["isWorking"] = order.open
            view["workingTime"] = order.created_ms * factor
        return view

    # --- the user-data stream (WebSocket API) -----------------------------------------------

    async def _handle_ws_api(self, request: web.Request) -> web.StreamResponse:
        ws = web.WebSocketResponse(autoping=True, compress=False)
        await ws.prepare(request)
        unit = request.query.get("timeUnit", "MILLISECOND").upper()
        session = _Session(ws=ws, request=request, microseconds=unit == "MICROSECOND")
        self._sessions.add(session)
        writer = asyncio.create_task(session.write_loop())
        try:
            async for message in ws:
                if message.type is WSMsgType.TEXT:
                    session.push(_encode(self._ws_request(session, message.data)).decode())
                    await self._notify()
        finally:
            writer.cancel()
            await asyncio.gather(writer, return_exceptions=True)
            self._sessions.discard(session)
            await self._notify()
        return ws

    def _ws_request(self, session: _Session, text: str) -> dict[str, Any]:
        try:
            request = msgspec.json.decode(text)
            request_id = request.get("id")
            method = request["method"]
            params = request.get("params") or {}
        except (msgspec.DecodeError, KeyError, AttributeError, TypeError):
            return {
                "id": None,
                "status": 400,
                "error": {"code": -1102, "msg": "Malformed request."},
            }
        try:
            if method == "userDataStream.subscribe.signature":
                account = self._ws_authenticate(params)
                sid = session.next_subscription
                session.next_subscription += 1
                session.subscriptions[sid] = account
                return {"id": request_id, "status": 200, "result": {"subscriptionId": sid}}
            if method == "userDataStream.unsubscribe":
                which = params.get("subscriptionId")
                if which is None:
                    session.subscriptions.clear()
                else:
                    session.subscriptions.pop(int(which), None)
                return {"id": request_id, "status": 200, "result": {}}
            if method == "session.subscriptions":
                result = [{"subscriptionId": s} for s in session.subscriptions]
                return {"id": request_id, "status": 200, "result": result}
            raise _Refusal(400, -1102, f"Unknown method {method!r}.")
        except _Refusal as refusal:
            return {
                "id": request_id,
                "status": refusal.status,
                "error": {"code": refusal.code, "msg": refusal.message},
            }

    def _ws_authenticate(self, params: dict[str, Any]) -> Account:
        account = self.accounts.get(str(params.get("apiKey", "")))
        if account is None:
            raise _Refusal(401, -2015, "Invalid API-key, IP, or permissions for action.")
        payload = "&".join(
            f"{k}={_ws_value(params[k])}" for k in sorted(params) if k != "signature"
        )
        if not account.verifies(payload, str(params.get("signature", ""))):
            raise _Refusal(400, -1022, "Signature for this request is not valid.")
        self._check_timestamp({k: _ws_value(v) for k, v in params.items()})
        return account

    def _report(
        self, order: VenueOrder, execution_type: str, fill: VenueFill | None = None
    ) -> None:
        event: dict[str, object] = {
            "e": "executionReport",
            "E": self._now_ms(),
            "s": order.symbol,
            "c": order.client_order_id,
            "S": order.side,
            "o": order.type,
            "f": order.time_in_force or "GTC",
            "q": _text(order.quantity),
            "p": _text(order.price or Decimal(0)),
            "P": "0.00000000",
            "F": "0.00000000",
            "g": -1,
            "C": "",
            "x": execution_type,
            "X": order.status,
            "r": "NONE",
            "i": order.order_id,
            "l": _text(fill.quantity if fill else Decimal(0)),
            "z": _text(order.executed),
            "L": _text(fill.price if fill else Decimal(0)),
            "n": _text(fill.commission) if fill else "0",
            "N": fill.commission_asset if fill else None,
            "T": fill.time_ms if fill else order.updated_ms,
            "t": fill.trade_id if fill else -1,
            "I": self._next_order_id,
            "w": order.open,
            "m": fill.maker if fill else False,
            "M": False,
            "O": order.created_ms,
            "Z": _text(order.quote),
            "Y": _text(fill.price * fill.quantity if fill else Decimal(0)),
            "Q": "0.00000000",
            "V": "NONE",
        }
        if execution_type == "CANCELED":
            event["c"] = f"cancel{order.order_id}"
            event["C"] = order.client_order_id
        self._publish(order.account, event)

    def _position(self, account: Account, rules: SymbolRules) -> None:
        self._publish(
            account,
            {
                "e": "outboundAccountPosition",
                "E": self._now_ms(),
                "u": self._now_ms(),
                "B": [
                    {"a": a, "f": _text(b.free), "l": _text(b.locked)}
                    for a, b in account.balances.items()
                    if a in (rules.base, rules.quote)
                ],
            },
        )

    def _publish(self, account: Account, event: dict[str, object]) -> None:
        for session in list(self._sessions):
            for sid, subscribed in session.subscriptions.items():
                if subscribed is account:
                    self._send(session, sid, event)
                    if self.faults.duplicate_events:
                        self.faults_injected["duplicate_event"] += 1
                        self._send(session, sid, event)
        countdown = self.faults.disconnect_user_stream_after
        if countdown is not None:
            countdown -= 1
            if countdown <= 0:
                self.faults.disconnect_user_stream_after = None
                self.faults_injected["user_stream_disconnect"] += 1
                for session in list(self._sessions):
                    if session.request.transport is not None:
                        session.request.transport.abort()
                    self._sessions.discard(session)
            else:
                self.faults.disconnect_user_stream_after = countdown

    def _send(self, session: _Session, sid: int, event: dict[str, object]) -> None:
        if session.microseconds:
            event = {
                k: v * 1000 if k in ("E", "T", "O", "u") and isinstance(v, int) else v
                for k, v in event.items()
            }
        session.push(_encode({"subscriptionId": sid, "event": event}).decode())

    async def _notify(self) -> None:
        async with self._changed:
            self._changed.notify_all()


def _form(body: str) -> list[tuple[str, str]]:
    from urllib.parse import parse_qsl

    return parse_qsl(body, keep_blank_values=True)


def _ws_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _number(params: dict[str, str], name: str, unit: Decimal) -> Decimal:
    raw = params.get(name)
    if raw is None:
        raise _Refusal(
            400, -1102, f"Mandatory parameter '{name}' was not sent, was empty/null, or malformed."
        )
    if not _NUMBER.match(raw):
        raise _Refusal(
            400,
            -1100,
            f"Illegal characters found in parameter '{name}'; legal range is "
            "'^([0-9]{1,20})(\\.[0-9]{1,20})?$'.",
        )
    value = Decimal(raw)
    exponent = value.normalize().as_tuple().exponent
    if isinstance(exponent, int) and -exponent > _MAX_DECIMALS:
        raise _Refusal(400, -1111, f"Parameter '{name}' has too much precision.")
    try:
        on_grid = value % unit == 0
    except InvalidOperation:
        on_grid = False
    if value <= 0 or not on_grid:
        raise _Refusal(
            400, -1013, "Filter failure: " + ("LOT_SIZE" if name == "quantity" else "PRICE_FILTER")
        )
    return value


def _text(value: Decimal) -> str:
    return f"{value.quantize(_EIGHT):f}"


def _my_trade(trade: AccountTrade, factor: int) -> dict[str, object]:
    fill, order = trade.fill, trade.order
    return {
        "symbol": trade.symbol,
        "id": fill.trade_id,
        "orderId": order.order_id,
        "orderListId": -1,
        "price": _text(fill.price),
        "qty": _text(fill.quantity),
        "quoteQty": _text(fill.price * fill.quantity),
        "commission": _text(fill.commission),
        "commissionAsset": fill.commission_asset,
        "time": fill.time_ms * factor,
        "isBuyer": order.side == "BUY",
        "isMaker": fill.maker,
        "isBestMatch": True,
    }


def _error(status: int, code: int, message: str, retry_after: float | None) -> web.Response:
    headers = {}
    if retry_after is not None:
        headers["Retry-After"] = str(max(0, math.ceil(retry_after)))
    return web.Response(
        body=_encode({"code": code, "msg": message}),
        status=status,
        content_type="application/json",
        headers=headers,
    )
