"""The executor: one actor per exchange account, the only holder of a venue's execution client.

Order path: a decision (a strategy's ``submit`` or the operator's) passes the local checks and
pre-trade risk, gets a client id, and is queued; the executor's loop reads the gate
(``may_trade``: HEALTHY and kill switch off) fresh, commits the queued intents already claimed
(SENDING: one statement, one commit per burst), sends each once (re-reading the gate before
every later one of the burst), and classifies the reply: ACK -> the venue's state and fills,
REJECTED -> REJECTED, anything else -> UNKNOWN. An UNKNOWN order blocks new orders on its
instrument and is resolved only by the venue's word (a pushed update, or a query by client id),
never by resending; not found after the order's deadline proves it was never placed.

On start, before trading, the ledger's non-terminal orders are reconciled with the venue: an
INTENT row was never claimed, hence never sent (NEVER_PLACED); SENDING, UNKNOWN and open orders
are queried by client id and take the venue's state and fills.

The kill switch (read at every send and watched) makes the executor deny at once and cancel
every open order it owns, verified with the venue.
"""

from __future__ import annotations

import asyncio
import itertools
import operator
import time
from collections import Counter, deque
from collections.abc import Awaitable, Callable, Collection, Mapping, Sequence
from decimal import ROUND_FLOOR, Decimal
from typing import Protocol, TypeVar

import msgspec
import redis.asyncio as aioredis
from loguru import logger

from tradingd.actors import next_batch
from tradingd.config import RiskConfig
from tradingd.execution import risk
from tradingd.execution.accounting import Book
from tradingd.execution.audit import OPEN_AT_VENUE, Report, Trigger
from tradingd.execution.auditing import Auditor, fill_record
from tradingd.execution.breaker import Breaker
from tradingd.execution.desk import (
    MANUAL_STRATEGY,
    CancelReport,
    ExecutorSnapshot,
    StrategyStatus,
)
from tradingd.execution.ledger import FillRow, Ledger, OrderRow, Transitioned
from tradingd.execution.orders import LIVE_STATES, OrderState
from tradingd.execution.records import Fill
from tradingd.execution.unknown_watch import UnknownWatch
from tradingd.execution.venue import (
    CancelAllResult,
    ExecutionClient,
    Outcome,
    PlaceRequest,
    VenueOrder,
)
from tradingd.metrics import LatencyHistogram, record_latencies
from tradingd.model import Bar, MarketEvent, Ticker, Trade, optional_decimal
from tradingd.queues import BoundedQueue
from tradingd.state import StateUnavailable, may_trade, read_kill_switch
from tradingd.strategies.api import (
    Accepted,
    Balance,
    Decision,
    Denied,
    FillView,
    InstrumentRules,
    OrderIntent,
    OrderType,
    OrderUpdate,
    OrderView,
    PositionView,
    Side,
    StrategyContext,
    SystemEvent,
    TimeInForce,
)
from tradingd.supervisor import ActorContext

S = OrderState
_T = TypeVar("_T")
# How long the venue may take to act on a request (Binance recvWindow, Deribit valid_until):
# an order not found after it was never placed.
SEND_WINDOW_US = 5_000_000
# Intents committed (and claimed) per transaction: the later ones of a burst must still be
# sent well inside the send window.
SEND_BURST = 100
# How often UNKNOWN orders are asked about, and the kill switch looked at, when nothing else
# wakes the loop (a schedule, not a wait for a condition).
POLL_INTERVAL = 0.5
_ID_RESERVE = 200
_instrument_name = operator.attrgetter("instrument_name")
_received_us = operator.attrgetter("received_us")

# Locks the executor's exchange with a reason: a recorded LOCKED transition (the daemon's wiring
# gives one that writes PostgreSQL's record and Redis's copy). Any doubt locks.
ExchangeLocker = Callable[[str], Awaitable[None]]


class StrategyHostLike(Protocol):
    """The part of ``tradingd.execution.strategy_host.StrategyHost`` the executor calls."""

    def names(self) -> list[str]: ...
    def start(self) -> None: ...
    def stop(self) -> None: ...
    def on_trades(self, trades: Sequence[Trade]) -> None: ...
    def on_bars(self, bars: Sequence[Bar]) -> None: ...
    def on_tickers(self, tickers: Sequence[Ticker]) -> None: ...
    def on_system_event(self, event: SystemEvent) -> None: ...
    def on_order(self, strategy: str, update: OrderUpdate) -> None: ...
    def on_fill(self, strategy: str, fill: FillView) -> None: ...
    def set_timer(self, strategy: str, name: str, interval_s: float, now_us: int) -> None: ...
    def fire_due_timers(self, now_us: int) -> None: ...
    def next_timer_due_us(self) -> int | None: ...
    def pause(self, name: str, reason: str) -> bool: ...
    def resume(self, name: str) -> bool: ...
    def is_paused(self, name: str) -> bool: ...
    def status(self) -> list[StrategyStatus]: ...


class _Market(msgspec.Struct):
    # The venue's text, kept as it comes (every trade passes here); read as Decimal on demand.
    last_price_text: str | None = None
    best_bid_text: str | None = None
    best_ask_text: str | None = None
    updated_us: int = 0

    @property
    def last_price(self) -> Decimal | None:
        return optional_decimal(self.last_price_text)

    @property
    def best_bid(self) -> Decimal | None:
        return optional_decimal(self.best_bid_text)

    @property
    def best_ask(self) -> Decimal | None:
        return optional_decimal(self.best_ask_text)


class AccountsView(msgspec.Struct, frozen=True, kw_only=True):
    positions: list[tuple[str, str, Decimal]]  # (strategy, instrument, signed quantity) non-zero
    balances: dict[str, Decimal]  # currency -> total
    realised: dict[str, dict[str, Decimal]]  # strategy -> currency -> gross realised PnL
    unrealised: dict[str, dict[str, Decimal]]  # strategy -> currency -> at the last trade


