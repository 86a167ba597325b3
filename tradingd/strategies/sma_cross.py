"""sma_cross: trend following on closed bars with two simple moving averages.

On each closed bar (a bar repeated for a period already seen is ignored) the strategy compares
the average of the last ``fast`` closes with that of the last ``slow`` closes. Fast above slow
is an up-trend: the strategy wants to be long; otherwise it wants to be flat. When its position
disagrees and it has no order working on that instrument, it sends one order:

* entry: ``risk_pct`` percent of the free quote balance, converted at the best ask (else the
  bar's close), rounded down to the step; skipped below the minimum quantity or notional;
* exit: the whole position, rounded down to the step (reduce-only).

With ``max_slippage_pct`` 0 (the default) that order is a market order. Above 0 it is an
immediate-or-cancel limit order at most that far through the best ask (entry) or bid (exit),
rounded to the tick on the safe side, and the entry is sized at that limit price so that even
the worst fill stays within ``risk_pct``.

A denied order is remembered in ``last_denial`` and decided again on the next closed bar.
"""

from __future__ import annotations

from collections import deque
from decimal import Decimal
from typing import Annotated, Any

import msgspec

from tradingd.strategies.api import (
    Bar,
    Denied,
    InstrumentRules,
    OrderIntent,
    OrderType,
    Side,
    Strategy,
    StrategyContext,
    TimeInForce,
)


class SmaCrossParams(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    fast: Annotated[int, msgspec.Meta(ge=1)] = 10
    slow: Annotated[int, msgspec.Meta(ge=2)] = 30
    # Percent of the free quote balance committed by one entry.
    risk_pct: Decimal = Decimal(10)
    # 0: market orders; else IOC limit orders at most this percent through the touch.
    max_slippage_pct: Decimal = Decimal(0)

    def __post_init__(self) -> None:
        if not 0 < self.risk_pct <= 100:
            raise ValueError(f"expected risk_pct > 0 and <= 100, found {self.risk_pct}")
        if not 0 <= self.max_slippage_pct < 100:
            raise ValueError(
                f"expected max_slippage_pct >= 0 and < 100, found {self.max_slippage_pct}"
            )
        if self.fast >= self.slow:
            raise ValueError(f"expected fast < slow, found fast {self.fast} and slow {self.slow}")


class SmaCross(Strategy):
    Params = SmaCrossParams

    def __init__(self, ctx: StrategyContext, params: Any) -> None:
        super().__init__(ctx, params)
        self.p: SmaCrossParams = params
        self._closes: dict[str, deque[Decimal]] = {}
        self._last_bar_us: dict[str, int] = {}
        self.last_denial = ""

    def on_bar(self, bar: Bar) -> None:
        if not bar.closed or bar.tick_us <= self._last_bar_us.get(bar.instrument_name, -1):
            return
        self._last_bar_us[bar.instrument_name] = bar.tick_us
        closes = self._closes.setdefault(bar.instrument_name, deque(maxlen=self.p.slow))
        closes.append(bar.close)
        if len(closes) < self.p.slow:
            return
        fast = sum(list(closes)[-self.p.fast :], Decimal(0)) / self.p.fast
        slow = sum(closes, Decimal(0)) / self.p.slow
        self._decide(bar.instrument_name, want_long=fast > slow, close=bar.close)

    def _decide(self, instrument: str, *, want_long: bool, close: Decimal) -> None:
        ctx = self.ctx
        if ctx.open_orders(instrument) or not ctx.trading_allowed():
            return
        rules = ctx.instrument(instrument)
        if rules is None:
            return
        held = ctx.position(instrument).quantity
        bid, ask = ctx.best_bid_ask(instrument)
        if want_long and held <= 0:
            limit = self._limit(Side.BUY, ask or close, rules)
            price = limit or ask or close
            balance = ctx.balances().get(rules.quote)
            if balance is None or balance.free <= 0:
                return
            budget = balance.free * self.p.risk_pct / 100
            quantity = rules.round_quantity(budget / price)
            if quantity < rules.min_quantity or quantity <= 0:
                return
            if rules.min_notional is not None and quantity * price < rules.min_notional:
                return
            self._send(
                OrderIntent(
                    instrument=instrument,
                    side=Side.BUY,
                    quantity=quantity,
                    type=OrderType.MARKET if limit is None else OrderType.LIMIT,
                    price=limit,
                    tif=TimeInForce.IOC,
                    tag="entry",
                )
            )
        elif not want_long and held > 0:
            quantity = rules.round_quantity(held)
            if quantity < rules.min_quantity or quantity <= 0:
                return  # dust the venue would refuse
            limit = self._limit(Side.SELL, bid or close, rules)
            self._send(
                OrderIntent(
                    instrument=instrument,
                    side=Side.SELL,
                    quantity=quantity,
                    type=OrderType.MARKET if limit is None else OrderType.LIMIT,
                    price=limit,
                    tif=TimeInForce.IOC,
                    reduce_only=True,
                    tag="exit",
                )
            )

    def _limit(self, side: Side, touch: Decimal, rules: InstrumentRules) -> Decimal | None:
        """The IOC limit price ``max_slippage_pct`` through ``touch`` on the tick, never
        further (None: market orders)."""
        if self.p.max_slippage_pct == 0:
            return None
        if side is Side.BUY:
            return rules.round_price(touch * (1 + self.p.max_slippage_pct / 100))
        worst = touch * (1 - self.p.max_slippage_pct / 100)
        rounded = rules.round_price(worst)
        return rounded if rounded == worst else rounded + rules.tick_size

    def _send(self, intent: OrderIntent) -> None:
        decision = self.ctx.submit(intent)
        if isinstance(decision, Denied):
            self.last_denial = decision.reason
