"""The persister actor against real PostgreSQL and Redis, including storage outages.

Outages are real: the actor's pool and Redis client go through a TCP proxy on 127.0.0.1 that the
test stops (every connection cut, new ones refused) and starts again.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections.abc import AsyncIterator, Sequence
from decimal import Decimal
from urllib.parse import parse_qs, unquote, urlsplit

import asyncpg
import msgspec
import pytest
import redis.asyncio as aioredis
from loguru import logger

from tests.conftest import LoopTurns
from tradingd.actors import persister as persister_module
from tradingd.actors.persister import Persister, Record, ticker_key
from tradingd.config import PersisterConfig
from tradingd.model import Bar, DeadLetter, MarketType, Ticker, Trade, datetime_to_us, optional_text
from tradingd.queues import BoundedQueue, OverflowPolicy
from tradingd.supervisor import ActorContext

JAN_2027_US = 1_798_761_600_000_000
WAIT = 30.0


def trade(seq: int, *, price: str = "97000.01000000", instrument: str = "BTCUSDT") -> Trade:
    at = JAN_2027_US + seq * 1000
    return Trade(
        exchange="binance",
        instrument_name=instrument,
        market_type=MarketType.SPOT,
        trade_id=str(seq),
        trade_seq=seq,
        price_text=price,
        quantity_text="0.00120000",
        is_buyer_maker=bool(seq % 2),
        trade_us=at,
        received_us=at + 100,
    )


def bar(tick_us: int, *, open_text: str = "1.0") -> Bar:
    """A closed 1m BTCUSDT bar opening at ``tick_us``."""
    return Bar(
        exchange="binance",
        instrument_name="BTCUSDT",
        resolution="1m",
        tick_us=tick_us,
        open_text=open_text,
        high_text="2.0",
        low_text="0.5",
        close_text="1.5",
        volume_text="3.25",
        closed=True,
        received_us=JAN_2027_US,
    )


def ticker(instrument: str, bid: str, *, at_us: int = JAN_2027_US) -> Ticker:
    return Ticker(
        exchange="deribit",
        instrument_name=instrument,
        best_bid_price_text=optional_text(Decimal(bid)),
        best_bid_amount_text="10",
        best_ask_price_text=None,
        best_ask_amount_text=None,
        last_price_text="97000.0",
        timestamp_us=at_us,
        received_us=at_us + 50,
    )


def records_queue(capacity: int = 100_000) -> BoundedQueue[Record]:
    return BoundedQueue("records", capacity, OverflowPolicy.BLOCK)


def tickers_queue() -> BoundedQueue[Ticker]:
    return BoundedQueue(
        "tickers", 10_000, OverflowPolicy.KEEP_LATEST, key=lambda t: (t.exchange, t.instrument_name)
    )


# -- a proxy that can take the storage "down" --------------------------------------------------


class Proxy:
    """Forwards 127.0.0.1:<port> to a TCP or unix-socket server; stop() is an outage."""

    def __init__(self, upstream: tuple[str, int] | str) -> None:
        self.upstream = upstream
        self.port = 0
        self._server: asyncio.Server | None = None
        self._pipes: set[asyncio.Task[None]] = set()
        self._writers: set[asyncio.StreamWriter] = set()

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", self.port)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        assert self._server is not None
        self._server.close()
        for writer in list(self._writers):
            writer.transport.abort()
        for task in list(self._pipes):
            task.cancel()
        await asyncio.gather(*self._pipes, return_exceptions=True)
        await self._server.wait_closed()
        self._server = None

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            if isinstance(self.upstream, str):
                up_reader, up_writer = await asyncio.open_unix_connection(self.upstream)
            else:
                up_reader, up_writer = await asyncio.open_connection(*self.upstream)
        except OSError:
            writer.transport.abort()
            return
        self._writers |= {writer, up_writer}
        pipes = [
            asyncio.ensure_future(self._pipe(reader, up_writer)),
            asyncio.ensure_future(self._pipe(up_reader, writer)),
        ]
        self._pipes.update(pipes)
        try:
            await asyncio.wait(pipes, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in pipes:
                task.cancel()
            await asyncio.gather(*pipes, return_exceptions=True)
            self._pipes.difference_update(pipes)
            for w in (writer, up_writer):
                self._writers.discard(w)
                w.transport.abort()

    @staticmethod
    async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError):
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()


def postgres_upstream(url: str) -> tuple[tuple[str, int] | str, str]:
    """Where ``url``'s server listens, and the URL rewritten for host/port placeholders."""
    parts = urlsplit(url)
    query = parse_qs(parts.query)
    host = unquote(query["host"][0]) if "host" in query else parts.hostname or "127.0.0.1"
    port = int(query["port"][0]) if "port" in query else parts.port or 5432
    user = parts.username or "postgres"
    password = f":{parts.password}" if parts.password else ""
    through = f"postgresql://{user}{password}@127.0.0.1:{{port}}{parts.path}"
    if host.startswith("/"):
        return f"{host}/.s.PGSQL.{port}", through
    return (host, port), through


