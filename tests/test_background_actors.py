"""The clock check runs as a supervised actor: a storage error while locking restarts it."""

from __future__ import annotations

import asyncio
import time
from typing import Any, cast

from tradingd.adapters.base import ExchangeAdapter
from tradingd.clock import ClockCheck, ClockWatch
from tradingd.config import DaemonConfig, SupervisorConfig
from tradingd.supervisor import ActorSpec, Supervisor


class SkewedVenue:
    """Answers the server-time request two minutes behind the local clock."""

    async def fetch_server_time_us(self) -> int:
        return time.time_ns() // 1000 - 120_000_000


async def test_a_storage_error_while_locking_restarts_the_clock_actor_only() -> None:
    locked = asyncio.Event()
    reasons: list[str] = []

    async def lock_all(reason: str) -> None:
        if not reasons:
            reasons.append("failed")
            raise ConnectionError("Redis went away")
        reasons.append(reason)
        locked.set()

    venue = cast(ExchangeAdapter, cast(Any, SkewedVenue()))
    check = ClockCheck(DaemonConfig(), {"binance": venue}, unverified_recheck=0.01)
    escalations: list[object] = []
    supervisor = Supervisor(
        SupervisorConfig(backoff_initial=0.01, backoff_max=0.02),
        on_escalation=escalations.append,
    )
    supervisor.start(ActorSpec(ClockWatch(check, lock_all)))
    try:
        await asyncio.wait_for(locked.wait(), 10.0)
        (status,) = supervisor.snapshot()
        assert status.name == "clock"
        assert status.restarts == 1
        assert status.last_error == "ConnectionError: Redis went away"
        assert status.state == "running"
        assert escalations == []
        assert supervisor.healthy()
        assert reasons[1].startswith("CRITICAL TIME SKEW DETECTED")
        assert not check.verified.is_set()
    finally:
        await supervisor.stop_all()
