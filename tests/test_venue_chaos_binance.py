"""Venue-side chaos: hundreds of orders through the Binance private client and user stream
against the fake venue under random faults of every kind. Every UNKNOWN is resolved by the
venue's word only (a user-stream event carrying its client id, or a query by client id; absent
only past the request's deadline), nothing is ever resent under a new id or after UNKNOWN, and
the fake's own record shows 0 duplicate orders and the fills we saw equal its fills.

Prints the figures (orders, faults injected, duplicates, time to resolve UNKNOWN p50/p99).
"""

from __future__ import annotations

import asyncio
import random
import statistics
import time
from decimal import Decimal

import aiohttp
import pytest

from tradingd.adapters.binance import trading
from tradingd.adapters.binance.execution_parsing import ExecutionReport
from tradingd.adapters.binance.private import BinancePrivateClient, UserStream
from tradingd.adapters.trading import Classified, Verdict
from tradingd.testing.fake_binance import FakeBinance
from tradingd.testing.fake_binance_trading import FakeBinanceTrading

KEY, SECRET = "chaos-key", "chaos-secret"
INTENTS = 300
WORKERS = 20


class Resolver:
    """What the user stream told us, by client id."""

    def __init__(self) -> None:
        self.heard: dict[str, asyncio.Event] = {}
        self.fills: dict[int, Decimal] = {}  # trade id -> quantity (duplicates harmless)

    def event(self, cid: str) -> asyncio.Event:
        return self.heard.setdefault(cid, asyncio.Event())

    def on(self, report: ExecutionReport) -> None:
        self.event(report.client_order_id).set()
        if report.fill is not None:
            self.fills[report.fill.trade_id] = report.fill.quantity


async def listen(http, venue, client, resolver: Resolver, stop: asyncio.Event) -> int:
    reconnects = 0
    while not stop.is_set():
        try:
            stream = await UserStream.connect(
                http, venue.ws_api_url, client.credentials, client.venue_now_ms(), reply_within=5
            )
        except (aiohttp.ClientError, ConnectionError):
            continue
        reconnects += 1
        try:
            async for event in stream.events():
                if isinstance(event, ExecutionReport):
                    resolver.on(event)
                if stop.is_set():
                    break
        except aiohttp.ClientError:
            pass
        finally:
            await stream.close()
    return reconnects


async def intent(
    client, venue, resolver: Resolver, cid: str, rng: random.Random, outcomes, unknown_s
):
    side: trading.Side = "BUY" if rng.random() < 0.6 else "SELL"
    quantity = Decimal(rng.choice(["0.001", "0.002", "0.005"]))
    while True:
        answer = await client.place(
            symbol="BTCUSDT", side=side, order_type="MARKET", quantity=quantity,
            client_order_id=cid,
        )  # fmt: skip
        if answer.failure is None or answer.failure.verdict is not Verdict.RATE_LIMITED:
            break
        # Refused before processing (or not sent at all): the same intent goes again once the
        # venue's Retry-After has passed.
        await asyncio.sleep(answer.failure.retry_after or 1.0)
    if answer.failure is None:
        outcomes[cid] = "ACK"
        return
    verdict = answer.failure.verdict
    if verdict is not Verdict.UNKNOWN:
        outcomes[cid] = verdict.value  # definitive: nothing was placed
        return
    started = time.monotonic()
    heard = resolver.event(cid)
    while True:
        if heard.is_set():
            outcomes[cid] = "RESOLVED_BY_STREAM"
            break
        queried = await client.query(symbol="BTCUSDT", client_order_id=cid)
        if queried.order is not None:
            outcomes[cid] = "RESOLVED_BY_QUERY"
            break
        if (
            queried.failure is not None
            and queried.failure.verdict is Verdict.NOT_FOUND
            and client.expired(answer)
        ):
            outcomes[cid] = "NEVER_PLACED"
            break
        # The next scheduled query, unless the stream answers first.
        try:
            await asyncio.wait_for(heard.wait(), timeout=0.1)
        except TimeoutError:
            pass
    unknown_s.append(time.monotonic() - started)


