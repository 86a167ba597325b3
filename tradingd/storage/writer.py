"""Bulk writes of canonical records into PostgreSQL: a fixed number of round trips per batch.

Trades (the volume) take one of two paths. The fast one COPies the batch in text format straight
into ``public_trades`` (PostgreSQL routes rows to partitions and inserts them in multi-row
batches), under a savepoint in the caller's transaction or as a statement of its own: the
venue's exact price/quantity text and ISO times in UTC. It is taken while the batch can be all
new; a duplicate key rolls it back. The other path,
for duplicates, COPies the batch in binary into a per-connection TEMP staging table (the same
price text, integer microseconds) and one ``INSERT ... SELECT ... ON CONFLICT DO NOTHING``
converts it in bulk. Measured on 1M trades (5,000 per batch, PostgreSQL 16, a busy 2-core
box), PostgreSQL's CPU per trade: 13.8-17.1 us on the staging path (speculative insertion for
``ON CONFLICT``, no multi-row inserts, the detour), 10.8-11.8 us on the COPY path, 5.3-5.9 us on
the COPY path once ``public_trades`` had one index instead of two; the persister's Python
builds the text in about 0.5 us per trade (texts that repeat from row to row are reused). Binary
COPY (not built) would spare PostgreSQL parsing the ISO times, about 0.8 us per trade, but
needs ``numeric``'s binary form built from the text in Python.

The low-volume kinds (bars, dead letters, ticker snapshots, events) travel as ONE JSON text
parameter per batch, encoded by msgspec in C and expanded by ``json_to_recordset``.

Idempotence: a trade batch that meets a stored trade takes the ``ON CONFLICT DO NOTHING`` path
(a replayed or overlapping batch leaves one row per trade and never fails the rest of its
batch); bars are upserted except that a closed bar is final. These functions never retry and
set no timeouts: callers own retry policy, transactions and deadlines (``asyncio.timeout``).
"""

from __future__ import annotations

import asyncio
import operator
from collections.abc import AsyncIterator, Iterable, Sequence
from datetime import date
from typing import Any

import asyncpg
import msgspec

from tradingd.model import Bar, DeadLetter, MarketType, Ticker, Trade, us_to_datetime

_encode = msgspec.json.Encoder().encode


def _ts(column: str) -> str:
    # Exact: integer microseconds times a one-microsecond interval (float8 holds them exactly).
    return f"(timestamptz 'epoch' + {column} * interval '1 microsecond')"


TRADES_STAGING = "tradingd_trades_staging"
# Trades encoded per event-loop turn (about 0.25 ms), on either path, so that a 5,000-trade batch
# never holds the loop for one long turn. Each chunk costs a turn and a CopyData message: 500 made
# half-millisecond turns, 125 cost 0.1 us more per trade than 500 did.
TRADES_PER_TURN = 250
# Trades whose seq ranges are computed per event-loop turn (about 0.25 ms with instruments
# interleaved trade by trade): the pass is cheaper per trade than encoding, and each turn it
# yields puts the batch behind every receiver's burst when the loop is saturated.
SEQ_RANGE_TRADES_PER_TURN = 1000

# NOTICE "already exists, skipping" on every batch is noise; SET LOCAL ends with the transaction.
_PREPARE_STAGING = f"""
SET LOCAL client_min_messages = warning;
CREATE TEMP TABLE IF NOT EXISTS {TRADES_STAGING} (
    exchange text, instrument_name text, market_type text, trade_id text, trade_seq bigint,
    price text, quantity text, is_buyer_maker boolean, was_best_price_match boolean,
    trade_us bigint, received_us bigint
) ON COMMIT DELETE ROWS;
DELETE FROM {TRADES_STAGING};
"""

_INSERT_STAGED_TRADES = f"""
INSERT INTO public_trades (exchange, instrument_name, market_type, trade_id, trade_seq, price,
                           quantity, is_buyer_maker, was_best_price_match, trade_timestamp,
                           received_at)
SELECT exchange, instrument_name, market_type, trade_id, trade_seq, price::numeric,
       quantity::numeric, is_buyer_maker, was_best_price_match, {_ts("trade_us")},
       {_ts("received_us")}
FROM {TRADES_STAGING}
ON CONFLICT DO NOTHING
"""

