"""Binance spot behind the executor's ``ExecutionClient``: a thin layer over the private REST
client and the user-data stream, mapping the venue's verdicts to the executor's outcomes.

* place: a 200 is ACK; a definitive rejection (or a request refused before processing: 429,
  418, credentials) is REJECTED; everything else, ``-2010 "Duplicate order sent."`` included
  (the client id is already live: our order exists), is UNKNOWN and never resent.
* query: ``-2013`` is absence (ACK with no order) only once the place request's deadline
  (recvWindow) has passed; before it, or for an id whose place this client did not see
  answered in time, the executor's own deadline decides (UNKNOWN until then from here).
* fills are keyed by the venue's trade id qualified by its symbol (``BTCUSDT:5000001``: Binance
  numbers trades per symbol, and the ledger keeps one fill per id per exchange): the place
  response's fills, the stream's ``executionReport`` trades and ``myTrades`` (for a query) name
  the same fill the same way, so duplicates are harmless; a fill heard before the
  acknowledgement is delivered at once.
* the user stream is owned by ``start``/``close``: it reconnects with backoff and, after every
  reconnect, catches up by query (every order this client placed and has not seen final)
  before delivering anything new.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Sequence
from decimal import Decimal
from typing import Final

import aiohttp
from loguru import logger

from tradingd.adapters.base import ParseError
from tradingd.adapters.binance import trading
from tradingd.adapters.binance.execution_parsing import (
    AccountTrade,
    ExecutionReport,
    Order,
    OrderStatus,
)
from tradingd.adapters.binance.execution_parsing import Fill as WireFill
from tradingd.adapters.binance.private import Answer, BinancePrivateClient, UserStream
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
# The venue's order status -> the executor's order state (the one table).
STATES: Final[dict[OrderStatus, OrderState]] = {
    "NEW": S.OPEN,
    "PENDING_NEW": S.OPEN,
    "PARTIALLY_FILLED": S.PARTIALLY_FILLED,
    "FILLED": S.FILLED,
    "PENDING_CANCEL": S.OPEN,
    "CANCELED": S.CANCELED,
    "EXPIRED": S.CANCELED,
    "EXPIRED_IN_MATCH": S.CANCELED,
    "REJECTED": S.REJECTED,
}
# Refused before any processing: nothing exists on the venue because of the request.
NOT_PROCESSED: Final = frozenset(
    {Verdict.REJECTED, Verdict.RATE_LIMITED, Verdict.BANNED, Verdict.AUTH_FAILED}
)
# Rounds of queries a catch-up makes for orders the venue did not answer about.
CATCH_UP_ROUNDS: Final = 5
_SIDES: Final[dict[Side, trading.Side]] = {Side.BUY: "BUY", Side.SELL: "SELL"}
_TIFS: Final[dict[TimeInForce, trading.TimeInForce]] = {
    TimeInForce.GTC: "GTC",
    TimeInForce.IOC: "IOC",
    TimeInForce.FOK: "FOK",
}


def order_type(request: PlaceRequest) -> tuple[trading.OrderType, trading.TimeInForce | None]:
    if request.type is OrderType.MARKET:
        return "MARKET", None
    return "LIMIT", _TIFS[request.tif]


def fill_id(symbol: str, trade_id: int) -> str:
    """A fill's id in the ledger: trade ids repeat across symbols (one sequence per symbol)."""
    return f"{symbol}:{trade_id}"


def wire_fill(
    client_order_id: str, symbol: str, fill: WireFill, at_us: int, *, maker: bool
) -> Fill:
    return Fill(
        client_order_id=client_order_id,
        trade_id=fill_id(symbol, fill.trade_id),
        quantity=fill.quantity,
        price=fill.price,
        fee=fill.commission,
        fee_currency=fill.commission_asset,
        liquidity="maker" if maker else "taker",
        at_us=fill.at_us if fill.at_us is not None else at_us,
    )


def account_fill(client_order_id: str, trade: AccountTrade) -> Fill:
    return Fill(
        client_order_id=client_order_id,
        trade_id=fill_id(trade.symbol, trade.trade_id),
        quantity=trade.quantity,
        price=trade.price,
        fee=trade.commission,
        fee_currency=trade.commission_asset,
        liquidity="maker" if trade.maker else "taker",
        at_us=trade.at_us,
    )


def venue_order(order: Order, fills: Sequence[Fill] | None = None, at_us: int = 0) -> VenueOrder:
    """A REST answer -> the venue's word. An ACK-type answer (no status) means it is live.
    The fills of a new order's FULL answer are taker fills (matched as it arrived)."""
    own = [
        wire_fill(order.client_order_id, order.symbol, f, at_us, maker=bool(f.maker))
        for f in order.fills
    ]
    return VenueOrder(
        client_order_id=order.client_order_id,
        venue_order_id=str(order.order_id),
        state=S.OPEN if order.status is None else STATES[order.status],
        filled_quantity=order.executed_quantity,
        fills=list(fills) if fills is not None else own,
    )


