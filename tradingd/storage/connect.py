"""Connections to PostgreSQL (an asyncpg pool) and Redis that wait for a server that is down.

A server that refuses connections, is starting up or cannot be resolved yet is retried with
capped exponential backoff; every wait is logged and reported through ``on_wait`` (the daemon
shows it as its systemd STATUS= line). A positive ``timeout`` bounds the total wait, after which
``StorageUnavailable`` says what was tried (the CLI exits 69, EX_UNAVAILABLE). A server that
answers but rejects us (bad password, missing database) raises ``StorageRejected`` at once:
waiting would not help.

A password (passed in, or inside a configured URL) never reaches a message: URLs are shown
through ``redact_url`` and error texts are scrubbed.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

import asyncpg
import redis.asyncio as aioredis
import redis.exceptions as redis_errors
from loguru import logger
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    RetryError,
    retry_if_exception,
    stop_before_delay,
    stop_never,
    wait_exponential,
)

from tradingd.config import redact_url

# An attempt started just before the deadline still gets this long (seconds): the total wait may
# pass the timeout by as much.
ATTEMPT_FLOOR = 0.1
# One attempt never waits longer than this for a connection, whatever the total timeout.
ATTEMPT_TIMEOUT = 10.0


class StorageError(Exception):
    """PostgreSQL or Redis cannot be used; the message is one line for the operator."""


class StorageUnavailable(StorageError):
    """The server could not be reached (in time); exit status 69 (EX_UNAVAILABLE)."""


class StorageRejected(StorageError):
    """The server answered but refused us (credentials, missing database): a configuration
    problem, not worth retrying."""


# Called with one line for the operator before each wait, e.g. "waiting for PostgreSQL at
# postgresql://u:***@db/tradingd: connection refused (attempt 3, next try in 2.0 s)".
OnWait = Callable[[str], None]

_RETRYABLE_POSTGRES: tuple[type[BaseException], ...] = (
    OSError,
    TimeoutError,
    asyncpg.CannotConnectNowError,
    asyncpg.TooManyConnectionsError,
    asyncpg.PostgresConnectionError,
    asyncpg.exceptions.AdminShutdownError,
    asyncpg.exceptions.CrashShutdownError,
    asyncpg.ConnectionDoesNotExistError,
)


def _postgres_retryable(exc: BaseException) -> bool:
    # A socket we may not open stays that way: a configuration problem, not an outage.
    return isinstance(exc, _RETRYABLE_POSTGRES) and not isinstance(exc, PermissionError)


def _redis_retryable(exc: BaseException) -> bool:
    if isinstance(exc, redis_errors.AuthenticationError):
        return False
    return isinstance(exc, (redis_errors.ConnectionError, redis_errors.TimeoutError, OSError))


async def connect_postgres(
    url: str,
    *,
    password: str | None = None,
    pool_size: int = 4,
    backoff_initial: float = 0.5,
    backoff_max: float = 30.0,
    timeout: float = 0.0,  # noqa: ASYNC109 - bounds the retrying, not one await
    on_wait: OnWait | None = None,
) -> asyncpg.Pool:
    """An asyncpg pool (at most ``pool_size`` connections, sessions in UTC) once the server
    accepts a connection; ``timeout`` 0 waits forever."""

    async def attempt(attempt_timeout: float) -> asyncpg.Pool:
        return await asyncpg.create_pool(
            url,
            password=password,
            min_size=1,
            max_size=pool_size,
            timeout=attempt_timeout,
            server_settings={"application_name": "tradingd", "TimeZone": "UTC"},
        )

    try:
        pool: asyncpg.Pool = await _with_retry(
            "PostgreSQL",
            url,
            password,
            attempt,
            _postgres_retryable,
            backoff_initial=backoff_initial,
            backoff_max=backoff_max,
            timeout=timeout,
            on_wait=on_wait,
        )
    except (asyncpg.PostgresError, asyncpg.InterfaceError, PermissionError) as exc:
        raise StorageRejected(
            f"PostgreSQL at {redact_url(url)} refused the connection: "
            + _describe(exc, _hidden(url, password))
        ) from None
    except ValueError as exc:
        raise StorageRejected(f"invalid PostgreSQL URL {redact_url(url)}: {exc}") from None
    return pool


async def connect_redis(
    url: str,
    *,
    password: str | None = None,
    backoff_initial: float = 0.5,
    backoff_max: float = 30.0,
    timeout: float = 0.0,  # noqa: ASYNC109 - bounds the retrying, not one await
    on_wait: OnWait | None = None,
) -> aioredis.Redis:
    """A Redis client (redis-py defaults) once the server answers PING."""

    async def attempt(attempt_timeout: float) -> None:
        probe = aioredis.Redis.from_url(
            url,
            password=password,
            socket_connect_timeout=attempt_timeout,
            socket_timeout=attempt_timeout,
            retry=Retry(NoBackoff(), 0),
        )
        try:
            await probe.ping()
        finally:
            await probe.aclose()

    try:
        await _with_retry(
            "Redis",
            url,
            password,
            attempt,
            _redis_retryable,
            backoff_initial=backoff_initial,
            backoff_max=backoff_max,
            timeout=timeout,
            on_wait=on_wait,
        )
    except redis_errors.RedisError as exc:
        raise StorageRejected(
            f"Redis at {redact_url(url)} refused the connection: "
            + _describe(exc, _hidden(url, password))
        ) from None
    except ValueError as exc:
        raise StorageRejected(f"invalid Redis URL {redact_url(url)}: {exc}") from None
    client: aioredis.Redis = aioredis.Redis.from_url(url, password=password)
    return client


async def _with_retry(
    service: str,
    url: str,
    password: str | None,
    attempt: Callable[[float], Any],
    retryable: Callable[[BaseException], bool],
    *,
    backoff_initial: float,
    backoff_max: float,
    timeout: float,  # noqa: ASYNC109 - bounds the retrying, not one await
    on_wait: OnWait | None,
) -> Any:
    target = redact_url(url)
    hidden = _hidden(url, password)
    log = logger.bind(SERVICE=service.lower())
    started = time.monotonic()
    deadline = started + timeout if timeout > 0 else None

    def report(state: RetryCallState) -> None:
        error = state.outcome.exception() if state.outcome else None
        delay = state.next_action.sleep if state.next_action else 0.0
        message = (
            f"waiting for {service} at {target}: {_describe(error, hidden)} "
            f"(attempt {state.attempt_number}, next try in {delay:.1f} s)"
        )
        log.warning("{}", message)
        if on_wait is not None:
            on_wait(message)

    retrying = AsyncRetrying(
        retry=retry_if_exception(retryable),
        wait=wait_exponential(multiplier=backoff_initial, max=backoff_max),
        stop=stop_before_delay(timeout) if timeout > 0 else stop_never,
        before_sleep=report,
    )
    try:
        async for attempt_state in retrying:
            with attempt_state:
                remaining = ATTEMPT_TIMEOUT
                if deadline is not None:
                    remaining = max(ATTEMPT_FLOOR, min(remaining, deadline - time.monotonic()))
                return await attempt(remaining)
    except RetryError as gave_up:
        last = gave_up.last_attempt.exception()
        attempts = gave_up.last_attempt.attempt_number
        raise StorageUnavailable(
            # The time really waited: tenacity stops before a wait that would pass the limit.
            f"{service} at {target} is unavailable: gave up after "
            f"{time.monotonic() - started:.1f} s "
            f"({attempts} attempts); last error: {_describe(last, hidden)}"
        ) from None
    raise AssertionError("unreachable: tenacity either returns, raises or gives up")


def _hidden(url: str, password: str | None) -> tuple[str, ...]:
    """The secret strings that must not appear in a message about this connection."""
    try:
        in_url = urlsplit(url).password
    except ValueError:
        in_url = None
    return tuple(secret for secret in (password, in_url) if secret)


WITHHELD = "(error text withheld: it contained a secret)"


def _describe(error: BaseException | None, hidden: tuple[str, ...]) -> str:
    if error is None:
        return "unknown error"
    text = " ".join(str(error).split())
    if not text:
        text = "timed out" if isinstance(error, TimeoutError) else type(error).__name__
    return scrub(text, hidden)


def scrub(text: str, hidden: tuple[str, ...]) -> str:
    """``text`` with every secret replaced by ``***``; withheld entirely when replacing
    leaves one behind (overlapping occurrences)."""
    for secret in hidden:
        text = text.replace(secret, "***")
    if any(secret in text for secret in hidden):
        return WITHHELD
    return text
