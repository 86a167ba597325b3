"""Binance rate limits, sans-I/O: exchangeInfo's rateLimits parsed, and the order and weight
budgets never letting one more request pass a limit."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tradingd.adapters.base import ParseError
from tradingd.adapters.binance.rate_limits import (
    OrderBudget,
    RateLimits,
    WeightBudget,
    interval_key,
    interval_seconds,
    parse_order_counts,
    parse_rate_limits,
)

# The shape rest-api.md documents, with the enum examples of enums.md.
INFO = (
    b'{"timezone":"UTC","serverTime":1565246363776,"rateLimits":['
    b'{"rateLimitType":"REQUEST_WEIGHT","interval":"MINUTE","intervalNum":1,"limit":6000},'
    b'{"rateLimitType":"ORDERS","interval":"SECOND","intervalNum":1,"limit":10},'
    b'{"rateLimitType":"ORDERS","interval":"SECOND","intervalNum":10,"limit":50},'
    b'{"rateLimitType":"ORDERS","interval":"DAY","intervalNum":1,"limit":160000},'
    b'{"rateLimitType":"RAW_REQUESTS","interval":"MINUTE","intervalNum":5,"limit":61000}],'
    b'"exchangeFilters":[],"symbols":[]}'
)


def test_exchange_info_rate_limits_by_header_interval() -> None:
    assert parse_rate_limits(INFO) == RateLimits(
        orders={"1S": 10, "10S": 50, "1D": 160_000}, weight={"1M": 6000}
    )
    assert interval_key("SECOND", 10) == "10S" and interval_key("WEEK", 1) is None
    assert interval_seconds("10S") == 10 and interval_seconds("1D") == 86_400
    assert interval_seconds("X") is None and interval_seconds("0S") is None


@pytest.mark.parametrize(
    "body",
    [
        b"{}",
        b'{"rateLimits":[]}',
        b'{"rateLimits":[{"rateLimitType":"ORDERS","interval":"SECOND","intervalNum":10,'
        b'"limit":50}]}',  # no REQUEST_WEIGHT
        b'{"rateLimits":[{"rateLimitType":"ORDERS","interval":"FORTNIGHT","intervalNum":1,'
        b'"limit":5}]}',
        b"not json",
    ],
)
def test_unusable_rate_limits_raise(body: bytes) -> None:
    with pytest.raises(ParseError):
        parse_rate_limits(body)


def test_an_order_past_a_limit_is_held_until_the_window_slides() -> None:
    budget = OrderBudget({"1S": 2, "10S": 3})
    assert budget.hold(100.0) is None
    budget.sent(100.0)
    budget.sent(100.2)
    assert budget.hold(100.5) == pytest.approx(0.5)  # 1S: 2 in the last second
    assert budget.hold(101.1) is None
    budget.sent(101.1)
    assert budget.hold(101.5) == pytest.approx(8.5)  # 10S: 3 since 100.0
    assert budget.hold(110.01) is None


def test_the_venues_count_holds_for_a_whole_interval() -> None:
    budget = OrderBudget({"10S": 50, "1D": 160_000})
    budget.heard({"10S": 49, "1D": 5}, 10.0)
    assert budget.hold(10.0) is None
    budget.heard({"10S": 50, "1D": 5}, 10.0)
    assert budget.hold(10.0) == 10.0
    budget.heard({"10S": 50, "1D": 160_000}, 10.0)
    assert budget.hold(10.0) == 86_400.0
    budget.heard({"1M": 999}, 10.0)  # an interval without a known limit
    assert budget.hold(86_410.5) is None


@given(
    limit=st.integers(1, 20),
    gaps=st.lists(st.floats(0.0, 3.0, allow_nan=False), min_size=1, max_size=200),
)
def test_orders_sent_when_not_held_never_pass_the_limit(limit: int, gaps: list[float]) -> None:
    budget = OrderBudget({"10S": limit})
    now, sent = 0.0, []
    for gap in gaps:
        now += gap
        if budget.hold(now) is None:
            budget.sent(now)
            sent.append(now)
    for at in sent:
        assert sum(1 for t in sent if at - 10 < t <= at) <= limit


@given(
    limit=st.integers(80, 500),
    requests=st.lists(st.tuples(st.integers(1, 80), st.integers(0, 5000)), max_size=300),
)
def test_weight_spent_when_not_held_never_passes_the_minute(
    limit: int, requests: list[tuple[int, int]]
) -> None:
    budget = WeightBudget({"1M": limit})
    now, spent = 0, {}
    for weight, gap in requests:
        now += gap
        if budget.hold(weight, now) is None:
            budget.spend(weight, now)
            spent[now // 60_000] = spent.get(now // 60_000, 0) + weight
    assert all(total <= limit for total in spent.values())


def test_weight_is_held_to_the_next_minute_and_the_venue_count_only_raises_ours() -> None:
    budget = WeightBudget({"1M": 100})
    budget.spend(90, 60_000)
    assert budget.hold(10, 60_500) is None
    assert budget.hold(11, 60_500) == pytest.approx(59.5)
    budget.heard({"1M": 40}, 61_000)  # the venue has not seen ours in flight yet
    assert budget.used("1M", 61_000) == 90
    budget.heard({"1M": 99}, 61_000)  # another process on this IP
    assert budget.used("1M", 61_000) == 99 and budget.hold(2, 61_000) is not None
    assert budget.hold(2, 120_000) is None  # a new minute
    assert budget.hold(101, 60_000) is None  # heavier than the whole limit: the venue decides


def test_the_accounts_order_counts_and_our_orders_since_add_up() -> None:
    body = (
        b'[{"rateLimitType":"ORDERS","interval":"SECOND","intervalNum":10,"limit":50,"count":3},'
        b'{"rateLimitType":"ORDERS","interval":"DAY","intervalNum":1,"limit":160000,"count":9}]'
    )
    counts = parse_order_counts(body)
    assert counts == {"10S": 3, "1D": 9}
    with pytest.raises(ParseError):
        parse_order_counts(b'{"count": 1}')
    # An earlier process sent 3 in this window: one more of ours fits a limit of 4, not two.
    budget = OrderBudget({"10S": 4})
    budget.heard({"10S": 3}, 100.0)
    assert budget.hold(100.1) is None
    budget.sent(100.1)
    assert budget.hold(100.2) == pytest.approx(9.8)
    assert budget.hold(110.2) is None
