"""The control channel on real Redis: requests reach the desks, replies come back, nothing is
asked when no daemon listens, and a request past its deadline is not executed."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from decimal import Decimal

import msgspec
import pytest
import redis.asyncio as aioredis

from tests.desk_doubles import FakeDesk
from tradingd.execution.control import (
    REPLY_PREFIX,
    Cancel,
    CancelEverything,
    ControlClient,
    ControlServer,
    Envelope,
    ListStrategies,
    NoDaemon,
    NoReply,
    Pause,
    Reply,
    Resume,
    Snapshot,
    Submit,
    Subscribe,
    SubscriptionChange,
    Unsubscribe,
    control_channel,
    now_us,
)
from tradingd.strategies.api import OrderIntent, OrderType, Side
from tradingd.supervisor import ActorContext

INTENT = OrderIntent(
    instrument="BTCUSDT",
    side=Side.BUY,
    quantity=Decimal("0.01"),
    type=OrderType.LIMIT,
    price=Decimal("50000"),
)


@pytest.fixture
async def desks() -> dict[str, FakeDesk]:
    return {"binance": FakeDesk("binance", open_orders=3), "deribit": FakeDesk("deribit")}


@pytest.fixture
async def server(rds: aioredis.Redis, desks: dict[str, FakeDesk]) -> AsyncIterator[ControlServer]:
    control = ControlServer(desks, rds)  # type: ignore[arg-type]
    ready = asyncio.Event()
    task = asyncio.create_task(control.run(ActorContext("control", {}, ready)))
    await asyncio.wait_for(ready.wait(), 10)
    try:
        yield control
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


async def test_submit_reaches_the_desk_and_the_decision_comes_back(
    rds: aioredis.Redis, server: ControlServer, desks: dict[str, FakeDesk]
) -> None:
    client = ControlClient(rds)
    reply = await client.request(Submit(exchange="binance", intent=INTENT))
    assert reply.error == "" and reply.decision is not None
    assert reply.decision.accepted and reply.decision.client_order_id == "td01"
    assert desks["binance"].submitted == [("manual", INTENT)]
    desks["binance"].deny = "price_band: 50000 is 12% from the last trade 44600 (limit 5%)"
    denied = await client.request(Submit(exchange="binance", intent=INTENT))
    assert denied.decision is not None and not denied.decision.accepted
    assert denied.decision.reason.startswith("price_band")
    unknown = await client.request(Submit(exchange="kraken", intent=INTENT))
    assert "no executor for exchange 'kraken'" in unknown.error
    # The reply key is consumed, not left behind.
    assert await rds.keys(REPLY_PREFIX + "*") == []


async def test_cancel_strategies_pause_resume_snapshot(
    rds: aioredis.Redis, server: ControlServer, desks: dict[str, FakeDesk]
) -> None:
    client = ControlClient(rds)
    cancelled = await client.request(Cancel(exchange="binance", client_order_id="td0abc"))
    assert cancelled.decision == cancelled.decision.__class__(
        accepted=True, client_order_id="td0abc"
    )  # type: ignore[union-attr]
    gone = await client.request(Cancel(exchange="binance", client_order_id="gone1"))
    assert gone.decision is not None and gone.decision.reason == "no open order gone1"
    listed = await client.request(ListStrategies())
    assert [s.name for s in listed.strategies] == ["binance-grid", "deribit-grid"]
    paused = await client.request(Pause(name="deribit-grid", reason="olga: too volatile"))
    assert paused.found and desks["deribit"].paused == {"deribit-grid": "olga: too volatile"}
    assert not (await client.request(Pause(name="nope", reason="x"))).found
    assert (await client.request(Resume(name="deribit-grid"))).found
    assert desks["deribit"].paused == {}
    snap = await client.request(Snapshot())
    assert [s.exchange for s in snap.snapshots] == ["binance", "deribit"]


async def test_cancel_everything_asks_every_exchange(
    rds: aioredis.Redis, server: ControlServer, desks: dict[str, FakeDesk]
) -> None:
    desks["deribit"].open_orders, desks["deribit"].stuck = 2, 1
    reply = await ControlClient(rds).request(CancelEverything(reason="kill switch on by olga"))
    assert [(r.exchange, r.requested, r.cancelled, r.remaining) for r in reply.reports] == [
        ("binance", 3, 3, 0),
        ("deribit", 2, 1, 1),
    ]
    assert desks["binance"].cancel_everything_reasons == ["kill switch on by olga"]


async def test_no_daemon_means_nothing_was_asked(rds: aioredis.Redis) -> None:
    with pytest.raises(NoDaemon, match="no running daemon"):
        await ControlClient(rds).request(Submit(exchange="binance", intent=INTENT))
    assert await rds.keys("*") == []


async def test_a_request_past_its_deadline_is_not_executed(
    rds: aioredis.Redis, server: ControlServer, desks: dict[str, FakeDesk]
) -> None:
    late = Envelope(
        id="late1", deadline_us=now_us() - 1, request=Submit(exchange="binance", intent=INTENT)
    )
    assert await rds.publish(control_channel(rds), msgspec.json.encode(late)) == 1
    popped = await rds.blpop([REPLY_PREFIX + "late1"], timeout=10)
    assert popped is not None and b"after its deadline" in popped[1]
    assert desks["binance"].submitted == [] and server.expired == 1


async def test_no_reply_in_time_is_reported_as_unknown_outcome(
    rds: aioredis.Redis, server: ControlServer, desks: dict[str, FakeDesk]
) -> None:
    desks["binance"].release.clear()  # the desk hangs
    with pytest.raises(NoReply, match="outcome is unknown"):
        await ControlClient(rds).request(Submit(exchange="binance", intent=INTENT), timeout_s=0.2)


async def test_garbage_on_the_channel_is_ignored(
    rds: aioredis.Redis, server: ControlServer, desks: dict[str, FakeDesk]
) -> None:
    await rds.publish(control_channel(rds), b"{not json")
    reply = await ControlClient(rds).request(ListStrategies())
    assert len(reply.strategies) == 2


class _Recorder:
    """Stands in for the daemon's live subscriptions: says what it was asked."""

    def __init__(self) -> None:
        self.asked: list[tuple[str, str, list[str], str]] = []

    async def subscribe(
        self, exchange: str, symbols: Sequence[str], operator: str
    ) -> SubscriptionChange:
        self.asked.append(("subscribe", exchange, list(symbols), operator))
        return SubscriptionChange(exchange=exchange, changed=list(symbols))

    async def unsubscribe(
        self, exchange: str, symbols: Sequence[str], operator: str
    ) -> SubscriptionChange:
        self.asked.append(("unsubscribe", exchange, list(symbols), operator))
        return SubscriptionChange(exchange=exchange, refused=list(symbols))


