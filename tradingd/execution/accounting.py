"""Positions, balances and PnL derived from fills: pure, Decimal only, no I/O.

The ledger stores fills and nothing derived from them; a ``Book`` is rebuilt by replaying
them (``Book.replay``) and kept current by applying each new fill (``Book.apply``). Both paths
run the same arithmetic in the same order, so a restart gets exactly the numbers the live
process had.

Method: average cost per (strategy, instrument). A fill in the direction of the position
adds to it at a new average price; a fill against it closes (realising PnL against the
average) and, when it crosses zero, opens the remainder at the fill's price.

* Linear instruments (spot): quantity in base, PnL in the quote currency; the account's
  balances move by the traded base and quote amounts.
* Inverse contracts (Deribit BTC-PERPETUAL and the like, ``inverse=True``): quantity in
  quote (USD), average entry is the harmonic mean, PnL and balance changes in the base
  currency (only realised PnL moves the balance).

Realised PnL is gross: fees are reported separately (``fees``) and taken from the balances.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from decimal import Context, Decimal, localcontext

import msgspec

from tradingd.strategies.api import PositionView, Side

ZERO = Decimal(0)
# Enough digits that the divisions of average-cost accounting never round what matters.
_ARITHMETIC = Context(prec=50)


def is_inverse(market_type: str | None, quote: str | None) -> bool:
    """Coin-margined contracts (Deribit's BTC-PERPETUAL, futures): sized in USD, settled and
    accounted in the base coin. ``market_type`` as in the instruments table."""
    return market_type in ("perpetual", "future") and quote == "USD"


class FillRecord(msgspec.Struct, frozen=True, kw_only=True):
    """One fill as the ledger holds it, with what accounting needs to know of its instrument."""

    strategy: str
    exchange: str
    instrument: str
    base: str
    quote: str
    side: Side
    quantity: Decimal
    price: Decimal
    fee: Decimal
    fee_currency: str
    trade_id: str
    at_us: int
    inverse: bool = False  # Deribit inverse contracts: quantity in quote (USD), PnL in base


class _Position:
    """Mutable running state of one (strategy, instrument)."""

    __slots__ = ("average", "inverse", "pnl_currency", "quantity", "realised")

    def __init__(self, pnl_currency: str, inverse: bool) -> None:
        self.quantity = ZERO  # signed
        self.average: Decimal | None = None
        self.realised = ZERO
        self.pnl_currency = pnl_currency
        self.inverse = inverse

    def pnl_per_unit(self, entry: Decimal, exit_: Decimal) -> Decimal:
        """PnL of one long unit bought at ``entry`` and sold at ``exit_``."""
        if self.inverse:
            return 1 / entry - 1 / exit_
        return exit_ - entry

    def trade(self, signed_quantity: Decimal, price: Decimal) -> Decimal:
        """Apply a signed quantity at a price; returns the PnL it realised."""
        realised = ZERO
        if self.quantity != 0 and (self.quantity > 0) != (signed_quantity > 0):
            closing = min(abs(signed_quantity), abs(self.quantity))
            assert self.average is not None
            direction = 1 if self.quantity > 0 else -1
            realised = direction * closing * self.pnl_per_unit(self.average, price)
            self.quantity += direction * -closing
            signed_quantity += direction * closing
            if self.quantity == 0:
                self.average = None
        if signed_quantity != 0:
            if self.quantity == 0 or self.average is None:
                self.average = price
            elif self.inverse:
                self.average = (abs(self.quantity) + abs(signed_quantity)) / (
                    abs(self.quantity) / self.average + abs(signed_quantity) / price
                )
            else:
                self.average = (
                    abs(self.quantity) * self.average + abs(signed_quantity) * price
                ) / (abs(self.quantity) + abs(signed_quantity))
            self.quantity += signed_quantity
        self.realised += realised
        return realised

    def view(self, instrument: str) -> PositionView:
        return PositionView(
            instrument=instrument,
            quantity=self.quantity,
            average_price=self.average,
            realised_pnl=self.realised,
        )

    def unrealised(self, mark: Decimal) -> Decimal:
        if self.quantity == 0 or self.average is None:
            return ZERO
        return self.quantity * self.pnl_per_unit(self.average, mark)


class Book:
    """The account as the fills say it is: positions per strategy, balances, PnL and fees."""

    def __init__(self, starting_balances: Mapping[str, Decimal] | None = None) -> None:
        self._balances: dict[str, Decimal] = dict(starting_balances or {})
        self._positions: dict[tuple[str, str], _Position] = {}
        self._fees: dict[str, dict[str, Decimal]] = {}  # strategy -> currency -> total
        self._seen: set[tuple[str, str]] = set()

    @classmethod
    def replay(
        cls, fills: Iterable[FillRecord], starting_balances: Mapping[str, Decimal] | None = None
    ) -> Book:
        book = cls(starting_balances)
        for fill in fills:
            book.apply(fill)
        return book

    def apply(self, fill: FillRecord) -> bool:
        """Account for one fill; False (and nothing changes) if its (exchange, trade_id) was
        already applied."""
        key = (fill.exchange, fill.trade_id)
        if key in self._seen:
            return False
        if fill.quantity <= 0 or fill.price <= 0:
            raise ValueError(
                f"fill {fill.exchange}/{fill.trade_id}: expected a positive quantity and price, "
                f"found {fill.quantity} @ {fill.price}"
            )
        self._seen.add(key)
        with localcontext(_ARITHMETIC):
            position = self._positions.get((fill.strategy, fill.instrument))
            if position is None:
                position = _Position(fill.base if fill.inverse else fill.quote, fill.inverse)
                self._positions[(fill.strategy, fill.instrument)] = position
            signed = fill.quantity if fill.side is Side.BUY else -fill.quantity
            realised = position.trade(signed, fill.price)
            if fill.inverse:
                self._add(self._balances, fill.base, realised)
            else:
                self._add(self._balances, fill.base, signed)
                self._add(self._balances, fill.quote, -signed * fill.price)
            self._add(self._balances, fill.fee_currency, -fill.fee)
            self._add(self._fees.setdefault(fill.strategy, {}), fill.fee_currency, fill.fee)
        return True

    @staticmethod
    def _add(totals: dict[str, Decimal], currency: str, amount: Decimal) -> None:
        totals[currency] = totals.get(currency, ZERO) + amount

    def seen(self, exchange: str, trade_id: str) -> bool:
        return (exchange, trade_id) in self._seen

    def position(self, strategy: str, instrument: str) -> PositionView:
        position = self._positions.get((strategy, instrument))
        if position is None:
            return PositionView(
                instrument=instrument, quantity=ZERO, average_price=None, realised_pnl=ZERO
            )
        return position.view(instrument)

    def positions(self, strategy: str | None = None) -> list[tuple[str, PositionView]]:
        """(strategy, position) for every instrument ever traded, sorted."""
        return [
            (name, position.view(instrument))
            for (name, instrument), position in sorted(self._positions.items())
            if strategy is None or name == strategy
        ]

    def strategies(self) -> list[str]:
        return sorted({name for name, _ in self._positions} | set(self._fees))

    def balances(self) -> dict[str, Decimal]:
        """Starting balances plus every fill's effect, fees included."""
        return dict(self._balances)

    def realised_pnl(self, strategy: str | None = None) -> dict[str, Decimal]:
        """Gross realised PnL by currency."""
        totals: dict[str, Decimal] = {}
        for (name, _), position in self._positions.items():
            if strategy is None or name == strategy:
                self._add(totals, position.pnl_currency, position.realised)
        return totals

    def fees(self, strategy: str | None = None) -> dict[str, Decimal]:
        totals: dict[str, Decimal] = {}
        for name, by_currency in self._fees.items():
            if strategy is None or name == strategy:
                for currency, amount in by_currency.items():
                    self._add(totals, currency, amount)
        return totals

    def unrealised_pnl(
        self, marks: Mapping[str, Decimal], strategy: str | None = None
    ) -> dict[str, Decimal]:
        """Open positions valued at ``marks`` (instrument -> price) by currency; an instrument
        without a mark is left out (see ``unmarked``)."""
        totals: dict[str, Decimal] = {}
        with localcontext(_ARITHMETIC):
            for (name, instrument), position in self._positions.items():
                if strategy is not None and name != strategy:
                    continue
                mark = marks.get(instrument)
                if mark is None or position.quantity == 0:
                    continue
                self._add(totals, position.pnl_currency, position.unrealised(mark))
        return totals

    def unmarked(self, marks: Mapping[str, Decimal], strategy: str | None = None) -> list[str]:
        """Instruments with an open position and no mark."""
        return sorted(
            {
                instrument
                for (name, instrument), position in self._positions.items()
                if position.quantity != 0
                and instrument not in marks
                and (strategy is None or name == strategy)
            }
        )
