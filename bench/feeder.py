"""``python -m bench.feeder``: the fake Binance in its own process, driven over stdin/stdout.

The first stdout line is ``{"ws_url": ..., "rest_url": ...}``. Then each stdin line is one JSON
command and gets one JSON reply line, in order:

- ``{"op": "wait_subscribed"}``: returns once a connection streams every instrument's trades;
- ``{"op": "flood", "seconds": S}``: publish trades round-robin over the instruments as fast as
  the connections take them for S seconds (the outbox of each connection is kept between a low
  and a high water mark, so a reader that stops reading stops the feeder, not its memory);
- ``{"op": "rate", "per_second": R, "seconds": S}``: publish R trades/s in all for S seconds,
  within the same water marks (behind schedule, it catches up once the reader reads again);
- ``{"op": "stats"}``: trades published so far.

Closing stdin stops the feeder.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import struct
import sys
from typing import Any, Final

import uvloop

from tradingd.testing.fake_binance import FakeBinance, _Connection

# Frames queued per connection: publishing pauses above HIGH and resumes below LOW.
HIGH_WATER: Final = 20_000
LOW_WATER: Final = 5_000
# Frames written to the socket at once.
WRITE_BURST: Final = 256
# With --tickers: one bookTicker per instrument for this many of its trades.
TRADES_PER_TICKER: Final = 250
# Trades published per instrument per round while flooding.
FLOOD_CHUNK: Final = 250
# Seconds between publications at a set rate.
PACE: Final = 0.001


class FloodingBinance(FakeBinance):
    """The fake venue, with a signal when its connections' outboxes have room again."""

    def __init__(self, *, tickers: bool = False, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.room = asyncio.Event()
        self.room.set()
        self.published = 0
        self.tickers = tickers
        self._untickered: dict[str, int] = {}

    def publish(self, instrument: str, count: int) -> None:
        """``count`` trades, and a bookTicker for every ``TRADES_PER_TICKER`` of them."""
        self.flood_trades(instrument, count)
        if self.tickers:
            pending = self._untickered.get(instrument, 0) + count
            while pending >= TRADES_PER_TICKER:
                self.publish_ticker(instrument)
                pending -= TRADES_PER_TICKER
            self._untickered[instrument] = pending

    def backlog(self) -> int:
        return max((len(c.outbox) for c in self._connections), default=0)

    async def _write_loop(self, conn: _Connection) -> None:
        # The fake's writer, plus the room signal. The frames already queued go out in one
        # transport write: the same unmasked text frames aiohttp's ``send_frame`` writes, without
        # its per-frame call and write (a fifth of a flooding feeder's CPU). The feeder stands in
        # for a remote venue; its CPU is taken from the daemon under test on this machine.
        ws, outbox, wakeup, room = conn.ws, conn.outbox, conn.wakeup, self.room
        writer = ws._writer  # aiohttp keeps its frame writer private
        assert writer is not None
        transport, protocol = writer.transport, writer.protocol
        while True:
            await wakeup.wait()
            wakeup.clear()
            while outbox:
                if transport.is_closing():
                    return
                count = min(len(outbox), WRITE_BURST)
                transport.write(b"".join([text_frame(outbox.popleft()) for _ in range(count)]))
                if protocol.writing_paused:
                    await protocol._drain_helper()
                if len(outbox) <= LOW_WATER:
                    room.set()
            room.set()

    async def flood(self, instruments: list[str], seconds: float) -> int:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + seconds
        published = 0
        while (remaining := deadline - loop.time()) > 0:
            if self.backlog() >= HIGH_WATER:
                self.room.clear()
                try:
                    async with asyncio.timeout(remaining):
                        await self.room.wait()
                except TimeoutError:
                    break
                continue
            for name in instruments:
                self.publish(name, FLOOD_CHUNK)
            published += FLOOD_CHUNK * len(instruments)
            if self.room.is_set() and self.backlog() < LOW_WATER:
                # The writers are keeping up: let them (and the control reader) run.
                await asyncio.sleep(0)
        self.published += published
        return published

    async def at_rate(self, instruments: list[str], per_second: float, seconds: float) -> int:
        """Publish ``per_second`` trades/s in all, round-robin, every ``PACE`` seconds; behind
        schedule (a reader that stopped reading) it waits for room, then catches up without
        ever queueing more than ``HIGH_WATER`` frames per connection."""
        loop = asyncio.get_running_loop()
        start = loop.time()
        deadline = start + seconds
        published = 0
        while (now := loop.time()) < deadline:
            due = int(per_second * (now - start)) - published
            room = HIGH_WATER - self.backlog()
            if room <= 0:
                self.room.clear()
                try:
                    async with asyncio.timeout(deadline - now):
                        await self.room.wait()
                except TimeoutError:
                    break
                continue
            count = min(due, room)
            if count > 0:
                share, extra = divmod(count, len(instruments))
                for index, name in enumerate(instruments):
                    if share + (index < extra):
                        self.publish(name, share + (index < extra))
                published += count
            await asyncio.sleep(PACE)
        self.published += published
        return published


def text_frame(payload: bytes) -> bytes:
    """An unmasked, unfragmented WebSocket text frame (RFC 6455 5.2), as a server sends it."""
    size = len(payload)
    if size < 126:
        return struct.pack("!BB", 0x81, size) + payload
    if size < 65_536:
        return struct.pack("!BBH", 0x81, 126, size) + payload
    return struct.pack("!BBQ", 0x81, 127, size) + payload


def _reply(payload: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(payload) + "\n")
    sys.stdout.flush()


async def serve(seed: int, instruments: list[str], pong_timeout: float, tickers: bool) -> None:
    fake = FloodingBinance(seed=seed, pong_timeout=pong_timeout, tickers=tickers)
    for name in instruments:
        if name not in fake.instruments:
            fake.add_instrument(name)
    await fake.start()
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    _reply({"ws_url": fake.ws_url, "rest_url": fake.rest_url})
    try:
        while line := await reader.readline():
            command = json.loads(line)
            op = command.get("op")
            started = loop.time()
            if op == "wait_subscribed":
                for name in instruments:
                    await fake.wait_subscribed(name, "trades")
                    if tickers:
                        await fake.wait_subscribed(name, "tickers")
                _reply({"ok": True})
            elif op == "flood":
                published = await fake.flood(instruments, float(command["seconds"]))
                _reply({"published": published, "seconds": loop.time() - started})
            elif op == "rate":
                published = await fake.at_rate(
                    instruments, float(command["per_second"]), float(command["seconds"])
                )
                _reply({"published": published, "seconds": loop.time() - started})
            elif op == "stats":
                _reply({"published": fake.published, "connections": fake.connection_count()})
            else:
                _reply({"error": f"unknown op {op!r}"})
    finally:
        await fake.stop()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.feeder", description=__doc__)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--instruments", default="BTCUSDT,ETHUSDT,BNBUSDT,SOLUSDT")
    parser.add_argument(
        "--pong-timeout",
        type=float,
        default=60.0,
        help="seconds a connection may leave a ping unanswered (the venue's limit: 60)",
    )
    parser.add_argument(
        "--tickers",
        action="store_true",
        help=f"publish a bookTicker per instrument for every {TRADES_PER_TICKER} of its trades",
    )
    args = parser.parse_args(argv)
    instruments = [n for n in args.instruments.split(",") if n]
    uvloop.run(serve(args.seed, instruments, args.pong_timeout, args.tickers))


if __name__ == "__main__":
    main()
