"""The order state machine: the transition table and hypothesis properties."""

from __future__ import annotations

from decimal import Decimal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tradingd.execution.orders import (
    LEGAL_TRANSITIONS,
    TERMINAL_STATES,
    IllegalOrderTransition,
    OrderState,
    OrderStatus,
    apply_fill,
    transition,
)

S = OrderState


def test_the_table_covers_every_state_and_terminal_states_lead_nowhere() -> None:
    assert set(LEGAL_TRANSITIONS) == set(OrderState)
    for state in TERMINAL_STATES:
        assert LEGAL_TRANSITIONS[state] == frozenset()
    assert {S.FILLED, S.CANCELED, S.REJECTED, S.NEVER_PLACED, S.DENIED} == TERMINAL_STATES


def test_the_happy_path_and_a_refused_transition() -> None:
    order = OrderStatus(client_order_id="td1", quantity=Decimal(2))
    order = transition(order, S.SENDING)
    order = transition(order, S.OPEN)
    order = apply_fill(order, Decimal("0.5"), Decimal(100))
    assert order.state is S.PARTIALLY_FILLED
    order = apply_fill(order, Decimal("1.5"), Decimal(104))
    assert order.state is S.FILLED
    assert order.filled_quantity == 2
    assert order.average_price == Decimal(103)
    with pytest.raises(IllegalOrderTransition, match="terminal state"):
        transition(order, S.CANCELED)


def test_unknown_is_left_only_for_a_venue_outcome_and_intent_cannot_jump_to_open() -> None:
    order = OrderStatus(client_order_id="td1", quantity=Decimal(1), state=S.UNKNOWN)
    assert transition(order, S.NEVER_PLACED).state is S.NEVER_PLACED
    with pytest.raises(IllegalOrderTransition):
        transition(order, S.SENDING)  # never resent
    with pytest.raises(IllegalOrderTransition):
        transition(OrderStatus(client_order_id="td2", quantity=Decimal(1)), S.OPEN)


def test_filled_needs_the_whole_quantity_and_overfill_is_refused() -> None:
    order = OrderStatus(client_order_id="td1", quantity=Decimal(1), state=S.OPEN)
    with pytest.raises(IllegalOrderTransition, match="filled 0 of 1"):
        transition(order, S.FILLED)
    with pytest.raises(IllegalOrderTransition, match="would fill"):
        apply_fill(order, Decimal(2), Decimal(1))


def test_a_fill_that_raced_the_cancel_is_kept_without_leaving_canceled() -> None:
    order = OrderStatus(client_order_id="td1", quantity=Decimal(3), state=S.CANCELED)
    after = apply_fill(order, Decimal(1), Decimal(10))
    assert after.state is S.CANCELED
    assert after.filled_quantity == 1


# -- properties ---------------------------------------------------------------------------------

_quantities = st.decimals(min_value=Decimal("0.001"), max_value=Decimal(5), places=3)
_prices = st.decimals(min_value=Decimal(1), max_value=Decimal(1000), places=2)
_steps = st.lists(
    st.one_of(
        st.tuples(st.just("to"), st.sampled_from(list(OrderState))),
        st.tuples(st.just("fill"), st.tuples(_quantities, _prices)),
    ),
    max_size=30,
)


@settings(max_examples=400, deadline=None)
@given(quantity=_quantities, steps=_steps)
def test_random_event_sequences_keep_the_invariants(
    quantity: Decimal, steps: list[tuple[str, object]]
) -> None:
    order = OrderStatus(client_order_id="td1", quantity=quantity)
    applied_fills: list[tuple[Decimal, Decimal]] = []
    for kind, payload in steps:
        before = order
        try:
            if kind == "to":
                assert isinstance(payload, OrderState)
                order = transition(order, payload)
            else:
                assert isinstance(payload, tuple)
                fill_quantity, fill_price = payload
                order = apply_fill(order, fill_quantity, fill_price)
                applied_fills.append((fill_quantity, fill_price))
        except IllegalOrderTransition:
            assert order == before  # a refused step changes nothing
            continue
        # No terminal downgrade: a terminal state is never left.
        if before.terminal:
            assert order.state is before.state
        # The filled quantity only grows, never past the quantity.
        assert order.filled_quantity >= before.filled_quantity
        assert order.filled_quantity <= order.quantity
        # The sum of fills is the order's filled quantity; the average is their weighted mean.
        assert sum((q for q, _ in applied_fills), Decimal(0)) == order.filled_quantity
        if applied_fills:
            value = sum((q * p for q, p in applied_fills), Decimal(0))
            assert abs(order.average_price - value / order.filled_quantity) < Decimal("1e-20")  # type: ignore[operator]
        if order.state is S.FILLED:
            assert order.filled_quantity == order.quantity
