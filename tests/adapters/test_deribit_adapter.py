"""DeribitAdapter against FakeDeribit over real loopback sockets (WebSocket and HTTP)."""

from __future__ import annotations

import asyncio
import json
import signal
import sys
from collections.abc import AsyncIterator
from decimal import Decimal
from typing import Any

import aiohttp
import msgspec
import pytest

from tradingd.adapters.base import (
    ExchangeAdapter,
    RangeUnavailable,
    RateLimited,
    VenueUnavailable,
)
from tradingd.adapters.deribit import DeribitAdapter, DeribitSession, TradesNotServed
from tradingd.adapters.registry import load_adapter
from tradingd.config import ExchangeConfig
from tradingd.model import (
    Bar,
    Channel,
    DeadLetter,
    MarketEvent,
    MarketType,
    StreamNotice,
    Subscription,
    Ticker,
    Trade,
)
from tradingd.testing.fake_deribit import CreditPool, FakeDeribit

WAIT = 10.0


@pytest.fixture
async def fake() -> AsyncIterator[FakeDeribit]:
    server = FakeDeribit(seed=7)
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


def make_config(fake: FakeDeribit, **overrides: Any) -> ExchangeConfig:
    settings: dict[str, Any] = {
        "ws_url": fake.ws_url,
        "rest_url": fake.rest_url,
        "symbols": list(fake.instruments),
        "currencies": ["BTC", "ETH"],
        "request_timeout": 5.0,
    }
    settings.update(overrides)
    return msgspec.convert(settings, ExchangeConfig)


@pytest.fixture
def adapter(fake: FakeDeribit, http: aiohttp.ClientSession) -> DeribitAdapter:
    return DeribitAdapter(make_config(fake), exchange="deribit", http=http)


class Stream:
    """One consumer of a session's batches, with a deadline on every wait."""

    def __init__(self, session: DeribitSession) -> None:
        self.session = session
        self._batches = session.batches()

    async def next_batch(self) -> list[MarketEvent]:
        async with asyncio.timeout(WAIT):
            return await anext(self._batches)

    async def collect(self, kind: type[Any], count: int) -> list[Any]:
        """The next ``count`` events of this type (skipping others)."""
        found: list[Any] = []
        while len(found) < count:
            found.extend(e for e in await self.next_batch() if isinstance(e, kind))
        return found

    async def ended(self) -> bool:
        try:
            async with asyncio.timeout(WAIT):
                async for _ in self._batches:
                    pass
        except TimeoutError:
            return False
        return True

    async def close(self) -> None:
        await self._batches.aclose()  # type: ignore[attr-defined]
        await self.session.close()


@pytest.fixture
async def open_stream(
    adapter: DeribitAdapter,
) -> AsyncIterator[Any]:
    streams: list[Stream] = []

    async def opener(subscriptions: list[Subscription]) -> Stream:
        stream = Stream(await adapter.connect(subscriptions))
        streams.append(stream)
        return stream

    yield opener
    for stream in streams:
        await stream.close()


def all_channels(instrument: str) -> list[Subscription]:
    return [Subscription(channel, instrument) for channel in Channel]


def check_against_wire(trade: Trade, wire: dict[str, Any]) -> None:
    assert trade.trade_id == wire["trade_id"]
    assert trade.trade_seq == wire["trade_seq"]
    assert trade.price == wire["price"] and trade.quantity == wire["amount"]
    assert trade.is_buyer_maker is (wire["direction"] == "sell")
    assert trade.trade_us == wire["timestamp"] * 1000


# ---------------------------------------------------------------------------- adapter shape


def test_registered_under_its_entry_point(adapter: DeribitAdapter) -> None:
    assert load_adapter("deribit") is DeribitAdapter
    assert isinstance(adapter, ExchangeAdapter)


