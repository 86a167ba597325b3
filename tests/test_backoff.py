from __future__ import annotations

import random

from hypothesis import given
from hypothesis import strategies as st

from tradingd.backoff import backoff_delay


@given(
    attempt=st.integers(min_value=-3, max_value=10_000),
    initial=st.floats(min_value=0.001, max_value=10.0),
    maximum=st.floats(min_value=0.001, max_value=600.0),
    seed=st.integers(),
)
def test_backoff_doubles_from_initial_is_capped_and_jitters_within_half(
    attempt: int, initial: float, maximum: float, seed: int
) -> None:
    plain = backoff_delay(attempt, initial, maximum)
    assert plain == min(maximum, initial * 2 ** min(max(0, attempt - 1), 30))
    assert plain <= maximum
    if attempt <= 1:
        assert plain == min(initial, maximum)
    jittered = backoff_delay(attempt, initial, maximum, random.Random(seed))
    assert plain / 2 <= jittered <= plain