_UPSERT_BARS = f"""
INSERT INTO ohlc AS o (exchange, instrument_name, resolution, tick, open, high, low, close,
                       volume, closed, updated_at)
SELECT exchange, instrument_name, resolution, {_ts("tick_us")}, open_text::numeric,
       high_text::numeric, low_text::numeric, close_text::numeric, volume_text::numeric, closed,
       now()
FROM json_to_recordset($1::text::json) AS r(
    exchange text, instrument_name text, resolution text, tick_us bigint, open_text text,
    high_text text, low_text text, close_text text, volume_text text, closed boolean)
ON CONFLICT (exchange, instrument_name, resolution, tick) DO UPDATE
SET open = EXCLUDED.open, high = EXCLUDED.high, low = EXCLUDED.low, close = EXCLUDED.close,
    volume = EXCLUDED.volume, closed = EXCLUDED.closed, updated_at = EXCLUDED.updated_at
WHERE NOT o.closed
"""

_INSERT_DEAD_LETTERS = f"""
INSERT INTO dead_letters (received_at, exchange, source, payload, error)
SELECT {_ts("received_us")}, exchange, source, decode(payload, 'base64'), error
FROM json_to_recordset($1::text::json) AS r(
    exchange text, source text, payload text, error text, received_us bigint)
"""

_INSERT_TICKER_SNAPSHOTS = f"""
INSERT INTO tickers (exchange, instrument_name, snapshot_at, ticker_timestamp, best_bid_price,
                     best_bid_amount, best_ask_price, best_ask_amount, last_price, mark_price,
                     index_price)
SELECT exchange, instrument_name, {_ts("$2::bigint")}, {_ts("timestamp_us")},
       best_bid_price_text::numeric, best_bid_amount_text::numeric, best_ask_price_text::numeric,
       best_ask_amount_text::numeric, last_price_text::numeric, mark_price_text::numeric,
       index_price_text::numeric
FROM json_to_recordset($1::text::json) AS r(
    exchange text, instrument_name text, timestamp_us bigint, best_bid_price_text text,
    best_bid_amount_text text, best_ask_price_text text, best_ask_amount_text text,
    last_price_text text, mark_price_text text, index_price_text text)
ON CONFLICT DO NOTHING
"""

_INSERT_SYSTEM_EVENTS = f"""
INSERT INTO system_events (at, kind, exchange, instrument_name, detail)
SELECT {_ts("at_us")}, kind, exchange, instrument_name, detail
FROM json_to_recordset($1::text::json) AS r(
    at_us bigint, kind text, exchange text, instrument_name text, detail jsonb)
"""


class SystemEvent(msgspec.Struct, frozen=True, kw_only=True):
    """A row of ``system_events``: something the daemon noticed, with structured detail."""

    kind: str
    exchange: str
    instrument_name: str | None = None
    detail: dict[str, Any] = {}
    at_us: int


def _row_count(status: str) -> int:
    # asyncpg returns the command tag, e.g. "INSERT 0 4999".
    return int(status.rsplit(" ", 1)[1])


def _json_text(records: Sequence[Any]) -> str:
    return _encode(records).decode()


def no_partition_error(exc: BaseException) -> bool:
    """True for the error PostgreSQL raises when a row's month has no partition."""
    return isinstance(exc, asyncpg.CheckViolationError) and "no partition" in str(exc)


# -- partitions -------------------------------------------------------------------------------

_trade_us = operator.attrgetter("trade_us")
# Beyond this many months between a batch's oldest and newest trade, partitions are created
# for the months that occur rather than for the whole range.
_MAX_MONTHS_SPANNED = 3


def month_start(us: int) -> date:
    moment = us_to_datetime(us)
    return date(moment.year, moment.month, 1)


def months_spanned(first_us: int, last_us: int) -> list[date]:
    """The first day of every month from ``first_us``'s through ``last_us``'s."""
    first, last = month_start(min(first_us, last_us)), month_start(max(first_us, last_us))
    months: list[date] = []
    year, month = first.year, first.month
    while (year, month) <= (last.year, last.month):
        months.append(date(year, month, 1))
        year, month = (year + 1, 1) if month == 12 else (year, month + 1)
    return months


def trade_time_range(trades: Sequence[Trade]) -> tuple[int, int]:
    times = list(map(_trade_us, trades))
    return min(times), max(times)


