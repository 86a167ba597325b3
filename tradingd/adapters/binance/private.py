"""Binance spot private API over HTTP and the WebSocket API: a thin transport around the
sans-I/O ``trading`` builders and ``execution_parsing`` parsers.

Every call answers the parsed value or the failure classified by the one error table (an
order call: an ``Answer``). What the transport adds, and nothing more:

* the clock: the offset to the venue's ``/api/v3/time`` is measured at start and again after
  every ``-1021``, and a request refused with ``-1021`` (the gateway never received it) is
  signed again and resent with the SAME client id, at most ``clock_resends`` times;
* rate limits: ``load_rate_limits`` reads ``exchangeInfo``'s ``rateLimits`` at start (the
  documented defaults meanwhile, or if it cannot be read); a request that would pass the
  REQUEST_WEIGHT limit, or an order one of the ORDERS limits, is answered RATE_LIMITED
  without sending (``rate_limits``); the ``X-MBX-USED-WEIGHT-*`` and ``X-MBX-ORDER-COUNT-*``
  headers keep the counts true (``order_counts``: the latest);
* ``429``: no request is sent before its ``Retry-After`` has passed (answered RATE_LIMITED
  without sending); ``418`` and credential failures latch ``locked_reason``: nothing is sent
  any more (the executor locks the exchange with that reason). ``lift_ban`` (the operator's
  unlock) clears a 418's latch once its ``Retry-After`` has passed, never before.

A timeout, a dropped connection or an answer that cannot be decoded is UNKNOWN: never resent.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable
from decimal import Decimal
from typing import Final, TypeVar

import aiohttp
import msgspec

from tradingd import bans
from tradingd.adapters.base import ParseError
from tradingd.adapters.binance import trading
from tradingd.adapters.binance.execution_parsing import (
    AccountTrade,
    ApiResponse,
    Balance,
    Order,
    StreamTerminated,
    UserEvent,
    classify_error,
    order_counts,
    parse_account,
    parse_my_trades,
    parse_order,
    parse_orders,
    parse_retry_after,
    parse_user_frame,
    used_weights,
)
from tradingd.adapters.binance.parsing import TimeUnit, parse_rest_error, parse_server_time_us
from tradingd.adapters.binance.rate_limits import (
    DEFAULT_RATE_LIMITS,
    OrderBudget,
    RateLimits,
    WeightBudget,
    parse_order_counts,
    parse_rate_limits,
)
from tradingd.adapters.trading import Classified, Verdict, transport_failure

T = TypeVar("T")
TIME_UNIT: Final[TimeUnit] = "MILLISECOND"
# The venue accepts a timestamp up to this far ahead of its own clock (the -1021 rule).
AHEAD_ACCEPTED_MS: Final = 1000


class Answer(msgspec.Struct, frozen=True, kw_only=True):
    """One order call's outcome: ``order`` with a 200, else ``failure``.

    ``expires_at`` (this client's ``monotonic`` clock) is when the venue can no longer act on
    the request: its recvWindow, plus the 1 s the venue accepts a timestamp ahead of its clock,
    plus the margin, counted from the moment the last request was sent. A monotonic clock,
    because an estimate of the venue's time jumps whenever the offset is measured again
    (an NTP step here, a resync after -1021): comparing a deadline in venue time across such a
    jump declared an order never placed while it was live. ``deadline_ms`` is the same bound
    in venue time, for logs."""

    order: Order | None = None
    failure: Classified | None = None
    deadline_ms: int = 0
    expires_at: float = 0.0


class BinancePrivateClient:
    def __init__(
        self,
        http: aiohttp.ClientSession,
        rest_url: str,
        credentials: trading.Credentials,
        *,
        request_timeout: float,
        recv_window_ms: int = trading.DEFAULT_RECV_WINDOW_MS,
        clock_resends: int = 2,
        deadline_margin_ms: int = trading.DEADLINE_MARGIN_MS,
        wall_clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
        rate_limits: RateLimits = DEFAULT_RATE_LIMITS,
    ) -> None:
        self._http = http
        self._base = rest_url.rstrip("/")
        self.credentials = credentials
        self._timeout = aiohttp.ClientTimeout(total=request_timeout)
        self.recv_window_ms = recv_window_ms
        self.clock_resends = clock_resends
        self.deadline_margin_ms = deadline_margin_ms
        self._wall_clock = wall_clock
        self._monotonic = monotonic
        self.clock_offset_ms = 0
        self.locked_reason: str | None = None
        self.order_counts: dict[str, int] = {}
        self.rate_limits = rate_limits
        self._orders = OrderBudget(rate_limits.orders)
        self._weight = WeightBudget(rate_limits.weight)
        self._not_before = 0.0
        self.banned_until = 0.0  # ``monotonic``: when a 418's Retry-After has passed
        self.clock_resyncs = 0

    # --- the clock --------------------------------------------------------------------------

    def venue_now_ms(self) -> int:
        return int(self._wall_clock() * 1000) + self.clock_offset_ms

    def signing_clock(self) -> trading.Clock:
        return trading.Clock(
            timestamp_ms=self.venue_now_ms(),
            recv_window_ms=self.recv_window_ms,
            deadline_margin_ms=self.deadline_margin_ms,
        )

    async def sync_clock(self) -> int:
        """Measure the offset to the venue's clock (half the round trip counts as transit)."""
        before = self._wall_clock()
        async with self._http.get(f"{self._base}/api/v3/time", timeout=self._timeout) as response:
            status, body = response.status, await response.read()
        after = self._wall_clock()
        if status != 200:
            raise ParseError(f"GET /api/v3/time: HTTP {status}")
        server_ms = parse_server_time_us(body) // 1000
        self.clock_offset_ms = server_ms - int((before + after) / 2 * 1000)
        return self.clock_offset_ms

    def use_rate_limits(self, limits: RateLimits) -> None:
        self.rate_limits = limits
        self._orders.set_limits(limits.orders)
        self._weight.set_limits(limits.weight)

    async def load_rate_limits(self, symbol: str | None = None) -> RateLimits:
        """The account's limits from ``GET /api/v3/exchangeInfo`` (one symbol keeps the
        answer small; the limits are the same). Raises on a failure: the limits in use stay."""
        target = "/api/v3/exchangeInfo" + (f"?symbol={symbol}" if symbol else "")
        weight = trading.WEIGHT_EXCHANGE_INFO
        wait = self._weight.hold(weight, self.venue_now_ms())
        if wait is not None or self.locked_reason is not None:
            raise ParseError(f"GET /api/v3/exchangeInfo: not sent (rate limit or ban): {wait}")
        self._weight.spend(weight, self.venue_now_ms())
        async with self._http.get(f"{self._base}{target}", timeout=self._timeout) as response:
            status, body = response.status, await response.read()
            self._weight.heard(used_weights(dict(response.headers)), self.venue_now_ms())
        if status != 200:
            raise ParseError(f"GET /api/v3/exchangeInfo: HTTP {status}")
        limits = parse_rate_limits(body)
        self.use_rate_limits(limits)
        return limits

    async def load_order_counts(self) -> dict[str, int] | Classified:
        """The account's order counts now (``GET /api/v3/rateLimit/order``): orders an earlier
        process or another session sent count against this one's next."""
        counts = await self._list_call(
            lambda c: trading.order_count(self.credentials, c), parse_order_counts
        )
        if not isinstance(counts, Classified):
            self.order_counts = counts
            self._orders.heard(counts, self._monotonic())
        return counts

    def lift_ban(self) -> str | None:
        """The operator unlocked the exchange: clear a 418 latch whose ``Retry-After`` has
        passed. Answers why the latch stays (None: nothing is latched any more)."""
        if self.locked_reason is None:
            return None
        if self.banned_until == 0.0:
            return f"{self.locked_reason} (credentials: restart with a key the venue accepts)"
        left = self.banned_until - self._monotonic()
        if left > 0:
            return f"{self.locked_reason} (the ban lasts {left:.0f} s more)"
        self.locked_reason = None
        self.banned_until = 0.0
        return None

    # --- calls ------------------------------------------------------------------------------

    async def place(
        self,
        *,
        symbol: str,
        side: trading.Side,
        order_type: trading.OrderType,
        quantity: Decimal,
        client_order_id: str,
        price: Decimal | None = None,
        time_in_force: trading.TimeInForce | None = None,
    ) -> Answer:
        def build(clock: trading.Clock) -> trading.SignedRequest:
            return trading.new_order(
                self.credentials, clock, symbol=symbol, side=side, order_type=order_type,
                quantity=quantity, client_order_id=client_order_id, price=price,
                time_in_force=time_in_force,
            )  # fmt: skip

        return await self._order_call(build)

    async def query(self, *, symbol: str, client_order_id: str) -> Answer:
        return await self._order_call(
            lambda clock: trading.query_order(
                self.credentials, clock, symbol=symbol, client_order_id=client_order_id
            )
        )

    async def query_by_order_id(self, *, symbol: str, order_id: int) -> Answer:
        return await self._order_call(
            lambda clock: trading.query_order_by_id(
                self.credentials, clock, symbol=symbol, order_id=order_id
            )
        )

    async def cancel(self, *, symbol: str, client_order_id: str) -> Answer:
        return await self._order_call(
            lambda clock: trading.cancel_order(
                self.credentials, clock, symbol=symbol, client_order_id=client_order_id
            )
        )

    async def cancel_all(self, symbol: str) -> list[Order] | Classified:
        return await self._list_call(
            lambda c: trading.cancel_open_orders(self.credentials, c, symbol=symbol),
            lambda body: parse_orders(body, TIME_UNIT),
        )

    async def open_orders(self, symbol: str | None = None) -> list[Order] | Classified:
        return await self._list_call(
            lambda c: trading.open_orders(self.credentials, c, symbol=symbol),
            lambda body: parse_orders(body, TIME_UNIT),
        )

    async def my_trades(self, symbol: str, from_id: int) -> list[AccountTrade] | Classified:
        return await self._list_call(
            lambda c: trading.my_trades(self.credentials, c, symbol=symbol, from_id=from_id),
            lambda body: parse_my_trades(body, TIME_UNIT),
        )

    async def order_trades(self, symbol: str, order_id: int) -> list[AccountTrade] | Classified:
        return await self._list_call(
            lambda c: trading.order_trades(self.credentials, c, symbol=symbol, order_id=order_id),
            lambda body: parse_my_trades(body, TIME_UNIT),
        )

    async def balances(self) -> dict[str, Balance] | Classified:
        return await self._list_call(lambda c: trading.account(self.credentials, c), parse_account)

    # --- transport --------------------------------------------------------------------------

    async def _order_call(self, build: Callable[[trading.Clock], trading.SignedRequest]) -> Answer:
        body, failure, clock, sent_at = await self._send(build)
        # The deadline is the LAST request's: after a -1021 resend, the resent request (a later
        # timestamp, a new clock offset) is the one the venue may still act on.
        expires_at = (
            sent_at + (clock.recv_window_ms + AHEAD_ACCEPTED_MS + clock.deadline_margin_ms) / 1000
        )
        if failure is None:
            try:
                order = parse_order(body, TIME_UNIT)
                return Answer(order=order, deadline_ms=clock.deadline_ms, expires_at=expires_at)
            except ParseError as exc:
                failure = transport_failure(f"undecodable answer: {exc}")
        return Answer(failure=failure, deadline_ms=clock.deadline_ms, expires_at=expires_at)

    def expired(self, answer: Answer) -> bool:
        """The venue can no longer act on the request behind ``answer``: if it is absent now,
        it was never placed."""
        return self._monotonic() > answer.expires_at

    async def _list_call(
        self,
        build: Callable[[trading.Clock], trading.SignedRequest],
        parse: Callable[[bytes], T],
    ) -> T | Classified:
        body, failure, _, _ = await self._send(build)
        if failure is not None:
            return failure
        try:
            return parse(body)
        except ParseError as exc:
            return transport_failure(f"undecodable answer: {exc}")

    async def _send(
        self, build: Callable[[trading.Clock], trading.SignedRequest]
    ) -> tuple[bytes, Classified | None, trading.Clock, float]:
        """Send, resending after ``-1021`` (same parameters, a fresh timestamp and signature)
        at most ``clock_resends`` times. The clock of the last request sent, and when it was
        sent (``monotonic``), come back too."""
        resends = 0
        while True:
            clock = self.signing_clock()
            request = build(clock)
            sent_at = self._monotonic()
            body, classified = await self._send_once(request)
            if (
                classified is None
                or classified.verdict is not Verdict.RESEND_AFTER_CLOCK_SYNC
                or resends >= self.clock_resends
            ):
                return body, classified, clock, sent_at
            # The gateway refused it unread: same request, same client id, fresh timestamp.
            try:
                await self.sync_clock()
            except (aiohttp.ClientError, TimeoutError, ParseError):
                return body, classified, clock, sent_at
            self.clock_resyncs += 1
            resends += 1

    async def _send_once(self, request: trading.SignedRequest) -> tuple[bytes, Classified | None]:
        if self.locked_reason is not None:
            return b"", Classified(verdict=Verdict.BANNED, reason=self.locked_reason)
        wait = self._not_before - self._monotonic()
        if wait > 0:
            reason = f"rate limited: nothing sent for {wait:.1f} s more"
            return b"", Classified(verdict=Verdict.RATE_LIMITED, reason=reason, retry_after=wait)
        held = self._hold(request)
        if held is not None:
            return b"", held
        self._weight.spend(request.weight, self.venue_now_ms())
        if request.places_order:
            self._orders.sent(self._monotonic())
        url = f"{self._base}{request.target}"
        try:
            async with self._http.request(
                request.method, url, headers=request.headers, timeout=self._timeout
            ) as response:
                status, body = response.status, await response.read()
                headers = dict(response.headers)
        except (aiohttp.ClientError, TimeoutError) as exc:
            what = f"{request.method} {request.path}: {type(exc).__name__}: {exc}"
            return b"", transport_failure(what)
        if counts := order_counts(headers):
            self.order_counts = counts
            self._orders.heard(counts, self._monotonic())
        self._weight.heard(used_weights(headers), self.venue_now_ms())
        if status == 200:
            return body, None
        error = parse_rest_error(body)
        classified = classify_error(
            status,
            error[0] if error else None,
            error[1] if error else "",
            parse_retry_after(headers.get("Retry-After")),
        )
        if classified.verdict is Verdict.RATE_LIMITED and classified.retry_after:
            self._not_before = self._monotonic() + classified.retry_after
        elif classified.verdict is Verdict.BANNED:
            ban = classified.retry_after or 0.0
            self.banned_until = max(self.banned_until, self._monotonic() + ban)
            until = bans.banned_until_note(int((self._wall_clock() + ban) * 1_000_000))
            self.locked_reason = f"{request.method} {request.path}: {classified.reason}; {until}"
        elif classified.verdict is Verdict.AUTH_FAILED:
            self.locked_reason = f"{request.method} {request.path}: {classified.reason}"
        return body, classified

    def _hold(self, request: trading.SignedRequest) -> Classified | None:
        """RATE_LIMITED, unsent, for a request that would pass a limit; else None."""
        wait = self._weight.hold(request.weight, self.venue_now_ms())
        what = f"request weight limit reached ({self.rate_limits.weight})"
        if request.places_order:
            order_wait = self._orders.hold(self._monotonic())
            if order_wait is not None and (wait is None or order_wait > wait):
                wait = order_wait
                limits = self.rate_limits.orders
                what = f"order rate limit reached ({limits}; venue count {self.order_counts})"
        if wait is None:
            return None
        reason = f"{what}: nothing sent for {wait:.1f} s"
        return Classified(verdict=Verdict.RATE_LIMITED, reason=reason, retry_after=wait)


class UserStream:
    """One WebSocket API connection subscribed to the account's user-data stream. ``events()``
    ends when the connection closes or the venue ends the subscription; the owner reconnects
    and catches up by query (orders and trades since the last event) before new orders."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse, subscription_id: int) -> None:
        self._ws = ws
        self.subscription_id = subscription_id

    @classmethod
    async def connect(
        cls,
        http: aiohttp.ClientSession,
        ws_api_url: str,
        credentials: trading.Credentials,
        venue_now_ms: int,
        *,
        reply_within: float,
    ) -> UserStream:
        ws = await http.ws_connect(
            ws_api_url, heartbeat=20.0, timeout=aiohttp.ClientWSTimeout(ws_close=reply_within)
        )
        try:
            await ws.send_str(trading.user_stream_subscribe("subscribe", credentials, venue_now_ms))
            message = await ws.receive(timeout=reply_within)
            if message.type is not aiohttp.WSMsgType.TEXT:
                raise ConnectionError(f"user stream: closed before subscribing ({message.type})")
            reply = parse_user_frame(message.data, TIME_UNIT)
            if not isinstance(reply, ApiResponse) or reply.subscription_id is None:
                reason = (
                    reply.error.reason if isinstance(reply, ApiResponse) and reply.error else ""
                )
                raise ConnectionError(f"user stream: subscription refused {reason}".strip())
        except BaseException:
            await ws.close()
            raise
        return cls(ws, reply.subscription_id)

    async def events(self) -> AsyncIterator[UserEvent]:
        """Events in arrival order; a frame that cannot be parsed raises ``ParseError``."""
        async for message in self._ws:
            if message.type is not aiohttp.WSMsgType.TEXT:
                break
            event = parse_user_frame(message.data, TIME_UNIT)
            if event is None or isinstance(event, ApiResponse):
                continue
            yield event
            if isinstance(event, StreamTerminated):
                break

    async def close(self) -> None:
        await self._ws.close()
