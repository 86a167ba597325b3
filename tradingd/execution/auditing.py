"""Account reconciliation, the I/O part: the executor's auditor asks the venue, books the fills
the ledger missed, compares (``tradingd.execution.audit``), records the report in PostgreSQL
(table ``reconciliations``) and acts on the outcome.

* At start (``startup``), after the ledger's non-terminal orders were queried one by one and
  before any order is decided: the venue's fills since the ledger's last one (a margin back),
  its open orders and balances. The balances are compared with the last baseline report's
  plus every fill booked since. Nothing is sent meanwhile, so one mismatch means AUDITING.
* While running (``run``: every ``risk.reconcile_interval``, after the update stream
  reconnects, and on demand from ``tradingd reconcile``), under the executor's lock: the
  venue's open orders and balances against the executor's. A mismatch seen on two runs in a
  row means AUDITING; an unknown order of ours locks at once.
* Either way, an order the ledger holds open that the venue no longer lists is asked about
  first (a resting order fills whenever the market reaches it, and its event may be late or
  lost): the venue's word on it is taken; only one it cannot find is reported missing.

An exchange put under AUDITING stays there until ``tradingd unlock`` finds a fresh
reconciliation clean (or is forced); once it trades again the executor's balances restart from
the venue's.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from decimal import Decimal
from typing import Protocol

import asyncpg
import msgspec
import redis.asyncio as aioredis
from loguru import logger

from tradingd.execution import audit
from tradingd.execution.accounting import Book, FillRecord
from tradingd.execution.audit import Outcome, Report, Trigger
from tradingd.execution.audit_record import baseline_report, record_report
from tradingd.execution.ledger import CLIENT_ID_PREFIX, FillRow, Ledger, OrderRow
from tradingd.execution.records import Fill
from tradingd.execution.risk import InstrumentInfo
from tradingd.execution.venue import ExecutionClient, VenueOrder
from tradingd.state import (
    ExchangeState,
    IllegalTransition,
    StateUnavailable,
    read_state,
    transition,
)

# Fills are asked for from this long before the ledger's last one: venues' clocks and the
# order in which fills are reported differ a little.
FILL_MARGIN_US = 60_000_000
# With no fill and no report at all (a first start), this far back.
FIRST_LOOKBACK_US = 86_400_000_000
AUDITOR = "executor"


class Audited(Protocol):
    """What the auditor needs of the executor."""

    @property
    def exchange(self) -> str: ...

    def ledger_orders(self) -> list[OrderRow]:
        """Every non-terminal order the executor holds (the ledger's)."""
        ...

    def session_balances(self) -> dict[str, Decimal]:
        """The venue's balances at start plus every fill booked since."""
        ...

    def rebase_balances(self, balances: Mapping[str, Decimal]) -> None: ...

    def net_positions(self) -> dict[str, Decimal]:
        """The signed net position per instrument, replayed from the ledger's fills."""
        ...

    async def book_fill(self, fill: Fill, source: str) -> bool:
        """Record a fill the venue reports (once per trade id); False when the ledger cannot
        (an order it does not know, or a fill its state machine refuses)."""
        ...

    async def settle_orders(self, client_order_ids: list[str]) -> None:
        """Take the venue's word on orders it no longer lists open, one query each (a fill or
        cancel whose event is late or lost). An order the venue does not find is left as it is;
        nothing else in the ledger changes (the venue's open-orders snapshot is compared with
        it next)."""
        ...

    async def lock(self, reason: str) -> None: ...


def fill_record(fill: FillRow, instruments: Mapping[str, InstrumentInfo]) -> FillRecord:
    """A ledger fill as the accounting replays it."""
    info = instruments.get(fill.instrument)
    return FillRecord(
        strategy=fill.strategy,
        exchange=fill.exchange,
        instrument=fill.instrument,
        base=info.rules.base if info is not None else "",
        quote=info.rules.quote if info is not None else "",
        side=fill.side,
        quantity=fill.quantity,
        price=fill.price,
        fee=fill.fee,
        fee_currency=fill.fee_currency,
        trade_id=fill.trade_id,
        at_us=fill.at_us,
        inverse=info is not None and info.inverse,
    )


def _wall_clock_us() -> int:
    return time.time_ns() // 1000


class Auditor:
    def __init__(
        self,
        desk: Audited,
        *,
        pool: asyncpg.Pool,
        redis: aioredis.Redis,
        venue: ExecutionClient,
        instruments: Mapping[str, InstrumentInfo],
        interval_s: float,
        clock_us: Callable[[], int] = _wall_clock_us,
    ) -> None:
        self._desk = desk
        self._pool = pool
        self._redis = redis
        self._ledger = Ledger(pool)
        self._venue = venue
        self._instruments = instruments
        self._tolerances = audit.tolerances(instruments.values())
        self._position_steps = audit.position_steps(instruments)
        self._interval_us = int(interval_s * 1_000_000)
        self._clock_us = clock_us
        self._next_us = 0
        self._epoch = 0
        self._mismatch_before = False
        # We put the exchange under AUDITING: once it may trade again, the executor's
        # balances restart from the venue's (the operator accepted them).
        self._audited = False
        self._rebase = False
        self.last: Report | None = None

    @property
    def exchange(self) -> str:
        return self._desk.exchange

    # -- when ------------------------------------------------------------------------------

    def due(self) -> Trigger | None:
        """Whether a run is due now: the update stream reconnected, or the interval passed."""
        if self._venue.connection_epoch() != self._epoch:
            return Trigger.RECONNECT
        if self._clock_us() >= self._next_us:
            return Trigger.PERIODIC
        return None

    def on_gate(self, may_trade: bool) -> None:
        if self._audited and may_trade:
            self._audited = False
            self._mismatch_before = False
            self._next_us = 0  # the balances are rebased by the next run, at once
            self._rebase = True

    # -- runs ------------------------------------------------------------------------------

    async def startup(self) -> Report:
        """The start-up gate (before any order is decided)."""
        self._epoch = self._venue.connection_epoch()
        try:
            report = await self._startup()
        except Exception as exc:  # the venue did not answer: nothing is verified
            logger.opt(exception=exc).error("{}: start-up reconciliation failed", self.exchange)
            report = self._failed(Trigger.STARTUP, exc)
        await self._conclude(report)
        return report

    async def run(self, trigger: Trigger) -> Report:
        """One reconciliation while running (the caller holds the executor's lock)."""
        self._epoch = self._venue.connection_epoch()
        try:
            report = await self._running(trigger)
        except Exception as exc:
            logger.opt(exception=exc).warning("{}: reconciliation failed", self.exchange)
            report = self._failed(trigger, exc)
        await self._conclude(report)
        return report

    async def _startup(self) -> Report:
        exchange = self.exchange
        baseline = await baseline_report(self._pool, exchange)
        last = await self._ledger.last_fill(exchange)
        if last is not None:
            since_us = last[1] - FILL_MARGIN_US
        elif baseline is not None:
            since_us = baseline.at_us - FILL_MARGIN_US
        else:
            since_us = self._clock_us() - FIRST_LOOKBACK_US
        booked, unbooked = 0, []
        for fill in await self._venue.fills_since(sorted(self._instruments), since_us):
            if not fill.client_order_id.startswith(CLIENT_ID_PREFIX):
                continue  # another client's: its effect shows in the balances
            if await self._ledger.has_fill(exchange, fill.trade_id):
                continue
            if await self._desk.book_fill(fill, "reconcile"):
                booked += 1
                logger.bind(EXCHANGE=exchange).warning(
                    "{}: fill {} of {} missed while down, booked from the venue's record",
                    exchange,
                    fill.trade_id,
                    fill.client_order_id,
                )
            else:
                unbooked.append((fill.trade_id, fill.client_order_id))
        venue_orders = await self._venue.open_orders()
        await self._settle_unlisted(venue_orders)
        venue_balances = await self._venue.balances()
        venue_positions = await self._venue.positions()
        last = await self._ledger.last_fill(exchange)
        watermark = last[0] if last is not None else 0
        expected: dict[str, Decimal] | None = None
        if baseline is not None:
            since = Book()
            for row in await self._ledger.fills_after(exchange, baseline.fill_watermark):
                since.apply(fill_record(row, self._instruments))
            expected = audit.expected_balances(baseline.venue_balances, since.balances())
        # Nothing trades yet and every fill is booked: from here on the executor counts from
        # the venue's balances.
        self._desk.rebase_balances(venue_balances)
        return self._report(
            Trigger.STARTUP,
            venue_orders=venue_orders,
            venue_positions=venue_positions,
            venue_balances=venue_balances,
            expected=expected,
            unbooked=unbooked,
            booked=booked,
            watermark=watermark,
            baseline=True,
        )

    async def _running(self, trigger: Trigger) -> Report:
        venue_orders = await self._venue.open_orders()
        await self._settle_unlisted(venue_orders)
        venue_positions = await self._venue.positions()
        venue_balances = await self._venue.balances()
        if self._rebase:
            self._rebase = False
            self._desk.rebase_balances(venue_balances)
        last = await self._ledger.last_fill(self.exchange)
        report = self._report(
            trigger,
            venue_orders=venue_orders,
            venue_positions=venue_positions,
            venue_balances=venue_balances,
            expected=self._desk.session_balances(),
            unbooked=[],
            booked=0,
            watermark=last[0] if last is not None else 0,
            baseline=False,
        )
        return msgspec.structs.replace(report, baseline=report.clean)

    async def _settle_unlisted(self, venue_orders: list[VenueOrder]) -> None:
        """Ask about the orders the ledger holds open that the venue does not list, before they
        count as missing: a resting order fills whenever the market reaches it (at start too,
        between the per-order queries and this read) and its event may be in flight or lost.
        The balances are read after this, so its fills are on both sides of the comparison."""
        listed = {order.client_order_id for order in venue_orders}
        unlisted = [
            row.client_order_id
            for row in self._desk.ledger_orders()
            if row.state in audit.OPEN_AT_VENUE and row.client_order_id not in listed
        ]
        if unlisted:
            await self._desk.settle_orders(unlisted)

    def _report(
        self,
        trigger: Trigger,
        *,
        venue_orders: list[VenueOrder],
        venue_positions: dict[str, Decimal],
        venue_balances: dict[str, Decimal],
        expected: dict[str, Decimal] | None,
        unbooked: list[tuple[str, str]],
        booked: int,
        watermark: int,
        baseline: bool,
    ) -> Report:
        facts = audit.Facts(
            prefix=CLIENT_ID_PREFIX,
            ledger_orders=[
                audit.OrderFact(
                    client_order_id=row.client_order_id,
                    state=row.state,
                    venue_order_id=row.venue_order_id or "",
                )
                for row in self._desk.ledger_orders()
            ],
            venue_orders=[
                audit.OrderFact(
                    client_order_id=o.client_order_id,
                    state=o.state,
                    venue_order_id=o.venue_order_id,
                )
                for o in venue_orders
            ],
            expected_balances=expected,
            venue_balances=venue_balances,
            tolerances=self._tolerances,
            expected_positions=self._desk.net_positions(),
            venue_positions=venue_positions,
            position_steps=self._position_steps,
            unbooked_fills=unbooked,
        )
        findings = audit.compare(facts)
        result = audit.outcome(findings, trigger=trigger, mismatch_before=self._mismatch_before)
        self._mismatch_before = any(f.kind in audit.MISMATCH for f in findings)
        return Report(
            exchange=self.exchange,
            trigger=trigger,
            outcome=result,
            summary=audit.summary(findings, result),
            findings=findings,
            fills_booked=booked,
            open_orders=sum(
                1 for o in venue_orders if o.client_order_id.startswith(CLIENT_ID_PREFIX)
            ),
            venue_balances=venue_balances,
            fill_watermark=watermark,
            baseline=baseline,
            at_us=self._clock_us(),
        )

    def _failed(self, trigger: Trigger, exc: Exception) -> Report:
        # Not verified: at start that locks (any doubt locks); while running the next run
        # tries again, and the report says why nothing was compared.
        result = Outcome.LOCKED if trigger is Trigger.STARTUP else Outcome.FAILED
        return Report(
            exchange=self.exchange,
            trigger=trigger,
            outcome=result,
            summary=f"{result.value}: the venue could not be read: {type(exc).__name__}: {exc}",
            at_us=self._clock_us(),
        )

    async def _conclude(self, report: Report) -> None:
        self.last = report
        self._next_us = self._clock_us() + self._interval_us
        log = logger.bind(EXCHANGE=self.exchange)
        try:
            await record_report(self._pool, report)
        except (asyncpg.PostgresError, OSError) as exc:
            log.error("{}: could not record the reconciliation report: {!r}", self.exchange, exc)
        if report.outcome is Outcome.LOCKED:
            await self._desk.lock(f"reconciliation ({report.trigger.value}): {report.summary}")
        elif report.outcome is Outcome.AUDITING:
            await self._put_under_audit(report)
        elif report.outcome is Outcome.MISMATCH:
            log.warning("{}: {} (seen once; the next run decides)", self.exchange, report.summary)
            if await self._state() is ExchangeState.AUDITING:
                # Already under audit: an unlock past this difference accepts the venue's word.
                self._audited = True
        elif report.outcome is Outcome.FOREIGN:
            log.warning("{}: {}", self.exchange, report.summary)
        else:
            log.log("INFO" if report.outcome is Outcome.CLEAN else "WARNING", "{}", report.summary)

    async def _state(self) -> ExchangeState | None:
        try:
            return await read_state(self._redis, self.exchange)
        except StateUnavailable:
            return None

    async def _put_under_audit(self, report: Report) -> None:
        reason = f"reconciliation ({report.trigger.value}): {report.summary}"
        state = await self._state()
        if state in (ExchangeState.AUDITING, ExchangeState.LOCKED) and self._audited:
            return
        if state is ExchangeState.AUDITING:
            self._audited = True
            return
        try:
            await transition(
                self._pool,
                self._redis,
                self.exchange,
                ExchangeState.AUDITING,
                operator=AUDITOR,
                reason=reason,
            )
            self._audited = True
        except IllegalTransition as exc:
            # Never bootstrapped, or bootstrapping: it cannot be audited; it must not trade.
            logger.bind(EXCHANGE=self.exchange).warning("{}: {}", self.exchange, exc)
            await self._desk.lock(reason)
