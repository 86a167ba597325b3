"""Repeated failures, summarised: the first one in full, then a count now and then.

An exchange that stays unreachable (offline, a wrong ``ws_url``) must not write lines to the
journal every few seconds forever. Pure: the caller passes the time and logs what it gets.
"""

from __future__ import annotations

from dataclasses import dataclass

SUMMARY_INTERVAL = 300.0


@dataclass
class FailureSummary:
    """Decides which failures are worth a line; ``record`` returns that line, or None."""

    interval: float = SUMMARY_INTERVAL
    _error: str = ""
    _since_line: int = 0
    _total: int = 0
    _last_line_at: float = 0.0

    @property
    def failures(self) -> int:
        """Consecutive failures since the last success."""
        return self._total

    def record(self, error: str, now: float) -> str | None:
        self._total += 1
        if error != self._error:
            self._error, self._since_line, self._last_line_at = error, 0, now
            return error
        self._since_line += 1
        if now - self._last_line_at >= self.interval:
            line = (
                f"still failing: {self._since_line} more attempts in the last "
                f"{now - self._last_line_at:.0f} s ({self._total} in a row); last error: {error}"
            )
            self._since_line, self._last_line_at = 0, now
            return line
        return None

    def reset(self) -> int:
        """A success: returns how many failures came before it."""
        failed, self._total, self._error, self._since_line = self._total, 0, "", 0
        return failed
