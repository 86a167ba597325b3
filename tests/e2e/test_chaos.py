"""Chaos: gap-free capture through disconnects, held-back trades, SIGKILL and a storage restart.

Both fake venues trade continuously for ``CHAOS_SECONDS`` while, at random moments, they abort
every connection, announce a server shutdown, hold back runs of trades (published on the tape
and served over REST, never on the stream) and answer REST with 500s and 429s; the test kills
the daemon with SIGKILL twice (once leaving it down for a while) and restarts PostgreSQL and
Redis once under the running daemon. At the end ``public_trades`` must equal each venue's full
tape (count, ids, prices, quantities, sides), without a duplicate, and every gap must be in
``data_gaps`` as repaired, covering every trade the daemon could not have received live.

``TRADINGD_CHAOS_SEED`` replays a run's random choices (the timing of a real network differs).
"""

from __future__ import annotations

import asyncio
import itertools
import os
import random
import signal
import statistics
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import pytest

from tests.e2e.harness import (
    DaemonProcess,
    ExchangeEndpoint,
    NotifyListener,
    eventually,
    write_config,
)
from tests.e2e.test_rotation import assert_table_equals_tape
from tradingd.sequencing import missing_ranges
from tradingd.storage.embedded import EmbeddedStorage
from tradingd.testing.fake_binance import FakeBinance
from tradingd.testing.fake_deribit import FakeDeribit

pytestmark = pytest.mark.slow

CHAOS_SECONDS = 40.0
BINANCE_SYMBOLS = ["BTCUSDT", "ETHUSDT"]
DERIBIT_SYMBOLS = ["BTC-PERPETUAL", "ETH-PERPETUAL"]


class Venue:
    """A fake exchange and what the test knows about its tape."""

    def __init__(self, name: str, fake: FakeBinance | FakeDeribit, symbols: list[str]) -> None:
        self.name = name
        self.fake = fake
        self.symbols = symbols
        # Sequences the daemon cannot have received live: held back, or published while no
        # daemon process existed.
        self.unseen: dict[str, set[int]] = {s: set() for s in symbols}

    def seq(self, wire: dict[str, object]) -> int:
        return int(wire["t"] if self.name == "binance" else wire["trade_seq"])  # type: ignore[call-overload]

    def publish(self, symbol: str, count: int, *, deliver: bool = True) -> list[int]:
        seqs = [self.seq(w) for w in self.fake.publish_trades(symbol, count, deliver=deliver)]
        if not deliver:
            self.unseen[symbol].update(seqs)
        return seqs

    def last(self, symbol: str) -> int:
        return self.seq(self.fake.tape(symbol)[-1])


@pytest.fixture
async def storage(storage_state_dir: Path) -> AsyncIterator[EmbeddedStorage]:
    """PostgreSQL and Redis of this test's own, so that it can restart them."""
    servers = EmbeddedStorage(storage_state_dir, durable=False)
    try:
        yield servers
    finally:
        await servers.stop()