def test_plan_connections_respects_the_stream_limit(
    fake: FakeDeribit, http: aiohttp.ClientSession
) -> None:
    limited = DeribitAdapter(
        make_config(fake, max_streams_per_connection=4), exchange="deribit", http=http
    )
    subscriptions = [s for name in fake.instruments for s in all_channels(name)]
    plan = limited.plan_connections(subscriptions + subscriptions[:3])
    assert [len(group) for group in plan] == [4, 4, 4]
    assert sorted({s for group in plan for s in group}, key=str) == sorted(
        set(subscriptions), key=str
    )
    assert limited.plan_connections([]) == []


def test_four_hour_bars_are_refused_up_front(
    fake: FakeDeribit, http: aiohttp.ClientSession
) -> None:
    with pytest.raises(ValueError, match="4h"):
        DeribitAdapter(make_config(fake, bar_resolution="4h"), exchange="deribit", http=http)


# ---------------------------------------------------------------------------- market data


async def test_subscribes_in_one_call_and_receives_multi_trade_frames(
    fake: FakeDeribit, open_stream: Any
) -> None:
    subscriptions = [s for name in fake.instruments for s in all_channels(name)]
    stream = await open_stream(subscriptions)
    subscribe_calls = [r for r in fake.requests if r[0] == "public/subscribe"]
    assert len(subscribe_calls) == 1
    assert ("public/set_heartbeat", '{"interval": 30}') in fake.requests
    (subscribed,) = await stream.collect(StreamNotice, 1)
    assert subscribed.kind == "subscribed"
    assert set(subscribed.detail.split(", ")) == stream.session.channels
    assert "chart.trades.BTC-PERPETUAL.1" in stream.session.channels

    fake.trades_per_frame = 10
    frames_before = stream.session.frames_received
    wire = fake.publish_trades("BTC-PERPETUAL", 25)
    trades = await stream.collect(Trade, 25)
    # Three notifications of 10, 10 and 5, handed over in as few lists as were received.
    assert stream.session.frames_received - frames_before == 3
    assert [t.trade_seq for t in trades] == list(range(1, 26))
    for trade, sent in zip(trades, wire, strict=True):
        assert isinstance(trade, Trade)
        assert trade.market_type is MarketType.PERPETUAL
        check_against_wire(trade, sent)
    assert fake.tape("BTC-PERPETUAL") == wire

    fake.publish_trades(fake.instruments[3], 1)
    (option_trade,) = await stream.next_batch()
    assert isinstance(option_trade, Trade) and option_trade.market_type is MarketType.OPTION


