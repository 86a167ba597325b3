"""sma_cross and grid decide right: what they send, how much, at which price, and when not."""

from __future__ import annotations

from decimal import Decimal

import msgspec
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.strategy_doubles import BTCUSDT, MemoryContext, bar, ticker
from tradingd.strategies.api import (
    Accepted,
    Decision,
    OrderIntent,
    OrderType,
    Side,
    TimeInForce,
)
from tradingd.strategies.grid import Grid, GridParams
from tradingd.strategies.sma_cross import SmaCross, SmaCrossParams

D = Decimal


def _sma(ctx: MemoryContext, **params: object) -> SmaCross:
    strategy = SmaCross(ctx, SmaCrossParams(**{"fast": 2, "slow": 4, "risk_pct": D(10), **params}))  # type: ignore[arg-type]
    ctx.strategy = strategy
    return strategy


def test_sma_cross_waits_for_slow_closed_bars_then_buys_risk_pct_of_quote() -> None:
    ctx = MemoryContext()
    ctx.bid_ask["BTCUSDT"] = (D("103.99"), D("104.01"))
    sma = _sma(ctx)
    for i, close in enumerate(["100", "101", "102"]):
        sma.on_bar(bar(close, i))
    sma.on_bar(bar("200", 3, closed=False))  # an open bar never counts
    assert ctx.submitted == []
    sma.on_bar(bar("104", 3))  # fast (102+104)/2=103 > slow 101.75
    [intent] = ctx.submitted
    assert intent.side is Side.BUY and intent.type is OrderType.MARKET
    # 10 % of 10000 USDT at the best ask, rounded DOWN to the step 0.00001
    assert intent.quantity == D("9.61446")
    assert intent.quantity * D("104.01") <= D(1000)


def test_sma_cross_does_not_stack_orders_or_reenter_while_long() -> None:
    ctx = MemoryContext()
    sma = _sma(ctx)
    for i, close in enumerate(["100", "101", "102", "104", "106"]):
        sma.on_bar(bar(close, i))
    assert len(ctx.submitted) == 1  # the second up bar found the entry still working
    ctx.fill("td1", ctx.submitted[0].quantity, D(104))
    sma.on_bar(bar("108", 5))
    sma.on_bar(bar("108", 5))  # the same period again
    assert len(ctx.submitted) == 1


def test_sma_cross_exits_the_whole_position_when_the_trend_turns() -> None:
    ctx = MemoryContext()
    sma = _sma(ctx)
    for i, close in enumerate(["100", "101", "102", "104"]):
        sma.on_bar(bar(close, i))
    ctx.fill("td1", D("9.5"), D(104))
    ctx.finish("td1", "CANCELED")  # an IOC remainder
    for i, close in enumerate(["103", "100", "97"], start=4):
        sma.on_bar(bar(close, i))
    exits = [s for s in ctx.submitted if s.side is Side.SELL]
    assert len(exits) == 1
    assert exits[0].quantity == D("9.5") and exits[0].reduce_only


def test_sma_cross_respects_min_notional_trading_gate_and_remembers_denials() -> None:
    ctx = MemoryContext(balances={"USDT": D(40)})  # 10 % = 4 USDT < min notional 5
    sma = _sma(ctx)
    for i, close in enumerate(["100", "101", "102", "104"]):
        sma.on_bar(bar(close, i))
    assert ctx.submitted == []
    ctx2 = MemoryContext()
    ctx2.allowed = False
    sma2 = _sma(ctx2)
    for i, close in enumerate(["100", "101", "102", "104"]):
        sma2.on_bar(bar(close, i))
    assert ctx2.submitted == []
    ctx2.allowed = True
    ctx2.deny_reason = "max_order_notional 500 exceeded"
    sma2.on_bar(bar("106", 4))
    assert len(ctx2.submitted) == 1 and sma2.last_denial == "max_order_notional 500 exceeded"


def test_sma_cross_stays_flat_in_a_down_trend() -> None:
    ctx = MemoryContext()
    sma = _sma(ctx)
    for i, close in enumerate(["110", "108", "105", "101", "99", "97"]):
        sma.on_bar(bar(close, i))
    assert ctx.submitted == []


# -- grid -------------------------------------------------------------------------------------


def _grid(ctx: MemoryContext, **params: object) -> Grid:
    defaults: dict[str, object] = {
        "levels": 2,
        "spacing": D("0.01"),
        "order_size": D("0.1"),
        "max_inventory": D(1),
    }
    strategy = Grid(ctx, GridParams(**{**defaults, **params}))  # type: ignore[arg-type]
    ctx.strategy = strategy
    return strategy


