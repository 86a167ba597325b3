"""The clock check: the local clock against each exchange's server time.

Skew is measured against the midpoint of the request's round trip. Above
``daemon.max_clock_skew`` tradingd refuses to start (exit 69) and, while running, locks trading;
above ``daemon.clock_warn_skew`` it warns. An unchecked clock is never trusted: until at least
one exchange has answered, trading stays locked.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Mapping

import msgspec
from loguru import logger

from tradingd.adapters.base import ExchangeAdapter
from tradingd.config import DaemonConfig
from tradingd.supervisor import ActorContext

# Locks trading on every exchange, with the reason (the state machine's job, not the clock's).
LockAll = Callable[[str], Awaitable[None]]
# Until the clock is verified it is checked this often, whatever clock_check_interval says.
UNVERIFIED_RECHECK = 30.0

FIX_HINT = (
    "synchronise the system clock: `timedatectl set-ntp true` (systemd-timesyncd) or "
    "chrony (`chronyc tracking`, `chronyc makestep`)"
)


class ClockReading(msgspec.Struct, frozen=True):
    exchange: str
    # local clock minus server clock, in seconds (positive: we are ahead)
    skew: float
    round_trip: float
    at_us: int


class SkewTooLarge(Exception):
    def __init__(self, reading: ClockReading, limit: float) -> None:
        super().__init__(
            f"local clock is {reading.skew:+.3f} s off {reading.exchange}'s server time "
            f"(limit {limit:g} s, round trip {reading.round_trip * 1000:.0f} ms); {FIX_HINT}"
        )
        self.reading = reading
        self.limit = limit


async def measure_skew(
    exchange: str, adapter: ExchangeAdapter, clock_ns: Callable[[], int] = time.time_ns
) -> ClockReading:
    before = clock_ns()
    server_us = await adapter.fetch_server_time_us()
    after = clock_ns()
    local_mid_us = (before + after) // 2000
    return ClockReading(
        exchange=exchange,
        skew=(local_mid_us - server_us) / 1e6,
        round_trip=(after - before) / 1e9,
        at_us=after // 1000,
    )


class ClockCheck:
    def __init__(
        self,
        config: DaemonConfig,
        adapters: Mapping[str, ExchangeAdapter],
        clock_ns: Callable[[], int] = time.time_ns,
        unverified_recheck: float = UNVERIFIED_RECHECK,
    ) -> None:
        self._config = config
        self._adapters = adapters
        self._clock_ns = clock_ns
        self._unverified_recheck = unverified_recheck
        self.readings: dict[str, ClockReading] = {}
        # Set once a measurement within the limit has been made: before that, no trading.
        self.verified = asyncio.Event()
        self.unverified_reason = "clock not checked yet"

    async def measure_all(self) -> tuple[list[ClockReading], dict[str, str]]:
        names = list(self._adapters)
        results = await asyncio.gather(
            *(measure_skew(n, self._adapters[n], self._clock_ns) for n in names),
            return_exceptions=True,
        )
        readings: list[ClockReading] = []
        failures: dict[str, str] = {}
        for name, result in zip(names, results, strict=True):
            if isinstance(result, ClockReading):
                readings.append(result)
                self.readings[name] = result
            else:
                failures[name] = f"{type(result).__name__}: {result}"
        return readings, failures

    def _judge(self, readings: list[ClockReading]) -> ClockReading | None:
        """Log each reading; return the first one past the limit, if any."""
        worst: ClockReading | None = None
        for reading in readings:
            log = logger.bind(EXCHANGE=reading.exchange)
            if abs(reading.skew) > self._config.max_clock_skew:
                worst = worst or reading
            elif abs(reading.skew) > self._config.clock_warn_skew:
                log.warning(
                    "clock skew {:+.3f} s against {} (warning above {:g} s); {}",
                    reading.skew,
                    reading.exchange,
                    self._config.clock_warn_skew,
                    FIX_HINT,
                )
            else:
                log.info("clock skew {:+.3f} s against {}", reading.skew, reading.exchange)
        return worst

    async def check_at_start(self) -> None:
        """Raise ``SkewTooLarge`` past the limit; otherwise note whether the clock is verified."""
        if not self._adapters:
            self.unverified_reason = "no exchange enabled"
            return
        readings, failures = await self.measure_all()
        for name, why in failures.items():
            logger.bind(EXCHANGE=name).warning("clock check: {} did not answer ({})", name, why)
        too_far = self._judge(readings)
        if too_far is not None:
            raise SkewTooLarge(too_far, self._config.max_clock_skew)
        if readings:
            self.verified.set()
        else:
            self.unverified_reason = (
                "no exchange answered the clock check; trading stays locked until one does"
            )
            logger.warning("{}", self.unverified_reason)

    async def run_periodic(self, lock_all: LockAll, checkin: Callable[[], None]) -> None:
        """Re-check while running: often until verified, then every clock_check_interval."""
        while True:
            checkin()
            if self.verified.is_set():
                interval = self._config.clock_check_interval
            else:
                interval = self._unverified_recheck
            await asyncio.sleep(interval)
            readings, _failures = await self.measure_all()
            too_far = self._judge(readings)
            if too_far is not None:
                error = SkewTooLarge(too_far, self._config.max_clock_skew)
                logger.critical("CRITICAL TIME SKEW DETECTED: {}; locking trading", error)
                self.verified.clear()
                self.unverified_reason = f"clock skew: {error}"
                await lock_all(f"CRITICAL TIME SKEW DETECTED: {error}")
            elif readings and not self.verified.is_set():
                logger.info("clock verified against {}", ", ".join(r.exchange for r in readings))
                self.verified.set()

    def snapshot(self) -> dict[str, float]:
        return {name: round(r.skew, 6) for name, r in self.readings.items()}


class ClockWatch:
    """The periodic clock check as a supervised actor: a storage error while locking restarts
    it, it does not end the daemon."""

    name = "clock"

    def __init__(self, check: ClockCheck, lock_all: LockAll) -> None:
        self._check = check
        self._lock_all = lock_all

    async def run(self, ctx: ActorContext) -> None:
        ctx.ready()
        await self._check.run_periodic(self._lock_all, ctx.checkin)
