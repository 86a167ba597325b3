"""The Binance adapter against FakeBinance over real loopback sockets (and the fake itself)."""

from __future__ import annotations

import asyncio
import json
import math
import signal
import sys
import time
from collections.abc import AsyncIterator, Callable
from decimal import Decimal

import aiohttp
import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.conftest import LoopTurns
from tradingd.adapters.base import (
    ExchangeAdapter,
    RangeUnavailable,
    RateLimited,
    VenueUnavailable,
)
from tradingd.adapters.binance import BinanceAdapter, BinanceMarketDataSession
from tradingd.adapters.binance.http import BinanceRestClient, RequestRejected
from tradingd.adapters.binance.websocket import OutgoingMessageBudget
from tradingd.adapters.registry import load_adapter
from tradingd.adapters.transport import BURST_LIMIT, buffered_frames
from tradingd.config import ExchangeConfig
from tradingd.model import (
    Bar,
    Channel,
    DeadLetter,
    MarketEvent,
    StreamNotice,
    Subscription,
    Ticker,
    Trade,
)
from tradingd.testing.fake_binance import FakeBinance

MINUTE_US = 60_000_000


@pytest.fixture
async def fake() -> AsyncIterator[FakeBinance]:
    venue = FakeBinance(seed=7)
    await venue.start()
    try:
        yield venue
    finally:
        await venue.stop()


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


def make_adapter(
    fake: FakeBinance, http: aiohttp.ClientSession, **settings: object
) -> BinanceAdapter:
    config = ExchangeConfig(
        ws_url=fake.ws_url,
        rest_url=fake.rest_url,
        symbols=["BTCUSDT", "ETHUSDT"],
        **settings,  # type: ignore[arg-type]
    )
    return BinanceAdapter(config, exchange="binance", http=http)


@pytest.fixture
async def adapter(fake: FakeBinance, http: aiohttp.ClientSession) -> AsyncIterator[BinanceAdapter]:
    venue_adapter = make_adapter(fake, http)
    try:
        yield venue_adapter
    finally:
        await venue_adapter.close()


ALL_CHANNELS = [
    Subscription(Channel.TRADES, "BTCUSDT"),
    Subscription(Channel.BARS, "BTCUSDT"),
    Subscription(Channel.TICKERS, "BTCUSDT"),
]


async def collect(
    session: BinanceMarketDataSession, done: Callable[[list[MarketEvent]], bool]
) -> tuple[list[MarketEvent], int]:
    """Records until ``done(records)``; also how many frames (keep-alives included) arrived."""
    records: list[MarketEvent] = []
    frames = 0
    async with asyncio.timeout(10):
        async for batch in session.batches():
            frames += 1
            records.extend(batch)
            if done(records):
                break
    return records, frames


def of_type(records: list[MarketEvent], kind: type) -> list:  # type: ignore[type-arg]
    return [r for r in records if isinstance(r, kind)]


# --- the adapter as a whole --------------------------------------------------------------------


def test_registered_under_its_entry_point(adapter: BinanceAdapter) -> None:
    assert load_adapter("binance") is BinanceAdapter
    assert isinstance(adapter, ExchangeAdapter)
    assert adapter.name == "binance"


