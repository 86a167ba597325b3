"""``tradingd --bootstrap``: prepare storage and history before the first unlock.

Steps: wait for storage → migrate → clock check (past ``daemon.max_clock_skew``: exit 69) →
each enabled exchange BOOTSTRAPPING → synchronise its instruments → backfill OHLC for the
configured symbols and ``[backfill] resolutions`` from ``[backfill] start_date`` until now →
LOCKED. Exchanges run concurrently and independently: one failing leaves the others going.

Resuming: bars are written page by page through the writer's idempotent upsert, and after each
page the covered range of the series is recorded in Redis (``bootstrap:backfill:...``). A re-run
continues each series after the last bar both stored and covered, so it fetches nothing twice
and a later live capture (whose bars are stored too) does not hide the part never backfilled.

An exchange already past bootstrap (HEALTHY, RECONCILING, AUDITING) is caught up without a
state change: the bootstrap unit runs on every boot and must not take a trading exchange out
of trading. To re-bootstrap one from scratch, ``tradingd lock`` it first.

Exit status: 0 every exchange done; 1 some failed (the summary says which and why); 69 storage
or clock; 128 + the signal number when SIGTERM/SIGINT stopped it (states stay BOOTSTRAPPING,
what was written stays, a re-run resumes).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TypeVar

import aiohttp
import asyncpg
import msgspec
import redis.asyncio as aioredis
from loguru import logger

from tradingd.adapters.base import ExchangeAdapter, RateLimited, VenueUnavailable
from tradingd.adapters.registry import create_adapter
from tradingd.backoff import backoff_delay
from tradingd.clock import ClockCheck, SkewTooLarge
from tradingd.config import Config
from tradingd.exitcodes import EX_FAILURE, EX_OK, EX_UNAVAILABLE
from tradingd.model import Bar, Instrument, resolution_us
from tradingd.progress import ProgressReporter, Task
from tradingd.sdnotify import Notifier
from tradingd.secrets import secret_store
from tradingd.state import (
    ExchangeState,
    IllegalTransition,
    StateUnavailable,
    current_operator,
    read_state,
    transition,
)
from tradingd.storage import MigrationError, Storage, StorageError, open_storage
from tradingd.storage.migrations import migrate
from tradingd.storage.writer import upsert_bars

_T = TypeVar("_T")

# Bars asked for per request: Binance's klines maximum; Deribit serves at least as many.
PAGE_BARS = 1000
# States whose exchange is already bootstrapped and possibly trading: caught up, not moved.
_PAST_BOOTSTRAP = frozenset(
    {ExchangeState.HEALTHY, ExchangeState.RECONCILING, ExchangeState.AUDITING}
)


# -- pure planning --------------------------------------------------------------------------


def align_up(us: int, period_us: int) -> int:
    """The first multiple of ``period_us`` at or after ``us``."""
    return -(-us // period_us) * period_us


def last_closed_open_us(now_us: int, period_us: int) -> int:
    """Open time of the newest bar that has closed by ``now_us``."""
    return now_us - now_us % period_us - period_us


def page_window(cursor_us: int, end_us: int, period_us: int, page_bars: int = PAGE_BARS) -> int:
    """The last open time one request asks for, starting at ``cursor_us``."""
    return min(end_us, cursor_us + (page_bars - 1) * period_us)


def next_cursor(window_end_us: int, ticks_us: Sequence[int], period_us: int) -> int:
    """Where the next page starts: after the newest bar received, or after the whole window
    when it held none. Never before the window's start, so every page makes progress; never
    past a bar not yet received, should a venue cut a page shorter than asked."""
    if not ticks_us:
        return window_end_us + period_us
    return max(ticks_us) + period_us


class Watermark(msgspec.Struct, frozen=True, array_like=True):
    """The range of open times one series' backfill has covered (every page fetched and stored)."""

    from_us: int
    through_us: int


def resume_from(
    start_us: int, period_us: int, stored_last_us: int | None, watermark: Watermark | None
) -> int:
    """The first open time still to fetch for a series whose range starts at ``start_us``.

    ``stored_last_us``: the newest closed bar stored at or after ``start_us`` (None: none).
    Without a stored bar nothing counts as done. The watermark wins over the stored bars
    (bars captured live after an interrupted backfill must not hide the part never fetched),
    but only as far as the bars actually stored reach (a restored older database), and only
    when it covers the range from its start (``start_date`` moved earlier: start over).
    """
    first = align_up(start_us, period_us)
    if stored_last_us is None or stored_last_us < first:
        return first
    if watermark is None:
        return stored_last_us + period_us
    if watermark.from_us > first or watermark.through_us < first:
        return first
    return min(watermark.through_us, stored_last_us) + period_us