async def test_subscription_changes_go_to_the_live_subscriptions(
    rds: aioredis.Redis, desks: dict[str, FakeDesk]
) -> None:
    def envelope(request: Subscribe | Unsubscribe) -> Envelope:
        return Envelope(id="s1", deadline_us=now_us() + 5_000_000, request=request)

    add = Subscribe(exchange="binance", symbols=["BNBUSDT"], operator="olga")
    remove = Unsubscribe(exchange="binance", symbols=["X"], operator="olga")
    without = ControlServer(desks, rds)  # type: ignore[arg-type]
    reply = await without.handle(envelope(add))
    assert reply.error == "this daemon takes no subscription changes"

    recorder = _Recorder()
    server = ControlServer(desks, rds, recorder)  # type: ignore[arg-type]
    reply = await server.handle(envelope(add))
    assert reply.subscription == SubscriptionChange(exchange="binance", changed=["BNBUSDT"])
    reply = await server.handle(envelope(remove))
    assert reply.subscription is not None and reply.subscription.refused == ["X"]
    assert recorder.asked == [
        ("subscribe", "binance", ["BNBUSDT"], "olga"),
        ("unsubscribe", "binance", ["X"], "olga"),
    ]
    # On the wire: the reply decodes with the outcome.
    wire = msgspec.json.decode(msgspec.json.encode(reply), type=Reply)
    assert wire.subscription == reply.subscription


def test_the_channel_names_the_redis_database() -> None:
    # Pub/sub spans a server's databases: daemons on databases 0 and 3 must not share one.
    assert control_channel(aioredis.Redis()) == "tradingd:control:db0"
    assert control_channel(aioredis.Redis.from_url("redis://127.0.0.1:6379/3")) == (
        "tradingd:control:db3"
    )
