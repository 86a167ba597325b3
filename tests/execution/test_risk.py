"""Pre-trade risk: every limit denies with its reason; a sound order passes."""

from __future__ import annotations

from decimal import Decimal

import pytest

from tradingd.config import ConfigError, RiskConfig, parse_config
from tradingd.execution.risk import (
    AccountView,
    InstrumentInfo,
    MarketView,
    OpenOrderLoad,
    OrderRate,
    check,
    reservations,
)
from tradingd.strategies.api import InstrumentRules, OrderIntent, OrderType, Side

NOW = 1_700_000_000_000_000
BTCUSDT = InstrumentInfo(
    rules=InstrumentRules(
        name="BTCUSDT",
        base="BTC",
        quote="USDT",
        tick_size=Decimal("0.01"),
        step_size=Decimal("0.001"),
        min_quantity=Decimal("0.001"),
        min_notional=Decimal(5),
    )
)
PERP = InstrumentInfo(
    rules=InstrumentRules(
        name="BTC-PERPETUAL",
        base="BTC",
        quote="USD",
        tick_size=Decimal("0.5"),
        step_size=Decimal(10),
        min_quantity=Decimal(10),
    ),
    spot=False,
    inverse=True,
)
MARKET = MarketView(
    last_price=Decimal(100), best_bid=Decimal("99.99"), best_ask=Decimal("100.01"), updated_us=NOW
)
ACCOUNT = AccountView(
    free={"USDT": Decimal(10_000), "BTC": Decimal(1)}, position=Decimal(0), open_orders=0
)
LIMITS = RiskConfig(
    max_order_notional=Decimal(1000),
    max_position_notional=Decimal(2000),
    max_open_orders=3,
    max_orders_per_second=2,
    price_band=Decimal("0.05"),
    max_data_age=5.0,
)


def buy(quantity: str = "1", price: str | None = "100", **kw: object) -> OrderIntent:
    return OrderIntent(
        instrument="BTCUSDT",
        side=Side.BUY,
        quantity=Decimal(quantity),
        price=Decimal(price) if price is not None else None,
        type=OrderType.LIMIT if price is not None else OrderType.MARKET,
        **kw,  # type: ignore[arg-type]
    )


def run(
    intent: OrderIntent,
    *,
    info: InstrumentInfo | None = BTCUSDT,
    market: MarketView = MARKET,
    account: AccountView = ACCOUNT,
    rate: OrderRate | None = None,
) -> str | None:
    return check(
        intent,
        info,
        market,
        account,
        LIMITS,
        now_us=NOW,
        rate=rate or OrderRate(2),
        taker_fee=Decimal("0.001"),
    )


def test_a_sound_order_passes() -> None:
    assert run(buy()) is None
    assert run(buy(price=None)) is None
    sell = OrderIntent(
        instrument="BTCUSDT", side=Side.SELL, quantity=Decimal("0.5"), price=Decimal(101)
    )
    assert run(sell) is None


@pytest.mark.parametrize(
    ("intent", "overrides", "reason"),
    [
        (buy(), {"info": None}, "unknown_instrument: BTCUSDT"),
        (buy(price="100.001"), {}, "tick_size: price 100.001 is not a multiple of 0.01"),
        (buy(quantity="0.0015"), {}, "step_size: quantity 0.0015"),
        (
            buy(quantity="0.001", price="100"),
            {
                "info": InstrumentInfo(
                    rules=InstrumentRules(
                        name="BTCUSDT",
                        base="BTC",
                        quote="USDT",
                        tick_size=Decimal("0.01"),
                        step_size=Decimal("0.001"),
                        min_quantity=Decimal("0.01"),
                    )
                )
            },
            "min_quantity: 0.001",
        ),
        (buy(quantity="0.01"), {}, "min_notional: 1.00"),
        (
            buy(),
            {"market": MarketView(last_price=Decimal(100), updated_us=NOW, gap_open=True)},
            "data_gap",
        ),
        (
            buy(),
            {"market": MarketView(last_price=Decimal(100), updated_us=NOW - 6_000_000)},
            "max_data_age: market data is 6.0s old (limit 5.0s)",
        ),
        (buy(), {"market": MarketView()}, "max_data_age: no market data yet"),
        (buy(price=None), {"market": MarketView(updated_us=NOW)}, "no_price"),
        (buy(price="106"), {}, "price_band: 106 is 6.00% from the last trade 100"),
        (buy(quantity="11"), {}, "max_order_notional: 1100"),
        (
            buy(quantity="9"),
            {
                "account": AccountView(
                    free={"USDT": Decimal(10**6)}, position=Decimal(12), open_orders=0
                )
            },
            "max_position_notional: position 21",
        ),
        (buy(reduce_only=True), {}, "reduce_only"),
        (
            buy(),
            {"account": AccountView(free=ACCOUNT.free, position=Decimal(0), open_orders=3)},
            "max_open_orders: 3 open (limit 3)",
        ),
        (
            buy(),
            {
                "account": AccountView(
                    free={"USDT": Decimal(100)}, position=Decimal(0), open_orders=0
                )
            },
            "balance: needs 100.100 USDT, 100 free",
        ),
        (
            OrderIntent(
                instrument="BTCUSDT", side=Side.SELL, quantity=Decimal(2), price=Decimal(100)
            ),
            {},
            "balance: needs 2 BTC, 1 free",
        ),
        (
            OrderIntent(instrument="BTCUSDT", side=Side.BUY, quantity=Decimal(1)),
            {},
            "price: a limit order needs a positive price",
        ),
    ],
)
def test_each_limit_denies_with_its_reason(
    intent: OrderIntent, overrides: dict[str, object], reason: str
) -> None:
    denied = run(intent, **overrides)  # type: ignore[arg-type]
    assert denied is not None and denied.startswith(reason.split(":")[0])
    assert reason in denied