async def test_capture_stays_complete_through_chaos(
    tmp_path: Path, storage: EmbeddedStorage
) -> None:
    seed = int(os.environ.get("TRADINGD_CHAOS_SEED", "0")) or random.randrange(1, 1_000_000)
    print(f"chaos seed {seed}")
    rng = random.Random(seed)
    database_url, redis_url = await storage.start()
    binance = FakeBinance(seed=seed, ping_interval=1.0)
    deribit = FakeDeribit(seed=seed)
    deribit.heartbeat_period = 1.0
    await binance.start()
    await deribit.start()
    venues = [
        Venue("binance", binance, BINANCE_SYMBOLS),
        Venue("deribit", deribit, DERIBIT_SYMBOLS),
    ]
    exchange_settings = {
        "reconnect_backoff_initial": 0.1,
        "reconnect_backoff_max": 1.0,
        "healthy_after": 5.0,
        "stale_after": 5.0,
        "rotate_after": 7.0,
    }
    config = write_config(
        tmp_path / "tradingd.toml",
        state_dir=tmp_path / "state",
        database_url=database_url,
        redis_url=redis_url,
        exchanges={
            "binance": ExchangeEndpoint(
                "binance", binance.ws_url, binance.rest_url, BINANCE_SYMBOLS, exchange_settings
            ),
            "deribit": ExchangeEndpoint(
                "deribit",
                deribit.ws_url,
                deribit.rest_url,
                DERIBIT_SYMBOLS,
                {**exchange_settings, "currencies": ["BTC", "ETH"]},
            ),
        },
        sections={"persister": {"retry_backoff_max": 0.5}},
    )
    events: list[str] = []
    logs = tmp_path / "daemon.log"
    try:
        async with NotifyListener(tmp_path / "notify.sock") as notify:
            daemon = await DaemonProcess(config, notify, logs).start()
            await daemon.wait_ready()
            await subscribed(venues)
            # On an empty table capture starts with the first trade the daemon sees of each
            # instrument: a break before that has nothing to be compared with. Anchor first.
            for venue in venues:
                for symbol in venue.symbols:
                    venue.publish(symbol, 5)
            anchor = await asyncpg.connect(database_url)
            try:
                await eventually(
                    lambda: stored_all(anchor, venues), timeout=30, what="the first trades"
                )
            finally:
                await anchor.close()

            async def restart_daemon(down_for: float) -> None:
                nonlocal daemon
                daemon.signal(signal.SIGKILL)
                assert await daemon.wait() == -signal.SIGKILL
                # Everything published from here until a new process exists is missed live.
                first_missed = {v.name: {s: v.last(s) + 1 for s in v.symbols} for v in venues}
                await asyncio.sleep(down_for)  # the outage's length, not a condition
                for venue in venues:
                    for symbol in venue.symbols:
                        missed = range(first_missed[venue.name][symbol], venue.last(symbol) + 1)
                        venue.unseen[symbol].update(missed)
                daemon = await DaemonProcess(config, notify, logs).start()
                await daemon.wait_ready()
                await subscribed(venues)

            async def restart_storage(down_for: float) -> None:
                await storage.stop()
                await asyncio.sleep(down_for)  # the outage's length, not a condition
                await storage.start()

            async def trade() -> None:
                for tick in itertools.count():
                    for venue in venues:
                        for symbol in venue.symbols:
                            venue.publish(symbol, rng.randint(1, 3))
                            if rng.random() < 0.01:
                                venue.publish(symbol, rng.randint(1, 40), deliver=False)
                            if tick % 50 == 0:  # klines and tickers about once a second
                                venue.fake.publish_bar(symbol, closed=False)
                                venue.fake.publish_ticker(symbol)
                    await asyncio.sleep(0.02)  # the market's pace

            async def disturb() -> None:
                loop = asyncio.get_running_loop()
                started = loop.time()
                scheduled = [
                    (CHAOS_SECONDS * 0.25, "SIGKILL, down 2 s", lambda: restart_daemon(2.0)),
                    (CHAOS_SECONDS * 0.5, "PostgreSQL+Redis restart", lambda: restart_storage(3.0)),
                    (CHAOS_SECONDS * 0.75, "SIGKILL, restart", lambda: restart_daemon(0.0)),
                ]
                while (elapsed := loop.time() - started) < CHAOS_SECONDS:
                    if scheduled and elapsed >= scheduled[0][0]:
                        _, what, action = scheduled.pop(0)
                        events.append(f"{elapsed:5.1f} s {what}")
                        await action()
                        continue
                    venue = rng.choice(venues)
                    choice = rng.random()
                    if choice < 0.5:
                        what = f"{venue.name}: abort connections"
                        await venue.fake.abort_connections()
                    elif choice < 0.65 and venue.name == "binance":
                        what = "binance: serverShutdown"
                        binance.send_server_shutdown()
                    elif choice < 0.8:
                        what = f"{venue.name}: REST 500"
                        venue.fake.inject_http_error(500)
                    else:
                        what = f"{venue.name}: REST 429"
                        venue.fake.inject_http_error(429, retry_after=1)
                    events.append(f"{elapsed:5.1f} s {what}")
                    await asyncio.sleep(rng.uniform(0.5, 2.5))  # random moments

            async with asyncio.TaskGroup() as group:
                market = group.create_task(trade())
                await disturb()
                market.cancel()

            # A last live trade on every instrument reveals any gap still unseen.
            await subscribed(venues)
            for venue in venues:
                for symbol in venue.symbols:
                    venue.publish(symbol, 3)
            pool = await asyncpg.create_pool(database_url, min_size=1, max_size=2)
            try:
                try:
                    await eventually(
                        lambda: complete(pool, venues),
                        timeout=90,
                        what="every trade stored and no gap open",
                    )
                except AssertionError:
                    print(await describe_incomplete(pool, venues))
                    raise
                await check_tables(pool, venues)
                await report_repairs(pool, venues)
            finally:
                await pool.close()
            assert await daemon.stop() == 0, daemon.output()[-3000:]
    except BaseException:
        print("chaos events:\n  " + "\n  ".join(events))
        if logs.exists():
            print("daemon log (tail):\n" + logs.read_text(errors="replace")[-6000:])
        raise
    finally:
        await binance.stop()
        await deribit.stop()
    print("chaos events:\n  " + "\n  ".join(events))


