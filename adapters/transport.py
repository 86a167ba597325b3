"""What the venues' WebSocket transports share: reading the frames already received in bursts.

A busy stream delivers many frames per event-loop wake-up. Handing them to the receiver one
at a time costs a generator step, a sequence check and two queue puts per frame; handing over
everything that has already arrived as one list costs that once per burst. Nothing waits to
fill a burst: a burst is only what was already received when the first of its frames was read.
"""

from __future__ import annotations

from typing import Final, Literal

import aiohttp

# Bounds the event-loop time one burst takes (parsing ~2 µs a frame) and the size of the lists.
BURST_LIMIT: Final = 500


def buffered_frames(ws: aiohttp.ClientWebSocketResponse[Literal[False]]) -> int:
    """How many received messages ``ws`` holds, which ``receive()`` returns without waiting.

    aiohttp has no public call for this; its reader queue keeps them in ``_buffer`` (a public
    attribute of its compiled and pure-Python versions alike). Where that is missing, this is 0
    and every frame is its own burst: slower, never wrong.
    """
    buffer = getattr(getattr(ws, "_reader", None), "_buffer", None)
    return min(len(buffer), BURST_LIMIT) if buffer is not None else 0
