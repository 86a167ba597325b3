"""The paper venue on real PostgreSQL: touch fills with slippage, trade-through fills capped by
the trade's size, fees, cancel/query by client id, memory across restarts, injected faults."""

from __future__ import annotations

from decimal import Decimal

import asyncpg

from tradingd.config import PaperConfig
from tradingd.execution.orders import OrderState
from tradingd.execution.paper import PaperFaults, PaperVenue
from tradingd.execution.risk import InstrumentInfo
from tradingd.execution.venue import Outcome, PlaceRequest, VenueOrder
from tradingd.model import MarketType, Ticker, Trade, optional_text
from tradingd.strategies.api import InstrumentRules, OrderType, Side, TimeInForce

S = OrderState
NOW = 1_700_000_000_000_000
CONFIG = PaperConfig(
    maker_fee=Decimal("0.001"),
    taker_fee=Decimal("0.002"),
    slippage=Decimal("0.001"),
    balances={"binance": {"USDT": Decimal(10_000)}},
)
INSTRUMENTS = {
    "BTCUSDT": InstrumentInfo(
        rules=InstrumentRules(
            name="BTCUSDT",
            base="BTC",
            quote="USDT",
            tick_size=Decimal("0.01"),
            step_size=Decimal("0.001"),
            min_quantity=Decimal("0.001"),
        )
    )
}


def venue(pool: asyncpg.Pool, faults: PaperFaults | None = None) -> PaperVenue:
    return PaperVenue("binance", pool, CONFIG, INSTRUMENTS, lambda: NOW, faults)


def ticker(bid: str, ask: str) -> Ticker:
    return Ticker(
        exchange="binance",
        instrument_name="BTCUSDT",
        best_bid_price_text=optional_text(Decimal(bid)),
        best_ask_price_text=optional_text(Decimal(ask)),
        timestamp_us=NOW,
        received_us=NOW,
    )


def trade(price: str, quantity: str, seq: int = 1) -> Trade:
    return Trade(
        exchange="binance",
        instrument_name="BTCUSDT",
        market_type=MarketType.SPOT,
        trade_id=str(seq),
        trade_seq=seq,
        price_text=str(Decimal(price)),
        quantity_text=str(Decimal(quantity)),
        is_buyer_maker=True,
        trade_us=NOW,
        received_us=NOW,
    )


def request(
    cid: str,
    side: Side,
    quantity: str,
    price: str | None,
    tif: TimeInForce = TimeInForce.GTC,
) -> PlaceRequest:
    return PlaceRequest(
        client_order_id=cid,
        instrument="BTCUSDT",
        side=side,
        type=OrderType.LIMIT if price is not None else OrderType.MARKET,
        tif=tif,
        quantity=Decimal(quantity),
        price=Decimal(price) if price is not None else None,
    )


async def test_marketable_orders_fill_at_the_touch_with_slippage_and_taker_fee(
    pool: asyncpg.Pool,
) -> None:
    paper = venue(pool)
    await paper.start()
    rejected = await paper.place(request("td1_0", Side.BUY, "1", None))
    assert rejected.outcome is Outcome.REJECTED and "no bid/ask" in rejected.reason
    await paper.observe([], [ticker("99", "100")])
    result = await paper.place(request("td1_1", Side.BUY, "2", None))
    assert result.outcome is Outcome.ACK and result.order is not None
    assert result.order.state is S.FILLED
    (fill,) = result.order.fills
    assert fill.price == Decimal("100.100")  # ask + 0.1 %
    assert fill.fee == Decimal("2") * Decimal("100.100") * Decimal("0.002")
    assert fill.liquidity == "taker" and fill.fee_currency == "USDT"
    # A marketable limit never fills beyond its own price.
    capped = await paper.place(request("td1_2", Side.BUY, "1", "100.05"))
    assert capped.order is not None and capped.order.fills[0].price == Decimal("100.05")
    balances = await paper.balances()
    assert balances["BTC"] == 3
    assert balances["USDT"] == Decimal(10_000) - Decimal("200.2") - Decimal("100.05") - (
        Decimal("0.400400") + Decimal("0.2001")
    )


