"""Per-instrument trade sequence tracking: the pure core of gap-free capture.

Binance spot trade ids (``t``) and Deribit ``trade_seq`` are consecutive per instrument. The
tracker remembers the last sequence number accepted for each instrument; a trade at or below it
is a duplicate (overlapping connections during a rotation, a replayed frame) and is dropped, and
a jump past ``last + 1`` is a gap to repair from the venue's history.

Nothing here does I/O or reads a clock: a gap's detection time is the receive time of the trade
that revealed it.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import msgspec

from tradingd.model import Trade

LIVE_STREAM = "live stream"
RECONNECT = "reconnect"
DAEMON_START = "daemon start"
STARTUP_SCAN = "start-up scan"
# Between trades loaded by `tradingd backfill trades` and the next stored trade.
BACKFILL_EDGE = "backfill edge"


class Gap(msgspec.Struct, frozen=True):
    exchange: str
    instrument_name: str
    first_seq: int
    last_seq: int
    reason: str
    # When the gap became known, µs since the epoch (0: unknown).
    detected_us: int = 0

    @property
    def size(self) -> int:
        return self.last_seq - self.first_seq + 1


class SequenceTracker:
    """The last accepted sequence per instrument of one exchange, shared by its receivers.

    ``last_seen`` seeds it from storage at start: the first live trade of each of those
    instruments then reveals what the daemon missed while it was not running (reason
    ``resume_reason``).
    """

    def __init__(
        self,
        exchange: str,
        last_seen: dict[str, int] | None = None,
        *,
        resume_reason: str = DAEMON_START,
    ) -> None:
        self.exchange = exchange
        self._last: dict[str, int] = dict(last_seen or {})
        # The reason given to the next gap of an instrument, until its next trade arrives.
        self._resume: dict[str, str] = dict.fromkeys(self._last, resume_reason)
        self.duplicates = 0

    def last_seq(self, instrument: str) -> int | None:
        return self._last.get(instrument)

    def known(self) -> dict[str, int]:
        return dict(self._last)

    def seed(self, instrument: str, last_seq: int, reason: str = DAEMON_START) -> None:
        """Start from what is already stored (the gap up to the first live trade gets repaired)."""
        current = self._last.get(instrument)
        if current is None or last_seq > current:
            self._last[instrument] = last_seq
            self._resume[instrument] = reason

    def forget(self, instrument: str) -> None:
        """Track ``instrument`` afresh: its next trade is accepted as the first one (a live
        subscription added: what happened while it was not captured is not a gap)."""
        self._last.pop(instrument, None)
        self._resume.pop(instrument, None)

    def resumed(self, instruments: Iterable[str], reason: str = RECONNECT) -> None:
        """A stream starts again after a break: name the next gap of these instruments."""
        for instrument in instruments:
            if instrument in self._last:
                self._resume[instrument] = reason

    def caught_up(self, instrument: str, first_seq: int) -> bool:
        """Whether a stream starting at ``first_seq`` continues what was accepted (no gap)."""
        last = self._last.get(instrument)
        return last is not None and last >= first_seq - 1

    def observe(
        self, trades: Sequence[Trade], reason: str = LIVE_STREAM
    ) -> tuple[list[Trade], list[Gap]]:
        """Split a batch into new trades (in order) and the gaps in front of them, and accept
        them at once (for callers with no await between this and storing them)."""
        observation = self.plan(trades, reason)
        self.accept(observation)
        return observation.fresh, observation.gaps

    def plan(self, trades: Sequence[Trade], reason: str = LIVE_STREAM) -> Observation:
        """What ``trades`` would add: new trades (in order) and gaps, changing nothing.

        ``accept`` it once the trades are queued: a receiver cancelled in between then leaves
        them unseen, and the next copy (another connection, a reconnect, a repair) counts.
        """
        fresh: list[Trade] = []
        gaps: list[Gap] = []
        duplicates = 0
        last: dict[str, int] = {}
        known = self._last
        resume = self._resume
        # The instrument of the last trade taken, and its sequence: a live batch comes in runs
        # of one instrument's consecutive trades, each taken with one comparison. ``last``
        # learns a run's end when another instrument's trade (or the batch's end) comes.
        instrument: str | None = None
        previous = 0
        for trade in trades:
            seq = trade.trade_seq
            if seq == previous + 1 and trade.instrument_name == instrument:
                previous = seq
                fresh.append(trade)
                continue
            if instrument is not None:
                last[instrument] = previous
            name = trade.instrument_name
            before = last.get(name)
            # The resume reason names only the first gap: it is spent once a trade passed.
            resuming = before is None and name in resume
            if before is None:
                before = known.get(name)
            if before is not None:
                if seq <= before:
                    duplicates += 1
                    continue
                if seq != before + 1:
                    why = resume[name] if resuming else reason
                    gaps.append(
                        Gap(self.exchange, name, before + 1, seq - 1, why, trade.received_us)
                    )
            instrument, previous = name, seq
            fresh.append(trade)
        if instrument is not None:
            last[instrument] = previous
        return Observation(fresh, gaps, last, duplicates)

    def accept(self, observation: Observation) -> None:
        """Mark planned trades seen. Another receiver may have accepted further meanwhile:
        the last sequence only moves forward."""
        known = self._last
        for instrument, seq in observation.last.items():
            self._resume.pop(instrument, None)
            if seq > known.get(instrument, seq - 1):
                known[instrument] = seq
        self.duplicates += observation.duplicates


class Observation(msgspec.Struct, frozen=True):
    """A planned step of a ``SequenceTracker``: not applied until accepted."""

    fresh: list[Trade]
    gaps: list[Gap]
    # The highest sequence per instrument in ``fresh``.
    last: dict[str, int]
    duplicates: int


def missing_ranges(seqs: Iterable[int], first: int, last: int) -> list[tuple[int, int]]:
    """The inclusive ranges of [first, last] not covered by ``seqs``."""
    present = sorted({s for s in seqs if first <= s <= last})
    ranges: list[tuple[int, int]] = []
    expected = first
    for seq in present:
        if seq > expected:
            ranges.append((expected, seq - 1))
        expected = seq + 1
    if expected <= last:
        ranges.append((expected, last))
    return ranges


def subtract_ranges(
    first: int, last: int, covered: Iterable[tuple[int, int]]
) -> list[tuple[int, int]]:
    """The inclusive ranges of [first, last] outside every inclusive range of ``covered``."""
    remaining: list[tuple[int, int]] = []
    start = first
    for low, high in sorted(covered):
        if high < start or low > last:
            continue
        if low > start:
            remaining.append((start, low - 1))
        start = max(start, high + 1)
        if start > last:
            return remaining
    if start <= last:
        remaining.append((start, last))
    return remaining
