"""The executor driving ``BinanceExecution`` against the fake Binance venue on loopback, with
faults: place, fill, cancel, an UNKNOWN resolved by the venue's word, and never a second venue
order for one intent (dropped replies, -1007, 5xx)."""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import AsyncIterator
from decimal import Decimal

import aiohttp
import asyncpg
import msgspec
import pytest
import redis.asyncio as aioredis

from tests.execution._doubles import BTCUSDT, EXCHANGE, INSTRUMENTS, LIMITS, ticker
from tests.execution._live import GUARD, LiveHarness, live_executor, wall_clock_us
from tradingd.adapters.binance import trading
from tradingd.adapters.binance.execution import BinanceExecution
from tradingd.adapters.binance.private import BinancePrivateClient
from tradingd.execution.executor import ExchangeLocker
from tradingd.execution.orders import OrderState
from tradingd.execution.risk import InstrumentInfo
from tradingd.execution.venue import Outcome, PlaceRequest
from tradingd.execution.wiring import exchange_locker
from tradingd.state import ExchangeState, read_state, transition
from tradingd.strategies.api import Denied, OrderIntent, OrderType, Side, TimeInForce
from tradingd.testing.fake_binance import FakeBinance
from tradingd.testing.fake_binance_trading import FakeBinanceTrading

S = OrderState
KEY, SECRET = "live-key", "live-secret"
MARKET_BUY = OrderIntent(
    instrument="BTCUSDT", side=Side.BUY, quantity=Decimal("0.002"), type=OrderType.MARKET
)
RESTING_BUY = OrderIntent(
    instrument="BTCUSDT", side=Side.BUY, quantity=Decimal("0.002"), price=Decimal("50000")
)


@pytest.fixture
async def venue() -> AsyncIterator[FakeBinanceTrading]:
    fake = FakeBinance(seed=23)
    desk = FakeBinanceTrading(fake)
    desk.add_account(KEY, SECRET, {"USDT": "1000000", "BTC": "10"})
    await fake.start()
    try:
        yield desk
    finally:
        await fake.stop()


@pytest.fixture
async def client(venue: FakeBinanceTrading) -> AsyncIterator[BinanceExecution]:
    async with aiohttp.ClientSession() as http:
        private = BinancePrivateClient(
            http, venue.fake.rest_url, trading.Credentials(KEY, SECRET), request_timeout=2.0,
            recv_window_ms=1000, deadline_margin_ms=500,
        )  # fmt: skip
        yield BinanceExecution(EXCHANGE, http, private, venue.ws_api_url)


@pytest.fixture
async def live(
    pool: asyncpg.Pool, rds: aioredis.Redis, client: BinanceExecution
) -> AsyncIterator[LiveHarness]:
    now = int(time.time() * 1_000_000)
    async with live_executor(
        pool, rds, EXCHANGE, client, INSTRUMENTS, [ticker("59999.99", "60000.00", now)]
    ) as harness:
        yield harness


def posts(venue: FakeBinanceTrading, client_id: str) -> int:
    return sum(
        1 for m, p, c, _ in venue.journal if (m, p, c) == ("POST", "/api/v3/order", client_id)
    )


async def fills_agree(live: LiveHarness, venue: FakeBinanceTrading) -> None:
    ledger = {f.trade_id: f.quantity for f in await live.ledger.fills(EXCHANGE)}
    assert ledger == {f"{t.symbol}:{t.fill.trade_id}": t.fill.quantity for t in venue.trades}


async def test_place_fill_and_cancel(live: LiveHarness, venue: FakeBinanceTrading) -> None:
    filled = await live.until_state(await live.submit(MARKET_BUY), S.FILLED)
    assert filled.filled_quantity == Decimal("0.002")
    await fills_agree(live, venue)
    resting = await live.submit(RESTING_BUY)
    row = await live.until_state(resting, S.OPEN)
    assert row.venue_order_id == str(venue.order_by_client_id(resting).order_id)  # type: ignore[union-attr]
    await live.executor.cancel(resting)
    await live.until_state(resting, S.CANCELED)
    assert venue.order_by_client_id(resting).status == "CANCELED"  # type: ignore[union-attr]
    assert venue.duplicate_client_ids() == {}


