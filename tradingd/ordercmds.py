"""The operator's trading commands: orders through the running daemon, and the ledger's view.

``order submit|cancel``, ``strategies`` and the kill switch's cancellation go through the
control channel to the daemon's executors (the same risk checks, ledger and state machine as
strategies; never straight to a venue from here). ``orders``, ``fills``, ``positions`` and
``pnl`` read the ledger in PostgreSQL and work without a daemon: positions and PnL are the
replay of the fills (``tradingd.execution.accounting``), marked at the Redis tickers
``ticker:<exchange>:<instrument>`` or, failing one, the last public trade.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Mapping, Sequence
from datetime import UTC, date, datetime
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

import asyncpg
import msgspec
import redis.asyncio as aioredis

from tradingd.config import Config
from tradingd.execution.accounting import Book, FillRecord, is_inverse
from tradingd.execution.control import (
    Cancel,
    CancelEverything,
    ControlClient,
    ListStrategies,
    NoDaemon,
    NoReply,
    Pause,
    Reply,
    Request,
    Resume,
    Snapshot,
    Submit,
)
from tradingd.execution.desk import CancelReport, ExecutorSnapshot
from tradingd.exitcodes import EX_FAILURE, EX_OK, EX_TEMPFAIL, EX_UNAVAILABLE, EX_USAGE
from tradingd.state import current_operator
from tradingd.strategies.api import OrderIntent, OrderType, Side, TimeInForce

# Order states (tradingd.execution.orders defines them): the ones an order never leaves, and
# the one whose outcome only the venue can tell.
TERMINAL_STATES = ("FILLED", "CANCELED", "REJECTED", "NEVER_PLACED", "DENIED")
UNKNOWN_STATE = "UNKNOWN"


def add_parsers(commands: Any) -> None:
    """Register the trading commands on the ``tradingd`` sub-command parser."""
    order = commands.add_parser("order", help="submit or cancel one order through the daemon")
    order_sub = order.add_subparsers(dest="order_command", metavar="ACTION", required=True)
    submit = order_sub.add_parser(
        "submit",
        help="send an order through the running daemon's executor (strategy 'manual'); "
        "exit 0 accepted, 1 denied, 69 no daemon",
    )
    submit.add_argument("--exchange", metavar="NAME", required=True)
    submit.add_argument("--symbol", metavar="SYM", required=True)
    submit.add_argument("--side", choices=[s.value for s in Side], required=True)
    submit.add_argument("--type", choices=[t.value for t in OrderType], default="limit")
    submit.add_argument("--qty", metavar="Q", required=True, help="quantity in base units")
    submit.add_argument("--price", metavar="P", help="limit price (required for limit)")
    submit.add_argument("--tif", choices=[t.value for t in TimeInForce], default="GTC")
    submit.add_argument("--timeout", type=float, default=10.0, metavar="S")
    cancel = order_sub.add_parser("cancel", help="cancel one order through the daemon")
    cancel.add_argument("--exchange", metavar="NAME", required=True)
    cancel.add_argument("client_order_id", metavar="CLIENT_ID")
    cancel.add_argument("--timeout", type=float, default=10.0, metavar="S")

    orders = commands.add_parser("orders", help="orders from the ledger, newest first")
    orders.add_argument("--open", action="store_true", help="only those not in a final state")
    orders.add_argument("--exchange", metavar="NAME")
    orders.add_argument("--limit", type=int, default=50)
    orders.add_argument("--json", action="store_true", help="machine-readable output")

    fills = commands.add_parser("fills", help="fills from the ledger, newest first")
    fills.add_argument("--exchange", metavar="NAME")
    fills.add_argument("--limit", type=int, default=50)
    fills.add_argument("--json", action="store_true", help="machine-readable output")

    positions = commands.add_parser("positions", help="open positions per strategy (from fills)")
    positions.add_argument("--json", action="store_true", help="machine-readable output")

    pnl = commands.add_parser(
        "pnl", help="realised and unrealised PnL and fees per strategy (from fills)"
    )
    pnl.add_argument("--since", metavar="DATE", type=date.fromisoformat, help="YYYY-MM-DD (UTC)")
    pnl.add_argument("--json", action="store_true", help="machine-readable output")

    strategies = commands.add_parser(
        "strategies", help="the running daemon's strategies: list, pause NAME, resume NAME"
    )
    strategies.add_argument(
        "action", choices=("list", "pause", "resume"), nargs="?", default="list"
    )
    strategies.add_argument("name", nargs="?", metavar="NAME")
    strategies.add_argument("--reason", metavar="TEXT", help="why (pause; recorded)")
    strategies.add_argument("--json", action="store_true", help="machine-readable output")


def _print_json(value: Any) -> None:
    print(msgspec.json.format(msgspec.json.encode(value), indent=2).decode())


def _decimal(text: str) -> Decimal | None:
    try:
        value = Decimal(text)
    except InvalidOperation:
        return None
    return value if value.is_finite() and value > 0 else None


async def _ask(redis: aioredis.Redis, request: Request, timeout_s: float) -> Reply | int:
    """The daemon's reply, or the exit code after saying why there is none."""
    try:
        return await ControlClient(redis).request(request, timeout_s=timeout_s)
    except NoDaemon as exc:
        print(f"tradingd: {exc}", file=sys.stderr)
        return EX_UNAVAILABLE
    except NoReply as exc:
        print(f"tradingd: {exc}", file=sys.stderr)
        return EX_TEMPFAIL


