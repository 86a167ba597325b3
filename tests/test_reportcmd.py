"""``tradingd report`` as the operator runs it (the real CLI in a child process), reading the
ledger in a real PostgreSQL with no daemon running."""

from __future__ import annotations

import asyncio
import json
import re
from datetime import UTC, datetime
from pathlib import Path

import asyncpg
import pytest

from tests.e2e.harness import offline_config, run_cli
from tests.execution.test_performance import FILLS


@pytest.fixture
def config_path(tmp_path: Path, migrated_database_url: str, redis_url: str) -> Path:
    return offline_config(
        tmp_path / "tradingd.toml",
        state_dir=tmp_path / "state",
        database_url=migrated_database_url,
        redis_url=redis_url,
    )


async def tradingd(config: Path, *args: str) -> tuple[int, str, str]:
    result = await asyncio.to_thread(run_cli, config, *args)
    return result.returncode, result.stdout, result.stderr


async def _seed(pool: asyncpg.Pool) -> None:
    """The hand-computed example of tests/execution/test_performance.py, in the ledger."""
    await pool.execute(
        "INSERT INTO instruments (exchange, instrument_name, market_type, base_currency,"
        " quote_currency, tick_size, min_trade_amount) VALUES"
        " ('binance', 'BTCUSDT', 'spot', 'BTC', 'USDT', 0.01, 0.00001),"
        " ('deribit', 'BTC-PERPETUAL', 'perpetual', 'BTC', 'USD', 0.5, 10)"
    )
    for n, f in enumerate(FILLS):
        cid = f"td{n}"
        await pool.execute(
            "INSERT INTO orders (client_order_id, strategy, exchange, instrument_name, side,"
            " order_type, time_in_force, quantity, state, filled_quantity)"
            " VALUES ($1, $2, $3, $4, $5, 'market', 'IOC', $6, 'FILLED', $6)",
            cid,
            f.strategy,
            f.exchange,
            f.instrument,
            f.side.value,
            f.quantity,
        )
        await pool.execute(
            "INSERT INTO fills (exchange, trade_id, client_order_id, strategy, instrument_name,"
            " side, quantity, price, fee, fee_currency, liquidity, at)"
            " VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, 'taker', $11)",
            f.exchange,
            f.trade_id,
            cid,
            f.strategy,
            f.instrument,
            f.side.value,
            f.quantity,
            f.price,
            f.fee,
            f.fee_currency,
            datetime.fromtimestamp(f.at_us / 1_000_000, tz=UTC),
        )


async def test_report_text_json_and_html_without_a_daemon(
    config_path: Path, pool: asyncpg.Pool, tmp_path: Path
) -> None:
    await _seed(pool)
    code, out, err = await tradingd(config_path, "report")
    assert code == 0, err
    lines = {line.split()[0] + " " + line.split()[1]: line for line in out.splitlines()[2:]}
    assert set(lines) == {"carry BTC", "grid USDT", "trend USDT", "(total) BTC", "(total) USDT"}
    # trades, win rate, realised, fees, net of the hand-computed example
    assert lines["trend USDT"].split()[2:7] == ["3", "67%", "10", "0.6", "9.4"]
    assert lines["(total) USDT"].split()[2:7] == ["4", "75%", "11", "0.6", "10.4"]

    code, out, err = await tradingd(
        config_path, "report", "--strategy", "trend", "--since", "2026-01-03", "--json"
    )
    assert code == 0, err
    report = json.loads(out)
    assert [s["strategy"] for s in report["strategies"]] == ["trend"]
    trend = report["strategies"][0]
    assert (trend["trades"], trend["wins"], trend["net_pnl"]) == (2, 1, "-0.4")
    assert trend["max_drawdown"] == "10.4"

    page = tmp_path / "report.html"
    code, out, err = await tradingd(config_path, "report", "--html", str(page))
    assert code == 0, err
    assert f"wrote {page}" in out
    html = page.read_text()
    assert html.startswith("<!DOCTYPE html>")
    assert html.count("<svg") == 2 * 5  # equity and drawdown of 3 strategies and 2 totals
    assert "<polyline" in html and "9.4" in html
    # Self-contained: nothing to fetch, no script.
    assert "<script" not in html and not re.search(r"(src|href)=", html)
    assert "http://" not in html.replace('xmlns="http://www.w3.org/2000/svg"', "")
    assert "https://" not in html


async def test_report_of_an_empty_ledger_and_an_unwritable_page(
    config_path: Path, pool: asyncpg.Pool, tmp_path: Path
) -> None:
    code, out, err = await tradingd(config_path, "report")
    assert code == 0, err
    assert "no fills in the period" in out
    code, out, err = await tradingd(
        config_path, "report", "--html", str(tmp_path / "missing" / "r.html")
    )
    assert code == 1 and "cannot write" in err
    code, out, err = await tradingd(config_path, "report", "--since", "yesterday")
    assert code == 64 and "--since" in err


async def test_report_of_one_day_says_one_day(config_path: Path, pool: asyncpg.Pool) -> None:
    await pool.execute(
        "INSERT INTO orders (client_order_id, strategy, exchange, instrument_name, side,"
        " order_type, time_in_force, quantity, state, filled_quantity)"
        " VALUES ('td1', 'manual', 'binance', 'BTCUSDT', 'buy', 'market', 'IOC', 0.01,"
        " 'FILLED', 0.01)"
    )
    await pool.execute(
        "INSERT INTO fills (exchange, trade_id, client_order_id, strategy, instrument_name,"
        " side, quantity, price, fee, fee_currency, liquidity, at)"
        " VALUES ('binance', 'paper-1', 'td1', 'manual', 'BTCUSDT', 'buy', 0.01, 60000, 0.6,"
        " 'USDT', 'taker', now())"
    )
    code, out, err = await tradingd(config_path, "report")
    assert code == 0, err
    assert " UTC (1 day); " in out.splitlines()[0]