async def test_trades_bars_and_tickers_arrive_exactly(
    fake: FakeBinance, adapter: BinanceAdapter
) -> None:
    session = await adapter.connect(ALL_CHANNELS)
    assert "timeUnit=MICROSECOND" in session.url
    assert "streams=btcusdt@trade/btcusdt@kline_1m/btcusdt@bookTicker" in session.url
    for channel in ("trades", "bars", "tickers"):
        await fake.wait_subscribed("BTCUSDT", channel)
    published = fake.publish_trades("BTCUSDT", 5)
    bar = fake.publish_bar("BTCUSDT", closed=True)
    ticker = fake.publish_ticker("BTCUSDT")

    records, _ = await collect(session, lambda r: len(of_type(r, Ticker)) == 1)

    trades = of_type(records, Trade)
    assert [t.trade_seq for t in trades] == [p["t"] for p in published]
    for trade, wire in zip(trades, published, strict=True):
        assert trade.instrument_name == "BTCUSDT"
        assert trade.trade_id == str(wire["t"])
        assert f"{trade.price:f}" == wire["p"]
        assert f"{trade.quantity:f}" == wire["q"]
        assert trade.trade_us == wire["T"]  # microseconds, exactly as the venue sent them
        assert trade.is_buyer_maker is wire["m"]
    (received_bar,) = of_type(records, Bar)
    kline = bar["k"]
    assert isinstance(kline, dict)
    assert received_bar.tick_us == kline["t"]
    assert received_bar.resolution == "1m"
    assert received_bar.closed
    assert f"{received_bar.volume:f}" == kline["v"]
    assert sum(t.quantity for t in trades) == received_bar.volume
    (received_ticker,) = of_type(records, Ticker)
    assert f"{received_ticker.best_bid_price:f}" == ticker["b"]
    assert f"{received_ticker.best_ask_amount:f}" == ticker["A"]
    await session.close()


async def test_bar_resolution_comes_from_the_config(
    fake: FakeBinance, http: aiohttp.ClientSession
) -> None:
    adapter = make_adapter(fake, http, bar_resolution="5m")
    session = await adapter.connect([Subscription(Channel.BARS, "ETHUSDT")])
    assert fake.subscriptions() == [["ethusdt@kline_5m"]]
    await session.close()


async def test_live_subscribe_is_batched_and_kept_under_the_message_limit(
    fake: FakeBinance, adapter: BinanceAdapter
) -> None:
    session = await adapter.connect([])
    many = [Subscription(Channel.TRADES, f"SYM{i}USDT") for i in range(450)]
    reader = asyncio.create_task(collect(session, lambda r: len(of_type(r, StreamNotice)) >= 12))
    await session.subscribe(many)  # 3 SUBSCRIBE messages of at most 200 streams
    for i in range(9):  # then 9 more single-stream messages: beyond 5 in one second
        await session.subscribe([Subscription(Channel.TICKERS, f"SYM{i}USDT")])
    records, _ = await reader

    subscribes = [params for method, params in fake.requests if method == "SUBSCRIBE"]
    assert [len(json.loads(p)) for p in subscribes] == [200, 200, 50] + [1] * 9
    assert fake.disconnects_for_rate == 0
    assert fake.connection_count() == 1
    assert len(fake.subscriptions()[0]) == 459
    assert {n.kind for n in of_type(records, StreamNotice)} == {"subscribed"}

    await session.unsubscribe(many[:10])
    await fake.wait_for(lambda: len(fake.subscriptions()[0]) == 449)
    await session.close()


async def test_connecting_with_more_streams_than_fit_in_the_url(
    fake: FakeBinance, adapter: BinanceAdapter
) -> None:
    wanted = [Subscription(Channel.TRADES, f"S{i}USDT") for i in range(650)]
    session = await adapter.connect(wanted)
    await fake.wait_for(lambda: sum(map(len, fake.subscriptions())) == 650)
    assert session.url.count("@trade") == 100
    subscribes = [len(json.loads(p)) for m, p in fake.requests if m == "SUBSCRIBE"]
    assert subscribes == [200, 200, 150]
    assert fake.disconnects_for_rate == 0
    await session.close()


def test_message_budget_spaces_messages_out() -> None:
    now = [100.0]
    budget = OutgoingMessageBudget(per_window=4, window=1.0, clock=lambda: now[0])
    assert [budget.reserve() for _ in range(6)] == pytest.approx([0, 0.25, 0.5, 0.75, 1.0, 1.25])
    now[0] = 102.5
    assert budget.reserve() == 0.0