class TradePartitions:
    """Months whose ``public_trades`` partition is known to exist, cached in memory.

    Call ``ensure`` outside the write transaction: a partition created inside a transaction that
    rolls back would be cached yet missing. ``forget`` after a "no partition" error (retention
    dropped one, or the database was replaced) makes the next ``ensure`` ask again.
    """

    def __init__(self) -> None:
        self._known: set[date] = set()

    def __contains__(self, month: date) -> bool:
        return month in self._known

    async def ensure(self, conn: asyncpg.Connection, trades: Sequence[Trade]) -> None:
        """Create the partitions of every month in ``trades`` not yet known to exist.

        Raises ``ValueError`` or ``OverflowError`` for a trade time outside the calendar.
        """
        if not trades:
            return
        first_us, last_us = trade_time_range(trades)
        months = months_spanned(first_us, last_us)
        if len(months) > _MAX_MONTHS_SPANNED:
            # A stray timestamp must not create every partition in between.
            months = sorted({month_start(us) for us in map(_trade_us, trades)})
        for month in months:
            if month not in self._known:
                await ensure_trades_partition(conn, month)
                self._known.add(month)

    def forget(self) -> None:
        self._known.clear()


async def ensure_trades_partition(conn: asyncpg.Connection, month: date) -> str:
    name: str = await conn.fetchval("SELECT tradingd_ensure_trades_partition($1::date)", month)
    return name


# -- trades -----------------------------------------------------------------------------------


def _staging_rows(trades: Sequence[Trade]) -> list[tuple[Any, ...]]:
    return [
        (
            t.exchange,
            t.instrument_name,
            t.market_type,
            t.trade_id,
            t.trade_seq,
            t.price_text,
            t.quantity_text,
            t.is_buyer_maker,
            t.was_best_price_match,
            t.trade_us,
            t.received_us,
        )
        for t in trades
    ]


# COPY text format: these four characters in a text column would end the field or the row, or
# start an escape sequence.
_COPY_TEXT_ESCAPES = str.maketrans({"\\": "\\\\", "\t": "\\t", "\n": "\\n", "\r": "\\r"})
_COPY_BOOL = {True: "t", False: "f", None: "\\N"}
# Microseconds are written as two three-digit groups: cheaper than a zero-padding format.
_DIGITS3 = tuple(f"{n:03d}" for n in range(1000))

TRADES_COPY_COLUMNS = (
    "exchange",
    "instrument_name",
    "market_type",
    "trade_id",
    "trade_seq",
    "price",
    "quantity",
    "is_buyer_maker",
    "was_best_price_match",
    "trade_timestamp",
    "received_at",
)


def _has_copy_text_special(text: str) -> bool:
    """Whether ``text`` holds a character COPY text format must escape."""
    # Four one-character scans (memchr) cost about a hundredth of one regular-expression search.
    return "\\" in text or "\t" in text or "\n" in text or "\r" in text


def copy_text_field(text: str) -> str:
    """``text`` as one column of a COPY text-format row.

    NUL passes through unchanged: PostgreSQL's text cannot hold it and refuses the row
    (``CharacterNotInRepertoireError``), as it refuses it in any other format.
    """
    return text.translate(_COPY_TEXT_ESCAPES) if _has_copy_text_special(text) else text


def encode_trades_copy_text(trades: Sequence[Trade]) -> bytes:
    """``trades`` as COPY text-format rows of ``TRADES_COPY_COLUMNS`` (UTF-8).

    Times are rendered as ISO text in UTC. Raises ``ValueError`` or ``OverflowError`` for a time
    outside years 1-9999.
    """
    # A batch comes in runs: trades of one instrument follow each other, a burst of frames
    # shares its receive time, trades of one match share their time. The texts of the
    # (exchange, instrument, market type) columns and of each time are built when they change
    # from the row before, not per row.
    prefixes: dict[tuple[str, str, MarketType], str] = {}
    seconds: dict[int, str] = {}
    # Trade ids are nearly always digits: one check over the batch instead of one per row.
    escape_ids = _has_copy_text_special("".join([t.trade_id for t in trades]))
    exchange = instrument = ""
    market_type: MarketType | None = None
    trade_us: int | None = None
    received_us: int | None = None
    prefix = traded = received = ""
    lines: list[str] = []
    append = lines.append
    for t in trades:
        if (
            t.instrument_name != instrument
            or t.exchange != exchange
            or t.market_type is not market_type
        ):
            exchange, instrument, market_type = t.exchange, t.instrument_name, t.market_type
            key = (exchange, instrument, market_type)
            prefix = prefixes.get(key, "")
            if not prefix:
                # ``_value_``, not ``value`` or formatting the member: both run Python-level
                # enum code.
                prefix = prefixes[key] = (
                    f"{copy_text_field(exchange)}\t{copy_text_field(instrument)}"
                    f"\t{market_type._value_}\t"
                )
        if t.trade_us != trade_us:
            trade_us = t.trade_us
            traded = _copy_time_text(trade_us, seconds)
        if t.received_us != received_us:
            received_us = t.received_us
            received = _copy_time_text(received_us, seconds)
        append(
            f"{prefix}{copy_text_field(t.trade_id) if escape_ids else t.trade_id}\t{t.trade_seq}"
            f"\t{t.price_text}\t{t.quantity_text}\t{_COPY_BOOL[t.is_buyer_maker]}"
            f"\t{_COPY_BOOL[t.was_best_price_match]}\t{traded}\t{received}\n"
        )
    return "".join(lines).encode()


