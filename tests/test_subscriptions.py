"""The persisted subscription set: the configured symbols with the operator's live changes on
top (real PostgreSQL)."""

from __future__ import annotations

import random

import aiohttp
import asyncpg

from tradingd.actors.receiver import MarketDataOutlets
from tradingd.adapters.binance import BinanceAdapter
from tradingd.config import ExchangeConfig, SupervisorConfig
from tradingd.model import Channel, Subscription
from tradingd.queues import BoundedQueue, OverflowPolicy
from tradingd.sequencing import SequenceTracker
from tradingd.subscriptions import (
    ExchangeCapture,
    captured_symbols,
    record_change,
    subscriptions_of,
)
from tradingd.supervisor import Supervisor
from tradingd.testing.fake_binance import FakeBinance


async def test_changes_apply_on_top_of_the_configured_symbols(pool: asyncpg.Pool) -> None:
    configured = ["BTCUSDT", "ETHUSDT"]
    assert await captured_symbols(pool, "binance", configured) == configured
    await record_change(pool, "binance", ["BNBUSDT"], True, "olga")
    await record_change(pool, "binance", ["ETHUSDT"], False, "olga")
    await record_change(pool, "deribit", ["BTCUSDT"], False, "olga")  # another exchange's
    assert await captured_symbols(pool, "binance", configured) == ["BTCUSDT", "BNBUSDT"]
    # The operator's last word wins, also over a symbol added to the configuration later.
    await record_change(pool, "binance", ["ETHUSDT"], True, "ivan")
    await record_change(pool, "binance", ["BNBUSDT"], False, "ivan")
    assert await captured_symbols(pool, "binance", [*configured, "BNBUSDT"]) == configured
    rows = await pool.fetch(
        "SELECT instrument_name, subscribed, operator FROM live_subscriptions"
        " WHERE exchange = 'binance' ORDER BY instrument_name"
    )
    assert [tuple(r) for r in rows] == [("BNBUSDT", False, "ivan"), ("ETHUSDT", True, "ivan")]


def test_every_configured_channel_of_each_symbol() -> None:
    config = ExchangeConfig(
        ws_url="wss://x.example/ws",
        rest_url="https://x.example",
        channels=[Channel.TRADES, Channel.BARS],
        bar_resolution="5m",
    )
    assert subscriptions_of(config, ["A", "B"]) == [
        Subscription(Channel.TRADES, "A"),
        Subscription(Channel.BARS, "A", "5m"),
        Subscription(Channel.TRADES, "B"),
        Subscription(Channel.BARS, "B", "5m"),
    ]


def _capture(
    fake: FakeBinance, http: aiohttp.ClientSession, max_streams: int, supervisor: Supervisor
) -> ExchangeCapture:
    config = ExchangeConfig(
        ws_url=fake.ws_url,
        rest_url=fake.rest_url,
        symbols=["BTCUSDT"],
        channels=[Channel.TRADES],
        max_streams_per_connection=max_streams,
    )
    outlets = MarketDataOutlets(
        BoundedQueue("records", 1000, OverflowPolicy.BLOCK),
        BoundedQueue("tickers", 10, OverflowPolicy.KEEP_LATEST, key=lambda t: t.instrument_name),
        None,
        BoundedQueue("gaps", 100, OverflowPolicy.BLOCK),
    )
    adapter = BinanceAdapter(config, exchange="binance", http=http)
    return ExchangeCapture(
        "binance",
        adapter=adapter,
        config=config,
        outlets=outlets,
        tracker=SequenceTracker("binance"),
        supervisor=supervisor,
    )


async def test_new_streams_fill_live_connections_then_open_new_ones(
    fake_binance: FakeBinance,
) -> None:
    supervisor = Supervisor(SupervisorConfig(), rng=random.Random(1))
    async with aiohttp.ClientSession() as http:
        # The venue's limit applies when the configuration allows more.
        assert _capture(fake_binance, http, 5000, supervisor).per_connection == 1024
        capture = _capture(fake_binance, http, 2, supervisor)
        supervisor.start_all(capture.specs([Subscription(Channel.TRADES, "BTCUSDT")]))
        try:
            await fake_binance.wait_subscribed("BTCUSDT", "trades")
            await capture.add(["ETHUSDT", "BNBUSDT", "ETHBTC", "BTCUSDT"])
            await fake_binance.wait_for(lambda: fake_binance.connection_count() == 2)
            for symbol in ("ETHUSDT", "BNBUSDT", "ETHBTC"):
                await fake_binance.wait_subscribed(symbol, "trades")
            assert sorted(sorted(c) for c in fake_binance.subscriptions()) == [
                ["bnbusdt@trade", "ethbtc@trade"],
                ["btcusdt@trade", "ethusdt@trade"],
            ]
            assert capture.symbols() == ["BTCUSDT", "ETHUSDT", "BNBUSDT", "ETHBTC"]
            assert [r.name for r in capture.receivers] == [
                "receiver:binance:0",
                "receiver:binance:1",
            ]

            # Emptied: its connection is closed and its actor forgotten; the other keeps one.
            await capture.remove(["BTCUSDT", "ETHUSDT", "ETHBTC"])
            await fake_binance.wait_for(lambda: fake_binance.subscriptions() == [["bnbusdt@trade"]])
            assert [r.name for r in capture.receivers] == ["receiver:binance:1"]
            assert supervisor.names() == ["receiver:binance:1"]
        finally:
            await supervisor.stop_all()