@given(st.lists(st.floats(min_value=0, max_value=2), max_size=40))
def test_message_budget_never_allows_more_than_its_share_of_any_window(
    gaps: list[float],
) -> None:
    now = [0.0]
    budget = OutgoingMessageBudget(per_window=4, window=1.0, clock=lambda: now[0])
    send_times = []
    for gap in gaps:
        now[0] += gap
        send_times.append(now[0] + budget.reserve())
    assert send_times == sorted(send_times)
    for i in range(len(send_times) - 4):
        assert send_times[i + 4] - send_times[i] >= 1.0 - 1e-9


async def test_server_pings_are_answered_with_the_same_payload(
    fake: FakeBinance, adapter: BinanceAdapter
) -> None:
    fake.ping_interval = 0.3
    session = await adapter.connect(ALL_CHANNELS[:1])
    reader = asyncio.create_task(collect(session, lambda r: False))
    await fake.wait_for(lambda: fake.pongs_received >= 3)
    assert session.pongs_sent >= 3
    assert fake.disconnects_for_rate == 0
    await session.close()
    records, frames = await reader
    assert records == []  # pings are keep-alives: an empty batch each
    assert frames >= 3


async def test_frames_already_received_are_handed_over_in_one_list(
    fake: FakeBinance, adapter: BinanceAdapter
) -> None:
    session = await adapter.connect(ALL_CHANNELS[:1])
    await fake.wait_subscribed("BTCUSDT", "trades")
    frames_before = session.frames_received
    published = fake.publish_trades("BTCUSDT", 300)

    records, lists = await collect(session, lambda r: len(r) >= 300)

    assert [t.trade_seq for t in of_type(records, Trade)] == [p["t"] for p in published]
    assert session.frames_received - frames_before == 300
    # Published in one go, they arrive in few socket reads: far fewer lists than frames.
    print(f"300 frames in {lists} lists")
    assert lists <= 30
    # Each frame keeps the time its burst was read, in order.
    received = [t.received_us for t in of_type(records, Trade)]
    assert received == sorted(received)
    await session.close()


async def test_the_reader_gives_up_the_loop_between_bursts(
    fake: FakeBinance, adapter: BinanceAdapter
) -> None:
    session = await adapter.connect(ALL_CHANNELS[:1])
    await fake.wait_subscribed("BTCUSDT", "trades")
    loop_turns = LoopTurns()
    marks: list[tuple[int, int]] = []  # (turns counted when a burst is handed over, its size)
    async with loop_turns:
        fake.publish_trades("BTCUSDT", 2000)
        batches = session.batches()
        while sum(size for _, size in marks) < 2000:
            batch = await anext(batches)
            if batch:
                marks.append((loop_turns.count, len(batch)))
    assert max(size for _, size in marks) <= BURST_LIMIT
    # Other work ran between every two bursts, even those read from one socket read.
    assert len({turn for turn, _ in marks}) == len(marks), marks
    await session.close()


def test_burst_size_falls_back_to_one_frame_without_the_reader_buffer() -> None:
    assert buffered_frames(object()) == 0  # type: ignore[arg-type]


async def test_several_connections_when_over_the_stream_limit(
    fake: FakeBinance, http: aiohttp.ClientSession
) -> None:
    adapter = make_adapter(fake, http, max_streams_per_connection=2)
    subscriptions = [
        Subscription(Channel.TRADES, "BTCUSDT"),
        Subscription(Channel.TICKERS, "BTCUSDT"),
        Subscription(Channel.TRADES, "ETHUSDT"),
        Subscription(Channel.TRADES, "ETHUSDT"),  # a duplicate: one stream
        Subscription(Channel.BARS, "ETHUSDT"),
    ]
    plan = adapter.plan_connections(subscriptions)
    assert [len(group) for group in plan] == [2, 2]
    sessions = [await adapter.connect(group) for group in plan]
    assert fake.connection_count() == 2
    await fake.wait_subscribed("ETHUSDT", "bars")
    with pytest.raises(ValueError, match="limit is 2"):
        await sessions[0].subscribe([Subscription(Channel.BARS, "BTCUSDT")])
    await adapter.close()
    await fake.wait_for(lambda: fake.connection_count() == 0)

    default = make_adapter(fake, http)
    wide = [Subscription(Channel.TRADES, f"S{i}USDT") for i in range(2500)]
    assert [len(group) for group in default.plan_connections(wide)] == [1024, 1024, 452]