def _copy_time_text(us: int, seconds: dict[int, str]) -> str:
    """``us`` (microseconds since the epoch) as COPY text for ``timestamptz``; ``seconds`` caches
    the date-time part of each second."""
    second, micros = divmod(us, 1_000_000)
    day_time = seconds.get(second)
    if day_time is None:
        moment = us_to_datetime(second * 1_000_000)
        # The year in four digits: strftime's %Y writes year 1 as "1", and PostgreSQL reads
        # one- and two-digit years as the nearest to 2020 ("1-01-01" as 2001).
        day_time = seconds[second] = f"{moment.year:04d}" + moment.strftime("-%m-%d %H:%M:%S")
    return f"{day_time}.{_DIGITS3[micros // 1000]}{_DIGITS3[micros % 1000]}+00"


TradeSeqRanges = dict[tuple[str, str], tuple[int, int]]


def trade_seq_ranges(trades: Sequence[Trade]) -> TradeSeqRanges:
    """Per (exchange, instrument_name) of ``trades``: the lowest and highest ``trade_seq``."""
    if not trades:
        return {}
    # Trades of one instrument come in runs: a run's range is found with comparisons alone,
    # and the dictionary is consulted once per run.
    runs: list[tuple[str, str, int, int]] = []
    first = trades[0]
    exchange, instrument = first.exchange, first.instrument_name
    low = high = first.trade_seq
    for t in trades:
        seq = t.trade_seq
        if t.instrument_name == instrument and t.exchange == exchange:
            if seq > high:
                high = seq
            elif seq < low:
                low = seq
        else:
            runs.append((exchange, instrument, low, high))
            exchange, instrument, low, high = t.exchange, t.instrument_name, seq, seq
    runs.append((exchange, instrument, low, high))
    ranges: TradeSeqRanges = {}
    _widen_seq_ranges(ranges, runs)
    return ranges


async def trade_seq_ranges_by_turn(trades: Sequence[Trade]) -> TradeSeqRanges:
    """``trade_seq_ranges(trades)``, computed ``SEQ_RANGE_TRADES_PER_TURN`` trades a turn."""
    ranges = trade_seq_ranges(trades[:SEQ_RANGE_TRADES_PER_TURN])
    for start in range(SEQ_RANGE_TRADES_PER_TURN, len(trades), SEQ_RANGE_TRADES_PER_TURN):
        await asyncio.sleep(0)
        chunk = trade_seq_ranges(trades[start : start + SEQ_RANGE_TRADES_PER_TURN])
        _widen_seq_ranges(ranges, [(*key, low, high) for key, (low, high) in chunk.items()])
    return ranges


def _widen_seq_ranges(ranges: TradeSeqRanges, runs: Iterable[tuple[str, str, int, int]]) -> None:
    """Widen ``ranges`` to hold each run's (exchange, instrument_name, lowest, highest)."""
    for exchange, instrument, low, high in runs:
        key = (exchange, instrument)
        seen = ranges.get(key)
        if seen is None:
            ranges[key] = (low, high)
        else:
            seen_low, seen_high = seen
            # Conditional expressions: cheaper than calling min() and max() per run.
            ranges[key] = (
                low if low < seen_low else seen_low,
                high if high > seen_high else seen_high,
            )


