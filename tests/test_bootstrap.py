"""``tradingd --bootstrap``: instruments, OHLC backfill, states, resume, failures, progress."""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import signal
import sys
import time
from collections.abc import AsyncIterator
from decimal import Decimal
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import asyncpg
import pytest
import redis.asyncio as aioredis
from hypothesis import given, settings
from hypothesis import strategies as st

from tradingd.bootstrap import (
    PAGE_BARS,
    RetryPolicy,
    Watermark,
    align_up,
    last_closed_open_us,
    next_cursor,
    page_window,
    plan_series,
    resume_from,
    run_bootstrap,
)
from tradingd.config import Config, parse_config
from tradingd.model import Instrument, MarketType
from tradingd.progress import ProgressReporter, render_bar
from tradingd.sdnotify import Notifier
from tradingd.state import ExchangeState, read_state, transition
from tradingd.testing.demo import render_toml, seed_deribit_history
from tradingd.testing.fake_binance import FakeBinance
from tradingd.testing.fake_deribit import FakeDeribit

MINUTE_US = 60_000_000
REPO = Path(__file__).resolve().parents[1]


class RecordingNotifier(Notifier):
    def __init__(self) -> None:
        super().__init__(environ={})
        self.sent: list[dict[str, str]] = []

    def notify(self, fields: Any) -> bool:
        self.sent.append(dict(fields))
        return True


def today() -> dt.date:
    return dt.datetime.now(dt.UTC).date()


def day_start_us(day: dt.date) -> int:
    return int(dt.datetime(day.year, day.month, day.day, tzinfo=dt.UTC).timestamp()) * 1_000_000


def make_document(
    database_url: str,
    redis_url: str,
    state_dir: Path,
    *,
    binance: FakeBinance | None = None,
    deribit: FakeDeribit | None = None,
    deribit_urls: tuple[str, str] | None = None,
    start: dt.date | None = None,
    resolutions: list[str] | None = None,
    binance_symbols: list[str] | None = None,
    log_level: str = "INFO",
) -> dict[str, Any]:
    exchanges: dict[str, Any] = {}
    if binance is not None:
        exchanges["binance"] = {
            "ws_url": binance.ws_url,
            "rest_url": binance.rest_url,
            "symbols": binance_symbols or ["BTCUSDT", "ETHUSDT"],
        }
    if deribit is not None or deribit_urls is not None:
        ws, rest = deribit_urls or (deribit.ws_url, deribit.rest_url)  # type: ignore[union-attr]
        exchanges["deribit"] = {
            "ws_url": ws,
            "rest_url": rest,
            "symbols": ["BTC-PERPETUAL"],
            "currencies": ["BTC"],
        }
    return {
        "daemon": {"state_dir": str(state_dir), "log_level": log_level},
        "database": {"url": database_url},
        "redis": {"url": redis_url},
        "backfill": {
            "start_date": start or today() - dt.timedelta(days=1),
            "resolutions": resolutions or ["1m"],
        },
        "exchanges": exchanges,
    }


async def bootstrap(config: Config, notifier: Notifier | None = None) -> int:
    notifier = notifier or RecordingNotifier()
    return await run_bootstrap(
        config,
        notifier=notifier,
        progress=ProgressReporter(notifier=notifier, interactive=False),
        retry=RetryPolicy(initial=0.01, maximum=0.05, attempts=3),
        handle_signals=False,
    )


@pytest.fixture
async def fake_deribit() -> AsyncIterator[FakeDeribit]:
    fake = FakeDeribit()
    now_ms = time.time_ns() // 1_000_000
    seed_deribit_history(fake, ["BTC-PERPETUAL"], now_ms - 3 * 3600_000, now_ms)
    await fake.start()
    try:
        yield fake
    finally:
        await fake.stop()


@pytest.fixture
async def db(migrated_database_url: str) -> AsyncIterator[asyncpg.Connection]:
    conn = await asyncpg.connect(migrated_database_url)
    try:
        yield conn
    finally:
        await conn.close()


def klines_starts(fake: FakeBinance, symbol: str, interval: str = "1m") -> list[int]:
    starts = []
    for _method, path in fake.requests:
        parts = urlsplit(path)
        query = parse_qs(parts.query)
        if (
            parts.path == "/api/v3/klines"
            and query["symbol"] == [symbol]
            and query["interval"] == [interval]
        ):
            starts.append(int(query["startTime"][0]) * 1000)
    return starts


