"""The ledger's view for the operator: orders, fills, and positions and PnL replayed from
the fills (``accounting``), marked at the Redis tickers ``ticker:<exchange>:<instrument>`` or,
failing one, the last public trade. Reads only; works without a running daemon."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC, date, datetime
from decimal import Decimal

import asyncpg
import msgspec
import redis.asyncio as aioredis

from tradingd.execution.accounting import Book, FillRecord, is_inverse
from tradingd.strategies.api import Side

# Order states (tradingd.execution.orders defines them): the ones an order never leaves, and
# the one whose outcome only the venue can tell.
TERMINAL_STATES = ("FILLED", "CANCELED", "REJECTED", "NEVER_PLACED", "DENIED")
UNKNOWN_STATE = "UNKNOWN"


class OrderRow(msgspec.Struct, kw_only=True):
    client_order_id: str
    strategy: str
    exchange: str
    instrument: str
    side: str
    type: str
    tif: str
    quantity: Decimal
    price: Decimal | None
    state: str
    filled_quantity: Decimal
    average_price: Decimal | None
    venue_order_id: str | None
    reason: str
    created_at: datetime
    updated_at: datetime


async def fetch_orders(
    pool: asyncpg.Pool, *, open_only: bool, exchange: str | None, limit: int
) -> list[OrderRow]:
    rows = await pool.fetch(
        "SELECT client_order_id, strategy, exchange, instrument_name AS instrument, side,"
        " order_type AS type, time_in_force AS tif, quantity, price, state, filled_quantity,"
        " average_price, venue_order_id, reason, created_at, updated_at FROM orders"
        " WHERE ($1::text IS NULL OR exchange = $1)"
        " AND (NOT $2 OR state <> ALL($3::text[]))"
        " ORDER BY id DESC LIMIT $4",
        exchange,
        open_only,
        list(TERMINAL_STATES),
        limit,
    )
    return [OrderRow(**dict(r)) for r in rows]


class FillRow(msgspec.Struct, kw_only=True):
    exchange: str
    trade_id: str
    client_order_id: str
    strategy: str
    instrument: str
    side: str
    quantity: Decimal
    price: Decimal
    fee: Decimal
    fee_currency: str
    liquidity: str
    at: datetime


async def fetch_fills(pool: asyncpg.Pool, *, exchange: str | None, limit: int) -> list[FillRow]:
    rows = await pool.fetch(
        "SELECT exchange, trade_id, client_order_id, strategy, instrument_name AS instrument,"
        " side, quantity, price, fee, fee_currency, liquidity, at FROM fills"
        " WHERE ($1::text IS NULL OR exchange = $1) ORDER BY id DESC LIMIT $2",
        exchange,
        limit,
    )
    return [FillRow(**dict(r)) for r in rows]


async def fetch_fill_records(pool: asyncpg.Pool) -> list[FillRecord]:
    """Every fill in ledger order, with its instrument's currencies."""
    rows = await pool.fetch(
        "SELECT f.strategy, f.exchange, f.instrument_name, f.side, f.quantity, f.price, f.fee,"
        " f.fee_currency, f.trade_id, f.at, i.base_currency, i.quote_currency, i.market_type"
        " FROM fills f LEFT JOIN instruments i"
        " ON i.exchange = f.exchange AND i.instrument_name = f.instrument_name"
        " ORDER BY f.id"
    )
    return [
        FillRecord(
            strategy=r["strategy"],
            exchange=r["exchange"],
            instrument=r["instrument_name"],
            base=r["base_currency"] or "?",
            quote=r["quote_currency"] or "?",
            side=Side(r["side"]),
            quantity=r["quantity"],
            price=r["price"],
            fee=r["fee"],
            fee_currency=r["fee_currency"],
            trade_id=r["trade_id"],
            at_us=int(r["at"].timestamp() * 1_000_000),
            inverse=is_inverse(r["market_type"], r["quote_currency"]),
        )
        for r in rows
    ]


async def marks_for(
    redis: aioredis.Redis, pool: asyncpg.Pool, instruments: Mapping[str, str]
) -> dict[str, tuple[Decimal, str]]:
    """instrument -> (mark, where it came from), for {instrument: exchange}: the ticker's mark
    price, else its last price, else the mid of its best bid and ask, else the last public
    trade in the database."""
    marks: dict[str, tuple[Decimal, str]] = {}
    for instrument, exchange in instruments.items():
        raw = await redis.hgetall(f"ticker:{exchange}:{instrument}")
        fields = {_text(k): _text(v) for k, v in raw.items()}
        for name in ("mark_price", "last_price"):
            if fields.get(name):
                marks[instrument] = (Decimal(fields[name]), f"ticker {name}")
                break
        else:
            if fields.get("best_bid_price") and fields.get("best_ask_price"):
                mid = (Decimal(fields["best_bid_price"]) + Decimal(fields["best_ask_price"])) / 2
                marks[instrument] = (mid, "ticker mid")
            else:
                price = await pool.fetchval(
                    "SELECT price FROM public_trades WHERE exchange = $1 AND instrument_name = $2"
                    " ORDER BY trade_seq DESC LIMIT 1",
                    exchange,
                    instrument,
                )
                if price is not None:
                    marks[instrument] = (price, "last public trade")
    return marks


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


