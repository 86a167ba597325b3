"""The receiver against a scripted venue (rotation, staleness, reconnects, back-pressure) and
against the fake exchanges (keep-alives keep a quiet connection alive)."""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import AsyncIterator, Callable, Sequence
from decimal import Decimal

import aiohttp
import pytest

from tradingd.actors.receiver import (
    MAX_RESUBSCRIBES,
    MarketDataOutlets,
    Receiver,
)
from tradingd.adapters.base import VenueUnavailable
from tradingd.adapters.binance import BinanceAdapter
from tradingd.adapters.deribit import DeribitAdapter
from tradingd.config import ExchangeConfig
from tradingd.model import (
    Bar,
    Channel,
    DeadLetter,
    MarketEvent,
    MarketType,
    StreamNotice,
    Subscription,
    Ticker,
    Trade,
    resolution_seconds,
)
from tradingd.queues import BoundedQueue, OverflowPolicy
from tradingd.sequencing import RECONNECT, Gap, SequenceTracker
from tradingd.supervisor import ActorContext
from tradingd.testing.fake_binance import FakeBinance
from tradingd.testing.fake_deribit import FakeDeribit

Record = Trade | Bar | DeadLetter


def make_trade(instrument: str, seq: int) -> Trade:
    return Trade(
        exchange="fake",
        instrument_name=instrument,
        market_type=MarketType.SPOT,
        trade_id=str(seq),
        trade_seq=seq,
        price_text="100.5",
        quantity_text="0.25",
        is_buyer_maker=seq % 2 == 0,
        trade_us=seq,
        received_us=seq,
    )


def make_bar(instrument: str) -> Bar:
    one = Decimal(1)
    return Bar(
        exchange="fake",
        instrument_name=instrument,
        resolution="1m",
        tick_us=0,
        open_text=str(one),
        high_text=str(one),
        low_text=str(one),
        close_text=str(one),
        volume_text=str(one),
        closed=False,
        received_us=0,
    )


def notice(kind: str) -> StreamNotice:
    return StreamNotice(exchange="fake", kind=kind, received_us=0)


class Changes:
    """Await a predicate over state changed by synchronous code (re-checked on each change)."""

    def __init__(self) -> None:
        self._event = asyncio.Event()

    def notify(self) -> None:
        self._event.set()
        self._event = asyncio.Event()

    async def wait_for(self, predicate: Callable[[], bool], limit: float = 10.0) -> None:
        async with asyncio.timeout(limit):
            while True:
                event = self._event
                if predicate():
                    return
                await event.wait()


class FakeSession:
    """One scripted connection: frames queue up and are read in order.

    ``lagging``: nothing is read until the receiver unsubscribes (a connection whose reader
    is behind; the venue's answer comes after everything sent before it). ``muted``: the
    venue sends nothing at all on it.
    """

    def __init__(
        self, venue: FakeVenue, subscriptions: Sequence[Subscription], *, lagging: bool, muted: bool
    ) -> None:
        self.venue = venue
        self.streams = set(subscriptions)
        self.frames: asyncio.Queue[list[MarketEvent] | None] = asyncio.Queue()
        self.flowing = asyncio.Event()
        if not lagging:
            self.flowing.set()
        self.muted = muted
        self.closed = False
        self.frames_received = 0
        self.calls: list[tuple[str, list[Subscription]]] = []

    def deliver(self, batch: list[MarketEvent]) -> None:
        if not self.closed and not self.muted:
            self.frames.put_nowait(batch)

    async def subscribe(self, subscriptions: Sequence[Subscription]) -> None:
        self.calls.append(("subscribe", list(subscriptions)))
        self.streams.update(subscriptions)
        self.venue.changes.notify()

    async def unsubscribe(self, subscriptions: Sequence[Subscription]) -> None:
        self.calls.append(("unsubscribe", list(subscriptions)))
        self.streams.difference_update(subscriptions)
        self.deliver([notice("unsubscribed")])
        self.flowing.set()
        self.venue.changes.notify()

    async def batches(self) -> AsyncIterator[list[MarketEvent]]:
        while True:
            await self.flowing.wait()
            batch = await self.frames.get()
            if batch is None:
                return
            self.frames_received += 1
            yield batch

    async def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        while not self.frames.empty():
            self.frames.get_nowait()
        self.frames.put_nowait(None)
        self.flowing.set()
        self.venue.closes += 1
        self.venue.changes.notify()