async def test_server_shutdown_becomes_a_notice(fake: FakeBinance, adapter: BinanceAdapter) -> None:
    session = await adapter.connect(ALL_CHANNELS[:1])
    await fake.wait_subscribed("BTCUSDT", "trades")
    fake.send_server_shutdown()
    records, _ = await collect(session, lambda r: bool(r))
    (notice,) = records
    assert isinstance(notice, StreamNotice)
    assert notice.kind == "server_shutdown"
    await session.close()


async def test_poison_frames_become_dead_letters_and_the_stream_goes_on(
    fake: FakeBinance, adapter: BinanceAdapter
) -> None:
    session = await adapter.connect(ALL_CHANNELS[:1])
    await fake.wait_subscribed("BTCUSDT", "trades")
    poison = (
        b'{"stream":"btcusdt@trade","data":{"e":"trade","E":1,"s":"BTCUSDT","t":1,"p":"abc",'
        b'"q":"1","T":1767225600000000,"m":true,"M":true}}'
    )
    fake.inject_raw(poison)
    fake.inject_raw("not json at all")
    fake.inject_raw('{"code": 2, "msg": "Invalid request", "id": 99}')
    fake.inject_raw('{"stream":"btcusdt@depth@100ms","data":{}}')
    published = fake.publish_trades("BTCUSDT", 2)

    records, _ = await collect(session, lambda r: len(of_type(r, Trade)) == 2)

    first, second = of_type(records, DeadLetter)
    assert first.source == "ws:btcusdt@trade"
    assert first.payload == poison
    assert first.error == "trade price 'abc' is not a positive decimal number in [1e-20, 1e20)"
    assert first.exchange == "binance"
    assert second.source == f"ws:{fake.ws_url}/stream"
    assert second.payload == b"not json at all"
    (error,) = of_type(records, StreamNotice)
    assert error.kind == "error"
    assert "Invalid request" in error.detail
    assert [t.trade_seq for t in of_type(records, Trade)] == [p["t"] for p in published]
    assert session.parser.ignored == {"depth@100ms": 1}
    await session.close()


# Texts float() reads (or almost) that are no plain in-range decimal.
NOT_AMOUNTS = ["1_0", "\u0661", "nan", "0", "-1", "1e400", "1" * 65]


async def test_prices_that_are_no_plain_decimal_become_dead_letters_naming_the_text(
    fake: FakeBinance, adapter: BinanceAdapter
) -> None:
    session = await adapter.connect(ALL_CHANNELS[:1])
    await fake.wait_subscribed("BTCUSDT", "trades")
    poisons = [
        b'{"stream":"btcusdt@trade","data":{"e":"trade","E":1,"s":"BTCUSDT","t":1,"p":%s,'
        b'"q":"1","T":1767225600000000,"m":true,"M":true}}' % json.dumps(text).encode()
        for text in NOT_AMOUNTS
    ]
    for poison in poisons:
        fake.inject_raw(poison)
    published = fake.publish_trades("BTCUSDT", 1)

    records, _ = await collect(session, lambda r: len(of_type(r, Trade)) == 1)

    letters = of_type(records, DeadLetter)
    assert [letter.payload for letter in letters] == poisons
    assert [letter.error for letter in letters] == [
        f"trade price {text!r} is not a positive decimal number in [1e-20, 1e20)"
        for text in NOT_AMOUNTS
    ]
    assert {letter.source for letter in letters} == {"ws:btcusdt@trade"}
    assert [t.trade_seq for t in of_type(records, Trade)] == [p["t"] for p in published]
    await session.close()


