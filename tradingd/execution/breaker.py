"""The circuit breaker of one exchange: pure trip rules, and a small persisted record.

Rules (``evaluate``, a pure function of the figures the executor passes in), first match wins:

* ``banned``: the venue refused us as a client (IP or account ban);
* ``daily_loss``: the day's (UTC) loss, realised + unrealised net of fees, in one PnL currency
  past ``risk.daily_loss_limit``;
* ``drawdown``: the fall from the day's peak equity past ``risk.max_drawdown``;
* ``stale_data``: market data of an instrument with open orders older than ``risk.max_data_age``;
* ``venue_failures``: more than ``risk.max_venue_failures`` rejects or UNKNOWN outcomes within
  ``risk.venue_failure_window`` seconds.

A trip is recorded (``breaker_trips``) and then locks the exchange (``Executor.lock``) with the
reason and the figures. The breaker stays tripped while its last trip is newer than the
exchange's last unlock (HEALTHY recorded from LOCKED or AUDITING): a restart does not reset it,
only ``tradingd unlock`` does, and the day's baseline then starts again from the equity of that
moment (else the same loss would trip it again at once).
"""

from __future__ import annotations

import datetime as dt
from collections import deque
from collections.abc import Mapping
from decimal import Decimal
from typing import Literal

import asyncpg
import msgspec
from loguru import logger

from tradingd.config import RiskConfig

# The day's peak is written at most this often (the check runs at every executor pass).
SAVE_EVERY_US = 5_000_000
Rule = Literal["daily_loss", "drawdown", "stale_data", "venue_failures", "banned"]
Equity = dict[str, Decimal]  # PnL currency -> realised + unrealised - fees


class Trip(msgspec.Struct, frozen=True, kw_only=True):
    rule: Rule
    reason: str  # "circuit breaker: ..." with the figures, for the lock and the alert
    figures: dict[str, str]


class Day(msgspec.Struct, frozen=True, kw_only=True):
    """The day's baseline: equity when it began (or at the last unlock) and its peak since."""

    day: str  # YYYY-MM-DD, UTC
    start: Equity
    peak: Equity


class Figures(msgspec.Struct, frozen=True, kw_only=True):
    equity: Equity
    # Instruments with open orders -> seconds since their last market data.
    data_age: dict[str, float] = {}
    failures: int = 0  # rejects and UNKNOWN outcomes within the window
    banned: str = ""  # why the venue refused us as a client ("" when it did not)


def day_of(now_us: int) -> str:
    return dt.datetime.fromtimestamp(now_us / 1e6, dt.UTC).date().isoformat()


def roll(day: Day | None, today: str, equity: Mapping[str, Decimal]) -> Day:
    """The baseline for ``today``: a new day starts at the current equity; within the day the
    peak follows the equity up (a currency first seen today started the day at 0)."""
    if day is None or day.day != today:
        return Day(day=today, start=dict(equity), peak=dict(equity))
    peak = dict(day.peak)
    for currency, value in equity.items():
        peak[currency] = max(peak.get(currency, day.start.get(currency, Decimal(0))), value)
    return Day(day=today, start=day.start, peak=peak)


