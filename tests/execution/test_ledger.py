"""The order ledger on real PostgreSQL: durable intent, atomic claim, events, idempotent fills."""

from __future__ import annotations

import asyncio
import re
from decimal import Decimal

import asyncpg
import pytest
from hypothesis import given
from hypothesis import strategies as st

from tradingd.execution.ledger import BLOCK_SIZE, Ledger, client_order_id
from tradingd.execution.orders import OrderState
from tradingd.execution.records import Fill
from tradingd.strategies.api import OrderIntent, OrderType, Side

S = OrderState
INTENT = OrderIntent(
    instrument="BTCUSDT", side=Side.BUY, quantity=Decimal("0.5"), price=Decimal(100)
)
_ID_RULE = re.compile(r"^[A-Za-z0-9_-]{1,36}$")


@given(
    st.integers(min_value=0, max_value=2**63 - 1),
    st.integers(min_value=0, max_value=BLOCK_SIZE - 1),
    st.integers(min_value=0, max_value=2**63 - 1),
    st.integers(min_value=0, max_value=BLOCK_SIZE - 1),
)
def test_client_ids_follow_binance_rule_and_never_collide(
    block_a: int, counter_a: int, block_b: int, counter_b: int
) -> None:
    a, b = client_order_id(block_a, counter_a), client_order_id(block_b, counter_b)
    assert _ID_RULE.match(a)
    assert (a == b) == ((block_a, counter_a) == (block_b, counter_b))


async def test_two_ledgers_mint_disjoint_ids(pool: asyncpg.Pool) -> None:
    first, second = Ledger(pool), Ledger(pool)
    minted = await asyncio.gather(*(ledger.mint_client_id() for ledger in [first, second] * 50))
    assert len(set(minted)) == 100
    # A restart (a new Ledger) takes a new block: it never reuses an id.
    again = [await Ledger(pool).mint_client_id() for _ in range(3)]
    assert not set(again) & set(minted)


async def test_the_intent_is_durable_and_exactly_one_sender_claims_it(pool: asyncpg.Pool) -> None:
    ledger = Ledger(pool)
    client_id = await ledger.mint_client_id()
    row = await ledger.record_intent(client_id, "manual", "binance", INTENT)
    assert row.state is S.INTENT
    # Committed: another connection sees it before any send.
    assert (
        await pool.fetchval("SELECT state FROM orders WHERE client_order_id = $1", client_id)
        == "INTENT"
    )
    claims = await asyncio.gather(*(Ledger(pool).claim_send(client_id) for _ in range(8)))
    winners = [claim for claim in claims if claim is not None]
    assert len(winners) == 1
    assert winners[0].state is S.SENDING
    assert await ledger.claim_send(client_id) is None
    assert await ledger.events(client_id) == [
        (None, "INTENT", "executor"),
        ("INTENT", "SENDING", "executor"),
    ]


async def test_a_burst_is_committed_claimed_in_one_statement(pool: asyncpg.Pool) -> None:
    ledger = Ledger(pool)
    ids = [await ledger.mint_client_id() for _ in range(5)]
    market = OrderIntent(
        instrument="ETHUSDT", side=Side.SELL, quantity=Decimal("2.5"), type=OrderType.MARKET
    )
    intents = [(c, f"s{i}", "binance", INTENT if i % 2 else market) for i, c in enumerate(ids)]
    deadline_us = 1_800_000_005_000_000
    rows = await ledger.record_sending(intents, deadline_us)
    assert [r.client_order_id for r in rows] == ids
    for row, (_c, strategy, _e, intent) in zip(rows, intents, strict=True):
        assert row.state is S.SENDING and row.deadline_us == deadline_us
        assert (row.strategy, row.instrument, row.side, row.quantity) == (
            strategy,
            intent.instrument,
            intent.side,
            intent.quantity,
        )
        assert row.price == (intent.price if intent.type is OrderType.LIMIT else None)
        assert await ledger.events(row.client_order_id) == [
            (None, "INTENT", "executor"),
            ("INTENT", "SENDING", "executor"),
        ]
    assert await pool.fetchval("SELECT count(*) FROM orders WHERE sent_at IS NOT NULL") == 5
    # Born claimed: no second claim, and a second burst reusing one id writes nothing at all.
    assert await ledger.claim_send(ids[0]) is None
    fresh = await ledger.mint_client_id()
    with pytest.raises(asyncpg.UniqueViolationError):
        await ledger.record_sending([(fresh, "s", "binance", INTENT), intents[0]], deadline_us)
    assert await ledger.order(fresh) is None
    assert await pool.fetchval("SELECT count(*) FROM order_events") == 10