def redis_upstream(url: str) -> tuple[tuple[str, int] | str, str]:
    parts = urlsplit(url)
    if parts.scheme == "unix":
        db = parse_qs(parts.query).get("db", ["0"])[0]
        return parts.path, f"redis://127.0.0.1:{{port}}/{db}"
    return (parts.hostname or "127.0.0.1", parts.port or 6379), (
        f"redis://127.0.0.1:{{port}}{parts.path or '/0'}"
    )


# -- fixtures -----------------------------------------------------------------------------------


@pytest.fixture
async def redis(redis_url: str) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.Redis.from_url(redis_url, decode_responses=True)
    try:
        yield client
    finally:
        await client.aclose()


@contextlib.asynccontextmanager
async def running(persister: Persister) -> AsyncIterator[asyncio.Task[None]]:
    """The actor running in a task owned by the test; cancelled if the test leaves early."""
    task = asyncio.ensure_future(persister.run(ActorContext(persister.name, {})))
    try:
        yield task
    finally:
        if not task.done():
            task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def wait_for(persister: Persister, predicate: object) -> None:
    assert callable(predicate)
    await asyncio.wait_for(persister.wait_until(predicate), WAIT)


async def count(pool: asyncpg.Pool, table: str) -> int:
    value: int = await pool.fetchval(f"SELECT count(*) FROM {table}")
    return value


def config(**overrides: float) -> PersisterConfig:
    base = {"batch_size": 500, "flush_interval": 0.05, "ticker_snapshot_interval": 3600.0}
    base.update(overrides)
    return msgspec.convert(base, PersisterConfig)


# -- tests --------------------------------------------------------------------------------------


async def test_graceful_drain_writes_everything(pool: asyncpg.Pool, redis: aioredis.Redis) -> None:
    records, tickers = records_queue(), tickers_queue()
    trades = [trade(i) for i in range(2_345)]
    bars = [bar(JAN_2027_US + m * 60_000_000) for m in range(7)]
    letters = [
        DeadLetter(
            exchange="binance", source="ws", payload=b"\xffnot json", error="x", received_us=1
        )
    ]
    items: list[Record] = [*trades, *bars, *letters]
    await records.put_many(items)
    records.close()
    tickers.close()
    committed: list[Trade] = []

    def on_committed(batch: Sequence[Trade]) -> None:
        committed.extend(batch)

    now_us = JAN_2027_US + 60_000_000
    persister = Persister(
        config(),
        pool,
        redis,
        records,
        tickers,
        on_committed=on_committed,
        clock=lambda: now_us * 1000,
    )
    await asyncio.wait_for(persister.run(ActorContext("persister", {})), WAIT)

    assert await count(pool, "public_trades") == len(trades)
    assert await count(pool, "ohlc") == len(bars)
    assert await count(pool, "dead_letters") == 1
    assert sorted(t.trade_seq for t in committed) == list(range(len(trades)))
    stats = persister.stats()
    assert stats["trades_written"] == stats["trades_offered"] == len(trades)
    assert stats["duplicates_skipped"] == 0
    assert stats["batches"] >= len(items) // 500
    assert persister.commit_latency.count == len(items)
    assert stats["commit_latency_max_us"] == now_us - letters[0].received_us
    # Trades were received 100 us after their trade time, 1 ms apart from JAN_2027_US on.
    assert abs(stats["commit_latency_p50_us"] - (60_000_000 - 1_172_500)) < 60_000_000 * 0.04
    assert stats["flush_p50_us"] > 0


