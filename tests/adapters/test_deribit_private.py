"""The Deribit private session against the fake venue with faults: auth, cancel-on-disconnect,
the user channels, label look-ups, token refresh, and every failure's verdict."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from decimal import Decimal

import aiohttp
import pytest

from tradingd.adapters.deribit import trading as t
from tradingd.adapters.deribit.private import DeribitPrivateSession, PlaceAnswer
from tradingd.adapters.trading import Classified, Verdict
from tradingd.testing.fake_deribit import FakeDeribit
from tradingd.testing.fake_deribit_trading import FakeDeribitTrading

CLIENT_ID, SECRET = "session-client", "session-secret"
BTC = "BTC-PERPETUAL"


@pytest.fixture
async def venue() -> AsyncIterator[FakeDeribitTrading]:
    fake = FakeDeribit(seed=9)
    desk = FakeDeribitTrading(fake)
    desk.add_account(CLIENT_ID, SECRET, {"BTC": "5"})
    await fake.start()
    try:
        yield desk
    finally:
        await fake.stop()


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


def session(venue, http, timeout: float = 2.0):
    return DeribitPrivateSession.open(
        http, venue.fake.ws_url, CLIENT_ID, SECRET, currencies=["BTC"], request_timeout=timeout
    )


async def buy(
    s: DeribitPrivateSession, venue, label: str, price: Decimal | None = None
) -> PlaceAnswer:
    book = venue.fake.book(BTC)
    return await s.place(
        direction="buy", instrument_name=BTC, amount=Decimal(10), label=label,
        valid_until_ms=venue.fake.now_ms() + 5000,
        price=price if price is not None else book.ask,
    )  # fmt: skip


async def test_place_query_and_notifications(venue, http) -> None:
    async with session(venue, http) as s:
        answer = await buy(s, venue, "a-1")
        assert answer.failure is None and answer.placed is not None
        assert answer.placed.order.state == "filled" and answer.deadline_ms > venue.fake.now_ms()
        found = await s.order_by_label("BTC", "a-1")
        assert isinstance(found, t.Order) and found.filled_amount == Decimal(10)
        assert await s.order_by_label("BTC", "nobody") is None
        updates = s.updates()
        seen: list[object] = []
        while not any(isinstance(u, t.TradesUpdate) for u in seen):
            seen.append(await asyncio.wait_for(anext(updates), 5))
        trades = await s.user_trades("BTC")
        assert isinstance(trades, t.TradesPage) and trades.trades[0].label == "a-1"
        positions = await s.positions("BTC")
        assert isinstance(positions, list) and positions[0].size == Decimal(10)
        summary = await s.account_summary("BTC")
        assert isinstance(summary, t.AccountSummary) and summary.balance < Decimal(5)


async def test_cancel_on_disconnect_and_catch_up(venue, http) -> None:
    low = venue.fake.book(BTC).bid - Decimal(1000)
    async with session(venue, http) as s:
        assert (await buy(s, venue, "rest-1", price=low)).placed is not None
    await venue.fake.wait_for(lambda: venue.authenticated_connections() == 0)
    [order] = venue.orders_by_label("rest-1")
    assert order.cancel_reason == "cancel_on_disconnect"
    async with session(venue, http) as s:
        caught_up = await s.order_by_label("BTC", "rest-1")
        assert isinstance(caught_up, t.Order) and caught_up.state == "cancelled"
        assert await s.open_orders("BTC") == []


async def test_failures_and_their_verdicts(venue, http) -> None:
    async with session(venue, http) as s:
        venue.faults.timed_out = 1
        timed_out = await buy(s, venue, "f-1")
        assert timed_out.failure is not None and timed_out.failure.code == 13888
        venue.faults.maintenance = 1
        assert (await buy(s, venue, "f-2")).failure.verdict is Verdict.MAINTENANCE  # type: ignore[union-attr]
        venue.place_foreign_order(venue.accounts[CLIENT_ID], "twice", BTC)
        venue.place_foreign_order(venue.accounts[CLIENT_ID], "twice", BTC)
        fault = await s.order_by_label("BTC", "twice")
        assert isinstance(fault, Classified) and fault.verdict is Verdict.FAULT
        assert (await s.cancel("no-such")).verdict is Verdict.NOT_FOUND  # type: ignore[union-attr]


async def test_a_lost_answer_is_unknown_and_the_label_finds_the_order(venue, http) -> None:
    async with session(venue, http) as s:
        venue.faults.drop_response_after_match = 1
        answer = await buy(s, venue, "lost-1")
        assert answer.failure is not None and answer.failure.verdict is Verdict.UNKNOWN
        again = await buy(s, venue, "never")  # the session is gone: nothing is sent
        assert again.failure is not None and again.failure.verdict is Verdict.UNKNOWN
    async with session(venue, http) as s:
        found = await s.order_by_label("BTC", "lost-1")
        assert isinstance(found, t.Order) and found.state == "filled"
    assert venue.orders_by_label("never") == [] and venue.duplicate_labels() == {}


async def test_a_slow_venue_is_unknown(venue, http) -> None:
    async with session(venue, http, timeout=0.2) as s:
        venue.faults.delay = 0.5
        answer = await buy(s, venue, "slow-1")
        assert answer.failure is not None and answer.failure.verdict is Verdict.UNKNOWN


async def test_the_token_is_refreshed_before_it_expires(venue, http) -> None:
    venue.token_lifetime = 61  # due one second after auth (60 s margin)
    async with session(venue, http) as s:
        first = s.token
        assert first is not None
        await asyncio.wait_for(s.refreshed.wait(), timeout=10)
        assert (
            s.refreshes >= 1 and s.token is not None and s.token.access_token != first.access_token
        )
        assert (await buy(s, venue, "after-refresh")).placed is not None


async def test_bad_credentials_fail_to_open(venue, http) -> None:
    with pytest.raises(ConnectionError, match="auth failed"):
        async with DeribitPrivateSession.open(
            http, venue.fake.ws_url, CLIENT_ID, "wrong", currencies=["BTC"], request_timeout=2
        ):
            pass


async def test_the_venue_clock_and_the_expiry_of_valid_until(venue, http) -> None:
    venue.fake.clock_offset_ms = 7_000
    async with session(venue, http) as s:
        assert abs(s.venue_now_ms() - venue.fake.now_ms()) < 500
        valid_until = s.venue_now_ms() + 300
        venue.faults.error_before_match = 1
        answer = await s.place(
            direction="buy", instrument_name=BTC, amount=Decimal(10), label="exp-1",
            valid_until_ms=valid_until, order_type="market",
        )  # fmt: skip
        assert answer.failure is not None and answer.failure.verdict is Verdict.UNKNOWN
        assert not s.expired(answer)  # valid_until, plus the margin, is still ahead
        assert answer.expires_at - time.monotonic() > 1.0
