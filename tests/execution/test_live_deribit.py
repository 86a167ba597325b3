"""The executor driving ``DeribitExecution`` against the fake Deribit venue on loopback, with
faults: place, fill, cancel, an UNKNOWN resolved by the venue's word (the answer lost with the
connection, 10001 before matching), never a second venue order under one label, and a label
with two orders reported as a fault."""

from __future__ import annotations

import random
import time
from collections.abc import AsyncIterator
from decimal import Decimal

import aiohttp
import asyncpg
import pytest
import redis.asyncio as aioredis

from tests.execution._live import LiveHarness, live_executor
from tradingd.adapters.deribit.execution import DeribitExecution
from tradingd.execution.orders import OrderState
from tradingd.execution.risk import InstrumentInfo
from tradingd.execution.venue import Outcome, PlaceRequest
from tradingd.model import Ticker, optional_text
from tradingd.strategies.api import InstrumentRules, OrderIntent, OrderType, Side, TimeInForce
from tradingd.testing.fake_deribit import FakeDeribit
from tradingd.testing.fake_deribit_trading import FakeDeribitTrading

S = OrderState
EXCHANGE = "deribit"
PERP = "BTC-PERPETUAL"
CLIENT_ID, SECRET = "live-client", "live-secret"
INSTRUMENTS = {
    PERP: InstrumentInfo(
        rules=InstrumentRules(
            name=PERP, base="BTC", quote="USD", tick_size=Decimal("0.5"),
            step_size=Decimal(10), min_quantity=Decimal(10), contract_size=Decimal(10),
        ),
        spot=False,
        inverse=True,
    )
}  # fmt: skip
MARKET_BUY = OrderIntent(
    instrument=PERP, side=Side.BUY, quantity=Decimal(20), type=OrderType.MARKET
)
RESTING_BUY = OrderIntent(
    instrument=PERP, side=Side.BUY, quantity=Decimal(20), price=Decimal(50000)
)


def perp_ticker(venue: FakeDeribitTrading) -> Ticker:
    book = venue.fake.book(PERP)
    now = int(time.time() * 1_000_000)
    return Ticker(
        exchange=EXCHANGE, instrument_name=PERP, best_bid_price_text=optional_text(book.bid),
        best_ask_price_text=optional_text(book.ask), timestamp_us=now, received_us=now,
    )  # fmt: skip


@pytest.fixture
async def venue() -> AsyncIterator[FakeDeribitTrading]:
    fake = FakeDeribit(seed=29)
    desk = FakeDeribitTrading(fake)
    desk.add_account(CLIENT_ID, SECRET, {"BTC": "100"})
    await fake.start()
    try:
        yield desk
    finally:
        await fake.stop()


@pytest.fixture
async def client(venue: FakeDeribitTrading) -> AsyncIterator[DeribitExecution]:
    async with aiohttp.ClientSession() as http:
        yield DeribitExecution(
            EXCHANGE, http, venue.fake.ws_url, CLIENT_ID, SECRET, currencies=["BTC"],
            request_timeout=1.0,
        )  # fmt: skip


@pytest.fixture
async def live(
    pool: asyncpg.Pool, rds: aioredis.Redis, client: DeribitExecution, venue: FakeDeribitTrading
) -> AsyncIterator[LiveHarness]:
    async with live_executor(
        pool, rds, EXCHANGE, client, INSTRUMENTS, [perp_ticker(venue)]
    ) as harness:
        yield harness


async def fills_agree(live: LiveHarness, venue: FakeDeribitTrading) -> None:
    ledger = {f.trade_id: f.quantity for f in await live.ledger.fills(EXCHANGE)}
    assert ledger == {t.trade_id: t.amount for o in venue.orders for t in o.trades}


async def test_place_fill_and_cancel(live: LiveHarness, venue: FakeDeribitTrading) -> None:
    filled = await live.until_state(await live.submit(MARKET_BUY), S.FILLED)
    assert filled.filled_quantity == Decimal(20)
    await fills_agree(live, venue)
    resting = await live.submit(RESTING_BUY)
    row = await live.until_state(resting, S.OPEN)
    (order,) = venue.orders_by_label(resting)
    assert row.venue_order_id == order.order_id
    await live.executor.cancel(resting)
    await live.until_state(resting, S.CANCELED)
    assert order.state == "cancelled"
    assert venue.duplicate_labels() == {}


async def test_an_answer_lost_with_the_connection_is_resolved_never_resent(
    live: LiveHarness, venue: FakeDeribitTrading, client: DeribitExecution
) -> None:
    venue.faults.drop_response_after_match = 1
    client_id = await live.submit(MARKET_BUY)
    row = await live.until_state(client_id, S.FILLED)
    assert venue.faults_injected["drop_response_after_match"] == 1
    assert client.connections == 2  # reconnected (and caught up) after the cut
    assert row.filled_quantity == Decimal(20)
    assert len(venue.orders_by_label(client_id)) == 1
    await fills_agree(live, venue)


async def test_an_error_before_matching_is_never_placed_only_past_valid_until(
    live: LiveHarness, venue: FakeDeribitTrading
) -> None:
    venue.faults.error_before_match = 1
    client_id = await live.submit(MARKET_BUY)
    unknown = await live.until_state(client_id, S.UNKNOWN)
    row = await live.until_state(client_id, S.NEVER_PLACED)
    assert unknown.deadline_us is not None and row.updated_us > unknown.deadline_us
    assert venue.orders_by_label(client_id) == []


