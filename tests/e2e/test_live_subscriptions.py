"""Live subscriptions end to end: ``tradingd subscribe`` / ``unsubscribe`` (the real CLI) change
what the real daemon process captures from the fake venues, with no restart and no gap, and the
change survives a restart."""

from __future__ import annotations

import asyncio
from pathlib import Path

import asyncpg

from tests.e2e.harness import (
    DaemonProcess,
    ExchangeEndpoint,
    NotifyListener,
    eventually,
    run_cli,
    write_config,
)
from tradingd.testing.fake_binance import FakeBinance
from tradingd.testing.fake_deribit import FakeDeribit


async def tradingd(config: Path, *args: str) -> tuple[int, str, str]:
    result = await asyncio.to_thread(run_cli, config, *args, env={"USER": "olga"})
    return result.returncode, result.stdout, result.stderr


async def stored(pool: asyncpg.Pool, exchange: str, instrument: str) -> tuple[int, int, int]:
    """(rows, lowest seq, highest seq) of the instrument's stored trades."""
    row = await pool.fetchrow(
        "SELECT count(*) AS n, coalesce(min(trade_seq), 0) AS lo, coalesce(max(trade_seq), 0)"
        " AS hi FROM public_trades WHERE exchange = $1 AND instrument_name = $2",
        exchange,
        instrument,
    )
    return int(row["n"]), int(row["lo"]), int(row["hi"])


async def gaps(pool: asyncpg.Pool, instrument: str) -> int:
    return int(
        await pool.fetchval("SELECT count(*) FROM data_gaps WHERE instrument_name = $1", instrument)
    )


def streams_of(fake: FakeBinance, symbol: str) -> list[str]:
    prefix = symbol.lower() + "@"
    return [s for conn in fake.subscriptions() for s in conn if s.startswith(prefix)]


async def test_binance_subscribe_unsubscribe_on_a_running_daemon_and_after_a_restart(
    tmp_path: Path, database_url: str, redis_url: str, binance: FakeBinance
) -> None:
    config = write_config(
        tmp_path / "tradingd.toml",
        state_dir=tmp_path / "state",
        database_url=database_url,
        redis_url=redis_url,
        # 3 streams a symbol (trades, bars, tickers), 4 a connection: a second symbol needs a
        # second connection.
        exchanges={
            "binance": ExchangeEndpoint(
                "binance",
                binance.ws_url,
                binance.rest_url,
                ["BTCUSDT"],
                {"max_streams_per_connection": 4},
            )
        },
    )
    pool = await asyncpg.create_pool(database_url, min_size=1, max_size=2)
    async with NotifyListener(tmp_path / "notify.sock") as notify:
        daemon = await DaemonProcess(config, notify, tmp_path / "daemon.log").start()
        try:
            await daemon.wait_ready()
            await binance.wait_subscribed("BTCUSDT", "trades")
            assert binance.connection_count() == 1

            # An unknown symbol is refused, and nothing changes.
            code, out, err = await tradingd(config, "subscribe", "--exchange", "binance", "NOPE")
            assert code == 64, (out, err)
            assert "not listed" in err and "NOPE" in err and "nothing was changed" in err
            code, out, err = await tradingd(config, "subscribe", "--exchange", "kraken", "X")
            assert code == 64 and "unknown exchange" in err

            # Subscribed live (lower case is the venue's BNBUSDT): synced, streamed, no gap.
            code, out, err = await tradingd(config, "subscribe", "--exchange", "binance", "bnbusdt")
            assert code == 0, daemon.output()[-3000:] + err
            assert "subscribed BNBUSDT" in out and "capturing BTCUSDT, BNBUSDT" in out
            for channel in ("trades", "bars", "tickers"):
                await binance.wait_subscribed("BNBUSDT", channel)
            assert binance.connection_count() == 2  # past max_streams_per_connection
            assert binance.disconnects_for_rate == 0
            assert await pool.fetchval(
                "SELECT count(*) FROM instruments WHERE exchange = 'binance'"
                " AND instrument_name = 'BNBUSDT'"
            )
            binance.publish_trades("BNBUSDT", 120)
            binance.publish_trades("BNBUSDT", 80)
            await eventually(
                lambda: _rows(pool, "BNBUSDT", 200), what="200 BNBUSDT trades in PostgreSQL"
            )
            n, lo, hi = await stored(pool, "binance", "BNBUSDT")
            assert hi - lo + 1 == n == 200
            assert await gaps(pool, "BNBUSDT") == 0

            # Unsubscribed: the venue stops sending them.
            code, out, err = await tradingd(
                config, "unsubscribe", "--exchange", "binance", "BNBUSDT"
            )
            assert code == 0, err
            assert "unsubscribed BNBUSDT" in out and "capturing BTCUSDT on 1" in out
            await binance.wait_for(lambda: not streams_of(binance, "BNBUSDT"))
            assert binance.connection_count() == 1  # the emptied connection is closed
            binance.publish_trades("BNBUSDT", 30)
            binance.publish_trades("BTCUSDT", 40)
            await eventually(lambda: _rows(pool, "BTCUSDT", 40), what="40 BTCUSDT trades")
            assert (await stored(pool, "binance", "BNBUSDT"))[0] == 200
            code, out, err = await tradingd(
                config, "unsubscribe", "--exchange", "binance", "ETHBTC"
            )
            assert code == 64 and "not captured: ETHBTC" in err

            # Subscribed again: tracked from the first trade seen, the 30 missed are no gap.
            code, out, err = await tradingd(
                config, "subscribe", "--exchange", "binance", "BNBUSDT", "ETHUSDT"
            )
            assert code == 0, err
            await binance.wait_subscribed("BNBUSDT", "trades")
            await binance.wait_subscribed("ETHUSDT", "trades")
            binance.publish_trades("BNBUSDT", 25)
            binance.publish_trades("ETHUSDT", 10)
            await eventually(lambda: _rows(pool, "BNBUSDT", 225), what="225 BNBUSDT trades")
            await eventually(lambda: _rows(pool, "ETHUSDT", 10), what="10 ETHUSDT trades")
            assert await gaps(pool, "BNBUSDT") == 0

            code, out, err = await tradingd(
                config, "unsubscribe", "--exchange", "binance", "BNBUSDT"
            )
            assert code == 0, err
            assert await daemon.stop() == 0, daemon.output()[-3000:]

            # No daemon: nothing is sent, nothing recorded.
            code, out, err = await tradingd(config, "subscribe", "--exchange", "binance", "ETHBTC")
            assert code == 69 and "no running daemon" in err

            # A restart keeps the set: the configured BTCUSDT, ETHUSDT added, BNBUSDT removed.
            daemon = await DaemonProcess(config, notify, tmp_path / "daemon2.log").start()
            await daemon.wait_ready()
            await binance.wait_subscribed("BTCUSDT", "trades")
            await binance.wait_subscribed("ETHUSDT", "trades")
            assert not streams_of(binance, "BNBUSDT")
            assert not streams_of(binance, "ETHBTC")
            rows = await pool.fetch(
                "SELECT instrument_name, subscribed, operator FROM live_subscriptions"
                " ORDER BY instrument_name"
            )
            assert [tuple(r) for r in rows] == [
                ("BNBUSDT", False, "olga"),
                ("ETHUSDT", True, "olga"),
            ]
            assert await daemon.stop() == 0, daemon.output()[-3000:]
        finally:
            await pool.close()


