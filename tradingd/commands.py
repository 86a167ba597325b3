"""The CLI commands (argument parsing lives in ``tradingd.cli``)."""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from pathlib import Path

import aiohttp
import msgspec
from loguru import logger

from tradingd import ordercmds
from tradingd.adapters.registry import create_adapter
from tradingd.config import Config, redacted
from tradingd.exitcodes import (
    EX_CONFIG,
    EX_FAILURE,
    EX_OK,
    EX_TEMPFAIL,
    EX_UNAVAILABLE,
    EX_USAGE,
)
from tradingd.secrets import secret_store
from tradingd.state import (
    ExchangeState,
    IllegalTransition,
    KillSwitch,
    StateUnavailable,
    current_operator,
    history,
    read_kill_switch,
    read_state,
    set_kill_switch,
    transition,
)
from tradingd.status import STATUS_KEY, DaemonStatus, decode_status
from tradingd.storage import Storage, StorageRejected, StorageUnavailable, open_storage
from tradingd.storage.migrations import migrate as apply_migrations


@asynccontextmanager
async def storage_for(config: Config) -> AsyncIterator[Storage]:
    """Storage for a one-shot command: attaches to the running daemon's, or starts its own."""
    storage = await open_storage(
        config,
        on_wait=lambda message: logger.warning("{}", message),
        secrets=secret_store(config),
        attach=True,
    )
    try:
        yield storage
    finally:
        await storage.close()


def _exchanges(args: argparse.Namespace, config: Config) -> list[str]:
    if getattr(args, "all", False):
        return list(config.enabled_exchanges())
    name = args.exchange
    if name not in config.exchanges:
        raise SystemExit(
            f"tradingd: unknown exchange {name!r}; configured: {', '.join(config.exchanges)}"
        )
    return [name]


# -- the daemon -----------------------------------------------------------------------------


async def run(args: argparse.Namespace, config: Config, path: Path) -> int:
    from tradingd.daemon import Daemon

    try:
        return await Daemon(config, path).run()
    except StorageUnavailable as exc:
        logger.critical("storage unavailable: {}", exc)
        return EX_UNAVAILABLE
    except StorageRejected as exc:
        logger.critical("storage refused us: {}", exc)
        return EX_CONFIG


async def bootstrap(args: argparse.Namespace, config: Config, path: Path) -> int:
    from tradingd.bootstrap import run_bootstrap

    try:
        return await run_bootstrap(config, config_path=path)
    except StorageUnavailable as exc:
        logger.critical("storage unavailable: {}", exc)
        return EX_UNAVAILABLE


# -- storage and configuration -------------------------------------------------------------


async def migrate(args: argparse.Namespace, config: Config, path: Path) -> int:
    try:
        async with storage_for(config) as storage:
            applied = await apply_migrations(storage.pool)
    except StorageUnavailable as exc:
        logger.critical("storage unavailable: {}", exc)
        return EX_UNAVAILABLE
    print("applied: " + ", ".join(applied) if applied else "the schema is up to date")
    return EX_OK


async def config_check(args: argparse.Namespace, config: Config, path: Path) -> int:
    """Validate the file and what each adapter makes of its section; print the result."""
    async with aiohttp.ClientSession() as http:
        for name in config.exchanges:
            await create_adapter(config, name, http, path).close()
    print(f"# {path}: valid", file=sys.stderr)
    print(msgspec.json.format(msgspec.json.encode(redacted(config)), indent=2).decode())
    return EX_OK


# -- status ---------------------------------------------------------------------------------


class _StatusReport(msgspec.Struct):
    config: str
    database: str
    redis: str
    daemon: str
    states: dict[str, dict[str, str | None]]
    open_gaps: list[dict[str, object]]
    dead_letters: int
    kill_switch: str = "unknown"
    running: DaemonStatus | None = None
    executor: ordercmds.ExecutorStatus | None = None