class FakeVenue:
    """A scripted adapter: every live session subscribed to a stream gets what is published."""

    name = "fake"

    def __init__(self) -> None:
        self.sessions: list[FakeSession] = []
        self.connects = 0
        self.closes = 0
        self.fail_next = 0
        self.mute_next = 0
        self.lag_next = 0
        self.next_seq: dict[str, int] = {}
        self.changes = Changes()

    def plan_connections(self, subscriptions: Sequence[Subscription]) -> list[list[Subscription]]:
        return [list(subscriptions)]

    async def connect(self, subscriptions: Sequence[Subscription]) -> FakeSession:
        if self.fail_next:
            self.fail_next -= 1
            raise VenueUnavailable("connection refused")
        session = FakeSession(
            self, subscriptions, lagging=self.lag_next > 0, muted=self.mute_next > 0
        )
        self.lag_next = max(0, self.lag_next - 1)
        self.mute_next = max(0, self.mute_next - 1)
        self.sessions.append(session)
        self.connects += 1
        self.changes.notify()
        return session

    def live(self) -> list[FakeSession]:
        return [s for s in self.sessions if not s.closed]

    def publish(self, instrument: str, count: int, *, deliver: bool = True) -> list[int]:
        first = self.next_seq.get(instrument, 1)
        seqs = list(range(first, first + count))
        self.next_seq[instrument] = first + count
        if deliver:
            trades: list[MarketEvent] = [make_trade(instrument, s) for s in seqs]
            stream = Subscription(Channel.TRADES, instrument)
            for session in self.live():
                if stream in session.streams:
                    session.deliver(trades)
        self.changes.notify()
        return seqs

    def publish_bar(self, instrument: str) -> None:
        stream = Subscription(Channel.BARS, instrument, "1m")
        for session in self.live():
            if stream in session.streams:
                session.deliver([make_bar(instrument)])

    def keepalive(self) -> None:
        for session in self.live():
            session.deliver([])

    async def fetch_instruments(self) -> list[object]:
        return []

    async def close(self) -> None:
        for session in self.live():
            await session.close()


class CountingContext(ActorContext):
    def __init__(self) -> None:
        super().__init__("receiver:fake:0", {})
        self.checkins = 0
        self.changes = Changes()

    def checkin(self) -> None:
        super().checkin()
        self.checkins += 1
        self.changes.notify()


def exchange_config(**overrides: object) -> ExchangeConfig:
    values: dict[str, object] = {
        "ws_url": "ws://127.0.0.1:9",
        "rest_url": "http://127.0.0.1:9",
        "symbols": ["A", "B"],
        "reconnect_backoff_initial": 0.01,
        "reconnect_backoff_max": 0.05,
        "rotate_after": 1000.0,
        "stale_after": 5.0,
        "request_timeout": 2.0,
    }
    values.update(overrides)
    return ExchangeConfig(**values)  # type: ignore[arg-type]


