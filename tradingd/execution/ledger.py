"""The order ledger in PostgreSQL: durable intents, one atomic send claim, events and fills.

Every state change goes through ``tradingd.execution.orders`` (the one transition table) inside
a transaction that locks the order row, and appends an ``order_events`` row with who said so.
Fills are facts unique per (exchange, venue trade id): the same fill seen twice (stream and
query, or after a restart) is recorded once. Positions, balances and PnL are derived from fills
by replaying them (``tradingd.execution.accounting``); nothing here stores them.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Sequence
from datetime import datetime
from decimal import Decimal
from typing import Any

import asyncpg
import msgspec
from loguru import logger

from tradingd.execution.orders import (
    TERMINAL_STATES,
    IllegalOrderTransition,
    OrderState,
    OrderStatus,
    apply_fill,
    transition,
)
from tradingd.execution.records import Fill
from tradingd.model import datetime_to_us, us_to_datetime
from tradingd.strategies.api import (
    FillView,
    OrderIntent,
    OrderType,
    OrderView,
    Side,
    TimeInForce,
)

CLIENT_ID_PREFIX = "td"
# Client ids minted per block of the order_id_blocks sequence (one round trip per block).
BLOCK_SIZE = 1000
_BASE36 = "0123456789abcdefghijklmnopqrstuvwxyz"


def base36(number: int) -> str:
    if number < 0:
        raise ValueError("base36 of a negative number")
    digits = ""
    while True:
        number, digit = divmod(number, 36)
        digits = _BASE36[digit] + digits
        if number == 0:
            return digits


def client_order_id(block: int, counter: int) -> str:
    """``td<block>_<counter>`` in base36: the separator makes every (block, counter) pair give a
    different id; at most 2 + 13 + 1 + 2 characters of [A-Za-z0-9_], a valid Binance
    ``newClientOrderId`` and Deribit label."""
    if not 0 <= counter < BLOCK_SIZE:
        raise ValueError(f"counter {counter} outside its block")
    return f"{CLIENT_ID_PREFIX}{base36(block)}_{base36(counter)}"


class OrderRow(msgspec.Struct, frozen=True, kw_only=True):
    client_order_id: str
    strategy: str
    exchange: str
    instrument: str
    side: Side
    type: OrderType
    tif: TimeInForce
    quantity: Decimal
    price: Decimal | None
    reduce_only: bool
    tag: str
    state: OrderState
    filled_quantity: Decimal
    average_price: Decimal | None
    venue_order_id: str | None
    reason: str
    deadline_us: int | None
    created_us: int
    updated_us: int

    @property
    def terminal(self) -> bool:
        return self.state in TERMINAL_STATES

    def status(self) -> OrderStatus:
        return OrderStatus(
            client_order_id=self.client_order_id,
            quantity=self.quantity,
            state=self.state,
            filled_quantity=self.filled_quantity,
            average_price=self.average_price,
        )

    def view(self) -> OrderView:
        return OrderView(
            client_order_id=self.client_order_id,
            strategy=self.strategy,
            exchange=self.exchange,
            instrument=self.instrument,
            side=self.side,
            type=self.type,
            tif=self.tif,
            quantity=self.quantity,
            price=self.price,
            state=self.state.value,
            filled_quantity=self.filled_quantity,
            average_price=self.average_price,
            reason=self.reason,
            created_us=self.created_us,
            updated_us=self.updated_us,
        )


class FillRow(msgspec.Struct, frozen=True, kw_only=True):
    exchange: str
    trade_id: str
    client_order_id: str
    strategy: str
    instrument: str
    side: Side
    quantity: Decimal
    price: Decimal
    fee: Decimal
    fee_currency: str
    liquidity: str
    at_us: int

    def view(self) -> FillView:
        return FillView(
            client_order_id=self.client_order_id,
            trade_id=self.trade_id,
            exchange=self.exchange,
            instrument=self.instrument,
            side=self.side,
            quantity=self.quantity,
            price=self.price,
            fee=self.fee,
            fee_currency=self.fee_currency,
            liquidity=self.liquidity,
            at_us=self.at_us,
        )


class Transitioned(msgspec.Struct, frozen=True):
    """A state change the ledger committed (``previous`` -> ``order.state``)."""

    order: OrderRow
    previous: OrderState


_ORDER_COLUMNS = (
    "client_order_id, strategy, exchange, instrument_name, side, order_type, time_in_force,"
    " quantity, price, reduce_only, tag, state, filled_quantity, average_price, venue_order_id,"
    " reason, deadline, created_at, updated_at"
)


def _order_row(record: asyncpg.Record) -> OrderRow:
    deadline: datetime | None = record["deadline"]
    return OrderRow(
        client_order_id=record["client_order_id"],
        strategy=record["strategy"],
        exchange=record["exchange"],
        instrument=record["instrument_name"],
        side=Side(record["side"]),
        type=OrderType(record["order_type"]),
        tif=TimeInForce(record["time_in_force"]),
        quantity=record["quantity"],
        price=record["price"],
        reduce_only=record["reduce_only"],
        tag=record["tag"],
        state=OrderState(record["state"]),
        filled_quantity=record["filled_quantity"],
        average_price=record["average_price"],
        venue_order_id=record["venue_order_id"],
        reason=record["reason"],
        deadline_us=datetime_to_us(deadline) if deadline is not None else None,
        created_us=datetime_to_us(record["created_at"]),
        updated_us=datetime_to_us(record["updated_at"]),
    )


def _fill_row(record: asyncpg.Record) -> FillRow:
    return FillRow(
        exchange=record["exchange"],
        trade_id=record["trade_id"],
        client_order_id=record["client_order_id"],
        strategy=record["strategy"],
        instrument=record["instrument_name"],
        side=Side(record["side"]),
        quantity=record["quantity"],
        price=record["price"],
        fee=record["fee"],
        fee_currency=record["fee_currency"],
        liquidity=record["liquidity"],
        at_us=datetime_to_us(record["at"]),
    )


class Ledger:
    """The orders of every exchange, in one PostgreSQL database."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool
        self._block: int | None = None
        self._counter = BLOCK_SIZE
        self._mint_lock = asyncio.Lock()

    async def mint_client_id(self) -> str:
        """A client order id never used before (nor after: blocks are never handed out twice)."""
        async with self._mint_lock:
            if self._block is None or self._counter >= BLOCK_SIZE:
                self._block = int(await self._pool.fetchval("SELECT nextval('order_id_blocks')"))
                self._counter = 0
            minted = client_order_id(self._block, self._counter)
            self._counter += 1
            return minted

    async def record_intent(
        self, client_id: str, strategy: str, exchange: str, intent: OrderIntent
    ) -> OrderRow:
        """Commit the intent (state INTENT) and its first event; nothing is sent before this
        returns."""
        (row,) = await self.record_intents([(client_id, strategy, exchange, intent)])
        return row

    async def record_intents(
        self, intents: Sequence[tuple[str, str, str, OrderIntent]]
    ) -> list[OrderRow]:
        """Commit several intents (client id, strategy, exchange, intent) in one transaction:
        one durable commit for a burst."""
        rows: list[OrderRow] = []
        async with self._pool.acquire() as conn, conn.transaction():
            for client_id, strategy, exchange, intent in intents:
                rows.append(await _insert_intent(conn, client_id, strategy, exchange, intent))
        return rows

    async def record_sending(
        self, intents: Sequence[tuple[str, str, str, OrderIntent]], deadline_us: int
    ) -> list[OrderRow]:
        """Commit several intents already claimed for sending (state SENDING, with the send
        deadline) and their two events each (-> INTENT -> SENDING) in one statement, hence one
        transaction: one durable commit for a burst, written before anything is sent.

        The claim is atomic because the row is born claimed: ``client_order_id`` is UNIQUE, so a
        second attempt with the same id fails as a whole and sends nothing. On a restart such a
        row is SENDING, so it is asked about (never resent) like any order that may be on the
        wire."""
        for client_id, _strategy, _exchange, intent in intents:
            transition(
                OrderStatus(client_order_id=client_id, quantity=intent.quantity), OrderState.SENDING
            )
        rows = [dict(zip(_INTENT_FIELDS, _intent_values(*entry), strict=True)) for entry in intents]
        # One statement is its own transaction: atomic, and committed (durable) when it returns;
        # no BEGIN and COMMIT round trips on the way to the send.
        records = await self._pool.fetch(
            _INSERT_SENDING, _encode_json(rows).decode(), us_to_datetime(deadline_us)
        )
        by_id = {record["client_order_id"]: _order_row(record) for record in records}
        return [by_id[client_id] for client_id, *_ in intents]

    async def claim_send(self, client_id: str, deadline_us: int | None = None) -> OrderRow | None:
        """Move INTENT -> SENDING atomically; the one caller that gets the row sends it, every
        other (a second sender, a restart racing the first) gets None and sends nothing."""
        async with self._pool.acquire() as conn, conn.transaction():
            record = await conn.fetchrow(
                f"""UPDATE orders SET state = 'SENDING', sent_at = now(), updated_at = now(),
                        deadline = $2
                    WHERE client_order_id = $1 AND state = 'INTENT'
                    RETURNING {_ORDER_COLUMNS}""",
                client_id,
                us_to_datetime(deadline_us) if deadline_us is not None else None,
            )
            if record is None:
                return None
            await _event(conn, client_id, OrderState.INTENT, OrderState.SENDING, "executor", {})
        return _order_row(record)

    async def transition(
        self,
        client_id: str,
        wanted: OrderState,
        source: str,
        *,
        reason: str | None = None,
        venue_order_id: str | None = None,
        detail: dict[str, Any] | None = None,
    ) -> Transitioned | None:
        """Apply one state change if the transition table allows it; None (logged, nothing
        written) when it does not, or when the order is already in ``wanted`` with nothing new."""
        async with self._pool.acquire() as conn, conn.transaction():
            current = await _lock_order(conn, client_id)
            if current is None:
                logger.error("order {}: {} from {} for an unknown order", client_id, wanted, source)
                return None
            try:
                status = transition(current.status(), wanted)
            except IllegalOrderTransition as exc:
                logger.warning("{} (from {})", exc, source)
                return None
            record = await conn.fetchrow(
                f"""UPDATE orders SET state = $2, updated_at = now(),
                        reason = COALESCE($3, reason),
                        venue_order_id = COALESCE($4, venue_order_id)
                    WHERE client_order_id = $1 RETURNING {_ORDER_COLUMNS}""",
                client_id,
                status.state.value,
                reason,
                venue_order_id,
            )
            await _event(
                conn, client_id, current.state, status.state, source, _detail(reason, detail)
            )
        assert record is not None
        return Transitioned(_order_row(record), current.state)

    async def record_fill(self, fill: Fill, source: str) -> tuple[FillRow, Transitioned] | None:
        """Record a fill once per (exchange, trade id) and grow the order's filled quantity.

        None when the fill was already recorded, or when the state machine refuses it (logged
        at ERROR with the fill: an order cannot fill past its quantity or after it was proven
        never placed; the order then needs reconciling, not a guess)."""
        try:
            async with self._pool.acquire() as conn, conn.transaction():
                return await self._record_fill(conn, fill, source)
        except _Refused:
            return None  # rolled back: the fill row is not kept either

    async def _record_fill(
        self, conn: asyncpg.Connection, fill: Fill, source: str
    ) -> tuple[FillRow, Transitioned] | None:
        current = await _lock_order(conn, fill.client_order_id)
        if current is None:
            logger.error("fill {} for an unknown order: {}", fill.trade_id, fill)
            return None
        inserted = await conn.fetchrow(
            """INSERT INTO fills (exchange, trade_id, client_order_id, strategy,
                    instrument_name, side, quantity, price, fee, fee_currency, liquidity, at)
                VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)
                ON CONFLICT (exchange, trade_id) DO NOTHING
                RETURNING *""",
            current.exchange,
            fill.trade_id,
            fill.client_order_id,
            current.strategy,
            current.instrument,
            current.side.value,
            fill.quantity,
            fill.price,
            fill.fee,
            fill.fee_currency,
            fill.liquidity,
            us_to_datetime(fill.at_us),
        )
        if inserted is None:
            return None  # seen before
        try:
            status = apply_fill(current.status(), fill.quantity, fill.price)
        except IllegalOrderTransition as exc:
            logger.error("{} (fill {} from {}): {}", exc, fill.trade_id, source, fill)
            raise _Refused from exc
        record = await conn.fetchrow(
            f"""UPDATE orders SET state = $2, filled_quantity = $3, average_price = $4,
                    updated_at = now()
                WHERE client_order_id = $1 RETURNING {_ORDER_COLUMNS}""",
            fill.client_order_id,
            status.state.value,
            status.filled_quantity,
            status.average_price,
        )
        await _event(
            conn,
            fill.client_order_id,
            current.state,
            status.state,
            source,
            {"trade_id": fill.trade_id, "quantity": str(fill.quantity)},
        )
        assert record is not None
        return _fill_row(inserted), Transitioned(_order_row(record), current.state)

    async def order(self, client_id: str) -> OrderRow | None:
        record = await self._pool.fetchrow(
            f"SELECT {_ORDER_COLUMNS} FROM orders WHERE client_order_id = $1", client_id
        )
        return _order_row(record) if record is not None else None

    async def open_orders(self, exchange: str) -> list[OrderRow]:
        """Every order of the exchange not in a terminal state (INTENT and UNKNOWN included)."""
        records = await self._pool.fetch(
            f"""SELECT {_ORDER_COLUMNS} FROM orders
                WHERE exchange = $1 AND NOT (state = ANY($2::text[])) ORDER BY id""",
            exchange,
            [state.value for state in TERMINAL_STATES],
        )
        return [_order_row(record) for record in records]

    async def orders(
        self, exchange: str | None = None, *, open_only: bool = False, limit: int = 1000
    ) -> list[OrderRow]:
        records = await self._pool.fetch(
            f"""SELECT {_ORDER_COLUMNS} FROM orders
                WHERE ($1::text IS NULL OR exchange = $1)
                  AND (NOT $2 OR NOT (state = ANY($3::text[])))
                ORDER BY id DESC LIMIT $4""",
            exchange,
            open_only,
            [state.value for state in TERMINAL_STATES],
            limit,
        )
        return [_order_row(record) for record in records]

    async def fills(self, exchange: str | None = None) -> list[FillRow]:
        """Every fill, oldest first (the order in which accounting replays them)."""
        records = await self._pool.fetch(
            "SELECT * FROM fills WHERE ($1::text IS NULL OR exchange = $1) ORDER BY at, id",
            exchange,
        )
        return [_fill_row(record) for record in records]

    async def has_fill(self, exchange: str, trade_id: str) -> bool:
        found: bool = await self._pool.fetchval(
            "SELECT EXISTS (SELECT 1 FROM fills WHERE exchange = $1 AND trade_id = $2)",
            exchange,
            trade_id,
        )
        return found

    async def last_fill(self, exchange: str) -> tuple[int, int] | None:
        """(id, time in microseconds) of the exchange's newest fill; None when it has none."""
        record = await self._pool.fetchrow(
            "SELECT id, at FROM fills WHERE exchange = $1 ORDER BY id DESC LIMIT 1", exchange
        )
        return (record["id"], datetime_to_us(record["at"])) if record is not None else None

    async def fills_after(self, exchange: str, fill_id: int) -> list[FillRow]:
        """The exchange's fills recorded after fill ``fill_id``, in the order recorded."""
        records = await self._pool.fetch(
            "SELECT * FROM fills WHERE exchange = $1 AND id > $2 ORDER BY id", exchange, fill_id
        )
        return [_fill_row(record) for record in records]

    async def events(self, client_id: str) -> list[tuple[str | None, str, str]]:
        """(from, to, source) of every event of one order, in order."""
        records = await self._pool.fetch(
            "SELECT from_state, to_state, source FROM order_events"
            " WHERE client_order_id = $1 ORDER BY id",
            client_id,
        )
        return [(r["from_state"], r["to_state"], r["source"]) for r in records]

    async def record_system_event(
        self, kind: str, exchange: str, instrument: str | None, detail: dict[str, Any]
    ) -> None:
        await self._pool.execute(
            "INSERT INTO system_events (kind, exchange, instrument_name, detail)"
            " VALUES ($1, $2, $3, $4::jsonb)",
            kind,
            exchange,
            instrument,
            json.dumps(detail),
        )


