"""``tradingd backup`` and ``tradingd restore``: the whole database (order ledger, market data,
state records, schema version) with ``pg_dump``/``pg_restore``, embedded or external.

A backup is one ``pg_dump --format=custom`` archive: a consistent snapshot taken while the
daemon keeps running, written under a temporary name and renamed when complete (mode 0600).

A restore replaces the database's ``public`` schema with the archive's content in ONE
transaction (``pg_restore`` renders the archive as SQL, ``psql --single-transaction`` runs it
after dropping the schema): it succeeds whole or changes nothing. It is refused while the daemon
runs or any other session uses the database. Afterwards the daemon is simply started: it applies
newer migrations, reconciles every exchange (RECONCILING, then HEALTHY or LOCKED) and repairs the
trades missed since the backup from the venues' history.

The client programs must be at least the server's major version: pgserver's own (beside its
``postgres``, always right for the embedded server) are preferred, then those on ``PATH``.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import shutil
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit, urlunsplit

import asyncpg

from tradingd.config import Config
from tradingd.exitcodes import EX_FAILURE, EX_OK, EX_TEMPFAIL, EX_UNAVAILABLE, EX_USAGE
from tradingd.secrets import secret_store
from tradingd.storage import Storage, StorageUnavailable
from tradingd.storage.embedded import EmbeddedStorageError, postgres_bin_dir

ARCHIVE_MAGIC = b"PGDMP"
_VERSION = re.compile(rb"\(PostgreSQL\)\s+(\d+)")
# What the summary counts (the tables an operator cares about after a restore).
SUMMARY_TABLES = ("public_trades", "ohlc", "instruments", "data_gaps", "state_transitions")


class BackupError(Exception):
    """A backup or restore that failed; the message is for the operator."""


def add_arguments(commands: Any) -> None:
    backup = commands.add_parser(
        "backup",
        help="pg_dump the whole database (ledger, market data, state records) into one file",
    )
    backup.add_argument(
        "--output",
        metavar="FILE",
        help="where to write it (default: <state_dir>/backups/tradingd-<UTC time>.dump)",
    )
    restore = commands.add_parser(
        "restore",
        help="replace the database with a backup (refused while the daemon runs)",
    )
    restore.add_argument("file", metavar="FILE", help="a file written by `tradingd backup`")
    restore.add_argument("--yes", action="store_true", help="do not ask for confirmation")


# -- the client programs ----------------------------------------------------------------------


def _candidates(name: str) -> list[Path]:
    found: list[Path] = []
    try:
        bundled = postgres_bin_dir() / name
        if bundled.is_file():
            found.append(bundled)
    except EmbeddedStorageError:
        pass  # no pgserver installed: external servers only
    on_path = shutil.which(name)
    if on_path:
        found.append(Path(on_path))
    return found


async def _major_version(program: Path) -> int | None:
    process = await asyncio.create_subprocess_exec(
        str(program),
        "--version",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL,
        stdin=asyncio.subprocess.DEVNULL,
    )
    out, _ = await process.communicate()
    match = _VERSION.search(out)
    return int(match[1]) if match else None


async def find_client(name: str, server_major: int) -> Path:
    """The first ``name`` program (pgserver's, then ``PATH``'s) of at least the server's major."""
    seen: list[str] = []
    for program in _candidates(name):
        major = await _major_version(program)
        if major is not None and major >= server_major:
            return program
        seen.append(f"{program} ({major or 'unknown version'})")
    raise BackupError(
        f"no {name} of PostgreSQL {server_major} or newer"
        + (f" (found {', '.join(seen)})" if seen else "")
        + f": install the PostgreSQL {server_major} client programs"
        " (e.g. apt install postgresql-client), or tradingd[embedded] which bundles them"
    )


async def server_major(pool: asyncpg.Pool) -> int:
    number: int = await pool.fetchval("SELECT current_setting('server_version_num')::int")
    return number // 10000


def _client_connection(config: Config, url: str) -> tuple[str, dict[str, str]]:
    """The URL for ``--dbname`` and the environment of a client program: a password (in the
    URL or a secret) travels in ``PGPASSWORD``, never on a command line other users can see."""
    environment = dict(os.environ)
    parts = urlsplit(url)
    if parts.password is not None:
        environment["PGPASSWORD"] = unquote(parts.password)
        host = parts.netloc.rsplit("@", 1)[1]
        user = parts.netloc.rsplit("@", 1)[0].split(":", 1)[0]
        url = urlunsplit(parts._replace(netloc=f"{user}@{host}"))
    if config.database.url:
        secret = secret_store(config).load_optional(config.database.password_secret)
        if secret is not None:
            environment["PGPASSWORD"] = secret.reveal()
    return url, environment


