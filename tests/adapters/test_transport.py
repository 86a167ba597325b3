"""Bursts of received WebSocket messages: data messages taken off the reader's queue directly
arrive in order, and control messages in between still go through ``receive()``."""

from __future__ import annotations

import asyncio
import struct
from collections.abc import AsyncIterator

import aiohttp
import pytest
from aiohttp import web

from tradingd.adapters.transport import BURST_LIMIT, bursts


def _frame(opcode: int, payload: bytes) -> bytes:
    """An unmasked server frame (RFC 6455 5.2)."""
    size = len(payload)
    if size < 126:
        return struct.pack("!BB", 0x80 | opcode, size) + payload
    return struct.pack("!BBH", 0x80 | opcode, 126, size) + payload


TEXT, BINARY, CLOSE, PING, PONG = 0x1, 0x2, 0x8, 0x9, 0xA


async def _serving(wire: bytes) -> AsyncIterator[str]:
    """A server that writes ``wire`` in one write once a client connects, then waits."""
    done = asyncio.Event()

    async def handler(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(autoping=False)
        await ws.prepare(request)
        assert ws._writer is not None
        ws._writer.transport.write(wire)
        await done.wait()
        return ws

    app = web.Application()
    app.router.add_get("/", handler)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        yield f"http://127.0.0.1:{port}/"
    finally:
        done.set()
        await runner.cleanup()


async def _read_all(
    wire: bytes,
) -> tuple[list[list[tuple[aiohttp.WSMsgType, object]]], bool, int | None]:
    """The bursts read from a server that sends ``wire``; whether the client then had closed
    the connection, and the close code it recorded."""
    gen = _serving(wire)
    url = await anext(gen)
    try:
        async with aiohttp.ClientSession() as http:
            ws = await http.ws_connect(url, autoping=False, autoclose=True, decode_text=False)
            # One write of a kilobyte is one socket read: the reader queues every message of
            # it before the first receive() returns.
            got = [[(m.type, m.data) for m in burst] async for burst in bursts(ws)]
            return got, ws.closed, ws.close_code
    finally:
        await gen.aclose()


@pytest.mark.parametrize("count", [3, BURST_LIMIT + 5])
async def test_control_messages_inside_a_burst_go_through_receive(count: int) -> None:
    texts = [b'{"n":%d}' % i for i in range(count)]
    wire = (
        b"".join(_frame(TEXT, t) for t in texts[:2])
        + _frame(PING, b"keep")
        + _frame(BINARY, b"\x00\x01")
        + _frame(PONG, b"late")
        + b"".join(_frame(TEXT, t) for t in texts[2:])
        + _frame(CLOSE, struct.pack("!H", 1000))
        + _frame(TEXT, b"after close")
    )
    got, closed, close_code = await _read_all(wire)
    flat = [m for burst in got for m in burst]
    kinds = [kind for kind, _ in flat]
    assert kinds == [
        aiohttp.WSMsgType.TEXT,
        aiohttp.WSMsgType.TEXT,
        aiohttp.WSMsgType.PING,
        aiohttp.WSMsgType.BINARY,
        aiohttp.WSMsgType.PONG,
        *[aiohttp.WSMsgType.TEXT] * (count - 2),
        aiohttp.WSMsgType.CLOSE,  # through receive(), which answered it; nothing after it
    ]
    assert [data for kind, data in flat if kind is aiohttp.WSMsgType.TEXT] == texts
    assert flat[2][1] == b"keep"
    assert all(len(burst) <= BURST_LIMIT for burst in got)
    assert len(got) <= 3  # one burst per BURST_LIMIT messages: all were in hand at once
    assert (closed, close_code) == (True, 1000)  # receive() answered the close
