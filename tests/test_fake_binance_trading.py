"""The fake Binance venue's trading side, driven through real HTTP and WebSocket on loopback
with the adapter's own request builders and parsers (so each checks the other)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from decimal import Decimal

import aiohttp
import pytest

from tradingd.adapters.binance import trading
from tradingd.adapters.binance.execution_parsing import (
    AccountPosition,
    ApiResponse,
    ExecutionReport,
    StreamTerminated,
    UserEvent,
    classify_error,
    order_counts,
    parse_account,
    parse_my_trades,
    parse_order,
    parse_orders,
    parse_retry_after,
    parse_user_frame,
)
from tradingd.adapters.trading import Classified, Verdict
from tradingd.testing.fake_binance import FakeBinance
from tradingd.testing.fake_binance_trading import FakeBinanceTrading

KEY, SECRET = "test-key-0001", "test-secret-0001"
CREDS = trading.Credentials(KEY, SECRET)
START = {"USDT": "100000", "BTC": "1"}


@pytest.fixture
async def venue() -> AsyncIterator[FakeBinanceTrading]:
    fake = FakeBinance(seed=11)
    desk = FakeBinanceTrading(fake)
    desk.add_account(KEY, SECRET, START)
    await fake.start()
    try:
        yield desk
    finally:
        await fake.stop()


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


def clock(venue: FakeBinanceTrading, recv_window_ms: int = 5000) -> trading.Clock:
    return trading.Clock(timestamp_ms=venue.fake.now_us() // 1000, recv_window_ms=recv_window_ms)


async def send(
    http: aiohttp.ClientSession, venue: FakeBinanceTrading, request: trading.SignedRequest
) -> tuple[int, bytes, dict[str, str]]:
    url = f"{venue.fake.rest_url}{request.target}"
    async with http.request(request.method, url, headers=request.headers) as response:
        return response.status, await response.read(), dict(response.headers)


def failure(status: int, body: bytes, headers: dict[str, str]) -> Classified:
    import json

    error = json.loads(body)
    return classify_error(
        status, error["code"], error["msg"], parse_retry_after(headers.get("Retry-After"))
    )


def limit(venue: FakeBinanceTrading, cid: str, side: trading.Side, price: str, qty: str,
          tif: trading.TimeInForce = "GTC") -> trading.SignedRequest:  # fmt: skip
    return trading.new_order(
        CREDS, clock(venue), symbol="BTCUSDT", side=side, order_type="LIMIT",
        quantity=Decimal(qty), price=Decimal(price), time_in_force=tif, client_order_id=cid,
    )  # fmt: skip


def market(
    venue: FakeBinanceTrading, cid: str, side: trading.Side, qty: str
) -> trading.SignedRequest:
    return trading.new_order(
        CREDS, clock(venue), symbol="BTCUSDT", side=side, order_type="MARKET",
        quantity=Decimal(qty), client_order_id=cid,
    )  # fmt: skip


async def test_a_market_buy_fills_at_the_ask_with_fees_and_balances(venue, http) -> None:
    ask = venue.fake.symbol_rules("BTCUSDT").ask
    status, body, headers = await send(http, venue, market(venue, "m-1", "BUY", "0.01"))
    assert status == 200, body
    order = parse_order(body, "MILLISECOND")
    assert order.status == "FILLED" and order.client_order_id == "m-1"
    [fill] = order.fills
    assert fill.price == ask and fill.quantity == Decimal("0.01")
    assert fill.commission == Decimal("0.00001") and fill.commission_asset == "BTC"
    assert order_counts(headers) == {"10S": 1, "1D": 1}
    status, body, _ = await send(http, venue, trading.account(CREDS, clock(venue)))
    balances = parse_account(body)
    assert balances["BTC"].free == Decimal("1.00999")
    assert balances["USDT"].free == Decimal(100000) - ask * Decimal("0.01")
    assert balances["USDT"].locked == 0
    status, body, _ = await send(
        http, venue, trading.my_trades(CREDS, clock(venue), symbol="BTCUSDT", from_id=0)
    )
    [trade] = parse_my_trades(body, "MILLISECOND")
    assert (trade.trade_id, trade.side, trade.maker) == (fill.trade_id, "BUY", False)


async def test_a_resting_limit_fills_against_the_tape_partially_then_fully(venue, http) -> None:
    bid = venue.fake.symbol_rules("BTCUSDT").bid
    price = bid - Decimal(50)
    status, body, _ = await send(http, venue, limit(venue, "r-1", "BUY", str(price), "0.5"))
    assert status == 200 and parse_order(body, "MILLISECOND").status == "NEW"
    status, body, _ = await send(
        http, venue, trading.open_orders(CREDS, clock(venue), symbol="BTCUSDT")
    )
    assert [o.client_order_id for o in parse_orders(body, "MILLISECOND")] == ["r-1"]
    # Push the tape down through the order's price until it is filled.
    placed = venue.order_by_client_id("r-1")
    assert placed is not None
    rounds = 0
    while placed.status != "FILLED" and rounds < 2000:
        venue.fake._symbols["BTCUSDT"].price_units = int(price * 100) - 1
        venue.fake.publish_trades("BTCUSDT", 1)
        rounds += 1
    assert placed.status == "FILLED" and len(placed.fills) >= 1
    assert all(f.maker and f.price == price for f in placed.fills)
    status, body, _ = await send(
        http,
        venue,
        trading.query_order(CREDS, clock(venue), symbol="BTCUSDT", client_order_id="r-1"),
    )
    queried = parse_order(body, "MILLISECOND")
    assert queried.status == "FILLED" and queried.executed_quantity == Decimal("0.5")


async def test_cancel_and_cancel_all_release_funds(venue, http) -> None:
    low = venue.fake.symbol_rules("BTCUSDT").bid - Decimal(1000)
    for cid in ("c-1", "c-2"):
        status, body, _ = await send(http, venue, limit(venue, cid, "BUY", str(low), "0.1"))
        assert status == 200, body
    status, body, _ = await send(
        http,
        venue,
        trading.cancel_order(CREDS, clock(venue), symbol="BTCUSDT", client_order_id="c-1"),
    )
    cancelled = parse_order(body, "MILLISECOND")
    assert (cancelled.client_order_id, cancelled.status) == ("c-1", "CANCELED")
    status, body, headers = await send(
        http,
        venue,
        trading.cancel_order(CREDS, clock(venue), symbol="BTCUSDT", client_order_id="c-1"),
    )
    assert failure(status, body, headers).verdict is Verdict.NOT_FOUND
    status, body, _ = await send(
        http, venue, trading.cancel_open_orders(CREDS, clock(venue), symbol="BTCUSDT")
    )
    assert [o.client_order_id for o in parse_orders(body, "MILLISECOND")] == ["c-2"]
    status, body, _ = await send(http, venue, trading.account(CREDS, clock(venue)))
    assert parse_account(body)["USDT"] == parse_account(body)["USDT"].__class__(
        Decimal(100000), Decimal(0)
    )


async def test_refusals_are_the_venues_and_classify_as_the_table_says(venue, http) -> None:
    cases = [
        (limit(venue, "bad-tick", "BUY", "100.001", "0.1"), -1013, Verdict.REJECTED),
        (limit(venue, "bad-lot", "BUY", "100", "0.000001"), -1013, Verdict.REJECTED),
        (limit(venue, "poor", "BUY", "50000", "100"), -2010, Verdict.REJECTED),
    ]
    for request, code, verdict in cases:
        status, body, headers = await send(http, venue, request)
        classified = failure(status, body, headers)
        assert (classified.code, classified.verdict) == (code, verdict), body
    low = venue.fake.symbol_rules("BTCUSDT").bid - Decimal(1000)
    assert (await send(http, venue, limit(venue, "dup", "BUY", str(low), "0.1")))[0] == 200
    status, body, headers = await send(http, venue, limit(venue, "dup", "BUY", str(low), "0.1"))
    assert failure(status, body, headers).verdict is Verdict.UNKNOWN  # "Duplicate order sent."
    assert venue.duplicate_client_ids() == {}
    forged = trading.new_order(
        trading.Credentials(KEY, "wrong"), clock(venue), symbol="BTCUSDT", side="BUY",
        order_type="MARKET", quantity=Decimal("0.01"), client_order_id="forged",
    )  # fmt: skip
    status, body, headers = await send(http, venue, forged)
    assert failure(status, body, headers).code == -1022
    stranger = trading.account(trading.Credentials("nobody", SECRET), clock(venue))
    status, body, headers = await send(http, venue, stranger)
    assert failure(status, body, headers).verdict is Verdict.AUTH_FAILED


async def test_clock_skew_is_minus_1021_and_the_same_id_goes_through_after_resync(
    venue, http
) -> None:
    venue.fake.clock_offset_ms = -30_000  # the venue is 30 s behind us
    stale = trading.new_order(
        CREDS, trading.Clock(timestamp_ms=time.time_ns() // 1_000_000), symbol="BTCUSDT",
        side="BUY", order_type="MARKET", quantity=Decimal("0.01"), client_order_id="skew-1",
    )  # fmt: skip
    status, body, headers = await send(http, venue, stale)
    assert failure(status, body, headers).verdict is Verdict.RESEND_AFTER_CLOCK_SYNC
    assert venue.order_by_client_id("skew-1") is None
    status, body, _ = await send(http, venue, market(venue, "skew-1", "BUY", "0.01"))
    assert status == 200 and venue.duplicate_client_ids() == {}


async def test_faults_after_matching_leave_the_order_on_the_venue(venue, http) -> None:
    venue.faults.timeout_after_match = 1
    status, body, headers = await send(http, venue, market(venue, "t-1", "BUY", "0.01"))
    assert (status, failure(status, body, headers).verdict) == (503, Verdict.UNKNOWN)
    assert venue.order_by_client_id("t-1") is not None
    venue.faults.drop_response_after_match = 1
    with pytest.raises(aiohttp.ClientError):
        await send(http, venue, market(venue, "d-1", "BUY", "0.01"))
    dropped = venue.order_by_client_id("d-1")
    assert dropped is not None and dropped.status == "FILLED"
    venue.faults.server_error_before_match = 1
    status, body, headers = await send(http, venue, market(venue, "s-1", "BUY", "0.01"))
    assert (status, failure(status, body, headers).verdict) == (500, Verdict.UNKNOWN)
    assert venue.order_by_client_id("s-1") is None
    assert venue.faults_injected == {
        "timeout_after_match": 1,
        "drop_response_after_match": 1,
        "server_error_before_match": 1,
    }


async def test_not_found_right_after_a_fill(venue, http) -> None:
    venue.faults.not_found_after_fill = 30.0
    assert (await send(http, venue, market(venue, "n-1", "BUY", "0.01")))[0] == 200
    query = trading.query_order(CREDS, clock(venue), symbol="BTCUSDT", client_order_id="n-1")
    status, body, headers = await send(http, venue, query)
    assert failure(status, body, headers).verdict is Verdict.NOT_FOUND
    venue.faults.not_found_after_fill = 0.0
    status, body, _ = await send(http, venue, query)
    assert parse_order(body, "MILLISECOND").status == "FILLED"


async def test_429_and_418_carry_retry_after(venue, http) -> None:
    venue.fake.inject_http_error(429, retry_after=3)
    venue.fake.inject_http_error(418, retry_after=120)
    status, body, headers = await send(http, venue, market(venue, "x-1", "BUY", "0.01"))
    limited = failure(status, body, headers)
    assert (limited.verdict, limited.retry_after) == (Verdict.RATE_LIMITED, 3.0)
    status, body, headers = await send(http, venue, market(venue, "x-1", "BUY", "0.01"))
    banned = failure(status, body, headers)
    assert (banned.verdict, banned.retry_after) == (Verdict.BANNED, 120.0)
    assert venue.orders == []


async def _next_event(ws: aiohttp.ClientWebSocketResponse) -> UserEvent | None:
    message = await asyncio.wait_for(ws.receive(), timeout=5)
    assert message.type is aiohttp.WSMsgType.TEXT, message
    return parse_user_frame(message.data, "MILLISECOND")


async def _subscribe(http, venue) -> aiohttp.ClientWebSocketResponse:
    ws = await http.ws_connect(venue.ws_api_url)
    await ws.send_str(trading.user_stream_subscribe("sub-1", CREDS, venue.fake.now_us() // 1000))
    reply = await _next_event(ws)
    assert isinstance(reply, ApiResponse) and reply.error is None and reply.subscription_id == 0
    return ws


async def test_the_user_stream_reports_orders_fills_and_balances(venue, http) -> None:
    venue.top_size = Decimal("0.004")
    ws = await _subscribe(http, venue)
    try:
        status, _, _ = await send(http, venue, market(venue, "u-1", "BUY", "0.01"))
        assert status == 200
        events = [await _next_event(ws) for _ in range(1 + 3 * 2)]
        reports = [e for e in events if isinstance(e, ExecutionReport)]
        assert [r.execution_type for r in reports] == ["NEW", "TRADE", "TRADE", "TRADE"]
        assert [r.status for r in reports][-1] == "FILLED"
        assert sum(r.fill.quantity for r in reports if r.fill) == Decimal("0.01")
        assert {r.client_order_id for r in reports} == {"u-1"}
        assert sum(isinstance(e, AccountPosition) for e in events) == 3
        venue.terminate_user_streams()
        assert isinstance(await _next_event(ws), StreamTerminated)
    finally:
        await ws.close()


async def test_user_stream_faults_duplicates_and_disconnect_mid_fills(venue, http) -> None:
    venue.top_size = Decimal("0.004")
    ws = await _subscribe(http, venue)
    venue.faults.duplicate_events = True
    assert (await send(http, venue, limit(venue, "dd-1", "BUY", "1", "10")))[0] == 200
    first, second = await _next_event(ws), await _next_event(ws)
    assert first == second and isinstance(first, ExecutionReport)
    venue.faults.duplicate_events = False
    venue.faults.disconnect_user_stream_after = 2
    assert (await send(http, venue, market(venue, "dc-1", "BUY", "0.01")))[0] == 200
    received = []
    while True:
        message = await asyncio.wait_for(ws.receive(), timeout=5)
        if message.type is not aiohttp.WSMsgType.TEXT:
            break
        received.append(parse_user_frame(message.data, "MILLISECOND"))
    assert len(received) < 7  # the rest of the fills were lost with the connection
    assert venue.order_by_client_id("dc-1").status == "FILLED"  # type: ignore[union-attr]
    await ws.close()


async def test_a_bad_user_stream_signature_is_refused(venue, http) -> None:
    ws = await http.ws_connect(venue.ws_api_url)
    try:
        wrong = trading.Credentials(KEY, "not-the-secret")
        await ws.send_str(trading.user_stream_subscribe("s", wrong, venue.fake.now_us() // 1000))
        reply = await _next_event(ws)
        assert isinstance(reply, ApiResponse) and reply.error is not None
        assert reply.error.code == -1022
    finally:
        await ws.close()


async def test_a_testnet_wipe_forgets_every_order(venue, http) -> None:
    assert (await send(http, venue, market(venue, "w-1", "BUY", "0.01")))[0] == 200
    venue.wipe()
    query = trading.query_order(CREDS, clock(venue), symbol="BTCUSDT", client_order_id="w-1")
    status, body, headers = await send(http, venue, query)
    assert failure(status, body, headers).verdict is Verdict.NOT_FOUND
    status, body, _ = await send(http, venue, trading.account(CREDS, clock(venue)))
    assert parse_account(body)["USDT"].free == Decimal(100000)