async def _run(
    program: Path, *args: str, env: dict[str, str], hidden: tuple[str, ...] = ()
) -> None:
    process = await asyncio.create_subprocess_exec(
        str(program),
        *args,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
        env=env,
    )
    _, err = await process.communicate()
    if process.returncode != 0:
        raise BackupError(f"{program.name} failed ({process.returncode}): {_tail(err, hidden)}")


def _tail(err: bytes, hidden: tuple[str, ...]) -> str:
    text = err.decode(errors="replace").strip()[-1500:] or "no message"
    for secret in hidden:
        text = text.replace(secret, "***")
    return text


def _hidden(env: dict[str, str]) -> tuple[str, ...]:
    return tuple(s for s in (env.get("PGPASSWORD"),) if s)


async def table_counts(pool: asyncpg.Pool) -> dict[str, int]:
    counts: dict[str, int] = {}
    for table in SUMMARY_TABLES:
        if await pool.fetchval("SELECT to_regclass($1) IS NOT NULL", table):
            counts[table] = await pool.fetchval(f"SELECT count(*) FROM {table}")
    return counts


def _describe(counts: dict[str, int]) -> str:
    return ", ".join(f"{table} {count}" for table, count in counts.items()) or "empty"


# -- backup -----------------------------------------------------------------------------------


def default_backup_path(config: Config, now: datetime) -> Path:
    return config.state_path() / "backups" / f"tradingd-{now:%Y%m%dT%H%M%SZ}.dump"


async def write_backup(storage: Storage, config: Config, output: Path) -> dict[str, int]:
    """Dump the database into ``output`` (complete or absent); the row counts it holds."""
    url, env = _client_connection(config, storage.database_url)
    pg_dump = await find_client("pg_dump", await server_major(storage.pool))
    output.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    partial = output.with_name(output.name + ".partial")
    # pg_dump's snapshot starts when it connects; counting inside the same snapshot is not
    # possible from here, so the counts are read first (the dump holds at least as many).
    counts = await table_counts(storage.pool)
    try:
        await _run(
            pg_dump,
            "--format=custom",
            "--no-owner",
            "--no-privileges",
            f"--file={partial}",
            f"--dbname={url}",
            env=env,
            hidden=_hidden(env),
        )
        partial.chmod(0o600)
        partial.replace(output)
    finally:
        partial.unlink(missing_ok=True)
    return counts


async def backup_command(args: argparse.Namespace, config: Config, path: Path) -> int:
    from tradingd.operator_storage import storage_for

    output = (
        _absolute(args.output) if args.output else default_backup_path(config, datetime.now(UTC))
    )
    try:
        async with storage_for(config) as storage:
            counts = await write_backup(storage, config, output)
    except StorageUnavailable as exc:
        print(f"tradingd: backup: storage unavailable: {exc}", file=sys.stderr)
        return EX_UNAVAILABLE
    except (BackupError, OSError) as exc:
        print(f"tradingd: backup: {exc}", file=sys.stderr)
        return EX_FAILURE
    size = output.stat().st_size
    print(f"backup written: {output} ({size / 1e6:.1f} MB; {_describe(counts)})")
    print(f"restore it with: tradingd restore {output}")
    return EX_OK


# -- restore ----------------------------------------------------------------------------------


async def other_sessions(pool: asyncpg.Pool) -> list[str]:
    """Other sessions on the database (the daemon, a psql, ...), one description each."""
    rows = await pool.fetch(
        "SELECT pid, application_name, coalesce(host(client_addr), 'local') AS client"
        " FROM pg_stat_activity WHERE datname = current_database()"
        " AND pid <> pg_backend_pid() AND backend_type = 'client backend'"
    )
    return [f"pid {r['pid']} {r['application_name'] or '?'} from {r['client']}" for r in rows]


