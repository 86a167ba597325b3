"""One Deribit market-data WebSocket connection: a thin transport around ``parsing``.

The session enables Deribit's heartbeat, answers every ``test_request`` with ``public/test``,
subscribes in few, large ``public/subscribe`` calls (they cost 3000 credits each) and compares
each subscribe result with what it asked for. ``batches()`` yields one list for the frames
received by the time one is read (``tradingd.adapters.transport``), empty for keep-alives and
replies, so the receiver can count every list as liveness.
"""

from __future__ import annotations

import asyncio
import collections
import itertools
import time
from collections.abc import AsyncIterator, Sequence
from typing import Final, Literal, cast

import aiohttp
import msgspec
from loguru import logger

from tradingd.adapters.base import ParseError, RateLimited, VenueUnavailable
from tradingd.adapters.deribit.http import SUBSCRIBE_COST, TOO_MANY_REQUESTS, CreditBucket
from tradingd.adapters.deribit.parsing import (
    FrameKind,
    NotificationError,
    RpcReply,
    channel_name,
    parse_channel_list,
    parse_frame,
)
from tradingd.adapters.transport import bursts
from tradingd.model import (
    Bar,
    DeadLetter,
    MarketEvent,
    PositiveDecimalMemo,
    StreamNotice,
    Subscription,
)

# Deribit rejects frames over 32 kB; leave room for the envelope.
MAX_CHANNELS_BYTES: Final = 30_000

_REQUEST_ENCODER = msgspec.json.Encoder()


def _now_us() -> int:
    return time.time_ns() // 1000


def chunk_channels(channels: Sequence[str]) -> list[list[str]]:
    """Channels grouped into as few subscribe calls as fit in one request frame."""
    chunks: list[list[str]] = []
    current: list[str] = []
    size = 0
    for channel in channels:
        cost = len(channel) + 3
        if current and size + cost > MAX_CHANNELS_BYTES:
            chunks.append(current)
            current, size = [], 0
        current.append(channel)
        size += cost
    if current:
        chunks.append(current)
    return chunks


class _Pending(msgspec.Struct):
    method: str
    channels: list[str]