async def status(args: argparse.Namespace, config: Config, path: Path) -> int:
    report = _StatusReport(
        config=str(path),
        database="unreachable",
        redis="unreachable",
        daemon="not running",
        states={},
        open_gaps=[],
        dead_letters=0,
    )
    try:
        async with storage_for(config) as storage:
            report.database = "ok" if await storage.pool.fetchval("SELECT 1") == 1 else "error"
            report.redis = "ok" if await storage.redis.ping() else "error"
            try:
                report.kill_switch = describe_kill_switch(await read_kill_switch(storage.redis))
            except StateUnavailable as exc:
                report.kill_switch = f"unknown ({exc}): trading counts as stopped"
            for name in config.enabled_exchanges():
                try:
                    state = await read_state(storage.redis, name)
                except StateUnavailable as exc:
                    report.states[name] = {"state": None, "note": str(exc)}
                    continue
                latest = await history(storage.pool, name, limit=1)
                report.states[name] = {
                    "state": state.value if state else None,
                    "note": (
                        f"{latest[0].reason} ({latest[0].operator})"
                        if latest
                        else "never bootstrapped: run `tradingd --bootstrap`"
                    ),
                }
            rows = await storage.pool.fetch(
                "SELECT exchange, instrument_name, first_seq, last_seq, detected_at, reason"
                " FROM data_gaps WHERE status = 'open' ORDER BY detected_at LIMIT 100"
            )
            report.open_gaps = [
                {**dict(r), "detected_at": r["detected_at"].isoformat()} for r in rows
            ]
            report.dead_letters = await storage.pool.fetchval("SELECT count(*) FROM dead_letters")
            report.executor = await ordercmds.executor_status(storage.redis, storage.pool)
            raw = await storage.redis.get(STATUS_KEY)
            if raw:
                running = decode_status(raw)
                age = running.age_seconds()
                report.daemon = f"running (pid {running.pid}, status {age:.0f} s old)"
                report.running = running
    except StorageUnavailable as exc:
        report.database = f"unreachable: {exc}"
        _print_status(report, args.json)
        return EX_UNAVAILABLE
    _print_status(report, args.json)
    return EX_OK


def _print_status(report: _StatusReport, as_json: bool) -> None:
    if as_json:
        print(msgspec.json.format(msgspec.json.encode(report), indent=2).decode())
        return
    print(f"config:   {report.config}")
    print(f"daemon:   {report.daemon}")
    print(f"storage:  database {report.database}, redis {report.redis}")
    print(f"kill switch: {report.kill_switch}")
    print("exchanges:")
    running = {e.name: e for e in report.running.exchanges} if report.running else {}
    for name, st in report.states.items():
        line = f"  {name:<12} {st['state'] or 'NEW':<14} {st['note']}"
        live = running.get(name)
        if live:
            line += (
                f"\n  {'':<12} ws {live.connected}/{live.connections} connected,"
                f" {live.trades} trades, last frame {live.seconds_since_frame:.1f} s ago"
            )
            if live.repair.get("detected"):
                r = live.repair
                line += (
                    f"\n  {'':<12} gaps: {r['detected']:.0f} detected,"
                    f" {r['repaired']:.0f} repaired, {r['unfillable']:.0f} unfillable;"
                    f" repair p50 {r['p50_latency_s']:.3f} s,"
                    f" p99 {r['p99_latency_s']:.3f} s"
                )
        print(line)
    if report.running:
        print("actors:")
        for actor in report.running.actors:
            print(
                f"  {actor.name:<28} {actor.state:<9} restarts {actor.restarts}"
                + (f"  last error: {actor.last_error}" if actor.last_error else "")
            )
        print("queues:")
        for queue in report.running.queues:
            print(
                f"  {queue.name:<16} {queue.policy:<20} depth {queue.depth}/{queue.capacity}"
                f" high-water {queue.high_water} dropped {queue.dropped}"
            )
    print(f"open gaps: {len(report.open_gaps)}")
    for gap in report.open_gaps[:20]:
        print(
            f"  {gap['exchange']} {gap['instrument_name']} {gap['first_seq']}..{gap['last_seq']}"
            f" since {gap['detected_at']} ({gap['reason']})"
        )
    print(
        f"dead letters: {report.dead_letters}"
        + (" (tradingd dlq list)" if report.dead_letters else "")
    )
    if report.executor is not None:
        ordercmds.print_executor_status(report.executor)


