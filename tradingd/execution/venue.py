"""The execution-client interface: what the executor sends orders through.

One implementation per venue (the paper venue here; each live venue's client in its adapter
folder beside its market data). Only the executor holds one. Every request's outcome is one of
three classes, and the executor treats them differently:

* ``ACK``: the venue answered and has the order (or did the cancel, or answered the query);
* ``REJECTED``: the venue's definitive no; nothing exists on the venue because of it;
* ``UNKNOWN``: no definitive answer (timeout, 5xx, disconnect, undecodable reply). The order
  may or may not exist: it is never resent, only asked about (``query``) or heard of (updates).

A client also reports a *fault*: something it learned that makes any further trading on the
account unsafe (Binance latched a 418 IP ban or refused our key; Deribit's
``get_order_state_by_label`` named two orders for one label). ``fault()`` returns the reason
once known and keeps returning it (latched); the executor looks at every turn of its loop and
locks the exchange with that reason (``Executor.lock``). The paper venue never reports one.

Live clients are built by the adapter package's ``execution_client`` (an
``ExecutionClientFactory``), found through the adapter registry.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Sequence
from decimal import Decimal
from typing import TYPE_CHECKING, Protocol

import msgspec

from tradingd.execution.orders import OrderState
from tradingd.execution.records import Fill
from tradingd.model import Ticker, Trade
from tradingd.strategies.api import OrderType, Side, TimeInForce

if TYPE_CHECKING:
    import aiohttp

    from tradingd.config import ExchangeConfig


class Outcome(enum.StrEnum):
    ACK = "ACK"
    REJECTED = "REJECTED"
    UNKNOWN = "UNKNOWN"


class PlaceRequest(msgspec.Struct, frozen=True, kw_only=True):
    client_order_id: str
    instrument: str
    side: Side
    type: OrderType
    tif: TimeInForce
    quantity: Decimal
    price: Decimal | None
    reduce_only: bool = False
    # The venue must not act on the request after this (Binance recvWindow, Deribit valid_until).
    deadline_us: int | None = None


class VenueOrder(msgspec.Struct, frozen=True, kw_only=True):
    """The venue's word on one order: its state and every fill it knows of."""

    client_order_id: str
    venue_order_id: str
    state: OrderState  # OPEN, PARTIALLY_FILLED, FILLED, CANCELED, REJECTED
    filled_quantity: Decimal
    fills: list[Fill] = []
    reason: str = ""


class PlaceResult(msgspec.Struct, frozen=True, kw_only=True):
    outcome: Outcome
    order: VenueOrder | None = None  # with ACK
    reason: str = ""  # with REJECTED / UNKNOWN
    banned: bool = False  # the venue refused us as a client (IP or account ban)


class CancelResult(msgspec.Struct, frozen=True, kw_only=True):
    outcome: Outcome
    order: VenueOrder | None = None  # with ACK: the order as cancelled
    reason: str = ""


class QueryResult(msgspec.Struct, frozen=True, kw_only=True):
    """``ACK`` with ``order`` None is the venue's definitive "no such order"."""

    outcome: Outcome
    order: VenueOrder | None = None
    reason: str = ""


class CancelAllResult(msgspec.Struct, frozen=True, kw_only=True):
    """A bulk cancel. ``ACK``: the venue did it; ``orders`` are those it named as cancelled
    (a venue that answers with a count names none: the executor verifies by open orders and
    queries). ``UNKNOWN``: some or all requests had no definitive answer."""

    outcome: Outcome
    orders: list[VenueOrder] = []
    reason: str = ""


# What a venue pushes between requests (its user-data stream): an order changed or filled.
VenueUpdateSink = Callable[[VenueOrder], None]


class ExecutionClient(Protocol):
    @property
    def exchange(self) -> str: ...

    def subscribe(self, sink: VenueUpdateSink) -> None:
        """Deliver every order update of this account to ``sink`` (called on the event loop)."""
        ...

    async def start(self) -> None:
        """Connect (live) or load the simulated account (paper)."""
        ...

    async def close(self) -> None: ...

    async def place(self, request: PlaceRequest) -> PlaceResult: ...

    async def cancel(self, client_order_id: str, instrument: str) -> CancelResult: ...

    async def query(self, client_order_id: str, instrument: str) -> QueryResult: ...

    async def cancel_all(self, instrument: str | None = None) -> CancelAllResult:
        """Cancel every open order of the account (of one instrument), in bulk."""
        ...

    async def open_orders(self) -> list[VenueOrder]: ...

    async def balances(self) -> dict[str, Decimal]: ...

    async def positions(self) -> dict[str, Decimal]:
        """The account's signed position per derivative instrument, non-zero only (a spot
        account holds balances, and none here)."""
        ...

    async def fills_since(self, instruments: Sequence[str], since_us: int) -> list[Fill]:
        """Every fill of the account at or after ``since_us`` on ``instruments``, as the venue
        records them (other clients' included: their client id tells them apart). Raises when
        the venue does not answer: a partial list would hide a fill."""
        ...

    def connection_epoch(self) -> int:
        """How many times the account's update stream has (re)connected: a change means
        updates may have been missed, and the account is reconciled."""
        ...

    async def observe(self, trades: Sequence[Trade], tickers: Sequence[Ticker]) -> None:
        """Public market data as the executor receives it: a simulated venue matches against
        it; a live venue ignores it."""
        ...

    def fault(self) -> str | None:
        """Why the account must be locked (latched once known), or None."""
        ...

    def lift_fault(self) -> str | None:
        """The operator unlocked the exchange: clear a latched fault whose cause is over (a
        ban past its end). Answers the fault that stays, or None."""
        ...


class ExecutionClientFactory(Protocol):
    """``execution_client`` of an adapter package: the live client of one configured exchange
    (nothing connects before ``start``)."""

    def __call__(
        self,
        config: ExchangeConfig,
        *,
        exchange: str,
        http: aiohttp.ClientSession,
        api_key: str,
        api_secret: str,
    ) -> ExecutionClient: ...
