"""End to end: fake exchanges on loopback → the real daemon process → PostgreSQL and Redis."""

from __future__ import annotations

import signal
from decimal import Decimal
from pathlib import Path

import asyncpg
import redis.asyncio as aioredis

from tests.e2e.harness import (
    DaemonProcess,
    ExchangeEndpoint,
    NotifyListener,
    eventually,
    write_config,
)
from tradingd.status import STATUS_KEY, decode_status
from tradingd.testing.fake_binance import FakeBinance
from tradingd.testing.fake_deribit import FakeDeribit

BINANCE_SYMBOLS = ["BTCUSDT", "ETHUSDT"]
DERIBIT_SYMBOLS = ["BTC-PERPETUAL", "ETH-PERPETUAL"]


def endpoints(binance: FakeBinance, deribit: FakeDeribit) -> dict[str, ExchangeEndpoint]:
    return {
        "binance": ExchangeEndpoint("binance", binance.ws_url, binance.rest_url, BINANCE_SYMBOLS),
        "deribit": ExchangeEndpoint(
            "deribit",
            deribit.ws_url,
            deribit.rest_url,
            DERIBIT_SYMBOLS,
            {"currencies": ["BTC", "ETH"]},
        ),
    }


async def count(pool: asyncpg.Pool, sql: str, *args: object) -> int:
    value = await pool.fetchval(sql, *args)
    return int(value)


async def test_trades_bars_tickers_and_poison_frames_land_row_for_row(
    tmp_path: Path,
    database_url: str,
    redis_url: str,
    binance: FakeBinance,
    deribit: FakeDeribit,
) -> None:
    config = write_config(
        tmp_path / "tradingd.toml",
        state_dir=tmp_path / "state",
        database_url=database_url,
        redis_url=redis_url,
        exchanges=endpoints(binance, deribit),
    )
    async with NotifyListener(tmp_path / "notify.sock") as notify:
        daemon = await DaemonProcess(config, notify, tmp_path / "daemon.log").start()
        await daemon.wait_ready()
        fakes: list[tuple[FakeBinance | FakeDeribit, list[str]]] = [
            (binance, BINANCE_SYMBOLS),
            (deribit, DERIBIT_SYMBOLS),
        ]
        for fake, symbols in fakes:
            for symbol in symbols:
                for channel in ("trades", "bars", "tickers"):
                    await fake.wait_subscribed(symbol, channel)
        for fake, symbols in fakes:
            for symbol in symbols:
                fake.publish_trades(symbol, 150)
                fake.publish_bar(symbol, closed=False)
                fake.publish_ticker(symbol)
        binance.inject_raw(b'{"stream":"btcusdt@trade","data":{"e":"trade","p":"abc"}}')
        deribit.inject_raw(b"this is not json")
        for fake, symbols in fakes:
            for symbol in symbols:
                fake.publish_trades(symbol, 50)
                fake.publish_bar(symbol, closed=True)

        pool = await asyncpg.create_pool(database_url, min_size=1, max_size=2)
        try:
            total = 4 * 200
            await eventually(
                lambda: _equals(pool, "SELECT count(*) FROM public_trades", total),
                what=f"{total} trades in PostgreSQL",
            )
            await eventually(
                lambda: _at_least(pool, "SELECT count(*) FROM dead_letters", 2),
                what="two dead letters",
            )
            for fake, symbols in fakes:
                exchange = "binance" if fake is binance else "deribit"
                for symbol in symbols:
                    await _assert_tape_equals_table(pool, exchange, symbol, fake.tape(symbol))
            letters = await pool.fetch("SELECT exchange, payload, error FROM dead_letters")
            payloads = {bytes(r["payload"]) for r in letters}
            assert b"this is not json" in payloads
            assert any(b'"p":"abc"' in p for p in payloads)
            # One bar per instrument; Binance says when a bar closes (Deribit's close when the
            # next period's bar arrives).
            await eventually(lambda: _at_least(pool, "SELECT count(*) FROM ohlc", 4), what="bars")
            await eventually(
                lambda: _at_least(
                    pool, "SELECT count(*) FROM ohlc WHERE closed AND exchange = 'binance'", 2
                ),
                what="closed Binance bars",
            )
        finally:
            await pool.close()

        redis = aioredis.Redis.from_url(redis_url)
        try:
            ticker = await redis.hgetall("ticker:binance:BTCUSDT")
            assert ticker, "latest ticker in Redis"
            assert await redis.hgetall("ticker:deribit:BTC-PERPETUAL")
        finally:
            await redis.aclose()

        marker = len(notify.messages)
        assert await daemon.stop() == 0, daemon.output()[-3000:]
        assert any(m.get("STOPPING") == "1" for m in notify.messages[marker:])