def inject(venue: FakeBinanceTrading, rng: random.Random) -> None:
    roll = rng.random()
    faults = venue.faults
    if roll < 0.08:
        faults.timeout_after_match += 1
    elif roll < 0.16:
        faults.drop_response_after_match += 1
    elif roll < 0.22:
        faults.server_error_before_match += 1
    elif roll < 0.25:
        venue.fake.inject_http_error(429, retry_after=1)
    elif roll < 0.29:
        faults.duplicate_events = not faults.duplicate_events
    elif roll < 0.32:
        faults.disconnect_user_stream_after = rng.randint(1, 4)
    elif roll < 0.35:
        faults.not_found_after_fill = rng.choice([0.0, 0.3])
    elif roll < 0.38:
        venue.fake.clock_offset_ms = rng.choice([0, -8000, 2500])


@pytest.mark.slow
async def test_no_duplicate_and_every_unknown_resolved_under_chaos() -> None:
    rng = random.Random(20261206)
    fake = FakeBinance(seed=17)
    venue = FakeBinanceTrading(fake, top_size=Decimal("0.002"))
    venue.add_account(KEY, SECRET, {"USDT": "10000000", "BTC": "1000"})
    await fake.start()
    outcomes: dict[str, str] = {}
    unknown_s: list[float] = []
    resolver = Resolver()
    stop = asyncio.Event()
    try:
        async with aiohttp.ClientSession() as http:
            client = BinancePrivateClient(
                http, fake.rest_url, trading.Credentials(KEY, SECRET), request_timeout=2.0,
                recv_window_ms=1000, deadline_margin_ms=500,
            )  # fmt: skip
            await client.sync_clock()
            cids = [f"chaos-{n:04d}" for n in range(INTENTS)]

            async def worker(mine: list[str]) -> None:
                for cid in mine:
                    inject(venue, rng)
                    await intent(client, venue, resolver, cid, rng, outcomes, unknown_s)

            async with asyncio.TaskGroup() as group:
                listener = group.create_task(listen(http, venue, client, resolver, stop))
                async with asyncio.TaskGroup() as workers:
                    for w in range(WORKERS):
                        workers.create_task(worker(cids[w::WORKERS]))
                stop.set()
                await venue.abort_user_streams()
            # Every intent resolved; the venue's record agrees.
            assert len(outcomes) == INTENTS
            assert venue.duplicate_client_ids() == {}
            placed = {o.client_order_id: o for o in venue.orders}
            for cid, outcome in outcomes.items():
                if outcome in ("ACK", "RESOLVED_BY_STREAM", "RESOLVED_BY_QUERY"):
                    assert cid in placed, (cid, outcome)
                elif outcome != "NEVER_PLACED":
                    assert cid not in placed, (cid, outcome)
            for cid in [c for c, o in outcomes.items() if o == "NEVER_PLACED"]:
                assert cid not in placed
            venue.faults = type(venue.faults)()
            fake.clock_offset_ms = 0
            await client.sync_clock()
            client._not_before = 0.0
            trades = await client.my_trades("BTCUSDT", from_id=0)
            assert not isinstance(trades, Classified)
            venue_fills = {t.fill.trade_id: t.fill.quantity for t in venue.trades}
            assert {t.trade_id: t.quantity for t in trades} == venue_fills
            # Every fill the stream delivered is the venue's (nothing invented, nothing doubled).
            assert all(venue_fills[tid] == q for tid, q in resolver.fills.items())
    finally:
        await fake.stop()
    unknown_s.sort()
    p50 = statistics.median(unknown_s) if unknown_s else 0.0
    p99 = unknown_s[min(len(unknown_s) - 1, int(len(unknown_s) * 0.99))] if unknown_s else 0.0
    summary = {
        o: sum(1 for v in outcomes.values() if v == o) for o in sorted(set(outcomes.values()))
    }
    print(
        f"\nvenue chaos (Binance): {INTENTS} intents, venue orders {len(venue.orders)}, "
        f"faults {dict(venue.faults_injected)}, duplicates 0, outcomes {summary}, "
        f"UNKNOWN resolved {len(unknown_s)}: p50 {p50 * 1000:.0f} ms, p99 {p99 * 1000:.0f} ms, "
        f"clock resyncs {client.clock_resyncs}, stream connections {listener.result()}"
    )
