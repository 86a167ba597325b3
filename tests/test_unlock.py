"""``tradingd unlock``: the verification report, each refusing check, --force, confirmation."""

from __future__ import annotations

import asyncio
import os
import sys
import time
from pathlib import Path
from typing import Any

import asyncpg
import pytest
import redis.asyncio as aioredis
from hypothesis import given
from hypothesis import strategies as st

from tradingd.bans import banned_until_note, banned_until_us
from tradingd.cli import build_parser
from tradingd.clock import ClockReading
from tradingd.config import Config, parse_config
from tradingd.model import MarketType, Trade
from tradingd.state import ExchangeState, IllegalTransition, read_state, transition
from tradingd.storage.writer import write_trades
from tradingd.testing.demo import render_toml
from tradingd.testing.fake_binance import FakeBinance
from tradingd.testing.fake_deribit import FakeDeribit
from tradingd.verify import ExchangeFacts, SymbolFacts, evaluate, run_unlock

REPO = Path(__file__).resolve().parents[1]
SYMBOLS = {"binance": ["BTCUSDT", "ETHUSDT"], "deribit": ["BTC-PERPETUAL"]}


@pytest.fixture(autouse=True)
def operator(monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv("SUDO_USER", "alice")
    return "alice"


def make_config(
    database_url: str, redis_url: str, tmp_path: Path, **venues: FakeBinance | FakeDeribit
) -> dict[str, Any]:
    exchanges = {
        name: {
            "ws_url": fake.ws_url,
            "rest_url": fake.rest_url,
            "symbols": SYMBOLS[name],
            **({"currencies": ["BTC"]} if name == "deribit" else {}),
        }
        for name, fake in venues.items()
    }
    return {
        "daemon": {"state_dir": str(tmp_path)},
        "database": {"url": database_url},
        "redis": {"url": redis_url},
        "exchanges": exchanges,
    }


async def seed_verified(pool: asyncpg.Pool, rds: aioredis.Redis, exchange: str) -> None:
    """Everything a careful operator wants to see: LOCKED, instruments, bars, trades."""
    now_us = time.time_ns() // 1000
    market = MarketType.SPOT if exchange == "binance" else MarketType.PERPETUAL
    async with pool.acquire() as conn:
        for symbol in SYMBOLS[exchange]:
            await conn.execute(
                "INSERT INTO instruments (exchange, instrument_name, market_type, base_currency,"
                " quote_currency, tick_size, min_trade_amount) VALUES ($1, $2, $3, 'X', 'Y', 0.01, 1)",
                exchange,
                symbol,
                market.value,
            )
            await conn.execute(
                "INSERT INTO ohlc (exchange, instrument_name, resolution, tick, open, high, low,"
                " close, volume, closed) SELECT $1, $2, '1m', date_trunc('minute', now()) - m *"
                " interval '1 minute', 1, 2, 0.5, 1.5, 10, true FROM generate_series(1, 30) m",
                exchange,
                symbol,
            )
            trades = [
                Trade(
                    exchange=exchange,
                    instrument_name=symbol,
                    market_type=market,
                    trade_id=str(seq),
                    trade_seq=seq,
                    price_text="100.5",
                    quantity_text="0.1",
                    is_buyer_maker=False,
                    trade_us=now_us - (10 - seq) * 1_000_000,
                    received_us=now_us,
                )
                for seq in range(1, 11)
            ]
            await write_trades(conn, trades)
    for state in (ExchangeState.BOOTSTRAPPING, ExchangeState.LOCKED):
        await transition(pool, rds, exchange, state, operator="bootstrap", reason="setup")


def unlock_args(*argv: str) -> Any:
    return build_parser().parse_args(["unlock", *argv])


async def last_transition(pool: asyncpg.Pool, exchange: str) -> asyncpg.Record:
    row = await pool.fetchrow(
        "SELECT * FROM state_transitions WHERE exchange = $1 ORDER BY id DESC LIMIT 1", exchange
    )
    assert row is not None
    return row


# -- the pure checks ------------------------------------------------------------------------

_symbol_facts = st.builds(
    SymbolFacts,
    symbol=st.sampled_from(["A", "B", "C"]),
    instrument_name=st.one_of(st.none(), st.just("A")),
    active=st.booleans(),
    trades=st.integers(0, 3),
    last_trade_age=st.one_of(st.none(), st.floats(0, 10_000)),
    ohlc_last_day=st.integers(0, 3),
)


@given(
    state=st.sampled_from([None, *ExchangeState]),
    symbols=st.lists(_symbol_facts, max_size=3),
    gaps=st.integers(0, 2),
    skew=st.one_of(st.none(), st.floats(-200, 200)),
    trades_configured=st.booleans(),
)
def test_checks_fail_exactly_when_a_rule_is_broken(
    state: ExchangeState | None,
    symbols: list[SymbolFacts],
    gaps: int,
    skew: float | None,
    trades_configured: bool,
) -> None:
    facts = ExchangeFacts("x", state, symbols=symbols, open_gaps=gaps)
    facts.trades_configured = trades_configured
    if skew is not None:
        facts.clock = ClockReading(exchange="x", skew=skew, round_trip=0.01, at_us=0)
    checks = evaluate(facts, max_skew=60.0, warn_skew=1.0)
    broken = (
        state not in (ExchangeState.LOCKED, ExchangeState.HEALTHY)
        or any(s.instrument_name is None or not s.active for s in symbols)
        or any(s.ohlc_last_day <= 0 for s in symbols)
        or (trades_configured and any(s.trades <= 0 for s in symbols))
        or gaps > 0
        or skew is None
        or abs(skew) > 60.0
    )
    assert any(c.failed for c in checks) == broken
    state_check = next(c for c in checks if c.name == "state")
    assert not state_check.forceable or not state_check.failed


# -- the command against real storage and a fake venue --------------------------------------


async def test_unlock_succeeds_when_every_check_passes_and_records_who_and_when(
    migrated_database_url: str,
    redis_url: str,
    tmp_path: Path,
    fake_binance: FakeBinance,
    pool: asyncpg.Pool,
    rds: aioredis.Redis,
    capsys: pytest.CaptureFixture[str],
) -> None:
    await seed_verified(pool, rds, "binance")
    config = parse_config(
        make_config(migrated_database_url, redis_url, tmp_path, binance=fake_binance)
    )
    before = time.time()
    assert await run_unlock(unlock_args("--exchange", "binance", "--yes"), config) == 0
    assert await read_state(rds, "binance") is ExchangeState.HEALTHY
    row = await last_transition(pool, "binance")
    assert (row["from_state"], row["to_state"]) == ("LOCKED", "HEALTHY")
    assert row["operator"] == "alice"
    assert row["reason"] == "verified by operator"
    assert row["at"].timestamp() >= before - 1
    out = capsys.readouterr().out
    for text in (
        "== binance: LOCKED",
        "spot",
        "BTCUSDT",
        "open gaps: 0",
        "clock skew",
        "[ok  ] clock",
    ):
        assert text in out
    assert "binance: HEALTHY (by alice" in out


def _break_instruments(conn: asyncpg.Connection) -> Any:
    return conn.execute(
        "UPDATE instruments SET is_active = false WHERE instrument_name = 'ETHUSDT'"
    )


def _break_ohlc(conn: asyncpg.Connection) -> Any:
    return conn.execute("DELETE FROM ohlc WHERE instrument_name = 'BTCUSDT'")


def _break_trades(conn: asyncpg.Connection) -> Any:
    return conn.execute("DELETE FROM public_trades WHERE instrument_name = 'ETHUSDT'")


def _break_gaps(conn: asyncpg.Connection) -> Any:
    return conn.execute(
        "INSERT INTO data_gaps (exchange, instrument_name, first_seq, last_seq, reason)"
        " VALUES ('binance', 'BTCUSDT', 5, 7, 'test')"
    )


@pytest.mark.parametrize(
    ("check", "breaks"),
    [
        ("instruments", _break_instruments),
        ("ohlc", _break_ohlc),
        ("trades", _break_trades),
        ("gaps", _break_gaps),
        ("clock", None),
    ],
)
async def test_unlock_refuses_when_a_check_fails(
    check: str,
    breaks: Any,
    migrated_database_url: str,
    redis_url: str,
    tmp_path: Path,
    fake_binance: FakeBinance,
    pool: asyncpg.Pool,
    rds: aioredis.Redis,
    capsys: pytest.CaptureFixture[str],
) -> None:
    await seed_verified(pool, rds, "binance")
    if breaks is None:
        fake_binance.clock_offset_ms = 120_000
    else:
        async with pool.acquire() as conn:
            await breaks(conn)
    config = parse_config(
        make_config(migrated_database_url, redis_url, tmp_path, binance=fake_binance)
    )
    assert await run_unlock(unlock_args("--exchange", "binance", "--yes"), config) == 1
    assert await read_state(rds, "binance") is ExchangeState.LOCKED
    captured = capsys.readouterr()
    assert f"refusing to unlock binance: {check}:" in captured.err
    assert f"[FAIL] {check}" in captured.out
    assert "nothing was unlocked" in captured.err


async def test_a_forced_unlock_records_the_reason_the_override_and_the_operator(
    migrated_database_url: str,
    redis_url: str,
    tmp_path: Path,
    fake_binance: FakeBinance,
    pool: asyncpg.Pool,
    rds: aioredis.Redis,
) -> None:
    await seed_verified(pool, rds, "binance")
    async with pool.acquire() as conn:
        await _break_gaps(conn)
    config = parse_config(
        make_config(migrated_database_url, redis_url, tmp_path, binance=fake_binance)
    )
    args = unlock_args(
        "--exchange", "binance", "--force", "--reason", "gap is a venue outage", "--yes"
    )
    assert await run_unlock(args, config) == 0
    assert await read_state(rds, "binance") is ExchangeState.HEALTHY
    row = await last_transition(pool, "binance")
    assert row["operator"] == "alice"
    assert "gap is a venue outage" in row["reason"]
    assert "FORCED" in row["reason"] and "gaps" in row["reason"]


async def test_force_needs_a_reason(
    migrated_database_url: str, redis_url: str, tmp_path: Path, fake_binance: FakeBinance
) -> None:
    config = parse_config(
        make_config(migrated_database_url, redis_url, tmp_path, binance=fake_binance)
    )
    assert await run_unlock(unlock_args("--exchange", "binance", "--force", "--yes"), config) == 64


@pytest.mark.parametrize(
    "states",
    [
        (),
        (ExchangeState.BOOTSTRAPPING,),
        (
            ExchangeState.BOOTSTRAPPING,
            ExchangeState.LOCKED,
            ExchangeState.HEALTHY,
            ExchangeState.RECONCILING,
        ),
    ],
    # AUDITING: tests/test_unlock_auditing.py.
    ids=["never-bootstrapped", "bootstrapping", "reconciling"],
)
async def test_unlock_from_anything_but_locked_or_auditing_is_rejected_even_when_forced(
    states: tuple[ExchangeState, ...],
    migrated_database_url: str,
    redis_url: str,
    tmp_path: Path,
    fake_binance: FakeBinance,
    pool: asyncpg.Pool,
    rds: aioredis.Redis,
    capsys: pytest.CaptureFixture[str],
) -> None:
    for state in states:
        await transition(pool, rds, "binance", state, operator="test", reason="setup")
    config = parse_config(
        make_config(migrated_database_url, redis_url, tmp_path, binance=fake_binance)
    )
    args = unlock_args("--exchange", "binance", "--force", "--reason", "try anyway", "--yes")
    assert await run_unlock(args, config) == 1
    assert await read_state(rds, "binance") == (states[-1] if states else None)
    assert (
        "unlock moves LOCKED (or AUDITING, reconciled) -> HEALTHY only" in capsys.readouterr().err
    )


async def test_the_state_table_rejects_illegal_transitions_with_a_clear_message(
    pool: asyncpg.Pool, rds: aioredis.Redis
) -> None:
    await transition(pool, rds, "binance", ExchangeState.BOOTSTRAPPING, operator="t", reason="x")
    with pytest.raises(IllegalTransition, match=r"BOOTSTRAPPING -> HEALTHY is not allowed"):
        await transition(pool, rds, "binance", ExchangeState.HEALTHY, operator="t", reason="x")
    assert await read_state(rds, "binance") is ExchangeState.BOOTSTRAPPING


async def test_without_a_terminal_it_needs_yes_and_in_a_terminal_it_asks(
    migrated_database_url: str,
    redis_url: str,
    tmp_path: Path,
    fake_binance: FakeBinance,
    pool: asyncpg.Pool,
    rds: aioredis.Redis,
    capsys: pytest.CaptureFixture[str],
) -> None:
    await seed_verified(pool, rds, "binance")
    config = parse_config(
        make_config(migrated_database_url, redis_url, tmp_path, binance=fake_binance)
    )
    args = unlock_args("--exchange", "binance")
    assert await run_unlock(args, config, interactive=False) == 64
    assert "add --yes" in capsys.readouterr().err
    prompts: list[str] = []

    def decline(prompt: str) -> bool:
        prompts.append(prompt)
        return False

    assert await run_unlock(args, config, interactive=True, confirm=decline) == 1
    assert "unlock binance" in prompts[0] and "alice" in prompts[0]
    assert await read_state(rds, "binance") is ExchangeState.LOCKED
    assert await run_unlock(args, config, interactive=True, confirm=lambda _p: True) == 0
    assert await read_state(rds, "binance") is ExchangeState.HEALTHY
    # Already HEALTHY: nothing to do, and no failure.
    assert await run_unlock(unlock_args("--all", "--yes"), config) == 0
    assert "nothing to unlock" in capsys.readouterr().out


async def test_all_is_all_or_nothing(
    migrated_database_url: str,
    redis_url: str,
    tmp_path: Path,
    fake_binance: FakeBinance,
    pool: asyncpg.Pool,
    rds: aioredis.Redis,
    capsys: pytest.CaptureFixture[str],
) -> None:
    async with FakeDeribit() as fake_deribit:
        await seed_verified(pool, rds, "binance")
        await seed_verified(pool, rds, "deribit")
        async with pool.acquire() as conn:
            await conn.execute("DELETE FROM public_trades WHERE exchange = 'deribit'")
        document = make_config(
            migrated_database_url, redis_url, tmp_path, binance=fake_binance, deribit=fake_deribit
        )
        config: Config = parse_config(document)
        assert await run_unlock(unlock_args("--all", "--yes"), config) == 1
        assert await read_state(rds, "binance") is ExchangeState.LOCKED
        assert await read_state(rds, "deribit") is ExchangeState.LOCKED
        assert "refusing to unlock deribit: trades" in capsys.readouterr().err
        assert await run_unlock(unlock_args("--exchange", "binance", "--yes"), config) == 0
        assert await read_state(rds, "binance") is ExchangeState.HEALTHY


async def test_the_cli_command_unlocks(
    migrated_database_url: str,
    redis_url: str,
    tmp_path: Path,
    fake_binance: FakeBinance,
    pool: asyncpg.Pool,
    rds: aioredis.Redis,
) -> None:
    await seed_verified(pool, rds, "binance")
    config_path = tmp_path / "tradingd.toml"
    config_path.write_text(
        render_toml(make_config(migrated_database_url, redis_url, tmp_path, binance=fake_binance))
    )
    env = {k: v for k, v in os.environ.items() if k not in ("NOTIFY_SOCKET", "JOURNAL_STREAM")}
    env["SUDO_USER"] = "bob"
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "tradingd",
        "--config",
        str(config_path),
        "unlock",
        "--exchange",
        "binance",
        "--yes",
        cwd=REPO,
        env=env,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    async with asyncio.timeout(60):
        out, err = await process.communicate()
    assert process.returncode == 0, out.decode() + err.decode()
    assert b"binance: HEALTHY (by bob" in out
    assert (await last_transition(pool, "binance"))["operator"] == "bob"


@pytest.mark.parametrize("ends_in", [120.0, -10.0])
async def test_unlock_refuses_while_a_recorded_ban_lasts_even_when_forced(
    ends_in: float,
    migrated_database_url: str,
    redis_url: str,
    tmp_path: Path,
    fake_binance: FakeBinance,
    pool: asyncpg.Pool,
    rds: aioredis.Redis,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The executor locks with the client's fault, which notes the ban's end (Binance 418's
    Retry-After); an unlock before it would only earn a longer ban."""
    await seed_verified(pool, rds, "binance")
    note = banned_until_note(int((time.time() + ends_in) * 1_000_000))
    reason = f"Binance refused us: POST /api/v3/order: HTTP 418 -1003: Injected.; {note}"
    for state, why in ((ExchangeState.HEALTHY, "setup"), (ExchangeState.LOCKED, reason)):
        await transition(pool, rds, "binance", state, operator="executor", reason=why)
    config = parse_config(
        make_config(migrated_database_url, redis_url, tmp_path, binance=fake_binance)
    )
    args = unlock_args("--exchange", "binance", "--yes", "--force", "--reason", "ban over?")
    code = await run_unlock(args, config)
    captured = capsys.readouterr()
    if ends_in > 0:
        assert code == 1 and await read_state(rds, "binance") is ExchangeState.LOCKED
        assert "refusing to unlock binance: ban: the venue's ban lasts" in captured.err
    else:
        assert code == 0 and await read_state(rds, "binance") is ExchangeState.HEALTHY
        assert "ban" not in captured.err


def test_a_ban_note_reads_back_rounded_up_to_the_second() -> None:
    assert banned_until_note(1_796_536_800_000_001) == "banned until 2026-12-06T06:00:01Z"
    assert banned_until_us("x; banned until 2026-12-06T06:00:01Z") == 1_796_536_801_000_000
    assert banned_until_us("banned until 2026-12-06T06:00:01Z, banned until 2026-12-06T07:00:00Z")
    assert banned_until_us("HTTP 418") is None