class Harness:
    def __init__(
        self,
        venue: FakeVenue,
        config: ExchangeConfig,
        *,
        channels: Sequence[Channel] = (Channel.TRADES,),
        records_capacity: int = 100_000,
        intervals: dict[Channel, float] | None = None,
        tracker: SequenceTracker | None = None,
        adapter: object | None = None,
    ) -> None:
        self.venue = venue
        self.records: BoundedQueue[Record] = BoundedQueue(
            "records", records_capacity, OverflowPolicy.BLOCK
        )
        self.tickers: BoundedQueue[Ticker] = BoundedQueue(
            "tickers", 100, OverflowPolicy.KEEP_LATEST, key=lambda t: t.instrument_name
        )
        self.gaps: BoundedQueue[Gap] = BoundedQueue("gaps", 1000, OverflowPolicy.BLOCK)
        self.analysis: BoundedQueue[Trade] = BoundedQueue(
            "analysis", 100_000, OverflowPolicy.DROP_OLDEST
        )
        self.execution: BoundedQueue[MarketEvent] = BoundedQueue(
            "execution", 100_000, OverflowPolicy.DROP_OLDEST
        )
        self.tracker = tracker or SequenceTracker("fake")
        subscriptions = [
            Subscription(channel, symbol, "1m" if channel is Channel.BARS else "")
            for symbol in config.symbols
            for channel in channels
        ]
        self.receiver = Receiver(
            exchange="fake",
            index=0,
            adapter=adapter or venue,  # type: ignore[arg-type]
            subscriptions=subscriptions,
            config=config,
            outlets=MarketDataOutlets(
                self.records, self.tickers, self.analysis, self.gaps, self.execution
            ),
            tracker=self.tracker,
            rng=random.Random(7),
            intervals=intervals,
        )
        self.ctx = CountingContext()
        self.trades: list[Trade] = []

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[Harness]:
        task = asyncio.create_task(self.receiver.run(self.ctx))
        try:
            yield self
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            await self.venue.close()

    async def collect_until(self, last: dict[str, int], limit: float = 10.0) -> list[Trade]:
        """Take trades off the records queue until each instrument's ``last`` arrived."""

        def complete() -> bool:
            seen = {t.instrument_name: t.trade_seq for t in self.trades}
            return all(seen.get(name, 0) >= seq for name, seq in last.items())

        async with asyncio.timeout(limit):
            while not complete():
                batch = await self.records.get_batch(10_000)
                self.trades += [r for r in batch if isinstance(r, Trade)]
        return self.trades

    def seqs(self, instrument: str) -> list[int]:
        return [t.trade_seq for t in self.trades if t.instrument_name == instrument]

    def gap_list(self) -> list[Gap]:
        return self.gaps.get_batch_nowait(1000)


async def test_rotations_under_continuous_trading_lose_and_duplicate_nothing() -> None:
    """An accelerated 24 h clock: rotate every 50 ms while both instruments trade; every
    overlap is stitched with zero gaps and zero duplicates reaching the queue."""
    venue = FakeVenue()
    harness = Harness(venue, exchange_config(rotate_after=0.05))
    async with harness.running():
        await venue.changes.wait_for(lambda: venue.connects == 1)

        async def trade_continuously() -> None:
            while True:
                venue.publish("A", 3)
                venue.publish("B", 1)
                await asyncio.sleep(0.002)  # the market's pace, not a wait for a condition

        async with asyncio.TaskGroup() as group:
            publisher = group.create_task(trade_continuously())
            await venue.changes.wait_for(lambda: harness.receiver.stats.rotations >= 5)
            publisher.cancel()
        last = {"A": venue.publish("A", 1)[-1], "B": venue.publish("B", 1)[-1]}
        await harness.collect_until(last)
    assert harness.seqs("A") == list(range(1, last["A"] + 1))
    assert harness.seqs("B") == list(range(1, last["B"] + 1))
    assert harness.gap_list() == []
    stats = harness.receiver.stats
    assert stats.rotations >= 5 and stats.rotation_failures == 0
    assert stats.connects == 1 and stats.reconnects == 0
    # The overlaps were real: the tracker dropped what both connections delivered.
    assert harness.tracker.duplicates > 0
    # Every replaced connection was unsubscribed (drained) before it was closed.
    old = venue.sessions[: stats.rotations]
    assert all(s.closed and any(c[0] == "unsubscribe" for c in s.calls) for s in old)


