"""``tradingd backfill trades``: load a symbol's trade history from the Binance public data files.

For each daily or monthly ``trades`` zip covering the requested dates (planned by the pure
``tradingd.adapters.binance.public_data``): fetch its ``.CHECKSUM``, download the zip into the
state directory while hashing it, refuse it on a mismatch (downloaded again once, then an error
naming the file; nothing from a refused file is written), then write its rows in batches through
the live trades' idempotent path (``insert_trades``: a duplicate sends its batch to ``INSERT ...
ON CONFLICT DO NOTHING``), so overlaps with captured or earlier-loaded trades are harmless.

Progress is recorded per file in ``trade_backfill_files`` in the same transaction as each batch:
a run killed at any point resumes with the files already loaded skipped and the file in progress
continued after its last committed trade id. Afterwards the hole between the last backfilled
trade and the next stored one (the live capture) is recorded in ``data_gaps`` as an open gap:
the daemon's gap repairer fills it from the venue's REST history. Open gaps the files filled are
marked repaired.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import os
import re
import sys
import time
import zipfile
from collections.abc import Callable, Coroutine, Iterator
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import IO, Any

import aiohttp
import asyncpg
import msgspec
from loguru import logger

from tradingd.adapters.binance.public_data import (
    TradeFileError,
    TradesFile,
    daily_files,
    parse_checksum,
    parse_trade_lines,
    plan_trade_files,
)
from tradingd.config import Config
from tradingd.exitcodes import EX_DATAERR, EX_FAILURE, EX_OK, EX_UNAVAILABLE, EX_USAGE
from tradingd.model import Trade
from tradingd.progress import ProgressReporter, Task
from tradingd.sdnotify import Notifier
from tradingd.sequencing import BACKFILL_EDGE, subtract_ranges
from tradingd.storage import StorageUnavailable
from tradingd.storage.writer import TradePartitions, insert_trades

# The repository serves Binance spot; this is the adapter whose symbols and trade ids it uses.
REPOSITORY_ADAPTER = "binance"
FETCH_ATTEMPTS = 3
FETCH_BACKOFF = 1.0
CHUNK = 1 << 20
# A monthly file is gigabytes: no bound on the whole transfer, only on a stalled connection.
DOWNLOAD_TIMEOUT = aiohttp.ClientTimeout(total=None, sock_connect=30, sock_read=120)
HOUR_US = 3_600_000_000
_SYMBOL = re.compile(r"^[A-Z0-9]{2,30}$")


class BackfillError(Exception):
    """The backfill cannot go on; the message is for the operator (it names the file)."""

    exit_code = EX_FAILURE


class RepositoryUnavailable(BackfillError):
    exit_code = EX_UNAVAILABLE


class ChecksumMismatch(BackfillError):
    exit_code = EX_DATAERR


class BadTradeFile(BackfillError):
    exit_code = EX_DATAERR


@dataclass(frozen=True)
class BackfillRequest:
    exchange: str
    symbol: str
    first: date
    last: date


class BackfillReport(msgspec.Struct):
    files: int = 0
    files_loaded: int = 0
    files_already_done: int = 0
    absent: list[str] = msgspec.field(default_factory=list)
    rows_read: int = 0
    rows_new: int = 0
    first_seq: int | None = None
    last_seq: int | None = None
    edge_gap: tuple[int, int] | None = None
    gaps_filled: int = 0


@dataclass
class _Progress:
    """Where one planned file's task stands, in hours of trades from the task's start."""

    task: Task
    start_us: int
    hours: int = 0


@dataclass
class TradesBackfill:
    pool: asyncpg.Pool
    http: aiohttp.ClientSession
    base_url: str
    work_dir: Path
    batch_size: int
    progress: ProgressReporter
    clock_us: Callable[[], int] = lambda: time.time_ns() // 1000
    report: BackfillReport = field(default_factory=BackfillReport)
    _partitions: TradePartitions = field(default_factory=TradePartitions)

    async def run(self, request: BackfillRequest, *, today: date) -> BackfillReport:
        """Load ``request``; refused while another run loads the same symbol (they would race
        on its progress rows)."""
        key = f"tradingd.backfill_trades:{request.exchange}:{request.symbol}"
        async with self.pool.acquire() as conn:
            if not await conn.fetchval("SELECT pg_try_advisory_lock(hashtext($1))", key):
                raise BackfillError(
                    f"another `tradingd backfill trades` is loading {request.exchange}"
                    f" {request.symbol}; let it finish or stop it, then run this again"
                )
            try:
                return await self._run(request, today=today)
            finally:
                await conn.execute("SELECT pg_advisory_unlock(hashtext($1))", key)

    async def _run(self, request: BackfillRequest, *, today: date) -> BackfillReport:
        plan = plan_trade_files(request.symbol, request.first, request.last, today=today)
        self.report.files = len(plan)
        stored = await self._recorded(request)
        tasks = [(f, self.progress.add(f.name, f.hours)) for f in plan]
        self.work_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        for planned, task in tasks:
            tracker = _Progress(task, planned.start_us)
            row = stored.get(planned.name)
            if row is not None and row["status"] == "done":
                self.report.files_already_done += 1
                self.progress.finish(task)
                continue
            checksum = await self._checksum(planned)
            if checksum is None and planned.monthly:
                # Monthly files appear some days into the next month: the days instead.
                days = daily_files(planned.symbol, planned.first_day, planned.last_day)
                logger.info("{} not published; loading its {} daily files", planned.name, len(days))
                for day in days:
                    day_row = stored.get(day.name)
                    if day_row is not None and day_row["status"] == "done":
                        continue
                    await self._load(request, day, await self._checksum(day), day_row, tracker)
            else:
                await self._load(request, planned, checksum, row, tracker)
            self.progress.finish(task)
        await self._hand_over_edges(request, plan)
        return self.report

    # -- one file ---------------------------------------------------------------------------

    async def _load(
        self,
        request: BackfillRequest,
        file: TradesFile,
        checksum: str | None,
        row: asyncpg.Record | None,
        tracker: _Progress,
    ) -> None:
        if checksum is None:
            logger.warning(
                "{}: not in the repository (no trades that day, or not yet published)", file.name
            )
            self.report.absent.append(file.name)
            await self._record_absent(request, file)
            return
        archive = await self._download_verified(file, checksum, tracker)
        try:
            resume_after = None
            if row is not None and row["status"] == "loading" and row["sha256"] == checksum:
                resume_after = row["loaded_through_seq"]
            await self._start_file(request, file, checksum, keep=resume_after is not None)
            await self._write_rows(request, file, archive, resume_after, tracker)
            await self.pool.execute(
                "UPDATE trade_backfill_files SET status = 'done', updated_at = now()"
                " WHERE exchange = $1 AND instrument_name = $2 AND file_name = $3",
                request.exchange,
                request.symbol,
                file.name,
            )
            self.report.files_loaded += 1
        finally:
            archive.unlink(missing_ok=True)

    async def _write_rows(
        self,
        request: BackfillRequest,
        file: TradesFile,
        archive: Path,
        resume_after: int | None,
        tracker: _Progress,
    ) -> None:
        received_us = self.clock_us()
        with _csv_lines(archive, file) as lines:
            trades = parse_trade_lines(
                lines, file, exchange=request.exchange, received_us=received_us
            )
            while True:
                try:
                    batch = _next_batch(trades, self.batch_size, resume_after)
                except TradeFileError as exc:
                    raise BadTradeFile(f"{exc}; the rows before it are stored") from None
                if not batch:
                    return
                await self._write_batch(request, file, batch)
                self._advance(tracker, batch[-1].trade_us, file)

    async def _write_batch(
        self, request: BackfillRequest, file: TradesFile, batch: list[Trade]
    ) -> None:
        first, last = batch[0].trade_seq, batch[-1].trade_seq
        async with self.pool.acquire() as conn:
            await self._partitions.ensure(conn, batch)
            async with conn.transaction():
                new = await insert_trades(conn, batch)
                await conn.execute(
                    "UPDATE trade_backfill_files SET rows_read = rows_read + $4,"
                    " rows_new = rows_new + $5, first_seq = coalesce(first_seq, $6),"
                    " loaded_through_seq = $7, updated_at = now()"
                    " WHERE exchange = $1 AND instrument_name = $2 AND file_name = $3",
                    request.exchange,
                    request.symbol,
                    file.name,
                    len(batch),
                    new,
                    first,
                    last,
                )
        report = self.report
        report.rows_read += len(batch)
        report.rows_new += new
        report.first_seq = first if report.first_seq is None else min(report.first_seq, first)
        report.last_seq = last if report.last_seq is None else max(report.last_seq, last)

    def _advance(self, tracker: _Progress, trade_us: int, file: TradesFile) -> None:
        hours = min(tracker.task.total, max(0, (trade_us - tracker.start_us) // HOUR_US))
        self.progress.advance(tracker.task, hours - tracker.hours, current=file.name)
        tracker.hours = max(tracker.hours, hours)

    # -- the repository ---------------------------------------------------------------------

    def _url(self, path: str) -> str:
        return f"{self.base_url.rstrip('/')}/{path}"

    async def _checksum(self, file: TradesFile) -> str | None:
        """The published sha256 of ``file``, or None when the repository has no such file."""
        body = await self._fetch(file.checksum_path)
        if body is None:
            return None
        try:
            return parse_checksum(body, file.name)
        except ValueError as exc:
            raise BadTradeFile(str(exc)) from None

    async def _fetch(self, path: str) -> bytes | None:
        url = self._url(path)
        for attempt in range(1, FETCH_ATTEMPTS + 1):
            try:
                async with self.http.get(url) as response:
                    if response.status == 404:
                        return None
                    if response.status == 200:
                        return await response.read()
                    problem = f"HTTP {response.status}"
            except (aiohttp.ClientError, TimeoutError) as exc:
                problem = repr(exc)
            if attempt == FETCH_ATTEMPTS:
                raise RepositoryUnavailable(f"{url}: {problem} ({attempt} attempts)")
            logger.warning("{}: {}; retrying", url, problem)
            await asyncio.sleep(FETCH_BACKOFF * 2 ** (attempt - 1))
        raise AssertionError("unreachable")

    async def _download_verified(self, file: TradesFile, checksum: str, tracker: _Progress) -> Path:
        """The zip in the work directory with the published sha256; one retry on a mismatch."""
        target = self.work_dir / file.name
        for attempt in (1, 2):
            digest = await self._download(file, target, tracker)
            if digest == checksum:
                return target
            target.unlink(missing_ok=True)
            if attempt == 1:
                logger.warning(
                    "{}: sha256 {} does not match its .CHECKSUM {}; refused, downloading again",
                    file.name,
                    digest,
                    checksum,
                )
        raise ChecksumMismatch(
            f"{file.name}: downloaded twice and its sha256 ({digest}) does not match the"
            f" published .CHECKSUM ({checksum}); refused, nothing from it was written."
            " Run the same command again later to resume"
        )

    async def _download(self, file: TradesFile, target: Path, tracker: _Progress) -> str:
        url = self._url(file.path)
        for attempt in range(1, FETCH_ATTEMPTS + 1):
            try:
                return await self._stream_to(url, target, file.name, tracker)
            except (aiohttp.ClientError, TimeoutError, _HttpStatus) as exc:
                if attempt == FETCH_ATTEMPTS:
                    raise RepositoryUnavailable(f"{url}: {exc} ({attempt} attempts)") from None
                logger.warning("{}: {!r}; retrying", url, exc)
                await asyncio.sleep(FETCH_BACKOFF * 2 ** (attempt - 1))
        raise AssertionError("unreachable")

    async def _stream_to(self, url: str, target: Path, name: str, tracker: _Progress) -> str:
        digest = hashlib.sha256()
        async with self.http.get(url) as response:
            if response.status != 200:
                raise _HttpStatus(f"HTTP {response.status}")
            size = response.content_length or 0
            received = 0
            sink = await asyncio.to_thread(_open_private, target)
            try:
                async for chunk in response.content.iter_chunked(CHUNK):
                    digest.update(chunk)
                    await asyncio.to_thread(sink.write, chunk)
                    received += len(chunk)
                    self.progress.advance(
                        tracker.task, 0, current=f"{name} {_megabytes(received, size)}"
                    )
            finally:
                await asyncio.to_thread(sink.close)
        return digest.hexdigest()

    # -- progress rows ----------------------------------------------------------------------

    async def _recorded(self, request: BackfillRequest) -> dict[str, asyncpg.Record]:
        rows = await self.pool.fetch(
            "SELECT file_name, status, sha256, loaded_through_seq FROM trade_backfill_files"
            " WHERE exchange = $1 AND instrument_name = $2",
            request.exchange,
            request.symbol,
        )
        return {row["file_name"]: row for row in rows}

    async def _start_file(
        self, request: BackfillRequest, file: TradesFile, checksum: str, *, keep: bool
    ) -> None:
        """Mark ``file`` loading; ``keep`` its progress (same bytes as before) or start over."""
        await self.pool.execute(
            "INSERT INTO trade_backfill_files AS f (exchange, instrument_name, file_name,"
            " first_day, last_day, status, sha256) VALUES ($1, $2, $3, $4, $5, 'loading', $6)"
            " ON CONFLICT (exchange, instrument_name, file_name) DO UPDATE SET"
            " status = 'loading', sha256 = EXCLUDED.sha256, updated_at = now(),"
            " rows_read = CASE WHEN $7 THEN f.rows_read ELSE 0 END,"
            " rows_new = CASE WHEN $7 THEN f.rows_new ELSE 0 END,"
            " first_seq = CASE WHEN $7 THEN f.first_seq END,"
            " loaded_through_seq = CASE WHEN $7 THEN f.loaded_through_seq END",
            request.exchange,
            request.symbol,
            file.name,
            file.first_day,
            file.last_day,
            checksum,
            keep,
        )

    async def _record_absent(self, request: BackfillRequest, file: TradesFile) -> None:
        await self.pool.execute(
            "INSERT INTO trade_backfill_files (exchange, instrument_name, file_name, first_day,"
            " last_day, status) VALUES ($1, $2, $3, $4, $5, 'absent')"
            " ON CONFLICT (exchange, instrument_name, file_name) DO UPDATE SET"
            " status = 'absent', updated_at = now()",
            request.exchange,
            request.symbol,
            file.name,
            file.first_day,
            file.last_day,
        )

    # -- the edge ---------------------------------------------------------------------------

    async def _hand_over_edges(self, request: BackfillRequest, plan: list[TradesFile]) -> None:
        """Record the hole after the backfilled range as an open gap; close gaps it filled."""
        names = [f.name for f in plan]
        for f in plan:
            if f.monthly:
                names += [d.name for d in daily_files(f.symbol, f.first_day, f.last_day)]
        span = await self.pool.fetchrow(
            "SELECT min(first_seq) AS first_seq, max(loaded_through_seq) AS last_seq"
            " FROM trade_backfill_files WHERE exchange = $1 AND instrument_name = $2"
            " AND status = 'done' AND file_name = ANY($3::text[])",
            request.exchange,
            request.symbol,
            names,
        )
        if span is None or span["last_seq"] is None:
            return
        first, last = span["first_seq"], span["last_seq"]
        async with self.pool.acquire() as conn, conn.transaction():
            self.report.gaps_filled = await _close_filled_gaps(conn, request, first, last)
            following = await conn.fetchval(
                "SELECT min(trade_seq) FROM public_trades WHERE exchange = $1"
                " AND instrument_name = $2 AND trade_seq > $3",
                request.exchange,
                request.symbol,
                last,
            )
            if following is None or following == last + 1:
                return
            known = await conn.fetch(
                "SELECT first_seq, last_seq FROM data_gaps WHERE exchange = $1"
                " AND instrument_name = $2 AND status <> 'repaired'",
                request.exchange,
                request.symbol,
            )
            holes = subtract_ranges(
                last + 1, following - 1, [(r["first_seq"], r["last_seq"]) for r in known]
            )
            for low, high in holes:
                await conn.execute(
                    "INSERT INTO data_gaps (exchange, instrument_name, first_seq, last_seq,"
                    " reason) VALUES ($1, $2, $3, $4, $5)",
                    request.exchange,
                    request.symbol,
                    low,
                    high,
                    BACKFILL_EDGE,
                )
            self.report.edge_gap = (last + 1, following - 1)


async def _close_filled_gaps(
    conn: asyncpg.Connection, request: BackfillRequest, first: int, last: int
) -> int:
    rows = await conn.fetch(
        "SELECT id, first_seq, last_seq FROM data_gaps WHERE exchange = $1"
        " AND instrument_name = $2 AND status = 'open' AND first_seq >= $3 AND last_seq <= $4",
        request.exchange,
        request.symbol,
        first,
        last,
    )
    filled = 0
    for row in rows:
        stored = await conn.fetchval(
            "SELECT count(*) FROM public_trades WHERE exchange = $1 AND instrument_name = $2"
            " AND trade_seq BETWEEN $3 AND $4",
            request.exchange,
            request.symbol,
            row["first_seq"],
            row["last_seq"],
        )
        if stored >= row["last_seq"] - row["first_seq"] + 1:
            await conn.execute(
                "UPDATE data_gaps SET status = 'repaired', repaired_at = now(),"
                " reason = reason || ' / filled by tradingd backfill trades' WHERE id = $1",
                row["id"],
            )
            filled += 1
    return filled


class _HttpStatus(Exception):
    pass


def _open_private(path: Path) -> IO[bytes]:
    return os.fdopen(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "wb")


def _megabytes(received: int, size: int) -> str:
    if size:
        return f"{received / 1e6:.1f}/{size / 1e6:.1f} MB"
    return f"{received / 1e6:.1f} MB"


class _csv_lines:
    """The lines of the one CSV inside a verified zip."""

    def __init__(self, archive: Path, file: TradesFile) -> None:
        self._archive = archive
        self._file = file
        self._zip: zipfile.ZipFile | None = None
        self._member: IO[bytes] | None = None

    def __enter__(self) -> Iterator[bytes]:
        try:
            self._zip = zipfile.ZipFile(self._archive)
            members = [i for i in self._zip.infolist() if not i.is_dir()]
            if len(members) != 1:
                raise BadTradeFile(
                    f"{self._file.name}: expected one CSV inside, found {len(members)} entries"
                )
            self._member = self._zip.open(members[0])
        except zipfile.BadZipFile as exc:
            raise BadTradeFile(f"{self._file.name}: not a readable zip ({exc})") from None
        return iter(self._member)

    def __exit__(self, *exc: object) -> None:
        if self._member is not None:
            self._member.close()
        if self._zip is not None:
            self._zip.close()


def _next_batch(trades: Iterator[Trade], size: int, after: int | None) -> list[Trade]:
    batch: list[Trade] = []
    for trade in trades:
        if after is not None and trade.trade_seq <= after:
            continue
        batch.append(trade)
        if len(batch) >= size:
            break
    return batch


# -- the command ------------------------------------------------------------------------------


def parse_day(text: str) -> date:
    """An argparse type: YYYY-MM-DD."""
    try:
        return date.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a date YYYY-MM-DD, found {text!r}") from None


def add_arguments(commands: Any) -> None:
    """``tradingd backfill trades ...`` (the parser lives in ``tradingd.cli``)."""
    backfill = commands.add_parser(
        "backfill", help="load history from the venue's public data files"
    )
    kinds = backfill.add_subparsers(dest="backfill_kind", metavar="KIND", required=True)
    trades = kinds.add_parser(
        "trades",
        help="trade history from the Binance public data repository ([backfill] "
        "trades_base_url): checksum-verified, resumable, idempotent",
    )
    trades.add_argument("--exchange", metavar="NAME", required=True)
    trades.add_argument("--symbol", metavar="SYM", required=True)
    trades.add_argument("--from", dest="first", metavar="DATE", type=parse_day, required=True)
    trades.add_argument(
        "--to",
        dest="last",
        metavar="DATE",
        type=parse_day,
        help="last day, inclusive (default: yesterday, UTC; today's file is not published yet)",
    )


def build_request(args: argparse.Namespace, config: Config, today: date) -> BackfillRequest:
    """The request the arguments describe; ``ValueError`` says what is wrong with them."""
    exchange = args.exchange
    if exchange not in config.exchanges:
        raise ValueError(
            f"unknown exchange {exchange!r}; configured: {', '.join(config.exchanges)}"
        )
    adapter = config.adapter_name(exchange)
    if adapter != REPOSITORY_ADAPTER:
        raise ValueError(
            f"the public data repository holds Binance spot trades; exchange {exchange!r}"
            f" uses the {adapter!r} adapter"
        )
    symbol = args.symbol.upper()
    if not _SYMBOL.match(symbol):
        raise ValueError(f"expected a Binance symbol like BTCUSDT, found {args.symbol!r}")
    yesterday = today - timedelta(1)
    last = args.last or yesterday
    if last > yesterday:
        logger.info("--to {} is not published yet; loading up to {}", last, yesterday)
        last = yesterday
    if args.first > last:
        raise ValueError(f"--from {args.first} is after the last day to load ({last})")
    return BackfillRequest(exchange, symbol, args.first, last)


async def command(args: argparse.Namespace, config: Config, path: Path) -> int:
    from tradingd.operator_storage import storage_for

    today = datetime.now(UTC).date()
    try:
        request = build_request(args, config, today)
    except ValueError as exc:
        print(f"tradingd: backfill trades: {exc}", file=sys.stderr)
        return EX_USAGE
    progress = ProgressReporter.for_stderr(Notifier(), title="backfill")
    progress.unit, progress.task_noun = "hours", "files"
    try:
        async with (
            storage_for(config) as storage,
            aiohttp.ClientSession(timeout=DOWNLOAD_TIMEOUT) as http,
        ):
            from tradingd.storage.migrations import migrate

            await migrate(storage.pool)
            backfill = TradesBackfill(
                pool=storage.pool,
                http=http,
                base_url=config.backfill.trades_base_url,
                work_dir=config.state_path() / "backfill",
                batch_size=config.persister.batch_size,
                progress=progress,
            )
            report = await _with_progress(progress, backfill.run(request, today=today))
    except StorageUnavailable as exc:
        logger.critical("storage unavailable: {}", exc)
        return EX_UNAVAILABLE
    except BackfillError as exc:
        print(f"tradingd: backfill trades: {exc}", file=sys.stderr)
        return exc.exit_code
    except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError) as exc:
        # PostgreSQL went away or the disk filled: what was committed stays recorded.
        print(
            f"tradingd: backfill trades: stopped by {exc!r}; run the same command again to resume",
            file=sys.stderr,
        )
        return EX_UNAVAILABLE
    _print_report(request, report)
    if report.absent and not (report.files_loaded or report.files_already_done):
        print(
            f"tradingd: backfill trades: no trades file for {request.symbol} in the repository"
            f" ({config.backfill.trades_base_url}): check the symbol and the dates",
            file=sys.stderr,
        )
        return EX_FAILURE
    return EX_OK


async def _with_progress(
    progress: ProgressReporter, work: Coroutine[Any, Any, BackfillReport]
) -> BackfillReport:
    """Run ``work`` while the progress bar (a task owned here) redraws; errors come out bare."""
    try:
        async with asyncio.TaskGroup() as group:
            drawing = group.create_task(progress.run())
            try:
                return await work
            finally:
                drawing.cancel()
    except BaseExceptionGroup as grouped:
        raise grouped.exceptions[0] from None


def _print_report(request: BackfillRequest, report: BackfillReport) -> None:
    print(
        f"{request.exchange} {request.symbol} {request.first}..{request.last}:"
        f" {report.files_loaded} files loaded, {report.files_already_done} already done,"
        f" {len(report.absent)} not in the repository"
    )
    print(
        f"trades: {report.rows_read} read, {report.rows_new} new,"
        f" {report.rows_read - report.rows_new} already stored"
    )
    if report.absent:
        print("not in the repository: " + ", ".join(report.absent[:10]))
    if report.gaps_filled:
        print(f"open gaps filled by these files: {report.gaps_filled}")
    if report.edge_gap is not None:
        low, high = report.edge_gap
        print(
            f"gap {low}..{high} ({high - low + 1} trades) between the backfill and the next"
            " stored trade: recorded in data_gaps; the daemon's repairer fetches it"
        )
