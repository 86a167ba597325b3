"""The gap repairer against real PostgreSQL: paging, rate limits, outages, unfillable ranges,
the ledger across restarts, the start-up scan, and the real adapters against the fakes."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import time
from collections.abc import AsyncIterator, Sequence
from decimal import Decimal
from typing import Any

import aiohttp
import asyncpg

from tradingd.actors.repairer import IN_HAND, GapRepairer
from tradingd.adapters.base import RangeUnavailable, RateLimited, VenueUnavailable
from tradingd.adapters.binance import BinanceAdapter
from tradingd.adapters.deribit import DeribitAdapter, TradesNotServed
from tradingd.config import ExchangeConfig
from tradingd.model import MarketType, Trade
from tradingd.queues import BoundedQueue, OverflowPolicy
from tradingd.sequencing import LIVE_STREAM, STARTUP_SCAN, Gap
from tradingd.storage.writer import write_trades
from tradingd.supervisor import ActorContext
from tradingd.testing.fake_binance import FakeBinance
from tradingd.testing.fake_deribit import CreditPool, FakeDeribit

# An hour ago: inside the start-up scan's window, in a month whose partition gets created.
BASE_US = time.time_ns() // 1000 - 3_600_000_000


def make_trade(instrument: str, seq: int) -> Trade:
    return Trade(
        exchange="fake",
        instrument_name=instrument,
        market_type=MarketType.SPOT,
        trade_id=f"t{seq}",
        trade_seq=seq,
        price_text=str(Decimal(f"{100 + seq % 7}.{seq % 100:02d}")),
        quantity_text=str(Decimal(f"0.{seq:04d}")),
        is_buyer_maker=seq % 3 == 0,
        trade_us=BASE_US + seq * 1000,
        received_us=BASE_US + seq * 1000,
    )


class ScriptedHistory:
    """The history half of an adapter: pages of ``page`` trades from a tape, after scripted
    failures; trades below ``served_from`` are no longer served."""

    name = "fake"

    def __init__(self, last_seq: int, *, page: int = 7, served_from: int = 1) -> None:
        self.tape = {name: [make_trade(name, s) for s in range(1, last_seq + 1)] for name in "AB"}
        self.page = page
        self.served_from = served_from
        self.first_available_known = True
        self.failures: collections.deque[BaseException] = collections.deque()
        self.calls: list[tuple[str, int, int]] = []

    async def fetch_trades(self, instrument: str, first_seq: int, last_seq: int) -> list[Trade]:
        self.calls.append((instrument, first_seq, last_seq))
        if self.failures:
            raise self.failures.popleft()
        if first_seq < self.served_from:
            if self.first_available_known:
                raise TradesNotServed(instrument, first_seq, self.served_from)
            raise RangeUnavailable(f"{instrument}: {first_seq} is no longer served")
        served = [t for t in self.tape[instrument] if first_seq <= t.trade_seq <= last_seq]
        return served[: self.page]


class FlakyPool:
    """A pool whose first ``failures`` operations fail as if PostgreSQL restarted."""

    def __init__(self, pool: asyncpg.Pool, failures: int) -> None:
        self._pool = pool
        self.failures = failures

    def _maybe_fail(self) -> None:
        if self.failures:
            self.failures -= 1
            raise asyncpg.exceptions.ConnectionDoesNotExistError("connection was closed")

    async def fetch(self, *args: Any) -> Any:
        self._maybe_fail()
        return await self._pool.fetch(*args)

    async def fetchval(self, *args: Any) -> Any:
        self._maybe_fail()
        return await self._pool.fetchval(*args)

    async def execute(self, *args: Any) -> Any:
        self._maybe_fail()
        return await self._pool.execute(*args)

    @contextlib.asynccontextmanager
    async def acquire(self) -> AsyncIterator[asyncpg.Connection]:
        self._maybe_fail()
        async with self._pool.acquire() as conn:
            yield conn


def gap_of(instrument: str, first: int, last: int, exchange: str = "fake") -> Gap:
    return Gap(exchange, instrument, first, last, LIVE_STREAM, time.time_ns() // 1000)


async def repair(
    repairer: GapRepairer, queue: BoundedQueue[Gap], gaps: Sequence[Gap], limit: float = 30.0
) -> None:
    """Run the repairer until it has nothing left to do, then stop it as the daemon does."""
    await queue.put_many(list(gaps))
    task = asyncio.create_task(repairer.run(ActorContext(repairer.name, {})))
    try:
        async with asyncio.timeout(limit):
            await repairer.idle.wait()
        queue.close()
        async with asyncio.timeout(limit):
            await task
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


def gaps_queue() -> BoundedQueue[Gap]:
    return BoundedQueue("gaps", 1000, OverflowPolicy.BLOCK)


async def stored(pool: asyncpg.Pool, instrument: str, exchange: str = "fake") -> list[Any]:
    return await pool.fetch(
        "SELECT trade_id, trade_seq, price::text AS price, quantity::text AS quantity,"
        " is_buyer_maker FROM public_trades WHERE exchange = $1 AND instrument_name = $2"
        " ORDER BY trade_seq",
        exchange,
        instrument,
    )


async def ledger(pool: asyncpg.Pool, exchange: str = "fake") -> list[tuple[Any, ...]]:
    rows = await pool.fetch(
        "SELECT instrument_name, first_seq, last_seq, status, reason, repaired_at IS NOT NULL"
        " AS resolved FROM data_gaps WHERE exchange = $1 ORDER BY instrument_name, first_seq",
        exchange,
    )
    return [tuple(r) for r in rows]


def as_rows(trades: Sequence[Trade]) -> list[tuple[Any, ...]]:
    return [
        (t.trade_id, t.trade_seq, str(t.price), str(t.quantity), t.is_buyer_maker) for t in trades
    ]


async def test_gaps_are_fetched_page_by_page_through_rate_limits_and_outages(
    pool: asyncpg.Pool,
) -> None:
    history = ScriptedHistory(200, page=7)
    history.failures.extend(
        [
            RateLimited("429", retry_after=0.05),
            VenueUnavailable("502"),
            RateLimited("429", retry_after=0.05),
        ]
    )
    queue = gaps_queue()
    repairer = GapRepairer("fake", history, pool, queue, venue_backoff_max=0.05)  # type: ignore[arg-type]
    await repair(repairer, queue, [gap_of("A", 11, 60), gap_of("B", 100, 102)])
    assert [tuple(r) for r in await stored(pool, "A")] == as_rows(history.tape["A"][10:60])
    assert [tuple(r) for r in await stored(pool, "B")] == as_rows(history.tape["B"][99:102])
    assert await ledger(pool) == [
        ("A", 11, 60, "repaired", LIVE_STREAM, True),
        ("B", 100, 102, "repaired", LIVE_STREAM, True),
    ]
    stats = repairer.stats
    assert stats.repaired == 2 and stats.unfillable == 0 and stats.detected == 2
    assert stats.rate_limited == 2 and stats.venue_retries == 1
    assert stats.pages == 8 + 1 and stats.trades_fetched == 53
    assert len(stats.latencies_s) == 2 and 0 < stats.max_latency_s < 30
    assert repairer.snapshot()["open"] == 0


async def test_a_range_the_venue_no_longer_serves_is_unfillable_and_the_rest_is_filled(
    pool: asyncpg.Pool,
) -> None:
    history = ScriptedHistory(100, served_from=20)
    queue = gaps_queue()
    repairer = GapRepairer("fake", history, pool, queue)  # type: ignore[arg-type]
    await repair(repairer, queue, [gap_of("A", 10, 30)])
    assert [r["trade_seq"] for r in await stored(pool, "A")] == list(range(20, 31))
    ((name, first, last, status, reason, resolved),) = await ledger(pool)
    assert (name, first, last, status, resolved) == ("A", 10, 30, "unfillable", True)
    assert "no longer serves" in reason and "10 missing: 10..19" in reason
    assert repairer.stats.unfillable == 1


async def test_without_the_first_served_sequence_the_whole_range_is_unfillable(
    pool: asyncpg.Pool,
) -> None:
    history = ScriptedHistory(100, served_from=20)
    history.first_available_known = False
    queue = gaps_queue()
    repairer = GapRepairer("fake", history, pool, queue)  # type: ignore[arg-type]
    await repair(repairer, queue, [gap_of("A", 10, 30)])
    assert await stored(pool, "A") == []
    ((*_, status, reason, _resolved),) = await ledger(pool)
    assert status == "unfillable" and "21 missing: 10..30" in reason


async def test_postgresql_outages_only_delay_the_repair(pool: asyncpg.Pool) -> None:
    history = ScriptedHistory(100, page=10)
    queue = gaps_queue()
    flaky = FlakyPool(pool, failures=6)
    repairer = GapRepairer("fake", history, flaky, queue, db_backoff_max=0.05)  # type: ignore[arg-type]
    await repair(repairer, queue, [gap_of("A", 1, 35)])
    assert [r["trade_seq"] for r in await stored(pool, "A")] == list(range(1, 36))
    assert await ledger(pool) == [("A", 1, 35, "repaired", LIVE_STREAM, True)]
    assert repairer.stats.db_retries == 6


async def test_a_restart_resumes_open_gaps_and_the_scan_finds_what_a_crash_lost(
    pool: asyncpg.Pool,
) -> None:
    """Stored: 1..10, 13..20, 30..40 and 45 (41..44 above the last sequence the daemon saw at
    start: the live tracker's job). Ledger: 21..25 still open (resumed), 26..27 unfillable
    (left alone). The scan adds 11..12 and 28..29; everything fillable gets filled."""
    history = ScriptedHistory(100)
    tape = history.tape["A"]
    async with pool.acquire() as conn:
        kept = [t for t in tape if t.trade_seq <= 10 or 13 <= t.trade_seq <= 20]
        kept += [t for t in tape if 30 <= t.trade_seq <= 40 or t.trade_seq == 45]
        await write_trades(conn, kept)
        await conn.execute(
            "INSERT INTO data_gaps (exchange, instrument_name, first_seq, last_seq, status, reason)"
            " VALUES ('fake', 'A', 21, 25, 'open', 'live stream'),"
            " ('fake', 'A', 26, 27, 'unfillable', 'reconnect / unfillable: gone')"
        )
    queue = gaps_queue()
    repairer = GapRepairer(
        "fake",
        history,  # type: ignore[arg-type]
        pool,
        queue,
        stored_sequences={"A": 40},
    )
    await repair(repairer, queue, [])
    seqs = [r["trade_seq"] for r in await stored(pool, "A")]
    assert seqs == [*range(1, 26), *range(28, 41), 45]
    assert [(f, la, st, re) for _, f, la, st, re, _ in await ledger(pool)] == [
        (11, 12, "repaired", STARTUP_SCAN),
        (21, 25, "repaired", "live stream"),
        (26, 27, "unfillable", "reconnect / unfillable: gone"),
        (28, 29, "repaired", STARTUP_SCAN),
    ]
    assert repairer.stats.detected == 2 and repairer.stats.repaired == 3


async def test_binance_429_with_retry_after_and_5xx_are_waited_out(pool: asyncpg.Pool) -> None:
    fake = FakeBinance(seed=21)
    await fake.start()
    try:
        async with aiohttp.ClientSession() as http:
            config = ExchangeConfig(ws_url=fake.ws_url, rest_url=fake.rest_url, symbols=["BTCUSDT"])
            adapter = BinanceAdapter(config, exchange="binance", http=http)
            fake.publish_trades("BTCUSDT", 100)
            held = fake.publish_trades("BTCUSDT", 2500, deliver=False)
            fake.inject_http_error(500)
            fake.inject_http_error(429, retry_after=1)
            queue = gaps_queue()
            repairer = GapRepairer("binance", adapter, pool, queue, venue_backoff_max=0.1)
            first, last = int(held[0]["t"]), int(held[-1]["t"])  # type: ignore[call-overload]
            await repair(repairer, queue, [gap_of("BTCUSDT", first, last, "binance")])
        rows = await stored(pool, "BTCUSDT", "binance")
        assert [r["trade_seq"] for r in rows] == list(range(first, last + 1))
        assert [(r["price"], r["quantity"], r["is_buyer_maker"]) for r in rows] == [
            (w["p"], w["q"], w["m"]) for w in held
        ]
        assert [row[3] for row in await ledger(pool, "binance")] == ["repaired"]
        assert repairer.stats.rate_limited >= 1 and repairer.stats.venue_retries >= 1
        assert repairer.stats.pages >= 3
    finally:
        await fake.stop()


async def test_deribit_credit_exhaustion_is_waited_out(pool: asyncpg.Pool) -> None:
    async with FakeDeribit(seed=22) as fake, aiohttp.ClientSession() as http:
        config = ExchangeConfig(
            ws_url=fake.ws_url, rest_url=fake.rest_url, symbols=["BTC-PERPETUAL"]
        )
        adapter = DeribitAdapter(config, exchange="deribit", http=http)
        fake.publish_trades("BTC-PERPETUAL", 50)
        held = fake.publish_trades("BTC-PERPETUAL", 3000, deliver=False)
        # Two requests in a burst, then one a second: far below what the client assumes.
        fake.credit_pools["default"] = CreditPool(capacity=1000, refill_per_s=500)
        queue = gaps_queue()
        repairer = GapRepairer("deribit", adapter, pool, queue)
        first, last = int(held[0]["trade_seq"]), int(held[-1]["trade_seq"])  # type: ignore[call-overload]
        await repair(repairer, queue, [gap_of("BTC-PERPETUAL", first, last, "deribit")])
    rows = await stored(pool, "BTC-PERPETUAL", "deribit")
    assert [r["trade_seq"] for r in rows] == list(range(first, last + 1))
    assert [r["trade_id"] for r in rows] == [w["trade_id"] for w in held]
    assert [row[3] for row in await ledger(pool, "deribit")] == ["repaired"]
    refused = [m for m, _ in fake.requests if m == "public/get_last_trades_by_instrument"]
    assert len(refused) > 3  # three pages, and the refusals that came with the credit limit


class StuckHistory(ScriptedHistory):
    """A venue whose history request never answers (until the test ends)."""

    def __init__(self) -> None:
        super().__init__(10)
        self.asked = asyncio.Event()

    async def fetch_trades(self, instrument: str, first_seq: int, last_seq: int) -> list[Trade]:
        self.asked.set()
        await asyncio.Event().wait()
        raise AssertionError("unreachable")


async def test_a_busy_repairer_leaves_the_gaps_beyond_its_hand_queued(pool: asyncpg.Pool) -> None:
    history = StuckHistory()
    queue: BoundedQueue[Gap] = BoundedQueue("gaps", 5_000, OverflowPolicy.BLOCK)
    gaps = [gap_of("A", 10 * n + 1, 10 * n + 5) for n in range(IN_HAND + 500)]
    await queue.put_many(gaps)
    repairer = GapRepairer("fake", history, pool, queue)  # type: ignore[arg-type]
    task = asyncio.create_task(repairer.run(ActorContext(repairer.name, {})))
    try:
        await asyncio.wait_for(history.asked.wait(), 30.0)
        # Repairing the first gap: it holds IN_HAND (all recorded), the rest wait in the queue.
        assert len(queue) == 500
        assert repairer.open_gaps == IN_HAND + 500
        recorded = await pool.fetchval("SELECT count(*) FROM data_gaps WHERE exchange = 'fake'")
        assert recorded == IN_HAND
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
