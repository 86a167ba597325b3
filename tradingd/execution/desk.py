"""The order desk: what the operator's commands ask of one exchange's executor.

The CLI never talks to a venue: its requests reach the running daemon over the control channel
(``tradingd.execution.control``), which hands them to the ``OrderDesk`` of the exchange named.
The executor implements it, with the same risk checks, ledger and state machine as strategies.
"""

from __future__ import annotations

from typing import Protocol

import msgspec

from tradingd.execution.audit import Report
from tradingd.strategies.api import MANUAL_STRATEGY, Decision, OrderIntent

__all__ = ["MANUAL_STRATEGY", "CancelReport", "ExecutorSnapshot", "OrderDesk", "StrategyStatus"]


class StrategyStatus(msgspec.Struct, frozen=True, kw_only=True):
    name: str
    strategy: str  # the registered strategy class name ("sma_cross", "grid", "manual")
    exchange: str
    symbols: list[str]
    paused: bool
    reason: str  # why it is paused ("" when running)


class CancelReport(msgspec.Struct, frozen=True, kw_only=True):
    """The outcome of cancelling every open order of one exchange, verified with the venue."""

    exchange: str
    requested: int  # open orders we asked the venue to cancel
    cancelled: int  # confirmed cancelled (or found already terminal)
    remaining: int  # still open, or not confirmed either way
    errors: list[str] = []
    venue_open: int = 0  # open orders the venue lists afterwards (-1: it did not answer)
    flattened: list[str] = []  # with --flatten: the closing orders and their outcome
    positions: dict[str, str] = {}  # instrument -> net quantity left (non-zero only)


class ExecutorSnapshot(msgspec.Struct, frozen=True, kw_only=True):
    """The executor's part of ``tradingd status``."""

    exchange: str
    mode: str  # "paper" | "live"
    trading_allowed: bool
    strategies: list[StrategyStatus]
    open_orders: int
    unknown_orders: int  # outcome not yet known: blocks its instrument until resolved
    positions: dict[str, str]  # instrument -> signed quantity (decimal text), non-zero only
    denials: dict[str, int]  # denial reason -> count since start


class OrderDesk(Protocol):
    @property
    def exchange(self) -> str: ...

    async def submit(self, strategy: str, intent: OrderIntent) -> Decision:
        """Risk-check and commit the intent; Accepted once it is durable (the send follows)."""
        ...

    async def cancel(self, client_order_id: str) -> Decision:
        """Ask the venue to cancel one order of this exchange (any strategy's)."""
        ...

    async def cancel_everything(self, reason: str, *, flatten: bool = False) -> CancelReport:
        """Deny new orders, cancel every open order, verify with the venue, report;
        ``flatten``: then close every position (reduce-only market orders)."""
        ...

    def strategies(self) -> list[StrategyStatus]: ...

    def pause_strategy(self, name: str, reason: str) -> bool:
        """False when no such strategy runs on this exchange."""
        ...

    def resume_strategy(self, name: str) -> bool: ...

    def snapshot(self) -> ExecutorSnapshot: ...

    async def reconcile(self) -> Report | None:
        """Reconcile the account with the venue now; None when it cannot be reconciled."""
        ...