@dataclass(frozen=True)
class Series:
    exchange: str
    instrument_name: str
    resolution: str

    @property
    def label(self) -> str:
        return f"{self.exchange} {self.instrument_name} {self.resolution}"


def find_instrument(instruments: Sequence[Instrument], symbol: str) -> Instrument | None:
    """The venue's instrument for a configured symbol (exact name, else case-insensitive)."""
    by_name = {i.instrument_name: i for i in instruments}
    found = by_name.get(symbol)
    if found is None:
        folded = {i.instrument_name.upper(): i for i in instruments}
        found = folded.get(symbol.upper())
    return found


def plan_series(
    exchange: str,
    symbols: Sequence[str],
    resolutions: Sequence[str],
    instruments: Sequence[Instrument],
) -> tuple[list[Series], list[str]]:
    """The series to backfill, and the configured symbols the venue does not list."""
    series: list[Series] = []
    missing: list[str] = []
    for symbol in dict.fromkeys(symbols):
        instrument = find_instrument(instruments, symbol)
        if instrument is None:
            missing.append(symbol)
            continue
        for resolution in dict.fromkeys(resolutions):
            series.append(Series(exchange, instrument.instrument_name, resolution))
    return series, missing


def start_of_day_us(config: Config) -> int:
    day = config.backfill.start_date
    moment = datetime(day.year, day.month, day.day, tzinfo=UTC)
    return int(moment.timestamp()) * 1_000_000


# -- retry ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class RetryPolicy:
    """Backoff for a venue that is down or asks us to slow down."""

    initial: float = 1.0
    maximum: float = 60.0
    # Consecutive failures of one call before the exchange is given up.
    attempts: int = 8
    # A venue asking us to wait longer than this (an IP ban) fails the exchange instead.
    longest_wait: float = 900.0

    def delay(self, attempt: int) -> float:
        return backoff_delay(attempt, self.initial, self.maximum)


class GaveUp(Exception):
    """A venue call kept failing past the retry policy."""


# -- outcome --------------------------------------------------------------------------------


@dataclass
class ExchangeOutcome:
    exchange: str
    instruments: int = 0
    inactive: int = 0
    deactivated: int = 0
    series: int = 0
    series_done: int = 0
    bars_stored: int = 0
    problems: list[str] = field(default_factory=list)
    interrupted: bool = False
    final_state: str = ""
    caught_up_only: bool = False

    @property
    def ok(self) -> bool:
        return not self.problems and not self.interrupted

    def describe(self) -> str:
        text = (
            f"{self.instruments} instruments ({self.inactive} inactive, {self.deactivated} "
            f"newly deactivated), series {self.series_done}/{self.series}, "
            f"{self.bars_stored:,} bars stored"
        )
        if self.caught_up_only:
            text += "; caught up without a state change"
        if self.interrupted:
            text += "; interrupted"
        if self.problems:
            text += "; " + "; ".join(self.problems)
        return text


def summary_lines(outcomes: Sequence[ExchangeOutcome]) -> list[str]:
    lines = ["bootstrap summary:"]
    for outcome in outcomes:
        verdict = "ok" if outcome.ok else ("INTERRUPTED" if outcome.interrupted else "FAILED")
        lines.append(
            f"  {outcome.exchange:<12} {verdict:<12} {outcome.final_state or 'NEW':<14} "
            f"{outcome.describe()}"
        )
    return lines


# -- storage helpers ------------------------------------------------------------------------

