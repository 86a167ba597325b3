"""The ``tradingd`` command line: the daemon itself and the operator's commands.

Exit codes follow sysexits (see ``tradingd.exitcodes``): 64 usage, 69 unavailable, 78 config.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Coroutine, Sequence
from pathlib import Path
from typing import Any

import uvloop
from loguru import logger

from tradingd import __version__, backfill_trades, backup, reportcmd, subscribecmds
from tradingd.config import Config, ConfigError, load_config, resolve_config_path
from tradingd.exitcodes import EX_CONFIG, EX_UNAVAILABLE, EX_USAGE
from tradingd.logs import configure_logging, flush_logs
from tradingd.secrets import SecretError
from tradingd.storage.connect import StorageError, StorageRejected

Command = Callable[[argparse.Namespace, Config, Path], Coroutine[Any, Any, int]]


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        self.print_usage(sys.stderr)
        self.exit(EX_USAGE, f"{self.prog}: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="tradingd",
        description="tradingd: capture exchange market data into PostgreSQL and trade, "
        "supervised in one process. Without a command, runs the daemon.",
        epilog="Exit codes: 0 ok, 1 a check failed, 64 usage, 69 unavailable "
        "(storage, exchange clock), 70 internal error, 78 configuration.",
    )
    parser.add_argument("--version", action="version", version=f"tradingd {__version__}")
    parser.add_argument(
        "--config",
        metavar="PATH",
        help="configuration file (default: $TRADINGD_CONFIG, else config/tradingd.toml)",
    )
    parser.add_argument(
        "--bootstrap",
        action="store_true",
        help="one-shot: migrate, sync instruments, backfill OHLC history, leave every "
        "exchange LOCKED, exit",
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    commands.add_parser("run", help="run the daemon in the foreground (the default)")
    bootstrap_help = (
        "one-shot: migrate, sync instruments, backfill OHLC history, leave every exchange "
        "LOCKED, exit (the same as --bootstrap)"
    )
    commands.add_parser("bootstrap", help=bootstrap_help, description=bootstrap_help)
    commands.add_parser("migrate", help="apply pending database migrations and exit")

    config_cmd = commands.add_parser("config", help="configuration commands")
    config_sub = config_cmd.add_subparsers(dest="config_command", metavar="ACTION", required=True)
    config_sub.add_parser(
        "check", help="validate the configuration and print it with secrets redacted"
    )

    status = commands.add_parser(
        "status", help="per-exchange state, actors, queues, open gaps, storage reachability"
    )
    status.add_argument("--json", action="store_true", help="machine-readable output")

    for name, text in (
        ("unlock", "verify the data and authorise trading (LOCKED -> HEALTHY)"),
        ("lock", "stop trading at once (-> LOCKED)"),
    ):
        cmd = commands.add_parser(name, help=text)
        target = cmd.add_mutually_exclusive_group(required=True)
        target.add_argument("--exchange", metavar="NAME", help="one exchange")
        target.add_argument("--all", action="store_true", help="every enabled exchange")
        cmd.add_argument("--reason", metavar="TEXT", help="why (recorded with your name)")
        if name == "unlock":
            cmd.add_argument(
                "--force", action="store_true", help="unlock despite failed checks (needs --reason)"
            )
            cmd.add_argument("--yes", action="store_true", help="do not ask for confirmation")

    prune = commands.add_parser(
        "prune",
        help="apply [retention]: drop old public_trades months, delete old ticker snapshots "
        "and dead letters (tradingd-prune.timer runs it daily)",
    )
    prune.add_argument("--dry-run", action="store_true", help="report only; delete nothing")

    alert = commands.add_parser(
        "alert",
        help="send a message to the [alerts] channels (tradingd-alert@.service runs it when a "
        "unit fails)",
    )
    what = alert.add_mutually_exclusive_group(required=True)
    what.add_argument("--unit", metavar="NAME", help="report that this systemd unit failed")
    what.add_argument("--message", metavar="TEXT", help="send this text (e.g. to test)")

    kill = commands.add_parser(
        "kill-switch",
        help="stop all trading on every exchange at once (on), allow it again (off), or show",
    )
    kill.add_argument("action", choices=("on", "off", "show"), nargs="?", default="show")
    kill.add_argument("--reason", metavar="TEXT", help="why (recorded with your name)")
    kill.add_argument(
        "--timeout",
        type=float,
        default=30.0,
        metavar="S",
        help="on: how long to wait for every executor to cancel its open orders",
    )
    kill.add_argument(
        "--flatten",
        action="store_true",
        help="on: also close every position with reduce-only market orders (through the ledger)",
    )

    state = commands.add_parser("state", help="state transition records")
    state_sub = state.add_subparsers(dest="state_command", metavar="ACTION", required=True)
    hist = state_sub.add_parser("history", help="recent transitions, newest first")
    hist.add_argument("--exchange", metavar="NAME")
    hist.add_argument("--limit", type=int, default=50)

    backfill_trades.add_arguments(commands)
    backup.add_arguments(commands)
    reportcmd.add_arguments(commands)
    subscribecmds.add_parsers(commands)

    dlq = commands.add_parser("dlq", help="inspect and clear dead letters")
    dlq_sub = dlq.add_subparsers(dest="dlq_command", metavar="ACTION", required=True)
    dlq_list = dlq_sub.add_parser("list", help="newest dead letters, one line each")
    dlq_list.add_argument("--exchange", metavar="NAME")
    dlq_list.add_argument("--limit", type=int, default=50)
    dlq_show = dlq_sub.add_parser("show", help="one dead letter in full")
    dlq_show.add_argument("id", type=int)
    dlq_purge = dlq_sub.add_parser("purge", help="delete dead letters")
    dlq_purge.add_argument("--exchange", metavar="NAME")
    dlq_purge.add_argument(
        "--older-than", metavar="HOURS", type=float, help="only those older than this"
    )
    dlq_purge.add_argument("--yes", action="store_true", help="do not ask for confirmation")
    from tradingd import ordercmds, reconcilecmd

    ordercmds.add_parsers(commands)
    reconcilecmd.add_parser(commands)
    _accept_config_anywhere(parser)
    return parser


def _accept_config_anywhere(parser: argparse.ArgumentParser) -> None:
    """``--config`` after any (sub)command too: ``tradingd status --config X``. SUPPRESS keeps
    a value given before the command when none is given after it."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                sub.add_argument(
                    "--config",
                    metavar="PATH",
                    default=argparse.SUPPRESS,
                    help="configuration file (default: $TRADINGD_CONFIG, else "
                    "config/tradingd.toml)",
                )
                _accept_config_anywhere(sub)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    path = resolve_config_path(args.config)
    try:
        config = load_config(path)
    except ConfigError as exc:
        return _configuration_error(exc)
    mode = configure_logging(config.daemon.log_level)
    logger.debug("logging to {}", mode)
    command = _dispatch(args, parser)
    if command is None:
        return EX_USAGE
    try:
        return uvloop.run(_run_and_flush(command(args, config, path)))
    except (ConfigError, SecretError) as exc:
        return _configuration_error(exc)
    except StorageError as exc:
        # One line, never a traceback: what could not be used, and (in the text) why.
        print(f"tradingd: {exc}", file=sys.stderr)
        return EX_CONFIG if isinstance(exc, StorageRejected) else EX_UNAVAILABLE
    except KeyboardInterrupt:
        return 130


