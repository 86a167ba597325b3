"""What the venues' WebSocket transports share: reading the frames already received in bursts.

A busy stream delivers many frames per event-loop wake-up. Handing them to the receiver one
at a time costs a generator step, a sequence check and two queue puts per frame; handing over
everything that has already arrived as one list costs that once per burst. Nothing waits to
fill a burst: a burst is only what was already received when the first of its frames was read.
A burst is at most one event-loop turn: the reader yields the loop between bursts.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Final, Literal, TypeAlias

import aiohttp

if TYPE_CHECKING:
    # What ``receive()`` returns: aiohttp types TEXT messages apart, in a private module.
    from aiohttp._websocket.models import WSMessageTextBytes

    Message: TypeAlias = aiohttp.WSMessage | WSMessageTextBytes

# Message kinds after which the connection goes on; any other ends it.
_STAYS_OPEN: Final = frozenset(
    {
        aiohttp.WSMsgType.TEXT,
        aiohttp.WSMsgType.BINARY,
        aiohttp.WSMsgType.PING,
        aiohttp.WSMsgType.PONG,
    }
)

# Bounds the event-loop time one burst takes (parsing ~2 µs a frame) and the size of the lists.
BURST_LIMIT: Final = 100


def buffered_frames(ws: aiohttp.ClientWebSocketResponse[Literal[False]]) -> int:
    """How many received messages ``ws`` holds, which ``receive()`` returns without waiting.

    aiohttp has no public call for this; its reader queue keeps them in ``_buffer`` (a public
    attribute of its compiled and pure-Python versions alike). Where that is missing, this is 0
    and every frame is its own burst: slower, never wrong.
    """
    buffer = getattr(getattr(ws, "_reader", None), "_buffer", None)
    return min(len(buffer), BURST_LIMIT) if buffer is not None else 0


async def bursts(
    ws: aiohttp.ClientWebSocketResponse[Literal[False]],
) -> AsyncIterator[list[Message]]:
    """The messages of ``ws`` in bursts: each the next message and those already received
    behind it. A message that ends the connection (close, error) is the last of its burst, and
    nothing follows it."""
    while True:
        message = await ws.receive()
        more = min(buffered_frames(ws), BURST_LIMIT - 1)
        burst = [message]
        while more and message.type in _STAYS_OPEN:
            message = await ws.receive()  # already received: returns without waiting
            burst.append(message)
            more -= 1
        yield burst
        if message.type not in _STAYS_OPEN:
            return
        if buffered_frames(ws):
            # The next receive() would return without suspending, so the reader would keep
            # the event loop for as long as frames are buffered (a 256 kB socket read holds
            # over a thousand). Giving up the turn here bounds it to one burst: strategies'
            # ticks, the persister and timers run in between.
            await asyncio.sleep(0)
