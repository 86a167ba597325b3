"""Venue-side chaos on Deribit: hundreds of orders through the private session against the fake
venue under random faults (answers dropped after matching, which cuts the connection; 10001
before matching; 13888; 10028, which ends the session; maintenance; delays; duplicated events;
user-channel disconnects). UNKNOWN is resolved only by the venue's word (a ``user.*`` event
with the label, or ``get_order_state_by_label``; absent only past ``valid_until``); the fake's
own record shows 0 duplicate labels and the fills we saw equal its fills."""

from __future__ import annotations

import asyncio
import contextlib
import random
import statistics
import time
from decimal import Decimal

import aiohttp
import pytest

from tradingd.adapters.base import RateLimited
from tradingd.adapters.deribit import trading as t
from tradingd.adapters.deribit.private import DeribitPrivateSession
from tradingd.adapters.trading import Classified, Verdict
from tradingd.testing.fake_deribit import FakeDeribit
from tradingd.testing.fake_deribit_trading import FakeDeribitTrading

CLIENT_ID, SECRET = "chaos-client", "chaos-secret"
BTC = "BTC-PERPETUAL"
INTENTS = 240
WORKERS = 12
VALID_FOR_MS = 1500


class Holder:
    """The current session (replaced after every disconnect) and what its channels told us."""

    def __init__(self) -> None:
        self.session: DeribitPrivateSession | None = None
        self.ready = asyncio.Event()
        self.heard: dict[str, asyncio.Event] = {}
        self.fills: dict[str, Decimal] = {}
        self.connections = 0

    def event(self, label: str) -> asyncio.Event:
        return self.heard.setdefault(label, asyncio.Event())

    async def get(self) -> DeribitPrivateSession:
        await self.ready.wait()
        assert self.session is not None
        return self.session

    async def keep(self, http, venue, stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                async with DeribitPrivateSession.open(
                    http, venue.fake.ws_url, CLIENT_ID, SECRET, currencies=["BTC"],
                    request_timeout=1.0,
                ) as session:  # fmt: skip
                    self.connections += 1
                    self.session = session
                    self.ready.set()
                    async for update in session.updates():
                        if isinstance(update, t.TradesUpdate):
                            for trade in update.trades:
                                self.fills[trade.trade_id] = trade.amount
                                self.event(trade.label).set()
                        elif isinstance(update, t.OrdersUpdate):
                            for order in update.orders:
                                self.event(order.label).set()
                        if stop.is_set():
                            break
            except RateLimited as limited:
                self.ready.clear()
                await asyncio.sleep(limited.retry_after)  # the venue's pause before reconnecting
            except (ConnectionError, aiohttp.ClientError):
                pass
            finally:
                self.ready.clear()


async def intent(holder: Holder, venue, label: str, rng: random.Random, outcomes, unknown_s):
    direction: t.Direction = "buy" if rng.random() < 0.5 else "sell"
    while True:
        session = await holder.get()
        valid_until = session.venue_now_ms() + VALID_FOR_MS
        answer = await session.place(
            direction=direction, instrument_name=BTC, amount=Decimal(10 * rng.randint(1, 5)),
            label=label, valid_until_ms=valid_until, order_type="market",
        )  # fmt: skip
        failure = answer.failure
        if failure is None or failure.verdict not in (Verdict.RATE_LIMITED, Verdict.MAINTENANCE):
            break
        await asyncio.sleep(failure.retry_after or 0.2)  # the venue's pause, then the same label
    if failure is None:
        outcomes[label] = "ACK"
        return
    if failure.verdict is not Verdict.UNKNOWN:
        outcomes[label] = failure.verdict.value
        return
    started = time.monotonic()
    heard = holder.event(label)
    while True:
        if heard.is_set():
            outcomes[label] = "RESOLVED_BY_STREAM"
            break
        session = await holder.get()
        found = await session.order_by_label("BTC", label)
        assert not (isinstance(found, Classified) and found.verdict is Verdict.FAULT), found
        if isinstance(found, t.Order):
            outcomes[label] = "RESOLVED_BY_QUERY"
            break
        if found is None and session.expired(answer):
            outcomes[label] = "NEVER_PLACED"
            break
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(heard.wait(), timeout=0.5)  # or the next scheduled query
    unknown_s.append(time.monotonic() - started)


def inject(venue: FakeDeribitTrading, rng: random.Random) -> None:
    roll = rng.random()
    faults = venue.faults
    if roll < 0.07:
        faults.drop_response_after_match += 1
    elif roll < 0.13:
        faults.error_before_match += 1
    elif roll < 0.18:
        faults.timed_out += 1
    elif roll < 0.20:
        faults.rate_limited += 1
    elif roll < 0.23:
        faults.duplicate_events = not faults.duplicate_events
    elif roll < 0.26:
        faults.disconnect_user_stream_after = rng.randint(1, 5)
    elif roll < 0.29:
        faults.delay = rng.choice([0.0, 0.0, 1.2])  # past the 1 s request timeout: UNKNOWN
    elif roll < 0.31:
        faults.maintenance += rng.randint(1, 3)


@pytest.mark.slow
async def test_no_duplicate_label_and_every_unknown_resolved_under_chaos() -> None:
    rng = random.Random(611)
    fake = FakeDeribit(seed=23)
    venue = FakeDeribitTrading(fake, top_size=Decimal(20))
    venue.add_account(CLIENT_ID, SECRET, {"BTC": "100"})
    await fake.start()
    outcomes: dict[str, str] = {}
    unknown_s: list[float] = []
    holder = Holder()
    stop = asyncio.Event()
    try:
        async with aiohttp.ClientSession() as http, asyncio.TaskGroup() as group:
            keeper = group.create_task(holder.keep(http, venue, stop))
            labels = [f"chaos-{n:04d}" for n in range(INTENTS)]

            async def worker(mine: list[str]) -> None:
                for label in mine:
                    inject(venue, rng)
                    await intent(holder, venue, label, rng, outcomes, unknown_s)

            try:
                async with asyncio.timeout(90), asyncio.TaskGroup() as workers:
                    for w in range(WORKERS):
                        workers.create_task(worker(labels[w::WORKERS]))
            except TimeoutError:
                pending = sorted(set(labels) - set(outcomes))
                raise AssertionError(
                    f"unresolved after 90 s: {pending[:10]} ({len(pending)})"
                ) from None
            stop.set()
            venue.faults = type(venue.faults)()
            session = await holder.get()
            page = await session.user_trades("BTC")
            keeper.cancel()
    finally:
        await fake.stop()
    assert len(outcomes) == INTENTS
    assert venue.duplicate_labels() == {}
    placed = {o.label for o in venue.orders}
    for label, outcome in outcomes.items():
        should_exist = outcome in ("ACK", "RESOLVED_BY_STREAM", "RESOLVED_BY_QUERY")
        assert (label in placed) == should_exist, (label, outcome)
    venue_fills = {tr.trade_id: tr.amount for o in venue.orders for tr in o.trades}
    assert all(venue_fills[tid] == amount for tid, amount in holder.fills.items())
    assert not isinstance(page, Classified)
    unknown_s.sort()
    p50 = statistics.median(unknown_s) if unknown_s else 0.0
    p99 = unknown_s[min(len(unknown_s) - 1, int(len(unknown_s) * 0.99))] if unknown_s else 0.0
    summary = {
        o: sum(1 for v in outcomes.values() if v == o) for o in sorted(set(outcomes.values()))
    }
    print(
        f"\nvenue chaos (Deribit): {INTENTS} intents, venue orders {len(venue.orders) - 1}, "
        f"faults {dict(venue.faults_injected)}, duplicates 0, outcomes {summary}, "
        f"UNKNOWN resolved {len(unknown_s)}: p50 {p50 * 1000:.0f} ms, p99 {p99 * 1000:.0f} ms, "
        f"sessions {holder.connections}"
    )