async def test_bars_are_closed_when_the_next_period_starts(
    fake: FakeDeribit, open_stream: Any
) -> None:
    stream = await open_stream([Subscription(Channel.BARS, "ETH-PERPETUAL")])
    first = fake.publish_bar("ETH-PERPETUAL", closed=False)
    last = fake.publish_bar("ETH-PERPETUAL", closed=True)
    fake.publish_bar("ETH-PERPETUAL", closed=False)
    bars = await stream.collect(Bar, 4)
    assert [(b.tick_us // 1000, b.closed) for b in bars] == [
        (first["tick"], False),
        (last["tick"], False),
        (last["tick"], True),
        (last["tick"] + 60_000, False),  # type: ignore[operator]
    ]
    final = bars[2]
    assert (final.open, final.high, final.low, final.close, final.volume) == (
        last["open"],
        last["high"],
        last["low"],
        last["close"],
        last["volume"],
    )
    assert final.resolution == "1m" and final.instrument_name == "ETH-PERPETUAL"


async def test_tickers(fake: FakeDeribit, open_stream: Any) -> None:
    option = fake.instruments[3]
    stream = await open_stream([Subscription(Channel.TICKERS, option)])
    sent = fake.publish_ticker(option)
    (ticker,) = await stream.collect(Ticker, 1)
    assert ticker.instrument_name == option
    assert ticker.best_bid_price == sent["best_bid_price"]
    assert ticker.best_ask_amount == sent["best_ask_amount"]
    assert ticker.mark_price == sent["mark_price"] and ticker.index_price == sent["index_price"]
    assert ticker.timestamp_us == sent["timestamp"] * 1000  # type: ignore[operator]


async def test_poison_frame_becomes_a_dead_letter_and_the_stream_goes_on(
    fake: FakeDeribit, open_stream: Any
) -> None:
    stream = await open_stream([Subscription(Channel.TRADES, "BTC-PERPETUAL")])
    await stream.collect(StreamNotice, 1)
    poison = (
        '{"jsonrpc":"2.0","method":"subscription","params":{"channel":'
        '"trades.BTC-PERPETUAL.100ms","data":[{"trade_id":"1","amount":-5}]}}'
    )
    fake.inject_raw(poison)
    fake.inject_raw(b"\x00 not json")
    fake.publish_trades("BTC-PERPETUAL", 2)
    events: list[MarketEvent] = []
    while sum(isinstance(e, Trade) for e in events) < 2:
        events += await stream.next_batch()
    letter, garbage, *trades = events
    assert isinstance(letter, DeadLetter)
    assert letter.source == "ws:trades.BTC-PERPETUAL.100ms"
    assert letter.payload == poison.encode()
    assert "trade schema" in letter.error
    assert isinstance(garbage, DeadLetter) and garbage.source == f"ws:{fake.ws_url}"
    assert [t.trade_seq for t in trades] == [1, 2]


async def test_unknown_notifications_yield_empty_batches(
    fake: FakeDeribit, open_stream: Any
) -> None:
    stream = await open_stream([Subscription(Channel.TRADES, "BTC-PERPETUAL")])
    await stream.collect(StreamNotice, 1)
    fake.inject_raw(
        '{"jsonrpc":"2.0","method":"subscription","params":{"channel":'
        '"deribit_price_index.btc_usd","data":{"timestamp":1,"price":6521.17,"index_name":"btc_usd"}}}'
    )
    assert await stream.next_batch() == []


async def test_rpc_errors_and_refused_channels_become_error_notices(
    fake: FakeDeribit, open_stream: Any
) -> None:
    stream = await open_stream(
        [Subscription(Channel.TRADES, "BTC-PERPETUAL"), Subscription(Channel.TRADES, "NOPE-1")]
    )
    subscribed, refused = await stream.collect(StreamNotice, 2)
    assert subscribed.kind == "subscribed" and subscribed.detail == "trades.BTC-PERPETUAL.100ms"
    assert refused.kind == "error" and "trades.NOPE-1.100ms" in refused.detail
    fake.inject_raw(
        '{"jsonrpc":"2.0","id":999,"error":{"code":11050,"message":"bad_request"},'
        '"usIn":1,"usOut":2,"usDiff":1,"testnet":false}'
    )
    (notice,) = await stream.collect(StreamNotice, 1)
    assert notice.kind == "error" and notice.detail.startswith("11050 bad_request")


async def test_unsubscribe_and_resubscribe_while_streaming(
    fake: FakeDeribit, open_stream: Any
) -> None:
    stream = await open_stream([Subscription(Channel.TRADES, "BTC-PERPETUAL")])
    await stream.collect(StreamNotice, 1)
    await stream.session.subscribe([Subscription(Channel.TRADES, "ETH-PERPETUAL")])
    (notice,) = await stream.collect(StreamNotice, 1)
    assert notice.kind == "subscribed" and notice.detail == "trades.ETH-PERPETUAL.100ms"
    await stream.session.unsubscribe([Subscription(Channel.TRADES, "BTC-PERPETUAL")])
    (notice,) = await stream.collect(StreamNotice, 1)
    assert notice.kind == "unsubscribed"
    fake.publish_trades("BTC-PERPETUAL", 1)
    fake.publish_trades("ETH-PERPETUAL", 1)
    (trade,) = await stream.collect(Trade, 1)
    assert trade.instrument_name == "ETH-PERPETUAL"


async def test_stream_trades_at_a_high_rate_arrive_complete(
    fake: FakeDeribit, open_stream: Any
) -> None:
    stream = await open_stream([Subscription(Channel.TRADES, "BTC-PERPETUAL")])
    await stream.collect(StreamNotice, 1)
    fake.trades_per_frame = 100
    published = await fake.stream_trades("BTC-PERPETUAL", 20_000, 0.25)
    assert published == 5000
    trades = await stream.collect(Trade, published)
    assert [t.trade_seq for t in trades] == list(range(1, published + 1))


# ---------------------------------------------------------------------------- heartbeats


async def test_test_requests_are_answered_and_keep_the_connection(
    fake: FakeDeribit, open_stream: Any
) -> None:
    fake.heartbeat_period = 0.05
    fake.heartbeat_grace = 2.0
    stream = await open_stream([Subscription(Channel.TRADES, "BTC-PERPETUAL")])
    await stream.collect(StreamNotice, 1)
    # Every test_request is one (empty) batch, and so is each public/test reply.
    empty = 0
    while empty < 8:
        if await stream.next_batch() == []:
            empty += 1
    assert sum(1 for method, _ in fake.requests if method == "public/test") >= 3
    assert fake.connection_count() == 1


async def test_fake_closes_a_connection_that_does_not_answer(fake: FakeDeribit) -> None:
    fake.heartbeat_period = 0.05
    fake.heartbeat_grace = 0.2
    async with aiohttp.ClientSession() as session, session.ws_connect(fake.ws_url) as ws:
        await ws.send_json(
            {
                "jsonrpc": "2.0",
                "id": 1,
                "method": "public/set_heartbeat",
                "params": {"interval": 10},
            }
        )
        async with asyncio.timeout(WAIT):
            reply = json.loads((await ws.receive()).data)
            assert reply["result"] == "ok" and reply["id"] == 1
            assert {"usIn", "usOut", "usDiff", "testnet"} <= reply.keys()
            request = json.loads((await ws.receive()).data)
            assert request == {
                "jsonrpc": "2.0",
                "method": "heartbeat",
                "params": {"type": "test_request"},
            }
            closing = await ws.receive()
        assert closing.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED)