def _working(ctx: MemoryContext) -> set[tuple[str, Decimal]]:
    return {(o.side.value, o.price) for o in ctx.open_orders() if o.price is not None}


def test_grid_lays_buys_below_and_sells_above_the_mid_rounded_to_the_tick() -> None:
    ctx = MemoryContext()
    grid = _grid(ctx)
    grid.on_ticker(ticker("99.99", "100.01"))  # mid 100
    assert _working(ctx) == {
        ("buy", D("98.00")),
        ("buy", D("99.00")),
        ("sell", D("101.00")),
        ("sell", D("102.00")),
    }
    assert all(s.quantity == D("0.1") and s.type is OrderType.LIMIT for s in ctx.submitted)
    grid.on_ticker(ticker("99.5", "100.5"))  # nothing new wanted
    assert len(ctx.submitted) == 4
    rules = BTCUSDT
    assert all(s.price == rules.round_price(s.price) for s in ctx.submitted if s.price)


def test_grid_says_once_which_levels_are_below_the_venues_min_notional() -> None:
    ctx = MemoryContext()  # BTCUSDT: min_notional 5, step 0.00001
    grid = _grid(ctx, order_size=D("0.0505"))
    grid.on_ticker(ticker("99.99", "100.01"))  # 0.0505 x 98 and x 99 are below 5
    assert _working(ctx) == {("sell", D("101.00")), ("sell", D("102.00"))}
    grid.on_ticker(ticker("99.99", "100.01"))
    assert ctx.notices == [
        "BTCUSDT: levels -2, -1 are not placed: 0.05050 at their price is below the venue's"
        " minimum notional 5"
    ]


def test_grid_says_when_order_size_is_below_the_venues_min_quantity() -> None:
    ctx = MemoryContext()
    grid = _grid(ctx, order_size=D("0.000001"))
    grid.on_ticker(ticker("99.99", "100.01"))
    assert ctx.submitted == []
    assert len(ctx.notices) == 1 and "below the venue's minimum quantity" in ctx.notices[0]


def test_grid_replaces_a_filled_level_with_the_opposite_order_one_step_away() -> None:
    ctx = MemoryContext()
    grid = _grid(ctx)
    grid.on_ticker(ticker("99.99", "100.01"))
    buy_99 = next(o for o in ctx.open_orders() if o.price == D(99))
    ctx.fill(buy_99.client_order_id, D("0.1"), D(99))
    # The buy at 99 (level -1) filled: a sell at level 0 (100) takes its place.
    assert _working(ctx) == {
        ("buy", D("98.00")),
        ("sell", D("100.00")),
        ("sell", D("101.00")),
        ("sell", D("102.00")),
    }
    sell_100 = next(o for o in ctx.open_orders() if o.price == D(100))
    ctx.fill(sell_100.client_order_id, D("0.1"), D(100))
    # Round trip done (+0.1 USDT): level -1 buys again, level 0 is empty.
    assert ("buy", D("99.00")) in _working(ctx)
    assert ("sell", D("100.00")) not in _working(ctx)
    assert ctx.position("BTCUSDT").realised_pnl == D("0.1")


def test_grid_partial_fill_waits_and_a_cancelled_level_is_placed_again() -> None:
    ctx = MemoryContext()
    grid = _grid(ctx)
    grid.on_ticker(ticker("99.99", "100.01"))
    buy_99 = next(o for o in ctx.open_orders() if o.price == D(99))
    ctx.fill(buy_99.client_order_id, D("0.04"), D(99))
    assert len(ctx.submitted) == 4  # partially filled: still working, nothing new
    ctx.finish(buy_99.client_order_id, "CANCELED")
    assert ("buy", D("99.00")) not in _working(ctx)
    grid.on_ticker(ticker("99.99", "100.01"))
    assert ("buy", D("99.00")) in _working(ctx)


def test_grid_inventory_cap_holds_back_buys() -> None:
    ctx = MemoryContext()
    grid = _grid(ctx, levels=3, max_inventory=D("0.25"))
    grid.on_ticker(ticker("99.99", "100.01"))
    buys = [o for o in ctx.open_orders() if o.side is Side.BUY]
    assert len(buys) == 2  # a third 0.1 would allow 0.3 > 0.25
    # The nearest levels first.
    assert {o.price for o in buys} == {D(99), D(98)}
    ctx.fill(buys[0].client_order_id, D("0.1"), buys[0].price or D(0))
    assert len([o for o in ctx.open_orders() if o.side is Side.BUY]) == 1


