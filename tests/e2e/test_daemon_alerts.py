"""The running daemon's alerts reach a webhook on loopback, once per incident: the kill switch
turned on and off by an operator, and Redis losing the shared state under the daemon."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from tests.e2e.harness import (
    DaemonProcess,
    ExchangeEndpoint,
    NotifyListener,
    run_cli,
    write_config,
)
from tests.test_alerting import HOOK_PATH, Webhook
from tradingd.testing.fake_binance import FakeBinance


@pytest.fixture
async def webhook() -> AsyncIterator[Webhook]:
    hook = Webhook()
    await hook.start()
    try:
        yield hook
    finally:
        await hook.stop()


async def test_the_daemon_alerts_each_incident_once(
    tmp_path: Path,
    migrated_database_url: str,
    redis_url: str,
    binance: FakeBinance,
    webhook: Webhook,
) -> None:
    secrets = tmp_path / "secrets"
    secrets.mkdir(mode=0o700)
    (secrets / "hook").write_text(webhook.url + "\n")
    (secrets / "hook").chmod(0o600)
    config = write_config(
        tmp_path / "tradingd.toml",
        state_dir=tmp_path / "state",
        database_url=migrated_database_url,
        redis_url=redis_url,
        exchanges={
            "binance": ExchangeEndpoint("binance", binance.ws_url, binance.rest_url, ["BTCUSDT"])
        },
        sections={
            "daemon": {"secrets_dir": str(secrets)},
            "alerts": {"webhook_url_secret": "hook"},
        },
    )
    redis = aioredis.Redis.from_url(redis_url)
    env = {"USER": "olga"}
    try:
        async with NotifyListener(tmp_path / "notify.sock") as notify:
            daemon = await DaemonProcess(config, notify, tmp_path / "daemon.log").start()
            try:
                await daemon.wait_ready()
                on = await asyncio.to_thread(
                    run_cli, config, "kill-switch", "on", "--reason", "drill", env=env
                )
                assert on.returncode == 0, on.stderr
                texts = await webhook.until(1)
                assert "kill switch ON by olga: drill" in texts[0]
                await redis.flushdb()
                texts = await webhook.until(2)
                assert "Redis lost the shared state" in texts[1]
                off = await asyncio.to_thread(
                    run_cli, config, "kill-switch", "off", "--reason", "over", env=env
                )
                assert off.returncode == 0, off.stderr
                texts = await webhook.until(3)
                assert "kill switch off by olga: over" in texts[2]
            finally:
                assert await daemon.stop() == 0, daemon.output()[-3000:]
    finally:
        await redis.aclose()
    assert len(webhook.texts) == 3, webhook.texts
    assert all(t.startswith("tradingd on ") for t in webhook.texts)
    assert HOOK_PATH not in daemon.output()
