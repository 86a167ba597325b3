"""The receiver actor: one per exchange connection, from WebSocket frames to the queues.

It owns the connection's life:

- connect and subscribe; reconnect with capped exponential backoff and jitter (unlimited
  attempts, reset after ``healthy_after`` seconds of a healthy connection);
- a dead connection is one that sends nothing, keep-alives included (Binance pings every 20 s,
  Deribit heartbeats every ``heartbeat_interval``), for ``stale_after`` seconds: it is closed
  and replaced. A quiet market is not a dead connection. Time spent waiting for room in our own
  queue (storage down or slow) is not venue silence either: the receiver stops reading, and if
  the venue drops the connection meanwhile, the reconnect and the gap repair fetch what it sent;
- a stream with a documented cadence (klines) that stays silent on a live connection for
  ``stale_multiple`` of its interval (and at least ``stale_after``) is resubscribed; after
  ``MAX_RESUBSCRIBES`` fruitless tries the connection is replaced;
- planned rotation before the venue's forced cut (``rotate_after``) or on a shutdown notice,
  without a gap or a duplicate: the replacement is opened and subscribed, and what it delivers
  is held back; once it delivers, the old connection is unsubscribed and read until the venue
  answers (everything it sent before that answer predates the replacement's subscriptions);
  then it is closed and the held frames are released through the sequence tracker, which drops
  the overlap. A replacement that delivers nothing is dropped and the rotation retried.

Every trade goes through the exchange's shared ``SequenceTracker``: duplicates are dropped and
jumps become ``Gap`` records on the exchange's gaps queue, for the repairer.
"""

from __future__ import annotations

import asyncio
import collections
import random
import time
from collections.abc import Coroutine, Mapping, Sequence
from typing import TypeVar

import aiohttp
import msgspec

from tradingd.actors import RateLimiter, checked_in, pause
from tradingd.adapters.base import ExchangeAdapter, MarketDataSession, VenueUnavailable
from tradingd.backoff import backoff_delay
from tradingd.config import ExchangeConfig
from tradingd.failures import FailureSummary
from tradingd.model import (
    Bar,
    Channel,
    DeadLetter,
    MarketEvent,
    StreamNotice,
    Subscription,
    Ticker,
    Trade,
)
from tradingd.queues import BoundedQueue
from tradingd.sequencing import RECONNECT, Gap, SequenceTracker
from tradingd.supervisor import ActorContext

_T = TypeVar("_T")

_CONNECT_ERRORS = (VenueUnavailable, aiohttp.ClientError, OSError, TimeoutError)

# Records a replacement connection may hold back before it stops reading (back-pressure).
HOLD_LIMIT = 20_000
# A silent stream is resubscribed this many times before the connection is replaced.
MAX_RESUBSCRIBES = 3
DEFAULT_STALE_MULTIPLE = 3.0
DEAD_LETTER_LOG_INTERVAL = 10.0
_TRADES_ONLY = frozenset({Trade})


class ReceiverStats(msgspec.Struct):
    connected: bool = False
    connects: int = 0
    reconnects: int = 0
    rotations: int = 0
    rotation_failures: int = 0
    stale_connections: int = 0
    resubscribes: int = 0
    frames: int = 0
    trades: int = 0
    bars: int = 0
    tickers: int = 0
    dead_letters: int = 0
    duplicates_dropped: int = 0
    gaps_detected: int = 0
    last_error: str = ""
    seconds_since_frame: float = -1.0


class MarketDataOutlets:
    """Where a receiver's records go; built once by the composition root and shared."""

    def __init__(
        self,
        records: BoundedQueue[Trade | Bar | DeadLetter],
        tickers: BoundedQueue[Ticker],
        analysis: BoundedQueue[Trade] | None,
        gaps: BoundedQueue[Gap],
        execution: BoundedQueue[MarketEvent] | None = None,
    ) -> None:
        self.records = records
        self.tickers = tickers
        self.analysis = analysis
        self.gaps = gaps
        # The exchange's executor: fresh trades, tickers and bars (never waited for).
        self.execution = execution


