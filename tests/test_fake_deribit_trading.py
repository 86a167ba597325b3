"""The fake Deribit venue's trading side, over a real WebSocket on loopback, driven with the
adapter's own request builders and parsers."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator
from decimal import Decimal

import aiohttp
import msgspec
import pytest

from tradingd.adapters.deribit import trading as t
from tradingd.adapters.deribit.parsing import RpcFailure, rpc_result
from tradingd.adapters.trading import Verdict
from tradingd.testing.fake_deribit import FakeDeribit
from tradingd.testing.fake_deribit_trading import FakeDeribitTrading

CLIENT_ID, SECRET = "fake-client", "fake-secret"
BTC = "BTC-PERPETUAL"


class Client:
    """A minimal JSON-RPC client: replies by id, notifications kept in order."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.ws = ws
        self.ids = itertools.count(1)
        self.notifications: list[tuple[str, bytes]] = []

    async def call(self, build) -> msgspec.Raw:  # build: id -> frame
        request_id = next(self.ids)
        await self.ws.send_str(build(request_id).decode())
        while True:
            message = await asyncio.wait_for(self.ws.receive(), timeout=5)
            if message.type is not aiohttp.WSMsgType.TEXT:
                raise ConnectionError(f"closed: {message.type}")
            frame = msgspec.json.decode(message.data)
            if frame.get("method") == "subscription":
                data = msgspec.json.encode(frame["params"]["data"])
                self.notifications.append((frame["params"]["channel"], data))
                continue
            if frame.get("id") == request_id:
                return rpc_result(message.data)

    async def drain_notifications(self, count: int) -> None:
        while len(self.notifications) < count:
            message = await asyncio.wait_for(self.ws.receive(), timeout=5)
            if message.type is not aiohttp.WSMsgType.TEXT:
                raise ConnectionError(f"closed: {message.type}")
            frame = msgspec.json.decode(message.data)
            if frame.get("method") == "subscription":
                data = msgspec.json.encode(frame["params"]["data"])
                self.notifications.append((frame["params"]["channel"], data))


@pytest.fixture
async def venue() -> AsyncIterator[FakeDeribitTrading]:
    fake = FakeDeribit(seed=5)
    desk = FakeDeribitTrading(fake)
    desk.add_account(CLIENT_ID, SECRET, {"BTC": "10", "ETH": "100"})
    await fake.start()
    try:
        yield desk
    finally:
        await fake.stop()


@pytest.fixture
async def client(venue: FakeDeribitTrading) -> AsyncIterator[Client]:
    async with aiohttp.ClientSession() as http, http.ws_connect(venue.fake.ws_url) as ws:
        rpc = Client(ws)
        token = t.parse_auth(
            await rpc.call(lambda i: t.auth_client_credentials(i, CLIENT_ID, SECRET)),
            venue.fake.now_ms() * 1000,
        )
        assert token.access_token
        yield rpc


def buy(venue, label: str, amount: str = "100", price: Decimal | None = None, **kw):
    book = venue.fake.book(BTC)
    return lambda i: t.place_order(
        i, direction="buy", instrument_name=BTC, amount=Decimal(amount),
        price=price if price is not None else book.ask, label=label,
        valid_until_ms=venue.fake.now_ms() + 5000, **kw,
    )  # fmt: skip


async def failure(coro) -> t.Classified:
    with pytest.raises(RpcFailure) as raised:
        await coro
    return t.classify_error(raised.value.error.code, raised.value.error.message)


async def test_private_calls_need_auth_and_bad_credentials_are_refused(venue) -> None:
    async with aiohttp.ClientSession() as http, http.ws_connect(venue.fake.ws_url) as ws:
        rpc = Client(ws)
        assert (
            await failure(rpc.call(lambda i: t.get_positions(i, "BTC")))
        ).verdict is Verdict.AUTH_FAILED
        bad = await failure(rpc.call(lambda i: t.auth_client_credentials(i, CLIENT_ID, "nope")))
        assert (bad.code, bad.verdict) == (13004, Verdict.AUTH_FAILED)
        first = t.parse_auth(
            await rpc.call(lambda i: t.auth_client_credentials(i, CLIENT_ID, SECRET)), 0
        )
        again = t.parse_auth(await rpc.call(lambda i: t.auth_refresh(i, first.refresh_token)), 0)
        assert again.access_token != first.access_token
        assert (
            await failure(rpc.call(lambda i: t.auth_refresh(i, first.refresh_token)))
        ).code == 13009