def _redis_for(storage: Any) -> aioredis.Redis:
    redis: aioredis.Redis = storage.redis
    return redis


# -- order submit / cancel --------------------------------------------------------------------


def intent_from_args(args: argparse.Namespace, config: Config) -> OrderIntent | str:
    """The order the operator asked for, or what is wrong with the command line."""
    if args.exchange not in config.exchanges:
        return f"unknown exchange {args.exchange!r}; configured: {', '.join(config.exchanges)}"
    quantity = _decimal(args.qty)
    if quantity is None:
        return f"--qty: expected a positive decimal number, found {args.qty!r}"
    order_type = OrderType(args.type)
    price: Decimal | None = None
    if order_type is OrderType.LIMIT:
        if args.price is None:
            return "--price is required for a limit order"
        price = _decimal(args.price)
        if price is None:
            return f"--price: expected a positive decimal number, found {args.price!r}"
    elif args.price is not None:
        return "--price is for limit orders only (a market order takes the book)"
    return OrderIntent(
        instrument=args.symbol,
        side=Side(args.side),
        quantity=quantity,
        type=order_type,
        price=price,
        tif=TimeInForce(args.tif),
        tag=f"cli:{current_operator()}",
    )


async def order(args: argparse.Namespace, config: Config, path: Path) -> int:
    from tradingd.commands import storage_for

    if args.order_command == "submit":
        intent = intent_from_args(args, config)
        if isinstance(intent, str):
            print(f"tradingd: error: {intent}", file=sys.stderr)
            return EX_USAGE
        request: Request = Submit(exchange=args.exchange, intent=intent)
    else:
        if args.exchange not in config.exchanges:
            print(f"tradingd: error: unknown exchange {args.exchange!r}", file=sys.stderr)
            return EX_USAGE
        request = Cancel(exchange=args.exchange, client_order_id=args.client_order_id)
    async with storage_for(config) as storage:
        reply = await _ask(_redis_for(storage), request, args.timeout)
    if isinstance(reply, int):
        return reply
    if reply.error or reply.decision is None:
        print(f"tradingd: {reply.error or 'no decision in the reply'}", file=sys.stderr)
        return EX_FAILURE
    decision = reply.decision
    if args.order_command == "submit":
        what = f"{args.exchange} {args.symbol} {args.side} {args.type} {args.qty}" + (
            f" @ {args.price} {args.tif}" if args.price else f" {args.tif}"
        )
        if decision.accepted:
            print(f"{decision.client_order_id} accepted: {what}")
            print(f"  follow it with: tradingd orders --exchange {args.exchange}")
            return EX_OK
        print(f"denied: {decision.reason} ({what})")
        return EX_FAILURE
    if decision.accepted:
        print(f"{args.client_order_id}: cancel requested")
        return EX_OK
    print(f"{args.client_order_id}: cancel denied: {decision.reason}")
    return EX_FAILURE


# -- strategies -------------------------------------------------------------------------------