async def test_unsubscribe_response_is_named(fake: FakeBinance, adapter: BinanceAdapter) -> None:
    session = await adapter.connect([])
    await session.subscribe(ALL_CHANNELS[:1])
    await session.unsubscribe(ALL_CHANNELS[:1])
    records, _ = await collect(session, lambda r: len(r) == 2)
    assert [n.kind for n in of_type(records, StreamNotice)] == ["subscribed", "unsubscribed"]
    assert fake.subscriptions() == [[]]
    await session.close()


async def test_connection_end_ends_the_batches(fake: FakeBinance, adapter: BinanceAdapter) -> None:
    session = await adapter.connect(ALL_CHANNELS[:1])
    await fake.wait_subscribed("BTCUSDT", "trades")
    reader = asyncio.create_task(collect(session, lambda r: False))
    await fake.abort_connections()
    await reader
    assert fake.connection_count() == 0


async def test_connect_failure_is_venue_unavailable(http: aiohttp.ClientSession) -> None:
    venue = FakeBinance()
    await venue.start()
    config = ExchangeConfig(ws_url=venue.ws_url, rest_url=venue.rest_url, request_timeout=2)
    await venue.stop()
    adapter = BinanceAdapter(config, exchange="binance", http=http)
    with pytest.raises(VenueUnavailable):
        await adapter.connect(ALL_CHANNELS)
    with pytest.raises(VenueUnavailable):
        await adapter.fetch_server_time_us()


# --- REST --------------------------------------------------------------------------------------


async def test_fetch_instruments(adapter: BinanceAdapter) -> None:
    instruments = {i.instrument_name: i for i in await adapter.fetch_instruments()}
    assert {"BTCUSDT", "ETHUSDT"} <= instruments.keys()
    btc = instruments["BTCUSDT"]
    assert (btc.base_currency, btc.quote_currency) == ("BTC", "USDT")
    assert btc.tick_size == Decimal("0.01")
    assert btc.min_trade_amount == Decimal("0.00001")
    assert btc.min_notional == Decimal(5)
    assert btc.is_active
    assert [i.instrument_name for i in instruments.values() if not i.is_active] == ["LUNAUSDT"]
    assert json.loads(btc.raw)["symbol"] == "BTCUSDT"


async def test_server_time_follows_the_venue_clock(
    fake: FakeBinance, adapter: BinanceAdapter
) -> None:
    fake.clock_offset_ms = 5_000
    before = time.time_ns() // 1000
    server_us = await adapter.fetch_server_time_us()
    after = time.time_ns() // 1000
    assert before + 5_000_000 <= server_us <= after + 5_000_000


async def test_fetch_trades_returns_the_tape_including_undelivered_trades(
    fake: FakeBinance, adapter: BinanceAdapter
) -> None:
    fake.publish_trades("BTCUSDT", 10)
    held_back = fake.publish_trades("BTCUSDT", 20, deliver=False)
    tape = fake.tape("BTCUSDT")
    first, last = held_back[0]["t"], held_back[-1]["t"]
    assert isinstance(first, int) and isinstance(last, int)

    trades = await adapter.fetch_trades("BTCUSDT", first, last)

    assert [t.trade_seq for t in trades] == list(range(first, last + 1))
    for trade, wire in zip(trades, held_back, strict=True):
        assert f"{trade.price:f}" == wire["p"]
        assert f"{trade.quantity:f}" == wire["q"]
        assert trade.trade_us == wire["T"]
        assert trade.is_buyer_maker is wire["m"]
    assert fake.requests[-1] == (
        "GET",
        f"/api/v3/historicalTrades?symbol=BTCUSDT&fromId={first}&limit=20",
    )
    assert len(tape) == 30
    assert await adapter.fetch_trades("BTCUSDT", last + 1, last + 50) == []


