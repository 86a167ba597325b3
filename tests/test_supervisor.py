from __future__ import annotations

import asyncio
import random

import pytest

from tradingd.config import SupervisorConfig
from tradingd.supervisor import (
    ActorContext,
    ActorSpec,
    RestartPolicy,
    Supervisor,
    SupervisorEscalation,
)

FAST = SupervisorConfig(
    max_restarts=3, restart_period=30.0, backoff_initial=0.001, backoff_max=0.01
)


class Flaky:
    """Fails its first ``failures`` runs, then runs until cancelled."""

    def __init__(self, name: str, failures: int) -> None:
        self.name = name
        self.failures = failures
        self.runs = 0
        self.running = asyncio.Event()

    async def run(self, ctx: ActorContext) -> None:
        self.runs += 1
        if self.runs <= self.failures:
            raise RuntimeError(f"boom {self.runs}")
        ctx.ready()
        self.running.set()
        await asyncio.Event().wait()


class Steady:
    def __init__(self, name: str) -> None:
        self.name = name
        self.started = 0
        self.cancelled = asyncio.Event()

    async def run(self, ctx: ActorContext) -> None:
        self.started += 1
        ctx.ready()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            self.cancelled.set()
            raise


async def test_one_for_one_restart_leaves_siblings_alone() -> None:
    supervisor = Supervisor(FAST, rng=random.Random(1))
    flaky, steady = Flaky("flaky", failures=2), Steady("steady")
    supervisor.start_all([ActorSpec(flaky), ActorSpec(steady)])
    await supervisor.wait_ready()
    assert flaky.runs == 3
    assert steady.started == 1
    status = {s.name: s for s in supervisor.snapshot()}
    assert status["flaky"].restarts == 2
    assert "boom 2" in status["flaky"].last_error
    assert supervisor.healthy()
    await supervisor.stop_all()
    assert steady.cancelled.is_set()


async def test_escalates_past_intensity_naming_actor_and_error() -> None:
    escalations: list[SupervisorEscalation] = []
    supervisor = Supervisor(FAST, rng=random.Random(1), on_escalation=escalations.append)
    doomed = Flaky("doomed", failures=100)
    supervisor.start(ActorSpec(doomed))
    with pytest.raises(SupervisorEscalation) as caught:
        await supervisor.wait_ready()
    assert caught.value.actor == "doomed"
    assert "boom 4" in str(caught.value)
    assert doomed.runs == FAST.max_restarts + 1
    assert escalations == [caught.value]
    assert not supervisor.healthy()
    await supervisor.stop_all()


async def test_transient_actor_that_returns_is_not_restarted() -> None:
    class Once:
        name = "once"
        runs = 0

        async def run(self, ctx: ActorContext) -> None:
            self.runs += 1
            ctx.ready()

    once = Once()
    supervisor = Supervisor(FAST)
    supervisor.start(ActorSpec(once, restart=RestartPolicy.TRANSIENT))
    await supervisor.wait_ready()
    await supervisor.stop(["once"], graceful_timeout=1.0)
    assert once.runs == 1


async def test_graceful_stop_lets_the_actor_finish() -> None:
    finished = asyncio.Event()
    go = asyncio.Event()

    class Drainer:
        name = "drainer"

        async def run(self, ctx: ActorContext) -> None:
            ctx.ready()
            await go.wait()
            finished.set()

    supervisor = Supervisor(FAST)
    supervisor.start(ActorSpec(Drainer()))
    await supervisor.wait_ready()
    stopping = asyncio.create_task(supervisor.stop(["drainer"], graceful_timeout=5.0))
    go.set()
    await stopping
    assert finished.is_set()


async def test_missed_checkin_makes_the_daemon_unhealthy() -> None:
    supervisor = Supervisor(FAST)
    steady = Steady("quiet")
    supervisor.start(ActorSpec(steady, checkin_timeout=0.0))
    await supervisor.wait_ready()
    assert not supervisor.healthy()
    await supervisor.stop_all()


def test_backoff_is_capped_exponential_with_jitter() -> None:
    config = SupervisorConfig(backoff_initial=1.0, backoff_max=8.0)
    supervisor = Supervisor.__new__(Supervisor)
    supervisor._config = config
    supervisor._rng = random.Random(7)
    for attempt, cap in [(1, 1.0), (2, 2.0), (3, 4.0), (4, 8.0), (10, 8.0)]:
        for _ in range(50):
            delay = supervisor.backoff_delay(attempt)
            assert cap / 2 <= delay <= cap
