"""The gap repairer: one per exchange; fills holes in ``public_trades`` from the venue's history.

Gaps come from the receivers' sequence trackers (a jump in the live stream, the first trade
after a reconnect or a rotation, the first live trade after a start compared with the last
stored sequence), from the ledger (``data_gaps`` rows still open after a restart) and from a
start-up scan of recently stored trades for holes below the last stored sequence (what a crash
lost: trades in memory that never reached PostgreSQL while later ones did).

Each gap is recorded in ``data_gaps`` (status ``open``), fetched over REST/RPC page by page
inside the venue's rate limits (``RateLimited``: wait ``retry_after``; ``VenueUnavailable``:
capped backoff), written through ``tradingd.storage.writer.write_trades`` (the idempotent path
the persister uses for live trades), verified against the table, and marked ``repaired`` or
``unfillable`` (with what is missing and why). PostgreSQL being down or slow only delays that:
every statement is retried with capped backoff and nothing is dropped. Live data keeps flowing
meanwhile: this actor has its own queue and its own HTTP requests.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Awaitable, Callable, Mapping
from typing import TypeVar

import aiohttp
import asyncpg
import msgspec

from tradingd.actors import RateLimiter, checked_in, pause
from tradingd.actors.persister import DATA_ERRORS, TRANSIENT_ERRORS
from tradingd.adapters.base import ExchangeAdapter, RangeUnavailable, RateLimited, VenueUnavailable
from tradingd.backoff import backoff_delay
from tradingd.metrics import LatencyHistogram
from tradingd.model import Trade
from tradingd.queues import BoundedQueue
from tradingd.sequencing import STARTUP_SCAN, Gap, missing_ranges, subtract_ranges
from tradingd.storage.writer import TradePartitions, write_trades
from tradingd.supervisor import ActorContext

_T = TypeVar("_T")

SCAN_WINDOW = "2 days"
# One attempt at a statement gives up after this long (then it is retried).
DB_TIMEOUT = 60.0
DB_BACKOFF_INITIAL = 0.1
VENUE_BACKOFF_INITIAL = 0.5
# An empty page where trades must exist may be the venue's history lagging its stream.
EMPTY_PAGE_RETRIES = 3
# A request the venue refuses (bad parameter, unparsable answer) is retried this often.
REJECTED_RETRIES = 3
LATENCIES_KEPT = 1000
# While idle, the ledger is read again this often for open gaps recorded by another process
# (`tradingd backfill trades` records the hole between its files and the live data).
LEDGER_RECHECK = 30.0
WARNING_INTERVAL = 30.0
# Gaps taken off the queue and held (to record, to repair) at most; the rest stay queued.
IN_HAND = 1000
_VENUE_ERRORS = (VenueUnavailable, aiohttp.ClientError, OSError, TimeoutError)


class _Pending(msgspec.Struct):
    gap: Gap
    # The gap's data_gaps row; None until it is recorded.
    ledger_id: int | None = None


class RepairStats(msgspec.Struct):
    detected: int = 0
    repaired: int = 0
    unfillable: int = 0
    trades_fetched: int = 0
    pages: int = 0
    rate_limited: int = 0
    venue_retries: int = 0
    db_retries: int = 0
    last_latency_s: float = 0.0
    max_latency_s: float = 0.0
    # Detection to repair, in seconds, of the most recent repairs (at most LATENCIES_KEPT).
    latencies_s: list[float] = msgspec.field(default_factory=list)


class GapRepairer:
    def __init__(
        self,
        exchange: str,
        adapter: ExchangeAdapter,
        pool: asyncpg.Pool,
        gaps: BoundedQueue[Gap],
        *,
        stored_sequences: Mapping[str, int] | None = None,
        db_backoff_max: float = 10.0,
        venue_backoff_max: float = 30.0,
        ledger_recheck: float = LEDGER_RECHECK,
        clock_us: Callable[[], int] = lambda: time.time_ns() // 1000,
    ) -> None:
        self.name = f"repairer:{exchange}"
        self.exchange = exchange
        self._adapter = adapter
        self._pool = pool
        self._gaps = gaps
        # The last sequence stored per instrument when the daemon started: the start-up scan
        # looks for holes at or below it (above it, the live trackers find them).
        self._stored = dict(stored_sequences) if stored_sequences is not None else None
        self._db_backoff_max = db_backoff_max
        self._venue_backoff_max = venue_backoff_max
        self._ledger_recheck = ledger_recheck
        self._clock_us = clock_us
        self._partitions = TradePartitions()
        self._unrecorded: deque[Gap] = deque()
        self._pending: deque[_Pending] = deque()
        self._started = False
        self._db_warnings = RateLimiter(WARNING_INTERVAL)
        self.stats = RepairStats()
        # Detection to repair, microseconds, since start (exported to Prometheus); and the
        # trades the repairs inserted (what the live stream had missed).
        self.latency = LatencyHistogram("repairer.latency_us")
        self.rows_inserted = 0
        # Set whenever nothing is pending (tests and the benchmark await it).
        self.idle = asyncio.Event()

    @property
    def open_gaps(self) -> int:
        return len(self._unrecorded) + len(self._pending) + len(self._gaps)

    def open_gap_instruments(self) -> frozenset[str] | None:
        """Instruments with a gap not yet repaired; None when gaps are queued but not yet taken
        (which instruments is then unknown: treat them all as gapped)."""
        if len(self._gaps):
            return None
        return frozenset(
            [gap.instrument_name for gap in self._unrecorded]
            + [pending.gap.instrument_name for pending in self._pending]
        )

    async def run(self, ctx: ActorContext) -> None:
        ctx.ready()
        if not self._started:
            await self._resume_ledger(ctx)
            await self._scan_for_holes(ctx)
            self._started = True
        while True:
            ctx.checkin()
            self._take_queued()
            if self._unrecorded:
                await self._record(ctx)
            if self._pending:
                await self._repair(ctx, self._pending[0])
                self._pending.popleft()
                continue
            if not len(self._gaps):
                self.idle.set()
            fresh = await checked_in(ctx, self._next_gaps())
            if fresh is None:
                # Idle, so every open row of this exchange's ledger is someone else's.
                await self._resume_ledger(ctx)
                if self._pending:
                    self.idle.clear()
                continue
            if not fresh:
                return  # closed and drained: the daemon is stopping
            self.idle.clear()
            self._unrecorded.extend(fresh)

    async def _next_gaps(self) -> list[Gap] | None:
        """Queued gaps ([] once closed and drained), or None after ``ledger_recheck`` idle s."""
        try:
            async with asyncio.timeout(self._ledger_recheck):
                return await self._gaps.get_batch(IN_HAND)
        except TimeoutError:
            return None

    def _take_queued(self) -> None:
        # Gaps go to the ledger as soon as they come, but no more than IN_HAND at a time: the
        # rest wait in the bounded queue, so back-pressure reaches the receivers.
        room = IN_HAND - len(self._unrecorded) - len(self._pending)
        if room > 0 and len(self._gaps):
            self.idle.clear()
            self._unrecorded.extend(self._gaps.get_batch_nowait(room))

    # -- the ledger -----------------------------------------------------------------------

    async def _resume_ledger(self, ctx: ActorContext) -> None:
        rows = await self._db(
            ctx,
            lambda: self._pool.fetch(
                "SELECT id, instrument_name, first_seq, last_seq, reason,"
                " (extract(epoch FROM detected_at) * 1000000)::bigint AS detected_us"
                " FROM data_gaps WHERE exchange = $1 AND status = 'open' ORDER BY id",
                self.exchange,
            ),
        )
        for row in rows:
            gap = Gap(
                self.exchange,
                row["instrument_name"],
                row["first_seq"],
                row["last_seq"],
                row["reason"],
                row["detected_us"],
            )
            self._pending.append(_Pending(gap, row["id"]))
        if rows:
            ctx.log.info("resuming {} open gaps from the ledger", len(rows))

    async def _scan_for_holes(self, ctx: ActorContext) -> None:
        """Holes between recently stored trades that no unrepaired ledger row covers yet."""
        if self._stored is not None:
            if not self._stored:
                return
            names, bounds = list(self._stored), list(self._stored.values())
            holes = await self._db(
                ctx,
                lambda: self._pool.fetch(
                    _HOLES.format(
                        bound="JOIN unnest($3::text[], $4::bigint[]) AS b(name, max_seq)"
                        " ON b.name = t.instrument_name AND t.trade_seq <= b.max_seq"
                    ),
                    self.exchange,
                    SCAN_WINDOW,
                    names,
                    bounds,
                ),
            )
        else:
            holes = await self._db(
                ctx, lambda: self._pool.fetch(_HOLES.format(bound=""), self.exchange, SCAN_WINDOW)
            )
        if not holes:
            return
        known = await self._db(
            ctx,
            lambda: self._pool.fetch(
                "SELECT instrument_name, first_seq, last_seq FROM data_gaps"
                " WHERE exchange = $1 AND status <> 'repaired'",
                self.exchange,
            ),
        )
        covered: dict[str, list[tuple[int, int]]] = {}
        for row in known:
            covered.setdefault(row["instrument_name"], []).append(
                (row["first_seq"], row["last_seq"])
            )
        now_us = self._clock_us()
        gaps = [
            Gap(self.exchange, hole["instrument_name"], first, last, STARTUP_SCAN, now_us)
            for hole in holes
            for first, last in subtract_ranges(
                hole["first_seq"], hole["last_seq"], covered.get(hole["instrument_name"], [])
            )
        ]
        if gaps:
            ctx.log.warning("start-up scan found {} holes in stored trades", len(gaps))
            self._unrecorded.extend(gaps)
            await self._record(ctx)

    async def _record(self, ctx: ActorContext) -> None:
        """Give every gap not yet in the ledger its ``open`` row, in one statement."""
        gaps = list(self._unrecorded)
        rows = await self._db(
            ctx,
            lambda: self._pool.fetch(
                "INSERT INTO data_gaps"
                " (exchange, instrument_name, first_seq, last_seq, reason, detected_at)"
                " SELECT $1, g.instrument_name, g.first_seq, g.last_seq, g.reason,"
                "  CASE WHEN g.detected_us > 0"
                "   THEN timestamptz 'epoch' + g.detected_us * interval '1 microsecond'"
                "   ELSE now() END"
                " FROM unnest($2::text[], $3::bigint[], $4::bigint[], $5::text[], $6::bigint[])"
                "   WITH ORDINALITY AS g(instrument_name, first_seq, last_seq, reason,"
                "   detected_us, n)"
                " ORDER BY g.n RETURNING id",
                self.exchange,
                [g.instrument_name for g in gaps],
                [g.first_seq for g in gaps],
                [g.last_seq for g in gaps],
                [g.reason for g in gaps],
                [g.detected_us for g in gaps],
            ),
        )
        for _ in gaps:
            self._unrecorded.popleft()
        self.stats.detected += len(gaps)
        for gap, row in zip(gaps, rows, strict=True):
            self._pending.append(_Pending(gap, row["id"]))

    # -- repairing ------------------------------------------------------------------------

    async def _repair(self, ctx: ActorContext, pending: _Pending) -> None:
        gap = pending.gap
        log = ctx.log.bind(SYMBOL=gap.instrument_name)
        first = gap.first_seq
        failures = empty_pages = rejected = limited = 0
        unfillable_reason = ""
        while first <= gap.last_seq:
            ctx.checkin()
            self._take_queued()
            if self._unrecorded:
                await self._record(ctx)
            try:
                page = await checked_in(
                    ctx, self._adapter.fetch_trades(gap.instrument_name, first, gap.last_seq)
                )
            except RangeUnavailable as exc:
                available = exc.first_available_seq
                if isinstance(available, int) and first < available <= gap.last_seq:
                    log.error("trades {}..{} are no longer served: {}", first, available - 1, exc)
                    unfillable_reason = f"the venue no longer serves it: {exc}"
                    first = available
                    continue
                unfillable_reason = f"the venue no longer serves it: {exc}"
                break
            except RateLimited as exc:
                # The venue's Retry-After, or a growing pause when it names none.
                limited += 1
                self.stats.rate_limited += 1
                delay = max(
                    exc.retry_after,
                    _backoff(VENUE_BACKOFF_INITIAL, self._venue_backoff_max, limited),
                )
                log.warning("rate limited while repairing ({}); waiting {:.1f} s", exc, delay)
                await pause(ctx, delay)
                continue
            except _VENUE_ERRORS as exc:
                failures += 1
                self.stats.venue_retries += 1
                delay = _backoff(VENUE_BACKOFF_INITIAL, self._venue_backoff_max, failures)
                log.warning("repair fetch failed ({!r}); retrying in {:.1f} s", exc, delay)
                await pause(ctx, delay)
                continue
            except ValueError as exc:  # refused or unparsable: the venue's answer, not a blip
                rejected += 1
                if rejected > REJECTED_RETRIES:
                    unfillable_reason = f"the venue refused the request: {exc}"
                    break
                delay = _backoff(VENUE_BACKOFF_INITIAL, self._venue_backoff_max, rejected)
                log.warning("repair fetch refused ({!r}); retrying in {:.1f} s", exc, delay)
                await pause(ctx, delay)
                continue
            self.stats.pages += 1
            page = [t for t in page if first <= t.trade_seq <= gap.last_seq]
            if not page:
                empty_pages += 1
                if empty_pages > EMPTY_PAGE_RETRIES:
                    unfillable_reason = f"the venue returned nothing from sequence {first}"
                    break
                await pause(
                    ctx, _backoff(VENUE_BACKOFF_INITIAL, self._venue_backoff_max, empty_pages)
                )
                continue
            failures = empty_pages = rejected = limited = 0
            await self._write(ctx, page)
            self.stats.trades_fetched += len(page)
            first = max(t.trade_seq for t in page) + 1
        missing = await self._missing(ctx, gap)
        await self._resolve(ctx, pending, missing, unfillable_reason)

    async def _resolve(
        self,
        ctx: ActorContext,
        pending: _Pending,
        missing: list[tuple[int, int]],
        unfillable_reason: str,
    ) -> None:
        gap = pending.gap
        log = ctx.log.bind(SYMBOL=gap.instrument_name)
        if missing:
            count = sum(b - a + 1 for a, b in missing)
            detail = ", ".join(f"{a}..{b}" for a, b in missing[:5])
            if len(missing) > 5:
                detail += ", ..."
            reason = unfillable_reason or "the venue's pages skipped sequence numbers"
            await self._db(
                ctx,
                lambda: self._pool.execute(
                    "UPDATE data_gaps SET status = 'unfillable', repaired_at = now(),"
                    " reason = reason || ' / unfillable: ' || $2 WHERE id = $1",
                    pending.ledger_id,
                    f"{reason}; {count} missing: {detail}",
                ),
            )
            self.stats.unfillable += 1
            log.error(
                "gap {}..{} unfillable: {}; {} missing: {}",
                gap.first_seq,
                gap.last_seq,
                reason,
                count,
                detail,
            )
            return
        await self._db(
            ctx,
            lambda: self._pool.execute(
                "UPDATE data_gaps SET status = 'repaired', repaired_at = now() WHERE id = $1",
                pending.ledger_id,
            ),
        )
        latency = max(0.0, (self._clock_us() - gap.detected_us) / 1e6) if gap.detected_us else 0.0
        stats = self.stats
        stats.repaired += 1
        stats.last_latency_s = latency
        stats.max_latency_s = max(stats.max_latency_s, latency)
        stats.latencies_s.append(latency)
        self.latency.record(int(latency * 1_000_000))
        del stats.latencies_s[:-LATENCIES_KEPT]
        log.info(
            "gap {}..{} ({} trades, {}) repaired {:.3f} s after detection",
            gap.first_seq,
            gap.last_seq,
            gap.size,
            gap.reason,
            latency,
        )

    async def _write(self, ctx: ActorContext, trades: list[Trade]) -> None:
        try:
            await self._db(ctx, lambda: self._insert(trades))
        except DATA_ERRORS as exc:
            # One refused trade must not keep the rest of its page out; verification then
            # reports what is still missing.
            ctx.log.error("PostgreSQL refused a repair page ({!r}); writing it trade by trade", exc)
            for trade in trades:
                await self._write_one(ctx, trade)

    async def _write_one(self, ctx: ActorContext, trade: Trade) -> None:
        try:
            await self._db(ctx, lambda: self._insert([trade]))
        except DATA_ERRORS as exc:
            ctx.log.error("trade {} refused by PostgreSQL: {!r}", trade.trade_id, exc)

    async def _insert(self, trades: list[Trade]) -> int:
        async with self._pool.acquire() as conn:
            inserted = await write_trades(conn, trades, partitions=self._partitions)
        self.rows_inserted += inserted
        return inserted

    async def _missing(self, ctx: ActorContext, gap: Gap) -> list[tuple[int, int]]:
        args = (self.exchange, gap.instrument_name, gap.first_seq, gap.last_seq)
        where = (
            " FROM public_trades WHERE exchange = $1 AND instrument_name = $2"
            " AND trade_seq BETWEEN $3 AND $4"
        )
        stored = await self._db(ctx, lambda: self._pool.fetchval("SELECT count(*)" + where, *args))
        if stored >= gap.size:
            return []
        rows = await self._db(ctx, lambda: self._pool.fetch("SELECT trade_seq" + where, *args))
        return missing_ranges((r["trade_seq"] for r in rows), gap.first_seq, gap.last_seq)

    async def _db(self, ctx: ActorContext, statement: Callable[[], Awaitable[_T]]) -> _T:
        """Run ``statement`` until PostgreSQL answers it; outages only delay the repair."""
        attempt = 0
        while True:
            try:
                return await checked_in(ctx, _timed(statement))
            except TRANSIENT_ERRORS as exc:
                attempt += 1
                self.stats.db_retries += 1
                delay = _backoff(DB_BACKOFF_INITIAL, self._db_backoff_max, attempt)
                suppressed = self._db_warnings.allow()
                if suppressed is not None:
                    ctx.log.warning(
                        "PostgreSQL unavailable ({!r}); retrying in {:.1f} s "
                        "({} similar warnings suppressed)",
                        exc,
                        delay,
                        suppressed,
                    )
                await pause(ctx, delay)

    def snapshot(self) -> dict[str, float]:
        latencies = sorted(self.stats.latencies_s)
        return {
            "open": self.open_gaps,
            "detected": self.stats.detected,
            "repaired": self.stats.repaired,
            "unfillable": self.stats.unfillable,
            "trades_fetched": self.stats.trades_fetched,
            "rate_limited": self.stats.rate_limited,
            "last_latency_s": round(self.stats.last_latency_s, 4),
            "p50_latency_s": round(_quantile(latencies, 0.5), 4),
            "p99_latency_s": round(_quantile(latencies, 0.99), 4),
            "max_latency_s": round(self.stats.max_latency_s, 4),
        }


_HOLES = (
    "SELECT instrument_name, prev + 1 AS first_seq, trade_seq - 1 AS last_seq FROM ("
    "  SELECT t.instrument_name, t.trade_seq,"
    "   lag(t.trade_seq) OVER (PARTITION BY t.instrument_name ORDER BY t.trade_seq) AS prev"
    "  FROM public_trades t {bound}"
    "  WHERE t.exchange = $1 AND t.trade_timestamp > now() - $2::text::interval"
    ") s WHERE trade_seq > prev + 1 ORDER BY instrument_name, first_seq"
)


async def _timed(statement: Callable[[], Awaitable[_T]]) -> _T:
    async with asyncio.timeout(DB_TIMEOUT):
        return await statement()


def _backoff(initial: float, maximum: float, attempt: int) -> float:
    return backoff_delay(attempt, initial, maximum)


def _quantile(ordered: list[float], q: float) -> float:
    if not ordered:
        return 0.0
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]
