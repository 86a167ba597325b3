"""The persister actor: market data from the receivers into PostgreSQL (and tickers into Redis).

Records (trades, bars, dead letters) come off a BLOCK queue in batches (``batch_size`` or
``flush_interval`` after the first, whichever comes first) and are committed in one transaction
per batch through ``tradingd.storage.writer`` (a batch of new trades alone: one COPY statement).
Nothing is dropped: when PostgreSQL is down or slow the same batch is retried with capped
backoff while the queue fills and the receivers wait (what they could not read is fetched over
REST later). A row PostgreSQL rejects (a data error, not an outage) is isolated by splitting its
batch until it stands alone; it then becomes a dead letter so that the rest of its batch still
lands.

Tickers come off a keep-latest queue every ``flush_interval``; the latest per instrument goes to
the Redis hash ``ticker:<exchange>:<instrument_name>`` (one pipeline per flush) and, every
``ticker_snapshot_interval``, into the ``tickers`` table. Redis being down costs only those
hash updates (counted, warned about at a limited rate); capture goes on.

The actor returns once the records queue is closed and drained (graceful shutdown); the ticker
side then flushes what is queued and writes a last snapshot.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import time
from collections.abc import Callable, Sequence

import asyncpg
import msgspec
import redis.asyncio as aioredis
import redis.exceptions

from tradingd.actors import RateLimiter, checked_in, pause
from tradingd.backoff import backoff_delay
from tradingd.config import PersisterConfig
from tradingd.metrics import LatencyHistogram, record_latencies
from tradingd.model import Bar, DeadLetter, Ticker, Trade
from tradingd.queues import BoundedQueue
from tradingd.storage.writer import (
    TradePartitions,
    TradeSeqMarks,
    insert_dead_letters,
    insert_ticker_snapshots,
    insert_trades,
    no_partition_error,
    upsert_bars,
)
from tradingd.supervisor import ActorContext

Record = Trade | Bar | DeadLetter
OnCommitted = Callable[[Sequence[Trade]], None]

# One attempt at a batch (connect, partitions, transaction, commit) gives up after this long.
WRITE_TIMEOUT = 60.0
# A ticker snapshot is best effort: a slow database must not hold up the Redis updates.
SNAPSHOT_TIMEOUT = 5.0
REDIS_TIMEOUT = 5.0
RETRY_BACKOFF_INITIAL = 0.1
# Committed records freed per event-loop turn (about 0.2 us each).
RECORDS_FREED_PER_TURN = 1000
WARNING_INTERVAL = 30.0

# The server or the path to it is down, restarting, overloaded or cut us off: retry the batch.
TRANSIENT_ERRORS: tuple[type[BaseException], ...] = (
    OSError,
    TimeoutError,
    asyncpg.PostgresConnectionError,
    asyncpg.InterfaceError,
    # A connection the server dropped while it sat idle in the pool (a restart, an operator's
    # pg_terminate_backend) fails its next use this way; the pool discards it on release.
    asyncpg.exceptions.InternalClientError,
    asyncpg.exceptions.OperatorInterventionError,
    asyncpg.exceptions.InsufficientResourcesError,
    asyncpg.exceptions.TransactionRollbackError,
    asyncpg.exceptions.PostgresSystemError,
)
# Something in the batch itself was refused: isolate the row(s) responsible.
DATA_ERRORS: tuple[type[BaseException], ...] = (
    asyncpg.DataError,
    asyncpg.IntegrityConstraintViolationError,
    asyncpg.exceptions.ProgramLimitExceededError,
    ValueError,
    OverflowError,
)
REDIS_ERRORS: tuple[type[BaseException], ...] = (redis.exceptions.RedisError, OSError, TimeoutError)

_encode = msgspec.json.Encoder().encode


class _Committed(msgspec.Struct):
    trades: list[Trade]
    trades_inserted: int
    bars: int
    dead_letters: int
    unknown: int


def ticker_key(ticker: Ticker) -> str:
    return f"ticker:{ticker.exchange}:{ticker.instrument_name}"


def ticker_fields(ticker: Ticker) -> dict[str, str]:
    """The Redis hash of a ticker: every field a string, "" where the venue sent nothing."""
    return {
        "exchange": ticker.exchange,
        "instrument_name": ticker.instrument_name,
        "best_bid_price": ticker.best_bid_price_text or "",
        "best_bid_amount": ticker.best_bid_amount_text or "",
        "best_ask_price": ticker.best_ask_price_text or "",
        "best_ask_amount": ticker.best_ask_amount_text or "",
        "last_price": ticker.last_price_text or "",
        "mark_price": ticker.mark_price_text or "",
        "index_price": ticker.index_price_text or "",
        "timestamp_us": str(ticker.timestamp_us),
        "received_us": str(ticker.received_us),
    }


class Persister:
    name = "persister"

    def __init__(
        self,
        config: PersisterConfig,
        pool: asyncpg.Pool,
        redis: aioredis.Redis,
        records: BoundedQueue[Record],
        tickers: BoundedQueue[Ticker],
        *,
        on_committed: OnCommitted | None = None,
        clock: Callable[[], int] = time.time_ns,
    ) -> None:
        self._config = config
        self._pool = pool
        self._redis = redis
        self._records = records
        self._tickers = tickers
        self._on_committed = on_committed
        self._clock = clock
        self._partitions = TradePartitions()
        self._seq_marks = TradeSeqMarks()
        # One lane per concurrent writer: the batches it took off the queue and has not yet
        # committed, kept across a restart of run().
        self._lanes: list[collections.deque[list[Record]]] = [
            collections.deque() for _ in range(config.writers)
        ]
        # Per writer: batches committed; and how many writer loops are running now.
        self.writer_batches = [0] * config.writers
        # Per writer: the connection it keeps while batches keep coming (see _records_loop).
        self._connections: list[asyncpg.Connection | None] = [None] * config.writers
        # Only while the writers take at most half the pool: the rest is for everything else.
        self._keep_connections = 2 * config.writers <= pool.get_max_size()
        self.writers_running = 0
        self._unsnapshotted: dict[tuple[str, str], Ticker] = {}
        self._progress = asyncio.Event()
        self._db_warnings = RateLimiter(WARNING_INTERVAL)
        self._redis_warnings = RateLimiter(WARNING_INTERVAL)
        self._snapshot_warnings = RateLimiter(WARNING_INTERVAL)
        self._storage_down = False
        self._redis_down = False
        self.flush_time = LatencyHistogram("persister.flush_us")
        self.commit_latency = LatencyHistogram("persister.frame_to_commit_us")
        self.batch_rows = LatencyHistogram("persister.batch_rows")
        self.trades_offered = 0
        self.trades_written = 0
        self.bars_written = 0
        self.dead_letters_written = 0
        self.records_rejected = 0
        self.records_unwritable = 0
        self.records_unknown = 0
        self.batches = 0
        self.retries = 0
        self.callback_errors = 0
        self.tickers_to_redis = 0
        self.redis_skipped = 0
        self.ticker_snapshot_rows = 0
        self.ticker_snapshot_failures = 0

    # -- observation ----------------------------------------------------------------------

    def stats(self) -> dict[str, float]:
        return {
            "trades_offered": self.trades_offered,
            "trades_written": self.trades_written,
            "duplicates_skipped": self.trades_offered - self.trades_written,
            "bars_written": self.bars_written,
            "dead_letters_written": self.dead_letters_written,
            "records_rejected": self.records_rejected,
            "records_unwritable": self.records_unwritable,
            "records_unknown": self.records_unknown,
            "batches": self.batches,
            "retries": self.retries,
            "pending_records": sum(len(s) for lane in self._lanes for s in lane),
            "writers_running": self.writers_running,
            "storage_down": int(self._storage_down),
            "flush_p50_us": self.flush_time.p50,
            "flush_p99_us": self.flush_time.p99,
            "flush_max_us": self.flush_time.max,
            "commit_latency_p50_us": self.commit_latency.p50,
            "commit_latency_p99_us": self.commit_latency.p99,
            "commit_latency_max_us": self.commit_latency.max,
            "tickers_to_redis": self.tickers_to_redis,
            "redis_skipped": self.redis_skipped,
            "redis_down": int(self._redis_down),
            "ticker_snapshot_rows": self.ticker_snapshot_rows,
            "ticker_snapshot_failures": self.ticker_snapshot_failures,
            "callback_errors": self.callback_errors,
        }

    async def wait_until(self, predicate: Callable[[], bool]) -> None:
        """Return once ``predicate()`` holds; it is re-checked after every flush or failure."""
        while True:
            progress = self._progress
            if predicate():
                return
            await progress.wait()

    def _notify(self) -> None:
        self._progress.set()
        self._progress = asyncio.Event()

    # -- running --------------------------------------------------------------------------

    async def run(self, ctx: ActorContext) -> None:
        ctx.ready()
        records_done = asyncio.Event()
        try:
            async with asyncio.TaskGroup() as group:
                group.create_task(self._ticker_loop(ctx, records_done), name="persister:tickers")
                # Several writers keep a batch in flight while the next one is built and sent:
                # the database and the event loop work at the same time.
                writers = [
                    group.create_task(self._records_loop(ctx, n), name=f"persister:writer{n}")
                    for n in range(len(self._lanes))
                ]
                try:
                    await asyncio.gather(*writers)
                finally:
                    records_done.set()
        except BaseExceptionGroup as failures:
            # One failure is the usual case: report it as itself, not as a group.
            if len(failures.exceptions) == 1 and isinstance(failures.exceptions[0], Exception):
                raise failures.exceptions[0] from None
            raise

    # -- records --------------------------------------------------------------------------

    async def _records_loop(self, ctx: ActorContext, writer: int) -> None:
        self.writers_running += 1
        self._notify()
        try:
            await self._commit_pending(ctx, writer)
            while True:
                batch = await self._next_records(ctx, writer)
                if not batch:
                    if writer == 0:
                        ctx.log.info("records queue closed and drained")
                    return
                self._lanes[writer].append(batch)
                await self._commit_pending(ctx, writer)
        finally:
            self.writers_running -= 1
            await self._release(writer)

    async def _release(self, writer: int) -> None:
        conn, self._connections[writer] = self._connections[writer], None
        if conn is not None:
            # The pool resets it, or closes it when the reset fails (a broken connection: the
            # next batch connects afresh). Shielded from cancellation by the pool.
            with contextlib.suppress(*TRANSIENT_ERRORS):
                await self._pool.release(conn)
            self._notify()

    async def _next_records(self, ctx: ActorContext, writer: int) -> list[Record]:
        """The next batch; empty only when the queue is closed and drained."""
        queue, size, linger = self._records, self._config.batch_size, self._config.flush_interval
        while True:
            ctx.checkin()
            # While records keep coming the writer keeps its connection for the next batch
            # (handing it back costs the pool's reset query, a round trip per batch); before
            # a wait on an empty queue, which may be long, it hands it back.
            if not self._keep_connections or not len(queue):
                await self._release(writer)
            if len(queue) >= size:
                return queue.get_batch_nowait(size)
            try:
                # Cancelling get_batch loses nothing: items leave the queue only when it returns.
                async with asyncio.timeout(1.0 + linger):
                    return await queue.get_batch(size, linger)
            except TimeoutError:
                continue

    async def _commit_pending(self, ctx: ActorContext, writer: int) -> None:
        lane = self._lanes[writer]
        attempt = 0
        while lane:
            segment = lane[0]
            started = time.perf_counter()
            try:
                committed = await checked_in(ctx, self._commit(segment, writer))
            except DATA_ERRORS as exc:
                self._isolate(ctx, exc, lane)
                continue
            except TRANSIENT_ERRORS as exc:
                attempt += 1
                self.retries += 1
                delay = backoff_delay(
                    attempt, RETRY_BACKOFF_INITIAL, self._config.retry_backoff_max
                )
                self._storage_down = True
                suppressed = self._db_warnings.allow()
                if suppressed is not None:
                    ctx.log.warning(
                        "PostgreSQL write failed ({}); retrying {} records in {:.1f} s "
                        "(attempt {}, {} similar warnings suppressed)",
                        _describe(exc),
                        sum(len(s) for s in lane),
                        delay,
                        attempt,
                        suppressed,
                    )
                self._notify()
                await pause(ctx, delay)
                continue
            lane.popleft()
            if self._storage_down:
                self._storage_down = False
                self._db_warnings.reset()
                ctx.log.info("PostgreSQL writes resumed after {} retries", attempt)
            attempt = 0
            self.writer_batches[writer] += 1
            self._account(ctx, segment, committed, time.perf_counter() - started)
            del committed
            # The commit's bookkeeping, letting its records go and taking the next batch are
            # separate event-loop turns: together they would hold the loop for milliseconds at
            # the default batch size.
            await _let_go_by_turn(segment)

    async def _commit(self, segment: list[Record], writer: int) -> _Committed:
        try:
            async with asyncio.timeout(WRITE_TIMEOUT):
                conn = self._connections[writer]
                if conn is None:
                    conn = self._connections[writer] = await self._pool.acquire()
                return await self._write(conn, segment)
        except BaseException:
            # After a failure (a refused row, an outage, a timeout mid-statement) the connection
            # goes back through the pool, which resets it or discards it.
            await self._release(writer)
            raise

    async def _write(self, conn: asyncpg.Connection, segment: list[Record]) -> _Committed:
        trades, bars, letters = self._split(segment)
        for attempt in (1, 2):
            await self._partitions.ensure(conn, trades)
            try:
                if bars or letters:
                    async with conn.transaction():
                        inserted = await insert_trades(conn, trades, marks=self._seq_marks)
                        bar_rows = await upsert_bars(conn, bars)
                        letter_rows = await insert_dead_letters(conn, letters)
                else:
                    # Trades alone commit as one COPY where they can: a transaction around it
                    # would cost four round trips (BEGIN, SAVEPOINT, RELEASE, COMMIT) per batch.
                    inserted = await insert_trades(conn, trades, marks=self._seq_marks)
                    bar_rows = letter_rows = 0
            except asyncpg.CheckViolationError as exc:
                # A cached partition can vanish (retention, a replaced database).
                if attempt == 2 or not no_partition_error(exc):
                    raise
                self._partitions.forget()
                continue
            unknown = len(segment) - len(trades) - len(bars) - len(letters)
            return _Committed(trades, inserted, bar_rows, letter_rows, unknown)
        raise AssertionError("unreachable")

    def _split(self, segment: list[Record]) -> tuple[list[Trade], list[Bar], list[DeadLetter]]:
        trades = [r for r in segment if type(r) is Trade]
        if len(trades) == len(segment):
            return trades, [], []
        bars = [r for r in segment if type(r) is Bar]
        letters = [r for r in segment if type(r) is DeadLetter]
        return trades, bars, letters

    def _isolate(
        self, ctx: ActorContext, exc: BaseException, lane: collections.deque[list[Record]]
    ) -> None:
        """Split the failing segment, or turn its one refused record into a dead letter."""
        segment = lane.popleft()
        if len(segment) > 1:
            half = len(segment) // 2
            lane.extendleft([segment[half:], segment[:half]])
            return
        record = segment[0]
        log = ctx.log.bind(EXCHANGE=record.exchange)
        if isinstance(record, DeadLetter):
            self.records_unwritable += 1
            log.error("dead letter from {} refused by PostgreSQL ({}); dropped", record.source, exc)
            return
        self.records_rejected += 1
        kind = type(record).__name__.lower()
        log.error("{} refused by PostgreSQL ({}); stored as a dead letter", kind, exc)
        lane.appendleft(
            [
                DeadLetter(
                    exchange=record.exchange,
                    source=f"persister:{kind}",
                    payload=_encode(record),
                    error=f"refused by PostgreSQL: {type(exc).__name__}: {exc}",
                    received_us=record.received_us,
                )
            ]
        )

    def _account(
        self, ctx: ActorContext, segment: list[Record], committed: _Committed, elapsed: float
    ) -> None:
        now_us = self._clock() // 1000
        record_latencies(self.commit_latency, now_us, segment)
        self.flush_time.record(int(elapsed * 1_000_000))
        self.batch_rows.record(len(segment))
        self.batches += 1
        self.trades_offered += len(committed.trades)
        self.trades_written += committed.trades_inserted
        self.bars_written += committed.bars
        self.dead_letters_written += committed.dead_letters
        if committed.unknown:
            self.records_unknown += committed.unknown
            ctx.log.error("{} records of an unknown type were not stored", committed.unknown)
        if self._on_committed is not None and committed.trades:
            try:
                self._on_committed(committed.trades)
            except Exception as exc:
                self.callback_errors += 1
                ctx.log.opt(exception=exc).error("on_committed callback failed: {!r}", exc)
        self._notify()

    # -- tickers --------------------------------------------------------------------------

    async def _ticker_loop(self, ctx: ActorContext, records_done: asyncio.Event) -> None:
        loop = asyncio.get_running_loop()
        interval = self._config.ticker_snapshot_interval
        next_snapshot = loop.time() + interval
        queue = self._tickers
        # Tickers reach Redis at least once a second whatever the records' flush interval.
        cadence = min(self._config.flush_interval, 1.0)
        while True:
            finishing = await _wait_event(records_done, cadence)
            ctx.checkin()
            if len(queue):
                await self._publish(ctx, queue.get_batch_nowait(max(1, len(queue))))
            finishing = finishing or (queue.closed and not len(queue))
            now = loop.time()
            if finishing or now >= next_snapshot:
                await self._snapshot(ctx)
                next_snapshot += interval
                if next_snapshot <= now:
                    next_snapshot = now + interval
            if finishing:
                return

    async def _publish(self, ctx: ActorContext, tickers: list[Ticker]) -> None:
        latest: dict[tuple[str, str], Ticker] = {}
        for ticker in tickers:
            latest[(ticker.exchange, ticker.instrument_name)] = ticker
        self._unsnapshotted.update(latest)
        try:
            async with self._redis.pipeline(transaction=False) as pipe:
                for ticker in latest.values():
                    pipe.hset(ticker_key(ticker), mapping=ticker_fields(ticker))  # type: ignore[arg-type]
                async with asyncio.timeout(REDIS_TIMEOUT):
                    await pipe.execute()
        except REDIS_ERRORS as exc:
            self.redis_skipped += len(latest)
            self._redis_down = True
            suppressed = self._redis_warnings.allow()
            if suppressed is not None:
                ctx.log.warning(
                    "Redis unavailable ({}); ticker updates skipped, capture continues "
                    "({} skipped so far, {} similar warnings suppressed)",
                    _describe(exc),
                    self.redis_skipped,
                    suppressed,
                )
        else:
            self.tickers_to_redis += len(latest)
            if self._redis_down:
                self._redis_down = False
                self._redis_warnings.reset()
                ctx.log.info("Redis ticker updates resumed")
        self._notify()

    async def _snapshot(self, ctx: ActorContext) -> None:
        if not self._unsnapshotted:
            return
        pending, self._unsnapshotted = self._unsnapshotted, {}
        snapshot_us = self._clock() // 1000
        try:
            rows = await checked_in(ctx, self._write_snapshot(list(pending.values()), snapshot_us))
        except DATA_ERRORS as exc:
            self.ticker_snapshot_failures += 1
            ctx.log.error("ticker snapshot refused by PostgreSQL ({}); dropped", _describe(exc))
        except TRANSIENT_ERRORS as exc:
            self.ticker_snapshot_failures += 1
            for key, ticker in pending.items():
                self._unsnapshotted.setdefault(key, ticker)
            suppressed = self._snapshot_warnings.allow()
            if suppressed is not None:
                ctx.log.warning(
                    "ticker snapshot not written ({}); {} tickers kept for the next one "
                    "({} similar warnings suppressed)",
                    _describe(exc),
                    len(pending),
                    suppressed,
                )
        else:
            self.ticker_snapshot_rows += rows
        self._notify()

    async def _write_snapshot(self, tickers: list[Ticker], snapshot_us: int) -> int:
        deadline = min(SNAPSHOT_TIMEOUT, self._config.ticker_snapshot_interval)
        async with asyncio.timeout(deadline), self._pool.acquire() as conn:
            return await insert_ticker_snapshots(conn, tickers, snapshot_us)


async def _let_go_by_turn(records: list[Record]) -> None:
    """Empty ``records``, ``RECORDS_FREED_PER_TURN`` per event-loop turn, from the next turn on.

    Where the persister holds a batch's last references, freeing 5,000 records at once takes
    about a millisecond.
    """
    while records:
        await asyncio.sleep(0)
        del records[-RECORDS_FREED_PER_TURN:]


async def _wait_event(event: asyncio.Event, seconds: float) -> bool:
    """Wait up to ``seconds`` for ``event``; whether it is set."""
    if event.is_set():
        return True
    try:
        async with asyncio.timeout(seconds):
            await event.wait()
    except TimeoutError:
        pass
    return event.is_set()


def _describe(exc: BaseException) -> str:
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