async def _equals(pool: asyncpg.Pool, sql: str, expected: int) -> bool:
    return await count(pool, sql) == expected


async def _at_least(pool: asyncpg.Pool, sql: str, expected: int) -> bool:
    return await count(pool, sql) >= expected


async def _assert_tape_equals_table(
    pool: asyncpg.Pool, exchange: str, instrument: str, tape: list[dict[str, object]]
) -> None:
    rows = await pool.fetch(
        "SELECT trade_id, trade_seq, price::text AS price, quantity::text AS quantity,"
        " is_buyer_maker FROM public_trades WHERE exchange = $1 AND instrument_name = $2"
        " ORDER BY trade_seq",
        exchange,
        instrument,
    )
    assert len(rows) == len(tape)
    for row, wire in zip(rows, tape, strict=True):
        if exchange == "binance":
            assert row["trade_seq"] == wire["t"]
            assert row["trade_id"] == str(wire["t"])
            assert Decimal(row["price"]) == Decimal(str(wire["p"]))
            assert row["price"] == str(wire["p"])
            assert row["quantity"] == str(wire["q"])
            assert row["is_buyer_maker"] is wire["m"]
        else:
            assert row["trade_seq"] == wire["trade_seq"]
            assert row["trade_id"] == wire["trade_id"]
            assert Decimal(row["price"]) == Decimal(str(wire["price"]))
            assert Decimal(row["quantity"]) == Decimal(str(wire["amount"]))
            assert row["is_buyer_maker"] is (wire["direction"] == "sell")


async def test_graceful_shutdown_drains_a_full_queue(
    tmp_path: Path,
    database_url: str,
    redis_url: str,
    binance: FakeBinance,
    deribit: FakeDeribit,
) -> None:
    """PostgreSQL is held up by a table lock while trades pile up in the queue; SIGTERM must
    still land every received trade once the lock goes, within the stop timeout."""
    config = write_config(
        tmp_path / "tradingd.toml",
        state_dir=tmp_path / "state",
        database_url=database_url,
        redis_url=redis_url,
        exchanges={"binance": endpoints(binance, deribit)["binance"]},
        sections={"analyzer": {"enabled": False}},
    )
    async with NotifyListener(tmp_path / "notify.sock") as notify:
        daemon = await DaemonProcess(config, notify, tmp_path / "daemon.log").start()
        await daemon.wait_ready()
        await binance.wait_subscribed("BTCUSDT", "trades")
        locker = await asyncpg.connect(database_url)
        transaction = locker.transaction()
        await transaction.start()
        await locker.execute("LOCK TABLE public_trades IN ACCESS EXCLUSIVE MODE")
        published = len(binance.publish_trades("BTCUSDT", 3000))
        # The daemon publishes what its receivers accepted; wait until all 3000 are in hand.
        redis = aioredis.Redis.from_url(redis_url)

        async def all_received() -> bool:
            raw = await redis.get(STATUS_KEY)
            return raw is not None and decode_status(raw).exchanges[0].trades == published

        await eventually(all_received, what="the receiver to accept every trade")
        await redis.aclose()
        daemon.signal(signal.SIGTERM)
        await notify.wait_for(lambda m: m.get("STOPPING") == "1", timeout=30)
        await transaction.rollback()
        await locker.close()
        assert await daemon.wait() == 0, daemon.output()[-3000:]
    conn = await asyncpg.connect(database_url)
    try:
        assert await conn.fetchval("SELECT count(*) FROM public_trades") == published
    finally:
        await conn.close()