async def test_a_lagging_old_connection_is_drained_before_it_is_closed() -> None:
    """The old connection's reader is behind: trades 11..30 are still unread on it when the
    replacement delivers 31..40. Closing it then would lose 11..30; the receiver reads it
    up to the venue's answer to its unsubscribe first, then releases the held 31..40."""
    venue = FakeVenue()
    harness = Harness(venue, exchange_config(symbols=["A"]))
    async with harness.running():
        await venue.changes.wait_for(lambda: venue.connects == 1)
        venue.publish("A", 10)
        await harness.collect_until({"A": 10})
        old = venue.sessions[0]
        old.flowing.clear()  # its reader falls behind from here
        venue.publish("A", 20)
        harness.receiver.request_rotation()
        await venue.changes.wait_for(lambda: venue.connects == 2)
        venue.publish("A", 10)
        await harness.collect_until({"A": 40})
        venue.publish("A", 1)  # on the replacement alone now
        await harness.collect_until({"A": 41})
        assert harness.receiver.stats.rotations == 1 and old.closed
    assert harness.seqs("A") == list(range(1, 42))
    assert harness.gap_list() == []
    assert harness.tracker.duplicates == 10


async def test_a_server_shutdown_notice_rotates_at_once() -> None:
    venue = FakeVenue()
    harness = Harness(venue, exchange_config(symbols=["A"]))
    async with harness.running():
        await venue.changes.wait_for(lambda: venue.connects == 1)
        venue.publish("A", 5)
        venue.sessions[0].deliver([notice("server_shutdown")])
        await venue.changes.wait_for(lambda: venue.connects == 2)
        venue.publish("A", 5)
        await venue.changes.wait_for(lambda: venue.sessions[0].closed)
        await harness.collect_until({"A": 10})
        venue.publish("A", 5)
        await harness.collect_until({"A": 15})
        assert harness.receiver.stats.rotations == 1
        assert not venue.sessions[1].closed
    assert harness.seqs("A") == list(range(1, 16))
    assert harness.gap_list() == []


async def test_a_replacement_that_delivers_nothing_is_dropped_and_retried_soon() -> None:
    """The retry follows the reconnect backoff, not another ``rotate_after`` (the venue's
    forced cut would come first)."""
    venue = FakeVenue()
    harness = Harness(venue, exchange_config(symbols=["A"], stale_after=0.2))
    async with harness.running():
        await venue.changes.wait_for(lambda: venue.connects == 1)
        venue.mute_next = 1
        venue.fail_next = 0
        harness.receiver.request_rotation()
        await venue.changes.wait_for(lambda: venue.connects == 2)

        async def trade_and_keep_alive() -> None:
            while True:
                venue.publish("A", 1)
                await asyncio.sleep(0.01)  # the market's pace, which keeps the stream alive

        async with asyncio.TaskGroup() as group:
            publisher = group.create_task(trade_and_keep_alive())
            await venue.changes.wait_for(lambda: harness.receiver.stats.rotations == 1)
            publisher.cancel()
        last = venue.publish("A", 1)[-1]
        await harness.collect_until({"A": last})
    stats = harness.receiver.stats
    assert stats.rotation_failures == 1 and venue.connects == 3
    assert venue.sessions[1].closed
    assert harness.seqs("A") == list(range(1, last + 1))
    assert harness.gap_list() == []


async def test_a_silent_connection_is_replaced_and_the_missed_trades_are_a_gap() -> None:
    venue = FakeVenue()
    harness = Harness(venue, exchange_config(symbols=["A"], stale_after=0.2))
    async with harness.running():
        await venue.changes.wait_for(lambda: venue.connects == 1)
        venue.publish("A", 5)
        await harness.collect_until({"A": 5})
        venue.sessions[0].muted = True  # a half-open connection: nothing arrives any more
        lost = venue.publish("A", 7)
        await venue.changes.wait_for(lambda: venue.connects == 2)
        venue.publish("A", 3)
        await harness.collect_until({"A": 15})
    assert harness.receiver.stats.stale_connections == 1
    assert harness.seqs("A") == [1, 2, 3, 4, 5, 13, 14, 15]
    gaps = harness.gap_list()
    assert [(g.first_seq, g.last_seq, g.reason) for g in gaps] == [(lost[0], lost[-1], RECONNECT)]


async def test_keepalives_keep_a_quiet_connection_alive() -> None:
    venue = FakeVenue()
    harness = Harness(venue, exchange_config(symbols=["A"], stale_after=0.15))
    async with harness.running():
        await venue.changes.wait_for(lambda: venue.connects == 1)
        for _ in range(30):  # 0.6 s of keep-alives only: four times stale_after
            venue.keepalive()
            await asyncio.sleep(0.02)  # the venue's keep-alive cadence
        await harness.ctx.changes.wait_for(lambda: harness.receiver.stats.frames >= 30)
    assert venue.connects == 1
    assert harness.receiver.stats.stale_connections == 0