_UPSERT_INSTRUMENTS = """
INSERT INTO instruments AS i (exchange, instrument_name, market_type, base_currency,
    quote_currency, tick_size, min_trade_amount, contract_size, min_notional,
    expiration_timestamp, is_active, raw, updated_at)
SELECT exchange, instrument_name, market_type, base_currency, quote_currency, tick_size,
    min_trade_amount, contract_size, min_notional,
    timestamptz 'epoch' + expiration_us * interval '1 microsecond',
    is_active AND (expiration_us IS NULL OR expiration_us > $2), raw::jsonb, now()
FROM json_to_recordset($1::text::json) AS r(
    exchange text, instrument_name text, market_type text, base_currency text,
    quote_currency text, tick_size numeric, min_trade_amount numeric, contract_size numeric,
    min_notional numeric, expiration_us bigint, is_active boolean, raw text)
ON CONFLICT (exchange, instrument_name) DO UPDATE
SET market_type = EXCLUDED.market_type, base_currency = EXCLUDED.base_currency,
    quote_currency = EXCLUDED.quote_currency, tick_size = EXCLUDED.tick_size,
    min_trade_amount = EXCLUDED.min_trade_amount, contract_size = EXCLUDED.contract_size,
    min_notional = EXCLUDED.min_notional, expiration_timestamp = EXCLUDED.expiration_timestamp,
    is_active = EXCLUDED.is_active, raw = EXCLUDED.raw, updated_at = EXCLUDED.updated_at
"""

_DEACTIVATE_VANISHED = """
UPDATE instruments SET is_active = false, updated_at = now()
WHERE exchange = $1 AND is_active
  AND (NOT (instrument_name = ANY($2::text[])) OR expiration_timestamp <= now())
"""

_LAST_CLOSED_BAR = """
SELECT (extract(epoch FROM max(tick)) * 1000000)::bigint
FROM ohlc
WHERE exchange = $1 AND instrument_name = $2 AND resolution = $3 AND closed
  AND tick >= timestamptz 'epoch' + $4::bigint * interval '1 microsecond'
"""

_encode = msgspec.json.Encoder().encode
_decode_watermark = msgspec.json.Decoder(Watermark).decode


def watermark_key(series: Series) -> str:
    return f"bootstrap:backfill:{series.exchange}:{series.instrument_name}:{series.resolution}"


async def store_instruments(
    pool: asyncpg.Pool, exchange: str, instruments: Sequence[Instrument], now_us: int
) -> int:
    """Upsert the venue's instruments; deactivate those it no longer lists or that expired.
    Returns how many were deactivated by this call."""
    async with pool.acquire() as conn, conn.transaction():
        if instruments:
            await conn.execute(_UPSERT_INSTRUMENTS, _encode(list(instruments)).decode(), now_us)
        status = await conn.execute(
            _DEACTIVATE_VANISHED, exchange, [i.instrument_name for i in instruments]
        )
    return int(status.rsplit(" ", 1)[1])


async def load_resume_point(
    pool: asyncpg.Pool, redis: aioredis.Redis, series: Series, start_us: int, period_us: int
) -> int:
    stored_last: int | None = await pool.fetchval(
        _LAST_CLOSED_BAR, series.exchange, series.instrument_name, series.resolution, start_us
    )
    raw = await redis.get(watermark_key(series))
    watermark: Watermark | None = None
    if raw:
        with contextlib.suppress(msgspec.DecodeError, msgspec.ValidationError):
            watermark = _decode_watermark(raw)
    return resume_from(start_us, period_us, stored_last, watermark)


# -- the bootstrap --------------------------------------------------------------------------


