"""The metrics listener in process: /health follows the supervisor's check-ins, the kill switch
gauge follows Redis, and the histogram buckets keep the log-linear histogram's counts."""

from __future__ import annotations

import asyncio
import random
import socket
from collections.abc import AsyncIterator, Mapping, Sequence

import aiohttp
import pytest
import redis.asyncio as aioredis
from hypothesis import given
from hypothesis import strategies as st
from prometheus_client.parser import text_string_to_metric_families

from tests.e2e.harness import eventually
from tradingd.actors.persister import Persister
from tradingd.actors.receiver import Receiver
from tradingd.actors.repairer import GapRepairer
from tradingd.config import SupervisorConfig
from tradingd.execution.executor import Executor
from tradingd.exposition import LATENCY_BOUNDS_US
from tradingd.metrics import LatencyHistogram
from tradingd.metrics_server import MetricsServer
from tradingd.queues import BoundedQueue, OverflowPolicy
from tradingd.state import KILL_SWITCH_KEY
from tradingd.supervisor import ActorContext, ActorSpec, Supervisor


class Quiet:
    """Ready, then checks in only when told to."""

    name = "quiet"

    def __init__(self) -> None:
        self.nudge = asyncio.Event()

    async def run(self, ctx: ActorContext) -> None:
        ctx.ready()
        while True:
            await self.nudge.wait()
            self.nudge.clear()
            ctx.checkin()


class Observed:
    """A daemon with no exchange: only the supervisor and one queue."""

    def __init__(self, supervisor: Supervisor) -> None:
        self.supervisor = supervisor
        self.receivers: Mapping[str, Sequence[Receiver]] = {}
        self.repairers: Mapping[str, GapRepairer] = {}
        self.executors: Mapping[str, Executor] = {}
        self.persister: Persister | None = None
        self.queues: Sequence[BoundedQueue[object]] = [
            BoundedQueue("records", 10, OverflowPolicy.BLOCK)
        ]
        self.serving = True

    def exchange_names(self) -> list[str]:
        return []

    def exchange_state(self, exchange: str) -> str | None:
        return None

    def ready(self) -> bool:
        return self.serving


@pytest.fixture
async def served(rds: aioredis.Redis) -> AsyncIterator[tuple[str, Quiet, Observed]]:
    supervisor = Supervisor(SupervisorConfig(), rng=random.Random(1))
    observed = Observed(supervisor)
    quiet = Quiet()
    server = MetricsServer("127.0.0.1", 0, observed, rds)
    supervisor.start_all([ActorSpec(quiet, checkin_timeout=0.3), ActorSpec(server)])
    await supervisor.wait_ready()
    assert server.port is not None
    try:
        yield f"http://127.0.0.1:{server.port}", quiet, observed
    finally:
        await supervisor.stop_all()


async def get(url: str) -> tuple[int, str]:
    async with aiohttp.ClientSession() as http, http.get(url) as response:
        return response.status, await response.text()


async def test_health_turns_503_when_an_actor_stops_checking_in(
    served: tuple[str, Quiet, Observed],
) -> None:
    base, quiet, observed = served
    status, _ = await get(f"{base}/health")
    assert status == 200

    async def unhealthy() -> bool:
        return (await get(f"{base}/health"))[0] == 503

    await eventually(unhealthy, timeout=10, what="/health 503")
    async with aiohttp.ClientSession() as http, http.get(f"{base}/health") as response:
        health = await response.json()
    assert health["ready"] is True and health["healthy"] is False
    late = {a["name"]: a for a in health["actors"]}["quiet"]
    assert late["overdue"] is True and late["seconds_since_checkin"] > 0.3
    assert late["checkin_timeout"] == 0.3
    quiet.nudge.set()

    async def healthy_again() -> bool:
        return (await get(f"{base}/health"))[0] == 200

    await eventually(healthy_again, timeout=10, what="/health 200 after a check-in")
    observed.serving = False  # shutting down: not ready
    assert (await get(f"{base}/health"))[0] == 503


def gauge(text: str, name: str) -> float:
    family = next(f for f in text_string_to_metric_families(text) if f.name == name)
    return float(family.samples[0].value)


async def test_kill_switch_gauge_follows_redis(
    served: tuple[str, Quiet, Observed], rds: aioredis.Redis
) -> None:
    base, _, _ = served
    status, text = await get(f"{base}/metrics")
    assert status == 200 and gauge(text, "tradingd_kill_switch") == 0
    await rds.set(KILL_SWITCH_KEY, "set by hand")
    assert gauge((await get(f"{base}/metrics"))[1], "tradingd_kill_switch") == 1
    assert gauge(text, "tradingd_ready") == 1


async def test_metrics_count_unreadable_kill_switch_as_on() -> None:
    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))
        port = unused.getsockname()[1]
    dead = aioredis.Redis(host="127.0.0.1", port=port, socket_connect_timeout=0.5)
    supervisor = Supervisor(SupervisorConfig())
    server = MetricsServer("127.0.0.1", 0, Observed(supervisor), dead)
    supervisor.start(ActorSpec(server))
    await supervisor.wait_ready()
    try:
        _, text = await get(f"http://127.0.0.1:{server.port}/metrics")
        assert gauge(text, "tradingd_kill_switch") == 1
    finally:
        await supervisor.stop_all()
        await dead.aclose()


async def test_a_taken_port_is_retried_not_fatal(rds: aioredis.Redis) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        supervisor = Supervisor(SupervisorConfig())
        server = MetricsServer("127.0.0.1", port, Observed(supervisor), rds)
        supervisor.start(ActorSpec(server))
        try:
            # The actor keeps running (no restart, no escalation) while it retries, and counts
            # as ready: the daemon's READY=1 does not wait for the port.
            async with asyncio.timeout(10):
                await supervisor.wait_ready()
            await eventually(
                lambda: _running_without_port(supervisor, server), timeout=10, what="retrying"
            )
        finally:
            await supervisor.stop_all()
    assert supervisor.escalation is None
    assert supervisor.snapshot()[0].restarts == 0


async def _running_without_port(supervisor: Supervisor, server: MetricsServer) -> bool:
    actor = supervisor.snapshot()[0]
    return actor.state == "running" and server.port is None and actor.ready


@given(st.lists(st.integers(min_value=0, max_value=100_000_000), max_size=200))
def test_cumulative_buckets_are_within_the_histograms_precision(values: list[int]) -> None:
    histogram = LatencyHistogram("x")
    histogram.record_many(values)
    cumulative = histogram.cumulative(LATENCY_BOUNDS_US)
    assert cumulative == sorted(cumulative)
    for bound, count in zip(LATENCY_BOUNDS_US, cumulative, strict=True):
        # Never more than the values at or below the bound; every value clearly below it is in.
        assert count <= sum(1 for v in values if v <= bound)
        assert count >= sum(1 for v in values if v * (1 + 1 / 32) <= bound)