@pytest.mark.parametrize("fault", ["drop_response_after_match", "timeout_after_match"])
async def test_an_unknown_order_is_resolved_and_never_sent_twice(
    live: LiveHarness, venue: FakeBinanceTrading, fault: str
) -> None:
    setattr(venue.faults, fault, 1)
    client_id = await live.submit(MARKET_BUY)
    row = await live.until_state(client_id, S.FILLED)
    assert venue.faults_injected[fault] == 1
    assert row.filled_quantity == Decimal("0.002")
    assert posts(venue, client_id) == 1
    assert venue.duplicate_client_ids() == {}
    await fills_agree(live, venue)


async def test_a_5xx_before_matching_is_never_placed_only_past_the_deadline(
    live: LiveHarness, venue: FakeBinanceTrading
) -> None:
    venue.faults.server_error_before_match = 1
    client_id = await live.submit(MARKET_BUY)
    unknown = await live.until_state(client_id, S.UNKNOWN)
    row = await live.until_state(client_id, S.NEVER_PLACED)
    assert unknown.deadline_us is not None and row.updated_us > unknown.deadline_us
    assert venue.order_by_client_id(client_id) is None
    assert posts(venue, client_id) == 1


async def test_a_fill_after_minus_2013_is_kept(
    live: LiveHarness, venue: FakeBinanceTrading
) -> None:
    # The reply is lost and the venue denies the order for a while after its fill: "not
    # found" before the deadline proves nothing; the stream's fill (or a later query) settles it.
    venue.faults.drop_response_after_match = 1
    venue.faults.not_found_after_fill = 0.5
    client_id = await live.submit(MARKET_BUY)
    await live.until_state(client_id, S.FILLED)
    assert venue.duplicate_client_ids() == {}
    await fills_agree(live, venue)


async def test_outcomes_map_exactly(client: BinanceExecution, venue: FakeBinanceTrading) -> None:
    await client.start()
    try:
        request = PlaceRequest(
            client_order_id="map-1", instrument="BTCUSDT", side=Side.BUY, type=OrderType.LIMIT,
            tif=TimeInForce.GTC, quantity=Decimal("0.002"), price=Decimal("50000"),
        )  # fmt: skip
        assert (await client.place(request)).outcome is Outcome.ACK
        # The same client id again: -2010 "Duplicate order sent." means ours exists: UNKNOWN.
        again = await client.place(request)
        assert again.outcome is Outcome.UNKNOWN and "Duplicate order sent." in again.reason
        # A filter failure never reached the engine: REJECTED.
        tiny = PlaceRequest(
            client_order_id="map-2", instrument="BTCUSDT", side=Side.BUY, type=OrderType.LIMIT,
            tif=TimeInForce.GTC, quantity=Decimal("0.00001"), price=Decimal("50000"),
        )  # fmt: skip
        assert (await client.place(tiny)).outcome is Outcome.REJECTED
        # 5xx before matching: UNKNOWN; "not found" at once is not absence (deadline ahead).
        venue.faults.server_error_before_match = 1
        lost = PlaceRequest(
            client_order_id="map-3", instrument="BTCUSDT", side=Side.BUY, type=OrderType.LIMIT,
            tif=TimeInForce.GTC, quantity=Decimal("0.002"), price=Decimal("50000"),
        )  # fmt: skip
        assert (await client.place(lost)).outcome is Outcome.UNKNOWN
        assert (await client.query("map-3", "BTCUSDT")).outcome is Outcome.UNKNOWN
        # An id this client never placed: the venue's "no such order" is its word.
        absent = await client.query("never-sent", "BTCUSDT")
        assert absent.outcome is Outcome.ACK and absent.order is None
        open_ids = {o.client_order_id for o in await client.open_orders()}
        assert open_ids == {"map-1"}
        balances = await client.balances()
        assert balances["USDT"] == Decimal(1000000) and balances["BTC"] == Decimal(10)
    finally:
        await client.close()
    assert venue.duplicate_client_ids() == {}


