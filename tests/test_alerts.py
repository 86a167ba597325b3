"""``tradingd alert``: a webhook and a Telegram chat, served by a fake on loopback; credentials
never leak into what is logged or printed."""

from __future__ import annotations

import asyncio
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from tests.e2e.harness import offline_config, run_cli
from tradingd.alerts import AlertsUndelivered, send_alert
from tradingd.config import AlertsConfig
from tradingd.secrets import SecretStore

TOKEN = "123456:ABC-token-never-printed"
HOOK_PATH = "/services/T000/B000/hook-secret-never-printed"


class FakeChannels:
    """An incoming-webhook endpoint and Telegram's sendMessage, recording what they receive.

    ``webhook_failures``: how many posts to refuse with HTTP 500 first. ``telegram_refusal``:
    when set, Telegram answers ``{"ok": false}`` with this description.
    """

    def __init__(self) -> None:
        self.webhook_posts: list[dict[str, object]] = []
        self.telegram_posts: list[dict[str, object]] = []
        self.webhook_failures = 0
        self.telegram_refusal = ""
        self.url = ""
        self._runner: web.AppRunner | None = None

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post(HOOK_PATH, self._webhook)
        app.router.add_post("/bot{token}/sendMessage", self._telegram)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.url = f"http://127.0.0.1:{port}"

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def _webhook(self, request: web.Request) -> web.Response:
        if self.webhook_failures:
            self.webhook_failures -= 1
            return web.Response(status=500)
        self.webhook_posts.append(await request.json())
        return web.Response(text="ok")

    async def _telegram(self, request: web.Request) -> web.Response:
        if request.match_info["token"] != TOKEN:
            return web.json_response({"ok": False, "description": "Unauthorized"}, status=401)
        if self.telegram_refusal:
            return web.json_response(
                {"ok": False, "error_code": 400, "description": self.telegram_refusal}, status=400
            )
        self.telegram_posts.append(await request.json())
        return web.json_response({"ok": True, "result": {"message_id": 1}})


@pytest.fixture
async def channels() -> AsyncIterator[FakeChannels]:
    fake = FakeChannels()
    await fake.start()
    try:
        yield fake
    finally:
        await fake.stop()


@pytest.fixture
def secrets_dir(tmp_path: Path, channels: FakeChannels) -> Path:
    directory = tmp_path / "secrets"
    directory.mkdir(mode=0o700)
    for name, value in (("alert-webhook", channels.url + HOOK_PATH), ("telegram-token", TOKEN)):
        (directory / name).write_text(value + "\n")
        (directory / name).chmod(0o600)
    return directory


def both(channels: FakeChannels) -> AlertsConfig:
    return AlertsConfig(
        webhook_url_secret="alert-webhook",
        telegram_token_secret="telegram-token",
        telegram_chat_id="-10042",
        telegram_api_url=channels.url,
    )


async def test_one_message_reaches_every_channel(
    channels: FakeChannels, secrets_dir: Path, logged: list[str]
) -> None:
    async with aiohttp.ClientSession() as http:
        delivered = await send_alert(
            both(channels), SecretStore(secrets_dir), "tradingd.service failed", http=http
        )
    assert delivered == ["webhook", "telegram"]
    assert channels.webhook_posts == [{"text": "tradingd.service failed"}]
    assert channels.telegram_posts == [
        {"chat_id": "-10042", "text": "tradingd.service failed", "disable_web_page_preview": True}
    ]
    assert any("CRITICAL" in line and "ALERT: tradingd.service failed" in line for line in logged)


async def test_a_failing_channel_is_retried_and_a_refusal_reported_without_credentials(
    channels: FakeChannels, secrets_dir: Path, logged: list[str]
) -> None:
    channels.webhook_failures = 2
    channels.telegram_refusal = "Bad Request: chat not found"
    async with aiohttp.ClientSession() as http:
        with pytest.raises(AlertsUndelivered) as refused:
            await send_alert(
                both(channels), SecretStore(secrets_dir), "x", http=http, backoff_initial=0.01
            )
    assert channels.webhook_posts == [{"text": "x"}]  # the third attempt got through
    assert "telegram: Telegram refused the message (HTTP 400: Bad Request: chat not found)" in (
        str(refused.value)
    )
    assert "webhook" not in str(refused.value)
    for text in [str(refused.value), *logged]:
        assert TOKEN not in text and "hook-secret" not in text


async def test_an_unreachable_channel_names_no_url(secrets_dir: Path, logged: list[str]) -> None:
    (secrets_dir / "alert-webhook").write_text("http://127.0.0.1:9/hook-secret-never-printed")
    config = AlertsConfig(webhook_url_secret="alert-webhook")
    async with aiohttp.ClientSession() as http:
        with pytest.raises(AlertsUndelivered, match="cannot reach the webhook") as refused:
            await send_alert(config, SecretStore(secrets_dir), "x", http=http, backoff_initial=0.01)
    for text in [str(refused.value), *logged]:
        assert "hook-secret" not in text


async def test_without_channels_the_alert_is_only_logged(tmp_path: Path, logged: list[str]) -> None:
    async with aiohttp.ClientSession() as http:
        assert await send_alert(AlertsConfig(), SecretStore(tmp_path), "x", http=http) == []
    assert any("CRITICAL" in line for line in logged)


def alert(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return run_cli(config, "alert", *args)


async def test_the_cli_reports_a_failed_unit(
    tmp_path: Path, channels: FakeChannels, secrets_dir: Path
) -> None:
    config = offline_config(
        tmp_path / "tradingd.toml",
        state_dir=tmp_path / "state",
        database_url="postgresql://127.0.0.1:9/none",  # alerts need no storage
        redis_url="redis://127.0.0.1:9/0",
        sections={
            "daemon": {"secrets_dir": str(secrets_dir)},
            "alerts": {
                "webhook_url_secret": "alert-webhook",
                "telegram_token_secret": "telegram-token",
                "telegram_chat_id": "-10042",
                "telegram_api_url": channels.url,
            },
        },
    )
    sent = await asyncio.to_thread(alert, config, "--unit", "tradingd.service")
    assert sent.returncode == 0, sent.stderr
    assert sent.stdout == "alert sent to webhook, telegram\n"
    (posted,) = channels.webhook_posts
    text = str(posted["text"])
    assert "tradingd.service failed" in text
    assert text.endswith("See: journalctl -u tradingd.service -n 100")
    assert channels.telegram_posts[0]["text"] == text

    channels.telegram_refusal = "Forbidden: bot was blocked by the user"
    refused = await asyncio.to_thread(alert, config, "--message", "test")
    assert refused.returncode == 69
    assert "bot was blocked" in refused.stderr
    assert TOKEN not in refused.stderr + refused.stdout

    (secrets_dir / "telegram-token").chmod(0o644)
    unsafe = await asyncio.to_thread(alert, config, "--message", "test")
    assert unsafe.returncode == 78 and "chmod 600" in unsafe.stderr


def test_a_telegram_token_needs_a_chat(tmp_path: Path) -> None:
    config = tmp_path / "tradingd.toml"
    config.write_text('[alerts]\ntelegram_token_secret = "telegram-token"\n')
    result = alert(config, "--message", "x")
    assert result.returncode == 78
    assert "alerts.telegram_chat_id: expected a value when alerts.telegram_token_secret is set" in (
        result.stderr
    )