class Bootstrap:
    """One run over every enabled exchange; ``outcomes`` fill in as it goes."""

    def __init__(
        self,
        config: Config,
        storage: Storage,
        adapters: dict[str, ExchangeAdapter],
        progress: ProgressReporter,
        *,
        retry: RetryPolicy = RetryPolicy(),
        operator: str | None = None,
        clock_us: Callable[[], int] = lambda: time.time_ns() // 1000,
    ) -> None:
        self.config = config
        self.storage = storage
        self.adapters = adapters
        self.progress = progress
        self.retry = retry
        self.operator = operator or current_operator()
        self.clock_us = clock_us
        self.outcomes = {name: ExchangeOutcome(name) for name in adapters}

    async def run(self) -> None:
        async with asyncio.TaskGroup() as group:
            for name in self.adapters:
                group.create_task(self.run_exchange(name), name=f"bootstrap:{name}")

    async def run_exchange(self, name: str) -> None:
        outcome = self.outcomes[name]
        log = logger.bind(EXCHANGE=name)
        try:
            await self._run_exchange(name, outcome)
        except asyncio.CancelledError:
            outcome.interrupted = True
            raise
        except Exception as exc:
            outcome.problems.append(_describe(exc))
            log.opt(exception=not isinstance(exc, (GaveUp, IllegalTransition))).error(
                "{} bootstrap failed: {}", name, _describe(exc)
            )
        finally:
            with contextlib.suppress(StateUnavailable, asyncio.CancelledError):
                state = await read_state(self.storage.redis, name)
                outcome.final_state = state.value if state else ""

    async def _run_exchange(self, name: str, outcome: ExchangeOutcome) -> None:
        pool, redis = self.storage.pool, self.storage.redis
        log = logger.bind(EXCHANGE=name)
        state = await read_state(redis, name)
        if state in _PAST_BOOTSTRAP:
            outcome.caught_up_only = True
            log.info(
                "{} is {}: catching up instruments and history without changing its state "
                "(`tradingd lock` it first to re-bootstrap)",
                name,
                state,
            )
        else:
            await transition(
                pool,
                redis,
                name,
                ExchangeState.BOOTSTRAPPING,
                operator=self.operator,
                reason=f"bootstrap started (history from {self.config.backfill.start_date})",
            )
        instruments = await self.sync_instruments(name, outcome)
        exchange = self.config.exchanges[name]
        series, missing = plan_series(
            name, exchange.symbols, self.config.backfill.resolutions, instruments
        )
        for symbol in missing:
            outcome.problems.append(f"configured symbol {symbol} is not listed by the venue")
            log.error("{}: configured symbol {} is not listed by the venue", name, symbol)
        outcome.series = len(series)
        await self.backfill(name, series, outcome)
        if outcome.problems or outcome.caught_up_only:
            return
        await transition(
            pool,
            redis,
            name,
            ExchangeState.LOCKED,
            operator=self.operator,
            reason=(
                f"bootstrap complete: {outcome.instruments} instruments, "
                f"{outcome.series} series backfilled from {self.config.backfill.start_date}; "
                "verify, then `tradingd unlock`"
            ),
            only_from=frozenset({ExchangeState.BOOTSTRAPPING}),
        )

    async def sync_instruments(self, name: str, outcome: ExchangeOutcome) -> list[Instrument]:
        adapter = self.adapters[name]
        self.progress.set_phase(f"{name}: synchronising instruments")
        instruments = await self.call(name, "fetch instruments", adapter.fetch_instruments)
        outcome.deactivated = await store_instruments(
            self.storage.pool, name, instruments, self.clock_us()
        )
        outcome.instruments = len(instruments)
        outcome.inactive = sum(1 for i in instruments if not i.is_active)
        logger.bind(EXCHANGE=name).info(
            "{}: {} instruments synchronised ({} inactive, {} deactivated)",
            name,
            outcome.instruments,
            outcome.inactive,
            outcome.deactivated,
        )
        return instruments

    async def backfill(self, name: str, plan: Sequence[Series], outcome: ExchangeOutcome) -> None:
        """Each series in turn (they share the venue's rate limit, so no point racing them)."""
        start_us = start_of_day_us(self.config)
        tasks: list[tuple[Series, int, int, Task]] = []
        for series in plan:
            period = resolution_us(series.resolution)
            resume = await load_resume_point(
                self.storage.pool, self.storage.redis, series, start_us, period
            )
            end = last_closed_open_us(self.clock_us(), period)
            remaining = max(0, (end - resume) // period + 1)
            tasks.append((series, resume, end, self.progress.add(series.label, remaining)))
        for series, resume, end, task in tasks:
            try:
                outcome.bars_stored += await self.backfill_series(
                    series, start_us, resume, end, task
                )
            except (GaveUp, ValueError) as exc:
                outcome.problems.append(f"{series.label}: {_describe(exc)}")
                logger.bind(EXCHANGE=name).error("{}: {}", series.label, _describe(exc))
                continue
            outcome.series_done += 1

    async def backfill_series(
        self, series: Series, start_us: int, resume_us: int, end_us: int, task: Task
    ) -> int:
        """Fetch and store ``series`` from ``resume_us`` through ``end_us``; returns rows
        written."""
        adapter = self.adapters[series.exchange]
        period = resolution_us(series.resolution)
        first = align_up(start_us, period)
        cursor = resume_us
        stored = 0
        log = logger.bind(EXCHANGE=series.exchange, SYMBOL=series.instrument_name)
        if cursor <= end_us:
            log.info("{}: backfilling {} .. {}", series.label, _iso(cursor), _iso(end_us))
        while True:
            while cursor <= end_us:
                window_end = page_window(cursor, end_us, period)
                page_start = cursor

                def fetch(start: int = page_start, stop: int = window_end) -> Awaitable[list[Bar]]:
                    return adapter.fetch_bars(
                        series.instrument_name, series.resolution, start, stop
                    )

                bars = [
                    bar
                    for bar in await self.call(series.exchange, f"{series.label} bars", fetch)
                    if bar.closed and page_start <= bar.tick_us <= window_end
                ]
                if bars:
                    async with self.storage.pool.acquire() as conn:
                        stored += await upsert_bars(conn, bars)
                cursor = next_cursor(window_end, [bar.tick_us for bar in bars], period)
                await self.storage.redis.set(
                    watermark_key(series), _encode(Watermark(first, cursor - period))
                )
                self.progress.advance(
                    task, (cursor - page_start) // period, current=f"{series.label} {_iso(cursor)}"
                )
                log.debug(
                    "{}: wrote {} bars up to {}", series.label, len(bars), _iso(cursor - period)
                )
            # A long backfill ends behind the clock: catch up with the bars closed meanwhile.
            newest = last_closed_open_us(self.clock_us(), period)
            if newest <= end_us:
                break
            task.total += (newest - end_us) // period
            end_us = newest
        self.progress.finish(task)
        log.info("{}: backfill done, {} rows written", series.label, stored)
        return stored

    async def call(self, exchange: str, what: str, make: Callable[[], Awaitable[_T]]) -> _T:
        """``make()`` with backoff on ``VenueUnavailable``/``RateLimited``; ``GaveUp`` after
        ``retry.attempts`` consecutive failures or when the venue asks for too long a wait."""
        log = logger.bind(EXCHANGE=exchange)
        attempt = 0
        while True:
            try:
                return await make()
            except RateLimited as exc:
                attempt += 1
                wait = max(exc.retry_after, self.retry.initial)
                if wait > self.retry.longest_wait or attempt >= self.retry.attempts:
                    raise GaveUp(f"{what}: rate limited ({exc}); giving up") from exc
                log.warning("{}: rate limited ({}); waiting {:.1f} s", what, exc, wait)
            except (VenueUnavailable, aiohttp.ClientError, TimeoutError, OSError) as exc:
                attempt += 1
                if attempt >= self.retry.attempts:
                    raise GaveUp(
                        f"{what}: venue unavailable after {attempt} attempts ({_describe(exc)})"
                    ) from exc
                wait = self.retry.delay(attempt)
                log.warning(
                    "{}: venue unavailable ({}); attempt {}, retrying in {:.1f} s",
                    what,
                    _describe(exc),
                    attempt,
                    wait,
                )
            self.progress.touch()
            await asyncio.sleep(wait)  # backoff delay


def _describe(exc: BaseException) -> str:
    text = str(exc)
    if isinstance(exc, (GaveUp, IllegalTransition)):
        return text
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _iso(us: int) -> str:
    return datetime.fromtimestamp(us / 1e6, tz=UTC).strftime("%Y-%m-%d %H:%M")


# -- the command ----------------------------------------------------------------------------


class _Signals:
    """SIGTERM/SIGINT → ``stopped``; a second SIGINT exits at once."""

    def __init__(self) -> None:
        self.stopped = asyncio.Event()
        self.signum = 0

    def _on(self, signum: int) -> None:
        if self.signum == signal.SIGINT and signum == signal.SIGINT:
            logger.warning("second SIGINT: exiting now")
            os._exit(128 + signum)
        if not self.signum:
            logger.warning(
                "{}: stopping the bootstrap (what is written stays; a re-run resumes)",
                signal.Signals(signum).name,
            )
        self.signum = self.signum or signum
        self.stopped.set()

    @contextlib.contextmanager
    def installed(self) -> Iterator[None]:
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, self._on, signum)
        try:
            yield
        finally:
            for signum in (signal.SIGTERM, signal.SIGINT):
                loop.remove_signal_handler(signum)


