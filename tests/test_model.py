"""The model's one rule for a venue's decimal text: what it accepts Decimal and PostgreSQL read
alike and in range; what it refuses is no plain in-range decimal."""

from __future__ import annotations

import re
from collections.abc import Sequence
from decimal import Decimal, InvalidOperation

import asyncpg
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from tests.conftest import StorageServers, run_async
from tradingd.model import (
    SMALLEST_AMOUNT,
    TOO_LARGE_AMOUNT,
    PositiveDecimalMemo,
    are_positive_decimals,
    is_non_negative_decimal,
    is_positive_decimal,
    positive_decimal_float,
)

PLAIN_DECIMAL = re.compile(r"[0-9]+(\.[0-9]*)?|\.[0-9]+")
LONGEST = 64

EDGES = [
    "1e-20",
    "1E-20",
    "0.00000000000000000001",
    "0.000000000000000000009999999999",
    "0.0000000000000000000100000000001",
    "1.0000000000000000000000001e-20",
    "9.99999999999999999999e19",
    "99999999999999999999.99999999999999999999",
    "100000000000000000000",
    "1e20",
    "1e-400",
    "1e400",
    "-0",
    "0",
    "0.00000000",
    "+1",
    " 1 ",
    "1.",
    ".5",
    "1_0",
    "\u0661",
    "nan",
    "NaN",
    "sNaN",
    "inf",
    "-Infinity",
    "0x10",
    "1" * 64,
    "0." + "0" * 61 + "1",
    "1" * 65,
    # The short plain texts' bounds: 20 characters and fewer take the string test, more the
    # float rule.
    "9" * 20,
    "9" * 21,
    "." + "0" * 18 + "1",
    "0." + "0" * 18 + "1",
    "0." + "0" * 17 + "1",
    "." + "0" * 19,
    "0" * 20,
    "0" * 19 + "1",
    "1.2.3",
    "..5",
    ".",
    "",
    "\x0b1",
    "\x1c1",
    "1\t",
    "1\n",
    "\r0",
]

decimal_texts = st.one_of(
    st.sampled_from(EDGES),
    st.decimals(allow_nan=False, allow_infinity=False).map(str),
    st.decimals(allow_nan=False, allow_infinity=False).map(lambda d: f"{d:f}"),
    st.decimals(allow_nan=False, allow_infinity=False).map(lambda d: f"{d:e}"),
    st.builds(
        lambda whole, fraction: f"{whole}.{fraction}",
        st.integers(min_value=0, max_value=10**21),
        st.text("0123456789", max_size=25),
    ),
    st.text("0123456789.eE+-_ \t\u0661naif", max_size=12),
    st.text("0123456789.", max_size=24),
    st.text("0.", max_size=22),
    st.text(max_size=8),
)


def _exact(text: str) -> Decimal | None:
    try:
        return Decimal(text)
    except InvalidOperation:
        return None


def _is_plain_and_in_range(text: str, *, zero_too: bool) -> bool:
    if len(text) > LONGEST or not PLAIN_DECIMAL.fullmatch(text):
        return False
    value = Decimal(text)
    return SMALLEST_AMOUNT <= value < TOO_LARGE_AMOUNT or (zero_too and value == 0)


@given(decimal_texts)
@example("1e-20")
@example("1e20")
def test_an_accepted_positive_text_is_in_range_and_refused_ones_are_no_plain_amount(
    text: str,
) -> None:
    if is_positive_decimal(text):
        value = _exact(text)
        assert value is not None
        assert SMALLEST_AMOUNT <= value < TOO_LARGE_AMOUNT
        assert len(text) <= LONGEST and text.isascii() and "_" not in text
        assert text == text.strip()  # goes into a COPY row as it is
    else:
        assert not _is_plain_and_in_range(text, zero_too=False)


@given(decimal_texts)
@example("1e-400")
@example("0e5")
def test_an_accepted_non_negative_text_is_zero_or_in_range(text: str) -> None:
    if is_non_negative_decimal(text):
        value = _exact(text)
        assert value is not None
        assert value == 0 or SMALLEST_AMOUNT <= value < TOO_LARGE_AMOUNT
        assert is_positive_decimal(text) == (value != 0)
    else:
        assert not _is_plain_and_in_range(text, zero_too=True)


@given(decimal_texts)
def test_the_string_test_for_short_plain_texts_answers_as_the_float_rule(text: str) -> None:
    """``is_positive_decimal`` takes a string test for short plain texts and the float rule for
    the rest: both answer alike, and the float rule's float is the text's."""
    value = positive_decimal_float(text)
    assert is_positive_decimal(text) == (value is not None)
    if value is not None:
        assert value == float(text) != 0.0


@given(decimal_texts, decimal_texts)
@example("1", "1_0")
@example(" 1", "1")
@example("1", "1" * 65)
@example("1e-20", "1e20")
def test_the_pair_rule_answers_as_the_rule_does_for_each(first: str, second: str) -> None:
    expected = is_positive_decimal(first) and is_positive_decimal(second)
    assert are_positive_decimals(first, second) == expected
    assert are_positive_decimals(second, first) == expected


@given(st.lists(decimal_texts, max_size=12), st.integers(min_value=1, max_value=4))
def test_the_memo_answers_as_the_rule_does_seen_or_not_full_or_not(
    texts: list[str], capacity: int
) -> None:
    """Each text asked twice (the second time a memo hit when accepted), through a memo small
    enough to be emptied on the way."""
    memo = PositiveDecimalMemo(capacity)
    for text in texts + texts:
        accepted = text in memo.floats or memo.reading(text) is not None
        assert accepted == is_positive_decimal(text)
        assert len(memo.floats) <= capacity
        if accepted:
            assert memo.floats.get(text, float(text)) == float(text) != 0.0
    assert all(is_positive_decimal(text) for text in memo.floats)


def test_the_memo_keeps_no_refused_text_and_empties_itself_when_full() -> None:
    memo = PositiveDecimalMemo(capacity=2)
    assert memo.reading("0") is None
    assert memo.reading("1_0") is None
    assert memo.floats == {}
    assert memo.reading("0.00100000") == 0.001
    assert memo.reading("2") == 2.0
    assert memo.floats == {"0.00100000": 0.001, "2": 2.0}
    assert memo.reading("3.5") == 3.5
    assert memo.floats == {"3.5": 3.5}


async def _read_as_numeric(url: str, texts: Sequence[str]) -> list[Decimal]:
    connection = await asyncpg.connect(url)
    try:
        rows = await connection.fetch(
            "SELECT t::numeric AS n FROM unnest($1::text[]) WITH ORDINALITY AS u(t, i) ORDER BY i",
            list(texts),
        )
    finally:
        await connection.close()
    return [row["n"] for row in rows]


@pytest.fixture(scope="module")
def numeric_reader(_test_servers: StorageServers) -> str:
    return _test_servers.admin_database_url


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(st.lists(decimal_texts, min_size=1, max_size=40))
@example(EDGES)
def test_postgresql_reads_every_accepted_text_as_decimal_does(
    numeric_reader: str, texts: list[str]
) -> None:
    accepted = [t for t in texts if is_non_negative_decimal(t)]
    if not accepted:
        return
    url = numeric_reader
    read = run_async(lambda: _read_as_numeric(url, accepted))
    assert read == [Decimal(t) for t in accepted]