async def series_ticks(db: asyncpg.Connection, exchange: str, name: str, res: str) -> list[int]:
    rows = await db.fetch(
        "SELECT (extract(epoch FROM tick) * 1000000)::bigint AS us FROM ohlc"
        " WHERE exchange = $1 AND instrument_name = $2 AND resolution = $3 ORDER BY tick",
        exchange,
        name,
        res,
    )
    return [r["us"] for r in rows]


# -- pure planning --------------------------------------------------------------------------


@settings(max_examples=200, deadline=None)
@given(
    period_min=st.sampled_from([1, 3, 5, 60, 1440]),
    span=st.integers(min_value=0, max_value=5 * PAGE_BARS),
    offset=st.integers(min_value=0, max_value=50),
    cap=st.integers(min_value=1, max_value=PAGE_BARS),
    present=st.data(),
)
def test_paging_collects_every_available_bar_exactly_once(
    period_min: int, span: int, offset: int, cap: int, present: st.DataObject
) -> None:
    period = period_min * MINUTE_US
    start = (1_700_000_000_000_000 // period + offset) * period
    end = start + span * period
    grid = list(range(start, end + 1, period))
    available = sorted(present.draw(st.sets(st.sampled_from(grid))) if grid else [])
    collected: list[int] = []
    cursor, requests = start, 0
    while cursor <= end:
        window_end = page_window(cursor, end, period)
        # A venue that returns at most `cap` bars of the window, oldest first.
        page = [t for t in available if cursor <= t <= window_end][:cap]
        collected += page
        new_cursor = next_cursor(window_end, page, period)
        assert new_cursor > cursor
        cursor = new_cursor
        requests += 1
        assert requests <= len(grid) + 1
    assert collected == available


@given(
    start_min=st.integers(min_value=0, max_value=10_000),
    stored=st.one_of(st.none(), st.integers(min_value=-100, max_value=20_000)),
    mark=st.one_of(
        st.none(),
        st.tuples(st.integers(-100, 20_000), st.integers(-100, 20_000)),
    ),
)
def test_resume_point_never_skips_unfetched_or_unstored_bars(
    start_min: int, stored: int | None, mark: tuple[int, int] | None
) -> None:
    period = MINUTE_US
    start = start_min * period + 7  # not aligned: the first bar opens at the next minute
    first = align_up(start, period)
    stored_us = None if stored is None else first + stored * period
    watermark = (
        None if mark is None else Watermark(first + mark[0] * period, first + mark[1] * period)
    )
    resume = resume_from(start, period, stored_us, watermark)
    assert resume >= first and resume % period == 0
    if stored_us is None or stored_us < first:
        assert resume == first
    else:
        # Never beyond what is stored, nor beyond what a valid watermark says was fetched.
        assert resume <= stored_us + period
        if watermark is not None and watermark.from_us <= first <= watermark.through_us:
            assert resume <= watermark.through_us + period


def test_last_closed_bar_and_alignment() -> None:
    now = 1_700_000_123_456_789
    assert last_closed_open_us(now, MINUTE_US) + 2 * MINUTE_US > now
    assert last_closed_open_us(now, MINUTE_US) + MINUTE_US <= now
    assert align_up(now, MINUTE_US) % MINUTE_US == 0 and align_up(now, MINUTE_US) >= now


def test_plan_series_reports_unlisted_symbols_and_matches_case() -> None:
    instrument = Instrument(
        exchange="binance",
        instrument_name="BTCUSDT",
        market_type=MarketType.SPOT,
        base_currency="BTC",
        quote_currency="USDT",
        tick_size=Decimal("0.01"),
        min_trade_amount=Decimal("0.00001"),
    )
    series, missing = plan_series("binance", ["btcusdt", "NOPE"], ["1m", "1h", "1m"], [instrument])
    assert [(s.instrument_name, s.resolution) for s in series] == [
        ("BTCUSDT", "1m"),
        ("BTCUSDT", "1h"),
    ]
    assert missing == ["NOPE"]


@given(st.floats(allow_nan=True, allow_infinity=True), st.integers(min_value=1, max_value=80))
def test_render_bar_has_a_fixed_width(fraction: float, width: int) -> None:
    bar = render_bar(fraction, width)
    assert len(bar) == width + 2 and bar[0] == "[" and bar[-1] == "]"
    assert set(bar[1:-1]) <= {"#", "."}


def test_progress_extends_the_systemd_timeout_only_while_work_moves() -> None:
    now = [0.0]
    notifier = RecordingNotifier()
    progress = ProgressReporter(
        notifier=notifier, interactive=False, clock=lambda: now[0], stall_after=60.0
    )
    task = progress.add("binance BTCUSDT 1m", 100)
    progress.advance(task, 40)
    progress.tick()
    assert {"EXTEND_TIMEOUT_USEC": "30000000"} in notifier.sent
    assert any("40.0%" in m.get("STATUS", "") for m in notifier.sent)
    notifier.sent.clear()
    now[0] = 200.0  # nothing advanced for 200 s: stuck
    progress.tick()
    assert not any("EXTEND_TIMEOUT_USEC" in m for m in notifier.sent)
    assert any("STATUS" in m for m in notifier.sent)


# -- against the fakes and real storage -----------------------------------------------------


async def test_bootstrap_fills_instruments_and_ohlc_and_leaves_every_exchange_locked(
    migrated_database_url: str,
    redis_url: str,
    tmp_path: Path,
    fake_binance: FakeBinance,
    fake_deribit: FakeDeribit,
    db: asyncpg.Connection,
    rds: aioredis.Redis,
) -> None:
    start = today() - dt.timedelta(days=1)
    config = parse_config(
        make_document(
            migrated_database_url,
            redis_url,
            tmp_path,
            binance=fake_binance,
            deribit=fake_deribit,
            start=start,
            resolutions=["1m", "1h"],
        )
    )
    notifier = RecordingNotifier()
    assert await bootstrap(config, notifier) == 0

    by_type = {
        (r["exchange"], r["market_type"]): (r["n"], r["active"])
        for r in await db.fetch(
            "SELECT exchange, market_type, count(*) AS n, count(*) FILTER (WHERE is_active)"
            " AS active FROM instruments GROUP BY 1, 2"
        )
    }
    assert by_type[("binance", "spot")] == (5, 4)  # LUNAUSDT is in BREAK
    assert by_type[("deribit", "perpetual")] == (1, 1)  # currencies = ["BTC"]

    now_us = time.time_ns() // 1000
    ticks = await series_ticks(db, "binance", "BTCUSDT", "1m")
    assert ticks[0] == day_start_us(start)
    last = last_closed_open_us(now_us, MINUTE_US)
    assert ticks[-1] in (last, last - MINUTE_US)
    assert ticks == list(range(ticks[0], ticks[-1] + 1, MINUTE_US))  # contiguous
    assert await db.fetchval("SELECT bool_and(closed) FROM ohlc WHERE exchange = 'binance'")
    hourly = await series_ticks(db, "binance", "ETHUSDT", "1h")
    assert hourly[0] == day_start_us(start) and len(hourly) >= 24
    deribit_bars = await series_ticks(db, "deribit", "BTC-PERPETUAL", "1m")
    assert len(deribit_bars) >= 170  # one back-dated trade a minute for 3 h

    assert await read_state(rds, "binance") is ExchangeState.LOCKED
    assert await read_state(rds, "deribit") is ExchangeState.LOCKED
    rows = await db.fetch(
        "SELECT exchange, from_state, to_state, operator FROM state_transitions ORDER BY id"
    )
    assert {(r["exchange"], r["from_state"], r["to_state"]) for r in rows} == {
        ("binance", None, "BOOTSTRAPPING"),
        ("binance", "BOOTSTRAPPING", "LOCKED"),
        ("deribit", None, "BOOTSTRAPPING"),
        ("deribit", "BOOTSTRAPPING", "LOCKED"),
    }
    assert all(r["operator"] for r in rows)
    assert any(m.get("STATUS", "").startswith("bootstrap finished") for m in notifier.sent)


async def test_a_rerun_resumes_after_the_last_stored_bar(
    migrated_database_url: str,
    redis_url: str,
    tmp_path: Path,
    fake_binance: FakeBinance,
    db: asyncpg.Connection,
    rds: aioredis.Redis,
) -> None:
    config = parse_config(
        make_document(migrated_database_url, redis_url, tmp_path, binance=fake_binance)
    )
    assert await bootstrap(config) == 0
    before = await series_ticks(db, "binance", "BTCUSDT", "1m")
    fake_binance.requests.clear()
    assert await bootstrap(config) == 0
    after = await series_ticks(db, "binance", "BTCUSDT", "1m")
    # The second run asked only for what came after the last stored closed bar.
    starts = klines_starts(fake_binance, "BTCUSDT")
    assert all(s > before[-1] for s in starts)
    if starts:
        assert starts[0] == before[-1] + MINUTE_US
    assert after[: len(before)] == before
    assert after == list(range(after[0], after[-1] + 1, MINUTE_US))
    assert await read_state(rds, "binance") is ExchangeState.LOCKED


async def test_vanished_and_expired_instruments_become_inactive(
    migrated_database_url: str,
    redis_url: str,
    tmp_path: Path,
    fake_binance: FakeBinance,
    db: asyncpg.Connection,
) -> None:
    await db.execute(
        "INSERT INTO instruments (exchange, instrument_name, market_type, base_currency,"
        " quote_currency, tick_size, min_trade_amount, expiration_timestamp, is_active) VALUES"
        " ('binance', 'GONEUSDT', 'spot', 'GONE', 'USDT', 0.01, 1, NULL, true),"
        " ('binance', 'OLDFUT', 'future', 'OLD', 'USDT', 0.01, 1, now() - interval '1 day', true),"
        " ('deribit', 'BTC-PERPETUAL', 'perpetual', 'BTC', 'USD', 0.5, 10, NULL, true)"
    )
    config = parse_config(
        make_document(
            migrated_database_url, redis_url, tmp_path, binance=fake_binance, resolutions=["1d"]
        )
    )
    assert await bootstrap(config) == 0
    active = {
        r["instrument_name"]: r["is_active"]
        for r in await db.fetch("SELECT instrument_name, is_active FROM instruments")
    }
    assert active["GONEUSDT"] is False
    assert active["OLDFUT"] is False
    assert active["BTCUSDT"] is True
    assert active["BTC-PERPETUAL"] is True  # another exchange's instruments are left alone


async def test_one_exchange_failing_does_not_stop_the_others(
    migrated_database_url: str,
    redis_url: str,
    tmp_path: Path,
    fake_binance: FakeBinance,
    rds: aioredis.Redis,
    capsys: pytest.CaptureFixture[str],
) -> None:
    dead = FakeDeribit()
    await dead.start()
    urls = (dead.ws_url, dead.rest_url)
    await dead.stop()  # nothing listens there any more
    config = parse_config(
        make_document(
            migrated_database_url, redis_url, tmp_path, binance=fake_binance, deribit_urls=urls
        )
    )
    assert await bootstrap(config) == 1
    assert await read_state(rds, "binance") is ExchangeState.LOCKED
    assert await read_state(rds, "deribit") is ExchangeState.BOOTSTRAPPING
    summary = capsys.readouterr().out
    assert "binance      ok" in summary
    assert "deribit      FAILED" in summary and "venue unavailable" in summary


async def test_rate_limits_and_server_errors_are_waited_out(
    migrated_database_url: str,
    redis_url: str,
    tmp_path: Path,
    fake_binance: FakeBinance,
    rds: aioredis.Redis,
) -> None:
    config = parse_config(
        make_document(migrated_database_url, redis_url, tmp_path, binance=fake_binance)
    )
    fake_binance.inject_http_error(429, retry_after=0)
    fake_binance.inject_http_error(503)
    assert await bootstrap(config) == 0
    assert await read_state(rds, "binance") is ExchangeState.LOCKED


async def test_an_unlisted_symbol_fails_its_exchange_with_the_reason(
    migrated_database_url: str,
    redis_url: str,
    tmp_path: Path,
    fake_binance: FakeBinance,
    rds: aioredis.Redis,
    capsys: pytest.CaptureFixture[str],
) -> None:
    config = parse_config(
        make_document(
            migrated_database_url,
            redis_url,
            tmp_path,
            binance=fake_binance,
            binance_symbols=["BTCUSDT", "DOGEUSDT"],
        )
    )
    assert await bootstrap(config) == 1
    assert await read_state(rds, "binance") is ExchangeState.BOOTSTRAPPING
    assert "DOGEUSDT is not listed by the venue" in capsys.readouterr().out


async def test_a_clock_past_the_limit_stops_before_any_state_change(
    migrated_database_url: str,
    redis_url: str,
    tmp_path: Path,
    fake_binance: FakeBinance,
    rds: aioredis.Redis,
) -> None:
    fake_binance.clock_offset_ms = 120_000
    config = parse_config(
        make_document(migrated_database_url, redis_url, tmp_path, binance=fake_binance)
    )
    assert await bootstrap(config) == 69
    assert await read_state(rds, "binance") is None


async def test_a_healthy_exchange_is_caught_up_without_a_state_change(
    migrated_database_url: str,
    redis_url: str,
    tmp_path: Path,
    fake_binance: FakeBinance,
    db: asyncpg.Connection,
    rds: aioredis.Redis,
) -> None:
    pool = await asyncpg.create_pool(migrated_database_url, min_size=1, max_size=2)
    try:
        for state in (ExchangeState.BOOTSTRAPPING, ExchangeState.LOCKED, ExchangeState.HEALTHY):
            await transition(pool, rds, "binance", state, operator="test", reason="setup")
    finally:
        await pool.close()
    config = parse_config(
        make_document(migrated_database_url, redis_url, tmp_path, binance=fake_binance)
    )
    assert await bootstrap(config) == 0
    assert await read_state(rds, "binance") is ExchangeState.HEALTHY
    assert await series_ticks(db, "binance", "BTCUSDT", "1m")


async def test_sigterm_mid_backfill_stops_cleanly_and_a_rerun_resumes_without_duplicates(
    migrated_database_url: str,
    redis_url: str,
    tmp_path: Path,
    fake_binance: FakeBinance,
    db: asyncpg.Connection,
    rds: aioredis.Redis,
) -> None:
    start = today() - dt.timedelta(days=20)  # about 29 pages of 1m bars
    document = make_document(
        migrated_database_url,
        redis_url,
        tmp_path,
        binance=fake_binance,
        binance_symbols=["BTCUSDT"],
        start=start,
        log_level="DEBUG",
    )
    config_path = tmp_path / "tradingd.toml"
    config_path.write_text(render_toml(document))
    fake_binance.http_delay = 0.3
    env = {k: v for k, v in os.environ.items() if k not in ("NOTIFY_SOCKET", "JOURNAL_STREAM")}
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "tradingd",
        "--config",
        str(config_path),
        "--bootstrap",
        cwd=REPO,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    assert process.stderr is not None and process.stdout is not None
    seen: list[str] = []
    async with asyncio.timeout(60):
        while True:
            line = (await process.stderr.readline()).decode()
            assert line, "bootstrap ended before writing a page:\n" + "".join(seen)
            seen.append(line)
            if "BTCUSDT 1m: wrote" in line:
                break
    process.send_signal(signal.SIGTERM)
    async with asyncio.timeout(60):
        rest, _ = await asyncio.gather(process.stderr.read(), process.wait())
    output = (await process.stdout.read()).decode()
    assert process.returncode == 128 + signal.SIGTERM, "".join(seen) + rest.decode()
    assert "INTERRUPTED" in output
    assert await read_state(rds, "binance") is ExchangeState.BOOTSTRAPPING
    partial = await series_ticks(db, "binance", "BTCUSDT", "1m")
    assert partial and partial[0] == day_start_us(start)
    total = (last_closed_open_us(time.time_ns() // 1000, MINUTE_US) - partial[0]) // MINUTE_US
    assert len(partial) < total

    fake_binance.http_delay = 0.0
    fake_binance.requests.clear()
    config = parse_config(document)
    assert await bootstrap(config) == 0
    starts = klines_starts(fake_binance, "BTCUSDT")
    assert starts[0] == partial[-1] + MINUTE_US  # resumed, nothing fetched twice
    ticks = await series_ticks(db, "binance", "BTCUSDT", "1m")
    assert ticks[: len(partial)] == partial
    assert ticks == list(range(ticks[0], ticks[-1] + 1, MINUTE_US))
    assert await db.fetchval(
        "SELECT count(*) = count(DISTINCT tick) FROM ohlc WHERE instrument_name = 'BTCUSDT'"
    )
    assert await read_state(rds, "binance") is ExchangeState.LOCKED
