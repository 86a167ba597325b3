"""An in-memory StrategyContext for strategy and host tests: records what a strategy asks,
decides like a simple executor (accept unless told to deny), and lets the test play the venue
(``fill``, ``finish``) so that positions and open orders follow."""

from __future__ import annotations

from collections.abc import Mapping
from decimal import Decimal
from typing import Any

import msgspec

from tradingd.execution.accounting import Book, FillRecord
from tradingd.model import optional_text
from tradingd.strategies.api import (
    Accepted,
    Balance,
    Bar,
    Decision,
    Denied,
    FillView,
    InstrumentRules,
    OrderIntent,
    OrderUpdate,
    OrderView,
    PositionView,
    Side,
    Strategy,
    Ticker,
)

D = Decimal

BTCUSDT = InstrumentRules(
    name="BTCUSDT",
    base="BTC",
    quote="USDT",
    tick_size=D("0.01"),
    step_size=D("0.00001"),
    min_quantity=D("0.00001"),
    min_notional=D(5),
)


class MemoryContext:
    def __init__(
        self,
        *,
        name: str = "s1",
        exchange: str = "binance",
        symbols: tuple[str, ...] = ("BTCUSDT",),
        rules: Mapping[str, InstrumentRules] | None = None,
        balances: Mapping[str, Decimal] | None = None,
    ) -> None:
        self._name = name
        self._exchange = exchange
        self._symbols = symbols
        self.rules = dict(rules or {"BTCUSDT": BTCUSDT})
        self.book = Book(balances or {"USDT": D(10000)})
        self.allowed = True
        self.deny_reason = ""  # non-empty: every submit is denied with it
        self.notices: list[str] = []  # what the strategy told the operator, once each
        self.clock_us = 1_700_000_000_000_000
        self.bid_ask: dict[str, tuple[Decimal | None, Decimal | None]] = {}
        self.last: dict[str, Decimal] = {}
        self.submitted: list[OrderIntent] = []
        self.cancelled: list[str] = []
        self.orders: dict[str, OrderView] = {}
        self.timers: dict[str, float] = {}
        self.strategy: Strategy | None = None  # receives on_order/on_fill when set
        self._ids = 0
        self._trades = 0

    @property
    def name(self) -> str:
        return self._name

    @property
    def exchange(self) -> str:
        return self._exchange

    @property
    def symbols(self) -> tuple[str, ...]:
        return self._symbols

    def now_us(self) -> int:
        return self.clock_us

    def trading_allowed(self) -> bool:
        return self.allowed

    def instrument(self, name: str) -> InstrumentRules | None:
        return self.rules.get(name)

    def last_price(self, instrument: str) -> Decimal | None:
        return self.last.get(instrument)

    def best_bid_ask(self, instrument: str) -> tuple[Decimal | None, Decimal | None]:
        return self.bid_ask.get(instrument, (None, None))

    def position(self, instrument: str) -> PositionView:
        return self.book.position(self._name, instrument)

    def balances(self) -> Mapping[str, Balance]:
        reserved: dict[str, Decimal] = {}
        for order in self.open_orders():
            rules = self.rules[order.instrument]
            left = order.quantity - order.filled_quantity
            if order.side is Side.BUY:
                price = order.price or self.bid_ask.get(order.instrument, (None, None))[1] or 0
                reserved[rules.quote] = reserved.get(rules.quote, D(0)) + left * price
            else:
                reserved[rules.base] = reserved.get(rules.base, D(0)) + left
        return {
            currency: Balance(
                currency=currency, total=total, free=total - reserved.get(currency, D(0))
            )
            for currency, total in self.book.balances().items()
        }

    def open_orders(self, instrument: str | None = None) -> list[OrderView]:
        return [
            o
            for o in self.orders.values()
            if o.state not in {"FILLED", "CANCELED", "REJECTED", "NEVER_PLACED", "DENIED"}
            and (instrument is None or o.instrument == instrument)
        ]

    def submit(self, intent: OrderIntent) -> Decision:
        self.submitted.append(intent)
        if self.deny_reason:
            return Denied(self.deny_reason)
        self._ids += 1
        client_id = f"td{self._ids}"
        self.orders[client_id] = OrderView(
            client_order_id=client_id,
            strategy=self._name,
            exchange=self._exchange,
            instrument=intent.instrument,
            side=intent.side,
            type=intent.type,
            tif=intent.tif,
            quantity=intent.quantity,
            price=intent.price,
            state="OPEN",
            filled_quantity=D(0),
            average_price=None,
            reason="",
            created_us=self.clock_us,
            updated_us=self.clock_us,
        )
        return Accepted(client_id)

    def cancel(self, client_order_id: str) -> Decision:
        self.cancelled.append(client_order_id)
        return Accepted(client_order_id)

    def cancel_all(self, instrument: str | None = None) -> int:
        orders = self.open_orders(instrument)
        for order in orders:
            self.cancel(order.client_order_id)
        return len(orders)

    def set_timer(self, name: str, interval_s: float) -> None:
        self.timers[name] = interval_s

    def notice(self, text: str) -> None:
        if text not in self.notices:
            self.notices.append(text)

    # -- the test plays the venue -----------------------------------------------------------

    def fill(self, client_order_id: str, quantity: Decimal, price: Decimal) -> None:
        """A fill of one order: the book, the order, then the strategy's callbacks."""
        order = self.orders[client_order_id]
        rules = self.rules[order.instrument]
        self._trades += 1
        self.book.apply(
            FillRecord(
                strategy=self._name,
                exchange=self._exchange,
                instrument=order.instrument,
                base=rules.base,
                quote=rules.quote,
                side=order.side,
                quantity=quantity,
                price=price,
                fee=D(0),
                fee_currency=rules.quote,
                trade_id=str(self._trades),
                at_us=self.clock_us,
            )
        )
        filled = order.filled_quantity + quantity
        state = "FILLED" if filled >= order.quantity else "PARTIALLY_FILLED"
        self._update(client_order_id, state=state, filled_quantity=filled, average_price=price)
        if self.strategy is not None:
            self.strategy.on_fill(
                FillView(
                    client_order_id=client_order_id,
                    trade_id=str(self._trades),
                    exchange=self._exchange,
                    instrument=order.instrument,
                    side=order.side,
                    quantity=quantity,
                    price=price,
                    fee=D(0),
                    fee_currency=rules.quote,
                    liquidity="maker",
                    at_us=self.clock_us,
                )
            )

    def finish(self, client_order_id: str, state: str) -> None:
        """An order ends without (more) fills: CANCELED, REJECTED, ..."""
        self._update(client_order_id, state=state)

    def _update(self, client_order_id: str, **changes: Any) -> None:
        before = self.orders[client_order_id]
        after = msgspec.structs.replace(before, updated_us=self.clock_us, **changes)
        self.orders[client_order_id] = after
        if self.strategy is not None:
            self.strategy.on_order(OrderUpdate(order=after, previous_state=before.state))


def bar(close: str | Decimal, i: int, *, closed: bool = True, instrument: str = "BTCUSDT") -> Bar:
    price = D(close)
    return Bar(
        exchange="binance",
        instrument_name=instrument,
        resolution="1m",
        tick_us=i * 60_000_000,
        open_text=str(price),
        high_text=str(price),
        low_text=str(price),
        close_text=str(price),
        volume_text=str(D(1)),
        closed=closed,
        received_us=i * 60_000_000,
    )


def ticker(bid: str, ask: str, instrument: str = "BTCUSDT") -> Ticker:
    return Ticker(
        exchange="binance",
        instrument_name=instrument,
        best_bid_price_text=optional_text(D(bid)),
        best_ask_price_text=optional_text(D(ask)),
        timestamp_us=0,
        received_us=0,
    )
