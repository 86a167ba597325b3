"""Alerts to a human, for what must not wait for someone to read the journal.

``tradingd alert`` (run by ``tradingd-alert@.service`` when a tradingd unit fails for good)
sends one message to every configured channel: an incoming webhook (JSON ``{"text": ...}``:
Slack, Mattermost and compatible) and a Telegram chat. Both the webhook URL and the bot token
are credentials: they are read from secret files and never appear in a log line or an error
(aiohttp's errors name the URL, so they are not passed on). The message is also logged at
CRITICAL, so it reaches the journal even when no channel is configured or every one fails.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Awaitable, Callable

import aiohttp
import msgspec
from loguru import logger
from tenacity import AsyncRetrying, retry_if_exception_type, stop_after_attempt, wait_exponential

from tradingd.config import AlertsConfig
from tradingd.secrets import SecretStore

ATTEMPTS = 3
REQUEST_TIMEOUT = 10.0
# Telegram refuses longer messages.
MAX_TEXT = 4096


class ChannelError(Exception):
    """One channel did not take the message; the text names the channel, never its URL."""


class AlertsUndelivered(Exception):
    """At least one configured channel did not take the message after every attempt."""


class _TelegramReply(msgspec.Struct):
    ok: bool
    description: str = ""


async def send_alert(
    config: AlertsConfig,
    secrets: SecretStore,
    text: str,
    *,
    http: aiohttp.ClientSession,
    backoff_initial: float = 1.0,
) -> list[str]:
    """Send ``text`` to every configured channel; returns the channels that took it.

    Raises ``AlertsUndelivered`` (after trying every channel) if any of them failed.
    """
    logger.critical("ALERT: {}", text)
    text = text if len(text) <= MAX_TEXT else text[: MAX_TEXT - 1] + "…"
    channels: dict[str, Callable[[], Awaitable[None]]] = {}
    webhook = secrets.load_optional(config.webhook_url_secret)
    if webhook is not None:
        channels["webhook"] = lambda: _post_webhook(http, webhook.reveal(), text)
    token = secrets.load_optional(config.telegram_token_secret)
    if token is not None:
        url = f"{config.telegram_api_url.rstrip('/')}/bot{token.reveal()}/sendMessage"
        channels["telegram"] = lambda: _post_telegram(http, url, config.telegram_chat_id, text)
    delivered: list[str] = []
    failures: list[str] = []
    for name, send in channels.items():
        try:
            async for attempt in AsyncRetrying(
                stop=stop_after_attempt(ATTEMPTS),
                wait=wait_exponential(multiplier=backoff_initial, max=8 * backoff_initial),
                retry=retry_if_exception_type(ChannelError),
                reraise=True,
            ):
                with attempt:
                    await send()
        except ChannelError as exc:
            logger.error("alert not delivered to {}: {}", name, exc)
            failures.append(f"{name}: {exc}")
        else:
            delivered.append(name)
    if failures:
        raise AlertsUndelivered("; ".join(failures))
    return delivered


async def _post_webhook(http: aiohttp.ClientSession, url: str, text: str) -> None:
    try:
        async with http.post(
            url, json={"text": text}, timeout=aiohttp.ClientTimeout(total=REQUEST_TIMEOUT)
        ) as response:
            if response.status >= 300:
                raise ChannelError(f"the webhook answered HTTP {response.status}")
    except (aiohttp.ClientError, OSError, TimeoutError) as exc:
        raise ChannelError(f"cannot reach the webhook ({type(exc).__name__})") from None


async def _post_telegram(http: aiohttp.ClientSession, url: str, chat_id: str, text: str) -> None:
    payload = {"chat_id": chat_id, "text": text, "disable_web_page_preview": True}
    try:
        async with http.post(
            url, json=payload, timeout=aiohttp.ClientTimeout(total=REQUEST_TIMEOUT)
        ) as response:
            body = await response.read()
            status = response.status
    except (aiohttp.ClientError, OSError, TimeoutError) as exc:
        raise ChannelError(f"cannot reach Telegram ({type(exc).__name__})") from None
    try:
        reply = msgspec.json.decode(body, type=_TelegramReply)
    except msgspec.MsgspecError:
        raise ChannelError(f"Telegram answered HTTP {status} with no JSON reply") from None
    if not reply.ok:
        raise ChannelError(f"Telegram refused the message (HTTP {status}: {reply.description})")


async def unit_failure_text(unit: str) -> str:
    """The message for a unit that failed for good, with what systemd knows of why."""
    lines = [f"tradingd on {socket.gethostname()}: {unit} failed"]
    details = await _systemd_result(unit)
    if details:
        lines.append(details)
    lines.append(f"See: journalctl -u {unit} -n 100")
    return "\n".join(lines)


async def _systemd_result(unit: str) -> str:
    """``Result=… ExecMainStatus=…`` from systemctl, or "" where systemd cannot be asked."""
    try:
        process = await asyncio.create_subprocess_exec(
            "systemctl",
            "show",
            "--property=Result,ExecMainStatus,NRestarts",
            "--",
            unit,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.DEVNULL,
        )
    except OSError:
        return ""
    try:
        async with asyncio.timeout(5):
            out, _ = await process.communicate()
    except TimeoutError:
        process.kill()
        await process.wait()
        return ""
    if process.returncode != 0:
        return ""
    return " ".join(out.decode(errors="replace").split())


__all__ = [
    "AlertsUndelivered",
    "ChannelError",
    "send_alert",
    "unit_failure_text",
]