async def subscribed(venues: list[Venue]) -> None:
    async with asyncio.timeout(60):
        for venue in venues:
            for symbol in venue.symbols:
                await venue.fake.wait_subscribed(symbol, "trades")


async def stored_all(db: asyncpg.Pool | asyncpg.Connection, venues: list[Venue]) -> bool:
    for venue in venues:
        for symbol in venue.symbols:
            stored = await db.fetchval(
                "SELECT count(*) FROM public_trades WHERE exchange = $1 AND instrument_name = $2",
                venue.name,
                symbol,
            )
            if stored < len(venue.fake.tape(symbol)):
                return False
    return True


async def complete(pool: asyncpg.Pool, venues: list[Venue]) -> bool:
    try:
        if not await stored_all(pool, venues):
            return False
        return not await pool.fetchval("SELECT count(*) FROM data_gaps WHERE status = 'open'")
    except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError):
        return False


async def describe_incomplete(pool: asyncpg.Pool, venues: list[Venue]) -> str:
    lines = []
    for venue in venues:
        for symbol in venue.symbols:
            tape = [venue.seq(w) for w in venue.fake.tape(symbol)]
            rows = await pool.fetch(
                "SELECT trade_seq FROM public_trades WHERE exchange = $1 AND instrument_name = $2",
                venue.name,
                symbol,
            )
            missing = missing_ranges((r["trade_seq"] for r in rows), tape[0], tape[-1])
            lines.append(
                f"{venue.name} {symbol}: {len(rows)}/{len(tape)} stored, missing {missing}"
            )
    gaps = await pool.fetch("SELECT * FROM data_gaps WHERE status <> 'repaired' ORDER BY id")
    lines += [str(dict(g)) for g in gaps]
    return "\n".join(lines)


async def check_tables(pool: asyncpg.Pool, venues: list[Venue]) -> None:
    duplicates = await pool.fetchval(
        "SELECT count(*) - count(DISTINCT (exchange, instrument_name, trade_seq))"
        " FROM public_trades"
    )
    assert duplicates == 0
    for venue in venues:
        for symbol in venue.symbols:
            await assert_table_equals_tape(pool, venue.name, symbol, venue.fake.tape(symbol))
    statuses = await pool.fetch("SELECT status, count(*) FROM data_gaps GROUP BY status")
    assert {r["status"]: r["count"] for r in statuses}.keys() == {"repaired"}, statuses
    for venue in venues:
        for symbol in venue.symbols:
            rows = await pool.fetch(
                "SELECT first_seq, last_seq FROM data_gaps WHERE exchange = $1"
                " AND instrument_name = $2 AND status = 'repaired'",
                venue.name,
                symbol,
            )
            covered = {s for r in rows for s in range(r["first_seq"], r["last_seq"] + 1)}
            unrecorded = sorted(venue.unseen[symbol] - covered)
            assert not unrecorded, f"{venue.name} {symbol}: missed live, no gap row: {unrecorded}"