async def test_fake_rejects_short_heartbeats_and_raw_channels(fake: FakeDeribit) -> None:
    async with aiohttp.ClientSession() as session, session.ws_connect(fake.ws_url) as ws:
        await ws.send_json(
            {"jsonrpc": "2.0", "id": 1, "method": "public/set_heartbeat", "params": {"interval": 5}}
        )
        await ws.send_json(
            {
                "jsonrpc": "2.0",
                "id": 2,
                "method": "public/subscribe",
                "params": {"channels": ["trades.BTC-PERPETUAL.raw"]},
            }
        )
        async with asyncio.timeout(WAIT):
            short = json.loads((await ws.receive()).data)
            raw = json.loads((await ws.receive()).data)
    assert short["id"] == 1 and short["error"]["code"] == -32602
    assert short["error"]["data"]["param"] == "interval"
    assert raw["error"] == {
        "code": 13778,
        "message": "raw_subscriptions_not_available_for_unauthorized",
    }


# ---------------------------------------------------------------------------- connection ends


async def test_aborted_connection_ends_the_batches(fake: FakeDeribit, open_stream: Any) -> None:
    stream = await open_stream([Subscription(Channel.TRADES, "BTC-PERPETUAL")])
    await fake.wait_subscribed("BTC-PERPETUAL", "trades")
    assert fake.subscriptions() == [["trades.BTC-PERPETUAL.100ms"]]
    await fake.abort_connections()
    assert fake.connection_count() == 0
    assert await stream.ended()


async def test_server_stop_ends_the_batches(fake: FakeDeribit, open_stream: Any) -> None:
    stream = await open_stream([Subscription(Channel.TICKERS, "BTC-PERPETUAL")])
    await fake.wait_for(lambda: fake.connection_count() == 1)
    await fake.wait_subscribed("BTC-PERPETUAL", "tickers")
    await fake.stop()
    assert await stream.ended()