async def test_stream_cut_mid_fills_and_duplicated_events_are_harmless(
    live: LiveHarness, venue: FakeBinanceTrading, client: BinanceExecution
) -> None:
    venue.faults.duplicate_events = True
    venue.faults.disconnect_user_stream_after = 1
    first = await live.submit(MARKET_BUY)
    await live.until_state(first, S.FILLED)
    await venue.wait_for(lambda: venue.user_stream_count() == 1)
    second = await live.submit(MARKET_BUY)
    await live.until_state(second, S.FILLED)
    assert client.stream_connections >= 2
    assert venue.duplicate_client_ids() == {}
    await fills_agree(live, venue)


async def test_many_orders_under_random_faults_make_no_duplicate(
    live: LiveHarness, venue: FakeBinanceTrading
) -> None:
    rng = random.Random(20261206)
    faults = ["drop_response_after_match", "timeout_after_match", None, None, None]
    for n in range(40):
        fault = rng.choice(faults)
        if fault is not None:
            setattr(venue.faults, fault, 1)
        if n in (10, 30):
            venue.faults.server_error_before_match = 1
        venue.faults.duplicate_events = rng.random() < 0.3
        intent = MARKET_BUY if rng.random() < 0.6 else RESTING_BUY
        await live.feed(ticker("59999.99", "60000.00", int(time.time() * 1_000_000)))
        await live.until_terminal_or_open(await live.submit(intent))
    assert venue.duplicate_client_ids() == {}
    assert sum(venue.faults_injected.values()) >= 10
    await fills_agree(live, venue)
    for order in venue.orders:
        row = await live.ledger.order(order.client_order_id)
        assert row is not None and row.filled_quantity == order.executed
    print(f"\nlive Binance: 40 intents, venue orders {len(venue.orders)}, "
          f"faults {dict(venue.faults_injected)}, duplicates 0")  # fmt: skip


# -- any doubt locks the exchange (Executor.lock through the daemon's locker) ----------------


def recorder() -> tuple[list[str], ExchangeLocker]:
    recorded: list[str] = []

    async def lock(reason: str) -> None:
        recorded.append(reason)

    return recorded, lock


async def test_a_418_ip_ban_locks_the_exchange_with_the_reason(
    pool: asyncpg.Pool, rds: aioredis.Redis, client: BinanceExecution, venue: FakeBinanceTrading
) -> None:
    recorded, lock = recorder()
    now = int(time.time() * 1_000_000)
    tickers = [ticker("59999.99", "60000.00", now)]
    async with live_executor(
        pool, rds, EXCHANGE, client, INSTRUMENTS, tickers, lock_exchange=lock
    ) as live:
        venue.fake.inject_http_error(418, retry_after=120)
        client_id = await live.submit(MARKET_BUY)
        await live.until_state(client_id, S.REJECTED)
        reason = await live.until_locked()
        denied = live.executor.decide("manual", MARKET_BUY)
    assert reason.startswith("Binance refused us") and "HTTP 418" in reason
    assert recorded == [reason]
    assert isinstance(denied, Denied) and denied.reason.startswith("locked:")
    assert venue.order_by_client_id(client_id) is None


