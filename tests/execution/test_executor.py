"""The executor on real PostgreSQL and Redis with the paper venue: the gate, durable intent,
UNKNOWN blocking and resolution, restart reconciliation and the kill switch."""

from __future__ import annotations

import asyncio
from decimal import Decimal

import asyncpg
import msgspec
import pytest
import redis.asyncio as aioredis

from tests.execution._doubles import (
    EXCHANGE,
    Clock,
    RecordingHost,
    healthy,
    running_executor,
    ticker,
    trade,
)
from tradingd.execution.ledger import Ledger
from tradingd.execution.orders import OrderState
from tradingd.execution.paper import PaperFaults
from tradingd.execution.venue import PlaceRequest, PlaceResult
from tradingd.execution.wiring import exchange_locker
from tradingd.model import MarketEvent
from tradingd.state import KILL_SWITCH_KEY, ExchangeState, state_key, transition
from tradingd.strategies.api import Accepted, Denied, OrderIntent, OrderType, Side

S = OrderState
NOW = 1_800_000_000_000_000


def limit(side: Side, quantity: str, price: str) -> OrderIntent:
    return OrderIntent(
        instrument="BTCUSDT", side=side, quantity=Decimal(quantity), price=Decimal(price)
    )


MARKET_BUY = OrderIntent(
    instrument="BTCUSDT", side=Side.BUY, quantity=Decimal("0.1"), type=OrderType.MARKET
)


async def paper_requests(pool: asyncpg.Pool) -> dict[str, int]:
    rows = await pool.fetch(
        "SELECT client_order_id, count(*) AS n FROM paper_orders GROUP BY client_order_id"
    )
    return {row["client_order_id"]: row["n"] for row in rows}


async def test_each_market_records_age_is_recorded_when_strategies_are_handed_it(
    pool: asyncpg.Pool, rds: aioredis.Redis
) -> None:
    # No strategy attached: the age is the feed's, measured all the same.
    async with running_executor(pool, rds, clock=Clock(NOW)) as h:
        await h.feed(trade("100", "1", 1, NOW - 700), ticker("99.9", "100.1", NOW - 300))
        await h.feed(trade("100", "1", 2, NOW - 40))
        latency = h.executor.tick_latency
        assert (latency.count, latency.min, latency.max) == (3, 40, 700)


async def test_nothing_is_sent_unless_healthy_and_the_kill_switch_off(
    pool: asyncpg.Pool, rds: aioredis.Redis
) -> None:
    async with running_executor(pool, rds) as h:
        await h.feed(trade("100", "1", 1, NOW), ticker("99.9", "100.1", NOW))
        for state in (None, "LOCKED", "AUDITING", "RECONCILING"):
            if state is not None:
                await rds.set(state_key(EXCHANGE), state)
            decision = await h.executor.submit("manual", MARKET_BUY)
            assert isinstance(decision, Denied) and decision.reason.startswith("gate:")
        await healthy(rds)
        await rds.set(KILL_SWITCH_KEY, "drill")
        assert isinstance(await h.executor.submit("manual", MARKET_BUY), Denied)
        # A strategy's submit taken while the gate looked open is still denied at the send.
        await rds.delete(KILL_SWITCH_KEY)
        await rds.set(state_key(EXCHANGE), "LOCKED")
        accepted = h.executor.decide("s1", limit(Side.BUY, "0.1", "99"))
        assert isinstance(accepted, Accepted)
        await h.settle()
        order = await h.ledger.order(accepted.client_order_id)
        assert order is not None and order.state is S.DENIED
        assert order.reason.startswith("gate:")
    assert await paper_requests(pool) == {}