async def test_connect_failure_is_venue_unavailable(http: aiohttp.ClientSession) -> None:
    closed = FakeDeribit()
    await closed.start()
    config = make_config(closed)
    await closed.stop()
    adapter = DeribitAdapter(config, exchange="deribit", http=http)
    with pytest.raises(VenueUnavailable):
        await adapter.connect([Subscription(Channel.TRADES, "BTC-PERPETUAL")])
    with pytest.raises(VenueUnavailable):
        await adapter.fetch_server_time_us()


async def test_subscribe_out_of_credits_is_rate_limited(
    fake: FakeDeribit, adapter: DeribitAdapter
) -> None:
    fake.credit_pools["subscribe"] = CreditPool(capacity=1000, refill_per_s=0.001)
    with pytest.raises(RateLimited):
        await adapter.connect([Subscription(Channel.TRADES, "BTC-PERPETUAL")])


# ---------------------------------------------------------------------------- HTTP / RPC


async def test_fetch_instruments(fake: FakeDeribit, adapter: DeribitAdapter) -> None:
    fake.add_instrument("BTC_USDC")
    instruments = {i.instrument_name: i for i in await adapter.fetch_instruments()}
    assert set(instruments) == set(fake.instruments)
    perpetual = instruments["BTC-PERPETUAL"]
    future, option = instruments[fake.instruments[2]], instruments[fake.instruments[3]]
    assert perpetual.market_type is MarketType.PERPETUAL and perpetual.expiration_us is None
    assert perpetual.contract_size == 10 and perpetual.tick_size == Decimal("0.5")
    assert future.market_type is MarketType.FUTURE and future.expiration_us
    assert option.market_type is MarketType.OPTION and option.quote_currency == "BTC"
    assert instruments["BTC_USDC"].market_type is MarketType.SPOT
    assert json.loads(option.raw)["option_type"] == "call"
    kinds = sorted(path for method, path in fake.requests if method == "public/get_instruments")
    assert len(kinds) == 6 and all("expired=false" in path for path in kinds)


async def test_fetch_server_time_follows_the_venue_clock(
    fake: FakeDeribit, adapter: DeribitAdapter
) -> None:
    fake.clock_offset_ms = 3_600_000
    before = await adapter.fetch_server_time_us()
    fake.clock_offset_ms = 0
    after = await adapter.fetch_server_time_us()
    assert 3_500_000_000 < before - after < 3_700_000_000


async def test_fetch_trades_serves_held_back_trades_by_sequence(
    fake: FakeDeribit, adapter: DeribitAdapter
) -> None:
    fake.publish_trades("BTC-PERPETUAL", 5)
    held_back = fake.publish_trades("BTC-PERPETUAL", 1500, deliver=False)
    trades = await adapter.fetch_trades("BTC-PERPETUAL", 6, 1505)
    assert len(trades) == 1000
    for trade, wire in zip(trades, held_back, strict=False):
        check_against_wire(trade, wire)
    rest = await adapter.fetch_trades("BTC-PERPETUAL", 1006, 1505)
    assert [t.trade_seq for t in rest] == list(range(1006, 1506))
    (query,) = [p for m, p in fake.requests if m == "public/get_last_trades_by_instrument"][:1]
    assert "start_seq=6" in query and "end_seq=1505" in query and "count=1000" in query
    assert "sorting=asc" in query


async def test_fetch_trades_beyond_retention_is_range_unavailable(
    fake: FakeDeribit, adapter: DeribitAdapter
) -> None:
    fake.publish_trades("ETH-PERPETUAL", 20, deliver=False)
    fake.forget_trades_before("ETH-PERPETUAL", 11)
    with pytest.raises(RangeUnavailable) as caught:
        await adapter.fetch_trades("ETH-PERPETUAL", 5, 15)
    assert isinstance(caught.value, TradesNotServed) and caught.value.first_available_seq == 11
    fake.forget_trades_before("ETH-PERPETUAL", 100)
    with pytest.raises(RangeUnavailable):
        await adapter.fetch_trades("ETH-PERPETUAL", 11, 15)