class _Queued(msgspec.Struct, frozen=True):
    client_order_id: str
    strategy: str
    intent: OrderIntent


async def _cancellable(read: Awaitable[_T]) -> _T:
    """``await read``, then honour a cancellation of this task that the Redis client swallowed
    (it happens when the cancel lands mid-command): the actor must stop when told to."""
    result = await read
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError
    return result


def _wall_clock_us() -> int:
    return time.time_ns() // 1000


class Executor:
    def __init__(
        self,
        exchange: str,
        *,
        mode: str,
        ledger: Ledger,
        venue: ExecutionClient,
        redis: aioredis.Redis,
        limits: RiskConfig,
        instruments: Mapping[str, risk.InstrumentInfo],
        market: BoundedQueue[MarketEvent] | None = None,
        open_gaps: Callable[[], Collection[str]] = frozenset,
        taker_fee: Decimal = Decimal(0),
        clock_us: Callable[[], int] = _wall_clock_us,
        lock_exchange: ExchangeLocker | None = None,
        breaker: Breaker | None = None,
    ) -> None:
        self.name = f"executor:{exchange}"
        self._lock_exchange = lock_exchange
        self.breaker = breaker
        self._breaker_since_us = 0
        # Why this executor locked its exchange ("" when it did not); new orders are denied at
        # once, before the recorded state reaches Redis.
        self.locked_reason = ""
        self._lock_recorded = False
        self.locked = asyncio.Event()  # set once it locked (tests await it)
        self._exchange = exchange
        self.mode = mode
        self._ledger = ledger
        self._venue = venue
        self._redis = redis
        self._limits = limits
        self._instruments = instruments
        self._market_queue = market
        self._open_gaps = open_gaps
        self._taker_fee = taker_fee
        self._clock_us = clock_us
        self.host: StrategyHostLike | None = None
        self._symbols: dict[str, tuple[str, ...]] = {}
        self._market: dict[str, _Market] = {}
        self._orders: dict[str, OrderRow] = {}  # every non-terminal order of this exchange
        # Positions and PnL: every fill of the ledger replayed (the accounting module's rules,
        # the same as `tradingd positions`). Balances: the venue's at start, plus every fill
        # since (the venue's balances already hold the earlier ones).
        self._book = Book()
        self._session = Book()
        self._ids: deque[str] = deque()
        self._queued: deque[_Queued] = deque()
        self._cancels: deque[str] = deque()
        self._updates: deque[VenueOrder] = deque()
        self._wake = asyncio.Event()
        self._lock = asyncio.Lock()
        self._rate = risk.OrderRate(limits.max_orders_per_second)
        self._unknown_watch = UnknownWatch(limits.unknown_order_limit)
        self._halted = ""  # why new orders are denied at once ("" when not)
        self._gate_seen = False
        self._pause_events: deque[tuple[str, str]] = deque()
        self._recorded: dict[str, asyncio.Future[None]] = {}
        self.denials: Counter[str] = Counter()
        # Since start, for the metrics: orders reaching each state, fills per instrument, the
        # venue's round trip of a place request, and each market record's age when the
        # strategies are handed it (microseconds).
        self.transitions: Counter[str] = Counter()
        self.fills: Counter[str] = Counter()
        self.place_latency = LatencyHistogram(f"executor.{exchange}.place_us")
        self.tick_latency = LatencyHistogram(f"executor.{exchange}.tick_to_strategy_us")
        self.reconciled = asyncio.Event()
        # The account's reconciliation with the venue (the wiring attaches it): at start before
        # any order is decided, then periodically, after reconnects and on demand.
        self.audit: Auditor | None = None
        # Set whenever no order is UNKNOWN and nothing is queued (tests and the bench await it).
        self.settled = asyncio.Event()
        # Set whenever every market event queued so far has been processed.
        self.market_idle = asyncio.Event()
        # Set at every order state change the executor applies (tests await it).
        self.changed = asyncio.Event()

    # -- OrderDesk -------------------------------------------------------------------------------

    @property
    def exchange(self) -> str:
        return self._exchange

    async def submit(self, strategy: str, intent: OrderIntent) -> Decision:
        """The operator's (or any awaiting caller's) submit: the gate is read before anything
        is written, and Accepted comes once the intent is committed."""
        if not await _cancellable(may_trade(self._redis, self._exchange)):
            return self._deny(strategy, intent, "gate: trading not allowed (state or kill switch)")
        self._halted = ""
        decision = self.decide(strategy, intent)
        if isinstance(decision, Accepted):
            recorded = asyncio.get_running_loop().create_future()
            self._recorded[decision.client_order_id] = recorded
            await recorded
        return decision

    async def cancel(self, client_order_id: str) -> Decision:
        if client_order_id not in self._orders:
            return Denied(f"not_open: {client_order_id} is not an open order of {self.exchange}")
        async with self._lock:
            await self._cancel_one(client_order_id)
        return Accepted(client_order_id)

    async def cancel_everything(self, reason: str, *, flatten: bool = False) -> CancelReport:
        """Deny new orders, cancel every open order in bulk, verify with the venue's open
        orders; ``flatten``: then close every position with reduce-only market orders."""
        self._halted = reason or "cancel everything"
        async with self._lock:
            targets = [c for c, r in self._orders.items() if r.state in LIVE_STATES]
            errors = await self._cancel_all_locked(self._halted)
            flattened = await self._flatten(errors) if flatten else []
            try:
                venue_open = len(await self._venue.open_orders())
            except Exception as exc:
                venue_open = -1
                errors.append(f"venue open orders unreadable: {exc!r}")
        remaining = sum(1 for c in targets if c in self._orders)
        net = self.snapshot().positions
        report = CancelReport(
            exchange=self.exchange,
            requested=len(targets),
            cancelled=len(targets) - remaining,
            remaining=remaining,
            errors=errors,
            venue_open=venue_open,
            flattened=flattened,
            positions=net,
        )
        logger.bind(EXCHANGE=self.exchange).warning("cancel everything ({}): {}", reason, report)
        return report

    def strategies(self) -> list[StrategyStatus]:
        manual = StrategyStatus(
            name=MANUAL_STRATEGY,
            strategy=MANUAL_STRATEGY,
            exchange=self.exchange,
            symbols=sorted(self._instruments),
            paused=False,
            reason="",
        )
        return [manual, *(self.host.status() if self.host is not None else [])]

    def pause_strategy(self, name: str, reason: str) -> bool:
        return self.host is not None and self.host.pause(name, reason)

    def resume_strategy(self, name: str) -> bool:
        return self.host is not None and self.host.resume(name)

    def snapshot(self) -> ExecutorSnapshot:
        net = self.net_positions()
        return ExecutorSnapshot(
            exchange=self.exchange,
            mode=self.mode,
            trading_allowed=self.trading_allowed_hint(),
            strategies=self.strategies(),
            open_orders=sum(1 for row in self._orders.values() if row.state is not S.UNKNOWN),
            unknown_orders=sum(1 for row in self._orders.values() if row.state is S.UNKNOWN),
            positions={name: str(qty) for name, qty in sorted(net.items()) if qty != 0},
            denials=dict(self.denials),
        )

    def orders_by_state(self) -> dict[str, int]:
        """Non-terminal orders by state, now."""
        return dict(Counter(row.state.value for row in self._orders.values()))

    def accounts(self) -> AccountsView:
        """Positions, balances and PnL as the fills say, marked at the last trade price."""
        marks = {
            name: market.last_price
            for name, market in self._market.items()
            if market.last_price is not None
        }
        strategies = self._book.strategies()
        return AccountsView(
            positions=[
                (strategy, p.instrument, p.quantity)
                for strategy, p in self._book.positions()
                if p.quantity != 0
            ],
            balances={c: b.total for c, b in self.balance_views().items()},
            realised={s: self._book.realised_pnl(s) for s in strategies},
            unrealised={s: self._book.unrealised_pnl(marks, s) for s in strategies},
        )

    # -- strategies' side ------------------------------------------------------------------------

    def attach_host(
        self, host: StrategyHostLike, symbols: Mapping[str, Sequence[str]] | None = None
    ) -> None:
        self.host = host
        for name, values in (symbols or {}).items():
            self._symbols[name] = tuple(values)

    def context_for(self, strategy: str, symbols: Sequence[str]) -> StrategyContext:
        self._symbols[strategy] = tuple(symbols)
        return ExecutorContext(self, strategy)

    def record_pause(self, strategy: str, reason: str) -> None:
        """The host paused a strategy (its callback raised): a system event, written by the
        executor's loop."""
        self._pause_events.append((strategy, reason))
        self._wake.set()

    def decide(self, strategy: str, intent: OrderIntent) -> Decision:
        """Local checks and pre-trade risk, synchronously: Accepted with a client id (the intent
        is committed and sent by the loop), or Denied with the rule's reason."""
        if self._halted:
            return self._deny(strategy, intent, f"halted: {self._halted}")
        if self.locked_reason:
            return self._deny(strategy, intent, f"locked: {self.locked_reason}")
        if not self.reconciled.is_set():
            return self._deny(strategy, intent, "reconciling: orders not yet reconciled")
        if self.host is not None and strategy != MANUAL_STRATEGY and self.host.is_paused(strategy):
            return self._deny(strategy, intent, f"paused: strategy {strategy} is paused")
        blocking = next(
            (
                row.client_order_id
                for row in self._orders.values()
                if row.state is S.UNKNOWN and row.instrument == intent.instrument
            ),
            None,
        )
        if blocking is not None:
            return self._deny(
                strategy, intent, f"unknown_order: {blocking} on {intent.instrument} unresolved"
            )
        info = self._instruments.get(intent.instrument)
        market = self._market.get(intent.instrument, _Market())
        now_us = self._clock_us()
        reason = risk.check(
            intent,
            info,
            risk.MarketView(
                last_price=market.last_price,
                best_bid=market.best_bid,
                best_ask=market.best_ask,
                updated_us=market.updated_us,
                gap_open=intent.instrument in self._open_gaps(),
            ),
            self._account(intent.instrument),
            self._limits,
            now_us=now_us,
            rate=self._rate,
            taker_fee=self._taker_fee,
        )
        if reason is not None:
            return self._deny(strategy, intent, reason)
        if not self._ids:
            return self._deny(strategy, intent, "busy: no client order id available yet")
        client_id = self._ids.popleft()
        self._rate.record(now_us)
        self._queued.append(_Queued(client_id, strategy, intent))
        self.settled.clear()
        self._wake.set()
        return Accepted(client_id)

    def request_cancel(self, strategy: str, client_order_id: str) -> Decision:
        row = self._orders.get(client_order_id)
        if row is None or row.strategy != strategy:
            return Denied(f"not_open: {client_order_id} is not an open order of {strategy}")
        self._cancels.append(client_order_id)
        self._wake.set()
        return Accepted(client_order_id)

    def open_order_views(self, strategy: str | None, instrument: str | None) -> list[OrderView]:
        return [
            row.view()
            for row in self._orders.values()
            if (strategy is None or row.strategy == strategy)
            and (instrument is None or row.instrument == instrument)
        ]

    def position_view(self, strategy: str, instrument: str) -> PositionView:
        return self._book.position(strategy, instrument)

    def balance_views(self) -> dict[str, Balance]:
        held = self._reserved()
        return {
            currency: Balance(currency=currency, total=total, free=total - held.get(currency, 0))
            for currency, total in self._session.balances().items()
        }

    def market(self, instrument: str) -> tuple[Decimal | None, Decimal | None, Decimal | None]:
        market = self._market.get(instrument, _Market())
        return market.last_price, market.best_bid, market.best_ask

    def rules(self, instrument: str) -> InstrumentRules | None:
        info = self._instruments.get(instrument)
        return info.rules if info is not None else None

    def trading_allowed_hint(self) -> bool:
        return self._gate_seen and not self._halted and not self.locked_reason

    async def lock(self, reason: str) -> None:
        """Lock the exchange with ``reason``: deny new orders at once and record LOCKED. Only
        ``tradingd unlock`` lifts it. A failure to record is logged; the local denial stays."""
        if not self.locked_reason:
            self.locked_reason = reason
            self.locked.set()
            logger.bind(EXCHANGE=self.exchange).critical("locking {}: {}", self.exchange, reason)
        if self._lock_exchange is None:
            return
        try:
            await self._lock_exchange(reason)
            self._lock_recorded = True
        except Exception as exc:
            logger.bind(EXCHANGE=self.exchange).error(
                "could not record LOCKED for {}: {!r}", self.exchange, exc
            )

    def now_us(self) -> int:
        return self._clock_us()

    # -- the circuit breaker (rules and record in tradingd.execution.breaker) --------------------

    def _venue_failed(self, *, banned: str) -> None:
        if self.breaker is not None:
            self.breaker.note_failure(self._clock_us(), banned=banned)
            self._wake.set()

    def _equity(self) -> dict[str, Decimal] | None:
        """Realised + unrealised - fees per currency; None while a position has no mark."""
        marks = {n: m.last_price for n, m in self._market.items() if m.last_price is not None}
        if self._book.unmarked(marks):
            return None
        realised = self._book.realised_pnl()
        unrealised = self._book.unrealised_pnl(marks)
        fees = self._book.fees()
        return {
            c: realised.get(c, Decimal(0)) + unrealised.get(c, Decimal(0)) - fees.get(c, Decimal(0))
            for c in realised.keys() | unrealised.keys() | fees.keys()
        }

    async def _check_breaker(self) -> None:
        if self.breaker is None or self.breaker.tripped is not None:
            return
        now_us = self._clock_us()
        # Data age counts from the check's start at the earliest: none has arrived at start.
        since = self._breaker_since_us
        ages = {
            row.instrument: (
                now_us - max(since, self._market.get(row.instrument, _Market()).updated_us)
            )
            / 1e6
            for row in self._orders.values()
            if row.state in LIVE_STATES
        }
        trip = await self.breaker.check(now_us, self._equity(), ages)
        if trip is not None:
            await self.lock(trip.reason)

    # -- the account's reconciliation (tradingd.execution.auditing) --------------------------

    async def reconcile(self) -> Report | None:
        """Reconcile the account with the venue now (``tradingd reconcile``); None when no
        auditor is attached."""
        if self.audit is None:
            return None
        async with self._lock:
            while self._updates:
                await self._apply(self._updates.popleft(), "venue:stream")
            return await self.audit.run(Trigger.ON_DEMAND)

    def ledger_orders(self) -> list[OrderRow]:
        return list(self._orders.values())

    def net_positions(self) -> dict[str, Decimal]:
        net: dict[str, Decimal] = {}
        for _strategy, position in self._book.positions():
            net[position.instrument] = net.get(position.instrument, Decimal(0)) + position.quantity
        return net

    def session_balances(self) -> dict[str, Decimal]:
        return self._session.balances()

    def rebase_balances(self, balances: Mapping[str, Decimal]) -> None:
        """The venue's balances as the new start; fills booked from now on add to them."""
        self._session = Book(balances)

    async def settle_orders(self, client_order_ids: list[str]) -> None:
        # Updates already received are left for the executor's loop: applied here, one could
        # end an order the venue's open-orders snapshot still lists (an "unknown order").
        for client_id in client_order_ids:
            row = self._orders.get(client_id)
            if row is None or row.state not in OPEN_AT_VENUE:
                continue
            answer = await self._venue.query(row.client_order_id, row.instrument)
            # Only the venue's word on the order counts; "not found" proves nothing about an
            # order it acknowledged (a wiped testnet account): that stays for the audit to report.
            if answer.outcome is Outcome.ACK and answer.order is not None:
                await self._apply(answer.order, "venue:query")

    async def book_fill(self, fill: Fill, source: str) -> bool:
        recorded = await self._ledger.record_fill(fill, source)
        if recorded is not None:
            fill_row, moved = recorded
            self._on_fill(fill_row)
            self._note(moved)
            return True
        return await self._ledger.has_fill(self.exchange, fill.trade_id)

    # -- the actor -------------------------------------------------------------------------------

    async def run(self, ctx: ActorContext) -> None:
        self.reconciled.clear()
        await self._venue.start()
        self._venue.subscribe(self._on_venue_update)
        self._book = Book()
        self._session = Book(await self._venue.balances())
        await self._replay_fills()
        await self._reconcile()
        if self.audit is not None:
            await self.audit.startup()
        await self._refill_ids()
        if self.breaker is not None:
            self._breaker_since_us = self._clock_us()
            status = await self.breaker.load(self._breaker_since_us)
            if status.tripped:
                await self.lock(status.reason)
        self.reconciled.set()
        ctx.ready()
        if self.host is not None:
            self.host.start()
        try:
            async with asyncio.TaskGroup() as group:
                if self._market_queue is not None:
                    group.create_task(self._consume_market(ctx))
                await self._work(ctx)
        finally:
            if self.host is not None:
                self.host.stop()
            await self._venue.close()

    async def _work(self, ctx: ActorContext) -> None:
        while True:
            ctx.checkin()
            async with self._lock:
                await self._watch_gate()
                await self._check_breaker()
                while self._updates:
                    await self._apply(self._updates.popleft(), "venue:stream")
                if self.audit is not None:
                    self.audit.on_gate(self._gate_seen)
                    if (trigger := self.audit.due()) is not None:
                        await self.audit.run(trigger)
                while self._queued:
                    await self._send_burst()
                while self._cancels:
                    client_id = self._cancels.popleft()
                    if client_id in self._orders:
                        await self._cancel_one(client_id)
                for row in [r for r in self._orders.values() if r.state is S.UNKNOWN]:
                    await self._resolve(row, "venue:query")
                await self._lock_on_doubt()
                while self._pause_events:
                    strategy, reason = self._pause_events.popleft()
                    await self._ledger.record_system_event(
                        "strategy_paused",
                        self.exchange,
                        None,
                        {"strategy": strategy, "reason": reason},
                    )
                if len(self._ids) < _ID_RESERVE:
                    await self._refill_ids()
            if self.host is not None:
                self.host.fire_due_timers(self._clock_us())
            if not self._queued and not any(r.state is S.UNKNOWN for r in self._orders.values()):
                self.settled.set()
            if self._updates or self._queued or self._cancels:
                continue
            self._wake.clear()
            try:
                await asyncio.wait_for(self._wake.wait(), self._poll_interval())
            except TimeoutError:
                pass

    async def _lock_on_doubt(self) -> None:
        """A fault the venue's client reports, or an order UNKNOWN past the limit, locks."""
        unknown = [
            (r.client_order_id, r.instrument) for r in self._orders.values() if r.state is S.UNKNOWN
        ]
        overdue = self._unknown_watch.overdue(unknown, self._clock_us())
        reason = self._venue.fault() or overdue
        if reason is not None and not self.locked_reason:
            await self.lock(reason)

    def _poll_interval(self) -> float:
        interval = POLL_INTERVAL
        if self.host is not None:
            due = self.host.next_timer_due_us()
            if due is not None:
                interval = min(interval, max(0.0, (due - self._clock_us()) / 1_000_000))
        return interval

    async def _consume_market(self, ctx: ActorContext) -> None:
        queue = self._market_queue
        assert queue is not None
        while True:
            batch = await next_batch(ctx, queue, 1000)
            if not batch:
                return
            trades, tickers, bars = self._note_market(batch)
            await self._venue.observe(trades, tickers)
            # Measured with or without strategies: the time to this point is the feed's.
            record_latencies(self.tick_latency, self._clock_us(), batch)
            if self.host is not None:
                if tickers:
                    self.host.on_tickers(tickers)
                if trades:
                    self.host.on_trades(trades)
                if bars:
                    self.host.on_bars(bars)
            if not len(queue):
                self.market_idle.set()

    def _note_market(
        self, batch: Sequence[MarketEvent]
    ) -> tuple[list[Trade], list[Ticker], list[Bar]]:
        """Split a batch of the feed by kind, and keep what the executor itself reads of it: per
        instrument, the last trade's price, the touch, and when data last arrived."""
        trades: list[Trade] = []
        tickers: list[Ticker] = []
        bars: list[Bar] = []
        markets = self._market
        for event in batch:
            kind = type(event)
            if kind is Trade:
                trades.append(event)  # type: ignore[arg-type]
            elif kind is Ticker:
                ticker: Ticker = event  # type: ignore[assignment]
                tickers.append(ticker)
                market = markets.get(ticker.instrument_name)
                if market is None:
                    market = markets[ticker.instrument_name] = _Market()
                market.best_bid_text = ticker.best_bid_price_text
                market.best_ask_text = ticker.best_ask_price_text
                if market.last_price_text is None:
                    market.last_price_text = ticker.last_price_text
                market.updated_us = max(market.updated_us, ticker.received_us)
            elif kind is Bar:
                bars.append(event)  # type: ignore[arg-type]
        if not trades:
            return trades, tickers, bars
        # Only each instrument's last trade sets its price (a ticker's price only stands in
        # until the first trade, wherever it comes in the batch): one update per instrument.
        names = list(map(_instrument_name, trades))
        received = list(map(_received_us, trades))
        if received == sorted(received):
            newest = dict(zip(names, received, strict=True))
        else:
            # Several connections' bursts, or the clock stepped back: the latest is not the last.
            newest = {}
            for name, at_us in zip(names, received, strict=True):
                if at_us > newest.get(name, at_us - 1):
                    newest[name] = at_us
        for name, trade in dict(zip(names, trades, strict=True)).items():
            market = markets.get(name)
            if market is None:
                market = markets[name] = _Market()
            market.last_price_text = trade.price_text
            market.updated_us = max(market.updated_us, newest[name])
        return trades, tickers, bars

    def _on_venue_update(self, order: VenueOrder) -> None:
        self._updates.append(order)
        self._wake.set()

    # -- sending ---------------------------------------------------------------------------------

    async def _send_burst(self) -> None:
        """Commit up to ``SEND_BURST`` queued intents, claimed for sending, in one statement and
        one transaction, then send them one by one; every send reads the gate again first."""
        # Left queued until recorded: decisions taken meanwhile still count them (open orders,
        # reserved balance).
        burst = list(itertools.islice(self._queued, SEND_BURST))
        entries = [(q.client_order_id, q.strategy, self.exchange, q.intent) for q in burst]
        refused = await self._send_refused()
        if refused:
            rows = await self._ledger.record_intents(entries)
        else:
            deadline_us = self._clock_us() + SEND_WINDOW_US
            rows = await self._ledger.record_sending(entries, deadline_us)
        for _ in burst:
            self._queued.popleft()
        for row in rows:
            self._orders[row.client_order_id] = row
            self._intent_recorded(row.client_order_id)
            if row.state is S.SENDING:
                self._note(Transitioned(row, S.INTENT))
        for row in rows:
            if refused:
                self.denials[refused.split(":")[0]] += 1
                await self._move(row.client_order_id, S.DENIED, "executor", reason=refused)
            else:
                await self._send(row, gate_just_read=row is rows[0])

    async def _send_refused(self) -> str:
        """Why nothing may be sent now ("" when it may): halted, locked, or the gate closed."""
        gate = await _cancellable(may_trade(self._redis, self.exchange))
        self._gate_seen = gate
        if self._halted:
            return f"halted: {self._halted}"
        if self.locked_reason:
            return f"locked: {self.locked_reason}"
        return "" if gate else "gate: trading not allowed"

    async def _send(self, row: OrderRow, *, gate_just_read: bool, gate: bool = True) -> None:
        """Send one order claimed for sending (SENDING, with its deadline). ``gate`` False only
        for the kill switch's flatten orders: closing is what was asked."""
        client_id = row.client_order_id
        # The first order of a burst goes right after the burst's own gate read and commit; a
        # later one re-reads the gate, since the sends before it took time.
        refused = "" if gate_just_read or not gate else await self._send_refused()
        if not refused and row.deadline_us is not None and self._clock_us() >= row.deadline_us:
            refused = "window: the send window passed before the send"
        if refused:
            # Claimed but provably never on the wire: this executor is its only sender.
            self.denials[refused.split(":")[0]] += 1
            await self._move(client_id, S.NEVER_PLACED, "executor", reason=f"not sent: {refused}")
            return
        request = PlaceRequest(
            client_order_id=client_id,
            instrument=row.instrument,
            side=row.side,
            type=row.type,
            tif=row.tif,
            quantity=row.quantity,
            price=row.price,
            reduce_only=row.reduce_only,
            deadline_us=row.deadline_us,
        )
        sent_ns = time.monotonic_ns()
        try:
            result = await self._venue.place(request)
            self.place_latency.record((time.monotonic_ns() - sent_ns) // 1000)
        except Exception as exc:  # whatever went wrong, the order may exist: ask, never resend
            logger.opt(exception=exc).error("order {}: place failed", client_id)
            self._venue_failed(banned="")
            await self._move(client_id, S.UNKNOWN, "executor", reason=f"place failed: {exc!r}")
            return
        if result.outcome is not Outcome.ACK:
            self._venue_failed(banned=result.reason if result.banned else "")
        if result.outcome is Outcome.ACK and result.order is not None:
            await self._apply(result.order, "venue:ack")
        elif result.outcome is Outcome.REJECTED:
            await self._move(client_id, S.REJECTED, "venue:ack", reason=result.reason)
        else:
            await self._move(client_id, S.UNKNOWN, "executor", reason=result.reason or "no reply")

    async def _cancel_one(self, client_id: str) -> None:
        if self._orders[client_id].state in (S.SENDING, S.UNKNOWN, S.INTENT):
            await self._resolve(self._orders[client_id], "venue:query")
        row = self._orders.get(client_id)
        if row is None or row.state not in (S.OPEN, S.PARTIALLY_FILLED, S.CANCEL_PENDING):
            return
        if row.state is not S.CANCEL_PENDING:
            await self._move(client_id, S.CANCEL_PENDING, "executor")
        result = await self._venue.cancel(client_id, row.instrument)
        if result.outcome is Outcome.ACK and result.order is not None:
            await self._apply(result.order, "venue:ack")
        elif result.outcome is Outcome.REJECTED:
            # Not terminal: the venue says why (filled meanwhile, or unknown): ask it.
            await self._resolve(self._orders[client_id], "venue:query")
        # UNKNOWN: stays CANCEL_PENDING; the venue's stream or the next query settles it.

    async def _resolve(self, row: OrderRow, source: str) -> None:
        """Ask the venue about one order and take its word; not found proves "never placed"
        only once the order's deadline has passed."""
        answer = await self._venue.query(row.client_order_id, row.instrument)
        if answer.outcome is not Outcome.ACK:
            if row.state is S.SENDING:
                # Claimed (a burst cut short by a stop, or a send before a crash) and the venue
                # cannot say yet: UNKNOWN, which blocks its instrument and is asked again.
                await self._move(
                    row.client_order_id,
                    S.UNKNOWN,
                    "executor",
                    reason=f"no answer to the query: {answer.reason or answer.outcome.value}",
                )
            return
        if answer.order is not None:
            await self._apply(answer.order, source)
            current = self._orders.get(row.client_order_id)
            if (
                current is not None
                and current.state is S.CANCEL_PENDING
                and (answer.order.state in (S.OPEN, S.PARTIALLY_FILLED))
            ):
                await self._move(row.client_order_id, answer.order.state, source)
            return
        deadline = row.deadline_us
        if row.state is S.INTENT or deadline is None or self._clock_us() > deadline:
            await self._move(
                row.client_order_id,
                S.NEVER_PLACED,
                source,
                reason="the venue has no such order after its deadline",
            )
        elif row.state is S.SENDING:
            await self._move(row.client_order_id, S.UNKNOWN, "executor", reason="not found yet")

    async def _apply(self, order: VenueOrder, source: str) -> None:
        """The venue's word on one order: its fills first (once each), then its state."""
        for fill in order.fills:
            recorded = await self._ledger.record_fill(fill, source)
            if recorded is not None:
                fill_row, moved = recorded
                self._on_fill(fill_row)
                self._note(moved)
        current = self._orders.get(order.client_order_id)
        if current is None:
            current = await self._ledger.order(order.client_order_id)
        if current is None or current.terminal:
            return
        wanted = order.state
        if wanted is current.state or wanted in (S.PARTIALLY_FILLED, S.FILLED):
            # Fills drive these states (recorded above); the same state is nothing new.
            return
        await self._move(
            order.client_order_id,
            wanted,
            source,
            reason=order.reason or None,
            venue_order_id=order.venue_order_id,
        )

    async def _move(
        self,
        client_id: str,
        wanted: OrderState,
        source: str,
        *,
        reason: str | None = None,
        venue_order_id: str | None = None,
    ) -> None:
        moved = await self._ledger.transition(
            client_id, wanted, source, reason=reason, venue_order_id=venue_order_id
        )
        if moved is not None:
            self._note(moved)

    def _note(self, moved: Transitioned) -> None:
        row = moved.order
        self.changed.set()
        self.transitions[row.state.value] += 1
        if row.terminal:
            self._orders.pop(row.client_order_id, None)
        else:
            self._orders[row.client_order_id] = row
        if self.host is not None and row.strategy != MANUAL_STRATEGY:
            self.host.on_order(
                row.strategy, OrderUpdate(order=row.view(), previous_state=moved.previous.value)
            )

    def _on_fill(self, fill: FillRow) -> None:
        self.fills[fill.instrument] += 1
        self._account_fill(fill)
        if self.host is not None and fill.strategy != MANUAL_STRATEGY:
            self.host.on_fill(fill.strategy, fill.view())

    # -- start-up --------------------------------------------------------------------------------

    async def _reconcile(self) -> None:
        rows = await self._ledger.open_orders(self.exchange)
        for row in rows:
            self._orders[row.client_order_id] = row
        for row in rows:
            if row.state is S.INTENT:
                # Never claimed, hence never sent: the claim is the only way to the venue.
                await self._move(
                    row.client_order_id,
                    S.NEVER_PLACED,
                    "reconcile",
                    reason="never sent: the daemon stopped before sending",
                )
            else:
                await self._resolve(row, "reconcile")
        logger.bind(EXCHANGE=self.exchange).info(
            "reconciled {} non-terminal orders with the venue: {} open, {} unknown",
            len(rows),
            sum(1 for r in self._orders.values() if r.state is not S.UNKNOWN),
            sum(1 for r in self._orders.values() if r.state is S.UNKNOWN),
        )

    async def _replay_fills(self) -> None:
        for fill in await self._ledger.fills(self.exchange):
            self._account_fill(fill, balances=False)

    async def _refill_ids(self) -> None:
        while len(self._ids) < 2 * _ID_RESERVE:
            self._ids.append(await self._ledger.mint_client_id())

    async def _watch_gate(self) -> None:
        try:
            switch = await _cancellable(read_kill_switch(self._redis))
        except StateUnavailable as exc:
            # Every send reads the gate too, and denies on this same doubt.
            logger.bind(EXCHANGE=self.exchange).warning("kill switch unreadable: {}", exc)
            self._gate_seen = False
            return
        self._gate_seen = await _cancellable(may_trade(self._redis, self.exchange))
        if self.locked_reason and self._lock_recorded and self._gate_seen:
            # Recorded LOCKED, and HEALTHY again since: an operator unlocked it.
            logger.bind(EXCHANGE=self.exchange).info("unlocked ({})", self.locked_reason)
            self.locked_reason = ""
            self.locked.clear()
            self._lock_recorded = False
            if self.breaker is not None:
                self.breaker.reset()
            if (kept := self._venue.lift_fault()) is not None:
                # The venue's own bar (a ban not yet over): locked again, saying why.
                await self.lock(kept)
        if switch is not None and not self._halted:
            self._halted = f"kill switch: {switch.reason}"
            for problem in await self._cancel_all_locked(self._halted):
                logger.bind(EXCHANGE=self.exchange).error("kill switch cancel: {}", problem)
        elif switch is None and self._halted:
            # The kill switch is the lasting stop; once it is off, orders may be decided again
            # (each send still reads the gate).
            logger.bind(EXCHANGE=self.exchange).info("no longer halted ({})", self._halted)
            self._halted = ""

    async def _cancel_all_locked(self, reason: str) -> list[str]:
        """The venue's bulk cancel, then its word on every order still live here: an order it
        still lists is cancelled one by one, any other is asked about (never assumed gone)."""
        await self._deny_queued(f"halted: {reason}")
        errors: list[str] = []
        try:
            bulk = await self._venue.cancel_all(None)
        except Exception as exc:  # the per-order path below still runs
            bulk = CancelAllResult(outcome=Outcome.UNKNOWN, reason=repr(exc))
        if bulk.outcome is not Outcome.ACK:
            errors.append(f"bulk cancel: {bulk.outcome.value} {bulk.reason}")
        for order in bulk.orders:
            await self._apply(order, "venue:ack")
        while self._updates:
            await self._apply(self._updates.popleft(), "venue:stream")
        try:
            listed: set[str] | None = {o.client_order_id for o in await self._venue.open_orders()}
        except Exception as exc:
            listed = None
            errors.append(f"venue open orders unreadable: {exc!r}")

        async def settle(client_id: str) -> None:
            row = self._orders.get(client_id)
            if row is None:
                return
            try:
                if listed is None or client_id in listed:
                    await self._cancel_one(client_id)
                else:
                    await self._resolve(row, "venue:query")
            except Exception as exc:  # one failure must not stop the others
                errors.append(f"{client_id}: {exc!r}")

        live = [c for c, r in self._orders.items() if r.state in LIVE_STATES]
        async with asyncio.TaskGroup() as group:
            for client_id in live:
                group.create_task(settle(client_id))
        return errors

    async def _flatten(self, errors: list[str]) -> list[str]:
        """Close every net position with a reduce-only market order through the ledger (the
        intent first). Neither the gate nor pre-trade risk applies: closing is what was asked."""
        net: dict[str, Decimal] = {}
        for _strategy, position in self._book.positions():
            net[position.instrument] = net.get(position.instrument, Decimal(0)) + position.quantity
        done: list[str] = []
        for instrument, quantity in sorted(net.items()):
            info = self._instruments.get(instrument)
            if quantity == 0 or info is None:
                if info is None and quantity != 0:
                    errors.append(f"flatten {instrument}: no instrument rules")
                continue
            size = (abs(quantity) / info.rules.step_size).to_integral_value(ROUND_FLOOR)
            size *= info.rules.step_size
            if size < info.rules.min_quantity:
                errors.append(f"flatten {instrument}: {quantity} is below the minimum quantity")
                continue
            intent = OrderIntent(
                instrument=instrument,
                side=Side.SELL if quantity > 0 else Side.BUY,
                quantity=size,
                type=OrderType.MARKET,
                tif=TimeInForce.IOC,
                reduce_only=True,
                tag="kill switch: flatten",
            )
            if not self._ids:
                await self._refill_ids()
            client_id = self._ids.popleft()
            (row,) = await self._ledger.record_sending(
                [(client_id, MANUAL_STRATEGY, self.exchange, intent)],
                self._clock_us() + SEND_WINDOW_US,
            )
            self._orders[client_id] = row
            self._note(Transitioned(row, S.INTENT))
            await self._send(row, gate_just_read=False, gate=False)
            final = self._orders.get(client_id) or await self._ledger.order(client_id)
            state = final.state.value if final is not None else "?"
            done.append(f"{intent.side.value} {size} {instrument} ({client_id}): {state}")
        return done

    async def _deny_queued(self, reason: str) -> None:
        while self._queued:
            queued = self._queued.popleft()
            row = await self._ledger.record_intent(
                queued.client_order_id, queued.strategy, self.exchange, queued.intent
            )
            self._orders[row.client_order_id] = row
            self._intent_recorded(row.client_order_id)
            await self._move(row.client_order_id, S.DENIED, "executor", reason=reason)

    def _intent_recorded(self, client_id: str) -> None:
        waiter = self._recorded.pop(client_id, None)
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    # -- accounts (risk's view; the accounting module gives the full books) -----------------------

    def _account(self, instrument: str) -> risk.AccountView:
        net = sum(
            (p.quantity for _s, p in self._book.positions() if p.instrument == instrument),
            Decimal(0),
        )
        held = self._reserved()
        free = {c: total - held.get(c, Decimal(0)) for c, total in self._session.balances().items()}
        return risk.AccountView(
            free=free, position=net, open_orders=len(self._orders) + len(self._queued)
        )

    def _reserved(self) -> dict[str, Decimal]:
        """What open orders, and accepted orders not yet sent, may still spend."""
        pending = [
            (q.intent.instrument, q.intent.side, q.intent.quantity, self._price_of(q.intent))
            for q in self._queued
        ]
        rows = [
            (row.instrument, row.side, row.quantity - row.filled_quantity, row.price)
            for row in self._orders.values()
        ]
        loads = []
        for instrument, side, remaining, price in rows + pending:
            info = self._instruments.get(instrument)
            if info is None or not info.spot:
                continue
            loads.append(
                risk.OpenOrderLoad(
                    side=side,
                    remaining=remaining,
                    price=price,
                    base=info.rules.base,
                    quote=info.rules.quote,
                )
            )
        return risk.reservations(loads)

    def _price_of(self, intent: OrderIntent) -> Decimal | None:
        market = self._market.get(intent.instrument, _Market())
        return risk.reference_price(
            intent,
            risk.MarketView(
                last_price=market.last_price, best_bid=market.best_bid, best_ask=market.best_ask
            ),
        )

    def _account_fill(self, fill: FillRow, *, balances: bool = True) -> None:
        record = fill_record(fill, self._instruments)
        self._book.apply(record)
        if balances:
            self._session.apply(record)

    def _deny(self, strategy: str, intent: OrderIntent, reason: str) -> Denied:
        self.denials[reason.split(":")[0]] += 1
        logger.bind(EXCHANGE=self.exchange).info(
            "denied {} {} {} {} for {}: {}",
            intent.side.value,
            intent.quantity,
            intent.instrument,
            intent.price if intent.price is not None else "market",
            strategy,
            reason,
        )
        return Denied(reason)


class ExecutorContext:
    """The real ``StrategyContext`` of one strategy: reads the executor, never awaits."""

    def __init__(self, executor: Executor, strategy: str) -> None:
        self._executor = executor
        self._strategy = strategy
        self._noticed: set[str] = set()

    @property
    def name(self) -> str:
        return self._strategy

    @property
    def exchange(self) -> str:
        return self._executor.exchange

    @property
    def symbols(self) -> tuple[str, ...]:
        return self._executor._symbols.get(self._strategy, ())

    def now_us(self) -> int:
        return self._executor.now_us()

    def trading_allowed(self) -> bool:
        host = self._executor.host
        paused = host is not None and host.is_paused(self._strategy)
        return self._executor.trading_allowed_hint() and not paused

    def instrument(self, name: str) -> InstrumentRules | None:
        return self._executor.rules(name)

    def last_price(self, instrument: str) -> Decimal | None:
        return self._executor.market(instrument)[0]

    def best_bid_ask(self, instrument: str) -> tuple[Decimal | None, Decimal | None]:
        _last, bid, ask = self._executor.market(instrument)
        return bid, ask

    def position(self, instrument: str) -> PositionView:
        return self._executor.position_view(self._strategy, instrument)

    def balances(self) -> Mapping[str, Balance]:
        return self._executor.balance_views()

    def open_orders(self, instrument: str | None = None) -> list[OrderView]:
        return self._executor.open_order_views(self._strategy, instrument)

    def submit(self, intent: OrderIntent) -> Decision:
        return self._executor.decide(self._strategy, intent)

    def cancel(self, client_order_id: str) -> Decision:
        return self._executor.request_cancel(self._strategy, client_order_id)

    def cancel_all(self, instrument: str | None = None) -> int:
        asked = 0
        for view in self._executor.open_order_views(self._strategy, instrument):
            if isinstance(
                self._executor.request_cancel(self._strategy, view.client_order_id), Accepted
            ):
                asked += 1
        return asked

    def set_timer(self, name: str, interval_s: float) -> None:
        host = self._executor.host
        if host is not None:
            host.set_timer(self._strategy, name, interval_s, self._executor.now_us())

    def notice(self, text: str) -> None:
        if text not in self._noticed:
            self._noticed.add(text)
            logger.bind(EXCHANGE=self._executor.exchange).warning(
                "strategy {}: {}", self._strategy, text
            )


__all__ = ["Executor", "ExecutorContext", "Fill", "StrategyHostLike"]
