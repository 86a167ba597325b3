"""Planned rotation with an accelerated clock: the real daemon replaces every connection each
second (``rotate_after`` stands in for Binance's 23 h) while both venues trade, plus a Binance
``serverShutdown``; the table must equal the tapes with zero gaps and zero duplicates."""

from __future__ import annotations

import asyncio
import re
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
ROTATE_AFTER = 1.0
TRADING_SECONDS = 8.0


async def test_rotations_under_live_trading_leave_no_gap_and_no_duplicate(
    tmp_path: Path,
    database_url: str,
    redis_url: str,
    binance: FakeBinance,
    deribit: FakeDeribit,
) -> None:
    fast = {
        "rotate_after": ROTATE_AFTER,
        "reconnect_backoff_initial": 0.1,
        "reconnect_backoff_max": 1.0,
    }
    config = write_config(
        tmp_path / "tradingd.toml",
        state_dir=tmp_path / "state",
        database_url=database_url,
        redis_url=redis_url,
        exchanges={
            "binance": ExchangeEndpoint(
                "binance", binance.ws_url, binance.rest_url, BINANCE_SYMBOLS, fast
            ),
            "deribit": ExchangeEndpoint(
                "deribit",
                deribit.ws_url,
                deribit.rest_url,
                DERIBIT_SYMBOLS,
                {**fast, "currencies": ["BTC", "ETH"]},
            ),
        },
        sections={"analyzer": {"enabled": False}},
    )
    fakes: list[tuple[FakeBinance | FakeDeribit, list[str]]] = [
        (binance, BINANCE_SYMBOLS),
        (deribit, DERIBIT_SYMBOLS),
    ]
    async with NotifyListener(tmp_path / "notify.sock") as notify:
        daemon = await DaemonProcess(config, notify, tmp_path / "daemon.log").start()
        try:
            await daemon.wait_ready()
            for fake, symbols in fakes:
                for symbol in symbols:
                    await fake.wait_subscribed(symbol, "trades")

            async def trade(seconds: float) -> None:
                loop = asyncio.get_running_loop()
                deadline = loop.time() + seconds
                while loop.time() < deadline:
                    for fake, symbols in fakes:
                        for symbol in symbols:
                            fake.publish_trades(symbol, 2)
                    await asyncio.sleep(0.01)  # the market's pace

            await trade(TRADING_SECONDS / 2)
            binance.send_server_shutdown()
            await trade(TRADING_SECONDS / 2)
            # Trades after the last rotation started: nothing may be left behind in a hold.
            for fake, symbols in fakes:
                for symbol in symbols:
                    await fake.wait_subscribed(symbol, "trades")
                    fake.publish_trades(symbol, 5)

            pool = await asyncpg.create_pool(database_url, min_size=1, max_size=2)
            try:
                total = sum(len(fake.tape(s)) for fake, symbols in fakes for s in symbols)

                async def all_stored() -> bool:
                    stored = await pool.fetchval("SELECT count(*) FROM public_trades")
                    return int(stored) >= total

                await eventually(all_stored, timeout=60, what=f"{total} trades stored")
                for fake, symbols in fakes:
                    exchange = "binance" if fake is binance else "deribit"
                    for symbol in symbols:
                        await assert_table_equals_tape(pool, exchange, symbol, fake.tape(symbol))
                gaps = await pool.fetch("SELECT * FROM data_gaps")
                assert [dict(g) for g in gaps] == [], "a rotation left a gap"
            finally:
                await pool.close()

            # The status snapshot is republished every status_interval, so it may trail the
            # table by one period: wait for the snapshot that has counted every stored row.
            redis = aioredis.Redis.from_url(redis_url)
            persister: dict[str, float] = {}
            try:

                async def status_counted_all() -> bool:
                    nonlocal persister
                    raw = await redis.get(STATUS_KEY)
                    if raw is None:
                        return False
                    persister = dict(decode_status(raw).persister)
                    return persister.get("trades_written", 0) >= total

                await eventually(status_counted_all, timeout=10, what="status counts every trade")
            finally:
                await redis.aclose()
            # Zero duplicates: the trackers dropped every overlap before the queue.
            assert persister["duplicates_skipped"] == 0
            assert persister["trades_written"] == total
        finally:
            if daemon.process is not None and daemon.process.returncode is None:
                assert await daemon.stop() == 0, daemon.output()[-3000:]
    output = daemon.output()
    rotations = {
        name: len(re.findall(rf"receiver:{name}:\d+.*rotation complete", output))
        for name in ("binance", "deribit")
    }
    print(f"rotations completed in {TRADING_SECONDS:.0f} s of trading: {rotations}")
    assert "server shutdown; rotating now" in output
    # About one per second per connection (connects and hand-overs take part of each).
    assert rotations["binance"] >= TRADING_SECONDS / 2
    assert rotations["deribit"] >= TRADING_SECONDS / 2
    assert "rotation: " not in output, "a rotation attempt failed"
    assert "gap of" not in output


async def assert_table_equals_tape(
    pool: asyncpg.Pool, exchange: str, instrument: str, tape: list[dict[str, object]]
) -> None:
    rows = await pool.fetch(
        "SELECT trade_id, trade_seq, price::text AS price, quantity::text AS quantity,"
        " is_buyer_maker FROM public_trades WHERE exchange = $1 AND instrument_name = $2"
        " ORDER BY trade_seq",
        exchange,
        instrument,
    )
    assert len(rows) == len(tape), (exchange, instrument, len(rows), len(tape))
    for row, wire in zip(rows, tape, strict=True):
        if exchange == "binance":
            assert (row["trade_seq"], row["trade_id"]) == (wire["t"], str(wire["t"]))
            assert (row["price"], row["quantity"]) == (wire["p"], wire["q"])
            assert row["is_buyer_maker"] is wire["m"]
        else:
            assert (row["trade_seq"], row["trade_id"]) == (wire["trade_seq"], wire["trade_id"])
            assert Decimal(row["price"]) == Decimal(str(wire["price"]))
            assert Decimal(row["quantity"]) == Decimal(str(wire["amount"]))
            assert row["is_buyer_maker"] is (wire["direction"] == "sell")