def evaluate(limits: RiskConfig, figures: Figures, day: Day) -> Trip | None:
    """The first rule the figures break, or None."""
    if figures.banned:
        return Trip(
            rule="banned",
            reason=f"circuit breaker: the venue banned us ({figures.banned})",
            figures={"banned": figures.banned},
        )
    for currency, limit in sorted(limits.daily_loss_limit.items()):
        now = figures.equity.get(currency)
        if now is None:
            continue
        start = day.start.get(currency, Decimal(0))
        loss = start - now
        if loss > limit:
            return Trip(
                rule="daily_loss",
                reason=f"circuit breaker: day loss {loss} {currency} past risk.daily_loss_limit"
                f" {limit} {currency} (equity {start} at the day's start, {now} now)",
                figures={"currency": currency, "loss": str(loss), "limit": str(limit),
                         "start": str(start), "equity": str(now)},
            )  # fmt: skip
    for currency, limit in sorted(limits.max_drawdown.items()):
        now = figures.equity.get(currency)
        if now is None:
            continue
        peak = day.peak.get(currency, day.start.get(currency, Decimal(0)))
        fall = peak - now
        if fall > limit:
            return Trip(
                rule="drawdown",
                reason=f"circuit breaker: drawdown {fall} {currency} from the day's peak past"
                f" risk.max_drawdown {limit} {currency} (peak {peak}, {now} now)",
                figures={"currency": currency, "drawdown": str(fall), "limit": str(limit),
                         "peak": str(peak), "equity": str(now)},
            )  # fmt: skip
    stale = {i: age for i, age in figures.data_age.items() if age > limits.max_data_age}
    if stale:
        instrument, age = max(stale.items(), key=lambda item: item[1])
        return Trip(
            rule="stale_data",
            reason=f"circuit breaker: market data of {instrument} is {age:.1f} s old with orders"
            f" open, past risk.max_data_age {limits.max_data_age:g} s",
            figures={"instrument": instrument, "age_s": f"{age:.1f}",
                     "limit_s": f"{limits.max_data_age:g}", "stale": ",".join(sorted(stale))},
        )  # fmt: skip
    if figures.failures > limits.max_venue_failures:
        return Trip(
            rule="venue_failures",
            reason=f"circuit breaker: {figures.failures} venue rejects or UNKNOWN outcomes"
            f" within {limits.venue_failure_window:g} s, past risk.max_venue_failures"
            f" {limits.max_venue_failures}",
            figures={"failures": str(figures.failures),
                     "limit": str(limits.max_venue_failures),
                     "window_s": f"{limits.venue_failure_window:g}"},
        )  # fmt: skip
    return None


class FailureWindow:
    """Rejects and UNKNOWN outcomes within a sliding window."""

    def __init__(self, window_s: float) -> None:
        self._window_us = int(window_s * 1_000_000)
        self._at: deque[int] = deque()

    def record(self, now_us: int) -> None:
        self._at.append(now_us)

    def count(self, now_us: int) -> int:
        while self._at and self._at[0] < now_us - self._window_us:
            self._at.popleft()
        return len(self._at)

    def clear(self) -> None:
        self._at.clear()


# -- the persisted record ---------------------------------------------------------------------

_encode = msgspec.json.Encoder().encode


def _equity_json(equity: Mapping[str, Decimal]) -> str:
    return _encode({c: str(v) for c, v in equity.items()}).decode()


def _equity_of(raw: str) -> Equity:
    return {c: Decimal(v) for c, v in msgspec.json.decode(raw, type=dict[str, str]).items()}


class BreakerStatus(msgspec.Struct, frozen=True, kw_only=True):
    """What ``tradingd status`` shows of one exchange's breaker."""

    exchange: str
    tripped: bool
    rule: str = ""
    reason: str = ""
    at_us: int = 0

    def as_dict(self) -> dict[str, str]:
        """For ``tradingd status`` (its per-exchange view) and ``--json``."""
        if not self.tripped:
            return {"state": "ok"}
        at = dt.datetime.fromtimestamp(self.at_us / 1e6, dt.UTC).strftime("%Y-%m-%d %H:%M:%SZ")
        return {"state": "TRIPPED", "since": at, "rule": self.rule, "reason": self.reason,
                "reset": "tradingd unlock"}  # fmt: skip


async def breaker_status(pool: asyncpg.Pool, exchange: str) -> BreakerStatus:
    """Tripped while the last trip is newer than the last unlock."""
    row = await pool.fetchrow(
        "SELECT t.rule, t.reason, (extract(epoch FROM t.at) * 1e6)::bigint AS at_us"
        " FROM breaker_trips t WHERE t.exchange = $1 AND t.at > coalesce("
        "  (SELECT max(s.at) FROM state_transitions s WHERE s.exchange = $1"
        "   AND s.to_state = 'HEALTHY' AND s.from_state IN ('LOCKED', 'AUDITING')),"
        "  '-infinity')"
        " ORDER BY t.id DESC LIMIT 1",
        exchange,
    )
    if row is None:
        return BreakerStatus(exchange=exchange, tripped=False)
    return BreakerStatus(
        exchange=exchange,
        tripped=True,
        rule=row["rule"],
        reason=row["reason"],
        at_us=row["at_us"],
    )


