"""tradingd.model.is_finite_decimal: a combo's price, zero or either sign within the range."""

from __future__ import annotations

from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tradingd.model import (
    SMALLEST_AMOUNT,
    TOO_LARGE_AMOUNT,
    is_finite_decimal,
    is_non_negative_decimal,
)


@pytest.mark.parametrize("text", ["0", "-0", "0.0", "-13.5", "-.5", "-1e-20", "7", "-9.9e19"])
def test_zero_and_either_sign_in_range_are_finite(text: str) -> None:
    assert is_finite_decimal(text)


@pytest.mark.parametrize(
    "text", ["", "-", "--1", "-+1", "- 1", "-1e20", "-1e-21", "-nan", "-inf", "-1_0", "nan", "-٣"]
)
def test_no_number_or_out_of_range_is_not_finite(text: str) -> None:
    assert not is_finite_decimal(text)


@given(st.decimals(allow_nan=False, allow_infinity=False).map(str))
def test_finite_means_non_negative_or_a_non_negative_negated(text: str) -> None:
    value = Decimal(text)
    in_range = value == 0 or SMALLEST_AMOUNT <= abs(value) < TOO_LARGE_AMOUNT
    assert is_finite_decimal(text) is (in_range and len(text) <= 64)
    if not text.startswith("-"):
        assert is_finite_decimal(text) is is_non_negative_decimal(text)