async def test_an_illegal_transition_is_refused_and_writes_nothing(
    pool: asyncpg.Pool, logged: list[str]
) -> None:
    ledger = Ledger(pool)
    client_id = await ledger.mint_client_id()
    await ledger.record_intent(client_id, "manual", "binance", INTENT)
    assert await ledger.transition(client_id, S.OPEN, "venue:ack") is None
    assert any("INTENT -> OPEN refused" in line for line in logged)
    done = await ledger.transition(client_id, S.NEVER_PLACED, "reconcile", reason="never sent")
    assert done is not None and done.previous is S.INTENT
    assert done.order.reason == "never sent"
    assert await ledger.transition(client_id, S.SENDING, "executor") is None
    order = await ledger.order(client_id)
    assert order is not None and order.state is S.NEVER_PLACED
    assert len(await ledger.events(client_id)) == 2


async def test_fills_are_recorded_once_and_the_filled_quantity_follows(
    pool: asyncpg.Pool,
) -> None:
    ledger = Ledger(pool)
    client_id = await ledger.mint_client_id()
    await ledger.record_intent(client_id, "grid", "binance", INTENT)
    await ledger.claim_send(client_id)
    await ledger.transition(client_id, S.OPEN, "venue:ack", venue_order_id="42")

    def fill(trade_id: str, quantity: str, price: str) -> Fill:
        return Fill(
            client_order_id=client_id,
            trade_id=trade_id,
            quantity=Decimal(quantity),
            price=Decimal(price),
            fee=Decimal("0.01"),
            fee_currency="USDT",
            liquidity="maker",
            at_us=1_700_000_000_000_000,
        )

    first = await ledger.record_fill(fill("t1", "0.2", "100"), "venue:stream")
    assert first is not None
    assert first[1].order.state is S.PARTIALLY_FILLED
    assert first[0].strategy == "grid" and first[0].instrument == "BTCUSDT"
    # The same trade again (stream and query, or after a restart): nothing new.
    assert await ledger.record_fill(fill("t1", "0.2", "100"), "venue:query") is None
    # A fill past the order's quantity is refused and rolled back.
    assert await ledger.record_fill(fill("t2", "0.4", "99"), "venue:stream") is None
    second = await ledger.record_fill(fill("t3", "0.3", "90"), "venue:stream")
    assert second is not None
    order = second[1].order
    assert order.state is S.FILLED
    assert order.filled_quantity == Decimal("0.5")
    assert order.average_price == Decimal(94)
    assert order.venue_order_id == "42"
    fills = await ledger.fills("binance")
    assert [f.trade_id for f in fills] == ["t1", "t3"]
    assert sum(f.quantity for f in fills) == order.filled_quantity


async def test_open_orders_are_every_non_terminal_one(pool: asyncpg.Pool) -> None:
    ledger = Ledger(pool)
    ids = [await ledger.mint_client_id() for _ in range(4)]
    for client_id in ids:
        await ledger.record_intent(client_id, "manual", "binance", INTENT)
    await ledger.claim_send(ids[1])
    await ledger.transition(ids[1], S.UNKNOWN, "executor", reason="timeout")
    await ledger.claim_send(ids[2])
    await ledger.transition(ids[2], S.REJECTED, "venue:ack", reason="-1013")
    await ledger.record_intent(
        await ledger.mint_client_id(),
        "manual",
        "deribit",
        OrderIntent(
            instrument="BTC-PERPETUAL", side=Side.SELL, quantity=Decimal(10), type=OrderType.MARKET
        ),
    )
    open_rows = await ledger.open_orders("binance")
    assert [row.client_order_id for row in open_rows] == [ids[0], ids[1], ids[3]]
    assert [row.state for row in open_rows] == [S.INTENT, S.UNKNOWN, S.INTENT]
    assert len(await ledger.orders(open_only=True)) == 4