async def strategies(args: argparse.Namespace, config: Config, path: Path) -> int:
    from tradingd.commands import storage_for

    if args.action != "list" and not args.name:
        print(f"tradingd: error: strategies {args.action} needs NAME", file=sys.stderr)
        return EX_USAGE
    request: Request
    if args.action == "pause":
        reason = f"paused by {current_operator()}" + (f": {args.reason}" if args.reason else "")
        request = Pause(name=args.name, reason=reason)
    elif args.action == "resume":
        request = Resume(name=args.name)
    else:
        request = ListStrategies()
    async with storage_for(config) as storage:
        reply = await _ask(_redis_for(storage), request, 10.0)
    if isinstance(reply, int):
        return reply
    if reply.error:
        print(f"tradingd: {reply.error}", file=sys.stderr)
        return EX_FAILURE
    if args.action != "list":
        if not reply.found:
            print(f"tradingd: no strategy {args.name!r} runs in the daemon", file=sys.stderr)
            return EX_FAILURE
        print(f"{args.name}: {'paused' if args.action == 'pause' else 'resumed'}")
        return EX_OK
    if args.json:
        _print_json(reply.strategies)
        return EX_OK
    if not reply.strategies:
        print("no strategies run (add [[strategies]] tables to the configuration)")
    for s in reply.strategies:
        state = f"PAUSED ({s.reason})" if s.paused else "running"
        print(f"{s.name:<20} {s.strategy:<12} {s.exchange:<10} {','.join(s.symbols):<24} {state}")
    return EX_OK


# -- kill switch ------------------------------------------------------------------------------


async def cancel_everything(
    redis: aioredis.Redis, pool: asyncpg.Pool, reason: str, timeout_s: float
) -> int:
    """After the kill switch is set: every executor cancels what it owns; print the count.
    Exit 0 only when every exchange confirms none remain."""
    try:
        reply = await ControlClient(redis).request(
            CancelEverything(reason=reason), timeout_s=timeout_s
        )
    except NoDaemon:
        still_open = await pool.fetchval(
            "SELECT count(*) FROM orders WHERE state <> ALL($1::text[])", list(TERMINAL_STATES)
        )
        if still_open:
            print(
                f"no daemon runs: {still_open} orders are not final in the ledger and were not "
                "cancelled; start the daemon (it cancels them with the switch on) or cancel "
                "them at the venue"
            )
            return EX_FAILURE
        print("no daemon runs; the ledger holds no open order")
        return EX_OK
    except NoReply as exc:
        print(f"tradingd: {exc}", file=sys.stderr)
        return EX_FAILURE
    return report_cancellations(reply.reports, reply.error)


def report_cancellations(reports: Sequence[CancelReport], error: str = "") -> int:
    code = EX_OK if not error else EX_FAILURE
    if error:
        print(f"tradingd: {error}", file=sys.stderr)
    for report in reports:
        print(
            f"{report.exchange}: cancelled {report.cancelled} of {report.requested},"
            f" remaining {report.remaining}"
        )
        for problem in report.errors:
            print(f"  {problem}")
        if report.remaining or report.errors:
            code = EX_FAILURE
    total = sum(r.remaining for r in reports)
    print(f"open orders remaining: {total}" + ("" if code == EX_OK else " (NOT all cancelled)"))
    return code


# -- the ledger's view ------------------------------------------------------------------------


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


async def orders(args: argparse.Namespace, config: Config, path: Path) -> int:
    from tradingd.commands import storage_for

    async with storage_for(config) as storage:
        rows = await fetch_orders(
            storage.pool, open_only=args.open, exchange=args.exchange, limit=args.limit
        )
    if args.json:
        _print_json(rows)
        return EX_OK
    if not rows:
        print("no open orders" if args.open else "no orders")
    for o in rows:
        price = f"@ {o.price}" if o.price is not None else "market"
        filled = f" filled {o.filled_quantity}" + (
            f" avg {o.average_price}" if o.average_price is not None else ""
        )
        print(
            f"{o.created_at:%Y-%m-%d %H:%M:%S} {o.client_order_id:<16} {o.state:<16}"
            f" {o.exchange} {o.instrument} {o.side} {o.quantity} {price} {o.tif}"
            f"{filled if o.filled_quantity else ''}  [{o.strategy}]"
            + (f"  {o.reason}" if o.reason else "")
        )
    return EX_OK


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


