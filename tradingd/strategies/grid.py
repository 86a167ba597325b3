"""grid: resting limit orders on a fixed price grid around the mid, with an inventory cap.

At the first ticker with both a bid and an ask, the grid is laid around the mid: level ``i``
(``-levels`` .. ``levels``) is at ``mid * (1 + i * spacing)`` rounded to the tick. Levels below
the mid hold a buy, levels above a sell, level 0 nothing. When the order of a level fills, that
level empties and its neighbour toward the fill takes the opposite order (a buy filled at level
``i`` puts a sell at ``i + 1``; a sell filled at ``i`` a buy at ``i - 1``): each round trip
earns one grid step. An order that ends without filling (cancelled, rejected, denied) leaves its
level wanting the same order again, re-placed on a later ticker. After a denied order the
strategy places nothing for ``retry_after`` seconds.

A level whose order would be below the venue's minimum quantity or notional is not placed;
the strategy says so once (``StrategyContext.notice``, a WARNING in the daemon's log).

An order that would meet one of the strategy's own on the other side (possible while the fills of
a trade through several levels arrive one by one) waits until that one has ended.

Orders of this strategy already open when the grid is laid (left by a previous run) are
cancelled first; the grid is laid once none remain.

``max_inventory`` caps the strategy's position (in base units) including what its open orders
would add: a buy that could take the position above it, or a sell below its negative, waits.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Annotated, Any

import msgspec

from tradingd.strategies.api import (
    Accepted,
    InstrumentRules,
    OrderIntent,
    OrderType,
    OrderUpdate,
    Side,
    Strategy,
    StrategyContext,
    Ticker,
    TimeInForce,
)

_TERMINAL = frozenset({"FILLED", "CANCELED", "REJECTED", "NEVER_PLACED", "DENIED"})


class GridParams(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    levels: Annotated[int, msgspec.Meta(ge=1, le=50)] = 5  # per side
    spacing: Decimal = Decimal("0.002")  # between levels, as a fraction of the mid
    order_size: Decimal = Decimal("0.001")  # base units per level
    max_inventory: Decimal = Decimal("0.01")  # base units, long or short
    # After a denied order, seconds before placing again (tickers come many times a second).
    retry_after: Annotated[float, msgspec.Meta(ge=0)] = 5.0

    def __post_init__(self) -> None:
        if not 0 < self.spacing < 1:
            raise ValueError(f"expected spacing > 0 and < 1, found {self.spacing}")
        if self.spacing * self.levels >= 1:
            raise ValueError(f"expected levels * spacing < 1, found {self.levels} * {self.spacing}")
        for field in ("order_size", "max_inventory"):
            value = getattr(self, field)
            if value <= 0:
                raise ValueError(f"expected {field} > 0, found {value}")


class _Grid:
    def __init__(self, prices: dict[int, Decimal]) -> None:
        self.prices = prices
        self.want: dict[int, Side | None] = {
            i: (Side.BUY if i < 0 else Side.SELL if i > 0 else None) for i in prices
        }
        self.orders: dict[int, str] = {}  # level -> client order id working there
        # A fill's counter order for a level whose own order is still working (a trade that
        # printed through several levels may report the farther fill first): the level takes
        # it when that order ends.
        self.deferred: dict[int, Side] = {}


class Grid(Strategy):
    Params = GridParams

    def __init__(self, ctx: StrategyContext, params: Any) -> None:
        super().__init__(ctx, params)
        self.p: GridParams = params
        self.grids: dict[str, _Grid] = {}
        self._level_of: dict[str, tuple[str, int]] = {}  # client id -> (instrument, level)
        # An update may arrive while submit() has not returned yet: kept until it has.
        self._submitting = False
        self._early: list[OrderUpdate] = []
        self._cleared: set[str] = set()  # instruments whose leftover orders were cancelled
        self._retry_at_us = 0
        self.last_denial = ""

    def on_ticker(self, ticker: Ticker) -> None:
        instrument = ticker.instrument_name
        rules = self.ctx.instrument(instrument)
        if rules is None:
            return
        grid = self.grids.get(instrument)
        if grid is None:
            bid, ask = ticker.best_bid_price, ticker.best_ask_price
            if bid is None or ask is None:
                return
            if self.ctx.open_orders(instrument):
                if instrument not in self._cleared:
                    self._cleared.add(instrument)
                    self.ctx.cancel_all(instrument)
                return
            mid = (bid + ask) / 2
            grid = _Grid(
                {
                    i: rules.round_price(mid * (1 + i * self.p.spacing))
                    for i in range(-self.p.levels, self.p.levels + 1)
                }
            )
            self.grids[instrument] = grid
        self._fill_levels(instrument, grid, rules)

    def on_order(self, update: OrderUpdate) -> None:
        order = update.order
        if order.state not in _TERMINAL:
            return
        where = self._level_of.pop(order.client_order_id, None)
        if where is None:
            if self._submitting:
                self._early.append(update)
            return
        instrument, level = where
        grid = self.grids[instrument]
        grid.orders.pop(level, None)
        if order.state != "FILLED":
            # The level still wants its order (re-placed on a later ticker), unless a fill
            # below or above handed it the opposite one meanwhile.
            if level in grid.deferred:
                grid.want[level] = grid.deferred.pop(level)
            return
        grid.want[level] = grid.deferred.pop(level, None)
        neighbour = level + 1 if order.side is Side.BUY else level - 1
        if neighbour in grid.prices:
            counter = Side.SELL if order.side is Side.BUY else Side.BUY
            if neighbour in grid.orders and grid.want[neighbour] is not counter:
                grid.deferred[neighbour] = counter
            else:
                grid.want[neighbour] = counter
        rules = self.ctx.instrument(instrument)
        if rules is not None:
            self._fill_levels(instrument, grid, rules)

    def _fill_levels(self, instrument: str, grid: _Grid, rules: InstrumentRules) -> None:
        if not self.ctx.trading_allowed() or self.ctx.now_us() < self._retry_at_us:
            return
        quantity = rules.round_quantity(self.p.order_size)
        if quantity < rules.min_quantity or quantity <= 0:
            self.ctx.notice(
                f"{instrument}: order_size {self.p.order_size} rounds to {quantity}, below the "
                f"venue's minimum quantity {rules.min_quantity}: no level is placed"
            )
            return
        if rules.min_notional is not None:
            small = [i for i, p in grid.prices.items() if i and quantity * p < rules.min_notional]
            if small:
                self.ctx.notice(
                    f"{instrument}: levels {', '.join(f'{i:+d}' for i in sorted(small))} are "
                    f"not placed: {quantity} at their price is below the venue's minimum "
                    f"notional {rules.min_notional}"
                )
        for level in sorted(grid.want, key=abs):
            side = grid.want[level]
            if side is None or level in grid.orders:
                continue
            price = grid.prices[level]
            if rules.min_notional is not None and quantity * price < rules.min_notional:
                continue
            if not self._within_inventory(instrument, side, quantity):
                continue
            if self._would_cross(instrument, side, price):
                continue  # placed once the order in the way has ended
            self._submitting = True
            try:
                decision = self.ctx.submit(
                    OrderIntent(
                        instrument=instrument,
                        side=side,
                        quantity=quantity,
                        type=OrderType.LIMIT,
                        price=price,
                        tif=TimeInForce.GTC,
                        tag=f"grid {level:+d}",
                    )
                )
            finally:
                self._submitting = False
            if isinstance(decision, Accepted):
                grid.orders[level] = decision.client_order_id
                self._level_of[decision.client_order_id] = (instrument, level)
                early, self._early = self._early, []
                for update in early:
                    if update.order.client_order_id == decision.client_order_id:
                        self.on_order(update)
                        return  # on_order laid the levels again
            else:
                self.last_denial = decision.reason
                self._retry_at_us = self.ctx.now_us() + int(self.p.retry_after * 1_000_000)
                return  # decided again on an event after retry_after

    def _would_cross(self, instrument: str, side: Side, price: Decimal) -> bool:
        """Whether the order would meet one of ours (a self-trade): possible while the fills
        of a trade through several levels are still being reported."""
        for order in self.ctx.open_orders(instrument):
            if order.side is side or order.price is None:
                continue
            if (side is Side.SELL and price <= order.price) or (
                side is Side.BUY and price >= order.price
            ):
                return True
        return False

    def _within_inventory(self, instrument: str, side: Side, quantity: Decimal) -> bool:
        position = self.ctx.position(instrument).quantity
        working = [o for o in self.ctx.open_orders(instrument) if o.side is side]
        pending = sum((o.quantity - o.filled_quantity for o in working), Decimal(0))
        if side is Side.BUY:
            return position + pending + quantity <= self.p.max_inventory
        return position - pending - quantity >= -self.p.max_inventory
