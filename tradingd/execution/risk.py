"""Pre-trade risk: pure checks of one intent against the limits of ``[risk]``, the venue's own
rules and what the executor knows of the market and the account.

``check`` returns None (allowed) or the denial reason, which always starts with the name of the
rule that denied (``max_order_notional: ...``), so that operators and counters can group them.
Cancels are never risk-checked: reducing exposure must always be possible.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Mapping
from decimal import Decimal

import msgspec

from tradingd.config import RiskConfig
from tradingd.strategies.api import InstrumentRules, OrderIntent, OrderType, Side


class InstrumentInfo(msgspec.Struct, frozen=True, kw_only=True):
    rules: InstrumentRules
    # Spot: balances are checked (quote for buys, base for sells). Derivatives are bounded by
    # the notional limits only (margin is the venue's).
    spot: bool = True
    # Deribit inverse contracts: the quantity is in quote currency (USD), so is the notional.
    inverse: bool = False


class MarketView(msgspec.Struct, frozen=True, kw_only=True):
    """What the executor last saw of one instrument."""

    last_price: Decimal | None = None
    best_bid: Decimal | None = None
    best_ask: Decimal | None = None
    # Receive time of the latest trade or ticker of the instrument (0: none yet).
    updated_us: int = 0
    gap_open: bool = False


class AccountView(msgspec.Struct, frozen=True, kw_only=True):
    """The account as risk sees it (the whole exchange account, every strategy included)."""

    # Free balances: totals less what open orders reserve (``reservations``).
    free: Mapping[str, Decimal]
    # Signed position of the account on the instrument (base units; USD for inverse).
    position: Decimal
    open_orders: int


class OpenOrderLoad(msgspec.Struct, frozen=True, kw_only=True):
    """An open order's claim on the balances."""

    side: Side
    remaining: Decimal
    price: Decimal | None
    base: str
    quote: str


def notional(info: InstrumentInfo, quantity: Decimal, price: Decimal) -> Decimal:
    if info.inverse:
        return quantity
    return quantity * price * info.rules.contract_size


def reference_price(intent: OrderIntent, market: MarketView) -> Decimal | None:
    """The price the order will trade at, as far as we can know it before sending."""
    if intent.type is OrderType.LIMIT:
        return intent.price
    touch = market.best_ask if intent.side is Side.BUY else market.best_bid
    return touch if touch is not None else market.last_price


def reservations(orders: Iterable[OpenOrderLoad]) -> dict[str, Decimal]:
    """What open orders hold back: the quote a buy may spend, the base a sell may deliver."""
    held: dict[str, Decimal] = {}
    for order in orders:
        if order.side is Side.BUY:
            if order.price is None:
                continue  # a market order in flight: its fill lands in the balances at once
            held[order.quote] = held.get(order.quote, Decimal(0)) + order.remaining * order.price
        else:
            held[order.base] = held.get(order.base, Decimal(0)) + order.remaining
    return held


class OrderRate:
    """Orders accepted in the last second (a sliding window), for ``max_orders_per_second``."""

    def __init__(self, limit: int) -> None:
        self._limit = limit
        self._accepted: deque[int] = deque()

    def would_exceed(self, now_us: int) -> bool:
        while self._accepted and self._accepted[0] <= now_us - 1_000_000:
            self._accepted.popleft()
        return len(self._accepted) >= self._limit

    def record(self, now_us: int) -> None:
        self._accepted.append(now_us)


def check(
    intent: OrderIntent,
    info: InstrumentInfo | None,
    market: MarketView,
    account: AccountView,
    limits: RiskConfig,
    *,
    now_us: int,
    rate: OrderRate,
    taker_fee: Decimal = Decimal(0),
) -> str | None:
    """None if ``intent`` may be sent; else the reason it is denied."""
    if info is None:
        return f"unknown_instrument: {intent.instrument} has no known venue rules"
    reason = _venue_rules(intent, info)
    if reason is not None:
        return reason
    reason = _freshness(market, limits, now_us)
    if reason is not None:
        return reason
    price = reference_price(intent, market)
    if price is None or price <= 0:
        return f"no_price: no bid/ask or last trade to value a market order on {intent.instrument}"
    if intent.type is OrderType.LIMIT and market.last_price is not None:
        distance = abs(price - market.last_price) / market.last_price
        if distance > limits.price_band:
            return (
                f"price_band: {price} is {distance:.2%} from the last trade {market.last_price}"
                f" (limit {limits.price_band:.2%})"
            )
    order_notional = notional(info, intent.quantity, price)
    quote = info.rules.quote
    if info.rules.min_notional is not None and order_notional < info.rules.min_notional:
        return f"min_notional: {order_notional} {quote} < {info.rules.min_notional}"
    if order_notional > limits.max_order_notional:
        return f"max_order_notional: {order_notional} {quote} > {limits.max_order_notional}"
    signed = intent.quantity if intent.side is Side.BUY else -intent.quantity
    after = account.position + signed
    after_notional = notional(info, abs(after), price)
    if abs(after) > abs(account.position) and after_notional > limits.max_position_notional:
        return (
            f"max_position_notional: position {after} {intent.instrument} would be worth "
            f"{after_notional} {quote} > {limits.max_position_notional}"
        )
    if intent.reduce_only and abs(after) > abs(account.position):
        return f"reduce_only: the order would grow the position {account.position}"
    if account.open_orders >= limits.max_open_orders:
        return f"max_open_orders: {account.open_orders} open (limit {limits.max_open_orders})"
    if rate.would_exceed(now_us):
        return f"max_orders_per_second: limit {limits.max_orders_per_second} reached"
    if info.spot:
        return _balance(intent, info, account, price, taker_fee)
    return None


def _venue_rules(intent: OrderIntent, info: InstrumentInfo) -> str | None:
    rules = info.rules
    if intent.quantity <= 0:
        return f"quantity: {intent.quantity} is not positive"
    if intent.type is OrderType.LIMIT:
        if intent.price is None or intent.price <= 0:
            return "price: a limit order needs a positive price"
        if intent.price % rules.tick_size != 0:
            return f"tick_size: price {intent.price} is not a multiple of {rules.tick_size}"
    if intent.quantity % rules.step_size != 0:
        return f"step_size: quantity {intent.quantity} is not a multiple of {rules.step_size}"
    if intent.quantity < rules.min_quantity:
        return f"min_quantity: {intent.quantity} < {rules.min_quantity}"
    return None


def _freshness(market: MarketView, limits: RiskConfig, now_us: int) -> str | None:
    if market.gap_open:
        return "data_gap: the instrument's market data has an open gap"
    if market.updated_us <= 0:
        return "max_data_age: no market data yet"
    age = (now_us - market.updated_us) / 1_000_000
    if age > limits.max_data_age:
        return f"max_data_age: market data is {age:.1f}s old (limit {limits.max_data_age}s)"
    return None


def _balance(
    intent: OrderIntent,
    info: InstrumentInfo,
    account: AccountView,
    price: Decimal,
    taker_fee: Decimal,
) -> str | None:
    rules = info.rules
    if intent.side is Side.BUY:
        needed = notional(info, intent.quantity, price) * (1 + taker_fee)
        currency = rules.quote
    else:
        needed = intent.quantity
        currency = rules.base
    free = account.free.get(currency, Decimal(0))
    if needed > free:
        return f"balance: needs {needed} {currency}, {free} free after open orders"
    return None