class TradeSeqMarks:
    """The highest ``trade_seq`` this process has written per (exchange, instrument_name).

    Only a hint for choosing the path: a batch with a trade at or below its instrument's mark
    (a replay, an overlap, a repair) goes straight to the ``ON CONFLICT`` path instead of paying
    for a COPY that fails. A mark that is wrong either way costs time, never correctness.
    """

    def __init__(self) -> None:
        self._highest: dict[tuple[str, str], int] = {}

    def split(
        self, trades: Sequence[Trade], ranges: TradeSeqRanges
    ) -> tuple[Sequence[Trade], list[Trade]]:
        """``trades`` (whose ``trade_seq_ranges`` are ``ranges``) as (those above their
        instrument's mark, those at or below it)."""
        highest = self._highest
        # The usual batch lies wholly beyond every mark: no trade need be looked at.
        if all(low > highest.get(key, low - 1) for key, (low, _) in ranges.items()):
            return trades, []
        beyond: list[Trade] = []
        known: list[Trade] = []
        for t in trades:
            mark = highest.get((t.exchange, t.instrument_name))
            (known if mark is not None and t.trade_seq <= mark else beyond).append(t)
        return beyond, known

    def raise_to(self, ranges: TradeSeqRanges) -> None:
        """Raise the marks to the highest ``trade_seq`` of each key in ``ranges``."""
        highest = self._highest
        for key, (_, high) in ranges.items():
            if high > highest.get(key, high - 1):
                highest[key] = high


async def _encoded_chunks(trades: Sequence[Trade]) -> AsyncIterator[bytes]:
    for start in range(0, len(trades), TRADES_PER_TURN):
        # Encoding a chunk is one event-loop turn: other work (ticks to strategies, the
        # receivers) runs between two of them, and between the caller's preparation of the
        # batch and the first one.
        await asyncio.sleep(0)
        yield encode_trades_copy_text(trades[start : start + TRADES_PER_TURN])


async def _copy_new_trades(conn: asyncpg.Connection, trades: Sequence[Trade]) -> int:
    if not conn.is_in_transaction():
        # A statement outside a transaction is one of its own: a duplicate rolls back the COPY
        # alone, and no BEGIN, SAVEPOINT, RELEASE or COMMIT costs a round trip.
        return await _copy_trades(conn, trades)
    # Under a savepoint a duplicate leaves the caller's transaction usable.
    async with conn.transaction():
        return await _copy_trades(conn, trades)


async def _copy_trades(conn: asyncpg.Connection, trades: Sequence[Trade]) -> int:
    status = await conn.copy_to_table(
        "public_trades", source=_encoded_chunks(trades), columns=TRADES_COPY_COLUMNS
    )
    return _row_count(status)


async def _insert_trades_skipping_duplicates(
    conn: asyncpg.Connection, trades: Sequence[Trade]
) -> int:
    if conn.is_in_transaction():
        return await _insert_staged_trades(conn, trades)
    # The staging table empties at every commit: its statements share one transaction.
    async with conn.transaction():
        return await _insert_staged_trades(conn, trades)


async def _insert_staged_trades(conn: asyncpg.Connection, trades: Sequence[Trade]) -> int:
    await conn.execute(_PREPARE_STAGING)
    # One COPY per chunk: building and encoding a chunk is one event-loop turn, and the loop
    # runs other work (ticks to strategies, the receivers) while the server takes each one.
    for start in range(0, len(trades), TRADES_PER_TURN):
        chunk = _staging_rows(trades[start : start + TRADES_PER_TURN])
        await conn.copy_records_to_table(TRADES_STAGING, records=chunk)
    return _row_count(await conn.execute(_INSERT_STAGED_TRADES))


async def insert_trades(
    conn: asyncpg.Connection, trades: Sequence[Trade], *, marks: TradeSeqMarks | None = None
) -> int:
    """Insert trades whose month partitions exist; return how many were new (not duplicates).

    Runs in the caller's transaction, if any. The trades ``marks`` does not rule out are first
    COPied straight into ``public_trades`` (under a savepoint in a transaction), the others take
    the staging + ``ON CONFLICT DO NOTHING`` path; a duplicate in the COPY rolls it back and
    sends the whole batch that way. Outside a transaction a batch that ``marks`` finds all new
    is one COPY statement, committed by itself; one that needs both paths gets a transaction.
    """
    if not trades:
        return 0
    ranges = await trade_seq_ranges_by_turn(trades) if marks is not None else {}
    fresh, known = marks.split(trades, ranges) if marks is not None else (trades, [])
    if fresh and known and not conn.is_in_transaction():
        # Both paths commit together: a failure between them must not leave the COPied trades
        # stored but uncounted.
        async with conn.transaction():
            inserted = await _insert_fresh_and_known(conn, trades, fresh, known)
    else:
        inserted = await _insert_fresh_and_known(conn, trades, fresh, known)
    if marks is not None:
        marks.raise_to(ranges)
    return inserted