# -- operator state commands ----------------------------------------------------------------


async def lock(args: argparse.Namespace, config: Config, path: Path) -> int:
    if not args.reason:
        print("tradingd: error: lock needs --reason TEXT", file=sys.stderr)
        return EX_USAGE
    operator = current_operator()
    code = EX_OK
    async with storage_for(config) as storage:
        for name in _exchanges(args, config):
            try:
                await transition(
                    storage.pool,
                    storage.redis,
                    name,
                    ExchangeState.LOCKED,
                    operator=operator,
                    reason=args.reason,
                )
                print(f"{name}: LOCKED ({args.reason})")
            except IllegalTransition as exc:
                print(f"tradingd: {exc}", file=sys.stderr)
                code = EX_FAILURE
    return code


async def kill_switch(args: argparse.Namespace, config: Config, path: Path) -> int:
    if args.action != "show" and not args.reason:
        print(f"tradingd: error: kill-switch {args.action} needs --reason TEXT", file=sys.stderr)
        return EX_USAGE
    async with storage_for(config) as storage:
        if args.action == "show":
            try:
                switch = await read_kill_switch(storage.redis)
            except StateUnavailable as exc:
                print(f"tradingd: {exc}; trading counts as stopped", file=sys.stderr)
                return EX_UNAVAILABLE
        else:
            switch = await set_kill_switch(
                storage.pool,
                storage.redis,
                on=args.action == "on",
                operator=current_operator(),
                reason=args.reason,
            )
            if args.action == "on":
                print(f"kill switch: {describe_kill_switch(switch)}")
                # Every executor denies at once and cancels what it owns; wait for the count.
                return await ordercmds.cancel_everything(
                    storage.redis,
                    storage.pool,
                    f"kill switch on by {current_operator()}: {args.reason}",
                    args.timeout,
                )
    print(f"kill switch: {describe_kill_switch(switch)}")
    return EX_OK


def describe_kill_switch(switch: KillSwitch | None) -> str:
    if switch is None:
        return "off"
    since = (
        time.strftime(" since %Y-%m-%d %H:%M:%SZ", time.gmtime(switch.at_us / 1e6))
        if switch.at_us
        else ""
    )
    return f"ON{since} by {switch.operator}: {switch.reason} (nothing trades)"


async def unlock(args: argparse.Namespace, config: Config, path: Path) -> int:
    from tradingd.verify import run_unlock

    return await run_unlock(args, config)


async def state_history(args: argparse.Namespace, config: Config, path: Path) -> int:
    async with storage_for(config) as storage:
        records = await history(storage.pool, args.exchange, args.limit)
    if not records:
        print("no state transitions recorded")
    for record in records:
        at = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(record.at_us / 1e6))
        print(
            f"{at}Z  {record.exchange:<10} {record.from_state or '-':>13} -> "
            f"{record.to_state:<13} by {record.operator}: {record.reason}"
        )
    return EX_OK


# -- alerts ---------------------------------------------------------------------------------


async def alert(args: argparse.Namespace, config: Config, path: Path) -> int:
    from tradingd.alerts import AlertsUndelivered, send_alert, unit_failure_text

    text = await unit_failure_text(args.unit) if args.unit else args.message
    async with aiohttp.ClientSession() as http:
        try:
            delivered = await send_alert(config.alerts, secret_store(config), text, http=http)
        except AlertsUndelivered as exc:
            print(f"tradingd: alert not delivered: {exc}", file=sys.stderr)
            return EX_UNAVAILABLE
    if delivered:
        print(f"alert sent to {', '.join(delivered)}")
    else:
        print("no alert channel configured ([alerts]); logged to the journal only")
    return EX_OK


# -- retention ------------------------------------------------------------------------------