async def test_a_taker_buy_fills_with_fees_and_is_found_by_label(venue, client) -> None:
    venue.top_size = Decimal(40)
    placed = t.parse_place(await client.call(buy(venue, "L-1", "100", order_type="limit")))
    assert placed.order.label == "L-1" and placed.order.filled_amount == Decimal(40)
    assert placed.order.state == "open" and [tr.maker for tr in placed.trades] == [False]
    found = t.parse_order_by_label(
        await client.call(lambda i: t.get_order_state_by_label(i, "BTC", "L-1")), "L-1"
    )
    assert found is not None and found.order_id == placed.order.order_id
    [open_order] = t.parse_orders(
        await client.call(lambda i: t.get_open_orders_by_currency(i, "BTC"))
    )
    assert open_order.label == "L-1"
    summary = t.parse_account_summary(await client.call(lambda i: t.get_account_summary(i, "BTC")))
    fee = placed.trades[0].fee
    assert fee > 0 and summary.balance == Decimal(10) - fee
    [position] = t.parse_positions(await client.call(lambda i: t.get_positions(i, "BTC")))
    assert position.size == Decimal(40)
    page = t.parse_trades_page(await client.call(lambda i: t.get_user_trades_by_currency(i, "BTC")))
    assert [tr.trade_id for tr in page.trades] == [placed.trades[0].trade_id]
    assert page.trades[0].label == "L-1"
    later = t.parse_trades_page(
        await client.call(
            lambda i: t.get_user_trades_by_currency(
                i, "BTC", start_id=str(int(placed.trades[0].trade_id) + 1)
            )
        )
    )
    assert later.trades == []


async def test_resting_orders_fill_against_the_tape_and_notify(venue, client) -> None:
    channels = t.user_channels("BTC")
    granted = msgspec.json.decode(await client.call(lambda i: t.private_subscribe(i, channels)))
    assert granted == channels
    book = venue.fake.book(BTC)
    price = book.bid - book.tick * 20
    placed = t.parse_place(await client.call(buy(venue, "R-1", "50", price=price)))
    assert placed.order.state == "open" and placed.trades == []
    order = venue.orders_by_label("R-1")[0]
    rounds = 0
    while order.state == "open" and rounds < 5000:
        venue.fake._instruments[BTC].price_ticks = int(price / book.tick) + 5 - (rounds % 20)
        venue.fake.publish_trades(BTC, 1)
        rounds += 1
    assert order.state == "filled"
    await client.drain_notifications(1)
    await client.call(lambda i: t.get_positions(i, "BTC"))  # flushes what was sent before it
    updates = [t.parse_user_notification(ch, data) for ch, data in client.notifications]
    fills = [tr for u in updates if isinstance(u, t.TradesUpdate) for tr in u.trades]
    assert sum(tr.amount for tr in fills) == Decimal(50) and all(tr.maker for tr in fills)
    assert all(tr.price == price and tr.label == "R-1" for tr in fills)
    states = [o.state for u in updates if isinstance(u, t.OrdersUpdate) for o in u.orders]
    assert states[0] == "open" and states[-1] == "filled"
    assert any(isinstance(u, t.PortfolioUpdate) for u in updates)


async def test_cancels(venue, client) -> None:
    book = venue.fake.book(BTC)
    low = book.bid - book.tick * 100
    a = t.parse_place(await client.call(buy(venue, "C-1", price=low)))
    await client.call(buy(venue, "C-2", price=low))
    await client.call(buy(venue, "C-3", price=low))
    cancelled = t.parse_order(await client.call(lambda i: t.cancel(i, a.order.order_id)))
    assert cancelled.state == "cancelled"
    again = await failure(client.call(lambda i: t.cancel(i, a.order.order_id)))
    assert again.verdict is Verdict.REJECTED
    assert (await failure(client.call(lambda i: t.cancel(i, "nope")))).verdict is Verdict.NOT_FOUND
    assert (
        t.parse_cancel_count(await client.call(lambda i: t.cancel_by_label(i, "C-2", "BTC"))) == 1
    )
    assert (
        t.parse_cancel_count(
            await client.call(lambda i: t.cancel_all_by_instrument(i, "ETH-PERPETUAL"))
        )
        == 0
    )
    assert t.parse_cancel_count(await client.call(lambda i: t.cancel_all(i))) == 1
    assert (
        t.parse_orders(await client.call(lambda i: t.get_open_orders_by_currency(i, "BTC"))) == []
    )