async def test_replay_leaves_one_row_each_and_counts_duplicates(
    pool: asyncpg.Pool, redis: aioredis.Redis
) -> None:
    records, tickers = records_queue(), tickers_queue()
    persister = Persister(config(), pool, redis, records, tickers)
    trades = [trade(i) for i in range(1_000)]
    async with running(persister) as task:
        await records.put_many(trades)
        await records.put_many([msgspec.structs.replace(t) for t in trades])
        await records.put_many([trade(i) for i in range(1_000, 1_010)])
        records.close()
        tickers.close()
        await asyncio.wait_for(task, WAIT)
    assert await count(pool, "public_trades") == 1_010
    stats = persister.stats()
    assert stats["trades_offered"] == 2_010
    assert stats["duplicates_skipped"] == 1_000


async def test_flushes_on_age_without_a_full_batch(
    pool: asyncpg.Pool, redis: aioredis.Redis
) -> None:
    records, tickers = records_queue(), tickers_queue()
    persister = Persister(config(batch_size=10_000), pool, redis, records, tickers)
    async with running(persister):
        await records.put_many([trade(1), trade(2)])
        await wait_for(persister, lambda: persister.trades_written == 2)
        assert await count(pool, "public_trades") == 2


async def test_flushes_on_size(pool: asyncpg.Pool, redis: aioredis.Redis) -> None:
    records, tickers = records_queue(), tickers_queue()
    persister = Persister(
        config(batch_size=100, flush_interval=3600.0), pool, redis, records, tickers
    )
    async with running(persister):
        await records.put_many([trade(i) for i in range(250)])
        await wait_for(persister, lambda: persister.trades_written == 200)
        assert persister.batches == 2


async def test_refused_row_becomes_a_dead_letter_and_the_rest_lands(
    pool: asyncpg.Pool, redis: aioredis.Redis
) -> None:
    records, tickers = records_queue(), tickers_queue()
    persister = Persister(config(), pool, redis, records, tickers)
    batch = [trade(i) for i in range(300)]
    batch[137] = trade(137, price="0")  # violates CHECK (price > 0)
    await records.put_many(batch)
    records.close()
    tickers.close()
    await asyncio.wait_for(persister.run(ActorContext("persister", {})), WAIT)
    assert await count(pool, "public_trades") == 299
    letter = await pool.fetchrow("SELECT source, payload, error FROM dead_letters")
    assert letter["source"] == "persister:trade"
    assert msgspec.json.decode(letter["payload"], type=Trade) == batch[137]
    assert "CheckViolationError" in letter["error"]
    assert persister.stats()["records_rejected"] == 1


async def test_trades_alone_commit_without_a_transaction(
    pool: asyncpg.Pool, redis: aioredis.Redis, transactions_started: list[int]
) -> None:
    records, tickers = records_queue(), tickers_queue()
    persister = Persister(config(), pool, redis, records, tickers)
    await records.put_many([trade(i) for i in range(1_200)])
    records.close()
    tickers.close()
    await asyncio.wait_for(persister.run(ActorContext("persister", {})), WAIT)
    assert await count(pool, "public_trades") == 1_200
    assert persister.stats()["batches"] >= 3
    assert transactions_started == [0]