def test_grid_places_nothing_while_trading_is_not_allowed_or_without_both_sides() -> None:
    ctx = MemoryContext()
    grid = _grid(ctx)
    grid.on_ticker(
        ticker("99.99", "100.01").__class__(
            exchange="binance",
            instrument_name="BTCUSDT",
            best_bid_price_text="100",
            timestamp_us=0,
            received_us=0,
        )
    )
    assert ctx.submitted == []
    ctx.allowed = False
    grid.on_ticker(ticker("99.99", "100.01"))
    assert ctx.submitted == []
    ctx.allowed = True
    grid.on_ticker(ticker("120", "120.02"))  # the grid stays where it was laid
    assert {s.price for s in ctx.submitted} == {D(98), D(99), D(101), D(102)}


def test_grid_cancels_leftover_orders_before_laying_the_grid() -> None:
    ctx = MemoryContext()
    ctx.submit(OrderIntent(instrument="BTCUSDT", side=Side.BUY, quantity=D("0.1"), price=D(90)))
    ctx.submitted.clear()
    grid = _grid(ctx)
    grid.on_ticker(ticker("99.99", "100.01"))
    grid.on_ticker(ticker("99.99", "100.01"))
    assert ctx.cancelled == ["td1"] and ctx.submitted == []  # asked once, waits
    ctx.finish("td1", "CANCELED")
    grid.on_ticker(ticker("99.99", "100.01"))
    assert len(ctx.submitted) == 4


class InstantFillContext(MemoryContext):
    """A venue so fast that the fill is reported before submit() returns."""

    def submit(self, intent: OrderIntent) -> Decision:
        decision = super().submit(intent)
        if isinstance(decision, Accepted) and intent.side is Side.BUY and intent.price == D(99):
            self.fill(decision.client_order_id, intent.quantity, D(99))
        return decision


def test_grid_handles_an_update_that_arrives_before_submit_returns() -> None:
    ctx = InstantFillContext()
    grid = _grid(ctx)
    grid.on_ticker(ticker("99.99", "100.01"))
    assert ("sell", D("100.00")) in _working(ctx)
    assert ("buy", D("99.00")) not in _working(ctx)
    assert len(grid.grids["BTCUSDT"].orders) == 4


@settings(max_examples=200, deadline=None)
@given(
    balance=st.decimals(min_value=D(0), max_value=D(10**7), places=2),
    ask=st.decimals(min_value=D("0.0001"), max_value=D(10**6), places=4),
    risk_pct=st.decimals(min_value=D("0.01"), max_value=D(100), places=2),
    step=st.sampled_from([D("0.00001"), D("0.001"), D(1)]),
)
def test_sma_cross_entry_is_within_budget_on_the_step_and_above_the_minimums(
    balance: Decimal, ask: Decimal, risk_pct: Decimal, step: Decimal
) -> None:
    rules = msgspec.structs.replace(BTCUSDT, step_size=step, min_quantity=step)
    ctx = MemoryContext(rules={"BTCUSDT": rules}, balances={"USDT": balance})
    ctx.bid_ask["BTCUSDT"] = (ask, ask)
    sma = _sma(ctx, risk_pct=risk_pct)
    for i, close in enumerate(["100", "101", "102", "104"]):
        sma.on_bar(bar(close, i))
    budget = balance * risk_pct / 100
    if not ctx.submitted:
        # Skipped only when even one step, or the minimum notional, is out of the budget.
        assert (budget / ask) // step * step < step or (budget / ask) // step * step * ask < 5
        return
    [intent] = ctx.submitted
    assert intent.quantity * ask <= budget
    assert intent.quantity % step == 0 and intent.quantity >= rules.min_quantity
    assert intent.quantity * ask >= rules.min_notional  # type: ignore[operator]
    # Rounded down by less than one step.
    assert budget / ask - intent.quantity < step