async def restore_archive(storage: Storage, config: Config, archive: Path) -> dict[str, int]:
    """Replace the ``public`` schema with ``archive``'s content, in one transaction."""
    if storage.embedded is not None and storage.embedded.attached:
        raise DaemonRunning("tradingd is running on these embedded servers")
    sessions = await other_sessions(storage.pool)
    if sessions:
        raise DaemonRunning(
            f"{len(sessions)} other session(s) use the database ({'; '.join(sessions[:5])})"
        )
    major = await server_major(storage.pool)
    pg_restore = await find_client("pg_restore", major)
    psql = await find_client("psql", major)
    url, env = _client_connection(config, storage.database_url)
    hidden = _hidden(env)
    renderer = await asyncio.create_subprocess_exec(
        str(pg_restore),
        "--no-owner",
        "--no-privileges",
        "--file=-",
        str(archive),
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=env,
    )
    runner = await asyncio.create_subprocess_exec(
        str(psql),
        "--no-psqlrc",
        "--quiet",
        "--single-transaction",
        "--set=ON_ERROR_STOP=1",
        f"--dbname={url}",
        "--command=DROP SCHEMA public CASCADE",
        "--command=CREATE SCHEMA public",
        "--file=-",
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
        env=env,
    )
    render_err, run_err = await asyncio.gather(_pump(renderer, runner), _read_all(runner.stderr))
    if renderer.returncode != 0:
        raise BackupError(
            f"pg_restore could not read {archive} ({renderer.returncode}):"
            f" {_tail(render_err, hidden)}; the database is unchanged"
        )
    if runner.returncode != 0:
        raise BackupError(
            f"restoring {archive} failed ({runner.returncode}): {_tail(run_err, hidden)};"
            " the database is unchanged"
        )
    # Plans and cached statements of the old tables are gone with them.
    storage.pool.expire_connections()
    return await table_counts(storage.pool)


class DaemonRunning(BackupError):
    pass


async def _read_all(stream: asyncio.StreamReader | None) -> bytes:
    return await stream.read() if stream is not None else b""


async def _pump(renderer: asyncio.subprocess.Process, runner: asyncio.subprocess.Process) -> bytes:
    """Feed pg_restore's SQL to psql. psql commits at the end of its input, so it gets the end
    only when pg_restore succeeded: otherwise it is killed first and the transaction rolls back.
    Returns pg_restore's stderr."""
    assert renderer.stdout is not None and runner.stdin is not None
    errors = asyncio.ensure_future(_read_all(renderer.stderr))
    try:
        while chunk := await renderer.stdout.read(1 << 20):
            runner.stdin.write(chunk)
            await runner.stdin.drain()
    except (BrokenPipeError, ConnectionResetError):
        renderer.kill()  # psql stopped (an error): its transaction is already rolled back
    finally:
        complete = await renderer.wait() == 0
        if not complete and runner.returncode is None:
            runner.kill()
        else:
            runner.stdin.close()
        await runner.wait()
    return await errors


def _absolute(path: str) -> Path:
    return Path(path).absolute()


def _looks_like_archive(archive: Path) -> bool:
    try:
        with archive.open("rb") as handle:
            return handle.read(len(ARCHIVE_MAGIC)) == ARCHIVE_MAGIC
    except OSError:
        return False


async def restore_command(args: argparse.Namespace, config: Config, path: Path) -> int:
    from tradingd.operator_storage import storage_for

    archive = _absolute(args.file)
    if not await asyncio.to_thread(_looks_like_archive, archive):
        print(
            f"tradingd: restore: {archive} is not a backup written by `tradingd backup`"
            " (a pg_dump custom-format archive)",
            file=sys.stderr,
        )
        return EX_USAGE
    if not args.yes:
        if not sys.stdin.isatty():
            print(
                "tradingd: restore replaces everything in the database with the backup; add --yes",
                file=sys.stderr,
            )
            return EX_USAGE
        answer = await asyncio.to_thread(
            input, f"replace everything in the database with {archive}? [y/N] "
        )
        if answer.strip().lower() not in ("y", "yes"):
            print("nothing restored")
            return EX_FAILURE
    try:
        async with storage_for(config) as storage:
            counts = await restore_archive(storage, config, archive)
    except DaemonRunning as exc:
        print(
            f"tradingd: restore refused: {exc}. Stop the daemon first"
            " (systemctl stop tradingd) and close other sessions, then run it again",
            file=sys.stderr,
        )
        return EX_TEMPFAIL
    except StorageUnavailable as exc:
        print(f"tradingd: restore: storage unavailable: {exc}", file=sys.stderr)
        return EX_UNAVAILABLE
    except (BackupError, OSError) as exc:
        print(f"tradingd: restore: {exc}", file=sys.stderr)
        return EX_FAILURE
    print(f"restored {archive}: {_describe(counts)}")
    print(
        "next: start the daemon (systemctl start tradingd); it migrates, reconciles every"
        " exchange and repairs the trades missed since the backup; check `tradingd status`"
    )
    return EX_OK