class _Link:
    """One open session and the state of its reader."""

    def __init__(self, session: MarketDataSession, *, holding: bool, now: float) -> None:
        self.session = session
        # While holding, frames are kept in ``held`` instead of being routed (a replacement
        # during a rotation); ``room`` is cleared when the hold is full.
        self.holding = holding
        self.discard = False
        self.held: collections.deque[list[MarketEvent]] = collections.deque()
        self.held_records = 0
        self.room = asyncio.Event()
        self.room.set()
        # Set once a frame with market data (not only keep-alives or replies) arrived.
        self.delivered = asyncio.Event()
        # Set whenever the venue confirms an unsubscribe on this connection.
        self.unsubscribed = asyncio.Event()
        self.last_frame = now
        self.frames_seen = 0
        # True while the reader waits for room in our queues (not the venue's silence).
        self.routing = False


def _carries_market_data(batch: list[MarketEvent]) -> bool:
    return any(type(event) in (Trade, Bar, Ticker) for event in batch)


class Receiver:
    def __init__(
        self,
        *,
        exchange: str,
        index: int,
        adapter: ExchangeAdapter,
        subscriptions: Sequence[Subscription],
        config: ExchangeConfig,
        outlets: MarketDataOutlets,
        tracker: SequenceTracker,
        rng: random.Random | None = None,
        intervals: Mapping[Channel, float] | None = None,
        stale_multiple: float = DEFAULT_STALE_MULTIPLE,
    ) -> None:
        self.name = f"receiver:{exchange}:{index}"
        self.exchange = exchange
        self._adapter = adapter
        self._subscriptions = list(subscriptions)
        self._config = config
        self._out = outlets
        self._tracker = tracker
        self._rng = rng or random.Random()
        self.stats = ReceiverStats()
        self._last_frame = 0.0
        self._rotate_now = asyncio.Event()
        self._tracked = [s.instrument_name for s in subscriptions if s.channel is Channel.TRADES]
        self._intervals = dict(intervals or {})
        self._stale_multiple = stale_multiple
        # Streams with a cadence: their silence limit, and when each last delivered.
        self._stream_limits: dict[Subscription, float] = {}
        self._seen: dict[Channel, dict[str, float]] = {}
        # When a live subscription was added (loop time): its silence counts from then.
        self._added_at: dict[Subscription, float] = {}
        self._limit_streams(self._subscriptions)
        self._current: _Link | None = None
        self._rotating = False
        # Held while connecting, rotating or changing subscriptions: a change made meanwhile
        # would miss the connection being opened.
        self._changing = asyncio.Lock()
        # Set once the first connection attempt finished, whatever its outcome.
        self.first_attempt_done = asyncio.Event()
        self._failures = FailureSummary()
        # Set once market data (trades, tickers, bars: not keep-alives, not dead letters)
        # arrived on this connection; ``data_fresh`` says whether it still does.
        self.data_arrived = asyncio.Event()
        self._dead_letter_log = RateLimiter(DEAD_LETTER_LOG_INTERVAL)
        self._letters_logged = 0
        self._data_at: float | None = None

    def _limit_streams(self, subscriptions: Sequence[Subscription]) -> None:
        for subscription in subscriptions:
            interval = self._intervals.get(subscription.channel)
            if interval:
                self._stream_limits[subscription] = max(
                    self._config.stale_after, self._stale_multiple * interval
                )
                self._seen.setdefault(subscription.channel, {})

    # -- live subscription changes ----------------------------------------------------------

    @property
    def subscriptions(self) -> list[Subscription]:
        return list(self._subscriptions)

    async def change(
        self, add: Sequence[Subscription], remove: Sequence[Subscription]
    ) -> list[Subscription]:
        """Subscribe ``add`` and unsubscribe ``remove`` on the live connection (a connection
        opened later subscribes the new set); returns the subscriptions now held. A failed
        send means the connection is going away: its replacement gets the new set."""
        async with self._changing:
            gone = [s for s in dict.fromkeys(remove) if s in self._subscriptions]
            kept = [s for s in self._subscriptions if s not in set(gone)]
            new = [s for s in dict.fromkeys(add) if s not in set(kept)]
            self._subscriptions = kept + new
            self._tracked = [
                s.instrument_name for s in self._subscriptions if s.channel is Channel.TRADES
            ]
            for subscription in gone:
                self._stream_limits.pop(subscription, None)
                self._added_at.pop(subscription, None)
            now = asyncio.get_running_loop().time()
            self._added_at.update(dict.fromkeys(new, now))
            self._limit_streams(new)
            link = self._current
            if link is not None:
                try:
                    if gone:
                        await link.session.unsubscribe(gone)
                    if new:
                        await link.session.subscribe(new)
                except _CONNECT_ERRORS as exc:
                    self.stats.last_error = f"{type(exc).__name__}: {exc}"
            return list(self._subscriptions)

    # -- the connection loop --------------------------------------------------------------

    async def run(self, ctx: ActorContext) -> None:
        loop = asyncio.get_running_loop()
        attempt = 0
        while True:
            try:
                async with self._changing:
                    session = await self._adapter.connect(self._subscriptions)
                    link = self._current = _Link(session, holding=False, now=loop.time())
            except _CONNECT_ERRORS as exc:
                attempt += 1
                self.stats.last_error = f"{type(exc).__name__}: {exc}"
                delay = self.backoff_delay(attempt)
                summary = self._failures.record(self.stats.last_error, loop.time())
                ctx.log.log(
                    "WARNING" if summary else "DEBUG",
                    "connect failed ({}); attempt {}, retrying in {:.1f} s",
                    summary or self.stats.last_error,
                    attempt,
                    delay,
                )
                ctx.ready()
                self.first_attempt_done.set()
                await pause(ctx, delay)
                continue
            failed = self._failures.reset()
            if failed:
                ctx.log.info("connected after {} failed attempts", failed)
            self.stats.connects += 1
            if self.stats.connects > 1:
                self.stats.reconnects += 1
                # The first trade of each instrument now shows what the break cost.
                self._tracker.resumed(self._tracked, RECONNECT)
            self.stats.connected = True
            self.first_attempt_done.set()
            ctx.ready()
            ctx.log.info("connected, {} subscriptions", len(self._subscriptions))
            connected_at = loop.time()
            try:
                await self._serve(ctx, link)
            finally:
                self.stats.connected = False
                self._current = None
            if loop.time() - connected_at >= self._config.healthy_after:
                attempt = 0
            attempt += 1
            delay = self.backoff_delay(attempt)
            ctx.log.warning("connection ended; reconnecting in {:.1f} s", delay)
            await pause(ctx, delay)

    def backoff_delay(self, attempt: int) -> float:
        """Exponential in ``attempt``, capped, with equal jitter (half fixed, half random)."""
        cfg = self._config
        return backoff_delay(
            attempt, cfg.reconnect_backoff_initial, cfg.reconnect_backoff_max, self._rng
        )

    def request_rotation(self) -> None:
        self._rotate_now.set()

    async def _serve(self, ctx: ActorContext, current: _Link) -> None:
        """Read ``current`` until it dies, rotating to fresh connections when it is time."""
        loop = asyncio.get_running_loop()
        links = [current]
        try:
            async with asyncio.TaskGroup() as group:
                reader = group.create_task(self._read(ctx, current))
                watcher = (
                    group.create_task(self._watch_streams(ctx, loop.time()))
                    if self._stream_limits
                    else None
                )
                try:
                    rotate_at = loop.time() + self._config.rotate_after
                    failures = 0
                    while True:
                        asked = asyncio.ensure_future(self._rotate_now.wait())
                        done, _ = await asyncio.wait(
                            {reader, asked},
                            timeout=max(0.0, rotate_at - loop.time()),
                            return_when=asyncio.FIRST_COMPLETED,
                        )
                        asked.cancel()
                        if reader in done:
                            return
                        self._rotate_now.clear()
                        async with self._changing:
                            self._rotating = True
                            try:
                                switched = await self._rotate(ctx, group, current, reader, links)
                            finally:
                                self._rotating = False
                        if switched is None:
                            failures += 1
                            self.stats.rotation_failures += 1
                            rotate_at = loop.time() + self.backoff_delay(failures)
                            continue
                        current, reader = switched
                        self._current = current
                        links = [current]
                        failures = 0
                        rotate_at = loop.time() + self._config.rotate_after
                finally:
                    if watcher is not None:
                        watcher.cancel()
        finally:
            for link in links:
                await link.session.close()

    async def _rotate(
        self,
        ctx: ActorContext,
        group: asyncio.TaskGroup,
        current: _Link,
        reader: asyncio.Task[None],
        links: list[_Link],
    ) -> tuple[_Link, asyncio.Task[None]] | None:
        """Replace ``current`` by a fresh connection; None if no usable one could be opened."""
        loop = asyncio.get_running_loop()
        started = loop.time()
        ctx.log.info("rotating to a fresh connection")
        try:
            replacement = await self._adapter.connect(self._subscriptions)
        except _CONNECT_ERRORS as exc:
            ctx.log.warning("rotation: connect failed ({}); keeping the old connection", exc)
            return None
        fresh = _Link(replacement, holding=True, now=loop.time())
        links.append(fresh)
        fresh_reader = group.create_task(self._read(ctx, fresh))
        await _first(fresh.delivered.wait(), fresh_reader, limit=self._config.stale_after)
        # A quiet market sends no data on either connection: a replacement that is alive
        # (its keep-alives or replies arrive) is as good as the old one then.
        alive = not fresh_reader.done() and fresh.frames_seen > 0
        if not fresh.delivered.is_set() and not alive:
            ctx.log.warning("rotation: the replacement delivered nothing; dropping it")
            fresh.discard = True
            fresh.held.clear()
            fresh.held_records = 0
            fresh.room.set()
            await replacement.close()
            await asyncio.wait({fresh_reader})
            links.remove(fresh)
            return None
        if not reader.done():
            # The venue answers the unsubscribe after everything it sent before it, and the
            # replacement was subscribed before we asked: once the answer is read, the old
            # connection has nothing left that the replacement does not have.
            current.unsubscribed.clear()
            try:
                await current.session.unsubscribe(self._subscriptions)
            except _CONNECT_ERRORS as exc:
                ctx.log.info("rotation: unsubscribing the old connection failed ({})", exc)
            else:
                await _first(
                    current.unsubscribed.wait(), reader, limit=self._config.request_timeout
                )
        await current.session.close()
        # Never cancelled: a reader stopped between the tracker and the queue would lose
        # trades the tracker has already accepted.
        await asyncio.wait({reader})
        self._tracker.resumed(self._tracked, "rotation")
        held = fresh.held_records
        duplicates = self._tracker.duplicates
        await self._release(ctx, fresh)
        self.stats.rotations += 1
        ctx.log.info(
            "rotation complete in {:.3f} s ({} records held, {} overlapping trades dropped)",
            loop.time() - started,
            held,
            self._tracker.duplicates - duplicates,
        )
        return fresh, fresh_reader

    async def _release(self, ctx: ActorContext, link: _Link) -> None:
        """Route what ``link`` held back, in order, then let its reader route directly."""
        loop = asyncio.get_running_loop()
        while link.held:
            batch = link.held.popleft()
            link.held_records -= len(batch)
            await self._route(ctx, link, batch, loop.time())
        # No await between the emptiness check and this: the reader cannot slip a frame past.
        link.holding = False
        link.room.set()

    async def _read(self, ctx: ActorContext, link: _Link) -> None:
        loop = asyncio.get_running_loop()
        async with asyncio.TaskGroup() as group:
            guard = group.create_task(self._close_when_silent(ctx, link))
            try:
                session = link.session
                async for batch in session.batches():
                    now = loop.time()
                    link.last_frame = self._last_frame = now
                    self.stats.frames += session.frames_received - link.frames_seen
                    link.frames_seen = session.frames_received
                    ctx.checkin()
                    if not batch or link.discard:
                        continue
                    if link.holding:
                        link.held.append(batch)
                        link.held_records += len(batch)
                        if not link.delivered.is_set() and _carries_market_data(batch):
                            link.delivered.set()
                        if link.held_records >= HOLD_LIMIT:
                            link.room.clear()
                            await link.room.wait()
                        continue
                    link.routing = True
                    try:
                        await self._route(ctx, link, batch, now)
                    finally:
                        link.routing = False
                        link.last_frame = loop.time()
            finally:
                guard.cancel()

    async def _close_when_silent(self, ctx: ActorContext, link: _Link) -> None:
        loop = asyncio.get_running_loop()
        limit = self._config.stale_after
        while True:
            silent_for = loop.time() - link.last_frame
            # Waiting for room in our queue or in the hold is not the venue's silence.
            if silent_for >= limit and not link.routing and link.room.is_set():
                self.stats.stale_connections += 1
                ctx.log.warning("no frame for {:.0f} s; the connection is dead", silent_for)
                await link.session.close()
                return
            await asyncio.sleep(max(limit - silent_for, limit / 4))

    async def _watch_streams(self, ctx: ActorContext, since: float) -> None:
        """Resubscribe a stream with a cadence that went silent; replace the connection if
        that does not revive it."""
        loop = asyncio.get_running_loop()
        resubscribed_at: dict[Subscription, float] = {}
        attempts: dict[Subscription, int] = {}
        while True:
            now = loop.time()
            # Subscriptions change while this awaits: iterate over a copy.
            limits = list(self._stream_limits.items())
            next_check = now + min((limit for _, limit in limits), default=self._config.stale_after)
            for subscription, limit in limits:
                start = max(since, self._added_at.get(subscription, since))
                seen = max(
                    start, self._seen[subscription.channel].get(subscription.instrument_name, 0)
                )
                asked = resubscribed_at.get(subscription, since)
                if subscription in attempts and seen > asked:
                    ctx.log.info("{} flows again", _describe(subscription))
                    del attempts[subscription]
                due = max(seen, asked, since) + limit
                if due > now:
                    next_check = min(next_check, due)
                    continue
                link = self._current
                if link is None or self._rotating:
                    continue
                tries = attempts.get(subscription, 0) + 1
                if tries > MAX_RESUBSCRIBES:
                    ctx.log.error(
                        "{} stays silent after {} resubscriptions; replacing the connection",
                        _describe(subscription),
                        MAX_RESUBSCRIBES,
                    )
                    await link.session.close()
                    return
                attempts[subscription] = tries
                resubscribed_at[subscription] = now
                next_check = min(next_check, now + limit)
                self.stats.resubscribes += 1
                ctx.log.warning(
                    "no {} for {:.0f} s on a live connection; resubscribing (try {})",
                    _describe(subscription),
                    now - max(seen, since),
                    tries,
                )
                await self._resubscribe(ctx, link, subscription)
            ctx.checkin()
            await asyncio.sleep(max(0.01, next_check - loop.time()))

    async def _resubscribe(
        self, ctx: ActorContext, link: _Link, subscription: Subscription
    ) -> None:
        link.unsubscribed.clear()
        try:
            await link.session.unsubscribe([subscription])
            # A session may skip subscribing to what it still believes it has.
            await _first(link.unsubscribed.wait(), None, limit=self._config.request_timeout)
            await link.session.subscribe([subscription])
        except _CONNECT_ERRORS as exc:
            ctx.log.info("resubscribing failed ({}); the connection is going away", exc)

    # -- routing (the hot path: once per burst of frames, not per record) -------------------

    async def _route(
        self, ctx: ActorContext, link: _Link, batch: list[MarketEvent], now: float
    ) -> None:
        stored: list[Trade | Bar | DeadLetter] = []
        tickers: list[Ticker] = []
        seen_bar = False
        letter: DeadLetter | None = None
        if set(map(type, batch)) == _TRADES_ONLY:
            # A busy trade stream's burst: nothing to sort.
            trades: list[Trade] = batch  # type: ignore[assignment]
        else:
            trades = []
            letter, seen_bar = self._sort(ctx, link, batch, now, trades, stored, tickers)
        observation = self._tracker.plan(trades) if trades else None
        if observation is not None:
            gaps, fresh = observation.gaps, observation.fresh
            if gaps:
                self.stats.gaps_detected += len(gaps)
                for gap in gaps:
                    ctx.log.bind(SYMBOL=gap.instrument_name).warning(
                        "gap of {} trades ({}..{}, {})",
                        gap.size,
                        gap.first_seq,
                        gap.last_seq,
                        gap.reason,
                    )
                await self._put(ctx, self._out.gaps, gaps)
            stored.extend(fresh)
        if tickers:
            self.stats.tickers += len(tickers)
            self._out.tickers.put_many_nowait(tickers)
        if self._out.execution is not None:
            feed: Sequence[MarketEvent] = stored
            if letter is not None:
                feed = [e for e in stored if type(e) is not DeadLetter]
            if feed and tickers:
                self._out.execution.put_many_nowait([*feed, *tickers])
            elif feed or tickers:
                self._out.execution.put_many_nowait(feed or tickers)
        if stored:
            await self._put(ctx, self._out.records, stored)
        # Only now, with the trades queued, are they seen: cancelled before this point, the
        # receiver leaves them for the next copy (or the gap in front of it) to account for.
        if observation is not None:
            self._tracker.accept(observation)
            self.stats.duplicates_dropped = self._tracker.duplicates
            self.stats.trades += len(observation.fresh)
            if observation.fresh and self._out.analysis is not None:
                self._out.analysis.put_many_nowait(observation.fresh)
        if letter is not None:
            self._log_dead_letters(ctx, letter)
        if trades or tickers or seen_bar:
            self._data_at = time.monotonic()
            if not self.data_arrived.is_set():
                self.data_arrived.set()

    def _sort(
        self,
        ctx: ActorContext,
        link: _Link,
        batch: list[MarketEvent],
        now: float,
        trades: list[Trade],
        stored: list[Trade | Bar | DeadLetter],
        tickers: list[Ticker],
    ) -> tuple[DeadLetter | None, bool]:
        """Sort a mixed burst into ``trades``, ``stored`` (bars, dead letters) and ``tickers``;
        returns its last dead letter and whether it carried a bar."""
        seen_bars = self._seen.get(Channel.BARS)
        seen_tickers = self._seen.get(Channel.TICKERS)
        seen_bar = False
        letter: DeadLetter | None = None
        for event in batch:
            kind = type(event)
            if kind is Trade:
                trades.append(event)  # type: ignore[arg-type]
            elif kind is Ticker:
                tickers.append(event)  # type: ignore[arg-type]
                if seen_tickers is not None:
                    seen_tickers[event.instrument_name] = now  # type: ignore[union-attr]
            elif kind is Bar:
                stored.append(event)  # type: ignore[arg-type]
                seen_bar = True
                self.stats.bars += 1
                if seen_bars is not None:
                    seen_bars[event.instrument_name] = now  # type: ignore[union-attr]
            elif kind is DeadLetter:
                stored.append(event)  # type: ignore[arg-type]
                self.stats.dead_letters += 1
                letter = event  # type: ignore[assignment]
            elif kind is StreamNotice:
                self._on_notice(ctx, link, event)  # type: ignore[arg-type]
        return letter, seen_bar

    def _log_dead_letters(self, ctx: ActorContext, letter: DeadLetter) -> None:
        """One warning per burst of dead letters (at most one per DEAD_LETTER_LOG_INTERVAL),
        with the count since the last one; every letter is stored all the same."""
        if self._dead_letter_log.allow() is None:
            return
        ctx.log.warning(
            "{} dead letter(s) since the last warning; latest from {}: {}",
            self.stats.dead_letters - self._letters_logged,
            letter.source,
            letter.error,
        )
        self._letters_logged = self.stats.dead_letters

    def data_fresh(self, within: float) -> bool:
        """Market data arrived on this connection within the last ``within`` seconds."""
        return self._data_at is not None and time.monotonic() - self._data_at <= within

    @staticmethod
    async def _put(ctx: ActorContext, queue: BoundedQueue[_T], items: list[_T]) -> None:
        """Enqueue without a task when there is room; otherwise wait, still checking in."""
        try:
            queue.put_many_nowait(items)
        except asyncio.QueueFull:
            await checked_in(ctx, queue.put_many(items))

    def _on_notice(self, ctx: ActorContext, link: _Link, notice: StreamNotice) -> None:
        kind = notice.kind
        if kind == "server_shutdown":
            ctx.log.warning("the venue announced a server shutdown; rotating now")
            self.request_rotation()
        elif kind == "unsubscribed":
            link.unsubscribed.set()
        elif kind == "error":
            ctx.log.warning("venue error on the stream: {}", notice.detail)
        else:
            ctx.log.debug("stream notice {}: {}", kind, notice.detail)

    def snapshot(self) -> ReceiverStats:
        loop = asyncio.get_running_loop()
        since = loop.time() - self._last_frame if self._last_frame else -1.0
        return msgspec.structs.replace(self.stats, seconds_since_frame=round(since, 3))


async def _first(
    awaitable: asyncio.Future[object] | Coroutine[object, object, object],
    task: asyncio.Task[None] | None,
    *,
    limit: float,
) -> None:
    """Wait for ``awaitable``, or for ``task`` to end, or ``limit`` seconds, whichever first."""
    waiter = asyncio.ensure_future(awaitable)
    watched: set[asyncio.Future[object]] = {waiter}
    if task is not None:
        watched.add(task)  # type: ignore[arg-type]
    try:
        await asyncio.wait(watched, timeout=limit, return_when=asyncio.FIRST_COMPLETED)
    finally:
        waiter.cancel()


def _describe(subscription: Subscription) -> str:
    resolution = f" {subscription.resolution}" if subscription.resolution else ""
    return f"{subscription.channel.value}{resolution} of {subscription.instrument_name}"
