"""``tradingd subscribe`` / ``tradingd unsubscribe``: change what the running daemon captures,
without a restart, over the control channel (``tradingd.subscriptions`` does it in the daemon).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from tradingd.config import Config
from tradingd.execution.control import Request, Subscribe, Unsubscribe
from tradingd.exitcodes import EX_FAILURE, EX_OK, EX_UNAVAILABLE, EX_USAGE
from tradingd.operator_storage import storage_for
from tradingd.ordercmds import ask_daemon
from tradingd.state import current_operator


def add_parsers(commands: Any) -> None:
    for name, text in (
        (
            "subscribe",
            "capture these symbols too, now and after restarts (the running daemon subscribes "
            "them live; unknown symbols are refused)",
        ),
        ("unsubscribe", "stop capturing these symbols, now and after restarts"),
    ):
        cmd = commands.add_parser(
            name, help=text, description=text + "; exit 0 done, 64 refused, 69 no daemon"
        )
        cmd.add_argument("--exchange", metavar="NAME", required=True)
        cmd.add_argument("symbols", metavar="SYMBOL", nargs="+")
        cmd.add_argument("--timeout", type=float, default=30.0, metavar="S")


async def command(args: argparse.Namespace, config: Config, path: Path) -> int:
    exchange = args.exchange
    if exchange not in config.exchanges or not config.exchanges[exchange].enabled:
        print(
            f"tradingd: error: unknown exchange {exchange!r}; enabled: "
            f"{', '.join(config.enabled_exchanges()) or 'none'}",
            file=sys.stderr,
        )
        return EX_USAGE
    adding = args.command == "subscribe"
    request: Request = (Subscribe if adding else Unsubscribe)(
        exchange=exchange, symbols=list(args.symbols), operator=current_operator()
    )
    async with storage_for(config) as storage:
        reply = await ask_daemon(storage.redis, request, args.timeout)
    if isinstance(reply, int):
        return reply
    change = reply.subscription
    if reply.error or change is None:
        print(f"tradingd: {reply.error or 'no outcome in the reply'}", file=sys.stderr)
        return EX_FAILURE
    if change.problem:
        print(f"tradingd: {exchange}: {change.problem}", file=sys.stderr)
        return EX_UNAVAILABLE
    if change.refused:
        why = "not listed (or not trading) on the venue" if adding else "not captured"
        print(
            f"tradingd: error: {exchange}: {why}: {', '.join(change.refused)}; nothing was changed",
            file=sys.stderr,
        )
        if not adding:
            print(f"  captured: {', '.join(change.symbols) or 'nothing'}", file=sys.stderr)
        return EX_USAGE
    done = "subscribed" if adding else "unsubscribed"
    print(f"{exchange}: {done} {', '.join(change.changed) or 'nothing'}")
    if change.unchanged:
        print(f"  already captured: {', '.join(change.unchanged)}")
    print(
        f"{exchange}: capturing {', '.join(change.symbols) or 'nothing'}"
        f" on {change.connections} connection(s)"
    )
    return EX_OK