async def test_fetch_trades_pages_are_at_most_1000(
    fake: FakeBinance, adapter: BinanceAdapter
) -> None:
    published = fake.publish_trades("ETHUSDT", 1500, deliver=False)
    first = published[0]["t"]
    assert isinstance(first, int)
    page = await adapter.fetch_trades("ETHUSDT", first, first + 1499)
    assert len(page) == 1000
    assert page[-1].trade_seq == first + 999


async def test_fetch_trades_of_a_range_no_longer_served(
    fake: FakeBinance, adapter: BinanceAdapter
) -> None:
    published = fake.publish_trades("BTCUSDT", 10, deliver=False)
    first = published[0]["t"]
    assert isinstance(first, int)
    fake.forget_trades_before("BTCUSDT", first + 4)
    with pytest.raises(RangeUnavailable, match=f"oldest available id is {first + 4}"):
        await adapter.fetch_trades("BTCUSDT", first, first + 9)
    assert len(await adapter.fetch_trades("BTCUSDT", first + 4, first + 9)) == 6


async def test_fetch_bars_returns_closed_bars_from_the_tape(
    fake: FakeBinance, adapter: BinanceAdapter
) -> None:
    fake.clock_offset_ms = -3 * 60_000  # trades three minutes ago
    published = fake.publish_trades("BTCUSDT", 25, deliver=False)
    fake.clock_offset_ms = 0
    trade_minute = published[0]["T"]
    assert isinstance(trade_minute, int)
    trade_minute -= trade_minute % MINUTE_US
    now = time.time_ns() // 1000

    bars = await adapter.fetch_bars("BTCUSDT", "1m", now - 10 * MINUTE_US, now)

    assert bars and all(b.closed and b.resolution == "1m" for b in bars)
    assert [b.tick_us for b in bars] == sorted(b.tick_us for b in bars)
    assert all(now - 10 * MINUTE_US <= b.tick_us <= now for b in bars)
    assert bars[-1].tick_us + MINUTE_US <= now  # the open bar is left out
    (from_tape,) = [b for b in bars if b.tick_us == trade_minute]
    assert from_tape.volume == sum(Decimal(str(p["q"])) for p in published)
    assert from_tape.close == Decimal(str(published[-1]["p"]))
    assert ("GET", "/api/v3/klines") in [(m, p.split("?")[0]) for m, p in fake.requests]


async def test_fetch_bars_in_a_long_past_range(adapter: BinanceAdapter) -> None:
    start = 1_767_225_600_000_000  # 2026-01-01
    bars = await adapter.fetch_bars("ETHUSDT", "1h", start, start + 10 * 3600 * 1_000_000)
    assert [b.tick_us for b in bars] == [start + h * 3600 * 1_000_000 for h in range(11)]
    assert all(b.low <= b.open <= b.high and b.volume >= 0 for b in bars)


async def test_429_raises_rate_limited_and_nothing_is_sent_until_retry_after(
    http: aiohttp.ClientSession,
) -> None:
    venue = FakeBinance(weight_limit=30, weight_window=1e9)
    await venue.start()
    try:
        adapter = make_adapter(venue, http)
        published = venue.publish_trades("BTCUSDT", 5, deliver=False)
        first = published[0]["t"]
        assert isinstance(first, int)
        assert len(await adapter.fetch_trades("BTCUSDT", first, first + 4)) == 5
        with pytest.raises(RateLimited) as limited:
            await adapter.fetch_trades("BTCUSDT", first, first + 4)
        assert limited.value.retry_after > 60
        sent = len(venue.requests)
        with pytest.raises(RateLimited):
            await adapter.fetch_server_time_us()
        assert len(venue.requests) == sent  # honouring Retry-After: no 418 ban
    finally:
        await venue.stop()