async def test_a_batch_with_bars_commits_as_one_transaction(
    pool: asyncpg.Pool, redis: aioredis.Redis
) -> None:
    # A refused bar fails its whole batch: its trades must not stay stored on the way, or the
    # retries after the split would count them as duplicates.
    records, tickers = records_queue(), tickers_queue()
    persister = Persister(config(), pool, redis, records, tickers)
    refused = bar(JAN_2027_US, open_text="not a number")
    await records.put_many([*(trade(i) for i in range(100)), refused])
    await records.put_many([trade(i) for i in range(100, 200)])
    records.close()
    tickers.close()
    await asyncio.wait_for(persister.run(ActorContext("persister", {})), WAIT)
    assert await count(pool, "public_trades") == 200
    assert await count(pool, "ohlc") == 0
    stats = persister.stats()
    assert stats["trades_written"] == stats["trades_offered"] == 200
    assert stats["duplicates_skipped"] == 0
    assert stats["records_rejected"] == 1
    assert await count(pool, "dead_letters") == 1


async def test_tickers_to_redis_latest_wins_and_snapshots_at_cadence(
    pool: asyncpg.Pool, redis: aioredis.Redis
) -> None:
    records, tickers = records_queue(), tickers_queue()
    persister = Persister(config(ticker_snapshot_interval=0.3), pool, redis, records, tickers)
    async with running(persister):
        tickers.put_many_nowait(
            [
                ticker("BTC-PERPETUAL", "1.0"),
                ticker("BTC-PERPETUAL", "2.0"),
                ticker("ETH-PERPETUAL", "3.5"),
            ]
        )
        await wait_for(persister, lambda: persister.tickers_to_redis >= 2)
        stored = await redis.hgetall("ticker:deribit:BTC-PERPETUAL")
        assert stored["best_bid_price"] == "2.0"
        assert stored["best_ask_price"] == ""
        assert stored["timestamp_us"] == str(JAN_2027_US)
        assert all(isinstance(v, str) for v in stored.values())
        assert await redis.hget("ticker:deribit:ETH-PERPETUAL", "best_bid_price") == "3.5"

        await wait_for(persister, lambda: persister.ticker_snapshot_rows >= 2)
        tickers.put_many_nowait([ticker("BTC-PERPETUAL", "4.0", at_us=JAN_2027_US + 1)])
        await wait_for(persister, lambda: persister.ticker_snapshot_rows >= 3)
    rows = await pool.fetch(
        "SELECT instrument_name, snapshot_at, best_bid_price::text AS bid FROM tickers"
        " ORDER BY snapshot_at, instrument_name"
    )
    assert [(r["instrument_name"], r["bid"]) for r in rows] == [
        ("BTC-PERPETUAL", "2.0"),
        ("ETH-PERPETUAL", "3.5"),
        ("BTC-PERPETUAL", "4.0"),
    ]
    gap_us = datetime_to_us(rows[2]["snapshot_at"]) - datetime_to_us(rows[0]["snapshot_at"])
    assert gap_us >= 250_000  # the configured 0.3 s cadence, with timer slack


async def test_redis_down_capture_continues(pool: asyncpg.Pool) -> None:
    # A port nobody listens on: every Redis call fails at once.
    probe = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    port = probe.sockets[0].getsockname()[1]
    probe.close()
    await probe.wait_closed()
    dead_redis = aioredis.Redis.from_url(f"redis://127.0.0.1:{port}/0")
    records, tickers = records_queue(), tickers_queue()
    persister = Persister(config(), pool, dead_redis, records, tickers)
    warnings: list[str] = []
    sink = logger.add(lambda m: warnings.append(str(m)), level="WARNING")
    try:
        async with running(persister) as task:
            tickers.put_many_nowait([ticker("BTC-PERPETUAL", "1.0")])
            await wait_for(persister, lambda: persister.redis_skipped >= 1)
            tickers.put_many_nowait([ticker("BTC-PERPETUAL", "1.5")])
            await records.put_many([trade(i) for i in range(100)])
            await wait_for(persister, lambda: persister.redis_skipped >= 2)
            records.close()
            tickers.close()
            await asyncio.wait_for(task, WAIT)
    finally:
        logger.remove(sink)
        await dead_redis.aclose()
    assert await count(pool, "public_trades") == 100
    assert persister.stats()["redis_down"] == 1
    assert sum("Redis unavailable" in w for w in warnings) == 1  # rate-limited


