"""Deribit private API over one authenticated WebSocket: a thin transport around the sans-I/O
``trading`` builders and parsers.

``DeribitPrivateSession.open(...)`` connects, authenticates with client credentials, enables
cancel-on-disconnect on the connection (its resting orders die with it: after any reconnect
the owner catches up by query), sets the venue heartbeat, subscribes to ``user.orders``,
``user.trades`` and ``user.portfolio`` of each currency, and refreshes the token before it
expires. Every call answers the parsed value or a ``Classified`` failure; a timeout or a
dropped connection is UNKNOWN and nothing is ever resent here. The session's two tasks (the
reader and the token refresher) belong to ``open``'s context: they end with it. ``open``
raises ``RateLimited`` when the venue refused the set-up for credits (10028): reconnect only
after its ``retry_after``.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import itertools
import time
from collections.abc import AsyncIterator, Callable, Sequence
from decimal import Decimal
from typing import Final, TypeVar

import aiohttp
import msgspec

from tradingd.adapters.base import ParseError, RateLimited
from tradingd.adapters.deribit import trading
from tradingd.adapters.deribit.parsing import parse_server_time_us
from tradingd.adapters.trading import Classified, Verdict, transport_failure

T = TypeVar("T")
MIN_HEARTBEAT: Final = 10
# Added to ``valid_until`` on the monotonic clock: the error of the measured clock offset
# (half a round trip) and the engine's own latency are well below it.
VALID_UNTIL_MARGIN: Final = 1.0


class _Params(msgspec.Struct):
    channel: str = ""
    data: msgspec.Raw = msgspec.Raw()
    type: str = ""


class _Error(msgspec.Struct):
    code: int
    message: str = ""


class _Envelope(msgspec.Struct):
    method: str = ""
    params: _Params | None = None
    id: int | str | None = None
    result: msgspec.Raw = msgspec.Raw()
    error: _Error | None = None


_envelope_decoder: Final = msgspec.json.Decoder(_Envelope)
_DECODE_ERRORS: Final = (msgspec.DecodeError, msgspec.ValidationError, UnicodeDecodeError)


class PlaceAnswer(msgspec.Struct, frozen=True, kw_only=True):
    """``placed`` when the venue answered with the order, else ``failure``. ``deadline_ms``
    is the ``valid_until`` sent (venue time): past it the engine can no longer take the order.
    ``expires_at`` is the same bound on this session's monotonic clock (plus a margin for the
    error of the clock offset), which a re-measured offset cannot move: test absence against
    it (``DeribitPrivateSession.expired``)."""

    placed: trading.PlaceResult | None = None
    failure: Classified | None = None
    deadline_ms: int
    expires_at: float = 0.0


class DeribitPrivateSession:
    def __init__(
        self,
        ws: aiohttp.ClientWebSocketResponse,
        *,
        request_timeout: float,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self._ws = ws
        self._timeout = request_timeout
        self._wall_clock = wall_clock
        self._ids = itertools.count(1)
        self._pending: dict[int, asyncio.Future[_Envelope]] = {}
        self._updates: asyncio.Queue[trading.UserUpdate | None] = asyncio.Queue()
        self.token: trading.Token | None = None
        self.refreshes = 0
        self.refreshed = asyncio.Event()  # set at every token refresh
        self.clock_offset_ms = 0
        self._monotonic = time.monotonic
        self.closed = asyncio.Event()
        self.close_reason = ""

    @classmethod
    @contextlib.asynccontextmanager
    async def open(
        cls,
        http: aiohttp.ClientSession,
        ws_url: str,
        client_id: str,
        client_secret: str,
        *,
        currencies: Sequence[str],
        request_timeout: float,
        heartbeat_interval: int = 15,
        wall_clock: Callable[[], float] = time.time,
    ) -> AsyncIterator[DeribitPrivateSession]:
        ws = await http.ws_connect(ws_url, autoping=True)
        session = cls(ws, request_timeout=request_timeout, wall_clock=wall_clock)
        # The context owns both tasks: they never outlive it (cancelled and awaited on exit).
        # Not a TaskGroup: that would wrap the caller's own exceptions in an ExceptionGroup.
        tasks = [asyncio.create_task(session._read())]
        try:
            await session._start(client_id, client_secret, currencies, heartbeat_interval)
            tasks.append(asyncio.create_task(session._refresh()))
            yield session
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await ws.close()

    # --- start-up and upkeep ----------------------------------------------------------------

    async def _start(
        self, client_id: str, client_secret: str, currencies: Sequence[str], heartbeat: int
    ) -> None:
        result = await self._call_raw(
            lambda i: trading.auth_client_credentials(i, client_id, client_secret)
        )
        if isinstance(result, Classified):
            if result.verdict is Verdict.RATE_LIMITED:
                # The venue ends the session on 10028: reconnecting at once only drains the
                # credits again. The owner waits ``retry_after`` first.
                raise RateLimited(f"Deribit auth: {result.reason}", result.retry_after or 1.0)
            raise ConnectionError(f"Deribit auth failed: {result.reason}")
        self.token = trading.parse_auth(result, self._now_us())
        before = self._wall_clock()
        server = await self._call_raw(lambda i: trading.rpc(i, "public/get_time", {}))
        if isinstance(server, Classified):
            raise ConnectionError(f"Deribit get_time failed: {server.reason}")
        middle_ms = int((before + self._wall_clock()) / 2 * 1000)
        self.clock_offset_ms = parse_server_time_us(server) // 1000 - middle_ms
        for build in (
            trading.enable_cancel_on_disconnect,
            lambda i: trading.rpc(
                i, "public/set_heartbeat", {"interval": max(MIN_HEARTBEAT, heartbeat)}
            ),
            lambda i: trading.private_subscribe(
                i, [ch for c in currencies for ch in trading.user_channels(c)]
            ),
        ):
            answer = await self._call_raw(build)
            if isinstance(answer, Classified):
                if answer.verdict is Verdict.RATE_LIMITED:
                    raise RateLimited(f"Deribit set-up: {answer.reason}", answer.retry_after or 1.0)
                raise ConnectionError(f"Deribit session set-up failed: {answer.reason}")

    async def _refresh(self) -> None:
        while self.token is not None:
            # A scheduled refresh at the time the token itself dictates, not a condition wait.
            await asyncio.sleep(max(0.0, (self.token.refresh_due_us - self._now_us()) / 1e6))
            result = await self._call_raw(
                functools.partial(_refresh_request, refresh_token=self.token.refresh_token)
            )
            if isinstance(result, Classified):
                self.close_reason = f"token refresh failed: {result.reason}"
                await self._ws.close()
                return
            self.token = trading.parse_auth(result, self._now_us())
            self.refreshes += 1
            self.refreshed.set()

    def _now_us(self) -> int:
        return int(self._wall_clock() * 1_000_000)

    async def _read(self) -> None:
        try:
            async for message in self._ws:
                if message.type is not aiohttp.WSMsgType.TEXT:
                    break
                await self._on_frame(message.data)
        finally:
            self.closed.set()
            for future in self._pending.values():
                if not future.done():
                    future.set_exception(ConnectionError("connection closed"))
            self._updates.put_nowait(None)

    async def _on_frame(self, text: str) -> None:
        try:
            envelope = _envelope_decoder.decode(text)
        except _DECODE_ERRORS:
            return  # not ours to answer; a request waiting on it times out as UNKNOWN
        if envelope.method == "subscription" and envelope.params is not None:
            try:
                update = trading.parse_user_notification(
                    envelope.params.channel, envelope.params.data
                )
            except ParseError as exc:
                self.close_reason = f"undecodable {envelope.params.channel}: {exc}"
                await self._ws.close()
                return
            if update is not None:
                self._updates.put_nowait(update)
            return
        if envelope.method == "heartbeat":
            if envelope.params is not None and envelope.params.type == "test_request":
                await self._ws.send_str(trading.rpc(next(self._ids), "public/test", {}).decode())
            return
        if isinstance(envelope.id, int):
            future = self._pending.pop(envelope.id, None)
            if future is not None and not future.done():
                future.set_result(envelope)

    # --- calls ------------------------------------------------------------------------------

    async def _call_raw(self, build: Callable[[int], bytes]) -> msgspec.Raw | Classified:
        if self.closed.is_set():
            return transport_failure(f"connection closed {self.close_reason}".strip())
        request_id = next(self._ids)
        future: asyncio.Future[_Envelope] = asyncio.get_running_loop().create_future()
        self._pending[request_id] = future
        try:
            await self._ws.send_str(build(request_id).decode())
            async with asyncio.timeout(self._timeout):
                envelope = await future
        except (ConnectionError, aiohttp.ClientError) as exc:
            return transport_failure(f"{type(exc).__name__}: {exc}")
        except TimeoutError:
            return transport_failure(f"no answer within {self._timeout} s")
        finally:
            self._pending.pop(request_id, None)
        if envelope.error is not None:
            return trading.classify_error(envelope.error.code, envelope.error.message)
        return envelope.result

    async def _call(
        self, build: Callable[[int], bytes], parse: Callable[[msgspec.Raw], T]
    ) -> T | Classified:
        result = await self._call_raw(build)
        if isinstance(result, Classified):
            return result
        try:
            return parse(result)
        except trading.LabelNotUnique as fault:
            return fault.classified()
        except ParseError as exc:
            return transport_failure(f"undecodable answer: {exc}")

    async def place(
        self,
        *,
        direction: trading.Direction,
        instrument_name: str,
        amount: Decimal,
        label: str,
        valid_until_ms: int,
        order_type: trading.OrderType = "limit",
        price: Decimal | None = None,
        time_in_force: trading.TimeInForce = "good_til_cancelled",
        post_only: bool = False,
        reduce_only: bool = False,
    ) -> PlaceAnswer:
        def build(i: int) -> bytes:
            return trading.place_order(
                i, direction=direction, instrument_name=instrument_name, amount=amount,
                label=label, valid_until_ms=valid_until_ms, order_type=order_type, price=price,
                time_in_force=time_in_force, post_only=post_only, reduce_only=reduce_only,
            )  # fmt: skip

        sent_at = self._monotonic()
        remaining_s = max(0, valid_until_ms - self.venue_now_ms()) / 1000
        expires_at = sent_at + remaining_s + VALID_UNTIL_MARGIN
        result = await self._call(build, trading.parse_place)
        if isinstance(result, Classified):
            return PlaceAnswer(failure=result, deadline_ms=valid_until_ms, expires_at=expires_at)
        return PlaceAnswer(placed=result, deadline_ms=valid_until_ms, expires_at=expires_at)

    def expired(self, answer: PlaceAnswer) -> bool:
        """The venue can no longer take the order behind ``answer``: absent now means never
        placed."""
        return self._monotonic() > answer.expires_at

    def venue_now_ms(self) -> int:
        """The venue's time as this session estimates it (``public/get_time`` at start)."""
        return int(self._wall_clock() * 1000) + self.clock_offset_ms

    async def cancel(self, order_id: str) -> trading.Order | Classified:
        return await self._call(lambda i: trading.cancel(i, order_id), trading.parse_order)

    async def cancel_by_label(self, label: str, currency: str) -> int | Classified:
        return await self._call(
            lambda i: trading.cancel_by_label(i, label, currency), trading.parse_cancel_count
        )

    async def cancel_all(self, instrument_name: str | None = None) -> int | Classified:
        if instrument_name is None:
            return await self._call(trading.cancel_all, trading.parse_cancel_count)
        return await self._call(
            lambda i: trading.cancel_all_by_instrument(i, instrument_name),
            trading.parse_cancel_count,
        )

    async def order_by_label(self, currency: str, label: str) -> trading.Order | Classified | None:
        """The venue's one order under ``label`` (None: it has none); more than one is FAULT."""
        return await self._call(
            lambda i: trading.get_order_state_by_label(i, currency, label),
            lambda raw: trading.parse_order_by_label(raw, label),
        )

    async def open_orders(self, currency: str) -> list[trading.Order] | Classified:
        return await self._call(
            lambda i: trading.get_open_orders_by_currency(i, currency), trading.parse_orders
        )

    async def user_trades(
        self, currency: str, start_id: str | None = None
    ) -> trading.TradesPage | Classified:
        return await self._call(
            lambda i: trading.get_user_trades_by_currency(i, currency, start_id=start_id),
            trading.parse_trades_page,
        )

    async def positions(self, currency: str) -> list[trading.Position] | Classified:
        return await self._call(
            lambda i: trading.get_positions(i, currency), trading.parse_positions
        )

    async def account_summary(self, currency: str) -> trading.AccountSummary | Classified:
        return await self._call(
            lambda i: trading.get_account_summary(i, currency), trading.parse_account_summary
        )

    async def updates(self) -> AsyncIterator[trading.UserUpdate]:
        """User notifications in arrival order; ends when the connection closes."""
        while (update := await self._updates.get()) is not None:
            yield update


def _refresh_request(request_id: int, *, refresh_token: str) -> bytes:
    return trading.auth_refresh(request_id, refresh_token)
