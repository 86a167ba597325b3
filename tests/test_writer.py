"""The bulk write functions against a real, migrated PostgreSQL."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator
from datetime import date
from decimal import Decimal
from typing import Any

import asyncpg
import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from tradingd.model import Bar, DeadLetter, MarketType, Ticker, Trade, datetime_to_us
from tradingd.storage.writer import (
    STAGING_CHUNK,
    SystemEvent,
    TradePartitions,
    final_bars,
    insert_dead_letters,
    insert_system_events,
    insert_ticker_snapshots,
    insert_trades,
    months_spanned,
    upsert_bars,
    write_trades,
)

JAN_2027_US = 1_798_761_600_000_000  # 2027-01-01T00:00:00Z
HOUR_US = 3_600_000_000


def venue_decimal(text: str) -> Decimal:
    """A Decimal exactly as an adapter gets it: msgspec decoding the venue's JSON string."""
    return msgspec.json.decode(msgspec.json.encode(text), type=Decimal)


def trade(
    seq: int,
    *,
    price: str = "97000.01000000",
    quantity: str = "0.00120000",
    trade_us: int | None = None,
    instrument: str = "BTCUSDT",
    exchange: str = "binance",
) -> Trade:
    at = JAN_2027_US + seq * 1000 if trade_us is None else trade_us
    return Trade(
        exchange=exchange,
        instrument_name=instrument,
        market_type=MarketType.SPOT,
        trade_id=str(seq),
        trade_seq=seq,
        price_text=str(venue_decimal(price)),
        quantity_text=str(venue_decimal(quantity)),
        is_buyer_maker=seq % 2 == 0,
        was_best_price_match=None if seq % 3 == 0 else True,
        trade_us=at,
        received_us=at + 1234,
    )


def bar(tick_us: int, close: str, *, closed: bool, volume: str = "1.5") -> Bar:
    return Bar(
        exchange="deribit",
        instrument_name="BTC-PERPETUAL",
        resolution="1m",
        tick_us=tick_us,
        open_text="100.0",
        high_text="110.5",
        low_text="99.25",
        close_text=str(Decimal(close)),
        volume_text=str(Decimal(volume)),
        closed=closed,
        received_us=tick_us + 5,
    )


@pytest.fixture
async def conn(migrated_database_url: str) -> AsyncIterator[asyncpg.Connection]:
    connection = await asyncpg.connect(migrated_database_url)
    try:
        yield connection
    finally:
        await connection.close()


async def stored_trades(conn: asyncpg.Connection) -> list[asyncpg.Record]:
    rows: list[asyncpg.Record] = await conn.fetch(
        "SELECT exchange, instrument_name, market_type, trade_id, trade_seq, price::text AS price,"
        " quantity::text AS quantity, is_buyer_maker, was_best_price_match, trade_timestamp,"
        " received_at FROM public_trades ORDER BY trade_seq"
    )
    return rows


async def test_trades_land_exactly_as_sent(conn: asyncpg.Connection) -> None:
    texts = [
        ("97000.01000000", "0.00120000"),
        ("0.00000010", "12345678.90000000"),  # Decimal prints these as 1.0E-7: must not matter
        ("1", "100"),
        ("3.14159265358979323846264338327950288", "0.1"),
    ]
    trades = [
        trade(i, price=p, quantity=q, trade_us=JAN_2027_US + i * 987_654_321 + 7)
        for i, (p, q) in enumerate(texts)
    ]
    assert await write_trades(conn, trades) == len(trades)
    rows = await stored_trades(conn)
    assert len(rows) == len(trades)
    for row, sent, (price_text, quantity_text) in zip(rows, trades, texts, strict=True):
        assert row["price"] == price_text
        assert row["quantity"] == quantity_text
        assert row["exchange"] == sent.exchange
        assert row["instrument_name"] == sent.instrument_name
        assert row["market_type"] == "spot"
        assert row["trade_id"] == sent.trade_id
        assert row["trade_seq"] == sent.trade_seq
        assert row["is_buyer_maker"] is sent.is_buyer_maker
        assert row["was_best_price_match"] is sent.was_best_price_match
        assert datetime_to_us(row["trade_timestamp"]) == sent.trade_us
        assert datetime_to_us(row["received_at"]) == sent.received_us


async def test_replaying_a_batch_leaves_one_row_each(conn: asyncpg.Connection) -> None:
    trades = [trade(i) for i in range(500)]
    assert await write_trades(conn, trades) == 500
    replay = [msgspec.structs.replace(t, received_us=t.received_us + 10**6) for t in trades]
    assert await write_trades(conn, replay) == 0
    assert await conn.fetchval("SELECT count(*) FROM public_trades") == 500


