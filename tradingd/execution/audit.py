"""Account reconciliation, the pure part: what the ledger says against what the venue says.

The executor gathers the facts (its non-terminal orders, the venue's open orders, the balances
it expects and the venue's) and ``compare`` lists the findings; ``outcome`` says what they
mean. No I/O here: the executor does the asking, ``tradingd.execution.audit_store`` the
recording.

* an open order at the venue under our client-id prefix that the ledger does not hold open ->
  ``unknown_order``: LOCKED at once (something sent it that the ledger never recorded);
* a fill at the venue of an order of ours the ledger does not know, or that it refuses ->
  ``unknown_fill``: LOCKED at once;
* an open order of another client of the account -> ``foreign_order``: left alone, reported;
* an order the ledger holds open that the venue does not list -> ``missing_at_venue``;
* a derivative's position differing by more than one quantity step -> ``position``;
* a balance differing by more than one step of the currency -> ``balance``. Only the
  currencies of spot instruments are compared: a derivatives account's balance also moves with
  funding and settlement, which no fill records.

The last two are mismatches: at start (nothing trades yet, every fill is booked) one is enough
for AUDITING; while running, an order or a fill may be in flight between the two reads, so a
mismatch must be seen on two consecutive runs.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping
from decimal import Decimal
from typing import TYPE_CHECKING

import msgspec

from tradingd.execution.orders import OrderState

if TYPE_CHECKING:  # risk reads the configuration, which imports the desk, which imports this
    from tradingd.execution.risk import InstrumentInfo

S = OrderState
# Ledger states the venue must list as open. SENDING and UNKNOWN are not compared: their
# outcome is being asked for; INTENT was never sent.
OPEN_AT_VENUE = frozenset({S.OPEN, S.PARTIALLY_FILLED, S.CANCEL_PENDING})


class Kind(enum.StrEnum):
    UNKNOWN_ORDER = "unknown_order"
    UNKNOWN_FILL = "unknown_fill"
    FOREIGN_ORDER = "foreign_order"
    MISSING_AT_VENUE = "missing_at_venue"
    POSITION = "position"
    BALANCE = "balance"


LOCKING = frozenset({Kind.UNKNOWN_ORDER, Kind.UNKNOWN_FILL})
MISMATCH = frozenset({Kind.MISSING_AT_VENUE, Kind.POSITION, Kind.BALANCE})


class Outcome(enum.StrEnum):
    CLEAN = "clean"  # nothing differs
    FOREIGN = "foreign"  # only orders of other clients: left alone, reported
    MISMATCH = "mismatch"  # a mismatch seen once while running: the next run decides
    FAILED = "failed"  # the venue could not be read while running: nothing was compared
    AUDITING = "auditing"  # the exchange goes AUDITING
    LOCKED = "locked"  # the exchange is locked


class Trigger(enum.StrEnum):
    STARTUP = "startup"
    PERIODIC = "periodic"
    RECONNECT = "reconnect"
    ON_DEMAND = "on_demand"


class Finding(msgspec.Struct, frozen=True, kw_only=True):
    kind: Kind
    subject: str  # a client order id, a trade id or a currency
    ledger: str  # what the ledger says ("-": nothing)
    venue: str  # what the venue says ("-": nothing)

    def text(self) -> str:
        return f"{self.kind.value} {self.subject}: ledger {self.ledger}, venue {self.venue}"


class OrderFact(msgspec.Struct, frozen=True, kw_only=True):
    """One order as either side lists it."""

    client_order_id: str
    state: OrderState
    venue_order_id: str = ""


class Facts(msgspec.Struct, frozen=True, kw_only=True):
    prefix: str  # our client ids start with it
    ledger_orders: list[OrderFact]  # every non-terminal order of the exchange in the ledger
    venue_orders: list[OrderFact]  # every open order the venue lists for the account
    # None: nothing to compare the balances with (the very first reconciliation).
    expected_balances: dict[str, Decimal] | None
    venue_balances: dict[str, Decimal]
    # The currencies compared, each with its step (a difference up to it is rounding).
    tolerances: dict[str, Decimal] = {}
    # Signed net position per derivative instrument (the ledger's fills; the venue's), and
    # each instrument compared with its quantity step.
    expected_positions: dict[str, Decimal] = {}
    venue_positions: dict[str, Decimal] = {}
    position_steps: dict[str, Decimal] = {}
    # Fills the venue has that the ledger could not book: (trade id, client order id).
    unbooked_fills: list[tuple[str, str]] = []


class Report(msgspec.Struct, frozen=True, kw_only=True):
    """One reconciliation of one exchange: what was compared, what differed, what it meant."""

    exchange: str
    trigger: Trigger
    outcome: Outcome
    summary: str
    findings: list[Finding] = []
    fills_booked: int = 0  # fills the venue had and the ledger did not, booked now
    open_orders: int = 0  # our open orders at the venue
    venue_balances: dict[str, Decimal] = {}
    fill_watermark: int = 0  # the ledger's last fill id when the balances were read
    baseline: bool = False  # the venue balances agree with the ledger up to the watermark
    at_us: int = 0

    @property
    def clean(self) -> bool:
        return self.outcome in (Outcome.CLEAN, Outcome.FOREIGN)


def tolerances(instruments: Iterable[InstrumentInfo]) -> dict[str, Decimal]:
    """One step per currency: the quantity step where it is a spot base, the price tick where
    it is a spot quote (the smallest when several instruments give one)."""
    steps: dict[str, Decimal] = {}
    for info in instruments:
        if info.inverse or not info.spot:
            continue
        rules = info.rules
        for currency, step in ((rules.base, rules.step_size), (rules.quote, rules.tick_size)):
            if step > 0:
                steps[currency] = min(step, steps.get(currency, step))
    return steps


def position_steps(instruments: Mapping[str, InstrumentInfo]) -> dict[str, Decimal]:
    """The quantity step of every derivative instrument: their positions are compared."""
    return {name: info.rules.step_size for name, info in instruments.items() if not info.spot}


def compare(facts: Facts) -> list[Finding]:
    """Every difference between the ledger and the venue, in a stable order."""
    findings: list[Finding] = []
    ledger = {o.client_order_id: o for o in facts.ledger_orders}
    venue = {o.client_order_id: o for o in facts.venue_orders}
    for client_id in sorted(venue):
        order = venue[client_id]
        if not client_id.startswith(facts.prefix):
            findings.append(
                Finding(
                    kind=Kind.FOREIGN_ORDER,
                    subject=client_id or f"(no client id, venue id {order.venue_order_id})",
                    ledger="-",
                    venue=f"{order.state.value} (venue id {order.venue_order_id})",
                )
            )
        elif client_id not in ledger:
            findings.append(
                Finding(
                    kind=Kind.UNKNOWN_ORDER,
                    subject=client_id,
                    ledger="not open",
                    venue=f"{order.state.value} (venue id {order.venue_order_id})",
                )
            )
    for client_id in sorted(ledger):
        order = ledger[client_id]
        if order.state in OPEN_AT_VENUE and client_id not in venue:
            findings.append(
                Finding(
                    kind=Kind.MISSING_AT_VENUE,
                    subject=client_id,
                    ledger=order.state.value,
                    venue="not open",
                )
            )
    for trade_id, client_id in sorted(facts.unbooked_fills):
        findings.append(
            Finding(
                kind=Kind.UNKNOWN_FILL,
                subject=trade_id,
                ledger="not booked",
                venue=f"a fill of {client_id or '(no client id)'}",
            )
        )
    findings += _beyond_step(
        Kind.POSITION, facts.position_steps, facts.expected_positions, facts.venue_positions
    )
    if facts.expected_balances is not None:
        findings += _beyond_step(
            Kind.BALANCE, facts.tolerances, facts.expected_balances, facts.venue_balances
        )
    return findings


def _beyond_step(
    kind: Kind,
    steps: Mapping[str, Decimal],
    expected: Mapping[str, Decimal],
    venue: Mapping[str, Decimal],
) -> list[Finding]:
    """A finding for each subject whose venue figure differs from the expected one by more than
    its step."""
    findings = []
    for subject, step in sorted(steps.items()):
        want = expected.get(subject, Decimal(0))
        have = venue.get(subject, Decimal(0))
        if abs(want - have) > step:
            findings.append(
                Finding(
                    kind=kind,
                    subject=subject,
                    ledger=_number(want),
                    venue=f"{_number(have)} (difference {_number(have - want)})",
                )
            )
    return findings


def outcome(findings: Iterable[Finding], *, trigger: Trigger, mismatch_before: bool) -> Outcome:
    """What the findings mean: locking ones lock; a mismatch means AUDITING at start, or when
    the run before saw one too; only foreign orders are reported and left alone."""
    kinds = {f.kind for f in findings}
    if kinds & LOCKING:
        return Outcome.LOCKED
    if kinds & MISMATCH:
        if trigger is Trigger.STARTUP or mismatch_before:
            return Outcome.AUDITING
        return Outcome.MISMATCH
    if Kind.FOREIGN_ORDER in kinds:
        return Outcome.FOREIGN
    return Outcome.CLEAN


def summary(findings: Iterable[Finding], result: Outcome) -> str:
    """One line: the outcome, then each finding (foreign orders counted)."""
    found = list(findings)
    foreign = sum(1 for f in found if f.kind is Kind.FOREIGN_ORDER)
    shown = [f.text() for f in found if f.kind is not Kind.FOREIGN_ORDER]
    if foreign:
        shown.append(f"{foreign} foreign order{'s' if foreign != 1 else ''} left alone")
    return f"{result.value}: " + ("; ".join(shown) if shown else "ledger and venue agree")


def expected_balances(
    baseline: Mapping[str, Decimal], since: Mapping[str, Decimal]
) -> dict[str, Decimal]:
    """A baseline's venue balances plus what the fills booked since changed."""
    total = dict(baseline)
    for currency, change in since.items():
        total[currency] = total.get(currency, Decimal(0)) + change
    return total


def _number(value: Decimal) -> str:
    text = format(value.normalize(), "f")
    return "0" if text in ("-0", "") else text