async def test_connect_failures_back_off_and_retry_until_connected() -> None:
    venue = FakeVenue()
    venue.fail_next = 4
    harness = Harness(venue, exchange_config(symbols=["A"]))
    async with harness.running():
        await venue.changes.wait_for(lambda: venue.connects == 1)
        assert harness.receiver.first_attempt_done.is_set()
        assert "connection refused" in harness.receiver.stats.last_error
        venue.publish("A", 3)
        await harness.collect_until({"A": 3})


def test_backoff_is_exponential_capped_and_jittered() -> None:
    venue = FakeVenue()
    config = exchange_config(reconnect_backoff_initial=0.5, reconnect_backoff_max=30.0)
    receiver = Harness(venue, config).receiver
    for attempt in range(1, 12):
        capped = min(30.0, 0.5 * 2 ** (attempt - 1))
        delays = {receiver.backoff_delay(attempt) for _ in range(50)}
        assert all(capped / 2 <= d <= capped for d in delays)
        assert len(delays) > 1  # jitter: reconnecting daemons do not stampede together


async def test_a_silent_kline_stream_is_resubscribed_then_the_connection_replaced() -> None:
    """Bars have a cadence: silent bars on a live connection (keep-alives still arrive) are
    resubscribed; bars that come back reset the count; a stream that stays silent through
    MAX_RESUBSCRIBES tries gets the connection replaced."""
    venue = FakeVenue()
    harness = Harness(
        venue,
        exchange_config(symbols=["A"], stale_after=0.05),
        channels=(Channel.TRADES, Channel.BARS),
        intervals={Channel.BARS: 0.02},
    )
    bars = Subscription(Channel.BARS, "A", "1m")
    async with harness.running():
        await venue.changes.wait_for(lambda: venue.connects == 1)
        session = venue.sessions[0]

        def resubscribed(times: int) -> Callable[[], bool]:
            return lambda: session.calls.count(("subscribe", [bars])) >= times

        async def keep_alive(until: Callable[[], bool]) -> None:
            while not until():
                venue.keepalive()
                await asyncio.sleep(0.01)  # the venue's keep-alive cadence

        await keep_alive(resubscribed(1))
        venue.publish_bar("A")  # the stream came back
        assert isinstance((await harness.records.get_batch(10))[0], Bar)
        await keep_alive(lambda: venue.connects == 2)
    assert session.closed
    assert session.calls.count(("unsubscribe", [bars])) == 1 + MAX_RESUBSCRIBES
    assert harness.receiver.stats.resubscribes == 1 + MAX_RESUBSCRIBES
    assert harness.receiver.stats.stale_connections == 0


async def test_storage_back_pressure_pauses_reading_without_loss_or_reconnect() -> None:
    """The records queue is full (PostgreSQL down): the receiver stops reading and keeps
    checking in; that is not the venue's silence, so the connection stays; once the queue
    drains, everything arrives in order."""
    venue = FakeVenue()
    harness = Harness(venue, exchange_config(symbols=["A"], stale_after=0.1), records_capacity=10)
    async with harness.running():
        await venue.changes.wait_for(lambda: venue.connects == 1)
        for _ in range(50):
            venue.publish("A", 4)
        await harness.ctx.changes.wait_for(lambda: len(harness.records) == 10)
        blocked_at = harness.ctx.checkins
        # checked_in() checks in once a second while the receiver waits for room.
        await harness.ctx.changes.wait_for(lambda: harness.ctx.checkins >= blocked_at + 2)
        assert venue.connects == 1 and harness.receiver.stats.stale_connections == 0
        await harness.collect_until({"A": 200})
    assert harness.seqs("A") == list(range(1, 201))
    assert venue.connects == 1


