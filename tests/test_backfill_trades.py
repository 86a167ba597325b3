"""``tradingd backfill trades``: the public data files' layout and both time units, checksum
refusal, resume after SIGKILL, overlap with live data, and the edge handed to the repairer.
Real PostgreSQL; the repository is ``FakeBinanceData`` on loopback."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from collections.abc import AsyncIterator
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import aiohttp
import asyncpg
import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.e2e.harness import eventually, offline_config
from tradingd.adapters.binance.parsing import BinanceParser
from tradingd.adapters.binance.public_data import (
    TradeFileError,
    TradesFile,
    format_trade_line,
    parse_checksum,
    parse_trade_lines,
    plan_trade_files,
)
from tradingd.backfill_trades import (
    BackfillError,
    BackfillRequest,
    ChecksumMismatch,
    TradesBackfill,
)
from tradingd.model import MarketType, Trade
from tradingd.progress import ProgressReporter
from tradingd.sdnotify import Notifier
from tradingd.sequencing import BACKFILL_EDGE
from tradingd.storage.writer import write_trades
from tradingd.testing.fake_binance_data import FakeBinanceData

DAY_US = 86_400_000_000
LOADED_US = 1_900_000_000_000_000


def day_us(day: date) -> int:
    return int(datetime(day.year, day.month, day.day, tzinfo=UTC).timestamp()) * 1_000_000


def tape(day: date, first_seq: int, count: int, *, spacing_us: int = 7_001_000) -> list[Trade]:
    """``count`` consecutive trades on ``day`` (whole milliseconds, so both units are exact)."""
    start = day_us(day)
    return [
        Trade(
            exchange="binance",
            instrument_name="BTCUSDT",
            market_type=MarketType.SPOT,
            trade_id=str(seq),
            trade_seq=seq,
            price_text=str(Decimal("60000.01000000") + Decimal(seq % 97)),
            quantity_text="0.00120000",
            is_buyer_maker=seq % 3 == 0,
            was_best_price_match=True,
            trade_us=start + (seq - first_seq) * spacing_us % DAY_US,
            received_us=LOADED_US,
        )
        for seq in range(first_seq, first_seq + count)
    ]


# -- the pure part ------------------------------------------------------------------------------


def test_whole_past_months_are_monthly_files_the_rest_daily() -> None:
    plan = plan_trade_files("BTCUSDT", date(2024, 12, 30), date(2025, 2, 2), today=date(2025, 3, 4))
    assert [f.name for f in plan] == [
        "BTCUSDT-trades-2024-12-30.zip",
        "BTCUSDT-trades-2024-12-31.zip",
        "BTCUSDT-trades-2025-01.zip",
        "BTCUSDT-trades-2025-02-01.zip",
        "BTCUSDT-trades-2025-02-02.zip",
    ]
    assert plan[2].path == "data/spot/monthly/trades/BTCUSDT/BTCUSDT-trades-2025-01.zip"
    assert plan[0].checksum_path == (
        "data/spot/daily/trades/BTCUSDT/BTCUSDT-trades-2024-12-30.zip.CHECKSUM"
    )
    assert plan[2].hours == 31 * 24
    # The current month is never monthly, even when the range covers it whole.
    current = plan_trade_files(
        "ETHBTC", date(2025, 3, 1), date(2025, 3, 31), today=date(2025, 3, 4)
    )
    assert len(current) == 31 and not any(f.monthly for f in current)


def test_milliseconds_before_2025_and_microseconds_after_give_the_same_times() -> None:
    old = TradesFile("BTCUSDT", date(2024, 12, 31), date(2024, 12, 31), monthly=False)
    new = TradesFile("BTCUSDT", date(2025, 1, 1), date(2025, 1, 1), monthly=False)
    (ms,) = parse_trade_lines(
        [b"51175358,17.80180000,5.69000000,101.29224200,1735689599999,True,True\n"],
        old,
        exchange="binance",
        received_us=1,
    )
    (us,) = parse_trade_lines(
        [b"51175359,17.80180000,5.69000000,101.29224200,1735689600010866,False,False\r\n"],
        new,
        exchange="binance",
        received_us=1,
    )
    assert ms.trade_us == 1735689599999000 and us.trade_us == 1735689600010866
    assert (ms.trade_seq, ms.trade_id, ms.is_buyer_maker, ms.was_best_price_match) == (
        51175358,
        "51175358",
        True,
        True,
    )
    assert (f"{us.price:f}", f"{us.quantity:f}", us.is_buyer_maker) == (
        "17.80180000",
        "5.69000000",
        False,
    )


def test_a_bad_line_is_an_error_naming_file_and_line() -> None:
    file = TradesFile("BTCUSDT", date(2025, 1, 1), date(2025, 1, 1), monthly=False)
    good = b"1,1.0,1.0,1.0,1735689600010866,True,True"
    cases = {
        b"2,1.0,1.0,1.0,1735689600010866,maybe,True": "isBuyerMaker",
        b"2,-1.0,1.0,1.0,1735689600010866,True,True": "price",
        b"2,1.0,1.0,1.0,1735603200000000,True,True": "outside 2025-01-01..2025-01-01",
        b"2,1.0,1.0": "expected 7 columns, found 3",
    }
    for line, reason in cases.items():
        with pytest.raises(
            TradeFileError, match=f"BTCUSDT-trades-2025-01-01.zip line 2: .*{reason}"
        ):
            list(parse_trade_lines([good, line], file, exchange="binance", received_us=1))
    # A header row (as futures files have) is skipped.
    header = b"id,price,qty,quote_qty,time,is_buyer_maker,is_best_match"
    assert len(list(parse_trade_lines([header, good], file, exchange="b", received_us=1))) == 1


def test_checksum_files() -> None:
    digest = "ab" * 32
    assert parse_checksum(f"{digest}  X.zip\n".encode(), "X.zip") == digest
    assert parse_checksum(f"{digest.upper()} *X.zip".encode(), "X.zip") == digest
    with pytest.raises(ValueError, match=r"X\.zip\.CHECKSUM: expected"):
        parse_checksum(f"{digest}  Y.zip".encode(), "X.zip")


@given(
    seq=st.integers(0, 2**62),
    price=st.decimals(Decimal("0.00000001"), Decimal("99999999"), places=8),
    quantity=st.decimals(Decimal("0.00000001"), Decimal("99999999"), places=8),
    offset_ms=st.integers(0, 86_399_999),
    maker=st.booleans(),
    day=st.dates(date(2017, 7, 14), date(2030, 12, 31)),
)
def test_a_written_line_parses_back_to_the_same_trade(
    seq: int, price: Decimal, quantity: Decimal, offset_ms: int, maker: bool, day: date
) -> None:
    file = TradesFile("BTCUSDT", day, day, monthly=False)
    trade = Trade(
        exchange="binance",
        instrument_name="BTCUSDT",
        market_type=MarketType.SPOT,
        trade_id=str(seq),
        trade_seq=seq,
        # As the repository writes them (plain, never "1E-8"): the parsed text is the file's.
        price_text=f"{price:f}",
        quantity_text=f"{quantity:f}",
        is_buyer_maker=maker,
        was_best_price_match=True,
        trade_us=day_us(day) + offset_ms * 1000,
        received_us=5,
    )
    for milliseconds in (True, False):
        line = format_trade_line(trade, milliseconds=milliseconds).encode()
        (back,) = parse_trade_lines([line], file, exchange="binance", received_us=5)
        assert back == trade


# -- against PostgreSQL and the fake repository ---------------------------------------------


@pytest.fixture
async def repository() -> AsyncIterator[FakeBinanceData]:
    async with FakeBinanceData() as fake:
        yield fake


def backfill(pool: asyncpg.Pool, http: aiohttp.ClientSession, base_url: str, tmp: Path):
    progress = ProgressReporter(notifier=Notifier(environ={}), interactive=False)
    return TradesBackfill(
        pool=pool,
        http=http,
        base_url=base_url,
        work_dir=tmp / "backfill",
        batch_size=100,
        progress=progress,
        clock_us=lambda: LOADED_US,
    )


async def stored(pool: asyncpg.Pool) -> list[Trade]:
    rows = await pool.fetch(
        "SELECT trade_id, trade_seq, price::text AS price, quantity::text AS quantity,"
        " is_buyer_maker, was_best_price_match,"
        " (extract(epoch FROM trade_timestamp) * 1000000)::bigint AS trade_us"
        " FROM public_trades ORDER BY trade_seq"
    )
    return [
        Trade(
            exchange="binance",
            instrument_name="BTCUSDT",
            market_type=MarketType.SPOT,
            trade_id=r["trade_id"],
            trade_seq=r["trade_seq"],
            price_text=str(Decimal(r["price"])),
            quantity_text=str(Decimal(r["quantity"])),
            is_buyer_maker=r["is_buyer_maker"],
            was_best_price_match=r["was_best_price_match"],
            trade_us=r["trade_us"],
            received_us=LOADED_US,
        )
        for r in rows
    ]


async def test_daily_and_monthly_files_in_both_units_load_exactly_once(
    pool: asyncpg.Pool, repository: FakeBinanceData, tmp_path: Path
) -> None:
    expected = (
        tape(date(2024, 12, 31), 1, 150)
        + [t for d in range(31) for t in tape(date(2025, 1, 1) + timedelta(d), 151 + 10 * d, 10)]
        + tape(date(2025, 2, 1), 461, 40)
    )
    repository.add_trades(expected)
    repository.publish_monthly("BTCUSDT", date(2025, 1, 1))
    request = BackfillRequest("binance", "BTCUSDT", date(2024, 12, 31), date(2025, 2, 1))
    async with aiohttp.ClientSession() as http:
        report = await backfill(pool, http, repository.base_url, tmp_path).run(
            request, today=date(2025, 3, 10)
        )
        assert (report.files, report.files_loaded, report.rows_read, report.rows_new) == (
            3,
            3,
            500,
            500,
        )
        assert await stored(pool) == expected
        files = await pool.fetch(
            "SELECT file_name, status, rows_read, first_seq, loaded_through_seq"
            " FROM trade_backfill_files ORDER BY first_day"
        )
        assert [tuple(r) for r in files] == [
            ("BTCUSDT-trades-2024-12-31.zip", "done", 150, 1, 150),
            ("BTCUSDT-trades-2025-01.zip", "done", 310, 151, 460),
            ("BTCUSDT-trades-2025-02-01.zip", "done", 40, 461, 500),
        ]
        assert not list((tmp_path / "backfill").iterdir())  # no zip left behind

        again = await backfill(pool, http, repository.base_url, tmp_path).run(
            request, today=date(2025, 3, 10)
        )
    assert (again.files_already_done, again.files_loaded, again.rows_read) == (3, 0, 0)
    assert sum(repository.downloads.values()) == 3  # nothing fetched twice
    assert await pool.fetchval("SELECT count(*) FROM data_gaps") == 0


async def test_an_unpublished_monthly_file_is_loaded_day_by_day(
    pool: asyncpg.Pool, repository: FakeBinanceData, tmp_path: Path
) -> None:
    trades = [t for d in range(28) for t in tape(date(2025, 2, 1) + timedelta(d), 1 + 5 * d, 5)]
    repository.add_trades(t for t in trades if t.trade_seq <= 50)  # 10 days; the rest absent
    request = BackfillRequest("binance", "BTCUSDT", date(2025, 2, 1), date(2025, 2, 28))
    async with aiohttp.ClientSession() as http:
        report = await backfill(pool, http, repository.base_url, tmp_path).run(
            request, today=date(2025, 3, 2)
        )
    assert report.files_loaded == 10 and len(report.absent) == 18
    assert [t.trade_seq for t in await stored(pool)] == list(range(1, 51))


async def test_a_checksum_mismatch_is_downloaded_again_once_then_refused(
    pool: asyncpg.Pool, repository: FakeBinanceData, tmp_path: Path
) -> None:
    repository.add_trades(tape(date(2025, 5, 1), 1, 50) + tape(date(2025, 5, 2), 51, 50))
    repository.add_trades(tape(date(2025, 5, 3), 101, 50))
    repository.corrupt("BTCUSDT-trades-2025-05-01.zip", times=1)
    repository.corrupt("BTCUSDT-trades-2025-05-02.zip", times=2)
    request = BackfillRequest("binance", "BTCUSDT", date(2025, 5, 1), date(2025, 5, 3))
    async with aiohttp.ClientSession() as http:
        with pytest.raises(ChecksumMismatch) as refused:
            await backfill(pool, http, repository.base_url, tmp_path).run(
                request, today=date(2025, 6, 1)
            )
        assert str(refused.value).startswith("BTCUSDT-trades-2025-05-02.zip: downloaded twice")
        assert repository.downloads["BTCUSDT-trades-2025-05-01.zip"] == 2  # once refused
        # The first file (accepted on its second download) is stored; nothing of the refused one.
        assert [t.trade_seq for t in await stored(pool)] == list(range(1, 51))
        assert "BTCUSDT-trades-2025-05-03.zip" not in repository.requested

        # The next run resumes: the stored file is not fetched again.
        report = await backfill(pool, http, repository.base_url, tmp_path).run(
            request, today=date(2025, 6, 1)
        )
    assert (report.files_already_done, report.files_loaded) == (1, 2)
    assert repository.downloads["BTCUSDT-trades-2025-05-01.zip"] == 2
    assert [t.trade_seq for t in await stored(pool)] == list(range(1, 151))


async def test_a_second_run_on_the_same_symbol_is_refused(
    pool: asyncpg.Pool, repository: FakeBinanceData, tmp_path: Path
) -> None:
    repository.add_trades(tape(date(2025, 5, 1), 1, 10))
    request = BackfillRequest("binance", "BTCUSDT", date(2025, 5, 1), date(2025, 5, 1))
    async with aiohttp.ClientSession() as http, pool.acquire() as other:
        key = "tradingd.backfill_trades:binance:BTCUSDT"
        await other.execute("SELECT pg_advisory_lock(hashtext($1))", key)
        with pytest.raises(BackfillError, match="another `tradingd backfill trades` is loading"):
            await backfill(pool, http, repository.base_url, tmp_path).run(
                request, today=date(2025, 6, 1)
            )
        await other.execute("SELECT pg_advisory_unlock(hashtext($1))", key)
        report = await backfill(pool, http, repository.base_url, tmp_path).run(
            request, today=date(2025, 6, 1)
        )
    assert report.rows_new == 10


def live(trades: list[Trade]) -> list[Trade]:
    """The same trades as the live stream delivers them (``timeUnit=MICROSECOND``), parsed by
    the adapter the receivers use: the backfill must produce the same identities."""
    parser = BinanceParser("binance")
    out: list[Trade] = []
    for t in trades:
        frame = {
            "stream": "btcusdt@trade",
            "data": {
                "e": "trade",
                "E": t.trade_us,
                "s": "BTCUSDT",
                "t": t.trade_seq,
                "p": f"{t.price:f}",
                "q": f"{t.quantity:f}",
                "T": t.trade_us,
                "m": t.is_buyer_maker,
                "M": True,
            },
        }
        (trade,) = parser.parse_frame(json.dumps(frame).encode(), t.trade_us + 900)
        assert isinstance(trade, Trade)
        out.append(trade)
    return out


async def test_overlap_with_live_data_stores_no_duplicate_and_the_edge_becomes_a_gap(
    pool: asyncpg.Pool, repository: FakeBinanceData, tmp_path: Path
) -> None:
    yesterday = datetime.now(UTC).date() - timedelta(1)
    files = tape(yesterday - timedelta(2), 1, 300) + tape(yesterday - timedelta(1), 301, 300)
    # The daemon captured 451..700 live (through the persister's write path), and an open
    # gap 200..210 was never repaired; later live data 801.. leaves a hole after the files.
    captured = live(tape(yesterday - timedelta(1), 301, 400)[150:])
    later = live(tape(yesterday, 801, 50))
    async with pool.acquire() as conn:
        await write_trades(conn, captured + later)
        await conn.execute(
            "INSERT INTO data_gaps (exchange, instrument_name, first_seq, last_seq, reason)"
            " VALUES ('binance', 'BTCUSDT', 200, 210, 'reconnect')"
        )
    repository.add_trades(files)
    request = BackfillRequest(
        "binance", "BTCUSDT", yesterday - timedelta(2), yesterday - timedelta(1)
    )
    async with aiohttp.ClientSession() as http:
        report = await backfill(pool, http, repository.base_url, tmp_path).run(
            request, today=yesterday + timedelta(1)
        )
    assert (report.rows_read, report.rows_new) == (600, 450)  # 451..600 were already there
    seqs = [r["trade_seq"] for r in await pool.fetch("SELECT trade_seq FROM public_trades")]
    assert len(seqs) == len(set(seqs)) == 700 + 50
    assert sorted(seqs) == list(range(1, 701)) + list(range(801, 851))
    gaps = await pool.fetch(
        "SELECT first_seq, last_seq, status, reason FROM data_gaps ORDER BY first_seq"
    )
    assert [tuple(g) for g in gaps] == [
        (200, 210, "repaired", "reconnect / filled by tradingd backfill trades"),
    ]
    # The files end at 600 but live data goes on to 700: the edge is after the live data here.
    assert report.edge_gap is None

    # A backfill ending before live data starts hands the hole to the repairer.
    await pool.execute("DELETE FROM public_trades WHERE trade_seq BETWEEN 451 AND 700")
    await pool.execute("DELETE FROM trade_backfill_files")
    async with aiohttp.ClientSession() as http:
        report = await backfill(pool, http, repository.base_url, tmp_path).run(
            request, today=yesterday + timedelta(1)
        )
    assert report.edge_gap == (601, 800)
    gap = await pool.fetchrow("SELECT * FROM data_gaps WHERE reason = $1", BACKFILL_EDGE)
    assert (gap["first_seq"], gap["last_seq"], gap["status"]) == (601, 800, "open")


# -- the command, killed and resumed --------------------------------------------------------


async def test_the_command_resumes_after_sigkill_mid_file(
    tmp_path: Path,
    migrated_database_url: str,
    redis_url: str,
    pool: asyncpg.Pool,
    repository: FakeBinanceData,
) -> None:
    first = datetime.now(UTC).date() - timedelta(4)
    days = [first + timedelta(d) for d in range(3)]
    trades = tape(days[0], 1, 1000) + tape(days[1], 1001, 1000) + tape(days[2], 2001, 1000)
    repository.add_trades(trades)
    config = offline_config(
        tmp_path / "tradingd.toml",
        state_dir=tmp_path / "state",
        database_url=migrated_database_url,
        redis_url=redis_url,
        sections={
            "backfill": {"trades_base_url": repository.base_url},
            "persister": {"batch_size": 100},
        },
    )
    args = [
        "--config",
        str(config),
        "backfill",
        "trades",
        "--exchange",
        "binance",
        "--symbol",
        "btcusdt",
        "--from",
        f"{days[0]}",
        "--to",
        f"{days[2]}",
    ]

    async def start() -> asyncio.subprocess.Process:
        return await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "tradingd",
            *args,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env={"PATH": os.environ.get("PATH", "/usr/bin:/bin")},
        )

    # An uncommitted row with the identity of trade 1450 makes the batch holding it wait: the
    # command is stopped in the middle of the second file, with 1001..1400 committed.
    blocker = trades[1449]
    async with pool.acquire() as holder:
        await write_trades(holder, trades[::1000])  # creates the months' partitions
        await holder.execute("DELETE FROM public_trades")
        transaction = holder.transaction()
        await transaction.start()
        await write_trades(holder, [blocker])
        process = await start()
        try:

            async def waiting_on_the_row() -> bool:
                return bool(
                    await pool.fetchval(
                        "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'"
                        " AND datname = current_database()"
                    )
                )

            await eventually(waiting_on_the_row, timeout=60, what="the command to reach 1450")
            process.send_signal(signal.SIGKILL)
            await process.wait()
        finally:
            if process.returncode is None:
                process.kill()
                await process.wait()
            await transaction.rollback()
    progress = {
        r["file_name"]: tuple(r)[1:]
        for r in await pool.fetch(
            "SELECT file_name, status, rows_read, loaded_through_seq FROM trade_backfill_files"
        )
    }
    names = [f"BTCUSDT-trades-{d}.zip" for d in days]
    assert progress == {names[0]: ("done", 1000, 1000), names[1]: ("loading", 400, 1400)}
    assert await pool.fetchval("SELECT count(*) FROM public_trades") == 1400

    process = await start()
    out, err = await asyncio.wait_for(process.communicate(), 120)
    assert process.returncode == 0, err.decode()
    assert "2 files loaded, 1 already done" in out.decode()
    assert "trades: 1600 read, 1600 new" in out.decode()
    seqs = [r["trade_seq"] for r in await pool.fetch("SELECT trade_seq FROM public_trades")]
    assert sorted(seqs) == list(range(1, 3001))  # each once
    assert repository.downloads[names[0]] == 1  # a finished file is not fetched again
    rows_read = await pool.fetchval(
        "SELECT rows_read FROM trade_backfill_files WHERE file_name = $1", names[1]
    )
    assert rows_read == 1000  # resumed after 1400, not from the file's start


async def test_a_running_repairer_takes_over_a_gap_another_process_recorded(
    pool: asyncpg.Pool,
) -> None:
    from tests.test_repairer import ScriptedHistory, gaps_queue
    from tradingd.actors.repairer import GapRepairer
    from tradingd.supervisor import ActorContext

    history = ScriptedHistory(50)
    fetched = asyncio.Event()
    fetch = history.fetch_trades

    async def fetch_and_tell(instrument: str, first_seq: int, last_seq: int) -> list[Trade]:
        fetched.set()
        return await fetch(instrument, first_seq, last_seq)

    history.fetch_trades = fetch_and_tell  # type: ignore[method-assign]
    queue = gaps_queue()
    repairer = GapRepairer("fake", history, pool, queue, ledger_recheck=0.05)  # type: ignore[arg-type]
    task = asyncio.create_task(repairer.run(ActorContext(repairer.name, {})))
    try:
        async with asyncio.timeout(30):
            await repairer.idle.wait()
            # What `tradingd backfill trades` does at its edge, while the daemon runs.
            await pool.execute(
                "INSERT INTO data_gaps (exchange, instrument_name, first_seq, last_seq, reason)"
                " VALUES ('fake', 'A', 5, 9, $1)",
                BACKFILL_EDGE,
            )
            await fetched.wait()
            await repairer.idle.wait()
        status = await pool.fetchval(
            "SELECT status FROM data_gaps WHERE reason = $1", BACKFILL_EDGE
        )
        assert status == "repaired"
        stored_seqs = await pool.fetch("SELECT trade_seq FROM public_trades ORDER BY 1")
        assert [r["trade_seq"] for r in stored_seqs] == [5, 6, 7, 8, 9]
    finally:
        queue.close()
        async with asyncio.timeout(30):
            await task


def test_the_arguments_are_checked_before_anything_is_fetched() -> None:
    import argparse

    from tradingd.backfill_trades import build_request
    from tradingd.config import parse_config

    config = parse_config(
        {
            "exchanges": {
                "spot": {"adapter": "binance", "ws_url": "ws://x", "rest_url": "http://x",
                         "symbols": ["BTCUSDT"]},
                "deribit": {"ws_url": "ws://x", "rest_url": "http://x", "symbols": ["X"]},
            }
        }
    )  # fmt: skip
    today = date(2026, 12, 6)

    def request(exchange: str, symbol: str, first: date, last: date | None = None):
        args = argparse.Namespace(exchange=exchange, symbol=symbol, first=first, last=last)
        return build_request(args, config, today)

    assert request("spot", "btcusdt", date(2026, 11, 1)) == BackfillRequest(
        "spot", "BTCUSDT", date(2026, 11, 1), date(2026, 12, 5)
    )
    # Today's file is not published: --to is capped at yesterday.
    assert request("spot", "ETHBTC", date(2026, 12, 1), today).last == date(2026, 12, 5)
    for args, problem in (
        (("kraken", "BTCUSDT", date(2026, 1, 1)), "unknown exchange 'kraken'"),
        (("deribit", "BTCUSDT", date(2026, 1, 1)), "uses the 'deribit' adapter"),
        (("spot", "BTC/USDT", date(2026, 1, 1)), "expected a Binance symbol"),
        (("spot", "BTCUSDT", today), "is after the last day to load"),
    ):
        with pytest.raises(ValueError, match=problem):
            request(*args)


async def test_a_symbol_the_repository_does_not_have_is_an_error(
    tmp_path: Path, migrated_database_url: str, redis_url: str, repository: FakeBinanceData
) -> None:
    from tests.e2e.harness import run_cli

    config = offline_config(
        tmp_path / "tradingd.toml",
        state_dir=tmp_path / "state",
        database_url=migrated_database_url,
        redis_url=redis_url,
        sections={"backfill": {"trades_base_url": repository.base_url}},
    )
    result = await asyncio.to_thread(
        run_cli, config, "backfill", "trades", "--exchange", "binance", "--symbol", "NOPEUSDT",
        "--from", "2025-01-30", "--to", "2025-02-01",
    )  # fmt: skip
    assert result.returncode == 1, result.stderr
    assert "no trades file for NOPEUSDT in the repository" in result.stderr
    assert "3 not in the repository" in result.stdout
