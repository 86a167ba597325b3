"""A fake OrderDesk for the control channel and CLI tests: decides from a script, records calls."""

from __future__ import annotations

import asyncio
from decimal import Decimal

from tradingd.execution.audit import Outcome, Report, Trigger
from tradingd.execution.desk import CancelReport, ExecutorSnapshot, StrategyStatus
from tradingd.strategies.api import Accepted, Decision, Denied, OrderIntent


class FakeDesk:
    def __init__(self, exchange: str, *, open_orders: int = 0, stuck: int = 0) -> None:
        self._exchange = exchange
        self.submitted: list[tuple[str, OrderIntent]] = []
        self.cancelled: list[str] = []
        self.cancel_everything_reasons: list[str] = []
        self.flattened: list[bool] = []
        self.positions_left: dict[str, str] = {}
        self.deny = ""
        self.open_orders = open_orders
        self.stuck = stuck  # orders the venue will not confirm cancelled
        self.paused: dict[str, str] = {}
        self.release = asyncio.Event()
        self.release.set()
        self._ids = 0
        self.strategy_names = [f"{exchange}-grid"]

    @property
    def exchange(self) -> str:
        return self._exchange

    async def submit(self, strategy: str, intent: OrderIntent) -> Decision:
        await self.release.wait()
        self.submitted.append((strategy, intent))
        if self.deny:
            return Denied(self.deny)
        self._ids += 1
        return Accepted(f"td0{self._ids}")

    async def cancel(self, client_order_id: str) -> Decision:
        self.cancelled.append(client_order_id)
        if client_order_id.startswith("gone"):
            return Denied(f"no open order {client_order_id}")
        return Accepted(client_order_id)

    async def cancel_everything(self, reason: str, *, flatten: bool = False) -> CancelReport:
        self.cancel_everything_reasons.append(reason)
        self.flattened.append(flatten)
        requested = self.open_orders
        self.open_orders = self.stuck
        return CancelReport(
            exchange=self._exchange,
            requested=requested,
            cancelled=requested - self.stuck,
            remaining=self.stuck,
            flattened=["sell 0.5 BTCUSDT (td09): FILLED"] if flatten else [],
            positions=self.positions_left,
        )

    def strategies(self) -> list[StrategyStatus]:
        return [
            StrategyStatus(
                name=name,
                strategy="grid",
                exchange=self._exchange,
                symbols=["BTCUSDT"],
                paused=name in self.paused,
                reason=self.paused.get(name, ""),
            )
            for name in self.strategy_names
        ]

    def pause_strategy(self, name: str, reason: str) -> bool:
        if name not in self.strategy_names:
            return False
        self.paused[name] = reason
        return True

    def resume_strategy(self, name: str) -> bool:
        if name not in self.strategy_names:
            return False
        self.paused.pop(name, None)
        return True

    def snapshot(self) -> ExecutorSnapshot:
        return ExecutorSnapshot(
            exchange=self._exchange,
            mode="paper",
            trading_allowed=False,
            strategies=self.strategies(),
            open_orders=self.open_orders,
            unknown_orders=1,
            positions={"BTCUSDT": str(Decimal("0.5"))},
            denials={"kill switch on": 2},
        )

    async def reconcile(self) -> Report | None:
        return Report(
            exchange=self._exchange,
            trigger=Trigger.ON_DEMAND,
            outcome=Outcome.CLEAN,
            summary="clean: ledger and venue agree",
        )