def test_a_position_may_always_be_reduced_past_the_position_limit() -> None:
    long = AccountView(free=ACCOUNT.free, position=Decimal(30), open_orders=0)
    sell = OrderIntent(
        instrument="BTCUSDT",
        side=Side.SELL,
        quantity=Decimal(1),
        price=Decimal(100),
        reduce_only=True,
    )
    assert run(sell, account=long) is None


def test_the_order_rate_is_a_sliding_second() -> None:
    rate = OrderRate(2)
    rate.record(NOW - 900_000)
    rate.record(NOW - 100_000)
    assert run(buy(), rate=rate) == "max_orders_per_second: limit 2 reached"
    assert not rate.would_exceed(NOW + 100_001)


def test_inverse_contracts_are_valued_in_usd_and_skip_the_spot_balance_check() -> None:
    perp = OrderIntent(
        instrument="BTC-PERPETUAL", side=Side.BUY, quantity=Decimal(900), price=Decimal(100)
    )
    assert (
        run(perp, info=PERP, account=AccountView(free={}, position=Decimal(0), open_orders=0))
        is None
    )
    big = OrderIntent(
        instrument="BTC-PERPETUAL", side=Side.BUY, quantity=Decimal(1010), price=Decimal(100)
    )
    assert "max_order_notional: 1010 USD" in (run(big, info=PERP) or "")


def test_open_orders_reserve_what_they_may_spend() -> None:
    held = reservations(
        [
            OpenOrderLoad(
                side=Side.BUY, remaining=Decimal(2), price=Decimal(100), base="BTC", quote="USDT"
            ),
            OpenOrderLoad(
                side=Side.SELL,
                remaining=Decimal("0.5"),
                price=Decimal(110),
                base="BTC",
                quote="USDT",
            ),
            OpenOrderLoad(
                side=Side.BUY, remaining=Decimal(1), price=Decimal(50), base="ETH", quote="USDT"
            ),
        ]
    )
    assert held == {"USDT": Decimal(250), "BTC": Decimal("0.5")}


@pytest.mark.parametrize(
    ("document", "message"),
    [
        ({"risk": {"max_order_notional": -1}}, "risk.max_order_notional: expected a number >= 0"),
        ({"risk": {"price_band": 0}}, "risk.price_band: expected a fraction in (0, 1]"),
        ({"risk": {"max_open_orders": 0}}, "risk.max_open_orders: expected"),
        ({"paper": {"balances": {"kraken": {"USD": 1}}}}, "paper.balances.kraken: expected a"),
        ({"paper": {"taker_fee": "x"}}, "paper.taker_fee:"),
        (
            {"risk": {"max_notional": 1}},
            "risk.max_notional: expected a known key, found an unknown key",
        ),
    ],
)
def test_bad_risk_and_paper_settings_name_the_key(
    document: dict[str, object], message: str
) -> None:
    with pytest.raises(
        ConfigError,
        match="^cfg.toml: "
        + message.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[").replace("]", r"\]"),
    ):
        parse_config(document, "cfg.toml")
