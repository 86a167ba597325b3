"""Alerts from the daemon: received by a webhook on loopback, once per incident, rate-limited,
without credentials; raised from the records (real PostgreSQL) and pushed by the daemon."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from decimal import Decimal
from pathlib import Path

import asyncpg
import pytest
import redis.asyncio as aioredis
from aiohttp import web

from tradingd.alerting import Alerter, AlertGate, alert_queue, raise_alert, scrub
from tradingd.config import AlertsConfig
from tradingd.execution.ledger import Ledger
from tradingd.execution.orders import OrderState
from tradingd.secrets import SecretStore
from tradingd.state import ExchangeState, set_kill_switch, transition
from tradingd.strategies.api import OrderIntent, Side
from tradingd.supervisor import ActorContext

HOOK_PATH = "/hooks/never-printed"


class Webhook:
    """An incoming webhook on loopback that records each message's text."""

    def __init__(self) -> None:
        self.texts: list[str] = []
        self.arrived = asyncio.Condition()
        self.url = ""
        self._runner: web.AppRunner | None = None

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post(HOOK_PATH, self._post)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.url = f"http://127.0.0.1:{port}{HOOK_PATH}"

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def _post(self, request: web.Request) -> web.Response:
        body = await request.json()
        async with self.arrived:
            self.texts.append(body["text"])
            self.arrived.notify_all()
        return web.Response(text="ok")

    async def until(self, count: int) -> list[str]:
        async with asyncio.timeout(10), self.arrived:
            await self.arrived.wait_for(lambda: len(self.texts) >= count)
        return list(self.texts)


@pytest.fixture
async def webhook() -> AsyncIterator[Webhook]:
    hook = Webhook()
    await hook.start()
    try:
        yield hook
    finally:
        await hook.stop()


def test_the_gate_sends_once_per_incident_and_holds_back_past_the_rate() -> None:
    gate = AlertGate(dedup_s=600, per_minute=2)
    assert gate.admit("LOCKED:binance:x", 0.0)
    assert not gate.admit("LOCKED:binance:x", 10.0)  # the same incident
    assert gate.admit("LOCKED:binance:x", 700.0)  # past the dedup window: again
    assert gate.admit("kill_switch:1", 701.0)
    assert not gate.admit("kill_switch:2", 702.0)  # 2 sent within the minute
    assert gate.held_back == 1 and gate.duplicates == 1
    assert gate.admit("kill_switch:3", 761.0)


def test_no_credential_leaves_in_a_message() -> None:
    text = scrub("cannot reach redis://tradingd:s3cret@db:6379/0 nor https://h/x?token=abc")
    assert "s3cret" not in text and "abc" not in text
    assert "redis://…@db:6379/0" in text


async def _wait_scans(alerter: Alerter, more: int) -> None:
    target = alerter.scans + more
    async with asyncio.timeout(10):
        while alerter.scans < target:
            alerter.scanned.clear()
            await alerter.scanned.wait()


async def test_alerts_arrive_once_per_incident(
    pool: asyncpg.Pool, rds: aioredis.Redis, webhook: Webhook, tmp_path: Path
) -> None:
    secrets = tmp_path / "secrets"
    secrets.mkdir(mode=0o700)
    (secrets / "hook").write_text(webhook.url + "\n")
    (secrets / "hook").chmod(0o600)
    config = AlertsConfig(webhook_url_secret="hook", dedup_seconds=3600, max_per_minute=100)
    queue = alert_queue(config)
    alerter = Alerter(config, SecretStore(secrets), queue, pool, records_interval=0.02)
    for state in ("BOOTSTRAPPING", "LOCKED", "HEALTHY"):
        await transition(pool, rds, "binance", ExchangeState(state), operator="t", reason="setup")
    # An order UNKNOWN for a minute already.
    ledger = Ledger(pool)
    stuck = await ledger.mint_client_id()
    intent = OrderIntent(
        instrument="BTCUSDT", side=Side.BUY, quantity=Decimal("0.1"), price=Decimal(99)
    )
    await ledger.record_intent(stuck, "manual", "binance", intent)
    await ledger.claim_send(stuck, 0)
    await ledger.transition(stuck, OrderState.UNKNOWN, "executor", reason="timeout")

    task = asyncio.create_task(alerter.run(ActorContext(alerter.name, {})))
    try:
        await _wait_scans(alerter, 1)  # marked: what came before is not alerted
        await pool.execute(
            "UPDATE orders SET updated_at = now() - interval '1 minute' WHERE client_order_id = $1",
            stuck,
        )
        trip = "circuit breaker: day loss 1200 USDT past risk.daily_loss_limit 1000 USDT"
        await pool.execute(
            "INSERT INTO breaker_trips (exchange, rule, reason) VALUES ('binance', 'daily_loss', $1)",
            trip,
        )
        await transition(
            pool, rds, "binance", ExchangeState.LOCKED, operator="executor", reason=trip
        )
        # Locked again with the same reason (the executor at its restart): the same incident.
        await transition(
            pool, rds, "binance", ExchangeState.LOCKED, operator="executor", reason=trip
        )
        # An operator's own lock is theirs to know.
        await transition(pool, rds, "binance", ExchangeState.LOCKED, operator="olga", reason="x")
        await set_kill_switch(pool, rds, on=True, operator="olga", reason="venue hacked")
        await set_kill_switch(pool, rds, on=False, operator="olga", reason="all clear")
        for _ in range(2):  # the same mismatch seen by two runs: one incident
            await pool.execute(
                "INSERT INTO reconciliations (exchange, trigger, outcome, summary)"
                " VALUES ('binance', 'periodic', 'mismatch', 'USDT: ledger 1000, venue 990')"
            )
        raise_alert(queue, "escalation:persister", "exiting: persister failed 6 times")
        raise_alert(
            queue, "shared_state_lost:1", "Redis lost the shared state (redis://u:pw@h:1/0)"
        )
        texts = await webhook.until(7)
        await _wait_scans(alerter, 5)  # scanned again and again: nothing new is sent
        await webhook.until(7)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    assert len(webhook.texts) == 7, webhook.texts
    joined = "\n".join(texts)
    assert sum(trip in t for t in texts) == 1
    assert "binance LOCKED (executor): " + trip in joined
    assert "kill switch ON by olga: venue hacked" in joined
    assert "kill switch off by olga: all clear" in joined
    assert f"order {stuck} on BTCUSDT UNKNOWN for 60 s" in joined
    assert "exiting: persister failed 6 times" in joined
    assert "binance: reconciliation (periodic) found a mismatch" in joined
    assert "Redis lost the shared state" in joined and "pw" not in joined
    assert "olga" not in next(t for t in texts if "LOCKED" in t)
    assert HOOK_PATH not in joined
    assert all(t.startswith("tradingd on ") for t in texts)
    assert alerter.gate.duplicates >= 3