async def test_redis_outage_and_recovery(pool: asyncpg.Pool, redis_url: str) -> None:
    upstream, through = redis_upstream(redis_url)
    proxy = Proxy(upstream)
    await proxy.start()
    client = aioredis.Redis.from_url(through.format(port=proxy.port), decode_responses=True)
    records, tickers = records_queue(), tickers_queue()
    persister = Persister(config(), pool, client, records, tickers)
    try:
        async with running(persister):
            tickers.put_many_nowait([ticker("BTC-PERPETUAL", "1.0")])
            await wait_for(persister, lambda: persister.tickers_to_redis == 1)
            await proxy.stop()
            tickers.put_many_nowait([ticker("BTC-PERPETUAL", "2.0")])
            await records.put_many([trade(1)])
            await wait_for(persister, lambda: persister.redis_skipped >= 1)
            await wait_for(persister, lambda: persister.trades_written == 1)
            await proxy.start()
            tickers.put_many_nowait([ticker("BTC-PERPETUAL", "3.0")])
            await wait_for(persister, lambda: persister.tickers_to_redis == 2)
            assert (
                await client.hget(ticker_key(ticker("BTC-PERPETUAL", "0")), "best_bid_price")
                == "3.0"
            )
            assert persister.stats()["redis_down"] == 0
    finally:
        await client.aclose()
        with contextlib.suppress(AssertionError):
            await proxy.stop()


async def test_postgres_outage_loses_nothing(
    migrated_database_url: str, redis: aioredis.Redis
) -> None:
    upstream, through = postgres_upstream(migrated_database_url)
    proxy = Proxy(upstream)
    await proxy.start()
    records, tickers = records_queue(capacity=1_000), tickers_queue()
    outage_pool = await asyncpg.create_pool(through.format(port=proxy.port), min_size=1, max_size=2)
    persister = Persister(
        config(batch_size=200, retry_backoff_max=0.2), outage_pool, redis, records, tickers
    )
    total = 3_000
    try:
        async with running(persister) as task:
            await records.put_many([trade(i) for i in range(500)])
            await wait_for(persister, lambda: persister.trades_written == 500)

            await proxy.stop()
            producer = asyncio.ensure_future(
                records.put_many([trade(i) for i in range(500, total)])
            )
            await wait_for(persister, lambda: persister.retries >= 3)
            assert persister.stats()["storage_down"] == 1
            # Back-pressure, not loss: the BLOCK queue is full and the producer waits.
            assert not producer.done()
            assert len(records) == records.capacity

            await proxy.start()
            await asyncio.wait_for(producer, WAIT)
            records.close()
            tickers.close()
            await asyncio.wait_for(task, WAIT)
    finally:
        await outage_pool.close()
        with contextlib.suppress(AssertionError):
            await proxy.stop()
    direct = await asyncpg.connect(migrated_database_url)
    try:
        seqs = [r[0] for r in await direct.fetch("SELECT trade_seq FROM public_trades ORDER BY 1")]
    finally:
        await direct.close()
    assert seqs == list(range(total))
    assert persister.stats()["storage_down"] == 0


async def test_saturated_writers_keep_their_connections(
    migrated_database_url: str, redis: aioredis.Redis
) -> None:
    # Handing a connection back to the pool costs its reset query, a round trip per batch: a
    # writer with a full queue behind it keeps its own. The pool's setup runs on every acquire.
    acquired = 0

    async def count_acquire(conn: asyncpg.Connection) -> None:
        nonlocal acquired
        acquired += 1

    records, tickers = records_queue(), tickers_queue()
    await records.put_many([trade(i) for i in range(20_000)])
    records.close()
    tickers.close()
    async with asyncpg.create_pool(
        migrated_database_url, min_size=1, max_size=6, setup=count_acquire
    ) as own_pool:
        persister = Persister(config(batch_size=500, writers=3), own_pool, redis, records, tickers)
        async with running(persister) as task:
            await asyncio.wait_for(task, WAIT)
        assert persister.batches == 40 and persister.trades_written == 20_000
        assert 1 <= acquired <= 3
        # Every connection went back once the queue was drained.
        assert own_pool.get_idle_size() == own_pool.get_size()