async def test_deribit_subscribe_and_unsubscribe_live(
    tmp_path: Path, database_url: str, redis_url: str, deribit: FakeDeribit
) -> None:
    config = write_config(
        tmp_path / "tradingd.toml",
        state_dir=tmp_path / "state",
        database_url=database_url,
        redis_url=redis_url,
        exchanges={
            "deribit": ExchangeEndpoint(
                "deribit",
                deribit.ws_url,
                deribit.rest_url,
                ["BTC-PERPETUAL"],
                {"currencies": ["BTC", "ETH"]},
            )
        },
    )
    pool = await asyncpg.create_pool(database_url, min_size=1, max_size=2)
    async with NotifyListener(tmp_path / "notify.sock") as notify:
        daemon = await DaemonProcess(config, notify, tmp_path / "daemon.log").start()
        try:
            await daemon.wait_ready()
            await deribit.wait_subscribed("BTC-PERPETUAL", "trades")
            code, out, err = await tradingd(
                config, "subscribe", "--exchange", "deribit", "ETH-PERPETUAL"
            )
            assert code == 0, daemon.output()[-3000:] + err
            for channel in ("trades", "bars", "tickers"):
                await deribit.wait_subscribed("ETH-PERPETUAL", channel)
            assert deribit.connection_count() == 1  # on the live connection
            deribit.publish_trades("ETH-PERPETUAL", 60)
            await eventually(lambda: _rows(pool, "ETH-PERPETUAL", 60, "deribit"), what="trades")
            n, lo, hi = await stored(pool, "deribit", "ETH-PERPETUAL")
            assert hi - lo + 1 == n == 60
            assert await gaps(pool, "ETH-PERPETUAL") == 0

            code, out, err = await tradingd(
                config, "subscribe", "--exchange", "deribit", "ETH-NOPE"
            )
            assert code == 64 and "ETH-NOPE" in err

            code, out, err = await tradingd(
                config, "unsubscribe", "--exchange", "deribit", "ETH-PERPETUAL"
            )
            assert code == 0, err
            assert "unsubscribed ETH-PERPETUAL" in out and "capturing BTC-PERPETUAL" in out
            await deribit.wait_for(
                lambda: (
                    not any(
                        "ETH-PERPETUAL" in channel for c in deribit.subscriptions() for channel in c
                    )
                )
            )
            deribit.publish_trades("ETH-PERPETUAL", 20)
            deribit.publish_trades("BTC-PERPETUAL", 20)
            await eventually(lambda: _rows(pool, "BTC-PERPETUAL", 20, "deribit"), what="BTC")
            assert (await stored(pool, "deribit", "ETH-PERPETUAL"))[0] == 60
            assert await daemon.stop() == 0, daemon.output()[-3000:]
        finally:
            await pool.close()


async def _rows(
    pool: asyncpg.Pool, instrument: str, expected: int, exchange: str = "binance"
) -> bool:
    return (await stored(pool, exchange, instrument))[0] == expected