# The burst travels as ONE JSON text parameter expanded by json_to_recordset (msgspec writes
# Decimals as their exact text): array parameters would make asyncpg introspect their types on
# every new connection, ~15 ms on the first order sent through it.
_INSERT_SENDING = f"""
WITH new AS (
    INSERT INTO orders (client_order_id, strategy, exchange, instrument_name, side,
            order_type, time_in_force, quantity, price, reduce_only, tag, state, deadline,
            sent_at)
    SELECT client_order_id, strategy, exchange, instrument_name, side, order_type,
           time_in_force, quantity, price, reduce_only, tag, 'SENDING', $2, now()
    FROM ROWS FROM (json_to_recordset($1::text::json) AS (
        client_order_id text, strategy text, exchange text, instrument_name text, side text,
        order_type text, time_in_force text, quantity numeric, price numeric,
        reduce_only boolean, tag text)) WITH ORDINALITY AS r
    ORDER BY r.ordinality
    RETURNING id, {_ORDER_COLUMNS}
), events AS (
    INSERT INTO order_events (client_order_id, from_state, to_state, source, detail)
    SELECT new.client_order_id, ev.from_state, ev.to_state, 'executor', '{{}}'::jsonb
    FROM new CROSS JOIN (VALUES (1, NULL::text, 'INTENT'), (2, 'INTENT', 'SENDING'))
        AS ev(step, from_state, to_state)
    ORDER BY new.id, ev.step
)
SELECT {_ORDER_COLUMNS} FROM new"""
_INTENT_FIELDS = (
    "client_order_id",
    "strategy",
    "exchange",
    "instrument_name",
    "side",
    "order_type",
    "time_in_force",
    "quantity",
    "price",
    "reduce_only",
    "tag",
)
_encode_json = msgspec.json.Encoder().encode