@pytest.mark.parametrize("meanwhile", ["gate closes", "send window passes"])
async def test_a_burst_sends_nothing_once_the_gate_closes_or_its_window_passes(
    meanwhile: str, pool: asyncpg.Pool, rds: aioredis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    await healthy(rds)
    clock = Clock(NOW)
    async with running_executor(pool, rds, clock=clock) as h:
        await h.feed(trade("100", "1", 1, NOW), ticker("99.9", "100.1", NOW))
        place = h.venue.place

        async def place_then_interfere(request: PlaceRequest) -> PlaceResult:
            result = await place(request)
            if meanwhile == "gate closes":
                await rds.set(state_key(EXCHANGE), "LOCKED")
            else:
                clock.now += 6_000_000
            return result

        monkeypatch.setattr(h.venue, "place", place_then_interfere)
        # Decided in one go: one burst, committed claimed in one transaction.
        decisions = [h.executor.decide("s1", limit(Side.BUY, "0.1", "99")) for _ in range(3)]
        ids = [d.client_order_id for d in decisions if isinstance(d, Accepted)]
        assert len(ids) == 3
        await h.settle()
        first, *rest = [await h.ledger.order(c) for c in ids]
        assert first is not None and first.state is S.OPEN
        for order in rest:
            assert order is not None and order.state is S.NEVER_PLACED
            assert order.reason.startswith("not sent: ")
    assert await paper_requests(pool) == {ids[0]: 1}


async def test_a_market_order_fills_through_the_ledger(
    pool: asyncpg.Pool, rds: aioredis.Redis
) -> None:
    await healthy(rds)
    host = RecordingHost()
    async with running_executor(pool, rds, host=host) as h:
        await h.feed(trade("100", "1", 1, NOW), ticker("99.9", "100.1", NOW))
        decision = h.executor.decide("s1", MARKET_BUY)
        assert isinstance(decision, Accepted)
        await h.settle()
        order = await h.ledger.order(decision.client_order_id)
        assert order is not None and order.state is S.FILLED
        assert order.average_price == Decimal("100.1")
        assert await h.ledger.events(decision.client_order_id) == [
            (None, "INTENT", "executor"),
            ("INTENT", "SENDING", "executor"),
            ("SENDING", "FILLED", "venue:ack"),
        ]
        assert [f.trade_id for _, f in host.fills] == [f"paper-{1}"] or len(host.fills) == 1
        assert [u.order.state for _, u in host.orders][-1] == "FILLED"
        assert h.executor.position_view("s1", "BTCUSDT").quantity == Decimal("0.1")
        assert h.executor.snapshot().positions == {"BTCUSDT": "0.1"}


async def test_stale_data_or_an_open_gap_denies(pool: asyncpg.Pool, rds: aioredis.Redis) -> None:
    await healthy(rds)
    clock = Clock(NOW)
    gaps: set[str] = set()
    async with running_executor(pool, rds, clock=clock, open_gaps=lambda: frozenset(gaps)) as h:
        await h.feed(trade("100", "1", 1, NOW), ticker("99.9", "100.1", NOW))
        gaps.add("BTCUSDT")
        denied = h.executor.decide("s1", MARKET_BUY)
        assert isinstance(denied, Denied) and denied.reason.startswith("data_gap")
        gaps.clear()
        clock.now = NOW + 11_000_000
        denied = h.executor.decide("s1", MARKET_BUY)
        assert isinstance(denied, Denied) and denied.reason.startswith("max_data_age")
        assert h.executor.snapshot().denials == {"data_gap": 1, "max_data_age": 1}


async def test_an_unknown_order_blocks_its_instrument_until_the_venue_answers(
    pool: asyncpg.Pool, rds: aioredis.Redis
) -> None:
    await healthy(rds)
    clock = Clock(NOW)
    faults = PaperFaults(lose_replies=1)
    async with running_executor(pool, rds, faults=faults, clock=clock) as h:
        await h.feed(trade("100", "1", 1, NOW), ticker("99.9", "100.1", NOW))
        # The reply is lost: the order rests on the venue, the executor does not know.
        first = await h.executor.submit("manual", limit(Side.BUY, "0.1", "99"))
        assert isinstance(first, Accepted)
        await h.settle()  # settled = the UNKNOWN was resolved by a query, never resent
        order = await h.ledger.order(first.client_order_id)
        assert order is not None and order.state is S.OPEN
        assert ("SENDING", "UNKNOWN", "executor") in await h.ledger.events(first.client_order_id)
        # Never reached the venue: UNKNOWN blocks the instrument until the deadline proves it
        # was never placed.
        faults.drop_requests = 1
        second = await h.executor.submit("manual", limit(Side.BUY, "0.1", "98"))
        assert isinstance(second, Accepted)
        await h.until_state(second.client_order_id, S.UNKNOWN)
        order = await h.ledger.order(second.client_order_id)
        assert order is not None and order.state is S.UNKNOWN
        blocked = h.executor.decide("s1", limit(Side.BUY, "0.1", "97"))
        assert isinstance(blocked, Denied) and blocked.reason.startswith("unknown_order")
        clock.now = NOW + 6_000_000
        await h.feed(trade("100", "1", 2, clock.now), ticker("99.9", "100.1", clock.now))
        await h.settle()
        order = await h.ledger.order(second.client_order_id)
        assert order is not None and order.state is S.NEVER_PLACED
        assert isinstance(h.executor.decide("s1", limit(Side.BUY, "0.1", "97")), Accepted)
    assert (await paper_requests(pool)).get(second.client_order_id) is None
    assert (await paper_requests(pool))[first.client_order_id] == 1


async def test_a_resting_order_fills_on_trades_through_it_and_the_strategy_hears(
    pool: asyncpg.Pool, rds: aioredis.Redis
) -> None:
    await healthy(rds)
    host = RecordingHost()
    async with running_executor(pool, rds, host=host) as h:
        await h.feed(trade("100", "1", 1, NOW), ticker("99.9", "100.1", NOW))
        decision = h.executor.decide("s1", limit(Side.BUY, "0.5", "99.5"))
        assert isinstance(decision, Accepted)
        await h.settle()
        await h.feed(trade("99.4", "0.2", 2, NOW))
        await h.settle()
        await h.feed(trade("99.3", "1", 3, NOW))
        await h.settle()
        order = await h.ledger.order(decision.client_order_id)
        assert order is not None and order.state is S.FILLED
        assert [f.quantity for _, f in host.fills] == [Decimal("0.2"), Decimal("0.3")]
        fills = await h.ledger.fills(EXCHANGE)
        assert sum(f.quantity for f in fills) == order.filled_quantity


async def test_restart_reconciles_before_trading(pool: asyncpg.Pool, rds: aioredis.Redis) -> None:
    await healthy(rds)
    ledger = Ledger(pool)
    intent = limit(Side.BUY, "0.1", "99")
    # Crashed after the intent, before the claim.
    never_sent = await ledger.mint_client_id()
    await ledger.record_intent(never_sent, "manual", EXCHANGE, intent)
    # Crashed after the claim, before the send: not on the venue, deadline long past.
    claimed = await ledger.mint_client_id()
    await ledger.record_intent(claimed, "manual", EXCHANGE, intent)
    await ledger.claim_send(claimed, NOW - 1)
    # Crashed after the send, before the reply was recorded: the venue has it.
    sent = await ledger.mint_client_id()
    await ledger.record_intent(sent, "manual", EXCHANGE, intent)
    await ledger.claim_send(sent, NOW + 5_000_000)
    async with running_executor(pool, rds) as h:
        from tradingd.execution.venue import PlaceRequest

        await h.venue.place(
            PlaceRequest(
                client_order_id=sent,
                instrument="BTCUSDT",
                side=Side.BUY,
                type=OrderType.LIMIT,
                tif=intent.tif,
                quantity=intent.quantity,
                price=intent.price,
            )
        )
        h.executor.reconciled.clear()
        await h.executor._reconcile()
        states = {cid: (await ledger.order(cid)).state for cid in (never_sent, claimed, sent)}  # type: ignore[union-attr]
    assert states == {never_sent: S.NEVER_PLACED, claimed: S.NEVER_PLACED, sent: S.OPEN}
    assert await paper_requests(pool) == {sent: 1}


async def test_a_claimed_order_the_venue_cannot_answer_for_is_unknown_until_it_does(
    pool: asyncpg.Pool, rds: aioredis.Redis
) -> None:
    await healthy(rds)
    ledger = Ledger(pool)
    # Claimed and never sent (a burst cut short by a stop); its deadline is past.
    claimed = await ledger.mint_client_id()
    await ledger.record_intent(claimed, "manual", EXCHANGE, limit(Side.BUY, "0.1", "99"))
    await ledger.claim_send(claimed, NOW - 1)
    faults = PaperFaults(drop_queries=1)
    async with running_executor(pool, rds, faults=faults) as h:
        # The start-up query got no answer: UNKNOWN (not left SENDING), asked again later.
        assert faults.drop_queries == 0
        row = await h.ledger.order(claimed)
        assert row is not None and row.state in (S.UNKNOWN, S.NEVER_PLACED)
        await h.settle()
        row = await h.ledger.order(claimed)
        assert row is not None and row.state is S.NEVER_PLACED
    history = await pool.fetch(
        "SELECT to_state FROM order_events WHERE client_order_id = $1 ORDER BY id", claimed
    )
    assert [r["to_state"] for r in history][-2:] == ["UNKNOWN", "NEVER_PLACED"]


async def test_the_kill_switch_denies_at_once_and_cancels_every_open_order(
    pool: asyncpg.Pool, rds: aioredis.Redis
) -> None:
    await healthy(rds)
    async with running_executor(pool, rds) as h:
        await h.feed(trade("100", "1", 1, NOW), ticker("99.9", "100.1", NOW))
        for i in range(20):
            decision = h.executor.decide("s1", limit(Side.BUY, "0.1", str(95 + i % 4)))
            assert isinstance(decision, Accepted)
        await h.settle()
        assert h.executor.snapshot().open_orders == 20
        await rds.set(KILL_SWITCH_KEY, "drill")
        report = await h.executor.cancel_everything("kill switch: drill")
        assert (report.requested, report.cancelled, report.remaining) == (20, 20, 0)
        denied = h.executor.decide("s1", limit(Side.BUY, "0.1", "99"))
        assert isinstance(denied, Denied) and denied.reason.startswith("halted")
        assert await h.venue.open_orders() == []
        assert h.executor.snapshot().open_orders == 0


async def test_the_executor_acts_on_the_kill_switch_by_itself(
    pool: asyncpg.Pool, rds: aioredis.Redis
) -> None:
    await healthy(rds)
    async with running_executor(pool, rds) as h:
        await h.feed(trade("100", "1", 1, NOW), ticker("99.9", "100.1", NOW))
        ids = []
        for _ in range(5):
            decision = h.executor.decide("s1", limit(Side.SELL, "0.1", "101"))
            assert isinstance(decision, Accepted)
            ids.append(decision.client_order_id)
        await h.settle()
        assert len(await h.venue.open_orders()) == 5
        # Set by `tradingd kill-switch on` (or by hand): no command reaches the executor.
        await rds.set(KILL_SWITCH_KEY, "drill")
        h.executor._wake.set()
        # The venue's bulk cancel empties its book before the ledger has every order's answer.
        while await h.venue.open_orders() or any(c in h.executor._orders for c in ids):
            h.executor.changed.clear()
            await asyncio.wait_for(h.executor.changed.wait(), 5)
        for client_id in ids:
            order = await h.ledger.order(client_id)
            assert order is not None and order.state is S.CANCELED
        denied = h.executor.decide("s1", limit(Side.SELL, "0.1", "101"))
        assert isinstance(denied, Denied) and denied.reason == "halted: kill switch: drill"
        # Off again: orders are decided again once the executor has seen it.
        await rds.delete(KILL_SWITCH_KEY)
        await h.settle()
        assert isinstance(h.executor.decide("s1", limit(Side.SELL, "0.1", "101")), Accepted)
        await h.settle()


async def test_accepted_orders_not_yet_sent_reserve_the_balance(
    pool: asyncpg.Pool, rds: aioredis.Redis
) -> None:
    await healthy(rds)
    async with running_executor(pool, rds) as h:
        await h.feed(trade("100", "1", 1, NOW), ticker("99.9", "100.1", NOW))
        # 10 BTC in the paper account: a burst of sells in one go may not promise more.
        for _ in range(3):
            decision = h.executor.decide("s1", limit(Side.SELL, "3", "101"))
            assert isinstance(decision, Accepted)
        denied = h.executor.decide("s1", limit(Side.SELL, "3", "101"))
        assert isinstance(denied, Denied) and denied.reason.startswith("balance: needs 3 BTC")
        await h.settle()


async def test_the_executor_positions_equal_a_replay_of_the_ledger_before_and_after_a_restart(
    pool: asyncpg.Pool, rds: aioredis.Redis
) -> None:
    from tradingd.execution.accounting import Book
    from tradingd.execution.reports import fetch_fill_records

    await healthy(rds)
    sell = OrderIntent(
        instrument="BTCUSDT", side=Side.SELL, quantity=Decimal("0.06"), type=OrderType.MARKET
    )
    async with running_executor(pool, rds) as h:
        await h.feed(trade("100", "1", 1, NOW), ticker("99.9", "100.1", NOW))
        assert isinstance(h.executor.decide("s1", MARKET_BUY), Accepted)
        await h.settle()
        await h.feed(trade("103", "1", 2, NOW + 1), ticker("102.9", "103.1", NOW + 1))
        assert isinstance(h.executor.decide("s1", sell), Accepted)
        await h.settle()
        live = h.executor.position_view("s1", "BTCUSDT")
    assert live.quantity == Decimal("0.04")
    assert live.realised_pnl > 0
    replayed = Book.replay(await fetch_fill_records(pool)).position("s1", "BTCUSDT")
    assert replayed == live
    async with running_executor(pool, rds) as again:
        assert again.executor.position_view("s1", "BTCUSDT") == live


async def test_a_lock_denies_at_once_is_recorded_and_lifts_only_with_the_state(
    pool: asyncpg.Pool, rds: aioredis.Redis
) -> None:
    await pool.execute("DELETE FROM state_transitions WHERE exchange = $1", EXCHANGE)
    for to_state in ("BOOTSTRAPPING", "LOCKED", "HEALTHY"):
        await transition(
            pool, rds, EXCHANGE, ExchangeState(to_state), operator="test", reason="setup"
        )
    async with running_executor(pool, rds, lock_exchange=exchange_locker(pool, rds, EXCHANGE)) as h:
        await h.feed(trade("100", "1", 1, NOW), ticker("99.9", "100.1", NOW))
        await h.executor.lock("venue ban: 418 until 1800000060000")
        decision = h.executor.decide("s1", limit(Side.BUY, "0.1", "99"))
        assert isinstance(decision, Denied) and decision.reason.startswith("locked: venue ban")
        assert isinstance(await h.executor.submit("manual", MARKET_BUY), Denied)
        assert await rds.get(state_key(EXCHANGE)) == b"LOCKED"
        last = await pool.fetchrow(
            "SELECT operator, reason FROM state_transitions WHERE exchange = $1"
            " ORDER BY id DESC LIMIT 1",
            EXCHANGE,
        )
        assert last is not None
        assert (last["operator"], last["reason"]) == (
            "executor",
            "venue ban: 418 until 1800000060000",
        )
        # Only an operator's unlock (HEALTHY recorded again) lifts it.
        await transition(
            pool, rds, EXCHANGE, ExchangeState.HEALTHY, operator="test", reason="unlock"
        )
        await h.settle()
        assert isinstance(await h.executor.submit("manual", MARKET_BUY), Accepted)


async def test_the_market_is_each_instruments_last_trade_and_latest_arrival(
    pool: asyncpg.Pool, rds: aioredis.Redis
) -> None:
    def eth(event: MarketEvent) -> MarketEvent:
        return msgspec.structs.replace(event, instrument_name="ETHUSDT")

    async with running_executor(pool, rds) as h:
        markets = h.executor._market
        await h.feed(
            # Before any trade, a ticker's last price stands in; the batch's trades replace it.
            msgspec.structs.replace(ticker("99", "101", NOW), last_price_text="98"),
            trade("100", "1", 1, NOW + 5_000_000),
            eth(trade("7", "1", 1, NOW)),
            # The last trade, from an earlier burst (another connection's): it sets the price,
            # the latest arrival sets the time.
            trade("102", "1", 2, NOW),
            eth(ticker("6", "8", NOW + 1)),
        )
        assert h.executor.market("BTCUSDT") == (Decimal(102), Decimal(99), Decimal(101))
        assert markets["BTCUSDT"].updated_us == NOW + 5_000_000
        assert h.executor.market("ETHUSDT") == (Decimal(7), Decimal(6), Decimal(8))
        assert markets["ETHUSDT"].updated_us == NOW + 1
        # In arrival order; a batch older than what was seen leaves the time as it was.
        await h.feed(trade("103", "1", 3, NOW + 6_000_000), trade("104", "1", 4, NOW + 7_000_000))
        await h.feed(trade("105", "1", 5, NOW + 1), eth(trade("9", "1", 2, NOW + 2)))
        assert h.executor.market("BTCUSDT")[0] == Decimal(105)
        assert markets["BTCUSDT"].updated_us == NOW + 7_000_000
        assert (h.executor.market("ETHUSDT")[0], markets["ETHUSDT"].updated_us) == (9, NOW + 2)
        # A ticker's last price does not replace a trade's.
        await h.feed(msgspec.structs.replace(ticker("104", "106", NOW + 8), last_price_text="1"))
        assert h.executor.market("BTCUSDT") == (Decimal(105), Decimal(104), Decimal(106))
