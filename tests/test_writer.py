"""The bulk write functions against a real, migrated PostgreSQL."""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator, Sequence
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any

import asyncpg
import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.conftest import LoopTurns, run_async
from tradingd.model import Bar, DeadLetter, MarketType, Ticker, Trade, datetime_to_us
from tradingd.storage import writer
from tradingd.storage.writer import (
    SEQ_RANGE_TRADES_PER_TURN,
    TRADES_COPY_COLUMNS,
    TRADES_PER_TURN,
    SystemEvent,
    TradePartitions,
    TradeSeqMarks,
    copy_text_field,
    encode_trades_copy_text,
    final_bars,
    insert_dead_letters,
    insert_system_events,
    insert_ticker_snapshots,
    insert_trades,
    months_spanned,
    trade_seq_ranges,
    trade_seq_ranges_by_turn,
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


@pytest.mark.parametrize("path", ["copy", "staging"])
async def test_a_large_batch_is_sent_in_chunks_that_give_up_the_loop(
    conn: asyncpg.Connection, monkeypatch: pytest.MonkeyPatch, path: str
) -> None:
    count = 4 * TRADES_PER_TURN + 7
    trades = [trade(i, price=f"{97000 + i}.{i:08d}") for i in range(count)]
    marks = TradeSeqMarks()
    if path == "staging":
        # every trade at or below the mark: no COPY attempted
        marks.raise_to(trade_seq_ranges([trade(count)]))
    loop_turns = LoopTurns()
    chunks: list[tuple[int, int]] = []  # (turns counted when a chunk is built, its rows)
    if path == "copy":
        encode = writer.encode_trades_copy_text

        def observed_encode(batch: Sequence[Trade]) -> bytes:
            chunks.append((loop_turns.count, len(batch)))
            return encode(batch)

        monkeypatch.setattr(writer, "encode_trades_copy_text", observed_encode)
    else:
        copy = asyncpg.Connection.copy_records_to_table

        async def observed_copy(self: asyncpg.Connection, table: str, **kwargs: Any) -> str:
            chunks.append((loop_turns.count, len(kwargs["records"])))
            return await copy(self, table, **kwargs)

        monkeypatch.setattr(asyncpg.Connection, "copy_records_to_table", observed_copy)
    await TradePartitions().ensure(conn, trades)
    async with loop_turns:
        called = loop_turns.count
        assert await insert_trades(conn, trades, marks=marks) == count
    assert [rows for _, rows in chunks] == [TRADES_PER_TURN] * 4 + [7]
    # Other work ran between the call and the first chunk, and between every two chunks.
    built = [called] + [at for at, _ in chunks]
    assert all(a < b for a, b in itertools.pairwise(built)), built
    rows = await stored_trades(conn)
    assert [r["trade_seq"] for r in rows] == list(range(count))
    assert [r["price"] for r in rows] == [f"{97000 + i}.{i:08d}" for i in range(count)]


class PathSpy:
    """Counts the COPY attempts straight into public_trades and the staging-path runs."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.copies = 0
        self.failed_copies = 0
        self.staged = 0
        copy = writer._copy_new_trades
        stage = writer._insert_trades_skipping_duplicates

        async def observed_copy(conn: asyncpg.Connection, trades: Sequence[Trade]) -> int:
            self.copies += 1
            try:
                return await copy(conn, trades)
            except asyncpg.UniqueViolationError:
                self.failed_copies += 1
                raise

        async def observed_stage(conn: asyncpg.Connection, trades: Sequence[Trade]) -> int:
            self.staged += 1
            return await stage(conn, trades)

        monkeypatch.setattr(writer, "_copy_new_trades", observed_copy)
        monkeypatch.setattr(writer, "_insert_trades_skipping_duplicates", observed_stage)

    def taken(self) -> tuple[int, int, int]:
        return self.copies, self.failed_copies, self.staged


@pytest.fixture
def paths(monkeypatch: pytest.MonkeyPatch) -> PathSpy:
    return PathSpy(monkeypatch)


async def test_new_trades_take_the_copy_path(conn: asyncpg.Connection, paths: PathSpy) -> None:
    marks = TradeSeqMarks()
    first = [trade(i) for i in range(100)] + [trade(i, instrument="ETHUSDT") for i in range(50)]
    assert await write_trades(conn, first, marks=marks) == 150
    later = [trade(i) for i in range(100, 200)] + [trade(50, instrument="ETHUSDT")]
    assert await write_trades(conn, later, marks=marks) == 101
    assert paths.taken() == (2, 0, 0)
    assert await conn.fetchval("SELECT count(*) FROM public_trades") == 251


async def test_a_duplicate_inside_a_batch_falls_back_with_an_exact_count(
    conn: asyncpg.Connection, paths: PathSpy
) -> None:
    batch = [trade(i) for i in range(100)] + [trade(42)]
    assert await write_trades(conn, batch, marks=TradeSeqMarks()) == 100
    assert paths.taken() == (1, 1, 1)
    rows = await stored_trades(conn)
    assert [r["trade_seq"] for r in rows] == list(range(100))


async def test_an_overlap_across_batches_sends_only_the_known_trades_to_staging(
    conn: asyncpg.Connection, paths: PathSpy
) -> None:
    marks = TradeSeqMarks()
    assert await write_trades(conn, [trade(i) for i in range(100)], marks=marks) == 100
    # 90-99 are at or below the mark (staging); 100-149 beyond it (COPY).
    assert await write_trades(conn, [trade(i) for i in range(90, 150)], marks=marks) == 50
    assert paths.taken() == (2, 0, 1)
    # A replay: nothing beyond the mark, no COPY at all.
    assert await write_trades(conn, [trade(i) for i in range(140, 150)], marks=marks) == 0
    assert paths.taken() == (2, 0, 2)
    # The overlap raised the mark: the batch after it is new again.
    assert await write_trades(conn, [trade(i) for i in range(150, 160)], marks=marks) == 10
    assert paths.taken() == (3, 0, 2)
    rows = await stored_trades(conn)
    assert [r["trade_seq"] for r in rows] == list(range(160))


async def test_a_stored_trade_beyond_the_mark_sends_the_whole_batch_to_staging(
    conn: asyncpg.Connection, paths: PathSpy
) -> None:
    marks = TradeSeqMarks()
    assert await write_trades(conn, [trade(i) for i in range(100)], marks=marks) == 100
    # Another writer stored 100-119, which this one's marks cannot know.
    assert await write_trades(conn, [trade(i) for i in range(100, 120)]) == 20
    assert await write_trades(conn, [trade(i) for i in range(90, 130)], marks=marks) == 10
    assert paths.taken() == (3, 1, 1)
    rows = await stored_trades(conn)
    assert [r["trade_seq"] for r in rows] == list(range(130))


async def test_an_overlap_after_a_restart_falls_back_with_an_exact_count(
    conn: asyncpg.Connection, paths: PathSpy
) -> None:
    assert await write_trades(conn, [trade(i) for i in range(100)], marks=TradeSeqMarks()) == 100
    # A new process knows no marks: its first, overlapping batch pays one failed COPY.
    restarted = TradeSeqMarks()
    assert await write_trades(conn, [trade(i) for i in range(80, 130)], marks=restarted) == 30
    assert await write_trades(conn, [trade(i) for i in range(130, 140)], marks=restarted) == 10
    assert paths.taken() == (3, 1, 1)
    rows = await stored_trades(conn)
    assert [r["trade_seq"] for r in rows] == list(range(140))


async def test_new_trades_outside_a_transaction_are_one_copy_statement(
    conn: asyncpg.Connection, paths: PathSpy, transactions_started: list[int]
) -> None:
    marks = TradeSeqMarks()
    assert await write_trades(conn, [trade(i) for i in range(100)], marks=marks) == 100
    assert await write_trades(conn, [trade(i) for i in range(100, 200)], marks=marks) == 100
    assert (paths.taken(), transactions_started) == ((2, 0, 0), [0])
    # A duplicate rolls back that COPY alone; the staging path then gets its transaction.
    assert await write_trades(conn, [trade(200), trade(150)], marks=TradeSeqMarks()) == 1
    assert (paths.taken(), transactions_started) == ((3, 1, 1), [1])
    assert await conn.fetchval("SELECT count(*) FROM public_trades") == 201


async def test_both_paths_outside_a_transaction_commit_together(
    conn: asyncpg.Connection, monkeypatch: pytest.MonkeyPatch
) -> None:
    marks = TradeSeqMarks()
    assert await write_trades(conn, [trade(i) for i in range(10)], marks=marks) == 10
    stage = writer._insert_trades_skipping_duplicates

    async def failing_stage(conn: asyncpg.Connection, trades: Sequence[Trade]) -> int:
        await stage(conn, trades)
        raise asyncpg.DeadlockDetectedError("after the staging insert")

    monkeypatch.setattr(writer, "_insert_trades_skipping_duplicates", failing_stage)
    # 5-9 at or below the mark (staging), 10-19 beyond it (COPY): neither may stay stored.
    with pytest.raises(asyncpg.DeadlockDetectedError):
        await write_trades(conn, [trade(i) for i in range(5, 20)], marks=marks)
    assert await conn.fetchval("SELECT count(*) FROM public_trades") == 10
    monkeypatch.setattr(writer, "_insert_trades_skipping_duplicates", stage)
    assert await write_trades(conn, [trade(i) for i in range(5, 20)], marks=marks) == 10


async def test_a_failed_copy_leaves_the_callers_transaction_usable(
    conn: asyncpg.Connection, paths: PathSpy
) -> None:
    assert await write_trades(conn, [trade(1)]) == 1
    async with conn.transaction():
        await conn.execute("CREATE TEMP TABLE before_the_batch (x int)")
        assert await insert_trades(conn, [trade(2), trade(1), trade(3)]) == 2
        assert await conn.fetchval("SELECT count(*) FROM before_the_batch") == 0
    assert paths.taken() == (2, 1, 1)
    assert await conn.fetchval("SELECT count(*) FROM public_trades") == 3


# Any text a venue may send, except NUL (PostgreSQL's text cannot hold it) and lone surrogates
# (not encodable as UTF-8).
venue_texts = st.text(
    st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), min_size=1
) | st.sampled_from(["\\", "\t", "\n", "\r", "\\N", "\\.", "a\\tb", "\r\n", "\\\\n"])


def decode_copy_text_field(field: str) -> str | None:
    """COPY text format's unescaping, as PostgreSQL applies it (the escapes the encoder uses)."""
    if field == "\\N":
        return None
    escapes = {"\\": "\\", "t": "\t", "n": "\n", "r": "\r"}
    out: list[str] = []
    chars = iter(field)
    for char in chars:
        out.append(escapes[next(chars)] if char == "\\" else char)
    return "".join(out)


def venue_trades(names_and_ids: list[tuple[str, str]]) -> list[Trade]:
    return [
        msgspec.structs.replace(trade(seq), instrument_name=name, trade_id=trade_id)
        for seq, (name, trade_id) in enumerate(names_and_ids)
    ]


@given(st.lists(st.tuples(venue_texts, venue_texts), min_size=1, max_size=20))
def test_copy_text_rows_decode_to_the_trades(names_and_ids: list[tuple[str, str]]) -> None:
    trades = venue_trades(names_and_ids)
    text = encode_trades_copy_text(trades).decode()
    assert text.endswith("\n")
    lines = text[:-1].split("\n")
    assert len(lines) == len(trades)
    for line, sent in zip(lines, trades, strict=True):
        fields = dict(
            zip(TRADES_COPY_COLUMNS, map(decode_copy_text_field, line.split("\t")), strict=True)
        )
        assert fields["exchange"] == sent.exchange
        assert fields["instrument_name"] == sent.instrument_name
        assert fields["trade_id"] == sent.trade_id
        assert fields["trade_seq"] == str(sent.trade_seq)
        assert (
            fields["was_best_price_match"]
            == {None: None, True: "t", False: "f"}[sent.was_best_price_match]
        )


EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def reference_copy_row(t: Trade) -> str:
    """One COPY text row built field by field, nothing shared with the row before."""

    def flag(value: bool | None) -> str:
        return "\\N" if value is None else "t" if value else "f"

    def moment(us: int) -> str:
        at = EPOCH + timedelta(microseconds=us)
        return f"{at.year:04d}" + at.strftime("-%m-%d %H:%M:%S.%f+00")

    fields = [
        copy_text_field(t.exchange),
        copy_text_field(t.instrument_name),
        t.market_type.value,
        copy_text_field(t.trade_id),
        str(t.trade_seq),
        t.price_text,
        t.quantity_text,
        flag(t.is_buyer_maker),
        flag(t.was_best_price_match),
        moment(t.trade_us),
        moment(t.received_us),
    ]
    return "\t".join(fields) + "\n"


# Few values, so that batches hold the runs and repeats the encoder reuses texts across, and the
# changes it must notice: one instrument name on two exchanges and as two market types, the
# first and last microsecond of a second, different microseconds of one second, a second
# boundary, a time before 1970, the first and last microseconds of the calendar, a year before
# 100 (two digits).
COPY_KEYS = [
    ("binance", "BTCUSDT", MarketType.SPOT),
    ("binance", "BTCUSDT", MarketType.PERPETUAL),
    ("deribit", "BTCUSDT", MarketType.SPOT),
    ("binance", "ETH\tUSDT", MarketType.SPOT),
    ("deribit", "BTC-PERPETUAL", MarketType.PERPETUAL),
]
FIRST_US = datetime_to_us(datetime(1, 1, 1, tzinfo=UTC))
END_US = datetime_to_us(datetime(9999, 12, 31, tzinfo=UTC)) + 86_400_000_000
COPY_TIMES_US = [
    JAN_2027_US,
    JAN_2027_US + 1,
    JAN_2027_US + 999_999,
    JAN_2027_US + 1_000_000,
    JAN_2027_US + 1_000_000 + 500_000,
    JAN_2027_US + 86_399_999_999,
    -1,
    -1_000_000,
    FIRST_US,
    END_US - 1,
    datetime_to_us(datetime(99, 12, 31, 23, 59, 59, 999_999, tzinfo=UTC)),
]


@st.composite
def copy_batches(draw: st.DrawFn) -> list[Trade]:
    rows = draw(
        st.lists(
            st.tuples(
                st.sampled_from(COPY_KEYS),
                st.integers(0, 10**12),
                st.sampled_from(["12345", "a\\b", "x\ny"]),
                st.booleans(),
                st.sampled_from([True, False, None]),
                st.sampled_from(COPY_TIMES_US),
                st.sampled_from(COPY_TIMES_US),
            ),
            max_size=30,
        )
    )
    return [
        Trade(
            exchange=exchange,
            instrument_name=instrument,
            market_type=market_type,
            trade_id=trade_id,
            trade_seq=seq,
            price_text="97000.01",
            quantity_text="0.5",
            is_buyer_maker=maker,
            was_best_price_match=best,
            trade_us=traded,
            received_us=received,
        )
        for (exchange, instrument, market_type), seq, trade_id, maker, best, traded, received in (
            rows
        )
    ]


@given(copy_batches())
def test_copy_text_rows_match_rows_built_one_by_one(trades: list[Trade]) -> None:
    expected = "".join(map(reference_copy_row, trades)).encode()
    assert encode_trades_copy_text(trades) == expected


@pytest.mark.parametrize(
    "bad", [{"trade_us": 253_402_300_800_000_000}, {"received_us": -62_135_596_800_000_001}]
)
def test_a_time_outside_the_calendar_is_refused(bad: dict[str, int]) -> None:
    # Year 10000, and the microsecond before year 1; after a good row, whose texts are cached.
    trades = [trade(1), msgspec.structs.replace(trade(2), **bad)]
    with pytest.raises((ValueError, OverflowError)):
        encode_trades_copy_text(trades)


async def test_a_receive_time_outside_the_calendar_stores_nothing(
    conn: asyncpg.Connection,
) -> None:
    # Found while the COPY is under way (the trade times passed the partition check), outside
    # any transaction: the COPY is abandoned whole and the connection stays usable.
    count = TRADES_PER_TURN + 1  # the bad trade is in the second chunk
    bad = msgspec.structs.replace(trade(count), received_us=253_402_300_800_000_000)
    trades = [*(trade(i) for i in range(count)), bad]
    with pytest.raises((ValueError, OverflowError)):
        await write_trades(conn, trades, marks=TradeSeqMarks())
    assert await conn.fetchval("SELECT count(*) FROM public_trades") == 0
    assert await write_trades(conn, [trade(1)]) == 1


@pytest.mark.parametrize(
    "moment",
    [datetime(1, 1, 1, tzinfo=UTC), datetime(99, 12, 31, 23, 59, 59, 999_999, tzinfo=UTC)],
)
async def test_a_time_before_the_year_100_is_stored_exactly(
    conn: asyncpg.Connection, moment: datetime
) -> None:
    # strftime writes years 1-99 with one or two digits; PostgreSQL reads "1-01-01" as 2001 and
    # "99-12-31" as 1999.
    sent = msgspec.structs.replace(trade(1), received_us=datetime_to_us(moment))
    assert await write_trades(conn, [sent]) == 1
    (row,) = await stored_trades(conn)
    assert row["received_at"] == moment


async def test_times_at_the_edges_of_a_second_are_stored_exactly(
    conn: asyncpg.Connection,
) -> None:
    # One receive time for a burst whose trade times differ within a second and across one.
    received = JAN_2027_US + 2_000_000
    offsets = [0, 1, 999_999, 0, 1_000_000, 1_999_999, 1_000_001]
    trades = [
        msgspec.structs.replace(trade(seq), trade_us=JAN_2027_US + offset, received_us=received)
        for seq, offset in enumerate(offsets)
    ]
    trades[-1] = msgspec.structs.replace(trades[-1], received_us=received + 999_999)
    assert await write_trades(conn, trades) == len(trades)
    rows = await stored_trades(conn)
    assert [datetime_to_us(r["trade_timestamp"]) for r in rows] == [t.trade_us for t in trades]
    assert [datetime_to_us(r["received_at"]) for r in rows] == [t.received_us for t in trades]


seq_batches = st.lists(
    st.tuples(
        st.sampled_from([("binance", "BTCUSDT"), ("deribit", "BTCUSDT"), ("binance", "ETHUSDT")]),
        st.integers(0, 40),
    ),
    max_size=40,
)


def keyed_trades(rows: list[tuple[tuple[str, str], int]]) -> list[Trade]:
    return [
        msgspec.structs.replace(trade(seq), exchange=exchange, instrument_name=instrument)
        for (exchange, instrument), seq in rows
    ]


@given(seq_batches)
def test_trade_seq_ranges_are_each_keys_lowest_and_highest(
    rows: list[tuple[tuple[str, str], int]],
) -> None:
    expected: dict[tuple[str, str], tuple[int, int]] = {}
    for key, seq in rows:
        low, high = expected.get(key, (seq, seq))
        expected[key] = (min(low, seq), max(high, seq))
    assert trade_seq_ranges(keyed_trades(rows)) == expected


@given(seq_batches, st.integers(0, 3 * SEQ_RANGE_TRADES_PER_TURN))
def test_trade_seq_ranges_by_turn_are_those_of_the_whole_batch(
    rows: list[tuple[tuple[str, str], int]], length: int
) -> None:
    # ``rows`` repeated to ``length`` trades, each repetition's seqs shifted up or down: the
    # chunks' boundaries fall anywhere in a key's run, and a key's extremes in any chunk.
    pattern = rows or [(("binance", "BTCUSDT"), 0)]
    long_rows = [
        (key, seq + 41 * (i // len(pattern)) * (-1) ** (i // len(pattern)))
        for i, (key, seq) in zip(range(length), itertools.cycle(pattern), strict=False)
    ]
    trades = keyed_trades(long_rows)
    assert run_async(lambda: trade_seq_ranges_by_turn(trades)) == trade_seq_ranges(trades)


async def test_trade_seq_ranges_by_turn_give_up_the_loop_between_chunks() -> None:
    trades = [
        trade(i, instrument=("BTCUSDT", "ETHUSDT")[i % 2])
        for i in range(2 * SEQ_RANGE_TRADES_PER_TURN + 1)
    ]
    loop_turns = LoopTurns()
    async with loop_turns:
        ranges = await trade_seq_ranges_by_turn(trades)
    assert ranges == trade_seq_ranges(trades)
    assert loop_turns.count == 2  # three chunks, other work between each two


@given(seq_batches, seq_batches)
def test_marks_split_a_batch_exactly_at_each_keys_mark(
    written: list[tuple[tuple[str, str], int]], batch: list[tuple[tuple[str, str], int]]
) -> None:
    marks = TradeSeqMarks()
    marks.raise_to(trade_seq_ranges(keyed_trades(written)))
    highest: dict[tuple[str, str], int] = {}
    for key, seq in written:
        highest[key] = max(seq, highest.get(key, seq))
    trades = keyed_trades(batch)
    beyond, known = marks.split(trades, trade_seq_ranges(trades))
    at_or_below = [
        t
        for t in trades
        if t.trade_seq <= highest.get((t.exchange, t.instrument_name), t.trade_seq - 1)
    ]
    assert list(beyond) == [t for t in trades if t not in at_or_below]
    assert known == at_or_below


def test_a_key_whose_batch_straddles_its_mark_is_split_per_trade() -> None:
    marks = TradeSeqMarks()
    marks.raise_to(trade_seq_ranges([trade(10), trade(5, instrument="ETHUSDT")]))
    batch = [trade(9), trade(6, instrument="ETHUSDT"), trade(10), trade(11), trade(12)]
    beyond, known = marks.split(batch, trade_seq_ranges(batch))
    assert list(beyond) == [batch[1], batch[3], batch[4]]
    assert known == [batch[0], batch[2]]


@given(venue_texts)
def test_copy_text_field_escapes_exactly_the_specials(text: str) -> None:
    field = copy_text_field(text)
    assert not {"\t", "\n", "\r"} & set(field)
    assert decode_copy_text_field(field) == text or (text == "\\N" and field == "\\\\N")


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(st.lists(st.tuples(venue_texts, venue_texts), min_size=1, max_size=10, unique=True))
def test_venue_text_is_stored_exactly(
    migrated_database_url: str, names_and_ids: list[tuple[str, str]]
) -> None:
    trades = venue_trades(names_and_ids)

    async def round_trip() -> list[asyncpg.Record]:
        connection = await asyncpg.connect(migrated_database_url)
        try:
            await connection.execute("TRUNCATE public_trades")
            assert await write_trades(connection, trades) == len(trades)
            return await stored_trades(connection)
        finally:
            await connection.close()

    rows = run_async(round_trip)
    stored = [(r["instrument_name"], r["trade_id"], r["trade_seq"]) for r in rows]
    assert stored == [(t.instrument_name, t.trade_id, t.trade_seq) for t in trades]


async def test_nul_in_venue_text_is_refused_and_nothing_is_stored(
    conn: asyncpg.Connection,
) -> None:
    # PostgreSQL's text cannot hold NUL: the batch is refused as a data error, which the
    # persister isolates down to the one trade and keeps as a dead letter.
    bad = msgspec.structs.replace(trade(2), trade_id="2\x00")
    with pytest.raises(asyncpg.CharacterNotInRepertoireError):
        await write_trades(conn, [trade(1), bad, trade(3)])
    assert await conn.fetchval("SELECT count(*) FROM public_trades") == 0


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