class Breaker:
    """One exchange's breaker as the executor holds it: the rules, the failure window, the
    day's baseline, and their record in PostgreSQL."""

    def __init__(self, pool: asyncpg.Pool, exchange: str, limits: RiskConfig) -> None:
        self._pool = pool
        self.exchange = exchange
        self.limits = limits
        self._failures = FailureWindow(limits.venue_failure_window)
        self._banned = ""
        self._day: Day | None = None
        self._rebase = False
        self._saved_us = 0
        self.tripped: Trip | None = None
        self.trips = 0  # since start, for the metrics

    async def load(self, now_us: int) -> BreakerStatus:
        """The persisted state at start: the day's baseline, and whether it is tripped."""
        row = await self._pool.fetchrow(
            "SELECT day::text AS day, start_equity::text AS start, peak_equity::text AS peak"
            " FROM breaker_days WHERE exchange = $1 AND day = $2::date",
            self.exchange,
            dt.date.fromisoformat(day_of(now_us)),
        )
        if row is not None:
            self._day = Day(
                day=row["day"], start=_equity_of(row["start"]), peak=_equity_of(row["peak"])
            )
        status = await breaker_status(self._pool, self.exchange)
        if status.tripped:
            rule: Rule = status.rule  # type: ignore[assignment]
            self.tripped = Trip(rule=rule, reason=status.reason, figures={})
        return status

    def note_failure(self, now_us: int, *, banned: str = "") -> None:
        self._failures.record(now_us)
        if banned:
            self._banned = banned

    async def check(
        self, now_us: int, equity: Mapping[str, Decimal] | None, data_age: Mapping[str, float]
    ) -> Trip | None:
        """A new trip (recorded), or None; nothing while already tripped. ``equity`` None (a
        position without a mark yet): the loss rules wait for the marks."""
        if self.tripped is not None:
            return None
        day = self._day
        if equity is not None:
            if self._rebase:
                day = Day(day=day_of(now_us), start=dict(equity), peak=dict(equity))
                self._rebase = False
            else:
                day = roll(self._day, day_of(now_us), equity)
            if day != self._day:
                # A new day (or baseline) at once; a new peak at most every SAVE_EVERY_US.
                rebased = self._day is None or (day.day, day.start) != (
                    self._day.day,
                    self._day.start,
                )
                self._day = day
                if rebased or now_us - self._saved_us >= SAVE_EVERY_US:
                    try:
                        await self._save(day, now_us)
                    except (asyncpg.PostgresError, OSError) as exc:
                        # Checked in memory meanwhile; a restart would start the day afresh.
                        logger.bind(EXCHANGE=self.exchange).warning(
                            "breaker baseline not saved: {!r}", exc
                        )
        if day is None:
            day = Day(day=day_of(now_us), start={}, peak={})
        figures = Figures(
            equity=dict(equity or {}),
            data_age=dict(data_age),
            failures=self._failures.count(now_us),
            banned=self._banned,
        )
        trip = evaluate(self.limits, figures, day)
        if trip is None:
            return None
        self.tripped = trip
        self.trips += 1
        try:
            await self._pool.execute(
                "INSERT INTO breaker_trips (exchange, rule, reason, figures)"
                " VALUES ($1, $2, $3, $4)",
                self.exchange,
                trip.rule,
                trip.reason,
                _encode(trip.figures).decode(),
            )
        except (asyncpg.PostgresError, OSError) as exc:
            # The lock that follows still denies; its own record says why.
            logger.bind(EXCHANGE=self.exchange).error("breaker trip not recorded: {!r}", exc)
        return trip

    def reset(self) -> None:
        """An operator unlocked the exchange: the day's baseline starts again at the next
        check's equity."""
        self.tripped = None
        self._banned = ""
        self._failures.clear()
        self._rebase = True

    async def _save(self, day: Day, now_us: int) -> None:
        await self._pool.execute(
            "INSERT INTO breaker_days (exchange, day, start_equity, peak_equity)"
            " VALUES ($1, $2::date, $3::jsonb, $4::jsonb)"
            " ON CONFLICT (exchange, day) DO UPDATE SET start_equity = excluded.start_equity,"
            " peak_equity = excluded.peak_equity, updated_at = now()",
            self.exchange,
            dt.date.fromisoformat(day.day),
            _equity_json(day.start),
            _equity_json(day.peak),
        )
        self._day = day
        self._saved_us = now_us