class PositionRow(msgspec.Struct, kw_only=True):
    strategy: str
    exchange: str
    instrument: str
    quantity: Decimal
    average_price: Decimal | None
    mark: Decimal | None
    mark_source: str
    unrealised_pnl: Decimal | None
    pnl_currency: str


def _instrument_index(records: Sequence[FillRecord]) -> dict[str, FillRecord]:
    return {r.instrument: r for r in records}


async def positions_report(pool: asyncpg.Pool, redis: aioredis.Redis) -> list[PositionRow]:
    """Every non-flat position of every strategy, valued at its mark where there is one."""
    records = await fetch_fill_records(pool)
    book = Book.replay(records)
    index = _instrument_index(records)
    held = [(s, p) for s, p in book.positions() if p.quantity != 0]
    marks = await marks_for(
        redis, pool, {p.instrument: index[p.instrument].exchange for _, p in held}
    )
    rows = []
    for strategy, p in held:
        info = index[p.instrument]
        mark = marks.get(p.instrument)
        unrealised = None
        if mark is not None:
            unrealised = sum(
                book.unrealised_pnl({p.instrument: mark[0]}, strategy).values(), Decimal(0)
            )
        rows.append(
            PositionRow(
                strategy=strategy,
                exchange=info.exchange,
                instrument=p.instrument,
                quantity=p.quantity,
                average_price=p.average_price,
                mark=mark[0] if mark else None,
                mark_source=mark[1] if mark else "none",
                unrealised_pnl=unrealised,
                pnl_currency=info.base if info.inverse else info.quote,
            )
        )
    return rows


class StrategyPnl(msgspec.Struct, kw_only=True):
    strategy: str
    realised: dict[str, Decimal]
    unrealised: dict[str, Decimal]
    fees: dict[str, Decimal]
    unmarked: list[str] = []  # open positions left out of unrealised: no mark


def _minus(a: Mapping[str, Decimal], b: Mapping[str, Decimal]) -> dict[str, Decimal]:
    return {c: a.get(c, Decimal(0)) - b.get(c, Decimal(0)) for c in sorted(set(a) | set(b))}


async def pnl_report(
    pool: asyncpg.Pool, redis: aioredis.Redis, since: date | None = None
) -> list[StrategyPnl]:
    """Per strategy: realised PnL and fees of the fills since ``since`` (UTC midnight; all
    when None), and unrealised PnL now."""
    records = await fetch_fill_records(pool)
    book = Book.replay(records)
    start_us = (
        int(datetime(since.year, since.month, since.day, tzinfo=UTC).timestamp()) * 1_000_000
        if since
        else None
    )
    before = Book.replay(r for r in records if start_us is not None and r.at_us < start_us)
    index = _instrument_index(records)
    open_instruments = {p.instrument for _, p in book.positions() if p.quantity != 0}
    marks = await marks_for(redis, pool, {i: index[i].exchange for i in open_instruments})
    prices = {instrument: mark for instrument, (mark, _) in marks.items()}
    return [
        StrategyPnl(
            strategy=name,
            realised=_minus(book.realised_pnl(name), before.realised_pnl(name)),
            unrealised=book.unrealised_pnl(prices, name),
            fees=_minus(book.fees(name), before.fees(name)),
            unmarked=book.unmarked(prices, name),
        )
        for name in book.strategies()
    ]


class LedgerSummary(msgspec.Struct, kw_only=True):
    open_orders: int
    unknown_orders: int  # outcome not yet known: blocks its instrument until resolved
    positions: dict[str, str]  # "strategy exchange instrument" -> signed quantity


async def ledger_summary(pool: asyncpg.Pool) -> LedgerSummary | None:
    """None when the database has no ledger yet (migrations not applied)."""
    try:
        counts = await pool.fetchrow(
            "SELECT count(*) FILTER (WHERE state <> ALL($1::text[])) AS open,"
            " count(*) FILTER (WHERE state = $2) AS unknown FROM orders",
            list(TERMINAL_STATES),
            UNKNOWN_STATE,
        )
        records = await fetch_fill_records(pool)
    except asyncpg.UndefinedTableError:
        return None
    index = _instrument_index(records)
    held = {
        f"{s} {index[p.instrument].exchange} {p.instrument}": str(p.quantity)
        for s, p in Book.replay(records).positions()
        if p.quantity != 0
    }
    return LedgerSummary(
        open_orders=counts["open"], unknown_orders=counts["unknown"], positions=held
    )


async def open_order_count(pool: asyncpg.Pool) -> int:
    count: int = await pool.fetchval(
        "SELECT count(*) FROM orders WHERE state <> ALL($1::text[])", list(TERMINAL_STATES)
    )
    return count
