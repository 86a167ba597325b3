"""The order state machine: the states, ONE table of legal transitions, and fills.

Pure: no I/O. The ledger persists what these functions return and the executor acts on it.
Rules (each enforced here and nowhere else):

* nothing leaves a terminal state;
* the filled quantity only grows, never past the order's quantity, and equals the sum of fills;
* FILLED means filled quantity == quantity;
* an illegal transition raises ``IllegalOrderTransition`` (the caller logs it and applies
  nothing: the order is then reconciled with the venue, never guessed).
"""

from __future__ import annotations

import enum
from decimal import Decimal

import msgspec


class OrderState(enum.StrEnum):
    INTENT = "INTENT"  # durable, not yet claimed for sending
    SENDING = "SENDING"  # claimed by one sender; the request may be on the wire
    OPEN = "OPEN"
    PARTIALLY_FILLED = "PARTIALLY_FILLED"
    FILLED = "FILLED"
    CANCEL_PENDING = "CANCEL_PENDING"
    CANCELED = "CANCELED"
    REJECTED = "REJECTED"  # the venue's definitive no
    UNKNOWN = "UNKNOWN"  # no definitive outcome (timeout, 5xx, disconnect): ask the venue
    NEVER_PLACED = "NEVER_PLACED"  # the venue proved it never had it (or it was never sent)
    DENIED = "DENIED"  # refused locally after the intent was written (gate closed at send)


S = OrderState

TERMINAL_STATES: frozenset[OrderState] = frozenset(
    {S.FILLED, S.CANCELED, S.REJECTED, S.NEVER_PLACED, S.DENIED}
)

# from-state -> the states it may move to. The one table of legal transitions.
LEGAL_TRANSITIONS: dict[OrderState, frozenset[OrderState]] = {
    S.INTENT: frozenset({S.SENDING, S.NEVER_PLACED, S.DENIED}),
    S.SENDING: frozenset(
        {S.OPEN, S.PARTIALLY_FILLED, S.FILLED, S.CANCELED, S.REJECTED, S.UNKNOWN, S.NEVER_PLACED}
    ),
    S.OPEN: frozenset({S.PARTIALLY_FILLED, S.FILLED, S.CANCEL_PENDING, S.CANCELED, S.UNKNOWN}),
    S.PARTIALLY_FILLED: frozenset(
        {S.PARTIALLY_FILLED, S.FILLED, S.CANCEL_PENDING, S.CANCELED, S.UNKNOWN}
    ),
    # A rejected cancel is not terminal: the order is open again (or filled: FILLED wins).
    S.CANCEL_PENDING: frozenset(
        {S.CANCEL_PENDING, S.CANCELED, S.FILLED, S.OPEN, S.PARTIALLY_FILLED, S.UNKNOWN}
    ),
    # Resolved only by the venue's word (a stream event or a query by client id).
    S.UNKNOWN: frozenset(
        {S.OPEN, S.PARTIALLY_FILLED, S.FILLED, S.CANCELED, S.REJECTED, S.NEVER_PLACED}
    ),
    S.FILLED: frozenset(),
    S.CANCELED: frozenset(),
    S.REJECTED: frozenset(),
    S.NEVER_PLACED: frozenset(),
    S.DENIED: frozenset(),
}

# States in which the venue may have the order (it can fill, it must be cancelled on stop).
LIVE_STATES: frozenset[OrderState] = frozenset(
    {S.SENDING, S.OPEN, S.PARTIALLY_FILLED, S.CANCEL_PENDING, S.UNKNOWN}
)
# A fill may still arrive for an order in these states (CANCELED: a fill that raced the cancel).
FILLABLE_STATES: frozenset[OrderState] = LIVE_STATES | {S.CANCELED}


class IllegalOrderTransition(Exception):
    def __init__(self, client_order_id: str, current: OrderState, wanted: str, why: str) -> None:
        super().__init__(f"order {client_order_id}: {current} -> {wanted} refused: {why}")
        self.client_order_id = client_order_id
        self.current = current
        self.wanted = wanted
        self.why = why


class OrderStatus(msgspec.Struct, frozen=True, kw_only=True):
    """The mutable part of an order, as the state machine sees it."""

    client_order_id: str
    quantity: Decimal
    state: OrderState = OrderState.INTENT
    filled_quantity: Decimal = Decimal(0)
    average_price: Decimal | None = None

    @property
    def terminal(self) -> bool:
        return self.state in TERMINAL_STATES

    @property
    def remaining(self) -> Decimal:
        return self.quantity - self.filled_quantity


def is_legal(current: OrderState, wanted: OrderState) -> bool:
    return wanted in LEGAL_TRANSITIONS[current]


def transition(order: OrderStatus, wanted: OrderState) -> OrderStatus:
    """``order`` moved to ``wanted``; raises ``IllegalOrderTransition`` when the table says no."""
    if not is_legal(order.state, wanted):
        why = "terminal state" if order.terminal else "not in the transition table"
        raise IllegalOrderTransition(order.client_order_id, order.state, wanted, why)
    if wanted is S.FILLED and order.filled_quantity != order.quantity:
        raise IllegalOrderTransition(
            order.client_order_id,
            order.state,
            wanted,
            f"filled {order.filled_quantity} of {order.quantity}",
        )
    if wanted is S.PARTIALLY_FILLED and order.filled_quantity <= 0:
        raise IllegalOrderTransition(order.client_order_id, order.state, wanted, "nothing filled")
    return msgspec.structs.replace(order, state=wanted)


def apply_fill(order: OrderStatus, quantity: Decimal, price: Decimal) -> OrderStatus:
    """``order`` after one fill: the filled quantity grows, the average price is the
    quantity-weighted mean, and the state follows (FILLED when complete; a partial fill moves
    OPEN/SENDING/UNKNOWN to PARTIALLY_FILLED; CANCEL_PENDING and CANCELED stay)."""
    if quantity <= 0 or price <= 0:
        raise IllegalOrderTransition(
            order.client_order_id, order.state, "fill", f"fill {quantity} @ {price} not positive"
        )
    if order.state not in FILLABLE_STATES:
        raise IllegalOrderTransition(
            order.client_order_id, order.state, "fill", "no fill possible in this state"
        )
    filled = order.filled_quantity + quantity
    if filled > order.quantity:
        raise IllegalOrderTransition(
            order.client_order_id,
            order.state,
            "fill",
            f"would fill {filled} of {order.quantity}",
        )
    previous_value = (order.average_price or Decimal(0)) * order.filled_quantity
    average = (previous_value + price * quantity) / filled
    state = order.state
    if filled == order.quantity and state is not S.CANCELED:
        state = S.FILLED
    elif state in (S.SENDING, S.OPEN, S.UNKNOWN):
        state = S.PARTIALLY_FILLED
    return msgspec.structs.replace(
        order, state=state, filled_quantity=filled, average_price=average
    )