async def test_resting_limits_fill_only_through_their_price_and_at_most_the_trade_size(
    pool: asyncpg.Pool,
) -> None:
    paper = venue(pool)
    updates: list[VenueOrder] = []
    paper.subscribe(updates.append)
    await paper.start()
    await paper.observe([], [ticker("99", "100")])
    first = await paper.place(request("td1_0", Side.BUY, "1", "98"))
    second = await paper.place(request("td1_1", Side.BUY, "1", "97"))
    assert first.order is not None and first.order.state is S.OPEN
    assert second.order is not None
    await paper.observe([trade("98", "5", 1)], [])  # at the price: not through
    assert updates == []
    await paper.observe([trade("97.5", "0.4", 2)], [])  # through the 98 only
    assert [(u.client_order_id, u.state, u.filled_quantity) for u in updates] == [
        ("td1_0", S.PARTIALLY_FILLED, Decimal("0.4"))
    ]
    assert updates[0].fills[0].price == Decimal(98)
    assert updates[0].fills[0].liquidity == "maker"
    await paper.observe([trade("96", "1", 3)], [])  # the best price first, then the rest
    assert [(u.client_order_id, u.state, u.filled_quantity) for u in updates[1:]] == [
        ("td1_0", S.FILLED, Decimal(1)),
        ("td1_1", S.PARTIALLY_FILLED, Decimal("0.4")),
    ]
    assert [o.client_order_id for o in await paper.open_orders()] == ["td1_1"]


async def test_ioc_not_marketable_is_cancelled_and_cancel_and_query_by_client_id(
    pool: asyncpg.Pool,
) -> None:
    paper = venue(pool)
    await paper.start()
    await paper.observe([], [ticker("99", "100")])
    ioc = await paper.place(request("td1_0", Side.BUY, "1", "98", TimeInForce.IOC))
    assert ioc.order is not None and ioc.order.state is S.CANCELED
    await paper.place(request("td1_1", Side.SELL, "1", "105"))
    cancelled = await paper.cancel("td1_1", "BTCUSDT")
    assert cancelled.outcome is Outcome.ACK and cancelled.order is not None
    assert cancelled.order.state is S.CANCELED
    again = await paper.cancel("td1_1", "BTCUSDT")
    assert again.outcome is Outcome.REJECTED and again.reason == "order is already CANCELED"
    unknown = await paper.cancel("td9_9", "BTCUSDT")
    assert unknown.outcome is Outcome.REJECTED and unknown.reason == "unknown order"
    missing = await paper.query("td9_9", "BTCUSDT")
    assert missing.outcome is Outcome.ACK and missing.order is None


async def test_the_venue_remembers_across_a_restart_and_faults_are_ambiguous(
    pool: asyncpg.Pool,
) -> None:
    faults = PaperFaults(lose_replies=1, drop_requests=1)
    paper = venue(pool, faults)
    await paper.start()
    dropped = await paper.place(request("td1_0", Side.BUY, "1", "90"))
    assert dropped.outcome is Outcome.UNKNOWN
    lost = await paper.place(request("td1_1", Side.BUY, "1", "90"))
    assert lost.outcome is Outcome.UNKNOWN
    # The venue's word settles both: one never arrived, the other rests.
    assert (await paper.query("td1_0", "BTCUSDT")).order is None
    found = (await paper.query("td1_1", "BTCUSDT")).order
    assert found is not None and found.state is S.OPEN
    restarted = venue(pool)
    await restarted.start()
    assert [o.client_order_id for o in await restarted.open_orders()] == ["td1_1"]
    updates: list[VenueOrder] = []
    restarted.subscribe(updates.append)
    await restarted.observe([trade("89", "3")], [])
    assert updates[0].state is S.FILLED
    assert (await restarted.query("td1_1", "BTCUSDT")).order.fills[0].quantity == 1  # type: ignore[union-attr]