async def test_outcomes_map_exactly(client: DeribitExecution, venue: FakeDeribitTrading) -> None:
    await client.start()
    try:

        def limit(label: str, amount: str = "20") -> PlaceRequest:
            return PlaceRequest(
                client_order_id=label, instrument=PERP, side=Side.BUY, type=OrderType.LIMIT,
                tif=TimeInForce.GTC, quantity=Decimal(amount), price=Decimal(50000),
            )  # fmt: skip

        placed = await client.place(limit("map-1"))
        assert placed.outcome is Outcome.ACK and placed.order is not None
        assert placed.order.state is S.OPEN
        # Not a multiple of the contract size: the venue's definitive no.
        assert (await client.place(limit("map-2", "15"))).outcome is Outcome.REJECTED
        # 13888: valid_until passed before the engine took it: nothing exists.
        venue.faults.timed_out = 1
        assert (await client.place(limit("map-3"))).outcome is Outcome.REJECTED
        # 10001 before matching: UNKNOWN; "no such label" at once is not absence.
        venue.faults.error_before_match = 1
        assert (await client.place(limit("map-4"))).outcome is Outcome.UNKNOWN
        assert (await client.query("map-4", PERP)).outcome is Outcome.UNKNOWN
        absent = await client.query("never-sent", PERP)
        assert absent.outcome is Outcome.ACK and absent.order is None
        # A second order under our label (not ours): a fault, never an answer.
        venue.place_foreign_order(venue.accounts[CLIENT_ID], "map-1", PERP)
        faulty = await client.query("map-1", PERP)
        assert faulty.outcome is Outcome.UNKNOWN and faulty.reason.startswith("FAULT")
        assert client.fault_reason is not None
        assert {o.client_order_id for o in await client.open_orders()} == {"map-1"}
        assert (await client.balances())["BTC"] == Decimal(100)
    finally:
        await client.close()


async def test_channels_cut_and_duplicated_events_are_harmless(
    live: LiveHarness, venue: FakeDeribitTrading, client: DeribitExecution
) -> None:
    venue.faults.duplicate_events = True
    venue.faults.disconnect_user_stream_after = 1
    first = await live.submit(MARKET_BUY)
    await live.until_state(first, S.FILLED)
    await live.feed(perp_ticker(venue))
    second = await live.submit(MARKET_BUY)
    await live.until_state(second, S.FILLED)
    assert client.connections >= 2
    assert venue.duplicate_labels() == {}
    await fills_agree(live, venue)


async def test_many_orders_under_random_faults_make_no_duplicate(
    live: LiveHarness, venue: FakeDeribitTrading
) -> None:
    rng = random.Random(611)
    for n in range(30):
        roll = rng.random()
        if roll < 0.2:
            venue.faults.drop_response_after_match = 1
        elif roll < 0.3:
            venue.faults.timed_out = 1
        if n == 15:
            venue.faults.error_before_match = 1
        venue.faults.duplicate_events = rng.random() < 0.3
        intent = MARKET_BUY if rng.random() < 0.6 else RESTING_BUY
        await live.feed(perp_ticker(venue))
        await live.until_terminal_or_open(await live.submit(intent))
    assert venue.duplicate_labels() == {}
    assert sum(venue.faults_injected.values()) >= 5
    await fills_agree(live, venue)
    for order in venue.orders:
        row = await live.ledger.order(order.label)
        assert row is not None and row.filled_quantity == order.filled
    print(f"\nlive Deribit: 30 intents, venue orders {len(venue.orders)}, "
          f"faults {dict(venue.faults_injected)}, duplicates 0")  # fmt: skip


async def test_two_orders_under_one_label_lock_the_exchange(
    pool: asyncpg.Pool, rds: aioredis.Redis, client: DeribitExecution, venue: FakeDeribitTrading
) -> None:
    recorded: list[str] = []

    async def lock(reason: str) -> None:
        recorded.append(reason)

    async with live_executor(
        pool, rds, EXCHANGE, client, INSTRUMENTS, [perp_ticker(venue)], lock_exchange=lock
    ) as live:
        venue.faults.error_before_match = 1
        client_id = await live.submit(RESTING_BUY)
        await live.until_state(client_id, S.UNKNOWN)
        # Labels are not unique at the venue: two orders under ours, neither sent by us.
        account = venue.accounts[CLIENT_ID]
        venue.place_foreign_order(account, client_id, PERP)
        venue.place_foreign_order(account, client_id, PERP)
        reason = await live.until_locked()
        row = await live.ledger.order(client_id)
    assert reason.startswith(f"Deribit: label {client_id}")
    assert recorded == [reason]
    assert row is not None and row.state is S.UNKNOWN  # neither order is taken as ours


async def test_a_read_refused_for_credits_is_asked_again_after_the_pause(
    client: DeribitExecution, venue: FakeDeribitTrading
) -> None:
    await client.start()
    try:
        connections = client.connections
        # Out of credits for the next request: the venue refills them within its pause.
        pool = venue.fake.credit_pools["default"]
        pool.available, pool.updated = 0.0, time.monotonic()
        assert await client.balances() == {"BTC": Decimal("100")}
        assert client.connections == connections + 1  # 10028 ended the session
    finally:
        await client.close()
