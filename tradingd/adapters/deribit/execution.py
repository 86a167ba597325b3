"""Deribit behind the executor's ``ExecutionClient``: a thin layer over one authenticated
private session (``DeribitPrivateSession``), reopened after every disconnect, mapping the
venue's verdicts to the executor's outcomes.

* place sends our client id as ``label`` and the executor's deadline as ``valid_until`` (in
  venue time). The order in the answer is ACK; a definitive rejection, 13888 ``timed_out``
  or a request refused before processing (credits, maintenance, credentials, or no session:
  nothing sent) is REJECTED; a timeout or a cut connection is UNKNOWN and never resent.
* query asks ``get_order_state_by_label``: no order under the label is absence (ACK with no
  order) only once the place request's ``valid_until`` has passed; two orders under one
  label is a FAULT (UNKNOWN here, with the reason, and ``fault_reason`` set).
* fills come from ``user.trades`` (and the place answer's trades, and the trade history for a
  query), keyed by the venue's trade id; a trade heard before the acknowledgement is
  delivered at once.
* every new session catches up by query (every order placed and not seen final) before it
  sends anything: cancel-on-disconnect killed the resting ones with the old connection.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable, Sequence
from decimal import Decimal
from typing import Final, TypeVar

import aiohttp
from loguru import logger

from tradingd.adapters.base import RateLimited
from tradingd.adapters.deribit import trading
from tradingd.adapters.deribit.private import DeribitPrivateSession, PlaceAnswer
from tradingd.adapters.trading import Classified, Verdict
from tradingd.backoff import backoff_delay
from tradingd.execution.orders import OrderState
from tradingd.execution.records import Fill
from tradingd.execution.venue import (
    CancelAllResult,
    CancelResult,
    Outcome,
    PlaceRequest,
    PlaceResult,
    QueryResult,
    VenueOrder,
    VenueUpdateSink,
)
from tradingd.model import Ticker, Trade
from tradingd.strategies.api import OrderType, Side, TimeInForce

S = OrderState
_T = TypeVar("_T")
# Reads refused for credits (10028, which also ends the session) are asked again after the
# venue's pause, on the next session, this many times in all: a read changes nothing at the
# venue, and a restart's burst of reads (reconciliation) must not lock the exchange for a pause
# the venue asked for. Orders are never retried this way.
READ_ATTEMPTS: Final = 3
# The venue's order state -> the executor's (the one table); "open" with fills is partial.
STATES: Final[dict[trading.OrderState, OrderState]] = {
    "open": S.OPEN,
    "untriggered": S.OPEN,
    "triggered": S.OPEN,
    "filled": S.FILLED,
    "cancelled": S.CANCELED,
    "rejected": S.REJECTED,
}
# Refused before any processing (or a definitive no): nothing exists because of the request.
NOT_PROCESSED: Final = frozenset(
    {
        Verdict.REJECTED,
        Verdict.RATE_LIMITED,
        Verdict.MAINTENANCE,
        Verdict.AUTH_FAILED,
        Verdict.BANNED,
    }
)
_DIRECTIONS: Final[dict[Side, trading.Direction]] = {Side.BUY: "buy", Side.SELL: "sell"}
_TIFS: Final[dict[TimeInForce, trading.TimeInForce]] = {
    TimeInForce.GTC: "good_til_cancelled",
    TimeInForce.IOC: "immediate_or_cancel",
    TimeInForce.FOK: "fill_or_kill",
}
DEFAULT_VALID_FOR_MS: Final = 5000
# Rounds of queries a catch-up makes for orders the venue did not answer about.
CATCH_UP_ROUNDS: Final = 5


def currency_of(instrument: str) -> str:
    """The currency Deribit files an instrument under: BTC-PERPETUAL -> BTC, the linear
    BTC_USDC-PERPETUAL -> USDC."""
    underlying = instrument.split("-", 1)[0]
    return underlying.split("_", 1)[1] if "_" in underlying else underlying


def trade_fill(trade: trading.UserTrade) -> Fill:
    return Fill(
        client_order_id=trade.label,
        trade_id=trade.trade_id,
        quantity=trade.amount,
        price=trade.price,
        fee=trade.fee,
        fee_currency=trade.fee_currency,
        liquidity="maker" if trade.maker else "taker",
        at_us=trade.at_us,
    )


def venue_order(order: trading.Order, trades: Sequence[trading.UserTrade] = ()) -> VenueOrder:
    state = STATES[order.state]
    if state is S.OPEN and order.filled_amount > 0:
        state = S.PARTIALLY_FILLED
    return VenueOrder(
        client_order_id=order.label,
        venue_order_id=order.order_id,
        state=state,
        filled_quantity=order.filled_amount,
        fills=[trade_fill(t) for t in trades if t.order_id == order.order_id],
        reason=order.cancel_reason if state is S.CANCELED else "",
    )


def trade_update(trade: trading.UserTrade) -> VenueOrder:
    """A trade heard on ``user.trades``: the executor records the fill and lets fills drive
    the order's state (a partial/filled state it takes from fills, never from here)."""
    return VenueOrder(
        client_order_id=trade.label,
        venue_order_id=trade.order_id,
        state=S.PARTIALLY_FILLED,
        filled_quantity=trade.amount,
        fills=[trade_fill(trade)],
    )