async def report_repairs(pool: asyncpg.Pool, venues: list[Venue]) -> None:
    rows = await pool.fetch(
        "SELECT exchange, reason, last_seq - first_seq + 1 AS size,"
        " extract(epoch FROM repaired_at - detected_at)::float8 AS latency FROM data_gaps"
    )
    trades = {v.name: sum(len(v.fake.tape(s)) for s in v.symbols) for v in venues}
    print(f"trades on the tapes: {trades}; gaps repaired: {len(rows)}")
    by_reason: dict[str, list[float]] = {}
    for row in rows:
        by_reason.setdefault(row["reason"], []).append(row["latency"])
    for reason, latencies in sorted(by_reason.items()):
        latencies.sort()
        p95 = latencies[min(len(latencies) - 1, int(0.95 * len(latencies)))]
        print(
            f"  {reason:>14}: {len(latencies):3d} gaps, repair latency (detected -> repaired)"
            f" p50 {statistics.median(latencies):.3f} s, p95 {p95:.3f} s,"
            f" max {latencies[-1]:.3f} s"
        )
    sizes = sorted(row["size"] for row in rows)
    if sizes:
        print(f"  gap sizes: median {statistics.median(sizes)}, max {sizes[-1]} trades")


async def test_a_storage_stall_pauses_intake_and_the_repair_fetches_the_backlog(
    tmp_path: Path, database_url: str, redis_url: str
) -> None:
    """The storage-outage design, end to end: PostgreSQL stops accepting trades (a table
    lock), the small records queue fills, the receiver stops reading, Binance drops the
    connection for unanswered pings; once PostgreSQL is back, the queue drains, the receiver
    reconnects and the repairer fetches what the dropped connection never delivered."""
    fake = FakeBinance(seed=51, ping_interval=0.5, pong_timeout=1.5)
    await fake.start()
    config = write_config(
        tmp_path / "tradingd.toml",
        state_dir=tmp_path / "state",
        database_url=database_url,
        redis_url=redis_url,
        exchanges={
            "binance": ExchangeEndpoint(
                "binance",
                fake.ws_url,
                fake.rest_url,
                ["BTCUSDT"],
                {"reconnect_backoff_initial": 0.1, "reconnect_backoff_max": 0.5},
            )
        },
        sections={"analyzer": {"enabled": False}, "persister": {"queue_size": 100}},
    )
    try:
        async with NotifyListener(tmp_path / "notify.sock") as notify:
            daemon = await DaemonProcess(config, notify, tmp_path / "daemon.log").start()
            await daemon.wait_ready()
            await fake.wait_subscribed("BTCUSDT", "trades")
            fake.publish_trades("BTCUSDT", 10)
            pool = await asyncpg.create_pool(database_url, min_size=1, max_size=2)
            try:
                await eventually(lambda: stored_count(pool, 10), what="the first trades")
                locker = await pool.acquire()
                transaction = locker.transaction()
                await transaction.start()
                await locker.execute("LOCK TABLE public_trades IN ACCESS EXCLUSIVE MODE")
                # Far more than the queue holds, in frames the receiver reads one by one.
                for _ in range(40):
                    fake.publish_trades("BTCUSDT", 50)
                    await asyncio.sleep(0.02)  # the market's pace
                # Nobody answers the venue's pings while the receiver waits for room.
                async with asyncio.timeout(30):
                    await fake.wait_for(lambda: fake.connection_count() == 0)
                fake.publish_trades("BTCUSDT", 100)  # published while disconnected
                await transaction.rollback()
                await pool.release(locker)
                await fake.wait_subscribed("BTCUSDT", "trades")
                fake.publish_trades("BTCUSDT", 5)
                total = len(fake.tape("BTCUSDT"))
                await eventually(lambda: stored_count(pool, total), timeout=60, what="all")
                await eventually(
                    lambda: no_open_gaps(pool), timeout=30, what="the gaps to be repaired"
                )
                await assert_table_equals_tape(pool, "binance", "BTCUSDT", fake.tape("BTCUSDT"))
                gaps = await pool.fetch("SELECT status, reason FROM data_gaps")
                assert gaps and {g["status"] for g in gaps} == {"repaired"}
                assert "reconnect" in {g["reason"] for g in gaps}
            finally:
                await pool.close()
            assert await daemon.stop() == 0, daemon.output()[-3000:]
        output = daemon.output()
        assert "connection ended; reconnecting" in output
        assert "no frame for" not in output  # our own wait was not taken for venue silence
    finally:
        await fake.stop()


async def stored_count(pool: asyncpg.Pool, expected: int) -> bool:
    return int(await pool.fetchval("SELECT count(*) FROM public_trades")) >= expected


async def no_open_gaps(pool: asyncpg.Pool) -> bool:
    return not await pool.fetchval("SELECT count(*) FROM data_gaps WHERE status = 'open'")
