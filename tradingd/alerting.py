"""Alerts from the running daemon: what a human must hear of without reading the journal.

Producers never wait: ``raise_alert`` puts an ``Alert`` on a bounded queue that drops its
oldest entry when full (and counts it), so a trading decision is never held up by a channel.
The ``Alerter`` actor sends each through ``tradingd.alerts``'s channels (webhook, Telegram),
once per incident key within ``alerts.dedup_seconds``, and at most ``alerts.max_per_minute``
(the rest are counted and the next message says how many were held back).

What is alerted, and its incident key:

* every automatic LOCKED or AUDITING (recorded in ``state_transitions`` by the daemon or an
  executor; a circuit breaker trip is one, and its ``breaker_trips`` row shares its key):
  ``<state>:<exchange>:<reason>``;
* every kill switch change (``system_events``): ``kill_switch:<id>``;
* an order UNKNOWN for longer than ``UNRESOLVED_AFTER_S``: ``unknown:<client order id>``;
* a reconciliation mismatch seen once (``reconciliations``; a second one is AUDITING, above):
  ``mismatch:<exchange>:<summary>``;
* pushed by the daemon: an actor escalation, Redis losing the shared state.

The records are read from PostgreSQL (where each is written before it takes effect), so an
alert is raised whichever process made the change. Texts name no credential: URLs lose their
user part and query before they are sent.
"""

from __future__ import annotations

import asyncio
import re
import socket
import time
from collections import deque
from collections.abc import Callable

import aiohttp
import asyncpg
import msgspec
from loguru import logger

from tradingd.alerts import AlertsUndelivered, send_alert
from tradingd.config import AlertsConfig
from tradingd.queues import BoundedQueue, OverflowPolicy, QueueClosed
from tradingd.secrets import SecretStore
from tradingd.supervisor import ActorContext

# Recorded by the daemon itself (not an operator's command): these changes are alerted.
AUTOMATIC_OPERATORS = frozenset({"tradingd", "executor", "reconcile", "reconciler", "breaker"})
UNRESOLVED_AFTER_S = 30
RECORDS_INTERVAL = 1.0
_URL_USER = re.compile(r"(\w+://)[^/@\s]+@")
_URL_QUERY = re.compile(r"(\w+://[^\s?]+)\?\S*")


class Alert(msgspec.Struct, frozen=True):
    key: str  # the incident: one message per key within the dedup window
    text: str


def alert_queue(config: AlertsConfig) -> BoundedQueue[Alert]:
    return BoundedQueue("alerts", config.queue_size, OverflowPolicy.DROP_OLDEST)


def raise_alert(queue: BoundedQueue[Alert], key: str, text: str) -> None:
    """Never waits, never raises: a full queue drops its oldest alert (counted)."""
    try:
        queue.put_many_nowait([Alert(key, text)])
    except QueueClosed:
        logger.critical("ALERT (daemon stopping, not sent): {}", text)


def scrub(text: str) -> str:
    """No credential in a message: a URL's user part and query are removed."""
    return _URL_QUERY.sub(r"\1?…", _URL_USER.sub(r"\1…@", text))


class AlertGate:
    """Deduplication per incident key and the overall rate limit (pure: times are given)."""

    def __init__(self, dedup_s: float, per_minute: int) -> None:
        self._dedup_s = dedup_s
        self._per_minute = per_minute
        self._seen: dict[str, float] = {}
        self._sent: deque[float] = deque()
        self.duplicates = 0
        self.held_back = 0  # over the rate limit since the last message sent

    def admit(self, key: str, now: float) -> bool:
        seen = self._seen.get(key)
        if seen is not None and now - seen < self._dedup_s:
            self.duplicates += 1
            return False
        while self._sent and self._sent[0] <= now - 60.0:
            self._sent.popleft()
        if len(self._sent) >= self._per_minute:
            self.held_back += 1
            return False
        self._seen[key] = now
        self._sent.append(now)
        return True