async def prune(args: argparse.Namespace, config: Config, path: Path) -> int:
    from tradingd.retention import PruneDeferred, run_prune

    try:
        async with storage_for(config) as storage:
            report = await run_prune(
                storage.pool, config.retention, today=datetime.now(UTC).date(), dry_run=args.dry_run
            )
    except StorageUnavailable as exc:
        logger.critical("storage unavailable: {}", exc)
        return EX_UNAVAILABLE
    except PruneDeferred as exc:
        logger.error("prune deferred: {}", exc)
        return EX_TEMPFAIL
    verb = "would drop" if report.dry_run else "dropped"
    if report.trades_kept_from is None:
        print("public_trades: kept forever (retention.trades_months = 0)")
    elif report.partitions:
        print(
            f"public_trades: keeping {report.trades_kept_from:%Y-%m} onwards; {verb}"
            f" {', '.join(report.partitions)} (about {report.trades_estimate} trades)"
        )
    else:
        print(f"public_trades: keeping {report.trades_kept_from:%Y-%m} onwards; nothing older")
    if report.gaps_closed:
        closed = "would close" if report.dry_run else "closed"
        print(f"open gaps in those months: {closed} {report.gaps_closed} as unfillable")
    verb = "would delete" if report.dry_run else "deleted"
    for name, count, days in (
        ("ticker snapshots", report.tickers, config.retention.tickers_days),
        ("dead letters", report.dead_letters, config.retention.dead_letters_days),
    ):
        if days == 0:
            print(f"{name}: kept forever")
        else:
            print(f"{name}: {verb} {count} older than {days} days")
    return EX_OK


# -- dead letters ---------------------------------------------------------------------------


async def dlq(args: argparse.Namespace, config: Config, path: Path) -> int:
    async with storage_for(config) as storage:
        pool = storage.pool
        if args.dlq_command == "list":
            rows = await pool.fetch(
                "SELECT id, received_at, exchange, source, error, length(payload) AS size"
                " FROM dead_letters WHERE $1::text IS NULL OR exchange = $1"
                " ORDER BY id DESC LIMIT $2",
                args.exchange,
                args.limit,
            )
            if not rows:
                print("no dead letters")
            for r in rows:
                print(
                    f"{r['id']:>8}  {r['received_at']:%Y-%m-%d %H:%M:%S}Z  {r['exchange']:<10}"
                    f" {r['size']:>6} B  {r['source']}: {r['error']}"
                )
            return EX_OK
        if args.dlq_command == "show":
            row = await pool.fetchrow("SELECT * FROM dead_letters WHERE id = $1", args.id)
            if row is None:
                print(f"no dead letter {args.id}", file=sys.stderr)
                return EX_FAILURE
            print(f"id:          {row['id']}")
            print(f"received_at: {row['received_at'].isoformat()}")
            print(f"exchange:    {row['exchange']}")
            print(f"source:      {row['source']}")
            print(f"error:       {row['error']}")
            print("payload:")
            print(bytes(row["payload"]).decode("utf-8", errors="backslashreplace"))
            return EX_OK
        where = (
            "($1::text IS NULL OR exchange = $1) AND ($2::float8 IS NULL"
            " OR received_at < now() - make_interval(secs => $2 * 3600))"
        )
        count = await pool.fetchval(
            f"SELECT count(*) FROM dead_letters WHERE {where}", args.exchange, args.older_than
        )
        if not count:
            print("nothing to purge")
            return EX_OK
        if not args.yes:
            if not sys.stdin.isatty():
                print(f"tradingd: would delete {count} dead letters; add --yes", file=sys.stderr)
                return EX_USAGE
            answer = await asyncio.to_thread(input, f"delete {count} dead letters? [y/N] ")
            if answer.strip().lower() not in ("y", "yes"):
                print("nothing deleted")
                return EX_FAILURE
        deleted = await pool.execute(
            f"DELETE FROM dead_letters WHERE {where}", args.exchange, args.older_than
        )
        print(f"deleted {deleted.split()[-1]} dead letters")
        return EX_OK