class DeribitExecution:
    """``ExecutionClient`` for one Deribit account."""

    def __init__(
        self,
        exchange: str,
        http: aiohttp.ClientSession,
        ws_url: str,
        client_id: str,
        client_secret: str,
        *,
        currencies: Sequence[str],
        request_timeout: float = 5.0,
        connect_within: float = 10.0,
        valid_for_ms: int = DEFAULT_VALID_FOR_MS,
        reconnect_initial: float = 0.1,
        reconnect_max: float = 5.0,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._exchange = exchange
        self._http = http
        self._ws_url = ws_url
        self._credentials = (client_id, client_secret)
        self._currencies = list(currencies)
        self._request_timeout = request_timeout
        self._connect_within = connect_within
        self._valid_for_ms = valid_for_ms
        self._reconnect = (reconnect_initial, reconnect_max)
        self._monotonic = monotonic
        self._sink: VenueUpdateSink | None = None
        self._task: asyncio.Task[None] | None = None
        self._session: DeribitPrivateSession | None = None
        # Set once a session is open and caught up; cleared while it is down.
        self.ready = asyncio.Event()
        self.connections = 0
        self.fault_reason: str | None = None
        self._placed: dict[str, PlaceAnswer] = {}
        self._live: dict[str, str] = {}  # client id -> instrument, until seen final
        self._order_ids: dict[str, str] = {}  # client id -> venue order id
        self._trades: dict[str, dict[str, trading.UserTrade]] = {}  # currency -> id -> trade
        self._trade_cursor: dict[str, str] = {}
        self._rng = random.Random()

    @property
    def exchange(self) -> str:
        return self._exchange

    def subscribe(self, sink: VenueUpdateSink) -> None:
        self._sink = sink

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="deribit-private-session")
        try:
            async with asyncio.timeout(self._connect_within):
                await self.ready.wait()
        except TimeoutError:
            pass  # keeps trying; until then every order is refused unsent

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None

    # --- requests ---------------------------------------------------------------------------

    async def _ready_session(self) -> DeribitPrivateSession | None:
        if not self.ready.is_set():
            try:
                async with asyncio.timeout(self._connect_within):
                    await self.ready.wait()
            except TimeoutError:
                return None
        return self._session

    async def place(self, request: PlaceRequest) -> PlaceResult:
        session = await self._ready_session()
        if session is None:
            return PlaceResult(outcome=Outcome.REJECTED, reason="no Deribit session: not sent")
        if request.deadline_us is not None:
            valid_until_ms = request.deadline_us // 1000 + session.clock_offset_ms
        else:
            valid_until_ms = session.venue_now_ms() + self._valid_for_ms
        self._live[request.client_order_id] = request.instrument
        answer = await session.place(
            direction=_DIRECTIONS[request.side], instrument_name=request.instrument,
            amount=request.quantity, label=request.client_order_id,
            valid_until_ms=valid_until_ms,
            order_type="market" if request.type is OrderType.MARKET else "limit",
            price=request.price if request.type is OrderType.LIMIT else None,
            time_in_force=_TIFS[request.tif], reduce_only=request.reduce_only,
        )  # fmt: skip
        self._placed[request.client_order_id] = answer
        if answer.placed is not None:
            order = venue_order(answer.placed.order, answer.placed.trades)
            self._remember(order)
            return PlaceResult(outcome=Outcome.ACK, order=order)
        failure = answer.failure
        assert failure is not None
        if failure.verdict in NOT_PROCESSED:
            self._live.pop(request.client_order_id, None)
            return PlaceResult(
                outcome=Outcome.REJECTED,
                reason=failure.reason,
                banned=failure.verdict is Verdict.BANNED,
            )
        return PlaceResult(outcome=Outcome.UNKNOWN, reason=failure.reason)

    async def cancel_all(self, instrument: str | None = None) -> CancelAllResult:
        """``private/cancel_all`` (``cancel_all_by_instrument``): the venue answers a count; the
        executor verifies by open orders and queries, and the ``user.orders`` channel tells."""
        session = await self._ready_session()
        if session is None:
            return CancelAllResult(outcome=Outcome.UNKNOWN, reason="no Deribit session")
        answer = await session.cancel_all(instrument)
        if isinstance(answer, Classified):
            return CancelAllResult(outcome=Outcome.UNKNOWN, reason=answer.reason)
        return CancelAllResult(outcome=Outcome.ACK, reason=f"{answer} cancelled")

    async def cancel(self, client_order_id: str, instrument: str) -> CancelResult:
        session = await self._ready_session()
        if session is None:
            return CancelResult(outcome=Outcome.UNKNOWN, reason="no Deribit session")
        order_id = self._order_ids.get(client_order_id)
        if order_id is None:
            found = await session.order_by_label(currency_of(instrument), client_order_id)
            if not isinstance(found, trading.Order):
                # Not there (yet), or no answer: the executor asks by query.
                reason = found.reason if isinstance(found, Classified) else "no such order"
                return CancelResult(outcome=Outcome.REJECTED, reason=reason)
            order_id = found.order_id
        answer = await session.cancel(order_id)
        if isinstance(answer, trading.Order):
            order = await self._with_fills(session, answer)
            if order is None:
                return CancelResult(outcome=Outcome.UNKNOWN, reason="cancelled; fills unknown")
            return CancelResult(outcome=Outcome.ACK, order=order)
        if answer.verdict in (Verdict.REJECTED, Verdict.NOT_FOUND):
            return CancelResult(outcome=Outcome.REJECTED, reason=answer.reason)
        return CancelResult(outcome=Outcome.UNKNOWN, reason=answer.reason)

    async def query(self, client_order_id: str, instrument: str) -> QueryResult:
        session = await self._ready_session()
        if session is None:
            return QueryResult(outcome=Outcome.UNKNOWN, reason="no Deribit session")
        return await self._query(session, client_order_id, instrument)

    async def _query(
        self, session: DeribitPrivateSession, client_order_id: str, instrument: str
    ) -> QueryResult:
        found = await session.order_by_label(currency_of(instrument), client_order_id)
        if isinstance(found, trading.Order):
            order = await self._with_fills(session, found)
            if order is None:
                return QueryResult(outcome=Outcome.UNKNOWN, reason="order found; fills unknown")
            return QueryResult(outcome=Outcome.ACK, order=order)
        if isinstance(found, Classified):
            if found.verdict is Verdict.FAULT:
                self.fault_reason = f"label {client_order_id}: {found.reason}"
                return QueryResult(outcome=Outcome.UNKNOWN, reason=f"FAULT: {found.reason}")
            return QueryResult(outcome=Outcome.UNKNOWN, reason=found.reason)
        placed = self._placed.get(client_order_id)
        if placed is not None and not session.expired(placed):
            return QueryResult(outcome=Outcome.UNKNOWN, reason="not found before valid_until")
        self._live.pop(client_order_id, None)
        return QueryResult(outcome=Outcome.ACK, order=None)

    async def open_orders(self) -> list[VenueOrder]:
        result = []
        for currency in self._currencies:
            orders = await self._read(DeribitPrivateSession.open_orders, currency, "open orders")
            session = await self._ready_session()
            if session is None:
                raise ConnectionError("no Deribit session")
            for order in orders:
                if not order.label:
                    continue  # not sent by us (a label is our client id)
                with_fills = await self._with_fills(session, order)
                if with_fills is None:
                    raise ConnectionError(f"Deribit trades of {order.label}: unavailable")
                self._live[order.label] = order.instrument_name
                result.append(with_fills)
        return result

    async def balances(self) -> dict[str, Decimal]:
        balances = {}
        for currency in self._currencies:
            summary = await self._read(DeribitPrivateSession.account_summary, currency, "account")
            balances[currency] = summary.balance
        return balances

    async def _read(
        self,
        request: Callable[[DeribitPrivateSession, str], Awaitable[_T | Classified]],
        currency: str,
        what: str,
    ) -> _T:
        """One read on the ready session; refused for credits, asked again (``READ_ATTEMPTS``)
        after the venue's pause. Anything else unanswered raises ``ConnectionError``."""
        for attempt in range(1, READ_ATTEMPTS + 1):
            session = await self._ready_session()
            if session is None:
                raise ConnectionError("no Deribit session")
            answer = await request(session, currency)
            if not isinstance(answer, Classified):
                return answer
            if answer.verdict is not Verdict.RATE_LIMITED or attempt == READ_ATTEMPTS:
                raise ConnectionError(f"Deribit {what} {currency}: {answer.reason}")
            # The venue's own pause before asking again (a scheduled retry, not a condition).
            await asyncio.sleep(answer.retry_after or 1.0)
        raise AssertionError("unreachable")

    async def observe(self, trades: Sequence[Trade], tickers: Sequence[Ticker]) -> None:
        return None

    def fault(self) -> str | None:
        """Latched by a query that found two orders under one label."""
        return None if self.fault_reason is None else f"Deribit: {self.fault_reason}"

    def lift_fault(self) -> str | None:
        """Two orders under one label stay a fault until a restart has reconciled them."""
        return self.fault()

    async def positions(self) -> dict[str, Decimal]:
        held: dict[str, Decimal] = {}
        for currency in self._currencies:
            positions = await self._read(DeribitPrivateSession.positions, currency, "positions")
            held.update({p.instrument_name: p.size for p in positions if p.size != 0})
        return held

    async def fills_since(self, instruments: Sequence[str], since_us: int) -> list[Fill]:
        wanted = set(instruments)
        fills: list[Fill] = []
        for currency in sorted({currency_of(name) for name in wanted}):
            known = self._trades.setdefault(currency, {})
            while True:
                page = await self._read(self._next_trades_page, currency, "trades")
                fresh = [t for t in page.trades if t.trade_id not in known]
                for trade in page.trades:
                    known[trade.trade_id] = trade
                if page.trades:
                    self._trade_cursor[currency] = page.trades[-1].trade_id
                if not fresh and not page.has_more:
                    break
            fills.extend(
                trade_fill(t)
                for t in known.values()
                if t.instrument_name in wanted and t.at_us >= since_us
            )
        return sorted(fills, key=lambda f: f.at_us)

    def _next_trades_page(
        self, session: DeribitPrivateSession, currency: str
    ) -> Awaitable[trading.TradesPage | Classified]:
        return session.user_trades(currency, self._trade_cursor.get(currency))

    def connection_epoch(self) -> int:
        return self.connections

    # --- fills by query ---------------------------------------------------------------------

    async def _with_fills(
        self, session: DeribitPrivateSession, order: trading.Order
    ) -> VenueOrder | None:
        """The order with every fill the trade history has of it (None: no answer)."""
        currency = currency_of(order.instrument_name)
        known = self._trades.setdefault(currency, {})
        while True:
            mine = [t for t in known.values() if t.order_id == order.order_id]
            if sum((t.amount for t in mine), Decimal(0)) >= order.filled_amount:
                break
            page = await session.user_trades(currency, self._trade_cursor.get(currency))
            if isinstance(page, Classified):
                return None
            fresh = [t for t in page.trades if t.trade_id not in known]
            for trade in page.trades:
                known[trade.trade_id] = trade
            if page.trades:
                self._trade_cursor[currency] = page.trades[-1].trade_id
            if not fresh and not page.has_more:
                break  # the history lags the order: what it has so far
        venue = venue_order(order, mine)
        self._remember(venue)
        return venue

    def _remember(self, order: VenueOrder) -> None:
        self._order_ids[order.client_order_id] = order.venue_order_id
        if order.state in (S.FILLED, S.CANCELED, S.REJECTED):
            self._live.pop(order.client_order_id, None)

    # --- the session ------------------------------------------------------------------------

    def _deliver(self, order: VenueOrder) -> None:
        if not order.client_order_id:
            return  # not ours
        self._remember(order)
        if self._sink is not None:
            self._sink(order)

    def _on_update(self, update: trading.UserUpdate) -> None:
        if isinstance(update, trading.OrdersUpdate):
            for order in update.orders:
                self._deliver(venue_order(order))
        elif isinstance(update, trading.TradesUpdate):
            for trade in update.trades:
                self._trades.setdefault(currency_of(trade.instrument_name), {})[trade.trade_id] = (
                    trade
                )
                self._deliver(trade_update(trade))

    async def _run(self) -> None:
        attempt = 0
        client_id, client_secret = self._credentials
        while True:
            try:
                async with DeribitPrivateSession.open(
                    self._http, self._ws_url, client_id, client_secret,
                    currencies=self._currencies, request_timeout=self._request_timeout,
                ) as session:  # fmt: skip
                    attempt = 0
                    self.connections += 1
                    self._session = session
                    await self._catch_up(session)
                    self.ready.set()
                    async for update in session.updates():
                        self._on_update(update)
            except RateLimited as limited:
                # The venue ended the session for credits: reconnecting sooner drains them again.
                self._down()
                await asyncio.sleep(limited.retry_after)
                continue
            except (ConnectionError, aiohttp.ClientError, TimeoutError):
                pass
            self._down()
            attempt += 1
            # A scheduled retry (the one backoff rule), not a wait for a condition.
            await asyncio.sleep(backoff_delay(attempt, *self._reconnect, self._rng))

    def _down(self) -> None:
        self.ready.clear()
        self._session = None

    async def _catch_up(self, session: DeribitPrivateSession) -> None:
        """What the channels may have missed while down: the venue's word on every order
        placed and not seen final (cancel-on-disconnect ended the resting ones). An order the
        venue did not answer for is asked again (backoff), ``CATCH_UP_ROUNDS`` times at most."""
        pending = dict(self._live)
        for attempt in range(1, CATCH_UP_ROUNDS + 1):
            for client_id, instrument in list(pending.items()):
                answer = await self._query(session, client_id, instrument)
                if answer.outcome is Outcome.ACK:
                    del pending[client_id]
                    if answer.order is not None:
                        self._deliver(answer.order)
            if not pending:
                return
            # A scheduled retry (the one backoff rule), not a wait for a condition.
            await asyncio.sleep(backoff_delay(attempt, *self._reconnect, self._rng))
        logger.warning("{}: catch-up left unanswered: {}", self._exchange, sorted(pending))
