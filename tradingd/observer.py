"""The daemon's view of operator actions taken elsewhere (``tradingd unlock``, ``lock``,
``kill-switch``): every recorded change of an exchange state or of the kill switch is written
to the daemon's own log too, so the service's journal holds them. A change the daemon made
itself was logged when it made it and is not logged again.

Read from the records in PostgreSQL (``state_transitions``, ``system_events``), where every
change is written before it takes effect: a change undone between two polls is still logged.
Polled at ``daemon.status_interval``.
"""

from __future__ import annotations

import asyncio
import os

import asyncpg
import msgspec
from loguru import logger

from tradingd.supervisor import ActorContext

_KILL_SWITCH_KINDS = ("kill_switch_on", "kill_switch_off")


class Marks(msgspec.Struct):
    """The last record of each kind already logged."""

    transition_id: int = 0
    event_id: int = 0


async def current_marks(pool: asyncpg.Pool) -> Marks:
    return Marks(
        transition_id=await pool.fetchval("SELECT coalesce(max(id), 0) FROM state_transitions"),
        event_id=await pool.fetchval(
            "SELECT coalesce(max(id), 0) FROM system_events WHERE kind = ANY($1::text[])",
            list(_KILL_SWITCH_KINDS),
        ),
    )


async def log_changes_since(pool: asyncpg.Pool, marks: Marks) -> Marks:
    """Log every change recorded after ``marks``, oldest first; returns the new marks."""
    transitions = await pool.fetch(
        "SELECT id, exchange, from_state, to_state, operator, reason, writer_pid"
        " FROM state_transitions WHERE id > $1 ORDER BY id",
        marks.transition_id,
    )
    for row in transitions:
        if row["writer_pid"] == os.getpid():
            continue  # recorded, and logged, by this process
        logger.bind(STATE=row["to_state"], EXCHANGE=row["exchange"]).info(
            "observed {}: {} -> {} by {}: {}",
            row["exchange"],
            row["from_state"] or "none",
            row["to_state"],
            row["operator"],
            row["reason"],
        )
    events = await pool.fetch(
        "SELECT id, kind, detail::text AS detail, writer_pid FROM system_events"
        " WHERE id > $1 AND kind = ANY($2::text[]) ORDER BY id",
        marks.event_id,
        list(_KILL_SWITCH_KINDS),
    )
    for row in events:
        if row["writer_pid"] == os.getpid():
            continue  # recorded, and logged, by this process
        detail = msgspec.json.decode(row["detail"])
        logger.bind(STATE="KILL_SWITCH").warning(
            "observed kill switch {} by {}: {}",
            "ON" if row["kind"] == "kill_switch_on" else "off",
            detail.get("operator", "?"),
            detail.get("reason", ""),
        )
    return Marks(
        transition_id=transitions[-1]["id"] if transitions else marks.transition_id,
        event_id=events[-1]["id"] if events else marks.event_id,
    )


class StateChangeObserver:
    """The supervised actor that logs recorded state and kill-switch changes."""

    name = "observer"

    def __init__(self, pool: asyncpg.Pool, interval: float, marks: Marks | None = None) -> None:
        self._pool = pool
        self._interval = interval
        # From now on unless given; kept across restarts, so that a restart (after a database
        # error) neither repeats nor skips a change.
        self._marks = marks

    async def run(self, ctx: ActorContext) -> None:
        ctx.ready()
        while True:
            try:
                if self._marks is None:
                    self._marks = await current_marks(self._pool)
                else:
                    self._marks = await log_changes_since(self._pool, self._marks)
            except (asyncpg.PostgresError, OSError) as exc:
                # The database down is the persister's alarm to raise; this skips one poll.
                ctx.log.debug("state changes not observed: {}", exc)
            ctx.checkin()
            await asyncio.sleep(self._interval)
