"""The strategy API: everything a strategy may see and call, and nothing else.

A strategy is a pure decider. The executor calls its callbacks with market data, its own order
updates and fills, system events and timers; the strategy reads the account through its
``StrategyContext`` and answers with ``submit`` / ``cancel`` / ``cancel_all``, which return at
once. It does no I/O, never sleeps and never retries: a denied order is an answer, and the
strategy decides again on the next event.

Strategies import this module only (``make lint`` enforces it).
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from decimal import Decimal
from typing import Any, ClassVar, Protocol

import msgspec

from tradingd.model import Bar, Ticker, Trade

__all__ = [
    "MANUAL_STRATEGY",
    "Accepted",
    "Balance",
    "Bar",
    "Decision",
    "Denied",
    "FillView",
    "InstrumentRules",
    "NoParams",
    "OrderIntent",
    "OrderType",
    "OrderUpdate",
    "OrderView",
    "PositionView",
    "Side",
    "Strategy",
    "StrategyContext",
    "SystemEvent",
    "Ticker",
    "TimeInForce",
    "Trade",
]

# The name the operator's own orders (`tradingd order submit`) carry in place of a strategy's;
# no configured strategy may take it.
MANUAL_STRATEGY = "manual"


class Side(enum.StrEnum):
    BUY = "buy"
    SELL = "sell"


class OrderType(enum.StrEnum):
    LIMIT = "limit"
    MARKET = "market"


class TimeInForce(enum.StrEnum):
    GTC = "GTC"
    IOC = "IOC"
    FOK = "FOK"


class OrderIntent(msgspec.Struct, frozen=True, kw_only=True):
    """What a strategy (or an operator) wants to trade. Quantity in base units."""

    instrument: str
    side: Side
    quantity: Decimal
    type: OrderType = OrderType.LIMIT
    price: Decimal | None = None  # required for LIMIT, ignored for MARKET
    tif: TimeInForce = TimeInForce.GTC
    reduce_only: bool = False
    tag: str = ""  # free text kept in the ledger, never sent to the venue


class Accepted(msgspec.Struct, frozen=True):
    """Taken by the executor under this client order id. The outcome comes by ``on_order``."""

    client_order_id: str


class Denied(msgspec.Struct, frozen=True):
    """Refused before anything was written or sent; ``reason`` says which rule."""

    reason: str


Decision = Accepted | Denied


class InstrumentRules(msgspec.Struct, frozen=True, kw_only=True):
    """The venue's rules for one instrument, so that the venue never rejects what we could know."""

    name: str
    base: str
    quote: str
    tick_size: Decimal  # price increment
    step_size: Decimal  # quantity increment
    min_quantity: Decimal
    min_notional: Decimal | None = None
    contract_size: Decimal = Decimal(1)

    def round_price(self, price: Decimal) -> Decimal:
        """Down to the tick."""
        return (price // self.tick_size) * self.tick_size

    def round_quantity(self, quantity: Decimal) -> Decimal:
        """Down to the step."""
        return (quantity // self.step_size) * self.step_size


class OrderView(msgspec.Struct, frozen=True, kw_only=True):
    client_order_id: str
    strategy: str
    exchange: str
    instrument: str
    side: Side
    type: OrderType
    tif: TimeInForce
    quantity: Decimal
    price: Decimal | None
    # One of the order states (tradingd.execution.orders.OrderState values).
    state: str
    filled_quantity: Decimal
    average_price: Decimal | None
    reason: str
    created_us: int
    updated_us: int


class OrderUpdate(msgspec.Struct, frozen=True, kw_only=True):
    """An order of this strategy changed state."""

    order: OrderView
    previous_state: str


class FillView(msgspec.Struct, frozen=True, kw_only=True):
    client_order_id: str
    trade_id: str  # the venue's trade id (unique per exchange)
    exchange: str
    instrument: str
    side: Side
    quantity: Decimal
    price: Decimal
    fee: Decimal
    fee_currency: str
    liquidity: str  # "maker" | "taker"
    at_us: int


class PositionView(msgspec.Struct, frozen=True, kw_only=True):
    instrument: str
    quantity: Decimal  # signed: positive long, negative short
    average_price: Decimal | None
    realised_pnl: Decimal


class Balance(msgspec.Struct, frozen=True, kw_only=True):
    currency: str
    total: Decimal
    free: Decimal  # total less what open orders reserve


class SystemEvent(msgspec.Struct, frozen=True, kw_only=True):
    """Something the daemon noticed (``kind`` e.g. "volume_anomaly")."""

    kind: str
    exchange: str
    instrument: str
    detail: Mapping[str, Any]
    at_us: int


class StrategyContext(Protocol):
    """What a running strategy reads and calls. Every method returns at once."""

    @property
    def name(self) -> str:
        """This strategy's configured name (``[[strategies]] name``)."""
        ...

    @property
    def exchange(self) -> str: ...

    @property
    def symbols(self) -> tuple[str, ...]: ...

    def now_us(self) -> int:
        """The executor's clock (simulated time in backtests and tests)."""
        ...

    def trading_allowed(self) -> bool:
        """The last known gate: the exchange HEALTHY, the kill switch off, this strategy not
        paused. Advisory: the executor checks the real gate again at every submit."""
        ...

    def instrument(self, name: str) -> InstrumentRules | None: ...

    def last_price(self, instrument: str) -> Decimal | None:
        """The price of the last trade seen, if any."""
        ...

    def best_bid_ask(self, instrument: str) -> tuple[Decimal | None, Decimal | None]:
        """The latest ticker's best bid and ask (None where unknown)."""
        ...

    def position(self, instrument: str) -> PositionView:
        """This strategy's position (a flat one if it never traded the instrument)."""
        ...

    def balances(self) -> Mapping[str, Balance]:
        """The account's balances by currency (shared by every strategy on the account)."""
        ...

    def open_orders(self, instrument: str | None = None) -> list[OrderView]:
        """This strategy's orders that are not in a terminal state."""
        ...

    def submit(self, intent: OrderIntent) -> Decision: ...

    def cancel(self, client_order_id: str) -> Decision: ...

    def cancel_all(self, instrument: str | None = None) -> int:
        """Ask to cancel every open order of this strategy; returns how many were asked."""
        ...

    def set_timer(self, name: str, interval_s: float) -> None:
        """Call ``on_timer(name, now_us)`` every ``interval_s`` seconds (replaces a same-named
        timer; an interval of 0 removes it)."""
        ...

    def notice(self, text: str) -> None:
        """Tell the operator something the strategy decided on its own (e.g. a level it will
        not place): logged once per distinct text, as a WARNING naming the strategy."""
        ...


class NoParams(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """For strategies without parameters."""


class Strategy:
    """Base class: override the callbacks you need. Callbacks must not block or do I/O.

    ``Params`` is the strategy's parameter schema; ``[[strategies]] params`` is validated
    against it when the configuration is loaded (a bad value is a configuration error).
    An exception raised by a callback pauses this strategy (and only it).
    """

    Params: ClassVar[type[msgspec.Struct]] = NoParams

    def __init__(self, ctx: StrategyContext, params: Any) -> None:
        self.ctx = ctx
        self.params = params

    def on_start(self) -> None:
        """Once, before the first event (set timers here)."""

    def on_trade(self, trade: Trade) -> None: ...

    def on_bar(self, bar: Bar) -> None:
        """A bar of a subscribed symbol; ``bar.closed`` marks the final one of its period."""

    def on_ticker(self, ticker: Ticker) -> None: ...

    def on_system_event(self, event: SystemEvent) -> None: ...

    def on_order(self, update: OrderUpdate) -> None: ...

    def on_fill(self, fill: FillView) -> None: ...

    def on_timer(self, name: str, now_us: int) -> None: ...

    def on_stop(self) -> None:
        """Once, when the daemon stops (no orders may be placed from here)."""
