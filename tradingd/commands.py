"""The CLI commands (argument parsing lives in ``tradingd.cli``)."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import aiohttp
import msgspec
from asyncpg import Pool
from loguru import logger
from redis.asyncio import Redis

from tradingd import ordercmds
from tradingd.adapters.registry import create_adapter
from tradingd.config import Config, redacted
from tradingd.cpus import configured_layout, describe_cpus
from tradingd.execution.audit_record import recent_reports
from tradingd.execution.exchange_view import ExchangeView, exchange_views
from tradingd.execution.exchange_view import render as render_exchange_views
from tradingd.exitcodes import (
    EX_CONFIG,
    EX_FAILURE,
    EX_OK,
    EX_TEMPFAIL,
    EX_UNAVAILABLE,
    EX_USAGE,
)
from tradingd.operator_storage import operator_timeout, storage_for
from tradingd.secrets import check_secret_files, secret_store
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
from tradingd.storage import (
    StorageRejected,
    StorageUnavailable,
    connect_redis,
)
from tradingd.storage.migrations import migrate as apply_migrations
from tradingd.storage.migrations import pending_migrations


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

    await check_adapters(config, path)
    check_secret_files(config, path)
    configured_layout(config, path)
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

    await check_adapters(config, path)
    check_secret_files(config, path)
    try:
        return await run_bootstrap(config, config_path=path)
    except StorageUnavailable as exc:
        logger.critical("storage unavailable: {}", exc)
        return EX_UNAVAILABLE


# -- storage and configuration -------------------------------------------------------------


async def migrate(args: argparse.Namespace, config: Config, path: Path) -> int:
    try:
        async with storage_for(config, needs_schema=False) as storage:
            applied = await apply_migrations(storage.pool)
    except StorageUnavailable as exc:
        logger.critical("storage unavailable: {}", exc)
        return EX_UNAVAILABLE
    print("applied: " + ", ".join(applied) if applied else "the schema is up to date")
    return EX_OK


async def check_adapters(config: Config, path: Path) -> None:
    """What each adapter makes of its section (symbol syntax, resolutions): a ConfigError
    before anything starts."""
    async with aiohttp.ClientSession() as http:
        for name in config.exchanges:
            await create_adapter(config, name, http, path).close()


async def config_check(args: argparse.Namespace, config: Config, path: Path) -> int:
    """Validate the file and what each adapter makes of its section; print the result."""
    await check_adapters(config, path)
    check_secret_files(config, path)
    cpus = configured_layout(config, path)
    state_dir, source = config.state_location()
    print(f"# {path}: valid", file=sys.stderr)
    print(f"# state directory: {state_dir} (from {source})", file=sys.stderr)
    if cpus is not None:
        print(
            f"# CPUs: the daemon on {describe_cpus(cpus.daemon)}, "
            f"embedded servers on {describe_cpus(cpus.servers)}",
            file=sys.stderr,
        )
    print(msgspec.json.format(msgspec.json.encode(redacted(config)), indent=2).decode())
    return EX_OK


# -- status ---------------------------------------------------------------------------------


class _DaemonReport(msgspec.Struct):
    """Whether a daemon runs on this storage, from its status snapshot checked against its pid."""

    running: bool
    pid: int | None = None
    status_age_s: float | None = None
    note: str = ""


class _StatusReport(msgspec.Struct):
    config: str
    database: str = "unknown"
    redis: str = "unknown"
    # None: unknown (Redis, which holds the snapshot, could not be read).
    daemon: _DaemonReport | None = None
    states: dict[str, dict[str, str | None]] = {}
    # None: unknown (PostgreSQL could not be read).
    open_gaps: list[dict[str, object]] | None = None
    dead_letters: int | None = None
    kill_switch: str = "unknown: trading counts as stopped"
    running: DaemonStatus | None = None
    executor: ordercmds.ExecutorStatus | None = None
    # Per exchange: reconciliation, orders, positions, day PnL (None: PostgreSQL unread).
    accounts: list[ExchangeView] | None = None


async def status(args: argparse.Namespace, config: Config, path: Path) -> int:
    report = _StatusReport(config=str(path))
    code = EX_OK
    try:
        async with storage_for(config, needs_schema=False) as storage:
            report.redis = "ok" if await storage.redis.ping() else "error"
            await _status_from_redis(report, storage.redis, config)
            report.database = "ok"
            pending = await pending_migrations(storage.pool)
            if pending:
                report.database = f"not migrated ({len(pending)} pending): run `tradingd migrate`"
                code = EX_UNAVAILABLE
            else:
                await _status_from_postgres(report, storage.pool, config)
                report.executor = await ordercmds.executor_status(storage.redis, storage.pool)
                report.accounts = await exchange_views(
                    storage.pool, storage.redis, list(config.enabled_exchanges())
                )
    except StorageUnavailable as exc:
        code = EX_UNAVAILABLE
        if str(exc).startswith("Redis"):
            report.redis = f"unreachable: {exc}"
        else:
            report.database = f"unreachable: {exc}"
            if config.redis.url and report.redis == "unknown":
                await _status_from_redis_alone(report, config)
    _print_status(report, args.json)
    return code


async def _status_from_redis_alone(report: _StatusReport, config: Config) -> None:
    """PostgreSQL is down: Redis (external) can still say what the daemon and the kill
    switch are doing."""
    secret = secret_store(config).load_optional(config.redis.password_secret)
    try:
        client = await connect_redis(
            config.redis.url,
            password=secret.reveal() if secret else None,
            timeout=operator_timeout(config),
        )
    except StorageUnavailable as exc:
        report.redis = f"unreachable: {exc}"
        return
    try:
        report.redis = "ok"
        await _status_from_redis(report, client, config)
    finally:
        await client.aclose()


async def _status_from_redis(report: _StatusReport, redis: Redis, config: Config) -> None:
    try:
        report.kill_switch = describe_kill_switch(await read_kill_switch(redis))
    except StateUnavailable as exc:
        report.kill_switch = f"unknown ({exc}): trading counts as stopped"
    for name in config.enabled_exchanges():
        try:
            state = await read_state(redis, name)
        except StateUnavailable as exc:
            report.states[name] = {"state": None, "note": str(exc)}
            continue
        report.states[name] = {"state": state.value if state else None, "note": None}
    raw = await redis.get(STATUS_KEY)
    report.daemon = _DaemonReport(running=False)
    if raw:
        snapshot = decode_status(raw)
        if _process_alive(snapshot.pid):
            report.running = snapshot
            report.daemon = _DaemonReport(
                running=True, pid=snapshot.pid, status_age_s=round(snapshot.age_seconds(), 1)
            )
        else:
            report.daemon.note = f"pid {snapshot.pid} of its last status no longer runs"


def _process_alive(pid: int) -> bool:
    # The snapshot outlives a daemon killed without its shutdown (it expires on its own).
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


async def _status_from_postgres(report: _StatusReport, pool: Pool, config: Config) -> None:
    for name in config.enabled_exchanges():
        entry = report.states.setdefault(name, {"state": None, "note": None})
        if entry["note"] is not None:
            continue
        latest = await history(pool, name, limit=1)
        entry["note"] = (
            f"{latest[0].reason} ({latest[0].operator})"
            if latest
            else "never bootstrapped: run `tradingd bootstrap`"
        )
    rows = await pool.fetch(
        "SELECT exchange, instrument_name, first_seq, last_seq, detected_at, reason"
        " FROM data_gaps WHERE status = 'open' ORDER BY detected_at LIMIT 100"
    )
    report.open_gaps = [{**dict(r), "detected_at": r["detected_at"].isoformat()} for r in rows]
    report.dead_letters = int(await pool.fetchval("SELECT count(*) FROM dead_letters"))


def _describe_daemon(daemon: _DaemonReport | None) -> str:
    if daemon is None:
        return "unknown (Redis, which holds its status, could not be read)"
    if daemon.running:
        return f"running (pid {daemon.pid}, status {daemon.status_age_s:.0f} s old)"
    return "not running" + (f" ({daemon.note})" if daemon.note else "")


def _print_status(report: _StatusReport, as_json: bool) -> None:
    if as_json:
        print(msgspec.json.format(msgspec.json.encode(report), indent=2).decode())
        return
    print(f"config:   {report.config}")
    print(f"daemon:   {_describe_daemon(report.daemon)}")
    print(f"storage:  database {report.database}")
    print(f"          redis {report.redis}")
    print(f"kill switch: {report.kill_switch}")
    print("exchanges:" if report.states else "exchanges: unknown")
    running = {e.name: e for e in report.running.exchanges} if report.running else {}
    for name, st in report.states.items():
        line = f"  {name:<12} {st['state'] or 'NEW':<14} {st['note'] or ''}".rstrip()
        live = running.get(name)
        if live:
            last_frame = (
                "never" if live.seconds_since_frame < 0 else f"{live.seconds_since_frame:.1f} s ago"
            )
            line += (
                f"\n  {'':<12} ws {live.connected}/{live.connections} connected,"
                f" {live.trades} trades, last frame {last_frame}"
            )
            if live.last_error:
                line += f"\n  {'':<12} last error: {live.last_error}"
            if live.repair.get("detected"):
                r = live.repair
                line += (
                    f"\n  {'':<12} gaps: {r['detected']} detected,"
                    f" {r['repaired']} repaired, {r['unfillable']} unfillable;"
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
    if report.open_gaps is None:
        print("open gaps: unknown (PostgreSQL could not be read)")
    else:
        print(f"open gaps: {len(report.open_gaps)}")
        for gap in report.open_gaps[:20]:
            print(
                f"  {gap['exchange']} {gap['instrument_name']}"
                f" {gap['first_seq']}..{gap['last_seq']}"
                f" since {gap['detected_at']} ({gap['reason']})"
            )
    if report.dead_letters is None:
        print("dead letters: unknown (PostgreSQL could not be read)")
    else:
        print(
            f"dead letters: {report.dead_letters}"
            + (" (tradingd dlq list)" if report.dead_letters else "")
        )
    if report.executor is not None:
        ordercmds.print_executor_status(report.executor)
    if report.accounts is not None:
        print("\n".join(render_exchange_views(report.accounts)))


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
    if getattr(args, "flatten", False) and args.action != "on":
        print("tradingd: error: --flatten goes with kill-switch on", file=sys.stderr)
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
                    flatten=getattr(args, "flatten", False),
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
    """State transitions and kill-switch changes, newest first."""
    async with storage_for(config) as storage:
        records = await history(storage.pool, args.exchange, args.limit)
        switches = await storage.pool.fetch(
            "SELECT (extract(epoch FROM at) * 1e6)::bigint AS at_us, kind, detail::text AS detail"
            " FROM system_events WHERE kind IN ('kill_switch_on', 'kill_switch_off')"
            " ORDER BY at DESC LIMIT $1",
            args.limit,
        )
        reconciliations = await recent_reports(storage.pool, args.exchange, args.limit)
    lines: list[tuple[int, str]] = [
        (
            record.at_us,
            f"{record.exchange:<10} {record.from_state or '-':>13} -> "
            f"{record.to_state:<13} by {record.operator}: {record.reason}",
        )
        for record in records
    ]
    for row in switches:
        detail = msgspec.json.decode(row["detail"])
        action = "ON" if row["kind"] == "kill_switch_on" else "off"
        lines.append(
            (
                row["at_us"],
                f"{'all':<10} {'kill switch':>13} -> {action:<13}"
                f" by {detail.get('operator', '?')}: {detail.get('reason', '')}",
            )
        )
    for rec in reconciliations:
        lines.append(
            (
                rec.at_us,
                f"{rec.exchange:<10} {'reconcile':>13} -> {rec.outcome.value.upper():<13}"
                f" ({rec.trigger.value}): {rec.summary}",
            )
        )
    if not lines:
        print("no state transitions recorded")
    for at_us, text in sorted(lines, key=lambda line: line[0], reverse=True)[: args.limit]:
        at = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(at_us / 1e6))
        print(f"{at}Z  {text}")
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
        ("reconciliation reports", report.reconciliations, config.retention.reconciliations_days),
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