async def test_venues_declare_the_cadence_of_channels_that_have_one() -> None:
    import aiohttp

    from tradingd.adapters.binance import BinanceAdapter
    from tradingd.adapters.deribit import DeribitAdapter
    from tradingd.config import ExchangeConfig

    config = ExchangeConfig(ws_url="ws://x", rest_url="http://x", bar_resolution="1h")
    async with aiohttp.ClientSession() as http:
        binance = BinanceAdapter(config, exchange="b", http=http)
        deribit = DeribitAdapter(config, exchange="d", http=http)
        assert binance.stream_intervals() == {Channel.BARS: 2.0}
        assert deribit.stream_intervals() == {Channel.BARS: 3600.0}
    assert resolution_seconds("15m") == 900 and resolution_seconds("1d") == 86400
    with pytest.raises(ValueError):
        resolution_seconds("4x")


# -- against the fake exchanges ---------------------------------------------------------------


async def test_deribit_heartbeats_keep_a_quiet_connection_alive() -> None:
    """No market data at all, heartbeats every 0.1 s and answered: the connection outlives
    several stale_after periods, and the fake (which closes on an unanswered test_request)
    keeps it too."""
    async with FakeDeribit(seed=5) as fake, aiohttp.ClientSession() as http:
        fake.heartbeat_period = 0.1
        config = exchange_config(
            ws_url=fake.ws_url, rest_url=fake.rest_url, symbols=["BTC-PERPETUAL"], stale_after=0.4
        )
        adapter = DeribitAdapter(config, exchange="deribit", http=http)
        harness = Harness(FakeVenue(), config, adapter=adapter)
        async with harness.running():
            await fake.wait_subscribed("BTC-PERPETUAL", "trades")
            # 20 heartbeat round trips (test_request in, public/test reply): 2 s, 5 stale_after.
            await harness.ctx.changes.wait_for(lambda: harness.receiver.stats.frames >= 40)
            assert fake.connection_count() == 1
            answered = [m for m, _ in fake.requests if m == "public/test"]
            assert len(answered) >= 15
        assert harness.receiver.stats.connects == 1
        assert harness.receiver.stats.stale_connections == 0


async def test_binance_pings_keep_a_quiet_connection_alive() -> None:
    # At most 4 messages a second go to Binance (pongs included): pings every 0.3 s.
    fake = FakeBinance(seed=5, ping_interval=0.3, pong_timeout=1.0)
    await fake.start()
    try:
        async with aiohttp.ClientSession() as http:
            config = exchange_config(
                ws_url=fake.ws_url, rest_url=fake.rest_url, symbols=["BTCUSDT"], stale_after=0.8
            )
            adapter = BinanceAdapter(config, exchange="binance", http=http)
            harness = Harness(FakeVenue(), config, adapter=adapter)
            async with harness.running():
                await fake.wait_subscribed("BTCUSDT", "trades")
                # 8 pings answered: 2.4 s, three stale_after periods without market data.
                await fake.wait_for(lambda: fake.pongs_received >= 8)
                assert fake.connection_count() == 1
            assert harness.receiver.stats.connects == 1
            assert harness.receiver.stats.stale_connections == 0
    finally:
        await fake.stop()


async def test_trades_cancelled_before_they_are_queued_stay_unseen_and_become_a_gap() -> None:
    tracker = SequenceTracker("fake")
    venue = FakeVenue()
    harness = Harness(venue, exchange_config(symbols=["A"]), records_capacity=3, tracker=tracker)
    async with harness.running():
        await venue.changes.wait_for(lambda: venue.connects == 1)
        venue.publish("A", 1)
        await harness.collect_until({"A": 1})
        venue.publish("A", 5)  # 2..6: three fit, the receiver waits for room for the rest
        await harness.ctx.changes.wait_for(lambda: len(harness.records) == 3)
    # Cancelled while waiting: the five trades are not marked seen.
    assert tracker.last_seq("A") == 1
    assert harness.receiver.stats.trades == 1

    venue = FakeVenue()
    venue.next_seq["A"] = 7
    again = Harness(venue, exchange_config(symbols=["A"]), tracker=tracker)
    async with again.running():
        await venue.changes.wait_for(lambda: venue.connects == 1)
        venue.publish("A", 1)
        await again.collect_until({"A": 7})
    assert [(g.first_seq, g.last_seq) for g in again.gap_list()] == [(2, 6)]