@settings(max_examples=200, deadline=None)
@given(
    levels=st.integers(min_value=1, max_value=5),
    cap_orders=st.integers(min_value=1, max_value=6),
    steps=st.lists(
        st.tuples(st.sampled_from(["fill", "partial", "cancel", "ticker"]), st.integers(0, 20)),
        max_size=60,
    ),
)
def test_grid_invariants_hold_whatever_the_venue_does(
    levels: int, cap_orders: int, steps: list[tuple[str, int]]
) -> None:
    """Whatever fills or cancels: the inventory cap holds with the open orders counted, each
    level has at most one order, and every buy rests below every sell."""
    ctx = MemoryContext(balances={"USDT": D(10**6), "BTC": D(100)})
    cap = D("0.1") * cap_orders
    grid = _grid(ctx, levels=levels, max_inventory=cap)
    grid.on_ticker(ticker("99.99", "100.01"))
    for action, pick in steps:
        working = sorted(ctx.open_orders(), key=lambda o: o.client_order_id)
        if action == "ticker" or not working:
            grid.on_ticker(ticker("99.99", "100.01"))
        else:
            order = working[pick % len(working)]
            left = order.quantity - order.filled_quantity
            if action == "fill":
                ctx.fill(order.client_order_id, left, order.price or D(0))
            elif action == "partial":
                ctx.fill(order.client_order_id, left / 2, order.price or D(0))
            else:
                ctx.finish(order.client_order_id, "CANCELED")
        position = ctx.position("BTCUSDT").quantity
        open_now = ctx.open_orders()
        buys = [o for o in open_now if o.side is Side.BUY]
        sells = [o for o in open_now if o.side is Side.SELL]
        remaining = sum((o.quantity - o.filled_quantity for o in buys), D(0))
        assert position + remaining <= cap
        assert position - sum((o.quantity - o.filled_quantity for o in sells), D(0)) >= -cap
        prices = [o.price for o in open_now]
        assert len(prices) == len(set(prices))
        if buys and sells:
            assert max(o.price or D(0) for o in buys) < min(o.price or D(0) for o in sells)


def test_grid_trade_through_two_levels_reported_farther_first() -> None:
    ctx = MemoryContext()
    grid = _grid(ctx)
    grid.on_ticker(ticker("99.99", "100.01"))
    by_price = {o.price: o.client_order_id for o in ctx.open_orders()}
    ctx.fill(by_price[D(98)], D("0.1"), D(98))
    # The counter sell for 98 belongs at 99, where our buy still works: nothing crosses it.
    assert _working(ctx) == {("buy", D(99)), ("sell", D(101)), ("sell", D(102))}
    ctx.fill(by_price[D(99)], D("0.1"), D(99))
    assert _working(ctx) == {
        ("sell", D(99)),
        ("sell", D(100)),
        ("sell", D(101)),
        ("sell", D(102)),
    }


def test_sma_cross_with_max_slippage_sends_ioc_limits_sized_at_the_limit() -> None:
    ctx = MemoryContext()
    ctx.bid_ask["BTCUSDT"] = (D("99.99"), D("100.01"))
    sma = _sma(ctx, max_slippage_pct=D("0.5"))
    for i, close in enumerate(["100", "101", "102", "104"]):
        sma.on_bar(bar(close, i))
    [entry] = ctx.submitted
    # 100.01 * 1.005 = 100.51005 -> down to the tick: never further than allowed
    assert (entry.type, entry.tif, entry.price) == (OrderType.LIMIT, TimeInForce.IOC, D("100.51"))
    assert entry.quantity == D("9.94925")  # 1000 / 100.51, down to the step
    assert entry.quantity * entry.price <= D(1000)
    ctx.fill("td1", entry.quantity, D("100.01"))
    for i, close in enumerate(["100", "97", "95"], start=4):
        sma.on_bar(bar(close, i))
    exit_ = ctx.submitted[-1]
    # 99.99 * 0.995 = 99.49005 -> UP to the tick for a sell: 99.50
    assert (exit_.side, exit_.type, exit_.price) == (Side.SELL, OrderType.LIMIT, D("99.50"))


def test_grid_waits_retry_after_a_denial_instead_of_asking_at_every_ticker() -> None:
    ctx = MemoryContext()
    grid = _grid(ctx, retry_after=5.0)
    ctx.deny_reason = "max_open_orders 0 reached"
    grid.on_ticker(ticker("99.99", "100.01"))
    grid.on_ticker(ticker("99.99", "100.01"))
    assert len(ctx.submitted) == 1 and grid.last_denial == "max_open_orders 0 reached"
    ctx.deny_reason = ""
    ctx.clock_us += 4_000_000
    grid.on_ticker(ticker("99.99", "100.01"))
    assert len(ctx.submitted) == 1
    ctx.clock_us += 1_000_000
    grid.on_ticker(ticker("99.99", "100.01"))
    assert len(ctx.submitted) == 5
