"""The one backoff rule for every retry, reconnect and restart in the daemon."""

from __future__ import annotations

import random

# Past this many doublings every delay is at its cap anyway; keeps 2**n small.
_MAX_DOUBLINGS = 30


def backoff_delay(
    attempt: int, initial: float, maximum: float, rng: random.Random | None = None
) -> float:
    """Attempt 1 waits ``initial``, each further attempt twice as long, never above ``maximum``.

    With ``rng``: "equal jitter", half of that fixed and half uniformly random, so that peers
    failing together do not retry together.
    """
    capped = min(maximum, initial * 2 ** min(max(0, attempt - 1), _MAX_DOUBLINGS))
    if rng is None:
        return float(capped)
    return float(capped / 2 + rng.uniform(0, capped / 2))