async def test_an_idle_persister_holds_no_connection(
    migrated_database_url: str, redis: aioredis.Redis
) -> None:
    records, tickers = records_queue(), tickers_queue()
    async with asyncpg.create_pool(migrated_database_url, min_size=1, max_size=6) as own_pool:
        persister = Persister(config(batch_size=500, writers=3), own_pool, redis, records, tickers)
        async with running(persister) as task:
            for start in range(0, 6_000, 1_500):
                await records.put_many([trade(i) for i in range(start, start + 1_500)])
            await wait_for(persister, lambda: persister.trades_written == 6_000)
            # The writers now wait on an empty queue: each handed its connection back first.
            await wait_for(
                persister,
                lambda: (
                    not any(persister._connections)
                    and own_pool.get_idle_size() == own_pool.get_size()
                ),
            )
            records.close()
            tickers.close()
            await asyncio.wait_for(task, WAIT)


async def test_writers_taking_most_of_the_pool_hand_connections_back(
    migrated_database_url: str, redis: aioredis.Redis
) -> None:
    # Three writers and a pool of four: keeping connections would leave one for everything else.
    acquired = 0

    async def count_acquire(conn: asyncpg.Connection) -> None:
        nonlocal acquired
        acquired += 1

    records, tickers = records_queue(), tickers_queue()
    await records.put_many([trade(i) for i in range(10_000)])
    records.close()
    tickers.close()
    async with asyncpg.create_pool(
        migrated_database_url, min_size=1, max_size=4, setup=count_acquire
    ) as own_pool:
        persister = Persister(config(batch_size=500, writers=3), own_pool, redis, records, tickers)
        async with running(persister) as task:
            await asyncio.wait_for(task, WAIT)
        assert persister.trades_written == 10_000
        assert acquired == 20


async def test_terminated_backends_lose_nothing(
    migrated_database_url: str, pool: asyncpg.Pool, redis: aioredis.Redis
) -> None:
    records, tickers = records_queue(), tickers_queue()
    persister = Persister(
        config(batch_size=100, retry_backoff_max=0.1), pool, redis, records, tickers
    )
    total = 5_000
    admin = await asyncpg.connect(migrated_database_url)
    try:
        async with running(persister) as task:
            for start in range(0, total, 250):
                await records.put_many([trade(i) for i in range(start, start + 250)])
                if start % 1_000 == 0:
                    await admin.fetch(
                        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                        " WHERE datname = current_database() AND pid <> pg_backend_pid()"
                    )
            records.close()
            tickers.close()
            await asyncio.wait_for(task, WAIT)
        assert await admin.fetchval("SELECT count(*) FROM public_trades") == total
    finally:
        await admin.close()


async def test_a_restarted_actor_resumes_the_batch_in_hand(
    migrated_database_url: str, redis: aioredis.Redis
) -> None:
    upstream, through = postgres_upstream(migrated_database_url)
    proxy = Proxy(upstream)
    await proxy.start()
    outage_pool = await asyncpg.create_pool(through.format(port=proxy.port), min_size=0)
    records, tickers = records_queue(), tickers_queue()
    persister = Persister(config(retry_backoff_max=0.1), outage_pool, redis, records, tickers)
    try:
        await proxy.stop()
        async with running(persister):
            await records.put_many([trade(i) for i in range(100)])
            await wait_for(persister, lambda: persister.retries >= 2)
        # The first run was cancelled (as the supervisor does) with the batch uncommitted.
        assert persister.stats()["pending_records"] == 100
        assert len(records) == 0
        await proxy.start()
        records.close()
        tickers.close()
        await asyncio.wait_for(persister.run(ActorContext("persister", {})), WAIT)
    finally:
        await outage_pool.close()
        with contextlib.suppress(AssertionError):
            await proxy.stop()
    direct = await asyncpg.connect(migrated_database_url)
    try:
        assert await direct.fetchval("SELECT count(*) FROM public_trades") == 100
    finally:
        await direct.close()