class Alerter:
    """The supervised alerts actor: watches the records, sends what is queued."""

    name = "alerts"

    def __init__(
        self,
        config: AlertsConfig,
        secrets: SecretStore,
        queue: BoundedQueue[Alert],
        pool: asyncpg.Pool,
        *,
        clock: Callable[[], float] = time.monotonic,
        records_interval: float = RECORDS_INTERVAL,
    ) -> None:
        self._config = config
        self._secrets = secrets
        self._queue = queue
        self._pool = pool
        self._clock = clock
        self._records_interval = records_interval
        self.gate = AlertGate(config.dedup_seconds, config.max_per_minute)
        # The last record of each kind seen: transitions, events, trips, reconciliations.
        self._marks: tuple[int, int, int, int] | None = None
        self.sent = 0
        self.undelivered = 0
        self.scans = 0
        self.scanned = asyncio.Event()  # set after every scan of the records (tests await it)
        self._host = socket.gethostname()

    @property
    def configured(self) -> bool:
        return bool(self._config.webhook_url_secret or self._config.telegram_token_secret)

    async def run(self, ctx: ActorContext) -> None:
        # Ready once the records are marked: whatever is recorded after READY=1 is alerted.
        try:
            await self.scan_records()
        except (asyncpg.PostgresError, OSError) as exc:
            ctx.log.warning("records not marked for alerts yet: {}", exc)
        ctx.ready()
        async with aiohttp.ClientSession() as http:
            watcher = asyncio.ensure_future(self._watch_records(ctx))
            try:
                await self._deliver(ctx, http)
            finally:
                watcher.cancel()
                await asyncio.gather(watcher, return_exceptions=True)

    async def _deliver(self, ctx: ActorContext, http: aiohttp.ClientSession) -> None:
        """Until the queue is closed and drained (the daemon's shutdown)."""
        while True:
            batch = await self._queue.get_batch(100)
            if not batch:
                return
            ctx.checkin()
            for alert in batch:
                if not self.gate.admit(alert.key, self._clock()):
                    continue
                text = f"tradingd on {self._host}: {scrub(alert.text)}"
                held, self.gate.held_back = self.gate.held_back, 0
                if held:
                    text += f"\n({held} more alerts held back by alerts.max_per_minute)"
                try:
                    await send_alert(self._config, self._secrets, text, http=http)
                    self.sent += 1
                except AlertsUndelivered as exc:
                    # Logged at CRITICAL by send_alert already: the journal has it.
                    self.undelivered += 1
                    ctx.log.error("alert not delivered everywhere: {}", exc)

    async def _watch_records(self, ctx: ActorContext) -> None:
        while True:
            try:
                await self.scan_records()
            except (asyncpg.PostgresError, OSError) as exc:
                ctx.log.debug("records not scanned for alerts: {}", exc)
            # A schedule: the records are polled, as the observer does.
            await asyncio.sleep(self._records_interval)

    async def scan_records(self) -> None:
        """Queue an alert for every record since the last scan (the first scan only marks)."""
        async with self._pool.acquire() as conn:
            if self._marks is None:
                self._marks = (
                    await conn.fetchval("SELECT coalesce(max(id), 0) FROM state_transitions"),
                    await conn.fetchval("SELECT coalesce(max(id), 0) FROM system_events"),
                    await conn.fetchval("SELECT coalesce(max(id), 0) FROM breaker_trips"),
                    await conn.fetchval("SELECT coalesce(max(id), 0) FROM reconciliations"),
                )
                return
            transitions, events, trips, checks = self._marks
            for row in await conn.fetch(
                "SELECT id, exchange, to_state, operator, reason FROM state_transitions"
                " WHERE id > $1 ORDER BY id",
                transitions,
            ):
                transitions = row["id"]
                if row["to_state"] in ("LOCKED", "AUDITING") and (
                    row["operator"] in AUTOMATIC_OPERATORS
                ):
                    raise_alert(
                        self._queue,
                        f"{row['to_state']}:{row['exchange']}:{row['reason']}",
                        f"{row['exchange']} {row['to_state']} ({row['operator']}): {row['reason']}",
                    )
            for row in await conn.fetch(
                "SELECT id, exchange, rule, reason FROM breaker_trips WHERE id > $1 ORDER BY id",
                trips,
            ):
                trips = row["id"]
                raise_alert(
                    self._queue,
                    f"LOCKED:{row['exchange']}:{row['reason']}",
                    f"{row['exchange']} LOCKED (executor): {row['reason']}",
                )
            for row in await conn.fetch(
                "SELECT id, kind, detail::text AS detail FROM system_events"
                " WHERE id > $1 AND kind IN ('kill_switch_on', 'kill_switch_off') ORDER BY id",
                events,
            ):
                events = row["id"]
                detail = msgspec.json.decode(row["detail"])
                on = row["kind"] == "kill_switch_on"
                raise_alert(
                    self._queue,
                    f"kill_switch:{row['id']}",
                    f"kill switch {'ON' if on else 'off'} by {detail.get('operator', '?')}:"
                    f" {detail.get('reason', '')}",
                )
            for row in await conn.fetch(
                "SELECT client_order_id, exchange, instrument_name,"
                " extract(epoch FROM now() - updated_at)::int AS age_s FROM orders"
                " WHERE state = 'UNKNOWN' AND updated_at < now() - make_interval(secs => $1)",
                UNRESOLVED_AFTER_S,
            ):
                raise_alert(
                    self._queue,
                    f"unknown:{row['client_order_id']}",
                    f"{row['exchange']}: order {row['client_order_id']} on"
                    f" {row['instrument_name']} UNKNOWN for {row['age_s']} s: the venue has not"
                    " said whether it exists; new orders on the instrument are blocked",
                )
            for row in await conn.fetch(
                "SELECT id, exchange, trigger, summary FROM reconciliations"
                " WHERE id > $1 AND outcome = 'mismatch' ORDER BY id",
                checks,
            ):
                checks = row["id"]
                raise_alert(
                    self._queue,
                    f"mismatch:{row['exchange']}:{row['summary']}",
                    f"{row['exchange']}: reconciliation ({row['trigger']}) found a mismatch,"
                    f" AUDITING if the next run sees it again: {row['summary']}",
                )
            self._marks = (transitions, events, trips, checks)
        self.scans += 1
        self.scanned.set()