async def test_retry_after_of_418_and_5xx_and_rejections(
    fake: FakeBinance, adapter: BinanceAdapter, http: aiohttp.ClientSession
) -> None:
    fake.inject_http_error(503)
    with pytest.raises(VenueUnavailable) as unavailable:
        await adapter.fetch_server_time_us()
    assert not isinstance(unavailable.value, RateLimited)
    with pytest.raises(RequestRejected, match="-1121") as rejected:
        await adapter.fetch_trades("NOSUCHSYMBOL", 1, 2)
    assert rejected.value.code == -1121
    fake.inject_http_error(418, retry_after=3)
    with pytest.raises(RateLimited) as banned:
        await adapter.fetch_instruments()
    assert banned.value.retry_after == 3


async def test_slow_responses_are_venue_unavailable(
    fake: FakeBinance, http: aiohttp.ClientSession
) -> None:
    adapter = make_adapter(fake, http, request_timeout=0.2)
    fake.http_delay = 1.0
    with pytest.raises(VenueUnavailable, match="Timeout"):
        await adapter.fetch_server_time_us()


async def test_client_slows_down_before_the_weight_limit(http: aiohttp.ClientSession) -> None:
    venue = FakeBinance(weight_limit=100, weight_window=1e9)
    await venue.start()
    mid_minute = (time.time() // 60) * 60 + 30
    try:
        client = BinanceRestClient(
            http,
            venue.rest_url,
            exchange="binance",
            request_timeout=5,
            wall_clock=lambda: mid_minute,
        )
        await client.exchange_info()  # 20; learns the venue's limit of 100
        assert client.weight_per_minute == 100
        venue.publish_trades("BTCUSDT", 1, deliver=False)
        first = venue.tape("BTCUSDT")[0]["t"]
        assert isinstance(first, int)
        await client.historical_trades("BTCUSDT", first, 1)  # 45
        await client.historical_trades("BTCUSDT", first, 1)  # 70
        sent = len(venue.requests)
        with pytest.raises(RateLimited, match="slowing down") as limited:
            await client.historical_trades("BTCUSDT", first, 1)  # would be 95 > 80
        assert len(venue.requests) == sent
        assert limited.value.retry_after == pytest.approx(30)
    finally:
        await venue.stop()


# --- the fake's own protocol behaviour ---------------------------------------------------------


async def test_fake_raw_stream_in_milliseconds(
    fake: FakeBinance, http: aiohttp.ClientSession
) -> None:
    async with http.ws_connect(f"{fake.ws_url}/ws/btcusdt@trade") as ws:
        await fake.wait_subscribed("BTCUSDT", "trades")
        (published,) = fake.publish_trades("BTCUSDT", 1)
        frame = json.loads(await ws.receive_str())
        assert "stream" not in frame
        assert frame["t"] == published["t"]
        assert frame["T"] == published["T"] // 1000  # type: ignore[operator]

        await ws.send_str('{"method":"SET_PROPERTY","params":["combined",true],"id":1}')
        assert json.loads(await ws.receive_str()) == {"result": None, "id": 1}
        await ws.send_str('{"method":"LIST_SUBSCRIPTIONS","id":"a2"}')
        assert json.loads(await ws.receive_str()) == {"result": ["btcusdt@trade"], "id": "a2"}
        await ws.send_str('{"method":"GET_PROPERTY","params":["combined"],"id":3}')
        assert json.loads(await ws.receive_str()) == {"result": True, "id": 3}
        (published,) = fake.publish_trades("BTCUSDT", 1)
        frame = json.loads(await ws.receive_str())
        assert frame["stream"] == "btcusdt@trade"
        assert frame["data"]["t"] == published["t"]


async def test_fake_answers_bad_requests_with_error_frames(
    fake: FakeBinance, http: aiohttp.ClientSession
) -> None:
    async with http.ws_connect(f"{fake.ws_url}/stream") as ws:
        await ws.send_str('{"method":"SUBSCRIBE","params":["BTCUSDT@trade"],"id":1}')
        reply = json.loads(await ws.receive_str())
        assert reply["code"] == 2 and reply["id"] == 1
        await ws.send_str('{"method":"NOPE","id":2}')
        reply = json.loads(await ws.receive_str())
        assert reply["code"] == 2 and "unknown variant `NOPE`" in reply["msg"]
        await ws.send_str("{oops")
        assert json.loads(await ws.receive_str())["code"] == 3
        await ws.send_str('{"method":"SET_PROPERTY","params":["colour",1],"id":4}')
        assert json.loads(await ws.receive_str()) == {
            "code": 0,
            "msg": "Unknown property",
            "id": 4,
        }


async def test_fake_disconnects_a_client_sending_too_fast(
    fake: FakeBinance, http: aiohttp.ClientSession
) -> None:
    async with http.ws_connect(f"{fake.ws_url}/stream") as ws:
        for i in range(7):
            await ws.send_str(json.dumps({"method": "LIST_SUBSCRIPTIONS", "id": i}))
        async with asyncio.timeout(5):
            while (await ws.receive()).type is aiohttp.WSMsgType.TEXT:
                pass
    assert fake.disconnects_for_rate == 1
    await fake.wait_for(lambda: fake.connection_count() == 0)


async def test_fake_drops_a_client_that_never_answers_pings(
    http: aiohttp.ClientSession,
) -> None:
    venue = FakeBinance(ping_interval=0.1, pong_timeout=0.25)
    await venue.start()
    try:
        async with http.ws_connect(f"{venue.ws_url}/stream", autoping=False) as ws:
            async with asyncio.timeout(5):
                while (await ws.receive()).type is aiohttp.WSMsgType.PING:
                    pass
            assert ws.close_code == 1008
    finally:
        await venue.stop()


async def test_fake_refuses_too_many_streams(
    fake: FakeBinance, http: aiohttp.ClientSession
) -> None:
    fake.max_streams_per_connection = 3
    streams = "/".join(f"s{i}usdt@trade" for i in range(4))
    with pytest.raises(aiohttp.WSServerHandshakeError):
        await http.ws_connect(f"{fake.ws_url}/stream?streams={streams}")
    async with http.ws_connect(f"{fake.ws_url}/stream") as ws:
        params = [f"s{i}usdt@trade" for i in range(4)]
        await ws.send_str(json.dumps({"method": "SUBSCRIBE", "params": params, "id": 1}))
        assert json.loads(await ws.receive_str())["code"] == 2


async def test_fake_stream_trades_paces_and_counts(fake: FakeBinance) -> None:
    count = await fake.stream_trades("ETHUSDT", rate_per_s=2000, duration=0.25)
    assert count == 500
    assert len(fake.tape("ETHUSDT")) == 500
    ids = [int(str(t["t"])) for t in fake.tape("ETHUSDT")]
    assert ids == list(range(ids[0], ids[0] + 500))


async def test_fake_is_deterministic_per_seed() -> None:
    def prices(seed: int) -> list[object]:
        venue = FakeBinance(seed=seed)
        return [(t["p"], t["q"], t["m"]) for t in venue.publish_trades("BTCUSDT", 20)]

    assert prices(3) == prices(3)
    assert prices(3) != prices(4)


async def test_fake_runs_standalone(http: aiohttp.ClientSession) -> None:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "tradingd.testing.fake_binance",
        "--port",
        "0",
        "--trades-per-second",
        "200",
        stdout=asyncio.subprocess.PIPE,
    )
    try:
        assert process.stdout is not None
        async with asyncio.timeout(20):
            urls = json.loads(await process.stdout.readline())
            config = ExchangeConfig(ws_url=urls["ws_url"], rest_url=urls["rest_url"])
            adapter = BinanceAdapter(config, exchange="binance", http=http)
            session = await adapter.connect(ALL_CHANNELS)
            records, _ = await collect(
                session,
                lambda r: bool(of_type(r, Trade)) and bool(of_type(r, Ticker)),
            )
            await session.close()
            assert math.isfinite(float(of_type(records, Trade)[0].price))
    finally:
        process.send_signal(signal.SIGTERM)
        assert await process.wait() == 0