class _Interrupted(Exception):
    pass


async def _until(stopped: asyncio.Event, work: Awaitable[_T]) -> _T:
    """``work``'s result, or ``_Interrupted`` (with ``work`` cancelled) once ``stopped`` is set."""
    task = asyncio.ensure_future(work)
    waiter = asyncio.ensure_future(stopped.wait())
    try:
        await asyncio.wait({task, waiter}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        waiter.cancel()
    if task.done():
        return task.result()
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    raise _Interrupted()


async def run_bootstrap(
    config: Config,
    *,
    config_path: Path | str = "<config>",
    notifier: Notifier | None = None,
    progress: ProgressReporter | None = None,
    retry: RetryPolicy = RetryPolicy(),
    handle_signals: bool = True,
) -> int:
    """The ``--bootstrap`` command; returns the exit status (see the module docstring)."""
    notifier = notifier or Notifier()
    signals = _Signals()
    with signals.installed() if handle_signals else contextlib.nullcontext():
        try:
            return await _bootstrap(config, config_path, notifier, progress, retry, signals)
        except _Interrupted:
            notifier.status("bootstrap interrupted; run it again to resume")
            return 128 + (signals.signum or signal.SIGTERM)


async def _bootstrap(
    config: Config,
    config_path: Path | str,
    notifier: Notifier,
    progress: ProgressReporter | None,
    retry: RetryPolicy,
    signals: _Signals,
) -> int:
    def on_wait(message: str) -> None:
        logger.warning("{}", message)
        notifier.status(f"bootstrap: {message}")
        notifier.extend_timeout(60)

    notifier.status("bootstrap: connecting to storage")
    try:
        storage = await _until(
            signals.stopped,
            open_storage(config, on_wait=on_wait, secrets=secret_store(config), attach=True),
        )
    except StorageError as exc:
        logger.critical("storage unavailable: {}", exc)
        notifier.failed(0, f"bootstrap: storage unavailable: {exc}")
        return EX_UNAVAILABLE
    try:
        async with aiohttp.ClientSession() as http:
            adapters = {
                name: create_adapter(config, name, http, config_path)
                for name in config.enabled_exchanges()
            }
            try:
                return await _with_storage(
                    config, storage, adapters, notifier, progress, retry, signals
                )
            finally:
                for adapter in adapters.values():
                    with contextlib.suppress(Exception):
                        await adapter.close()
    finally:
        await storage.close()


async def _with_storage(
    config: Config,
    storage: Storage,
    adapters: dict[str, ExchangeAdapter],
    notifier: Notifier,
    progress: ProgressReporter | None,
    retry: RetryPolicy,
    signals: _Signals,
) -> int:
    notifier.status("bootstrap: migrating the schema")
    try:
        applied = await _until(signals.stopped, migrate(storage.pool))
    except MigrationError as exc:
        logger.critical("migration failed: {}", exc)
        notifier.failed(0, f"bootstrap: migration failed: {exc}")
        return EX_UNAVAILABLE
    if applied:
        logger.info("applied migrations: {}", ", ".join(applied))

    notifier.status("bootstrap: checking the clock against the exchanges")
    try:
        await _until(signals.stopped, ClockCheck(config.daemon, adapters).check_at_start())
    except SkewTooLarge as exc:
        logger.critical("CRITICAL TIME SKEW DETECTED: {}", exc)
        notifier.failed(0, f"CRITICAL TIME SKEW DETECTED: {exc}")
        return EX_UNAVAILABLE

    reporter = progress or ProgressReporter.for_stderr(notifier)
    bootstrap = Bootstrap(config, storage, adapters, reporter, retry=retry)
    drawing = asyncio.ensure_future(reporter.run())
    interrupted = False
    try:
        await _until(signals.stopped, bootstrap.run())
    except _Interrupted:
        interrupted = True
    finally:
        drawing.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await drawing
    outcomes = list(bootstrap.outcomes.values())
    if interrupted:
        for outcome in outcomes:
            # The finally of an interrupted task may not have read the state back.
            with contextlib.suppress(StateUnavailable):
                state = await read_state(storage.redis, outcome.exchange)
                outcome.final_state = state.value if state else ""
    lines = summary_lines(outcomes)
    print("\n".join(lines), file=sys.stdout, flush=True)
    failed = [o.exchange for o in outcomes if not o.ok]
    if interrupted:
        notifier.status("bootstrap interrupted; run it again to resume")
        raise _Interrupted()
    if failed:
        for outcome in outcomes:
            if not outcome.ok:
                logger.error("bootstrap of {} failed: {}", outcome.exchange, outcome.describe())
        notifier.status(f"bootstrap finished; failed: {', '.join(failed)}")
        return EX_FAILURE
    notifier.status("bootstrap finished: every exchange LOCKED; verify, then `tradingd unlock`")
    logger.success(
        "bootstrap finished: {}; verify the data, then `tradingd unlock`",
        ", ".join(f"{o.exchange} {o.final_state}" for o in outcomes) or "no exchanges enabled",
    )
    return EX_OK
