"""The persisted subscription set: the configured symbols with the operator's live changes on
top (real PostgreSQL)."""

from __future__ import annotations

import asyncpg

from tradingd.config import ExchangeConfig
from tradingd.model import Channel, Subscription
from tradingd.subscriptions import captured_symbols, record_change, subscriptions_of


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