async def _insert_fresh_and_known(
    conn: asyncpg.Connection,
    trades: Sequence[Trade],
    fresh: Sequence[Trade],
    known: Sequence[Trade],
) -> int:
    inserted = 0
    if fresh:
        try:
            inserted = await _copy_new_trades(conn, fresh)
        except asyncpg.UniqueViolationError:
            known = trades
    if known:
        inserted += await _insert_trades_skipping_duplicates(conn, known)
    return inserted


async def write_trades(
    conn: asyncpg.Connection,
    trades: Sequence[Trade],
    *,
    partitions: TradePartitions | None = None,
    marks: TradeSeqMarks | None = None,
) -> int:
    """Ensure partitions, then insert idempotently; return how many trades were new.

    Without a ``partitions`` cache every month the batch spans is ensured (one cheap call each),
    which suits occasional writers like the gap repairer.
    """
    if not trades:
        return 0
    cache = partitions if partitions is not None else TradePartitions()
    await cache.ensure(conn, trades)
    try:
        return await insert_trades(conn, trades, marks=marks)
    except asyncpg.CheckViolationError as exc:
        # Inside the caller's transaction the failure aborted it: only the caller can retry.
        if not no_partition_error(exc) or conn.is_in_transaction():
            raise
    cache.forget()
    await cache.ensure(conn, trades)
    return await insert_trades(conn, trades, marks=marks)


# -- bars -------------------------------------------------------------------------------------


def final_bars(bars: Iterable[Bar]) -> list[Bar]:
    """One bar per (exchange, instrument, resolution, tick): the latest, but closed ones win.

    ``ON CONFLICT DO UPDATE`` cannot touch one row twice in a statement, and a closed bar is
    final: a later in-progress update of the same tick must not replace it.
    """
    chosen: dict[tuple[str, str, str, int], Bar] = {}
    for bar in bars:
        key = (bar.exchange, bar.instrument_name, bar.resolution, bar.tick_us)
        previous = chosen.get(key)
        if previous is None or bar.closed or not previous.closed:
            chosen[key] = bar
    return list(chosen.values())


async def upsert_bars(conn: asyncpg.Connection, bars: Sequence[Bar]) -> int:
    """Upsert bars (deduplicated per key first); return how many rows were inserted or updated."""
    if not bars:
        return 0
    status = await conn.execute(_UPSERT_BARS, _json_text(final_bars(bars)))
    return _row_count(status)


# -- dead letters -----------------------------------------------------------------------------


def _storable_text(text: str) -> str:
    # PostgreSQL text cannot hold NUL; keep the evidence visible instead of failing the batch.
    return text.replace("\x00", "\\x00") if "\x00" in text else text


def storable_dead_letter(letter: DeadLetter) -> DeadLetter:
    if "\x00" in letter.exchange + letter.source + letter.error:
        return msgspec.structs.replace(
            letter,
            exchange=_storable_text(letter.exchange),
            source=_storable_text(letter.source),
            error=_storable_text(letter.error),
        )
    return letter


async def insert_dead_letters(conn: asyncpg.Connection, letters: Sequence[DeadLetter]) -> int:
    """Store dead letters with their payload bytes intact (base64 on the wire, bytea at rest)."""
    if not letters:
        return 0
    rows = [storable_dead_letter(letter) for letter in letters]
    status = await conn.execute(_INSERT_DEAD_LETTERS, _json_text(rows))
    return _row_count(status)


# -- tickers and events -----------------------------------------------------------------------


async def insert_ticker_snapshots(
    conn: asyncpg.Connection,
    tickers: Sequence[Ticker],
    snapshot_us: int,
) -> int:
    """One ``tickers`` row per ticker, all stamped ``snapshot_us``; repeats are ignored."""
    if not tickers:
        return 0
    status = await conn.execute(_INSERT_TICKER_SNAPSHOTS, _json_text(tickers), snapshot_us)
    return _row_count(status)


async def insert_system_events(
    conn: asyncpg.Connection | asyncpg.Pool,
    events: Sequence[SystemEvent],
) -> int:
    if not events:
        return 0
    status = await conn.execute(_INSERT_SYSTEM_EVENTS, _json_text(events))
    return _row_count(status)
