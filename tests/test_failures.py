"""Repeated connection failures are summarised (issue 14, item 10)."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from tradingd.failures import FailureSummary


def test_first_failure_in_full_then_a_periodic_count() -> None:
    summary = FailureSummary(interval=300.0)
    assert summary.record("OSError: refused", 0.0) == "OSError: refused"
    # An offline venue retries every few seconds: silence until the interval passed.
    assert [summary.record("OSError: refused", t) for t in range(5, 300, 5)] == [None] * 59
    line = summary.record("OSError: refused", 300.0)
    assert line is not None and line.startswith("still failing: 60 more attempts in the last 300 s")
    assert "(61 in a row)" in line
    assert summary.record("TimeoutError: timed out", 301.0) == "TimeoutError: timed out"
    assert summary.reset() == 62
    assert summary.record("OSError: refused", 302.0) == "OSError: refused"


@given(st.lists(st.floats(min_value=0.1, max_value=60.0), min_size=1, max_size=300))
def test_at_most_one_line_per_interval_for_one_error(gaps: list[float]) -> None:
    summary = FailureSummary(interval=300.0)
    now, lines = 0.0, 0
    for gap in gaps:
        now += gap
        lines += summary.record("same", now) is not None
    assert lines <= 1 + now // 300.0
