"""A venue's ban as the lock reason records it: ``banned until 2026-12-06T05:20:00Z``.

The client that meets the ban writes it into its fault (the reason the exchange is LOCKED
with); ``tradingd unlock`` reads it back from the recorded reason and refuses before that time
(a venue escalates a ban for every violation, Binance from 2 minutes up to 3 days).
"""

from __future__ import annotations

import datetime as dt
import re
from typing import Final

_NOTE: Final = re.compile(r"banned until (\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ)")


def banned_until_note(until_us: int) -> str:
    """The note for a ban ending at ``until_us`` (rounded up to the second)."""
    seconds = -(-until_us // 1_000_000)
    at = dt.datetime.fromtimestamp(seconds, dt.UTC)
    return f"banned until {at:%Y-%m-%dT%H:%M:%SZ}"


def banned_until_us(reason: str) -> int | None:
    """The latest ban end a reason notes, or None."""
    ends = [
        int(dt.datetime.strptime(m, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=dt.UTC).timestamp())
        for m in _NOTE.findall(reason)
    ]
    return max(ends) * 1_000_000 if ends else None