async def test_refusals_classify_as_the_table_says(venue, client) -> None:
    book = venue.fake.book(BTC)
    cases = [
        (buy(venue, "x", "15"), Verdict.REJECTED, 10021),
        (buy(venue, "x", "10", price=book.ask + book.tick / 2), Verdict.REJECTED, 10043),
        (buy(venue, "x", "10", post_only=True), Verdict.REJECTED, 11054),
        (buy(venue, "x", "100000000"), Verdict.REJECTED, 10009),
        (lambda i: t.place_order(i, direction="buy", instrument_name=BTC, amount=Decimal(10),
                                 price=book.ask, label="late", valid_until_ms=venue.fake.now_ms() - 1),
         Verdict.REJECTED, 13888),
    ]  # fmt: skip
    for build, verdict, code in cases:
        classified = await failure(client.call(build))
        assert (classified.verdict, classified.code) == (verdict, code)
    assert venue.orders == []


async def test_faults(venue, client) -> None:
    venue.faults.timed_out = 1
    assert (await failure(client.call(buy(venue, "f-1")))).code == 13888
    venue.faults.maintenance = 1
    assert (await failure(client.call(buy(venue, "f-1")))).verdict is Verdict.MAINTENANCE
    venue.faults.maintenance = 0
    venue.faults.error_before_match = 1
    assert (await failure(client.call(buy(venue, "f-1")))).verdict is Verdict.UNKNOWN
    assert venue.orders == []
    venue.faults.rate_limited = 1
    assert (await failure(client.call(buy(venue, "f-1")))).verdict is Verdict.RATE_LIMITED
    with pytest.raises(ConnectionError):  # 10028 ends the session
        await client.call(lambda i: t.get_positions(i, "BTC"))


async def test_a_dropped_answer_after_matching_and_cancel_on_disconnect(venue) -> None:
    book = venue.fake.book(BTC)
    async with aiohttp.ClientSession() as http:
        async with http.ws_connect(venue.fake.ws_url) as ws:
            rpc = Client(ws)
            await rpc.call(lambda i: t.auth_client_credentials(i, CLIENT_ID, SECRET))
            assert (
                msgspec.json.decode(await rpc.call(lambda i: t.enable_cancel_on_disconnect(i)))
                == "ok"
            )
            await rpc.call(buy(venue, "rest-1", price=book.bid - book.tick * 100))
            venue.faults.drop_response_after_match = 1
            with pytest.raises((ConnectionError, TimeoutError)):
                await rpc.call(buy(venue, "drop-1"))
        await venue.fake.wait_for(lambda: venue.authenticated_connections() == 0)
    [dropped] = venue.orders_by_label("drop-1")
    assert dropped.state == "filled"  # it exists: only the answer was lost
    [rested] = venue.orders_by_label("rest-1")
    assert (rested.state, rested.cancel_reason) == ("cancelled", "cancel_on_disconnect")


async def test_a_duplicated_label_at_the_venue_is_a_fault(venue, client) -> None:
    await client.call(buy(venue, "dup-1", price=venue.fake.book(BTC).bid - 100))
    venue.place_foreign_order(venue.accounts[CLIENT_ID], "dup-1", BTC)
    result = await client.call(lambda i: t.get_order_state_by_label(i, "BTC", "dup-1"))
    with pytest.raises(t.LabelNotUnique):
        t.parse_order_by_label(result, "dup-1")
    assert venue.duplicate_labels() == {"dup-1": 2}


async def test_duplicated_events_and_a_wipe(venue, client) -> None:
    await client.call(lambda i: t.private_subscribe(i, t.user_channels("BTC")))
    venue.faults.duplicate_events = True
    await client.call(buy(venue, "e-1", price=venue.fake.book(BTC).bid - 100))
    orders = [ch for ch, _ in client.notifications if ch.startswith("user.orders.")]
    assert len(orders) == 2 and client.notifications[0] == client.notifications[1]
    venue.wipe()
    assert (
        t.parse_orders(await client.call(lambda i: t.get_order_state_by_label(i, "BTC", "e-1")))
        == []
    )