async def test_an_unlock_lifts_a_418_only_once_its_retry_after_has_passed(
    pool: asyncpg.Pool, rds: aioredis.Redis, venue: FakeBinanceTrading
) -> None:
    await pool.execute("DELETE FROM state_transitions WHERE exchange = $1", EXCHANGE)
    for to_state in ("BOOTSTRAPPING", "LOCKED", "HEALTHY"):
        await transition(
            pool, rds, EXCHANGE, ExchangeState(to_state), operator="test", reason="setup"
        )
    monotonic = [time.monotonic()]
    now = int(time.time() * 1_000_000)
    async with aiohttp.ClientSession() as http:
        private = BinancePrivateClient(
            http, venue.fake.rest_url, trading.Credentials(KEY, SECRET), request_timeout=2.0,
            monotonic=lambda: monotonic[0],
        )  # fmt: skip
        client = BinanceExecution(EXCHANGE, http, private, venue.ws_api_url)
        async with live_executor(
            pool, rds, EXCHANGE, client, INSTRUMENTS, [ticker("59999.99", "60000.00", now)],
            lock_exchange=exchange_locker(pool, rds, EXCHANGE),
        ) as live:  # fmt: skip
            venue.fake.inject_http_error(418, retry_after=120)
            banned = await live.submit(MARKET_BUY)
            await live.until_state(banned, S.REJECTED)
            reason = await live.until_locked()
            assert "HTTP 418" in reason and "banned until " in reason

            async def one_pass() -> None:
                """One more turn of the executor's loop (the lock recorded, the gate read)."""
                live.executor.settled.clear()
                live.executor._wake.set()
                await asyncio.wait_for(live.executor.settled.wait(), GUARD)

            async def unlock() -> None:
                await transition(
                    pool, rds, EXCHANGE, ExchangeState.HEALTHY, operator="test", reason="unlock"
                )
                await one_pass()

            await one_pass()
            assert await read_state(rds, EXCHANGE) is ExchangeState.LOCKED

            # Too early (an unlock forced past the command's check): locked again, saying why.
            monotonic[0] += 60
            await unlock()
            assert await read_state(rds, EXCHANGE) is ExchangeState.LOCKED
            assert "the ban lasts 60 s more" in live.executor.locked_reason
            assert isinstance(live.executor.decide("manual", MARKET_BUY), Denied)
            monotonic[0] += 61
            await unlock()
            assert await read_state(rds, EXCHANGE) is ExchangeState.HEALTHY
            assert live.executor.locked_reason == "" and client.fault() is None
            filled = await live.submit(MARKET_BUY)
            await live.until_state(filled, S.FILLED)
    assert venue.order_by_client_id(banned) is None
    assert venue.order_by_client_id(filled) is not None


async def test_an_unknown_order_unresolved_past_the_limit_locks_the_exchange(
    pool: asyncpg.Pool, rds: aioredis.Redis, client: BinanceExecution, venue: FakeBinanceTrading
) -> None:
    recorded, lock = recorder()
    limits = msgspec.structs.replace(LIMITS, unknown_order_limit=1.0)
    now = int(time.time() * 1_000_000)
    tickers = [ticker("59999.99", "60000.00", now)]
    async with live_executor(
        pool, rds, EXCHANGE, client, INSTRUMENTS, tickers, limits=limits, lock_exchange=lock
    ) as live:
        # The venue answers nothing but 500s: the order's fate stays unknown.
        venue.fake.inject_http_error(500, count=100_000)
        client_id = await live.submit(MARKET_BUY)
        unknown = await live.until_state(client_id, S.UNKNOWN)
        reason = await live.until_locked()
        locked_after_us = wall_clock_us() - unknown.updated_us
        row = await live.ledger.order(client_id)
    assert client_id in reason and "UNKNOWN for more than 1 s" in reason
    assert recorded == [reason]
    assert 1_000_000 <= locked_after_us < 5_000_000
    assert row is not None and row.state is S.UNKNOWN  # never guessed, only locked
    assert posts(venue, client_id) == 1


async def test_fills_of_two_symbols_with_the_same_venue_trade_id_are_both_kept(
    pool: asyncpg.Pool, rds: aioredis.Redis, client: BinanceExecution, venue: FakeBinanceTrading
) -> None:
    """Binance numbers trades per symbol: BTCUSDT's and ETHUSDT's first trades share an id."""
    ethusdt = InstrumentInfo(
        rules=msgspec.structs.replace(
            BTCUSDT.rules, name="ETHUSDT", base="ETH", step_size=Decimal("0.0001")
        )
    )
    now = int(time.time() * 1_000_000)
    eth_ticker = msgspec.structs.replace(
        ticker("2999.99", "3000.00", now), instrument_name="ETHUSDT"
    )
    instruments = {"BTCUSDT": BTCUSDT, "ETHUSDT": ethusdt}
    tickers = [ticker("59999.99", "60000.00", now), eth_ticker]
    async with live_executor(pool, rds, EXCHANGE, client, instruments, tickers) as live:
        btc = await live.submit(MARKET_BUY)
        eth = await live.submit(
            msgspec.structs.replace(MARKET_BUY, instrument="ETHUSDT", quantity=Decimal("0.01"))
        )
        await live.until_state(btc, S.FILLED)
        await live.until_state(eth, S.FILLED)
        await fills_agree(live, venue)
    assert {t.fill.trade_id for t in venue.trades} == {5_000_001}
    assert len(venue.trades) == 2
