"""The Binance private client against the fake venue with faults: every failure maps to its
verdict, -1021 resends the same client id once the clock is resynchronised, and the fake's own
record shows no duplicate order whatever happened."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from decimal import Decimal

import aiohttp
import pytest

from tradingd import bans
from tradingd.adapters.binance import trading
from tradingd.adapters.binance.execution_parsing import ExecutionReport
from tradingd.adapters.binance.private import Answer, BinancePrivateClient, UserStream
from tradingd.adapters.binance.rate_limits import RateLimits
from tradingd.adapters.trading import Classified, Verdict
from tradingd.testing.fake_binance import FakeBinance
from tradingd.testing.fake_binance_trading import FakeBinanceTrading

KEY, SECRET = "key-private-1", "secret-private-1"


@pytest.fixture
async def venue() -> AsyncIterator[FakeBinanceTrading]:
    fake = FakeBinance(seed=3)
    desk = FakeBinanceTrading(fake)
    desk.add_account(KEY, SECRET, {"USDT": "50000", "BTC": "1"})
    await fake.start()
    try:
        yield desk
    finally:
        await fake.stop()


@pytest.fixture
async def client(venue: FakeBinanceTrading) -> AsyncIterator[BinancePrivateClient]:
    async with aiohttp.ClientSession() as http:
        private = BinancePrivateClient(
            http, venue.fake.rest_url, trading.Credentials(KEY, SECRET), request_timeout=2.0
        )
        await private.sync_clock()
        yield private


async def buy(client: BinancePrivateClient, cid: str, qty: str = "0.01") -> Answer:
    return await client.place(
        symbol="BTCUSDT",
        side="BUY",
        order_type="MARKET",
        quantity=Decimal(qty),
        client_order_id=cid,
    )


async def test_a_placed_order_and_its_query(venue, client) -> None:
    answer = await buy(client, "p-1")
    assert answer.failure is None and answer.order is not None and answer.order.status == "FILLED"
    assert answer.deadline_ms > client.venue_now_ms()
    queried = await client.query(symbol="BTCUSDT", client_order_id="p-1")
    assert queried.order is not None and queried.order.executed_quantity == Decimal("0.01")
    assert client.order_counts == {"10S": 1, "1D": 1}


async def test_minus_1021_resyncs_and_resends_the_same_client_id(venue, client) -> None:
    venue.fake.clock_offset_ms = -60_000  # the venue's clock jumps a minute back
    answer = await buy(client, "skew-1")
    assert answer.failure is None and answer.order is not None
    assert client.clock_resyncs == 1
    assert [o.client_order_id for o in venue.orders] == ["skew-1"]


async def test_unknown_outcomes_are_never_resent_and_the_venue_knows(venue, client) -> None:
    venue.faults.timeout_after_match = 1
    venue.faults.drop_response_after_match = 1
    venue.faults.server_error_before_match = 1
    answers = [await buy(client, cid) for cid in ("u-1", "u-2", "u-3")]
    assert [a.failure.verdict for a in answers if a.failure] == [Verdict.UNKNOWN] * 3
    # The venue's word, by client id: the 5xx came before matching (first), the dropped answer
    # and the -1007 after it.
    found = [await client.query(symbol="BTCUSDT", client_order_id=c) for c in ("u-1", "u-2", "u-3")]
    assert [a.order.status if a.order else a.failure.verdict for a in found] == [  # type: ignore[union-attr]
        Verdict.NOT_FOUND, "FILLED", "FILLED",
    ]  # fmt: skip
    assert venue.duplicate_client_ids() == {}


async def test_a_request_timeout_is_unknown(venue) -> None:
    async with aiohttp.ClientSession() as http:
        private = BinancePrivateClient(
            http, venue.fake.rest_url, trading.Credentials(KEY, SECRET), request_timeout=0.2
        )
        venue.faults.order_delay = 1.0
        answer = await buy(private, "slow-1")
        assert answer.failure is not None and answer.failure.verdict is Verdict.UNKNOWN
        await venue.wait_for(lambda: venue.order_by_client_id("slow-1") is not None)


async def test_429_holds_every_request_and_418_locks(venue, client) -> None:
    venue.fake.inject_http_error(429, retry_after=30)
    limited = await buy(client, "r-1")
    assert limited.failure is not None and limited.failure.verdict is Verdict.RATE_LIMITED
    requests_before = len(venue.orders)
    held = await buy(client, "r-2")
    assert held.failure is not None and held.failure.verdict is Verdict.RATE_LIMITED
    assert "nothing sent" in held.failure.reason and len(venue.orders) == requests_before
    client._not_before = 0.0  # the wait is over
    venue.fake.inject_http_error(418, retry_after=120)
    banned = await buy(client, "r-3")
    assert banned.failure is not None and banned.failure.verdict is Verdict.BANNED
    assert client.locked_reason is not None and "418" in client.locked_reason
    after = await client.open_orders("BTCUSDT")
    assert isinstance(after, Classified) and after.verdict is Verdict.BANNED
    assert venue.orders == []


async def test_user_stream_events_and_catch_up_after_a_disconnect(venue, client) -> None:
    async with aiohttp.ClientSession() as http:
        stream = await UserStream.connect(
            http, venue.ws_api_url, client.credentials, client.venue_now_ms(), reply_within=5
        )
        events = stream.events()
        await buy(client, "s-1")
        first = await asyncio.wait_for(anext(events), 5)
        assert isinstance(first, ExecutionReport) and first.client_order_id == "s-1"
        await venue.abort_user_streams()
        rest = [e async for e in events]
        assert all(not isinstance(e, ExecutionReport) or e.client_order_id == "s-1" for e in rest)
        await buy(client, "s-2")  # happens while no stream is connected
        stream = await UserStream.connect(
            http, venue.ws_api_url, client.credentials, client.venue_now_ms(), reply_within=5
        )
        trades = await client.my_trades("BTCUSDT", from_id=0)
        assert not isinstance(trades, Classified)
        by_order = {t.order_id for t in trades}
        assert {o.order_id for o in venue.orders} == by_order  # the catch-up sees both
        first_order = venue.orders[0].order_id
        one = await client.order_trades("BTCUSDT", first_order)
        assert not isinstance(one, Classified)
        assert one and {t.order_id for t in one} == {first_order}
        await stream.close()


async def test_a_clock_resync_does_not_expire_an_unknown_order_early(venue, client) -> None:
    """Regression (found by the venue chaos test): the deadline was compared in venue time,
    which jumps when the offset is measured again; an order live on the venue was declared
    never placed. It is now counted on the monotonic clock from the moment of sending."""
    venue.fake.clock_offset_ms = -30_000
    await client.sync_clock()
    venue.faults.timeout_after_match = 1
    answer = await buy(client, "jump-1")
    assert answer.failure is not None and answer.failure.verdict is Verdict.UNKNOWN
    venue.fake.clock_offset_ms = 2500  # the next request meets -1021 and resynchronises
    assert (await buy(client, "jump-2")).order is not None and client.clock_resyncs == 1
    assert client.venue_now_ms() > answer.deadline_ms  # in venue time it looks expired...
    assert not client.expired(answer)  # ...but the venue could still act on it
    assert venue.order_by_client_id("jump-1") is not None


async def test_an_order_count_at_the_limit_holds_new_orders_unsent(venue, client) -> None:
    client.use_rate_limits(RateLimits(orders={"10S": 50, "1D": 2}, weight={"1M": 6000}))
    assert (await buy(client, "c-1")).order is not None
    assert (await buy(client, "c-2")).order is not None  # the venue now counts 2 today
    held = await buy(client, "c-3")
    assert held.failure is not None and held.failure.verdict is Verdict.RATE_LIMITED
    assert "order rate limit reached" in held.failure.reason
    assert 86_399 < (held.failure.retry_after or 0) <= 86_400
    assert [o.client_order_id for o in venue.orders] == ["c-1", "c-2"]  # c-3 never sent
    # Queries and cancels are not orders: they still go out.
    assert (await client.query(symbol="BTCUSDT", client_order_id="c-1")).order is not None


async def limited_venue(**fake_options: object) -> tuple[FakeBinance, FakeBinanceTrading]:
    fake = FakeBinance(seed=5, **fake_options)  # type: ignore[arg-type]
    desk = FakeBinanceTrading(fake)
    desk.add_account(KEY, SECRET, {"USDT": "50000", "BTC": "1"})
    await fake.start()
    return fake, desk


async def test_order_limits_from_exchange_info_hold_orders_the_venue_would_refuse() -> None:
    fake, venue = await limited_venue(
        order_limits=(("SECOND", 10, 3), ("SECOND", 1, 2), ("DAY", 1, 160_000))
    )
    try:
        async with aiohttp.ClientSession() as http:
            private = BinancePrivateClient(
                http, fake.rest_url, trading.Credentials(KEY, SECRET), request_timeout=2.0
            )
            assert private.rate_limits.orders == {"10S": 50, "1D": 160_000}  # until read
            limits = await private.load_rate_limits("BTCUSDT")
            assert limits == RateLimits(
                orders={"10S": 3, "1S": 2, "1D": 160_000}, weight={"1M": fake.weight_limit}
            )
            # Five at once: the two the 1 s limit allows go out, the others are held unsent.
            answers = await asyncio.gather(*(buy(private, f"l-{i}") for i in range(5)))
            sent = [a for a in answers if a.order is not None]
            held = [a.failure for a in answers if a.failure is not None]
            assert len(sent) == 2 and len(held) == 3
            assert all(f.verdict is Verdict.RATE_LIMITED for f in held)
            assert all("nothing sent" in f.reason and f.retry_after for f in held)
            assert len(venue.orders) == 2
            assert private.order_counts == {"10S": 2, "1S": 2, "1D": 2}
            # Never sent and then refused: the venue answered no order with 429 (-1015).
            assert [j for j in venue.journal if j[3] == 429] == []
            assert venue.faults_injected["orders_over_limit"] == 0
    finally:
        await fake.stop()


async def test_a_restarted_client_counts_the_orders_an_earlier_one_sent() -> None:
    fake, venue = await limited_venue(order_limits=(("SECOND", 10, 3), ("DAY", 1, 160_000)))
    try:
        async with aiohttp.ClientSession() as http:
            for attempt in range(2):  # the same account, as after a restart
                private = BinancePrivateClient(
                    http, fake.rest_url, trading.Credentials(KEY, SECRET), request_timeout=2.0
                )
                await private.load_rate_limits()
                counts = await private.load_order_counts()
                if attempt == 0:
                    assert counts == {"10S": 0, "1D": 0}
                    for n in range(3):
                        assert (await buy(private, f"first-{n}")).order is not None
            # The earlier client filled the 10 s window: the venue would answer -1015.
            assert counts == {"10S": 3, "1D": 3}
            held = await buy(private, "second-1")
            assert held.failure is not None and held.failure.verdict is Verdict.RATE_LIMITED
            assert "order rate limit reached" in held.failure.reason
            assert [o.client_order_id for o in venue.orders] == [f"first-{n}" for n in range(3)]
            assert venue.faults_injected["orders_over_limit"] == 0
    finally:
        await fake.stop()


async def test_request_weight_past_the_minute_is_held_unsent() -> None:
    fake, venue = await limited_venue(weight_limit=50)
    try:
        async with aiohttp.ClientSession() as http:
            private = BinancePrivateClient(
                http, fake.rest_url, trading.Credentials(KEY, SECRET), request_timeout=2.0
            )
            await private.load_rate_limits()  # weight 20: the minute's budget is 50
            assert private.rate_limits.weight == {"1M": 50}
            assert not isinstance(await private.balances(), Classified)  # weight 20 more
            held = await private.balances()
            assert isinstance(held, Classified) and held.verdict is Verdict.RATE_LIMITED
            assert "request weight limit reached" in held.reason and held.retry_after
            assert [j[1] for j in venue.journal] == ["/api/v3/account"]  # the second never sent
            # An order (weight 1) still fits.
            assert (await buy(private, "w-1")).order is not None
            assert [j for j in venue.journal if j[3] == 429] == []
    finally:
        await fake.stop()


async def test_a_418_latch_lifts_only_once_the_ban_is_over(venue) -> None:
    now = [1000.0]
    async with aiohttp.ClientSession() as http:
        private = BinancePrivateClient(
            http,
            venue.fake.rest_url,
            trading.Credentials(KEY, SECRET),
            request_timeout=2.0,
            monotonic=lambda: now[0],
        )
        await private.sync_clock()
        venue.fake.inject_http_error(418, retry_after=120)
        banned = await buy(private, "b-1")
        assert banned.failure is not None and banned.failure.verdict is Verdict.BANNED
        reason = private.locked_reason
        assert reason is not None and "banned until " in reason
        until = bans.banned_until_us(reason)
        assert until is not None and 119 <= until / 1e6 - time.time() <= 121
        now[0] += 100
        kept = private.lift_ban()
        assert kept is not None and "the ban lasts 20 s more" in kept
        still = await buy(private, "b-2")
        assert still.failure is not None and still.failure.verdict is Verdict.BANNED
        assert venue.orders == []  # nothing was sent while banned
        now[0] += 21
        assert private.lift_ban() is None and private.locked_reason is None
        assert (await buy(private, "b-3")).order is not None


async def test_a_refused_key_stays_latched_after_an_unlock(venue) -> None:
    async with aiohttp.ClientSession() as http:
        private = BinancePrivateClient(
            http, venue.fake.rest_url, trading.Credentials("no-such-key", SECRET),
            request_timeout=2.0,
        )  # fmt: skip
        refused = await buy(private, "k-1")
        assert refused.failure is not None and refused.failure.verdict is Verdict.AUTH_FAILED
        kept = private.lift_ban()
        assert kept is not None and "restart with a key" in kept