async def test_a_burst_of_dead_letters_is_one_warning_with_a_count(logged: list[str]) -> None:
    venue = FakeVenue()
    harness = Harness(venue, exchange_config(symbols=["A"]))
    letters: list[MarketEvent] = [
        DeadLetter(exchange="fake", source="ws", payload=b"{", error="bad json", received_us=n)
        for n in range(50)
    ]
    async with harness.running():
        await venue.changes.wait_for(lambda: venue.connects == 1)
        for session in venue.live():
            session.deliver(letters)
            session.deliver(letters)
        venue.publish("A", 1)
        await harness.collect_until({"A": 1})
    assert harness.receiver.stats.dead_letters == 100
    # Two bursts (or one, if read together) within the interval: one line, with the count.
    warnings = [line for line in logged if "dead letter" in line]
    assert len(warnings) == 1, warnings
    assert any(
        f"{n} dead letter(s) since the last warning; latest from ws: bad json" in warnings[0]
        for n in (50, 100)
    )


async def test_data_flows_only_with_fresh_market_data_not_dead_letters() -> None:
    venue = FakeVenue()
    harness = Harness(venue, exchange_config(symbols=["A"]))
    receiver = harness.receiver
    letter = DeadLetter(exchange="fake", source="ws", payload=b"{", error="bad", received_us=1)
    async with harness.running():
        await venue.changes.wait_for(lambda: venue.connects == 1)
        for session in venue.live():
            session.deliver([letter])
        await harness.ctx.changes.wait_for(lambda: receiver.stats.dead_letters == 1)
        assert not receiver.data_arrived.is_set()
        assert not receiver.data_fresh(3600.0)
        venue.publish("A", 1)
        await asyncio.wait_for(receiver.data_arrived.wait(), 10.0)
        assert receiver.data_fresh(3600.0)
        # Freshness is a window, not a latch: data older than the window is not fresh.
        assert not receiver.data_fresh(-1.0)


async def test_each_outlet_gets_its_kinds_from_trade_only_and_mixed_bursts() -> None:
    venue = FakeVenue()
    harness = Harness(venue, exchange_config(symbols=["A", "B"]))
    trades = [make_trade("A", 1), make_trade("B", 1), make_trade("A", 2)]
    # A trade-only burst (routed without sorting) with a duplicate the tracker drops.
    only_trades: list[MarketEvent] = [trades[0], trades[1], trades[0], trades[2]]
    letter = DeadLetter(exchange="fake", source="ws", payload=b"{", error="bad", received_us=3)
    ticker = Ticker(exchange="fake", instrument_name="A", timestamp_us=4, received_us=4)
    bar = make_bar("B")
    later = [make_trade("A", 3), make_trade("B", 2)]
    mixed: list[MarketEvent] = [later[0], letter, ticker, bar, later[1]]
    async with harness.running():
        await venue.changes.wait_for(lambda: venue.connects == 1)
        for session in venue.live():
            session.deliver(only_trades)
        await harness.ctx.changes.wait_for(lambda: harness.receiver.stats.trades == 3)
        assert harness.records.get_batch_nowait(100) == trades
        assert harness.execution.get_batch_nowait(100) == trades
        assert harness.analysis.get_batch_nowait(100) == trades
        for session in venue.live():
            session.deliver(mixed)
        await harness.ctx.changes.wait_for(lambda: harness.receiver.stats.trades == 5)
        # Bars and dead letters in arrival order, then the burst's new trades.
        assert harness.records.get_batch_nowait(100) == [letter, bar, *later]
        # The executor's feed never carries a dead letter; tickers come last.
        assert harness.execution.get_batch_nowait(100) == [bar, *later, ticker]
        assert harness.analysis.get_batch_nowait(100) == later
        assert harness.tickers.get_batch_nowait(100) == [ticker]
    assert harness.receiver.stats.duplicates_dropped == 1