async def fills(args: argparse.Namespace, config: Config, path: Path) -> int:
    from tradingd.commands import storage_for

    async with storage_for(config) as storage:
        rows = await storage.pool.fetch(
            "SELECT exchange, trade_id, client_order_id, strategy, instrument_name AS instrument,"
            " side, quantity, price, fee, fee_currency, liquidity, at FROM fills"
            " WHERE ($1::text IS NULL OR exchange = $1) ORDER BY id DESC LIMIT $2",
            args.exchange,
            args.limit,
        )
    found = [FillRow(**dict(r)) for r in rows]
    if args.json:
        _print_json(found)
        return EX_OK
    if not found:
        print("no fills")
    for f in found:
        print(
            f"{f.at:%Y-%m-%d %H:%M:%S} {f.exchange} {f.instrument} {f.side} {f.quantity}"
            f" @ {f.price} fee {f.fee} {f.fee_currency} {f.liquidity}"
            f"  {f.client_order_id} [{f.strategy}] trade {f.trade_id}"
        )
    return EX_OK


async def fetch_fill_records(pool: asyncpg.Pool, until: datetime | None = None) -> list[FillRecord]:
    """Every fill in ledger order (before ``until``), with its instrument's currencies."""
    rows = await pool.fetch(
        "SELECT f.strategy, f.exchange, f.instrument_name, f.side, f.quantity, f.price, f.fee,"
        " f.fee_currency, f.trade_id, f.at, i.base_currency, i.quote_currency, i.market_type"
        " FROM fills f LEFT JOIN instruments i"
        " ON i.exchange = f.exchange AND i.instrument_name = f.instrument_name"
        " WHERE $1::timestamptz IS NULL OR f.at < $1 ORDER BY f.id",
        until,
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


async def positions(args: argparse.Namespace, config: Config, path: Path) -> int:
    from tradingd.commands import storage_for

    async with storage_for(config) as storage:
        records = await fetch_fill_records(storage.pool)
        book = Book.replay(records)
        index = _instrument_index(records)
        held = [(s, p) for s, p in book.positions() if p.quantity != 0]
        marks = await marks_for(
            _redis_for(storage),
            storage.pool,
            {p.instrument: index[p.instrument].exchange for _, p in held},
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
    if args.json:
        _print_json(rows)
        return EX_OK
    if not rows:
        print("no open positions")
    for r in rows:
        valued = (
            f"mark {r.mark} ({r.mark_source}) unrealised {_q(r.unrealised_pnl)} {r.pnl_currency}"
            if r.mark is not None
            else "no mark (no ticker in Redis, no public trade)"
        )
        print(
            f"{r.strategy:<16} {r.exchange:<10} {r.instrument:<16} {r.quantity:>14}"
            f" avg {_q(r.average_price)}  {valued}"
        )
    return EX_OK


def _q(value: Decimal | None) -> str:
    """For reading: 8 decimal places at most, trailing zeros dropped."""
    if value is None:
        return "-"
    exponent = value.as_tuple().exponent
    shown = (
        value.quantize(Decimal("1e-8")) if isinstance(exponent, int) and exponent < -8 else value
    )
    text = format(shown, "f")
    return text.rstrip("0").rstrip(".") if "." in text else text


class StrategyPnl(msgspec.Struct, kw_only=True):
    strategy: str
    realised: dict[str, Decimal]
    unrealised: dict[str, Decimal]
    fees: dict[str, Decimal]
    unmarked: list[str] = []  # open positions left out of unrealised: no mark


def _minus(a: Mapping[str, Decimal], b: Mapping[str, Decimal]) -> dict[str, Decimal]:
    return {c: a.get(c, Decimal(0)) - b.get(c, Decimal(0)) for c in sorted(set(a) | set(b))}


async def pnl(args: argparse.Namespace, config: Config, path: Path) -> int:
    from tradingd.commands import storage_for

    since = (
        datetime(args.since.year, args.since.month, args.since.day, tzinfo=UTC)
        if args.since
        else None
    )
    async with storage_for(config) as storage:
        records = await fetch_fill_records(storage.pool)
        book = Book.replay(records)
        before = Book.replay(r for r in records if since and r.at_us < since.timestamp() * 1e6)
        index = _instrument_index(records)
        open_instruments = {p.instrument for _, p in book.positions() if p.quantity != 0}
        marks = await marks_for(
            _redis_for(storage), storage.pool, {i: index[i].exchange for i in open_instruments}
        )
    prices = {instrument: mark for instrument, (mark, _) in marks.items()}
    names = book.strategies()
    rows = [
        StrategyPnl(
            strategy=name,
            realised=_minus(book.realised_pnl(name), before.realised_pnl(name)),
            unrealised=book.unrealised_pnl(prices, name),
            fees=_minus(book.fees(name), before.fees(name)),
            unmarked=book.unmarked(prices, name),
        )
        for name in names
    ]
    if args.json:
        _print_json({"since": args.since.isoformat() if args.since else None, "strategies": rows})
        return EX_OK
    print(
        f"PnL since {args.since.isoformat()} (unrealised: now)" if args.since else "PnL (all fills)"
    )
    if not rows:
        print("no fills")
    for r in rows:
        print(
            f"{r.strategy:<16} realised {_money(r.realised)}  unrealised {_money(r.unrealised)}"
            f"  fees {_money(r.fees)}"
            + (f"  (no mark for {', '.join(r.unmarked)})" if r.unmarked else "")
        )
    return EX_OK


def _money(amounts: Mapping[str, Decimal]) -> str:
    shown = [f"{_q(v)} {c}" for c, v in sorted(amounts.items()) if v]
    return ", ".join(shown) or "0"


# -- status -----------------------------------------------------------------------------------


class ExecutorStatus(msgspec.Struct, kw_only=True):
    """The executor's part of ``tradingd status``: the ledger's counts, and the daemon's own
    view when it runs."""

    open_orders: int
    unknown_orders: int
    positions: dict[str, str]  # "strategy exchange instrument" -> signed quantity
    live: list[ExecutorSnapshot] | None = None  # None: no daemon answered
    note: str = ""


async def executor_status(redis: aioredis.Redis, pool: asyncpg.Pool) -> ExecutorStatus | None:
    """None when the database has no ledger yet (migrations not applied)."""
    try:
        return await _executor_status(redis, pool)
    except asyncpg.UndefinedTableError:
        return None


async def _executor_status(redis: aioredis.Redis, pool: asyncpg.Pool) -> ExecutorStatus:
    counts = await pool.fetchrow(
        "SELECT count(*) FILTER (WHERE state <> ALL($1::text[])) AS open,"
        " count(*) FILTER (WHERE state = $2) AS unknown FROM orders",
        list(TERMINAL_STATES),
        UNKNOWN_STATE,
    )
    records = await fetch_fill_records(pool)
    book = Book.replay(records)
    index = _instrument_index(records)
    held = {
        f"{s} {index[p.instrument].exchange} {p.instrument}": str(p.quantity)
        for s, p in book.positions()
        if p.quantity != 0
    }
    status = ExecutorStatus(
        open_orders=counts["open"], unknown_orders=counts["unknown"], positions=held
    )
    try:
        reply = await ControlClient(redis).request(Snapshot(), timeout_s=3.0)
        status.live = reply.snapshots
    except NoDaemon:
        status.note = "no daemon answers on the control channel"
    except NoReply as exc:
        status.note = str(exc)
    return status


def print_executor_status(status: ExecutorStatus) -> None:
    print("executor:")
    print(
        f"  ledger: {status.open_orders} open orders, {status.unknown_orders} UNKNOWN"
        + (" (outcome not yet known: their instrument is blocked)" if status.unknown_orders else "")
    )
    for key, quantity in sorted(status.positions.items()):
        print(f"  position {key}: {quantity}")
    if status.live is None:
        print(f"  daemon: {status.note}")
        return
    for snap in status.live:
        gate = "trading allowed" if snap.trading_allowed else "trading NOT allowed"
        print(
            f"  {snap.exchange:<12} {snap.mode}, {gate}, {snap.open_orders} open,"
            f" {snap.unknown_orders} unknown"
        )
        for s in snap.strategies:
            state = f"PAUSED ({s.reason})" if s.paused else "running"
            print(f"  {'':<12} strategy {s.name} ({s.strategy}) {','.join(s.symbols)}: {state}")
        if snap.denials:
            denied = ", ".join(f"{n} x {reason}" for reason, n in sorted(snap.denials.items()))
            print(f"  {'':<12} denied since start: {denied}")
