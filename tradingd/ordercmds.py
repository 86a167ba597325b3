"""The operator's trading commands: orders through the running daemon, and the ledger's view.

``order submit|cancel``, ``strategies`` and the kill switch's cancellation go through the
control channel to the daemon's executors (the same risk checks, ledger and state machine as
strategies; never straight to a venue from here). ``orders``, ``fills``, ``positions`` and
``pnl`` read the ledger in PostgreSQL and work without a daemon (``tradingd.execution.reports``).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Mapping, Sequence
from datetime import date
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

import asyncpg
import msgspec
import redis.asyncio as aioredis

from tradingd.config import Config
from tradingd.execution import reports
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
from tradingd.operator_storage import storage_for
from tradingd.state import current_operator
from tradingd.strategies.api import OrderIntent, OrderType, Side, TimeInForce


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


# The other commands that go through the daemon (``tradingd.subscribecmds``) answer the same way.
ask_daemon = _ask


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
    redis: aioredis.Redis,
    pool: asyncpg.Pool,
    reason: str,
    timeout_s: float,
    *,
    flatten: bool = False,
) -> int:
    """After the kill switch is set: every executor cancels every open order (in bulk, then
    verified with the venue), ``flatten``: then closes its positions; print the result.
    Exit 0 only when every exchange confirms none remain (and, flattening, no position)."""
    try:
        reply = await ControlClient(redis).request(
            CancelEverything(reason=reason, flatten=flatten), timeout_s=timeout_s
        )
    except NoDaemon:
        still_open = await reports.open_order_count(pool)
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
    return report_cancellations(reply.reports, reply.error, flatten=flatten)


def report_cancellations(
    reports: Sequence[CancelReport], error: str = "", *, flatten: bool = False
) -> int:
    code = EX_OK if not error else EX_FAILURE
    if error:
        print(f"tradingd: {error}", file=sys.stderr)
    for report in reports:
        venue = "unreadable" if report.venue_open < 0 else str(report.venue_open)
        print(
            f"{report.exchange}: cancelled {report.cancelled} of {report.requested},"
            f" remaining {report.remaining}; the venue lists {venue} open"
        )
        for line in report.flattened:
            print(f"  flatten: {line}")
        for instrument, quantity in sorted(report.positions.items()):
            print(f"  position left: {instrument} {quantity}")
        for problem in report.errors:
            print(f"  {problem}")
        if report.remaining or report.errors or report.venue_open != 0:
            code = EX_FAILURE
        if flatten and report.positions:
            code = EX_FAILURE
    total = sum(r.remaining for r in reports)
    print(f"open orders remaining: {total}" + ("" if code == EX_OK else " (NOT all cancelled)"))
    return code


# -- the ledger's view ------------------------------------------------------------------------


async def orders(args: argparse.Namespace, config: Config, path: Path) -> int:

    async with storage_for(config) as storage:
        rows = await reports.fetch_orders(
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


async def fills(args: argparse.Namespace, config: Config, path: Path) -> int:

    async with storage_for(config) as storage:
        found = await reports.fetch_fills(storage.pool, exchange=args.exchange, limit=args.limit)
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


async def positions(args: argparse.Namespace, config: Config, path: Path) -> int:

    async with storage_for(config) as storage:
        rows = await reports.positions_report(storage.pool, _redis_for(storage))
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


async def pnl(args: argparse.Namespace, config: Config, path: Path) -> int:

    async with storage_for(config) as storage:
        rows = await reports.pnl_report(storage.pool, _redis_for(storage), args.since)
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

    ledger: reports.LedgerSummary
    live: list[ExecutorSnapshot] | None = None  # None: no daemon answered
    note: str = ""


async def executor_status(redis: aioredis.Redis, pool: asyncpg.Pool) -> ExecutorStatus | None:
    """None when the database has no ledger yet (migrations not applied)."""
    ledger = await reports.ledger_summary(pool)
    if ledger is None:
        return None
    status = ExecutorStatus(ledger=ledger)
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
    ledger = status.ledger
    print(
        f"  ledger: {ledger.open_orders} open orders, {ledger.unknown_orders} UNKNOWN"
        + (" (outcome not yet known: their instrument is blocked)" if ledger.unknown_orders else "")
    )
    for key, quantity in sorted(ledger.positions.items()):
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
