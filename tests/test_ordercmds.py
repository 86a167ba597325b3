"""The trading commands, run as an operator runs them (the real CLI in a child process) against
real PostgreSQL and Redis, with a ControlServer and fake order desks standing in for the
daemon's executors where one is needed."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import asyncpg
import pytest
import redis.asyncio as aioredis

from tests.desk_doubles import FakeDesk
from tests.e2e.harness import offline_config, run_cli
from tradingd.execution.control import ControlServer
from tradingd.strategies.api import OrderType, Side
from tradingd.supervisor import ActorContext

D = Decimal


@pytest.fixture
def config_path(tmp_path: Path, migrated_database_url: str, redis_url: str) -> Path:
    return offline_config(
        tmp_path / "tradingd.toml",
        state_dir=tmp_path / "state",
        database_url=migrated_database_url,
        redis_url=redis_url,
    )


async def tradingd(config: Path, *args: str) -> tuple[int, str, str]:
    # In a thread: the control server of the test answers on this event loop meanwhile.
    result = await asyncio.to_thread(run_cli, config, *args, env={"USER": "olga"})
    return result.returncode, result.stdout, result.stderr


@pytest.fixture
async def desk(rds: aioredis.Redis) -> AsyncIterator[FakeDesk]:
    fake = FakeDesk("binance", open_orders=4)
    server = ControlServer({"binance": fake}, rds)  # type: ignore[dict-item]
    ready = asyncio.Event()
    task = asyncio.create_task(server.run(ActorContext("control", {}, ready)))
    await asyncio.wait_for(ready.wait(), 10)
    try:
        yield fake
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


# -- through the daemon -----------------------------------------------------------------------


async def test_order_submit_without_a_daemon_exits_69_and_asks_nothing(config_path: Path) -> None:
    code, out, err = await tradingd(
        config_path,
        "order",
        "submit",
        "--exchange",
        "binance",
        "--symbol",
        "BTCUSDT",
        "--side",
        "buy",
        "--qty",
        "0.01",
        "--price",
        "50000",
    )
    assert code == 69, err
    assert "no running daemon" in err and out == ""
    for command in (
        ("order", "cancel", "--exchange", "binance", "td01"),
        ("strategies",),
        ("strategies", "pause", "x"),
    ):
        code, _, err = await tradingd(config_path, *command)
        assert code == 69 and "no running daemon" in err, command
    code, out, _ = await tradingd(config_path, "status")
    assert code == 0 and "daemon: no daemon answers on the control channel" in out


async def test_order_submit_accepted_denied_and_usage_errors(
    config_path: Path, desk: FakeDesk
) -> None:
    base = ("order", "submit", "--exchange", "binance", "--symbol", "BTCUSDT", "--side", "buy")
    code, out, err = await tradingd(
        config_path, *base, "--qty", "0.01", "--price", "50000", "--tif", "IOC"
    )
    assert code == 0, err
    assert out.startswith("td01 accepted: binance BTCUSDT buy limit 0.01 @ 50000 IOC")
    [(strategy, intent)] = desk.submitted
    assert strategy == "manual"
    assert (intent.side, intent.type, intent.quantity, intent.price) == (
        Side.BUY,
        OrderType.LIMIT,
        D("0.01"),
        D(50000),
    )
    assert intent.tag == "cli:olga"

    desk.deny = "max_order_notional: 500 USDT is over the limit 100"
    code, out, _ = await tradingd(config_path, *base, "--qty", "0.01", "--price", "50000")
    assert code == 1 and out.startswith(
        "denied: max_order_notional: 500 USDT is over the limit 100"
    )

    for bad, message in (
        (("--qty", "-1", "--price", "5"), "--qty: expected a positive decimal number, found '-1'"),
        (("--qty", "1"), "--price is required for a limit order"),
        (("--qty", "1", "--type", "market", "--price", "5"), "--price is for limit orders only"),
    ):
        code, _, err = await tradingd(config_path, *base, *bad)
        assert code == 64 and message in err
    assert len(desk.submitted) == 2  # nothing bad reached the desk

    code, out, _ = await tradingd(config_path, "order", "cancel", "--exchange", "binance", "td01")
    assert code == 0 and out == "td01: cancel requested\n"
    code, out, _ = await tradingd(config_path, "order", "cancel", "--exchange", "binance", "gone7")
    assert code == 1 and "cancel denied: no open order gone7" in out


async def test_strategies_list_pause_resume(config_path: Path, desk: FakeDesk) -> None:
    code, out, _ = await tradingd(config_path, "strategies")
    assert code == 0 and "binance-grid" in out and "running" in out
    code, out, _ = await tradingd(
        config_path, "strategies", "pause", "binance-grid", "--reason", "news"
    )
    assert code == 0 and desk.paused == {"binance-grid": "paused by olga: news"}
    code, out, _ = await tradingd(config_path, "strategies", "list", "--json")
    assert json.loads(out)[0]["paused"] is True
    code, _, err = await tradingd(config_path, "strategies", "resume", "nobody")
    assert code == 1 and "no strategy 'nobody'" in err
    code, _, _ = await tradingd(config_path, "strategies", "resume", "binance-grid")
    assert code == 0 and desk.paused == {}
    assert (await tradingd(config_path, "strategies", "pause"))[0] == 64


async def test_kill_switch_on_waits_for_the_cancellations(
    config_path: Path, desk: FakeDesk
) -> None:
    code, out, err = await tradingd(config_path, "kill-switch", "on", "--reason", "venue hacked")
    assert code == 0, err
    assert "kill switch: ON since" in out
    assert "binance: cancelled 4 of 4, remaining 0" in out
    assert "open orders remaining: 0" in out
    assert desk.cancel_everything_reasons == ["kill switch on by olga: venue hacked"]
    desk.open_orders, desk.stuck = 2, 1
    code, out, _ = await tradingd(config_path, "kill-switch", "on", "--reason", "again")
    assert code == 1 and "remaining 1" in out and "NOT all cancelled" in out


async def test_kill_switch_on_flatten_reports_the_closing_orders_and_what_is_left(
    config_path: Path, desk: FakeDesk
) -> None:
    code, out, err = await tradingd(config_path, "kill-switch", "off", "--flatten", "--reason", "x")
    assert code == 64 and "--flatten goes with kill-switch on" in err
    code, out, err = await tradingd(config_path, "kill-switch", "on", "--flatten", "--reason", "x")
    assert code == 0, err
    assert desk.flattened == [True]
    assert "  flatten: sell 0.5 BTCUSDT (td09): FILLED" in out
    desk.open_orders, desk.positions_left = 0, {"BTCUSDT": "0.0004"}
    code, out, _ = await tradingd(config_path, "kill-switch", "on", "--flatten", "--reason", "y")
    assert code == 1 and "  position left: BTCUSDT 0.0004" in out


# -- the ledger's view ------------------------------------------------------------------------

T0 = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
T1 = datetime(2026, 12, 3, 12, 0, tzinfo=UTC)


async def _seed(pool: asyncpg.Pool) -> None:
    await pool.execute(
        "INSERT INTO instruments (exchange, instrument_name, market_type, base_currency,"
        " quote_currency, tick_size, min_trade_amount) VALUES"
        " ('binance', 'BTCUSDT', 'spot', 'BTC', 'USDT', 0.01, 0.00001),"
        " ('deribit', 'BTC-PERPETUAL', 'perpetual', 'BTC', 'USD', 0.5, 10)"
    )
    orders = [
        ("td1", "trend", "binance", "BTCUSDT", "buy", "market", "IOC", "1", None, "FILLED", "1"),
        (
            "td2",
            "trend",
            "binance",
            "BTCUSDT",
            "sell",
            "limit",
            "GTC",
            "0.5",
            "110",
            "FILLED",
            "0.5",
        ),
        ("td3", "grid", "binance", "BTCUSDT", "buy", "limit", "GTC", "0.1", "90", "OPEN", "0"),
        (
            "td4",
            "manual",
            "deribit",
            "BTC-PERPETUAL",
            "buy",
            "limit",
            "GTC",
            "1000",
            "50000",
            "UNKNOWN",
            "0",
        ),
        (
            "td5",
            "manual",
            "deribit",
            "BTC-PERPETUAL",
            "buy",
            "market",
            "IOC",
            "1000",
            None,
            "FILLED",
            "1000",
        ),
    ]
    for cid, strategy, exchange, inst, side, kind, tif, qty, price, state, filled in orders:
        await pool.execute(
            "INSERT INTO orders (client_order_id, strategy, exchange, instrument_name, side,"
            " order_type, time_in_force, quantity, price, state, filled_quantity)"
            " VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
            cid,
            strategy,
            exchange,
            inst,
            side,
            kind,
            tif,
            D(qty),
            None if price is None else D(price),
            state,
            D(filled),
        )
    fills = [
        ("binance", "t1", "td1", "trend", "BTCUSDT", "buy", "1", "100", "0.1", "USDT", "taker", T0),
        (
            "binance",
            "t2",
            "td2",
            "trend",
            "BTCUSDT",
            "sell",
            "0.5",
            "110",
            "0.055",
            "USDT",
            "maker",
            T1,
        ),
        (
            "deribit",
            "d1",
            "td5",
            "manual",
            "BTC-PERPETUAL",
            "buy",
            "1000",
            "50000",
            "0.00001",
            "BTC",
            "taker",
            T1,
        ),
    ]
    for ex, tid, cid, strategy, inst, side, qty, price, fee, cur, liq, at in fills:
        await pool.execute(
            "INSERT INTO fills (exchange, trade_id, client_order_id, strategy, instrument_name,"
            " side, quantity, price, fee, fee_currency, liquidity, at)"
            " VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)",
            ex,
            tid,
            cid,
            strategy,
            inst,
            side,
            D(qty),
            D(price),
            D(fee),
            cur,
            liq,
            at,
        )


async def test_orders_and_fills(config_path: Path, pool: asyncpg.Pool) -> None:
    await _seed(pool)
    code, out, err = await tradingd(config_path, "orders")
    assert code == 0, err
    lines = out.splitlines()
    assert len(lines) == 5 and "td5" in lines[0] and "td1" in lines[-1]
    code, out, _ = await tradingd(config_path, "orders", "--open", "--json")
    assert [o["client_order_id"] for o in json.loads(out)] == ["td4", "td3"]
    code, out, _ = await tradingd(config_path, "orders", "--open", "--exchange", "binance")
    assert "td3" in out and "td4" not in out and "OPEN" in out
    code, out, _ = await tradingd(config_path, "fills", "--json")
    found = json.loads(out)
    assert [f["trade_id"] for f in found] == ["d1", "t2", "t1"]
    assert found[1]["price"] == "110" and found[1]["liquidity"] == "maker"
    code, out, _ = await tradingd(config_path, "fills")
    assert "BTCUSDT sell 0.5 @ 110 fee 0.055 USDT maker" in out


async def test_positions_and_pnl_are_marked_at_the_redis_ticker(
    config_path: Path, pool: asyncpg.Pool, rds: aioredis.Redis
) -> None:
    await _seed(pool)
    await rds.hset("ticker:binance:BTCUSDT", mapping={"last_price": "120", "mark_price": ""})
    await rds.hset("ticker:deribit:BTC-PERPETUAL", mapping={"mark_price": "40000"})
    code, out, err = await tradingd(config_path, "positions", "--json")
    assert code == 0, err
    rows = {r["instrument"]: r for r in json.loads(out)}
    assert rows["BTCUSDT"]["quantity"] == "0.5" and rows["BTCUSDT"]["strategy"] == "trend"
    assert rows["BTCUSDT"]["unrealised_pnl"] == "10.0"  # 0.5 * (120 - 100)
    assert rows["BTCUSDT"]["mark_source"] == "ticker last_price"
    # 1000 USD inverse long from 50000 to 40000: 1000/50000 - 1000/40000 = -0.005 BTC
    assert D(rows["BTC-PERPETUAL"]["unrealised_pnl"]) == D("-0.005")
    assert rows["BTC-PERPETUAL"]["pnl_currency"] == "BTC"

    code, out, _ = await tradingd(config_path, "pnl", "--json")
    pnl = {r["strategy"]: r for r in json.loads(out)["strategies"]}
    assert pnl["trend"]["realised"] == {"USDT": "5.0"}
    assert pnl["trend"]["fees"] == {"USDT": "0.155"}
    assert pnl["trend"]["unrealised"] == {"USDT": "10.0"}
    assert pnl["manual"]["fees"] == {"BTC": "0.00001"}
    code, out, _ = await tradingd(config_path, "pnl", "--since", "2026-12-02", "--json")
    since = {r["strategy"]: r for r in json.loads(out)["strategies"]}
    assert since["trend"]["fees"] == {"USDT": "0.055"}  # the buy's fee was before
    assert since["trend"]["realised"] == {"USDT": "5.0"}
    code, out, _ = await tradingd(config_path, "pnl")
    assert "trend" in out and "realised 5 USDT" in out and "fees 0.155 USDT" in out


async def test_a_position_without_ticker_is_marked_at_the_last_public_trade(
    config_path: Path, pool: asyncpg.Pool
) -> None:
    await _seed(pool)
    await pool.execute("SELECT tradingd_ensure_trades_partition($1)", T1.date())
    await pool.execute(
        "INSERT INTO public_trades (exchange, instrument_name, market_type, trade_id, trade_seq,"
        " price, quantity, is_buyer_maker, trade_timestamp, received_at)"
        " VALUES ('binance', 'BTCUSDT', 'spot', 'p9', 9, 130, 1, false, $1, $1)",
        T1,
    )
    code, out, err = await tradingd(config_path, "positions")
    assert code == 0, err
    line = next(line for line in out.splitlines() if "BTCUSDT" in line)
    assert "mark 130 (last public trade) unrealised 15 USDT" in line
    assert "BTC-PERPETUAL" in out and "no mark" in out


async def test_status_shows_the_ledger_and_the_running_executors(
    config_path: Path, pool: asyncpg.Pool, desk: FakeDesk
) -> None:
    await _seed(pool)
    code, out, err = await tradingd(config_path, "status")
    assert code == 0, err
    assert "executor:" in out
    assert "ledger: 2 open orders, 1 UNKNOWN" in out
    assert "position trend binance BTCUSDT: 0.5" in out
    assert "binance      paper, trading NOT allowed, 4 open, 1 unknown" in out
    assert "denied since start: 2 x kill switch on" in out
    code, out, _ = await tradingd(config_path, "status", "--json")
    executor = json.loads(out)["executor"]
    assert executor["ledger"]["unknown_orders"] == 1 and executor["live"][0]["mode"] == "paper"


async def test_kill_switch_without_daemon_reports_open_ledger_orders(
    config_path: Path, pool: asyncpg.Pool
) -> None:
    await _seed(pool)
    code, out, _ = await tradingd(config_path, "kill-switch", "on", "--reason", "test")
    assert code == 1
    assert "no daemon runs: 2 orders are not final in the ledger" in out


@pytest.mark.parametrize(
    "command",
    [
        ["order", "submit"],
        ["order", "cancel"],
        ["orders"],
        ["fills"],
        ["positions"],
        ["pnl"],
        ["strategies"],
    ],
)
def test_every_trading_command_has_help(command: list[str]) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "tradingd", *command, "--help"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert "usage: tradingd" in result.stdout
