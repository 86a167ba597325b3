"""Binance spot request and order rate limits, sans-I/O: ``exchangeInfo``'s ``rateLimits``
parsed, and the two budgets a client keeps against them (the caller passes every clock
reading).

* ORDERS (account-wide, per ``10S``, ``1D``, ... as the ``X-MBX-ORDER-COUNT-*`` headers name
  them): an order is held unsent when the orders this client sent within the last interval
  (a sliding window: at least the venue's count in any window it uses) or the venue's own
  latest count (other sessions on the account included) would pass a limit with one more.
* REQUEST_WEIGHT (per IP, per ``1M``, the ``X-MBX-USED-WEIGHT-*`` headers): a request is held
  unsent when its weight would take the minute's used weight past the limit; the venue's
  minute windows are fixed (``venue time // 60 s``).

Held means refused here, before sending: the venue never sees a request that it would refuse
with 429 (-1003 or -1015), whose repetition earns a 418 ban.
"""

from __future__ import annotations

import collections
from typing import Final, Literal

import msgspec

from tradingd.adapters.base import ParseError

LimitType = Literal["REQUEST_WEIGHT", "ORDERS", "RAW_REQUESTS"]
IntervalName = Literal["SECOND", "MINUTE", "HOUR", "DAY"]

_LETTER: Final[dict[str, str]] = {"SECOND": "S", "MINUTE": "M", "HOUR": "H", "DAY": "D"}
_SECONDS: Final[dict[str, int]] = {"S": 1, "M": 60, "H": 3600, "D": 86_400}

# When exchangeInfo cannot be read: the WebSocket API documentation's example order limits
# (50 per 10 s, 160,000 per day) and the REQUEST_WEIGHT limit since 2023-08-25 (6000 per minute).
DEFAULT_ORDER_LIMITS: Final[dict[str, int]] = {"10S": 50, "1D": 160_000}
DEFAULT_WEIGHT_LIMITS: Final[dict[str, int]] = {"1M": 6000}


class _WireLimit(msgspec.Struct, frozen=True):
    rateLimitType: str
    interval: str
    intervalNum: int
    limit: int


class _WireInfo(msgspec.Struct, frozen=True):
    rateLimits: list[_WireLimit]


class _WireCount(msgspec.Struct, frozen=True):
    rateLimitType: str
    interval: str
    intervalNum: int
    count: int


class RateLimits(msgspec.Struct, frozen=True, kw_only=True):
    """Limits by header interval (``{"10S": 50, "1D": 160000}``)."""

    orders: dict[str, int]
    weight: dict[str, int]


DEFAULT_RATE_LIMITS: Final = RateLimits(
    orders=dict(DEFAULT_ORDER_LIMITS), weight=dict(DEFAULT_WEIGHT_LIMITS)
)


def interval_key(interval: str, number: int) -> str | None:
    """``("SECOND", 10)`` -> ``"10S"`` (the headers' spelling); None for what is not one."""
    letter = _LETTER.get(interval)
    return None if letter is None or number < 1 else f"{number}{letter}"


def interval_seconds(key: str) -> int | None:
    """``10S`` -> 10, ``1D`` -> 86400; None for what is not an interval."""
    number, unit = key[:-1], key[-1:].upper()
    if not number.isdigit() or int(number) < 1 or unit not in _SECONDS:
        return None
    return int(number) * _SECONDS[unit]


def parse_rate_limits(body: bytes) -> RateLimits:
    """``GET /api/v3/exchangeInfo``'s ``rateLimits`` -> the ORDERS and REQUEST_WEIGHT limits.
    Raises ``ParseError`` for an answer without them, or with neither kind."""
    try:
        info = msgspec.json.decode(body, type=_WireInfo)
    except msgspec.DecodeError as exc:
        raise ParseError(f"exchangeInfo rateLimits: {exc}") from exc
    orders: dict[str, int] = {}
    weight: dict[str, int] = {}
    for limit in info.rateLimits:
        key = interval_key(limit.interval, limit.intervalNum)
        if key is None or limit.limit < 1:
            raise ParseError(f"exchangeInfo rateLimits: not a limit: {limit}")
        if limit.rateLimitType == "ORDERS":
            orders[key] = min(limit.limit, orders.get(key, limit.limit))
        elif limit.rateLimitType == "REQUEST_WEIGHT":
            weight[key] = min(limit.limit, weight.get(key, limit.limit))
    if not orders or not weight:
        raise ParseError("exchangeInfo rateLimits: no ORDERS or no REQUEST_WEIGHT limit")
    return RateLimits(orders=orders, weight=weight)