async def test_fetch_bars_returns_closed_bars(fake: FakeDeribit, adapter: DeribitAdapter) -> None:
    fake.clock_offset_ms = -600_000  # the venue's bars lie ten minutes in the past
    published = [fake.publish_bar("BTC-PERPETUAL", closed=True) for _ in range(3)]
    fake.clock_offset_ms = 0
    fake.publish_bar("BTC-PERPETUAL", closed=False)  # the current bar: not closed yet
    first_tick = published[0]["tick"] * 1000  # type: ignore[operator]
    bars = await adapter.fetch_bars("BTC-PERPETUAL", "1m", first_tick, first_tick + 10 * 60_000_000)
    assert [b.tick_us // 1000 for b in bars] == [p["tick"] for p in published]
    assert all(b.closed for b in bars)
    assert [b.close for b in bars] == [p["close"] for p in published]
    assert [b.volume for b in bars] == [p["volume"] for p in published]


async def test_http_rate_limit_waits_and_retries(
    fake: FakeDeribit, adapter: DeribitAdapter
) -> None:
    fake.credit_pools["default"] = CreditPool(capacity=500, refill_per_s=20_000)
    await adapter.fetch_server_time_us()
    await adapter.fetch_server_time_us()  # the fake's pool is empty: 10028, wait, retry
    assert sum(1 for m, _ in fake.requests if m == "public/get_time") >= 3


async def test_http_rate_limit_gives_up_with_rate_limited(
    fake: FakeDeribit, adapter: DeribitAdapter
) -> None:
    fake.credit_pools["default"] = CreditPool(capacity=500, refill_per_s=0.001)
    await adapter.fetch_server_time_us()
    with pytest.raises(RateLimited):
        await adapter.fetch_server_time_us()
    fake.inject_http_error(429, count=5, retry_after=0.01)
    fake.credit_pools["default"] = CreditPool(capacity=50_000, refill_per_s=10_000)
    with pytest.raises(RateLimited):
        await adapter.fetch_server_time_us()


async def test_http_server_errors_are_venue_unavailable(
    fake: FakeDeribit, adapter: DeribitAdapter
) -> None:
    fake.inject_http_error(502)
    with pytest.raises(VenueUnavailable) as caught:
        await adapter.fetch_server_time_us()
    assert not isinstance(caught.value, RateLimited)
    assert await adapter.fetch_server_time_us() > 0


async def test_fake_http_speaks_json_rpc(fake: FakeDeribit, http: aiohttp.ClientSession) -> None:
    async with http.get(f"{fake.rest_url}/public/subscribe?channels=x") as response:
        body = await response.json()
    assert response.status == 400
    assert body["error"] == {"code": 10030, "message": "must_be_websocket_request"}
    async with http.post(
        f"{fake.rest_url}/public/get_time",
        json={"jsonrpc": "2.0", "id": 5, "method": "public/get_time", "params": {}},
    ) as response:
        body = await response.json()
    assert body["id"] == 5 and isinstance(body["result"], int) and body["testnet"] is False


# ---------------------------------------------------------------------------- standalone fake


async def test_standalone_fake_runs_until_sigterm(http: aiohttp.ClientSession) -> None:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "tradingd.testing.fake_deribit",
        "--port",
        "0",
        "--trades-per-second",
        "200",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL,
    )
    try:
        assert process.stdout is not None
        async with asyncio.timeout(WAIT):
            urls = json.loads(await process.stdout.readline())
        config = msgspec.convert(
            {"ws_url": urls["ws_url"], "rest_url": urls["rest_url"], "symbols": ["BTC-PERPETUAL"]},
            ExchangeConfig,
        )
        adapter = DeribitAdapter(config, exchange="deribit", http=http)
        stream = Stream(await adapter.connect([Subscription(Channel.TRADES, "BTC-PERPETUAL")]))
        try:
            (trade,) = (await stream.collect(Trade, 1))[:1]
            assert trade.instrument_name == "BTC-PERPETUAL"
        finally:
            await stream.close()
        process.send_signal(signal.SIGTERM)
        async with asyncio.timeout(WAIT):
            assert await process.wait() == 0
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