async def test_three_writers_stay_alive_and_commit_under_trickle_and_burst(
    pool: asyncpg.Pool, redis: aioredis.Redis
) -> None:
    records, tickers = records_queue(), tickers_queue()
    persister = Persister(
        config(batch_size=100, flush_interval=0.02, writers=3), pool, redis, records, tickers
    )
    async with running(persister):
        await wait_for(persister, lambda: persister.writers_running == 3)
        # Trickle: one trade at a time, the next once the previous one is committed.
        for seq in range(30):
            await records.put_many([trade(seq)])
            await wait_for(persister, lambda s=seq: persister.trades_written == s + 1)  # type: ignore[misc]
            assert persister.writers_running == 3
        trickled = list(persister.writer_batches)
        # Burst: far more than one batch, so every writer has work.
        await records.put_many([trade(seq) for seq in range(30, 6_030)])
        await wait_for(persister, lambda: persister.trades_written == 6_030)
        assert persister.writers_running == 3
        burst = [
            after - before for after, before in zip(persister.writer_batches, trickled, strict=True)
        ]
        assert all(n > 0 for n in burst), burst
    assert await count(pool, "public_trades") == 6_030


async def test_a_commits_bookkeeping_and_the_next_batch_are_separate_loop_turns(
    pool: asyncpg.Pool, redis: aioredis.Redis
) -> None:
    records, tickers = records_queue(), tickers_queue()
    events: list[tuple[str, int]] = []  # (what happened, turns counted by then)
    loop_turns = LoopTurns()
    take = records.get_batch_nowait

    def observed_take(max_items: int) -> list[Record]:
        events.append(("taken", loop_turns.count))
        return take(max_items)

    records.get_batch_nowait = observed_take  # type: ignore[method-assign]
    persister = Persister(
        config(batch_size=100, writers=1),
        pool,
        redis,
        records,
        tickers,
        on_committed=lambda _: events.append(("committed", loop_turns.count)),
    )
    # Every batch is a full one already queued: nothing else makes the writer wait for it.
    await records.put_many([trade(i) for i in range(400)])
    records.close()
    tickers.close()
    async with loop_turns:
        await asyncio.wait_for(persister.run(ActorContext("persister", {})), WAIT)
    assert [what for what, _ in events] == ["taken", "committed"] * 4
    after_commit = [
        (committed, taken)
        for (what, committed), (_, taken) in itertools.pairwise(events)
        if what == "committed"
    ]
    assert len(after_commit) == 3
    assert all(committed < taken for committed, taken in after_commit), events


async def test_a_committed_batch_is_let_go_a_chunk_per_loop_turn(
    pool: asyncpg.Pool, redis: aioredis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(persister_module, "RECORDS_FREED_PER_TURN", 30)
    records, tickers = records_queue(), tickers_queue()
    batches: list[list[Record]] = []
    take = records.get_batch_nowait

    def observed_take(max_items: int) -> list[Record]:
        batch = take(max_items)
        batches.append(batch)
        return batch

    records.get_batch_nowait = observed_take  # type: ignore[method-assign]
    lengths: list[list[int]] = []  # per event-loop turn: the length of each batch taken so far

    async def watch() -> None:
        while True:
            lengths.append([len(batch) for batch in batches])
            await asyncio.sleep(0)  # one step per event-loop turn

    persister = Persister(config(batch_size=100, writers=1), pool, redis, records, tickers)
    await records.put_many([trade(i) for i in range(200)])
    records.close()
    tickers.close()
    async with asyncio.TaskGroup() as group:
        watcher = group.create_task(watch())
        await asyncio.wait_for(persister.run(ActorContext("persister", {})), WAIT)
        watcher.cancel()
    assert await count(pool, "public_trades") == 200
    assert [len(batch) for batch in batches] == [0, 0]
    for n in range(2):
        seen = [turn[n] for turn in lengths if len(turn) > n]
        assert seen[-1] == 0
        assert all(0 <= a - b <= 30 for a, b in itertools.pairwise(seen)), seen