def parse_order_counts(body: bytes) -> dict[str, int]:
    """``GET /api/v3/rateLimit/order`` (the account's unfilled order counts now) -> counts by
    header interval (``{"10S": 3, "1D": 120}``)."""
    try:
        rows = msgspec.json.decode(body, type=list[_WireCount])
    except msgspec.DecodeError as exc:
        raise ParseError(f"rateLimit/order: {exc}") from exc
    counts: dict[str, int] = {}
    for row in rows:
        key = interval_key(row.interval, row.intervalNum)
        if row.rateLimitType == "ORDERS" and key is not None:
            counts[key] = row.count
    return counts


class OrderBudget:
    """The ORDERS limits: whether one more order may be sent now (``now`` on one monotonic
    clock, seconds)."""

    def __init__(self, limits: dict[str, int]) -> None:
        self.limits: dict[str, int] = {}
        self._seconds: dict[str, int] = {}
        self._sent: collections.deque[float] = collections.deque()
        self._longest = 0
        self.set_limits(limits)
        # The venue's latest count per interval and when it was heard.
        self._venue: dict[str, tuple[int, float]] = {}

    def set_limits(self, limits: dict[str, int]) -> None:
        known = {k: v for k, v in limits.items() if interval_seconds(k) is not None}
        self.limits = known
        self._seconds = {k: interval_seconds(k) or 0 for k in known}
        self._longest = max(self._seconds.values(), default=0)

    def hold(self, now: float) -> float | None:
        """Seconds until one more order stays within every limit (None: it does now)."""
        self._forget(now)
        waits: list[float] = []
        for key, limit in self.limits.items():
            seconds = self._seconds[key]
            since = now - seconds
            ours = [t for t in self._sent if t > since]
            if len(ours) + 1 > limit:
                # The window slides past the oldest order that must leave it.
                waits.append(ours[len(ours) - limit] + seconds - now)
            heard = self._venue.get(key)
            if heard is not None and heard[1] > since:
                # The venue's count (other sessions, an earlier process) and ours since.
                count = heard[0] + sum(1 for t in ours if t > heard[1])
                if count + 1 > limit:
                    # When the venue's window started is not said: a whole interval from
                    # hearing.
                    waits.append(heard[1] + seconds - now)
        positive = [w for w in waits if w > 0]
        return max(positive) if positive else None

    def sent(self, now: float) -> None:
        """One order request went out at ``now``."""
        self._sent.append(now)

    def heard(self, counts: dict[str, int], now: float) -> None:
        """The venue's ``X-MBX-ORDER-COUNT-*`` values (``{"10S": 3}``) heard at ``now``."""
        for key, count in counts.items():
            self._venue[key] = (count, now)

    def _forget(self, now: float) -> None:
        while self._sent and self._sent[0] <= now - self._longest:
            self._sent.popleft()


class WeightBudget:
    """The REQUEST_WEIGHT limits, in the venue's fixed windows (``venue_ms``: the venue's
    clock as the client estimates it)."""

    def __init__(self, limits: dict[str, int]) -> None:
        self.limits: dict[str, int] = {}
        self._used: dict[str, tuple[int, int]] = {}  # key -> (window index, weight used)
        self.set_limits(limits)

    def set_limits(self, limits: dict[str, int]) -> None:
        self.limits = {k: v for k, v in limits.items() if interval_seconds(k) is not None}

    def used(self, key: str, venue_ms: int) -> int:
        window = venue_ms // (1000 * (interval_seconds(key) or 1))
        index, weight = self._used.get(key, (window, 0))
        return weight if index == window else 0

    def hold(self, weight: int, venue_ms: int) -> float | None:
        """Seconds until a request of ``weight`` fits every window (None: it does now). A
        request heavier than a whole window's limit is never held: the venue decides."""
        waits: list[float] = []
        for key, limit in self.limits.items():
            span_ms = 1000 * (interval_seconds(key) or 1)
            if weight <= limit and self.used(key, venue_ms) + weight > limit:
                waits.append((span_ms - venue_ms % span_ms) / 1000)
        return max(waits) if waits else None

    def spend(self, weight: int, venue_ms: int) -> None:
        """A request of ``weight`` went out (counted before the answer: requests in flight)."""
        for key in self.limits:
            window = venue_ms // (1000 * (interval_seconds(key) or 1))
            self._used[key] = (window, self.used(key, venue_ms) + weight)

    def heard(self, used: dict[str, int], venue_ms: int) -> None:
        """The venue's ``X-MBX-USED-WEIGHT-*`` values: never below what we counted ourselves
        (requests still in flight are not in the venue's figure yet)."""
        for key, weight in used.items():
            seconds = interval_seconds(key)
            if seconds is None:
                continue
            window = venue_ms // (1000 * seconds)
            self._used[key] = (window, max(weight, self.used(key, venue_ms)))