def report_order(report: ExecutionReport) -> VenueOrder:
    """One ``executionReport`` -> the venue's word (its trade, if any, as the one fill)."""
    fills = []
    if report.fill is not None and report.execution_type == "TRADE":
        maker = bool(report.fill.maker)
        fills.append(
            wire_fill(
                report.client_order_id, report.symbol, report.fill, report.event_us, maker=maker
            )
        )
    return VenueOrder(
        client_order_id=report.client_order_id,
        venue_order_id=str(report.order_id),
        state=STATES[report.status],
        filled_quantity=report.cumulative_quantity,
        fills=fills,
        reason=report.reject_reason if report.reject_reason not in ("", "NONE") else "",
    )


class BinanceExecution:
    """``ExecutionClient`` for one Binance spot account."""

    def __init__(
        self,
        exchange: str,
        http: aiohttp.ClientSession,
        private: BinancePrivateClient,
        ws_api_url: str,
        *,
        reply_within: float = 10.0,
        connect_within: float = 10.0,
        reconnect_initial: float = 0.1,
        reconnect_max: float = 5.0,
    ) -> None:
        self._exchange = exchange
        self._http = http
        self.private = private
        self._ws_api_url = ws_api_url
        self._reply_within = reply_within
        self._connect_within = connect_within
        self._reconnect = (reconnect_initial, reconnect_max)
        self._sink: VenueUpdateSink | None = None
        self._stream_task: asyncio.Task[None] | None = None
        self._stream: UserStream | None = None
        # Place answers by client id (their deadline), and the instrument of each order we
        # placed until we have seen it final: the catch-up after a reconnect asks about these.
        self._placed: dict[str, Answer] = {}
        self._live: dict[str, str] = {}
        self._trade_cursor: dict[str, int] = {}
        self._fills_by_order: dict[int, list[AccountTrade]] = {}
        self._client_ids: dict[int, str] = {}  # venue order id -> client id (fills_since)
        self.stream_connected = asyncio.Event()
        self.stream_connections = 0
        self.caught_up = asyncio.Event()
        self._rng = random.Random()

    @property
    def exchange(self) -> str:
        return self._exchange

    def subscribe(self, sink: VenueUpdateSink) -> None:
        self._sink = sink

    async def start(self) -> None:
        try:
            await self.private.sync_clock()
        except (aiohttp.ClientError, TimeoutError, ParseError) as exc:
            # Signed with our own clock meanwhile: a -1021 answer resynchronises and resends.
            logger.warning("{}: venue clock not measured: {!r}", self._exchange, exc)
        try:
            limits = await self.private.load_rate_limits()
            logger.info("{}: rate limits {}", self._exchange, limits)
        except (aiohttp.ClientError, TimeoutError, ParseError) as exc:
            logger.warning(
                "{}: rate limits not read ({!r}): the documented defaults {} hold",
                self._exchange, exc, self.private.rate_limits,
            )  # fmt: skip
        counts = await self.private.load_order_counts()
        if isinstance(counts, Classified):
            # Our own count starts from zero: the venue's answers to orders correct it.
            logger.warning("{}: order counts not read: {}", self._exchange, counts.reason)
        self._stream_task = asyncio.create_task(self._run_stream(), name="binance-user-stream")
        await self._stream_ready()

    async def _stream_ready(self) -> bool:
        """Whether the user stream is up and caught up (waited for, within a bound)."""
        try:
            async with asyncio.timeout(self._connect_within):
                await self.caught_up.wait()
        except TimeoutError:
            return False
        return True

    async def close(self) -> None:
        if self._stream_task is not None:
            self._stream_task.cancel()
            await asyncio.gather(self._stream_task, return_exceptions=True)
            self._stream_task = None
        if self._stream is not None:
            await self._stream.close()

    # --- requests ---------------------------------------------------------------------------

    async def place(self, request: PlaceRequest) -> PlaceResult:
        if not await self._stream_ready():
            # Without the stream (or before its catch-up) we would not hear of the order.
            return PlaceResult(outcome=Outcome.REJECTED, reason="user stream down: not sent")
        kind, tif = order_type(request)
        self._live[request.client_order_id] = request.instrument
        answer = await self.private.place(
            symbol=request.instrument, side=_SIDES[request.side], order_type=kind,
            quantity=request.quantity, client_order_id=request.client_order_id,
            price=request.price if kind != "MARKET" else None, time_in_force=tif,
        )  # fmt: skip
        self._placed[request.client_order_id] = answer
        if answer.order is not None:
            order = venue_order(answer.order, at_us=self.private.venue_now_ms() * 1000)
            self._forget_if_final(order)
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

    async def _with_fills(self, wire: Order) -> VenueOrder | None:
        """The venue's order with every fill it has (None when the fills could not be read)."""
        fills = await self._fills_of(wire)
        if fills is None:
            return None
        order = venue_order(wire, fills)
        self._forget_if_final(order)
        return order

    async def cancel(self, client_order_id: str, instrument: str) -> CancelResult:
        answer = await self.private.cancel(symbol=instrument, client_order_id=client_order_id)
        if answer.order is not None:
            order = await self._with_fills(answer.order)
            if order is None:
                return CancelResult(outcome=Outcome.UNKNOWN, reason="cancelled; fills unknown")
            return CancelResult(outcome=Outcome.ACK, order=order)
        failure = answer.failure
        assert failure is not None
        if failure.verdict in (Verdict.REJECTED, Verdict.NOT_FOUND):
            # Filled meanwhile, or not (yet) there: the executor asks by query.
            return CancelResult(outcome=Outcome.REJECTED, reason=failure.reason)
        return CancelResult(outcome=Outcome.UNKNOWN, reason=failure.reason)

    async def cancel_all(self, instrument: str | None = None) -> CancelAllResult:
        """``DELETE /api/v3/openOrders`` on every symbol with an open order (the venue's list and
        ours), concurrently: the venue has no account-wide bulk cancel."""
        if instrument is not None:
            symbols = {instrument}
        else:
            listed = await self.private.open_orders()
            if isinstance(listed, Classified):
                return CancelAllResult(outcome=Outcome.UNKNOWN, reason=listed.reason)
            symbols = {o.symbol for o in listed} | set(self._live.values())
        symbols_sorted = sorted(symbols)
        answers = await asyncio.gather(*(self.private.cancel_all(s) for s in symbols_sorted))
        orders: list[VenueOrder] = []
        failures: list[str] = []
        for symbol, answer in zip(symbols_sorted, answers, strict=True):
            if isinstance(answer, Classified):
                # -2011: nothing open on the symbol (the verification below tells anyway).
                if answer.verdict is not Verdict.NOT_FOUND:
                    failures.append(f"{symbol}: {answer.reason}")
                continue
            for wire in answer:
                order = await self._with_fills(wire)
                if order is not None:
                    orders.append(order)
        if failures:
            return CancelAllResult(
                outcome=Outcome.UNKNOWN, orders=orders, reason="; ".join(failures)
            )
        return CancelAllResult(outcome=Outcome.ACK, orders=orders)

    async def query(self, client_order_id: str, instrument: str) -> QueryResult:
        answer = await self.private.query(symbol=instrument, client_order_id=client_order_id)
        if answer.order is not None:
            order = await self._with_fills(answer.order)
            if order is None:
                return QueryResult(outcome=Outcome.UNKNOWN, reason="order found; fills unknown")
            return QueryResult(outcome=Outcome.ACK, order=order)
        failure = answer.failure
        assert failure is not None
        if failure.verdict is Verdict.NOT_FOUND:
            placed = self._placed.get(client_order_id)
            if placed is not None and not self.private.expired(placed):
                # -2013 lags the matching engine: before the deadline it proves nothing.
                return QueryResult(outcome=Outcome.UNKNOWN, reason=f"{failure.reason} (early)")
            self._live.pop(client_order_id, None)
            return QueryResult(outcome=Outcome.ACK, order=None)
        return QueryResult(outcome=Outcome.UNKNOWN, reason=failure.reason)

    async def open_orders(self) -> list[VenueOrder]:
        orders = await self.private.open_orders()
        if isinstance(orders, Classified):
            raise ConnectionError(f"Binance open orders: {orders.reason}")
        result = []
        for order in orders:
            fills = await self._fills_of(order)
            if fills is None:
                raise ConnectionError(f"Binance trades of {order.client_order_id}: unavailable")
            self._live[order.client_order_id] = order.symbol
            result.append(venue_order(order, fills))
        return result

    async def balances(self) -> dict[str, Decimal]:
        balances = await self.private.balances()
        if isinstance(balances, Classified):
            raise ConnectionError(f"Binance account: {balances.reason}")
        return {asset: b.free + b.locked for asset, b in balances.items()}

    async def observe(self, trades: Sequence[Trade], tickers: Sequence[Ticker]) -> None:
        return None

    def fault(self) -> str | None:
        """The private client's latch: a 418 IP ban or a refused key stops every request."""
        reason = self.private.locked_reason
        return None if reason is None else f"Binance refused us: {reason}"

    def lift_fault(self) -> str | None:
        """The operator unlocked: a 418 ban's latch lifts once its Retry-After has passed."""
        reason = self.private.lift_ban()
        return None if reason is None else f"Binance refused us: {reason}"

    async def positions(self) -> dict[str, Decimal]:
        return {}  # a spot account: its balances are the whole of it

    async def fills_since(self, instruments: Sequence[str], since_us: int) -> list[Fill]:
        fills: list[Fill] = []
        for symbol in sorted(set(instruments)):
            while True:
                page = await self.private.my_trades(symbol, self._trade_cursor.get(symbol, 0))
                if isinstance(page, Classified):
                    raise ConnectionError(f"Binance trades {symbol}: {page.reason}")
                if not page:
                    break
                for trade in page:
                    self._fills_by_order.setdefault(trade.order_id, []).append(trade)
                self._trade_cursor[symbol] = max(t.trade_id for t in page) + 1
            for order_id, trades in list(self._fills_by_order.items()):
                recent = [t for t in trades if t.symbol == symbol and t.at_us >= since_us]
                if recent:
                    client_id = await self._client_id_of(symbol, order_id)
                    fills.extend(account_fill(client_id, t) for t in recent)
        return sorted(fills, key=lambda f: f.at_us)

    async def _client_id_of(self, symbol: str, order_id: int) -> str:
        """``myTrades`` names the venue's order id only: the order tells our client id."""
        known = self._client_ids.get(order_id)
        if known is not None:
            return known
        answer = await self.private.query_by_order_id(symbol=symbol, order_id=order_id)
        if answer.order is None:
            reason = answer.failure.reason if answer.failure is not None else "no answer"
            raise ConnectionError(f"Binance order {order_id}: {reason}")
        self._client_ids[order_id] = answer.order.client_order_id
        return answer.order.client_order_id

    def connection_epoch(self) -> int:
        return self.stream_connections

    # --- fills by query ---------------------------------------------------------------------

    async def _fills_of(self, order: Order) -> list[Fill] | None:
        """Every fill of ``order`` from ``myTrades`` by its ``orderId`` (None: the venue did
        not answer). The trade list may lag the order's status: then what it has so far (the
        rest comes on the stream or at the next query). One page: an order with more than
        1000 fills gets its later ones from the stream."""
        self._client_ids[order.order_id] = order.client_order_id
        if order.executed_quantity == 0:
            return []
        trades = await self.private.order_trades(order.symbol, order.order_id)
        if isinstance(trades, Classified):
            return None
        return [account_fill(order.client_order_id, t) for t in trades]

    def _forget_if_final(self, order: VenueOrder) -> None:
        if order.state in (S.FILLED, S.CANCELED, S.REJECTED):
            self._live.pop(order.client_order_id, None)

    # --- the user stream --------------------------------------------------------------------

    def _deliver(self, order: VenueOrder) -> None:
        self._forget_if_final(order)
        if self._sink is not None:
            self._sink(order)

    async def _run_stream(self) -> None:
        attempt = 0
        while True:
            try:
                self._stream = await UserStream.connect(
                    self._http, self._ws_api_url, self.private.credentials,
                    self.private.venue_now_ms(), reply_within=self._reply_within,
                )  # fmt: skip
            except (aiohttp.ClientError, ConnectionError, TimeoutError):
                attempt += 1
                # A scheduled retry (the one backoff rule), not a wait for a condition.
                await asyncio.sleep(backoff_delay(attempt, *self._reconnect, self._rng))
                continue
            attempt = 0
            self.stream_connections += 1
            self.stream_connected.set()
            try:
                await self._catch_up()
                async for event in self._stream.events():
                    if isinstance(event, ExecutionReport):
                        self._deliver(report_order(event))
            except (aiohttp.ClientError, ConnectionError, TimeoutError, ParseError) as exc:
                logger.warning("{}: user stream lost: {!r}; reconnecting", self._exchange, exc)
            finally:
                self.stream_connected.clear()
                self.caught_up.clear()
                await self._stream.close()
                self._stream = None

    async def _catch_up(self) -> None:
        """Everything the stream may have missed while down: the venue's word on every order
        this client placed and has not seen final (its fills included). An order the venue
        did not answer for is asked again (backoff), ``CATCH_UP_ROUNDS`` times at most."""
        pending = dict(self._live)
        for attempt in range(1, CATCH_UP_ROUNDS + 1):
            for client_id, symbol in list(pending.items()):
                answer = await self.query(client_id, symbol)
                if answer.outcome is Outcome.ACK:
                    del pending[client_id]
                    if answer.order is not None:
                        self._deliver(answer.order)
            if not pending:
                break
            # A scheduled retry (the one backoff rule), not a wait for a condition.
            await asyncio.sleep(backoff_delay(attempt, *self._reconnect, self._rng))
        if pending:
            logger.warning("{}: catch-up left unanswered: {}", self._exchange, sorted(pending))
        self.caught_up.set()