async def test_duplicates_never_cost_the_rest_of_their_batch(conn: asyncpg.Connection) -> None:
    assert await write_trades(conn, [trade(i) for i in range(100)]) == 100
    mixed = [trade(i) for i in range(50, 150)] + [trade(120), trade(149)]
    assert await write_trades(conn, mixed) == 50
    count, low, high = await conn.fetchrow(
        "SELECT count(*), min(trade_seq), max(trade_seq) FROM public_trades"
    )
    assert (count, low, high) == (150, 0, 149)


async def test_a_large_batch_is_staged_in_chunks_that_give_up_the_loop(
    conn: asyncpg.Connection, monkeypatch: pytest.MonkeyPatch
) -> None:
    count = 4 * STAGING_CHUNK + 7
    trades = [trade(i, price=f"{97000 + i}.{i:08d}") for i in range(count)]
    turns = 0

    async def count_turns() -> None:
        nonlocal turns
        while True:
            turns += 1
            await asyncio.sleep(0)  # one step per event-loop turn: it counts them

    copies: list[tuple[int, int]] = []  # (turns counted when a COPY starts, its rows)
    copy = asyncpg.Connection.copy_records_to_table

    async def observed_copy(self: asyncpg.Connection, table: str, **kwargs: Any) -> str:
        copies.append((turns, len(kwargs["records"])))
        return await copy(self, table, **kwargs)

    monkeypatch.setattr(asyncpg.Connection, "copy_records_to_table", observed_copy)
    await TradePartitions().ensure(conn, trades)
    async with asyncio.TaskGroup() as group:
        counter = group.create_task(count_turns())
        assert await insert_trades(conn, trades) == count
        counter.cancel()
    assert [rows for _, rows in copies] == [STAGING_CHUNK] * 4 + [7]
    # Other work ran between every two chunks.
    assert all(a < b for (a, _), (b, _) in itertools.pairwise(copies)), copies
    rows = await stored_trades(conn)
    assert [r["trade_seq"] for r in rows] == list(range(count))
    assert [r["price"] for r in rows] == [f"{97000 + i}.{i:08d}" for i in range(count)]


async def test_partitions_created_per_month_and_cached(conn: asyncpg.Connection) -> None:
    partitions = TradePartitions()
    december = trade(1, trade_us=JAN_2027_US - HOUR_US)
    january = trade(2, trade_us=JAN_2027_US + HOUR_US)
    assert await write_trades(conn, [december, january], partitions=partitions) == 2
    assert date(2026, 12, 1) in partitions and date(2027, 1, 1) in partitions
    names = {
        r["relname"]
        for r in await conn.fetch(
            "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid"
            " WHERE i.inhparent = 'public_trades'::regclass"
        )
    }
    assert {"public_trades_y2026m12", "public_trades_y2027m01"} <= names

    # Retention dropped a partition the cache still believes in: the write recovers.
    await conn.execute("DROP TABLE public_trades_y2027m01")
    assert (
        await write_trades(
            conn, [trade(3, trade_us=JAN_2027_US + 2 * HOUR_US)], partitions=partitions
        )
        == 1
    )
    assert await conn.fetchval("SELECT count(*) FROM public_trades") == 2


async def test_a_stray_timestamp_creates_only_the_months_that_occur(
    conn: asyncpg.Connection,
) -> None:
    stray = trade(1, trade_us=86_400_000_000)  # 1970-01-02
    assert await write_trades(conn, [stray, trade(2)]) == 2
    count = await conn.fetchval(
        "SELECT count(*) FROM pg_inherits WHERE inhparent = 'public_trades'::regclass"
    )
    assert count == 2


async def test_bars_upsert_in_progress_and_closed_is_final(conn: asyncpg.Connection) -> None:
    tick = JAN_2027_US
    assert await upsert_bars(conn, [bar(tick, "101", closed=False)]) == 1
    assert await upsert_bars(conn, [bar(tick, "102", closed=False)]) == 1
    row = await conn.fetchrow("SELECT close::text AS close, closed FROM ohlc")
    assert (row["close"], row["closed"]) == ("102", False)

    assert await upsert_bars(conn, [bar(tick, "103", closed=True)]) == 1
    # A late in-progress update of the same tick must not reopen it.
    assert await upsert_bars(conn, [bar(tick, "999", closed=False)]) == 0
    row = await conn.fetchrow("SELECT close::text AS close, closed, volume::text AS v FROM ohlc")
    assert (row["close"], row["closed"], row["v"]) == ("103", True, "1.5")


