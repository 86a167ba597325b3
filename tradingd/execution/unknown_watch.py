"""How long each order has been UNKNOWN, and which one has been so past the configured limit
(``risk.unknown_order_limit``): such an order is a doubt the venue does not resolve, and any
doubt locks the exchange."""

from __future__ import annotations

from collections.abc import Iterable


class UnknownWatch:
    def __init__(self, limit_s: float) -> None:
        self.limit_s = limit_s
        self._limit_us = int(limit_s * 1_000_000)
        self._since: dict[str, int] = {}

    def overdue(self, unknown: Iterable[tuple[str, str]], now_us: int) -> str | None:
        """``unknown``: (client id, instrument) of every order UNKNOWN now. The reason to lock
        for the first one UNKNOWN past the limit, or None. A reported order is timed again from
        now: once an operator unlocks, it locks again only after another full limit."""
        current = dict(unknown)
        # An order first seen UNKNOWN now (sent, or found so at start-up) is timed from now.
        self._since = {cid: self._since.get(cid, now_us) for cid in current}
        for client_id, since in self._since.items():
            if now_us - since > self._limit_us:
                self._since[client_id] = now_us
                return (
                    f"order {client_id} on {current[client_id]} UNKNOWN for more than "
                    f"{self.limit_s:g} s: the venue has not said whether it exists"
                )
        return None
