"""``tradingd reconcile``: the running daemon reconciles each account with its venue now, and
the command prints what differs (the same run as the periodic one: it counts towards the
two-run rule, and its report is recorded)."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import msgspec

from tradingd.config import Config
from tradingd.execution.audit import Report
from tradingd.execution.control import ControlClient, NoDaemon, NoReply, Reconcile
from tradingd.exitcodes import EX_FAILURE, EX_OK, EX_TEMPFAIL, EX_UNAVAILABLE, EX_USAGE
from tradingd.operator_storage import storage_for


def add_parser(commands: Any) -> None:
    reconcile = commands.add_parser(
        "reconcile",
        help="reconcile each account with its venue now (through the daemon) and print the "
        "differences; exit 0 agree, 1 differ, 69 no daemon",
    )
    reconcile.add_argument("--exchange", metavar="NAME", help="only this exchange")
    reconcile.add_argument("--timeout", type=float, default=30.0, metavar="S")
    reconcile.add_argument("--json", action="store_true", help="machine-readable output")


def render(report: Report) -> list[str]:
    at = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(report.at_us / 1e6))
    lines = [
        f"{report.exchange}: {report.outcome.value.upper()} ({report.trigger.value} at {at}Z),"
        f" {report.open_orders} open orders of ours at the venue"
        + (f", {report.fills_booked} missed fills booked" if report.fills_booked else "")
    ]
    if not report.findings:
        lines.append(f"  {report.summary}")
    else:
        lines.append(f"  {'finding':<17} {'subject':<24} {'ledger':<20} venue")
        for f in report.findings:
            lines.append(f"  {f.kind.value:<17} {f.subject:<24} {f.ledger:<20} {f.venue}")
    return lines


async def command(args: argparse.Namespace, config: Config, path: Path) -> int:
    if args.exchange is not None and args.exchange not in config.exchanges:
        print(
            f"tradingd: unknown exchange {args.exchange!r};"
            f" configured: {', '.join(config.exchanges) or 'none'}",
            file=sys.stderr,
        )
        return EX_USAGE
    async with storage_for(config, needs_schema=False) as storage:
        try:
            reply = await ControlClient(storage.redis).request(
                Reconcile(exchange=args.exchange), timeout_s=args.timeout
            )
        except NoDaemon as exc:
            print(f"tradingd: {exc}", file=sys.stderr)
            return EX_UNAVAILABLE
        except NoReply as exc:
            print(f"tradingd: {exc}", file=sys.stderr)
            return EX_TEMPFAIL
    if args.json:
        print(msgspec.json.format(msgspec.json.encode(reply.reconciliations), indent=2).decode())
    else:
        for report in reply.reconciliations:
            print("\n".join(render(report)))
    if reply.error:
        print(f"tradingd: {reply.error}", file=sys.stderr)
        return EX_FAILURE
    return EX_OK if all(r.clean for r in reply.reconciliations) else EX_FAILURE
