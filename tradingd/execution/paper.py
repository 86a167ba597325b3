"""The paper venue: a simulated account behind the same ``ExecutionClient`` interface as a live
venue, matching against live public market data.

* A marketable order (market, or a limit through the touch) fills at once, whole, at the best
  ask (buy) or bid (sell) of the latest ticker moved against us by ``paper.slippage`` (a limit
  never fills beyond its price); taker fee. An IOC/FOK limit that is not marketable is
  cancelled unfilled; a market order with no bid/ask known is rejected.
* A resting limit fills only when a live trade prints *through* its price (strictly below a
  buy, above a sell), at its own price, and never more than that trade's size (shared among
  the resting orders it crosses, best price first, then oldest); maker fee.
* Fees are fractions of the notional, charged in the quote currency (in the base currency for
  inverse contracts, whose quantity is in USD).

Like a real exchange it remembers what it received (tables ``paper_orders`` and
``paper_fills``), independently of the ledger: a restarted daemon reconciles against it exactly
as against a live venue. ``PaperFaults`` injects the ambiguous outcomes a live venue produces.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from decimal import ROUND_CEILING, ROUND_FLOOR, Decimal

import asyncpg
from loguru import logger

from tradingd.config import PaperConfig
from tradingd.execution.orders import OrderState
from tradingd.execution.records import Fill
from tradingd.execution.risk import InstrumentInfo
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
from tradingd.model import Ticker, Trade, datetime_to_us, us_to_datetime
from tradingd.strategies.api import OrderType, Side, TimeInForce

S = OrderState
_OPEN_STATES = (S.OPEN.value, S.PARTIALLY_FILLED.value)


@dataclass
class PaperFaults:
    """Failures to inject, each counted down per request (tests and chaos runs)."""

    # The request reaches the venue and is executed, but the reply is lost (a timeout).
    lose_replies: int = 0
    # The request never reaches the venue (a timeout before the matching engine).
    drop_requests: int = 0
    # A query by client id gets no answer (the venue is unreachable for a moment).
    drop_queries: int = 0


@dataclass
class _Resting:
    paper_id: int
    request: PlaceRequest
    filled: Decimal
    state: OrderState
    fills: list[Fill] = field(default_factory=list)


class PaperVenue:
    def __init__(
        self,
        exchange: str,
        pool: asyncpg.Pool,
        config: PaperConfig,
        instruments: Mapping[str, InstrumentInfo],
        clock_us: Callable[[], int],
        faults: PaperFaults | None = None,
    ) -> None:
        self._exchange = exchange
        self._pool = pool
        self._config = config
        self._instruments = instruments
        self._clock_us = clock_us
        self.faults = faults or PaperFaults()
        self._sinks: list[VenueUpdateSink] = []
        self._touch: dict[str, tuple[Decimal | None, Decimal | None]] = {}
        self._resting: dict[str, _Resting] = {}  # client order id -> open order

    @property
    def exchange(self) -> str:
        return self._exchange

    def subscribe(self, sink: VenueUpdateSink) -> None:
        self._sinks.append(sink)

    async def start(self) -> None:
        records = await self._pool.fetch(
            "SELECT * FROM paper_orders WHERE exchange = $1 AND state = ANY($2::text[])"
            " ORDER BY id",
            self._exchange,
            list(_OPEN_STATES),
        )
        for record in records:
            request = PlaceRequest(
                client_order_id=record["client_order_id"],
                instrument=record["instrument_name"],
                side=Side(record["side"]),
                type=OrderType(record["order_type"]),
                tif=TimeInForce(record["time_in_force"]),
                quantity=record["quantity"],
                price=record["price"],
            )
            self._resting[request.client_order_id] = _Resting(
                record["id"], request, record["filled_quantity"], S(record["state"])
            )

    async def close(self) -> None:
        self._sinks.clear()

    # -- requests --------------------------------------------------------------------------------

    async def place(self, request: PlaceRequest) -> PlaceResult:
        if self.faults.drop_requests > 0:
            self.faults.drop_requests -= 1
            return PlaceResult(outcome=Outcome.UNKNOWN, reason="timeout (paper fault)")
        result = await self._place(request)
        if self.faults.lose_replies > 0:
            self.faults.lose_replies -= 1
            return PlaceResult(outcome=Outcome.UNKNOWN, reason="reply lost (paper fault)")
        return result

    async def _place(self, request: PlaceRequest) -> PlaceResult:
        info = self._instruments.get(request.instrument)
        if info is None:
            return await self._reject(request, f"unknown instrument {request.instrument}")
        if request.deadline_us is not None and self._clock_us() > request.deadline_us:
            return await self._reject(request, "deadline passed before the order was processed")
        bid, ask = self._touch.get(request.instrument, (None, None))
        touch = ask if request.side is Side.BUY else bid
        marketable = touch is not None and (
            request.type is OrderType.MARKET
            or request.price is None
            or (request.side is Side.BUY and request.price >= touch)
            or (request.side is Side.SELL and request.price <= touch)
        )
        if request.type is OrderType.MARKET and touch is None:
            return await self._reject(request, "no bid/ask known: no liquidity to trade against")
        if not marketable:
            state = S.OPEN if request.tif is TimeInForce.GTC else S.CANCELED
            paper_id = await self._insert(request, state, Decimal(0), "")
            order = VenueOrder(
                client_order_id=request.client_order_id,
                venue_order_id=str(paper_id),
                state=state,
                filled_quantity=Decimal(0),
                reason="" if state is S.OPEN else f"{request.tif.value}: not marketable",
            )
            if state is S.OPEN:
                self._resting[request.client_order_id] = _Resting(
                    paper_id, request, Decimal(0), S.OPEN
                )
            return PlaceResult(outcome=Outcome.ACK, order=order)
        assert touch is not None
        slip = touch * self._config.slippage
        price = touch + slip if request.side is Side.BUY else touch - slip
        # A venue fills on its price grid: the slipped price moves to the tick against us.
        tick = info.rules.tick_size
        steps = price / tick
        price = (
            steps.to_integral_value(ROUND_CEILING)
            if request.side is Side.BUY
            else steps.to_integral_value(ROUND_FLOOR)
        ) * tick
        if request.price is not None and request.type is OrderType.LIMIT:
            price = (
                min(price, request.price) if request.side is Side.BUY else max(price, request.price)
            )
        async with self._pool.acquire() as conn, conn.transaction():
            paper_id = await self._insert(request, S.FILLED, request.quantity, "", conn)
            fill = await self._fill(conn, paper_id, request, info, request.quantity, price, "taker")
        order = VenueOrder(
            client_order_id=request.client_order_id,
            venue_order_id=str(paper_id),
            state=S.FILLED,
            filled_quantity=request.quantity,
            fills=[fill],
        )
        return PlaceResult(outcome=Outcome.ACK, order=order)

    async def cancel(self, client_order_id: str, instrument: str) -> CancelResult:
        resting = self._resting.pop(client_order_id, None)
        if resting is None:
            known = await self.query(client_order_id, instrument)
            if known.order is None:
                return CancelResult(outcome=Outcome.REJECTED, reason="unknown order")
            return CancelResult(
                outcome=Outcome.REJECTED,
                order=known.order,
                reason=f"order is already {known.order.state.value}",
            )
        await self._pool.execute(
            "UPDATE paper_orders SET state = 'CANCELED' WHERE id = $1", resting.paper_id
        )
        order = VenueOrder(
            client_order_id=client_order_id,
            venue_order_id=str(resting.paper_id),
            state=S.CANCELED,
            filled_quantity=resting.filled,
            fills=resting.fills,
        )
        return CancelResult(outcome=Outcome.ACK, order=order)

    async def cancel_all(self, instrument: str | None = None) -> CancelAllResult:
        targets = [
            r
            for r in self._resting.values()
            if instrument is None or r.request.instrument == instrument
        ]
        await self._pool.execute(
            "UPDATE paper_orders SET state = 'CANCELED' WHERE id = ANY($1::bigint[])",
            [r.paper_id for r in targets],
        )
        orders = []
        for resting in targets:
            del self._resting[resting.request.client_order_id]
            orders.append(
                VenueOrder(
                    client_order_id=resting.request.client_order_id,
                    venue_order_id=str(resting.paper_id),
                    state=S.CANCELED,
                    filled_quantity=resting.filled,
                    fills=resting.fills,
                )
            )
        return CancelAllResult(outcome=Outcome.ACK, orders=orders)

    async def query(self, client_order_id: str, instrument: str) -> QueryResult:
        if self.faults.drop_queries > 0:
            self.faults.drop_queries -= 1
            return QueryResult(outcome=Outcome.UNKNOWN, reason="injected: query dropped")
        record = await self._pool.fetchrow(
            "SELECT * FROM paper_orders WHERE exchange = $1 AND client_order_id = $2"
            " ORDER BY id DESC LIMIT 1",
            self._exchange,
            client_order_id,
        )
        if record is None:
            return QueryResult(outcome=Outcome.ACK, order=None)
        fills = await self._pool.fetch(
            "SELECT * FROM paper_fills WHERE paper_order_id = $1 ORDER BY id", record["id"]
        )
        order = VenueOrder(
            client_order_id=client_order_id,
            venue_order_id=str(record["id"]),
            state=S(record["state"]),
            filled_quantity=record["filled_quantity"],
            fills=[_fill_of(client_order_id, fill) for fill in fills],
            reason=record["reason"],
        )
        return QueryResult(outcome=Outcome.ACK, order=order)

    async def open_orders(self) -> list[VenueOrder]:
        return [
            VenueOrder(
                client_order_id=cid,
                venue_order_id=str(resting.paper_id),
                state=resting.state,
                filled_quantity=resting.filled,
            )
            for cid, resting in self._resting.items()
        ]

    async def balances(self) -> dict[str, Decimal]:
        balances = dict(self._config.balances.get(self._exchange, {}))
        records = await self._pool.fetch(
            """SELECT o.instrument_name, o.side, f.quantity, f.price, f.fee, f.fee_currency
               FROM paper_fills f JOIN paper_orders o ON o.id = f.paper_order_id
               WHERE o.exchange = $1""",
            self._exchange,
        )
        for record in records:
            info = self._instruments.get(record["instrument_name"])
            if info is None:
                continue
            rules = info.rules
            sign = 1 if record["side"] == Side.BUY.value else -1
            quantity, price = record["quantity"], record["price"]
            if info.inverse:
                # A USD-quantity contract: no spot balance moves, only the fee (in base).
                pass
            else:
                balances[rules.base] = balances.get(rules.base, Decimal(0)) + sign * quantity
                balances[rules.quote] = (
                    balances.get(rules.quote, Decimal(0)) - sign * quantity * price
                )
            currency = record["fee_currency"]
            balances[currency] = balances.get(currency, Decimal(0)) - record["fee"]
        return balances

    async def positions(self) -> dict[str, Decimal]:
        derivatives = [name for name, info in self._instruments.items() if not info.spot]
        records = await self._pool.fetch(
            """SELECT o.instrument_name,
                      sum(CASE WHEN o.side = 'buy' THEN f.quantity ELSE -f.quantity END) AS net
               FROM paper_fills f JOIN paper_orders o ON o.id = f.paper_order_id
               WHERE o.exchange = $1 AND o.instrument_name = ANY($2::text[])
               GROUP BY o.instrument_name""",
            self._exchange,
            derivatives,
        )
        return {r["instrument_name"]: r["net"] for r in records if r["net"] != 0}

    async def fills_since(self, instruments: Sequence[str], since_us: int) -> list[Fill]:
        records = await self._pool.fetch(
            """SELECT f.*, o.client_order_id FROM paper_fills f
               JOIN paper_orders o ON o.id = f.paper_order_id
               WHERE o.exchange = $1 AND o.instrument_name = ANY($2::text[]) AND f.at >= $3
               ORDER BY f.id""",
            self._exchange,
            list(instruments),
            us_to_datetime(since_us),
        )
        return [_fill_of(record["client_order_id"], record) for record in records]

    def connection_epoch(self) -> int:
        return 0  # a simulated account has no stream to lose

    # -- market data -----------------------------------------------------------------------------

    def fault(self) -> str | None:
        return None  # a simulated account has nothing to lock for

    def lift_fault(self) -> str | None:
        return None

    async def observe(self, trades: Sequence[Trade], tickers: Sequence[Ticker]) -> None:
        for ticker in tickers:
            self._touch[ticker.instrument_name] = (ticker.best_bid_price, ticker.best_ask_price)
        if not self._resting:
            # Nothing to match, and with nothing awaited no order can come to rest meanwhile.
            return
        for trade in trades:
            if self._resting:
                await self._match(trade)

    async def _match(self, trade: Trade) -> None:
        trade_price = trade.price
        crossed = [
            resting
            for resting in self._resting.values()
            if resting.request.instrument == trade.instrument_name
            and resting.request.price is not None
            and (
                (resting.request.side is Side.BUY and trade_price < resting.request.price)
                or (resting.request.side is Side.SELL and trade_price > resting.request.price)
            )
        ]
        if not crossed:
            return
        # Best price first (highest buy, lowest sell), then oldest.
        crossed.sort(
            key=lambda r: (
                -r.request.price if r.request.side is Side.BUY else r.request.price,  # type: ignore[operator]
                r.paper_id,
            )
        )
        available = trade.quantity
        for resting in crossed:
            if available <= 0:
                break
            info = self._instruments.get(resting.request.instrument)
            if info is None:
                continue
            quantity = min(available, resting.request.quantity - resting.filled)
            available -= quantity
            price = resting.request.price
            assert price is not None
            filled = resting.filled + quantity
            state = S.FILLED if filled == resting.request.quantity else S.PARTIALLY_FILLED
            async with self._pool.acquire() as conn, conn.transaction():
                fill = await self._fill(
                    conn, resting.paper_id, resting.request, info, quantity, price, "maker"
                )
                await conn.execute(
                    "UPDATE paper_orders SET state = $2, filled_quantity = $3 WHERE id = $1",
                    resting.paper_id,
                    state.value,
                    filled,
                )
            resting.filled, resting.state = filled, state
            resting.fills.append(fill)
            if state is S.FILLED:
                del self._resting[resting.request.client_order_id]
            self._emit(
                VenueOrder(
                    client_order_id=resting.request.client_order_id,
                    venue_order_id=str(resting.paper_id),
                    state=state,
                    filled_quantity=filled,
                    fills=[fill],
                )
            )

    # -- helpers ---------------------------------------------------------------------------------

    def _emit(self, order: VenueOrder) -> None:
        for sink in self._sinks:
            try:
                sink(order)
            except Exception:
                logger.exception("paper venue: an update sink failed")

    async def _reject(self, request: PlaceRequest, reason: str) -> PlaceResult:
        await self._insert(request, S.REJECTED, Decimal(0), reason)
        return PlaceResult(outcome=Outcome.REJECTED, reason=reason)

    async def _insert(
        self,
        request: PlaceRequest,
        state: OrderState,
        filled: Decimal,
        reason: str,
        conn: asyncpg.Connection | None = None,
    ) -> int:
        executor = conn if conn is not None else self._pool
        paper_id = await executor.fetchval(
            """INSERT INTO paper_orders (exchange, client_order_id, instrument_name, side,
                   order_type, time_in_force, quantity, price, state, filled_quantity, reason)
               VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11) RETURNING id""",
            self._exchange,
            request.client_order_id,
            request.instrument,
            request.side.value,
            request.type.value,
            request.tif.value,
            request.quantity,
            request.price,
            state.value,
            filled,
            reason,
        )
        return int(paper_id)

    async def _fill(
        self,
        conn: asyncpg.Connection,
        paper_id: int,
        request: PlaceRequest,
        info: InstrumentInfo,
        quantity: Decimal,
        price: Decimal,
        liquidity: str,
    ) -> Fill:
        rate = self._config.maker_fee if liquidity == "maker" else self._config.taker_fee
        if info.inverse:
            fee, currency = quantity / price * rate, info.rules.base
        else:
            fee, currency = quantity * price * info.rules.contract_size * rate, info.rules.quote
        at_us = self._clock_us()
        fill_id = await conn.fetchval(
            """INSERT INTO paper_fills (paper_order_id, quantity, price, fee, fee_currency,
                   liquidity, at) VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING id""",
            paper_id,
            quantity,
            price,
            fee,
            currency,
            liquidity,
            us_to_datetime(at_us),
        )
        return Fill(
            client_order_id=request.client_order_id,
            trade_id=f"paper-{fill_id}",
            quantity=quantity,
            price=price,
            fee=fee,
            fee_currency=currency,
            liquidity=liquidity,
            at_us=at_us,
        )


def _fill_of(client_order_id: str, record: asyncpg.Record) -> Fill:
    return Fill(
        client_order_id=client_order_id,
        trade_id=f"paper-{record['id']}",
        quantity=record["quantity"],
        price=record["price"],
        fee=record["fee"],
        fee_currency=record["fee_currency"],
        liquidity=record["liquidity"],
        at_us=datetime_to_us(record["at"]),
    )