def _intent_values(
    client_id: str, strategy: str, exchange: str, intent: OrderIntent
) -> tuple[Any, ...]:
    """The values of an intent's row, in ``_INTENT_FIELDS`` order."""
    return (
        client_id,
        strategy,
        exchange,
        intent.instrument,
        intent.side.value,
        intent.type.value,
        intent.tif.value,
        intent.quantity,
        intent.price if intent.type is OrderType.LIMIT else None,
        intent.reduce_only,
        intent.tag,
    )


async def _insert_intent(
    conn: asyncpg.Connection, client_id: str, strategy: str, exchange: str, intent: OrderIntent
) -> OrderRow:
    record = await conn.fetchrow(
        f"""INSERT INTO orders (client_order_id, strategy, exchange, instrument_name,
                side, order_type, time_in_force, quantity, price, reduce_only, tag, state)
            VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, 'INTENT')
            RETURNING {_ORDER_COLUMNS}""",
        *_intent_values(client_id, strategy, exchange, intent),
    )
    await _event(conn, client_id, None, OrderState.INTENT, "executor", {})
    assert record is not None
    return _order_row(record)


class _Refused(Exception):
    """Roll the fill's transaction back."""


async def _lock_order(conn: asyncpg.Connection, client_id: str) -> OrderRow | None:
    record = await conn.fetchrow(
        f"SELECT {_ORDER_COLUMNS} FROM orders WHERE client_order_id = $1 FOR UPDATE", client_id
    )
    return _order_row(record) if record is not None else None


async def _event(
    conn: asyncpg.Connection,
    client_id: str,
    from_state: OrderState | None,
    to_state: OrderState,
    source: str,
    detail: dict[str, Any],
) -> None:
    await conn.execute(
        "INSERT INTO order_events (client_order_id, from_state, to_state, source, detail)"
        " VALUES ($1, $2, $3, $4, $5::jsonb)",
        client_id,
        from_state.value if from_state is not None else None,
        to_state.value,
        source,
        json.dumps(detail),
    )


def _detail(reason: str | None, detail: dict[str, Any] | None) -> dict[str, Any]:
    merged = dict(detail or {})
    if reason:
        merged["reason"] = reason
    return merged
