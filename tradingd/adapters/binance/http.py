"""Binance spot REST market-data calls, with the venue's request-weight rules kept.

Rate limits, and which way this client goes: it never sleeps to wait for weight. It tracks
``X-MBX-USED-WEIGHT-1M`` from every response and, once the next call would take the minute's
used weight above ``slow_down_at`` of the limit, raises ``RateLimited`` (retry after the start of
the next minute) without sending anything. A 429 or 418 answer records the ``Retry-After``
deadline and raises ``RateLimited``; every call before that deadline raises ``RateLimited`` at
once, because carrying on past a 429 is what gets an IP banned (418). The caller (backfill,
gap repair) owns the waiting, so a rate-limited call never holds anything else up.

5xx answers, 403 (the WAF), timeouts and connection failures raise ``VenueUnavailable``; a
body that is not what the protocol says raises ``ParseError``; any other 4xx is a request the
venue will never accept (unknown symbol, bad parameter) and raises ``RequestRejected``.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping
from typing import Final

import aiohttp
from loguru import logger

from tradingd.adapters.base import RateLimited, VenueUnavailable
from tradingd.adapters.binance.parsing import (
    ExchangeInfo,
    TimeUnit,
    binance_interval,
    parse_exchange_info,
    parse_klines,
    parse_rest_error,
    parse_rest_trades,
    parse_server_time_us,
)
from tradingd.model import Bar, Trade

# Endpoint weights (rest-api.md).
WEIGHT_EXCHANGE_INFO: Final = 20
WEIGHT_TIME: Final = 1
WEIGHT_KLINES: Final = 2
WEIGHT_HISTORICAL_TRADES: Final = 25
MAX_LIMIT: Final = 1000
DEFAULT_WEIGHT_PER_MINUTE: Final = 6000
# Retry-After is documented on every 429/418; this is only for an answer that lacks it.
FALLBACK_RETRY_AFTER: Final = 60.0
USED_WEIGHT_HEADER: Final = "X-MBX-USED-WEIGHT-1M"
TIME_UNIT_HEADER: Final = "X-MBX-TIME-UNIT"


class RequestRejected(ValueError):
    """The venue refused the request itself (4xx other than 403/418/429): do not retry it."""

    def __init__(self, message: str, status: int, code: int | None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code


class BinanceRestClient:
    def __init__(
        self,
        http: aiohttp.ClientSession,
        rest_url: str,
        *,
        exchange: str,
        request_timeout: float,
        weight_per_minute: int = DEFAULT_WEIGHT_PER_MINUTE,
        slow_down_at: float = 0.8,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self._http = http
        self._base = rest_url.rstrip("/")
        self.exchange = exchange
        self._timeout = aiohttp.ClientTimeout(total=request_timeout)
        self.weight_per_minute = weight_per_minute
        self._slow_down_at = slow_down_at
        self._wall_clock = wall_clock
        self.time_unit: TimeUnit = "MICROSECOND"
        self._headers = {TIME_UNIT_HEADER: self.time_unit}
        # Weight used in the venue's current minute, as of the last response, and that minute.
        self.used_weight = 0
        self._weight_minute = -1
        self._blocked_until = 0.0
        self._log = logger.bind(EXCHANGE=exchange)

    async def exchange_info(self) -> ExchangeInfo:
        body = await self._get("/api/v3/exchangeInfo", {}, WEIGHT_EXCHANGE_INFO)
        info = parse_exchange_info(body, self.exchange)
        if info.request_weight_per_minute:
            self.weight_per_minute = info.request_weight_per_minute
        return info

    async def server_time_us(self) -> int:
        return parse_server_time_us(await self._get("/api/v3/time", {}, WEIGHT_TIME))

    async def klines(
        self, symbol: str, resolution: str, start_us: int, end_us: int, limit: int = MAX_LIMIT
    ) -> list[Bar]:
        """One page of bars with open time in [start_us, end_us], oldest first (open bar too)."""
        params = {
            "symbol": symbol,
            "interval": binance_interval(resolution),
            # Timestamps are sent in milliseconds: bars open on whole seconds anyway.
            "startTime": str(start_us // 1000),
            "endTime": str(end_us // 1000),
            "limit": str(min(max(limit, 1), MAX_LIMIT)),
        }
        body = await self._get("/api/v3/klines", params, WEIGHT_KLINES)
        bars = parse_klines(
            body,
            exchange=self.exchange,
            instrument_name=symbol,
            resolution=resolution,
            now_us=self._now_us(),
            time_unit=self.time_unit,
        )
        return [bar for bar in bars if start_us <= bar.tick_us <= end_us]

    async def historical_trades(self, symbol: str, from_id: int, limit: int) -> list[Trade]:
        """Trades with id >= from_id, oldest first, at most ``limit`` (no API key needed)."""
        params = {
            "symbol": symbol,
            "fromId": str(from_id),
            "limit": str(min(max(limit, 1), MAX_LIMIT)),
        }
        body = await self._get("/api/v3/historicalTrades", params, WEIGHT_HISTORICAL_TRADES)
        return parse_rest_trades(
            body,
            exchange=self.exchange,
            instrument_name=symbol,
            received_us=self._now_us(),
            time_unit=self.time_unit,
        )

    def _now_us(self) -> int:
        return int(self._wall_clock() * 1_000_000)

    def _check_budget(self, path: str, weight: int) -> None:
        now = self._wall_clock()
        if now < self._blocked_until:
            raise RateLimited(
                f"GET {path}: the venue asked us to wait (Retry-After)", self._blocked_until - now
            )
        minute = int(now // 60)
        if minute != self._weight_minute:
            return
        if self.used_weight + weight > self.weight_per_minute * self._slow_down_at:
            retry_after = (minute + 1) * 60 - now
            raise RateLimited(
                f"GET {path}: request weight {self.used_weight}/{self.weight_per_minute} used "
                f"this minute; slowing down before the venue's limit",
                retry_after,
            )

    async def _get(self, path: str, params: Mapping[str, str], weight: int) -> bytes:
        self._check_budget(path, weight)
        url = self._base + path
        try:
            async with self._http.get(
                url, params=params, headers=self._headers, timeout=self._timeout
            ) as response:
                body = await response.read()
                status = response.status
                self._note_weight(response.headers.get(USED_WEIGHT_HEADER))
                retry_after_header = response.headers.get("Retry-After")
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise VenueUnavailable(f"GET {path}: {type(exc).__name__}: {exc}") from exc
        if status == 200:
            return body
        error = parse_rest_error(body)
        described = f"GET {path}: HTTP {status}" + (
            f" code {error[0]}: {error[1]}" if error else ""
        )
        if status in (429, 418):
            retry_after = _retry_after_seconds(retry_after_header)
            self._blocked_until = max(self._blocked_until, self._wall_clock() + retry_after)
            self._log.warning("{} (retry after {:.0f} s)", described, retry_after)
            raise RateLimited(described, retry_after)
        if status >= 500 or status == 403:
            raise VenueUnavailable(described)
        raise RequestRejected(described, status, error[0] if error else None)

    def _note_weight(self, header: str | None) -> None:
        if header is None:
            return
        try:
            used = int(header)
        except ValueError:
            return
        self.used_weight = used
        self._weight_minute = int(self._wall_clock() // 60)


def _retry_after_seconds(header: str | None) -> float:
    if header is None:
        return FALLBACK_RETRY_AFTER
    try:
        seconds = float(header)
    except ValueError:
        return FALLBACK_RETRY_AFTER
    return seconds if math.isfinite(seconds) and seconds >= 0 else FALLBACK_RETRY_AFTER