class DeribitSession:
    """One open connection, opened and subscribed by ``DeribitAdapter.connect``."""

    def __init__(
        self,
        ws: aiohttp.ClientWebSocketResponse[Literal[False]],
        *,
        exchange: str,
        url: str,
        bar_resolution: str,
        request_timeout: float,
        subscribe_bucket: CreditBucket,
    ) -> None:
        self._ws = ws
        self._exchange = exchange
        self._source = f"ws:{url}"
        self._bar_resolution = bar_resolution
        self._request_timeout = request_timeout
        self._subscribe_bucket = subscribe_bucket
        self._ids = itertools.count(1)
        self._pending: dict[int, _Pending] = {}
        self._backlog: collections.deque[list[MarketEvent]] = collections.deque()
        self._reading = False
        self._rate_limited = ""
        self._closed = False
        self._positive = PositiveDecimalMemo()
        # The newest bar per (instrument, resolution): marked closed when a later one arrives.
        self._open_bars: dict[tuple[str, str], Bar] = {}
        self.channels: set[str] = set()
        self.frames_received = 0
        self._log = logger.bind(EXCHANGE=exchange)

    # ---------------------------------------------------------------------------- requests

    async def _send(self, method: str, params: dict[str, object]) -> int:
        request_id = next(self._ids)
        frame = _REQUEST_ENCODER.encode(
            {"jsonrpc": "2.0", "id": request_id, "method": method, "params": params}
        )
        try:
            await self._ws.send_frame(frame, aiohttp.WSMsgType.TEXT)
        except (ConnectionError, aiohttp.ClientError, RuntimeError) as exc:
            raise VenueUnavailable(f"{method}: cannot send: {exc}") from None
        return request_id

    async def _request(self, method: str, params: dict[str, object], channels: list[str]) -> None:
        request_id = await self._send(method, params)
        self._pending[request_id] = _Pending(method, channels)

    async def start(self, subscriptions: Sequence[Subscription], heartbeat_interval: float) -> None:
        """Enable heartbeats and subscribe, pipelined; returns once every reply is in."""
        await self._request("public/set_heartbeat", {"interval": int(heartbeat_interval)}, [])
        await self.subscribe(subscriptions)

    async def subscribe(self, subscriptions: Sequence[Subscription]) -> None:
        channels = [channel_name(s, self._bar_resolution) for s in subscriptions]
        for chunk in chunk_channels([c for c in dict.fromkeys(channels) if c not in self.channels]):
            await self._subscribe_bucket.acquire(SUBSCRIBE_COST)
            await self._request("public/subscribe", {"channels": chunk}, chunk)
        await self._settle()

    async def unsubscribe(self, subscriptions: Sequence[Subscription]) -> None:
        channels = [channel_name(s, self._bar_resolution) for s in subscriptions]
        for chunk in chunk_channels(channels):
            await self._request("public/unsubscribe", {"channels": chunk}, chunk)
        await self._settle()

    async def _settle(self) -> None:
        """Before ``batches()`` runs, read frames here until every request is answered.

        Frames that arrive meanwhile are kept, in order, for ``batches()``. Once ``batches()``
        runs, replies are handled there and this returns at once (it must not read the socket
        concurrently, and the caller may be the consumer of ``batches()`` itself).
        """
        if self._reading:
            return
        try:
            async with asyncio.timeout(self._request_timeout):
                while self._pending:
                    message = await self._ws.receive()
                    received_us = _now_us()
                    self.frames_received += 1
                    if message.type not in (aiohttp.WSMsgType.TEXT, aiohttp.WSMsgType.BINARY):
                        raise VenueUnavailable(
                            f"connection closed while waiting for replies ({message.type.name})"
                        )
                    self._backlog.append(await self._handle(message.data, received_us))
        except TimeoutError:
            methods = sorted({p.method for p in self._pending.values()})
            raise VenueUnavailable(
                f"no reply to {', '.join(methods)} within {self._request_timeout}s"
            ) from None
        if self._rate_limited:
            raise RateLimited(self._rate_limited, retry_after=1.0)

    # ---------------------------------------------------------------------------- frames

    async def batches(self) -> AsyncIterator[list[MarketEvent]]:
        self._reading = True
        while self._backlog:
            yield self._backlog.popleft()
        ws = self._ws
        handle = self._handle
        text, binary = aiohttp.WSMsgType.TEXT, aiohttp.WSMsgType.BINARY
        ping, pong = aiohttp.WSMsgType.PING, aiohttp.WSMsgType.PONG
        async for burst in bursts(ws):
            # This frame and those already received behind it: one list for all of them, and
            # one receive time (all of them were in hand when the first was read).
            events: list[MarketEvent] = []
            received_us = time.time_ns() // 1000
            for message in burst:
                self.frames_received += 1
                kind = message.type
                if kind is text or kind is binary:
                    events += await handle(message.data, received_us)
                elif kind is not ping and kind is not pong:
                    if events:
                        yield events
                    if not self._closed:
                        self._log.info(
                            "Deribit connection ended ({}, code {})", kind.name, ws.close_code
                        )
                    return
            yield events

    async def _handle(self, payload: bytes | str, received_us: int) -> list[MarketEvent]:
        try:
            frame = parse_frame(
                payload,
                exchange=self._exchange,
                received_us=received_us,
                positive=self._positive,
            )
        except ParseError as exc:
            source = f"ws:{exc.channel}" if isinstance(exc, NotificationError) else self._source
            self._log.warning("dead letter from {}: {}", source, exc)
            raw = payload.encode("utf-8") if isinstance(payload, str) else bytes(payload)
            return [
                DeadLetter(
                    exchange=self._exchange,
                    source=source,
                    payload=raw,
                    error=str(exc),
                    received_us=received_us,
                )
            ]
        kind = frame.kind
        if kind is FrameKind.DATA:
            records = frame.records
            if records and isinstance(records[0], Bar):
                return self._close_bars(records[0])
            return cast(list[MarketEvent], records)
        if kind is FrameKind.TEST_REQUEST:
            await self._request("public/test", {}, [])
            return []
        if kind is FrameKind.REPLY and frame.reply is not None:
            return self._on_reply(frame.reply, received_us)
        if kind is FrameKind.IGNORED:
            self._log.debug("ignoring Deribit {} {}", frame.method, frame.channel)
        return []

    def _close_bars(self, bar: Bar) -> list[MarketEvent]:
        key = (bar.instrument_name, bar.resolution)
        previous = self._open_bars.get(key)
        if previous is None or bar.tick_us >= previous.tick_us:
            self._open_bars[key] = bar
        if previous is not None and bar.tick_us > previous.tick_us:
            return [msgspec.structs.replace(previous, closed=True), bar]
        return [bar]

    def _on_reply(self, reply: RpcReply, received_us: int) -> list[MarketEvent]:
        pending = self._pending.pop(reply.id, None) if isinstance(reply.id, int) else None
        method = pending.method if pending is not None else "request"
        if reply.error is not None:
            detail = f"{reply.error.describe()} ({method})"
            if reply.error.code == TOO_MANY_REQUESTS:
                self._rate_limited = detail
            self._log.warning("Deribit error reply: {}", detail)
            return [self._notice("error", detail, received_us)]
        if pending is None:
            if reply.id is not None:
                self._log.debug("reply to unknown request id {}", reply.id)
            return []
        if pending.method == "public/subscribe":
            return self._on_subscribed(pending.channels, reply, received_us)
        if pending.method == "public/unsubscribe":
            self.channels.difference_update(pending.channels)
            return [self._notice("unsubscribed", ", ".join(pending.channels), received_us)]
        return []

    def _on_subscribed(
        self, asked: list[str], reply: RpcReply, received_us: int
    ) -> list[MarketEvent]:
        try:
            granted = parse_channel_list(reply.result)
        except ParseError as exc:
            return [self._notice("error", f"public/subscribe result: {exc}", received_us)]
        self.channels.update(granted)
        notices: list[MarketEvent] = []
        if granted:
            notices.append(self._notice("subscribed", ", ".join(granted), received_us))
        missing = sorted(set(asked) - set(granted))
        if missing:
            detail = f"not subscribed: {', '.join(missing)}"
            self._log.warning("Deribit refused channels: {}", detail)
            notices.append(self._notice("error", detail, received_us))
        return notices

    def _notice(self, kind: str, detail: str, received_us: int) -> StreamNotice:
        return StreamNotice(
            exchange=self._exchange, kind=kind, detail=detail, received_us=received_us
        )

    async def close(self) -> None:
        self._closed = True
        self._pending.clear()
        await self._ws.close()
