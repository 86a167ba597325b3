"""One Binance combined-stream connection: a thin transport around the pure parser.

It answers the venue's pings (echoing the payload), sends live SUBSCRIBE/UNSUBSCRIBE batched
into few messages, and keeps every message it sends, pongs included, under the venue's budget
of 5 incoming messages per second per connection (exceeding it gets the connection cut, and
repeating that gets the IP banned). The frames received by the time one is read, keep-alives
included, yield one list (``tradingd.adapters.transport``), so the receiver can treat any list,
even an empty one, as a sign of life.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from typing import Final, Literal

import aiohttp
import msgspec
import yarl
from loguru import logger

from tradingd.adapters.base import ParseError, VenueUnavailable
from tradingd.adapters.binance.parsing import BinanceParser, FrameParseError, stream_name
from tradingd.adapters.transport import bursts
from tradingd.model import DeadLetter, MarketEvent, Subscription

VENUE_MAX_STREAMS_PER_CONNECTION: Final = 1024
# The venue allows 5 per second and counts arrivals, so delays that bunch messages up count
# against us: keep well below. Control messages are rare (one SUBSCRIBE carries 200 streams).
MESSAGES_PER_SECOND: Final = 3
# Streams named in the connection URL; the rest go in SUBSCRIBE messages (a URL naming 1024
# streams is ~25 kB, more than HTTP front ends are known to accept).
STREAMS_IN_URL: Final = 100
STREAMS_PER_REQUEST: Final = 200

BinanceWebSocket = aiohttp.ClientWebSocketResponse[Literal[False]]

_request_encoder: Final = msgspec.json.Encoder()


class OutgoingMessageBudget:
    """At most ``per_window`` messages in any ``window`` seconds, evenly spaced.

    Even spacing (rather than bursts of ``per_window``) keeps the venue's count under its limit
    even when delays on the way bunch a few messages together.
    """

    def __init__(
        self,
        per_window: int = MESSAGES_PER_SECOND,
        window: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._spacing = window / per_window
        self._clock = clock
        self._last: float | None = None

    def reserve(self) -> float:
        """Claim the next send slot; returns how many seconds to wait before sending."""
        now = self._clock()
        slot = now if self._last is None else max(now, self._last + self._spacing)
        self._last = slot
        return slot - now


def websocket_base(ws_url: str) -> str:
    """The host part of the configured ``ws_url`` (a trailing ``/ws`` or ``/stream`` is dropped)."""
    base = ws_url.rstrip("/")
    for suffix in ("/ws", "/stream"):
        if base.endswith(suffix):
            return base[: -len(suffix)]
    return base


def combined_stream_url(ws_url: str, streams: Sequence[str]) -> str:
    query = f"streams={'/'.join(streams)}&" if streams else ""
    return f"{websocket_base(ws_url)}/stream?{query}timeUnit=MICROSECOND"


class BinanceMarketDataSession:
    """A live combined-stream connection (implements ``MarketDataSession``)."""

    def __init__(
        self,
        ws: BinanceWebSocket,
        *,
        exchange: str,
        url: str,
        streams: Iterable[str],
        default_resolution: str,
        max_streams: int = VENUE_MAX_STREAMS_PER_CONNECTION,
        budget: OutgoingMessageBudget | None = None,
    ) -> None:
        self._ws = ws
        self.exchange = exchange
        self.url = url
        self._source = f"ws:{url.split('?', 1)[0]}"
        self.streams: set[str] = set(streams)
        self._default_resolution = default_resolution
        self._max_streams = min(max_streams, VENUE_MAX_STREAMS_PER_CONNECTION)
        self._budget = budget or OutgoingMessageBudget()
        self.parser = BinanceParser(exchange)
        self._next_id = 1
        self._ignored_kinds = 0
        self.pongs_sent = 0
        self.frames_received = 0
        self._log = logger.bind(EXCHANGE=exchange)

    async def subscribe(self, subscriptions: Sequence[Subscription]) -> None:
        await self.subscribe_streams(
            [stream_name(s, self._default_resolution) for s in subscriptions]
        )

    async def unsubscribe(self, subscriptions: Sequence[Subscription]) -> None:
        await self.unsubscribe_streams(
            [stream_name(s, self._default_resolution) for s in subscriptions]
        )

    async def subscribe_streams(self, names: Iterable[str]) -> None:
        new = [n for n in dict.fromkeys(names) if n not in self.streams]
        if len(self.streams) + len(new) > self._max_streams:
            raise ValueError(
                f"{len(self.streams) + len(new)} streams on one connection; "
                f"the limit is {self._max_streams} (plan_connections splits them)"
            )
        await self._request("SUBSCRIBE", new, "subscribed")
        self.streams.update(new)

    async def unsubscribe_streams(self, names: Iterable[str]) -> None:
        gone = [n for n in dict.fromkeys(names) if n in self.streams]
        await self._request("UNSUBSCRIBE", gone, "unsubscribed")
        self.streams.difference_update(gone)

    async def _request(self, method: str, names: list[str], kind: str) -> None:
        for start in range(0, len(names), STREAMS_PER_REQUEST):
            request_id = self._next_id
            self._next_id += 1
            params = names[start : start + STREAMS_PER_REQUEST]
            self.parser.expect_response(request_id, kind)
            message = {"method": method, "params": params, "id": request_id}
            await self._send_text(_request_encoder.encode(message).decode())
            self._log.debug("{} {} streams (id {})", method, len(params), request_id)

    async def _send_text(self, text: str) -> None:
        delay = self._budget.reserve()
        if delay > 0:
            await asyncio.sleep(delay)
        try:
            await self._ws.send_str(text)
        except (aiohttp.ClientError, ConnectionError, RuntimeError) as exc:
            raise VenueUnavailable(f"sending on {self._source}: {exc}") from exc

    async def _send_pong(self, payload: bytes) -> None:
        delay = self._budget.reserve()
        if delay > 0:
            await asyncio.sleep(delay)
        try:
            await self._ws.pong(payload)
        except (aiohttp.ClientError, ConnectionError, RuntimeError):
            # The connection is going away; the next receive reports that.
            return
        self.pongs_sent += 1

    async def batches(self) -> AsyncIterator[list[MarketEvent]]:
        ws = self._ws
        parse = self.parser.parse_frame
        clock_ns = time.time_ns
        text, binary = aiohttp.WSMsgType.TEXT, aiohttp.WSMsgType.BINARY
        ping, pong = aiohttp.WSMsgType.PING, aiohttp.WSMsgType.PONG
        async for burst in bursts(ws):
            # This frame and those already received behind it: one list for all of them, and
            # one receive time (all of them were in hand when the first was read).
            events: list[MarketEvent] = []
            received_us = clock_ns() // 1000
            # Every message of a burst is counted (a message that ends the connection ends it).
            self.frames_received += len(burst)
            for message in burst:
                kind = message.type
                if kind is text or kind is binary:
                    try:
                        events += parse(message.data, received_us)
                    except ParseError as exc:
                        events.append(self._dead_letter(message.data, exc, received_us))
                elif kind is ping:
                    await self._send_pong(message.data)
                elif kind is not pong:
                    if events:
                        yield events
                    self._log.info(
                        "connection {} ended: {} (close code {})",
                        self._source,
                        kind.name,
                        ws.close_code,
                    )
                    return
            if len(self.parser.ignored) != self._ignored_kinds:
                self._note_ignored()
            yield events

    def _dead_letter(self, payload: bytes | str, exc: ParseError, received_us: int) -> DeadLetter:
        stream = exc.stream if isinstance(exc, FrameParseError) else ""
        raw = payload.encode() if isinstance(payload, str) else bytes(payload)
        return DeadLetter(
            exchange=self.exchange,
            source=f"ws:{stream}" if stream else self._source,
            payload=raw,
            error=str(exc),
            received_us=received_us,
        )

    def _note_ignored(self) -> None:
        kinds = list(self.parser.ignored)
        for kind in kinds[self._ignored_kinds :]:
            self._log.debug("ignoring stream type {!r} (nothing tradingd records)", kind)
        self._ignored_kinds = len(kinds)

    async def close(self) -> None:
        await self._ws.close()

    @property
    def closed(self) -> bool:
        return self._ws.closed


async def open_session(
    http: aiohttp.ClientSession,
    ws_url: str,
    streams: Sequence[str],
    *,
    exchange: str,
    default_resolution: str,
    max_streams: int,
    connect_timeout: float,
) -> BinanceMarketDataSession:
    """Connect to the combined-stream endpoint and subscribe ``streams`` (in URL and batches)."""
    streams = list(dict.fromkeys(streams))
    if len(streams) > min(max_streams, VENUE_MAX_STREAMS_PER_CONNECTION):
        raise ValueError(f"{len(streams)} streams do not fit on one connection")
    in_url = streams[:STREAMS_IN_URL]
    url = combined_stream_url(ws_url, in_url)
    try:
        async with asyncio.timeout(connect_timeout):
            ws = await http.ws_connect(
                yarl.URL(url, encoded=True),
                autoping=False,
                autoclose=True,
                decode_text=False,
                compress=0,
                timeout=aiohttp.ClientWSTimeout(ws_receive=None, ws_close=connect_timeout),
            )
    except (aiohttp.ClientError, OSError, TimeoutError) as exc:
        raise VenueUnavailable(
            f"connecting to {url.split('?', 1)[0]}: {type(exc).__name__}: {exc}"
        ) from exc
    session = BinanceMarketDataSession(
        ws,
        exchange=exchange,
        url=url,
        streams=in_url,
        default_resolution=default_resolution,
        max_streams=max_streams,
    )
    try:
        await session.subscribe_streams(streams[STREAMS_IN_URL:])
    except BaseException:
        await session.close()
        raise
    return session
