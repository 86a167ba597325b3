"""Deribit JSON-RPC over HTTP: instruments, server time, chart history and trade history.

Requests are ``GET {rest_url}/public/<method>?<params>``. Deribit meters requests in credits
(leaky buckets): a local ``CreditBucket`` per pool keeps tradingd under the documented defaults
so that the venue's ``10028 too_many_requests`` (which also ends the session) stays rare; when
it happens anyway the request waits for the pool to refill and is retried, then gives up with
``RateLimited``.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping
from typing import Final

import aiohttp
import msgspec
from loguru import logger

from tradingd.adapters.base import (
    ParseError,
    RangeUnavailable,
    RateLimited,
    VenueUnavailable,
)
from tradingd.adapters.deribit.parsing import (
    RESOLUTION_US,
    RpcFailure,
    parse_chart_data,
    parse_instruments,
    parse_server_time_us,
    parse_trades_page,
    resolution_code,
    rpc_result,
)
from tradingd.model import Bar, Instrument, Trade

# Documented default pools (credits): cost per request, pool size, refill per second.
DEFAULT_COST: Final = 500
DEFAULT_POOL: Final = 50_000
INSTRUMENTS_COST: Final = 10_000
INSTRUMENTS_POOL: Final = 500_000
SUBSCRIBE_COST: Final = 3_000
SUBSCRIBE_POOL: Final = 30_000
REFILL_PER_SECOND: Final = 10_000
# Stay this far under the venue's numbers: the per-IP pools are shared with anything else on
# the box, and the venue's clock for refills is not ours.
SAFETY: Final = 0.8

TOO_MANY_REQUESTS: Final = 10028
# Codes meaning "the venue cannot serve this now, try later".
TRANSIENT_CODES: Final = frozenset({10040, 10041, 10047, 10066, 11051, 11056, 13028})
MAX_TRADES_PER_PAGE: Final = 1000
KINDS: Final = ("future", "option", "spot")


class CreditBucket:
    """A local leaky bucket mirroring one of the venue's credit pools."""

    def __init__(
        self,
        *,
        capacity: float,
        refill_per_s: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if capacity <= 0 or refill_per_s <= 0:
            raise ValueError("a credit bucket needs a positive capacity and refill rate")
        self.capacity = capacity
        self.refill_per_s = refill_per_s
        self._clock = clock
        self._credits = capacity
        self._updated = clock()
        self._lock = asyncio.Lock()

    @classmethod
    def for_pool(cls, pool: float, refill_per_s: float = REFILL_PER_SECOND) -> CreditBucket:
        return cls(capacity=pool * SAFETY, refill_per_s=refill_per_s * SAFETY)

    def _refill(self) -> None:
        now = self._clock()
        self._credits = min(
            self.capacity, self._credits + (now - self._updated) * self.refill_per_s
        )
        self._updated = now

    def wait_time(self, cost: float) -> float:
        """Seconds until ``cost`` credits are available (0 when they are now)."""
        self._refill()
        return max(0.0, (min(cost, self.capacity) - self._credits) / self.refill_per_s)

    async def acquire(self, cost: float) -> None:
        """Take ``cost`` credits, waiting for the refill if the bucket is short (FIFO)."""
        async with self._lock:
            delay = self.wait_time(cost)
            if delay > 0:
                await asyncio.sleep(delay)
                self._refill()
            self._credits -= min(cost, self.capacity)

    def drain(self) -> None:
        """The venue said we are out of credits: believe it."""
        self._refill()
        self._credits = min(self._credits, 0.0)


class RpcRejected(ValueError):
    """The venue refused a request as invalid (not a transient condition); carries the code."""

    def __init__(self, method: str, code: int, message: str) -> None:
        super().__init__(f"{method}: {code} {message}")
        self.method = method
        self.code = code
        self.message = message


class TradesNotServed(RangeUnavailable):
    """The trade history no longer reaches back to ``first_seq``."""

    def __init__(self, instrument_name: str, first_seq: int, first_available_seq: int | None):
        where = (
            f"the oldest served trade is {first_available_seq}"
            if first_available_seq is not None
            else "no trade in that range is served"
        )
        super().__init__(f"{instrument_name}: trades from seq {first_seq} unavailable ({where})")
        self.instrument_name = instrument_name
        self.first_seq = first_seq
        self.first_available_seq = first_available_seq


Params = Mapping[str, str | int | bool]


def _query_value(value: str | int | bool) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


class DeribitHttp:
    """Deribit's public JSON-RPC methods over HTTP, within the credit limits."""

    def __init__(
        self,
        session: aiohttp.ClientSession,
        *,
        rest_url: str,
        exchange: str,
        request_timeout: float,
        rate_limit_retries: int = 2,
        wall_clock_us: Callable[[], int] = lambda: time.time_ns() // 1000,
    ) -> None:
        self._session = session
        self._base = rest_url.rstrip("/")
        self._exchange = exchange
        self._timeout = aiohttp.ClientTimeout(total=request_timeout)
        self._retries = rate_limit_retries
        self._now_us = wall_clock_us
        self._log = logger.bind(EXCHANGE=exchange)
        self.default_bucket = CreditBucket.for_pool(DEFAULT_POOL)
        self.instruments_bucket = CreditBucket.for_pool(INSTRUMENTS_POOL)

    async def call(
        self,
        method: str,
        params: Params,
        *,
        bucket: CreditBucket | None = None,
        cost: int = DEFAULT_COST,
    ) -> msgspec.Raw:
        """One public method's ``result``; waits and retries on rate limits a few times."""
        bucket = bucket or self.default_bucket
        attempt = 0
        while True:
            await bucket.acquire(cost)
            try:
                return await self._request(method, params)
            except RateLimited as exc:
                bucket.drain()
                if attempt >= self._retries:
                    raise
                attempt += 1
                delay = max(exc.retry_after, bucket.wait_time(cost))
                self._log.warning(
                    "{} rate limited by the venue; retrying in {:.2f}s", method, delay
                )
                await asyncio.sleep(delay)

    async def _request(self, method: str, params: Params) -> msgspec.Raw:
        url = f"{self._base}/{method}"
        query = {key: _query_value(value) for key, value in params.items()}
        try:
            async with self._session.get(url, params=query, timeout=self._timeout) as response:
                body = await response.read()
                status = response.status
                retry_after_header = response.headers.get("Retry-After", "")
        except TimeoutError:
            raise VenueUnavailable(f"{method}: no answer within {self._timeout.total}s") from None
        except (aiohttp.ClientError, OSError) as exc:
            raise VenueUnavailable(f"{method}: {type(exc).__name__}: {exc}") from None
        if status >= 500:
            raise VenueUnavailable(f"{method}: HTTP {status}")
        try:
            return rpc_result(body)
        except RpcFailure as failure:
            code, message = failure.error.code, failure.error.message
            if code == TOO_MANY_REQUESTS or status == 429:
                raise RateLimited(
                    f"{method}: {code} {message}", _retry_after(retry_after_header, 0.0)
                ) from None
            if code in TRANSIENT_CODES:
                raise VenueUnavailable(f"{method}: {code} {message}") from None
            raise RpcRejected(method, code, message) from None
        except ParseError:
            if status == 429:
                raise RateLimited(
                    f"{method}: HTTP 429", _retry_after(retry_after_header, 1.0)
                ) from None
            if status != 200:
                raise VenueUnavailable(f"{method}: HTTP {status}") from None
            raise

    async def fetch_instruments(self, currencies: list[str]) -> list[Instrument]:
        """Every instrument of these currencies (kinds future incl. perpetuals, option, spot)."""
        by_name: dict[str, Instrument] = {}
        for currency in currencies or ["any"]:
            for kind in KINDS:
                result = await self.call(
                    "public/get_instruments",
                    {"currency": currency, "kind": kind, "expired": False},
                    bucket=self.instruments_bucket,
                    cost=INSTRUMENTS_COST,
                )
                for instrument in parse_instruments(result, exchange=self._exchange):
                    by_name.setdefault(instrument.instrument_name, instrument)
        return list(by_name.values())

    async def fetch_server_time_us(self) -> int:
        return parse_server_time_us(await self.call("public/get_time", {}))

    async def fetch_bars(
        self, instrument_name: str, resolution: str, start_us: int, end_us: int
    ) -> list[Bar]:
        """Closed bars with open time in [start_us, end_us], oldest first."""
        code = resolution_code(resolution)
        period_us = RESOLUTION_US[resolution]
        result = await self.call(
            "public/get_tradingview_chart_data",
            {
                "instrument_name": instrument_name,
                "start_timestamp": start_us // 1000,
                # The venue selects by the bar's open time too; ask for the whole last period.
                "end_timestamp": (end_us + period_us - 1) // 1000,
                "resolution": code,
            },
        )
        now_us = self._now_us()
        bars = parse_chart_data(
            result,
            exchange=self._exchange,
            instrument_name=instrument_name,
            resolution=resolution,
            now_us=now_us,
            received_us=now_us,
        )
        return [bar for bar in bars if bar.closed and start_us <= bar.tick_us <= end_us]

    async def fetch_trades(
        self, instrument_name: str, first_seq: int, last_seq: int
    ) -> list[Trade]:
        """Trades with trade_seq in [first_seq, last_seq], oldest first, at most one page."""
        if last_seq < first_seq:
            return []
        count = min(last_seq - first_seq + 1, MAX_TRADES_PER_PAGE)
        result = await self.call(
            "public/get_last_trades_by_instrument",
            {
                "instrument_name": instrument_name,
                "start_seq": first_seq,
                "end_seq": last_seq,
                "count": count,
                "sorting": "asc",
            },
        )
        trades, _has_more = parse_trades_page(
            result, exchange=self._exchange, received_us=self._now_us()
        )
        trades = [t for t in trades if first_seq <= t.trade_seq <= last_seq]
        trades.sort(key=lambda trade: trade.trade_seq)
        if not trades:
            raise TradesNotServed(instrument_name, first_seq, None)
        if trades[0].trade_seq > first_seq:
            raise TradesNotServed(instrument_name, first_seq, trades[0].trade_seq)
        return trades


def _retry_after(header: str, default: float) -> float:
    try:
        return max(0.0, float(header))
    except ValueError:
        return default
