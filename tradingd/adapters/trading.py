"""What every venue's private (trading) API answers share, sans-I/O.

Each venue has ONE table mapping its error codes to a ``Verdict``; the execution client turns
verdicts into the executor's outcome classes (ACK / REJECTED / UNKNOWN). Anything a table does
not name is ``UNKNOWN``: an answer we cannot prove definitive is never treated as a "no".
"""

from __future__ import annotations

import enum

import msgspec


class Verdict(enum.StrEnum):
    # The venue's definitive no: nothing exists on the venue because of this request.
    REJECTED = "REJECTED"
    # No definitive answer: the order may exist. Never resend; ask (query by client id) or
    # hear (user stream) instead.
    UNKNOWN = "UNKNOWN"
    # The venue proved it never received the request (Binance -1021): resynchronise the clock
    # and resend with the SAME client id.
    RESEND_AFTER_CLOCK_SYNC = "RESEND_AFTER_CLOCK_SYNC"
    # A query or cancel found no such order now. Not proof of absence right after a fill
    # (Binance -2013 lags its matching engine): absence counts only past the venue's deadline.
    NOT_FOUND = "NOT_FOUND"
    # Refused for the request rate, before any processing; retry after ``retry_after``.
    RATE_LIMITED = "RATE_LIMITED"
    # The venue banned us (Binance 418): the exchange must be LOCKED with the reason.
    BANNED = "BANNED"
    # Credentials or permissions refused: nothing was processed; the exchange must be LOCKED.
    AUTH_FAILED = "AUTH_FAILED"
    # The venue is in maintenance or settlement: nothing was processed; stop sending for now.
    MAINTENANCE = "MAINTENANCE"
    # The venue's answer breaks an invariant we rely on (Deribit: a label matched twice):
    # the exchange must be LOCKED with the reason.
    FAULT = "FAULT"


class Classified(msgspec.Struct, frozen=True, kw_only=True):
    """One failed request, classified: the verdict and the venue's own words."""

    verdict: Verdict
    reason: str
    code: int | None = None
    retry_after: float | None = None  # seconds, with RATE_LIMITED and BANNED


def transport_failure(what: str) -> Classified:
    """A timeout, a refused or dropped connection, an undecodable answer: never definitive."""
    return Classified(verdict=Verdict.UNKNOWN, reason=what)