async def test_bars_dedupe_within_a_batch(conn: asyncpg.Connection) -> None:
    tick = JAN_2027_US
    batch = [
        bar(tick, "101", closed=False),
        bar(tick, "105", closed=True),
        bar(tick, "106", closed=False),  # arrived after the close: stale
        bar(tick + 60_000_000, "107", closed=False),
        bar(tick + 60_000_000, "108", closed=False),
    ]
    assert await upsert_bars(conn, batch) == 2
    rows = await conn.fetch("SELECT close::text AS close, closed FROM ohlc ORDER BY tick")
    assert [(r["close"], r["closed"]) for r in rows] == [("105", True), ("108", False)]


@given(st.lists(st.tuples(st.integers(0, 3), st.booleans()), max_size=40))
def test_final_bars_keeps_latest_with_closed_winning(updates: list[tuple[int, bool]]) -> None:
    bars = [
        bar(JAN_2027_US + minute * 60_000_000, str(i + 1), closed=closed)
        for i, (minute, closed) in enumerate(updates)
    ]
    chosen = {b.tick_us: b for b in final_bars(bars)}
    assert len(chosen) == len({b.tick_us for b in bars})
    for tick, winner in chosen.items():
        same = [b for b in bars if b.tick_us == tick]
        closed = [b for b in same if b.closed]
        assert winner is (closed[-1] if closed else same[-1])


async def test_dead_letters_keep_payload_bytes(conn: asyncpg.Connection) -> None:
    payloads = [b'{"e":"trade","p":"1e400"}', bytes(range(256)), b"\x00\xff\xfe"]
    letters = [
        DeadLetter(
            exchange="binance",
            source="ws:btcusdt@trade",
            payload=payload,
            error="bad\x00number" if i == 2 else "ParseError: price out of range",
            received_us=JAN_2027_US + i,
        )
        for i, payload in enumerate(payloads)
    ]
    assert await insert_dead_letters(conn, letters) == 3
    rows = await conn.fetch("SELECT * FROM dead_letters ORDER BY id")
    assert [bytes(r["payload"]) for r in rows] == payloads
    assert rows[2]["error"] == "bad\\x00number"
    assert [datetime_to_us(r["received_at"]) for r in rows] == [x.received_us for x in letters]
    assert rows[0]["source"] == "ws:btcusdt@trade"


async def test_ticker_snapshots(conn: asyncpg.Connection) -> None:
    tickers = [
        Ticker(
            exchange="deribit",
            instrument_name="BTC-PERPETUAL",
            best_bid_price_text="97000.5",
            best_bid_amount_text="1200",
            best_ask_price_text=None,
            mark_price_text="97001.25",
            timestamp_us=JAN_2027_US + 17,
            received_us=JAN_2027_US + 20,
        )
    ]
    assert await insert_ticker_snapshots(conn, tickers, JAN_2027_US + 1_000_000) == 1
    assert await insert_ticker_snapshots(conn, tickers, JAN_2027_US + 1_000_000) == 0
    row = await conn.fetchrow("SELECT * FROM tickers")
    assert datetime_to_us(row["snapshot_at"]) == JAN_2027_US + 1_000_000
    assert datetime_to_us(row["ticker_timestamp"]) == JAN_2027_US + 17
    assert str(row["best_bid_price"]) == "97000.5"
    assert row["best_ask_price"] is None and row["last_price"] is None


async def test_system_events(conn: asyncpg.Connection) -> None:
    event = SystemEvent(
        kind="volume_anomaly",
        exchange="binance",
        instrument_name="BTCUSDT",
        detail={"volume": "12.5", "z": 7.25},
        at_us=JAN_2027_US,
    )
    assert await insert_system_events(conn, [event]) == 1
    row = await conn.fetchrow(
        "SELECT kind, exchange, instrument_name, detail::text, at FROM system_events"
    )
    assert row["kind"] == "volume_anomaly" and row["instrument_name"] == "BTCUSDT"
    assert msgspec.json.decode(row["detail"]) == {"volume": "12.5", "z": 7.25}
    assert datetime_to_us(row["at"]) == JAN_2027_US


@given(st.integers(0, 4_000_000_000_000_000), st.integers(0, 4_000_000_000_000_000))
def test_months_spanned_is_contiguous(a: int, b: int) -> None:
    months = months_spanned(a, b)
    assert months[0] <= months[-1]
    for earlier, later in itertools.pairwise(months):
        assert (later.year * 12 + later.month) - (earlier.year * 12 + earlier.month) == 1
    assert all(m.day == 1 for m in months)