def _configuration_error(exc: Exception) -> int:
    """Every configuration problem, at load or later, in one format: exit 78."""
    print(f"tradingd: configuration error: {exc}", file=sys.stderr)
    return EX_CONFIG


async def _run_and_flush(command: Coroutine[Any, Any, int]) -> int:
    try:
        return await command
    finally:
        await flush_logs()


def _dispatch(args: argparse.Namespace, parser: argparse.ArgumentParser) -> Command | None:
    from tradingd import commands, ordercmds, reconcilecmd

    if args.bootstrap:
        if args.command not in (None, "run"):
            parser.print_usage(sys.stderr)
            print("tradingd: error: --bootstrap runs alone", file=sys.stderr)
            return None
        return commands.bootstrap
    table: dict[str | None, Command] = {
        None: commands.run,
        "run": commands.run,
        "bootstrap": commands.bootstrap,
        "migrate": commands.migrate,
        "config": commands.config_check,
        "status": commands.status,
        "unlock": commands.unlock,
        "lock": commands.lock,
        "kill-switch": commands.kill_switch,
        "prune": commands.prune,
        "alert": commands.alert,
        "state": commands.state_history,
        "dlq": commands.dlq,
        "backfill": backfill_trades.command,
        "backup": backup.backup_command,
        "restore": backup.restore_command,
        "order": ordercmds.order,
        "orders": ordercmds.orders,
        "fills": ordercmds.fills,
        "positions": ordercmds.positions,
        "pnl": ordercmds.pnl,
        "strategies": ordercmds.strategies,
        "reconcile": reconcilecmd.command,
        "report": reportcmd.command,
        "subscribe": subscribecmds.command,
        "unsubscribe": subscribecmds.command,
    }
    return table[args.command]


__all__ = ["build_parser", "main"]
