"""The daemon's health snapshot: published to Redis for `tradingd status`, summed up for systemd."""

from __future__ import annotations

import time

import msgspec

from tradingd.queues import QueueStats
from tradingd.supervisor import ActorStatus

STATUS_KEY = "system:status"


class ExchangeStatus(msgspec.Struct, frozen=True):
    name: str
    state: str | None
    state_reason: str
    connections: int
    connected: int
    trades: int
    dead_letters: int
    gaps_open: int
    seconds_since_frame: float
    last_error: str
    # Counts stay integers in JSON; latencies are floats.
    repair: dict[str, int | float] = {}


class DaemonStatus(msgspec.Struct, frozen=True):
    pid: int
    version: str
    started_at_us: int
    updated_at_us: int
    mode: str
    exchanges: list[ExchangeStatus]
    actors: list[ActorStatus]
    queues: list[QueueStats]
    persister: dict[str, int | float]
    clock: dict[str, int | float]
    analyzer: dict[str, int | float] = {}

    def age_seconds(self) -> float:
        return max(0.0, time.time() - self.updated_at_us / 1e6)


def one_line(status: DaemonStatus) -> str:
    """The systemd STATUS= line: short, one line, the things an operator checks first."""
    parts = []
    for ex in status.exchanges:
        parts.append(
            f"{ex.name} {ex.state or 'NEW'} {ex.connected}/{ex.connections} ws"
            + (f" {ex.gaps_open} gaps" if ex.gaps_open else "")
        )
    depth = sum(q.depth for q in status.queues)
    dropped = sum(q.dropped for q in status.queues if q.policy != "keep-latest-per-key")
    failed = [a.name for a in status.actors if a.state == "failed"]
    line = "; ".join(parts) or "no exchanges"
    line += f"; queued {depth}"
    if dropped:
        line += f", dropped {dropped}"
    if failed:
        line += f"; failed: {', '.join(failed)}"
    return line


encode_status = msgspec.json.Encoder().encode
decode_status = msgspec.json.Decoder(DaemonStatus).decode
