"""The account reconciliation's diff (pure): every difference found, nothing else, and what
each means."""

from __future__ import annotations

from decimal import Decimal

from hypothesis import given
from hypothesis import strategies as st

from tests.execution._doubles import BTCUSDT
from tradingd.execution.audit import (
    Facts,
    Finding,
    Kind,
    OrderFact,
    Outcome,
    Trigger,
    compare,
    outcome,
    summary,
    tolerances,
)
from tradingd.execution.orders import OrderState
from tradingd.execution.risk import InstrumentInfo
from tradingd.strategies.api import InstrumentRules

S = OrderState
STEPS = {"BTC": Decimal("0.001"), "USDT": Decimal("0.01")}

_ids = st.sampled_from(["td1_a", "td1_b", "td2_c", "td3_d", "xx_e", "web_f"])
_ledger_states = st.sampled_from(
    [S.OPEN, S.PARTIALLY_FILLED, S.CANCEL_PENDING, S.SENDING, S.UNKNOWN, S.INTENT]
)
_venue_states = st.sampled_from([S.OPEN, S.PARTIALLY_FILLED])
_amounts = st.decimals(min_value=-1000, max_value=1000, places=3, allow_nan=False)


def order(client_id: str, state: OrderState) -> OrderFact:
    return OrderFact(client_order_id=client_id, state=state, venue_order_id="v-" + client_id)


def facts(**changes: object) -> Facts:
    base: dict[str, object] = {
        "prefix": "td",
        "ledger_orders": [],
        "venue_orders": [],
        "expected_balances": {"BTC": Decimal(10), "USDT": Decimal(1000)},
        "venue_balances": {"BTC": Decimal(10), "USDT": Decimal(1000)},
        "tolerances": STEPS,
    }
    base.update(changes)
    return Facts(**base)  # type: ignore[arg-type]


@given(
    ledger=st.dictionaries(_ids, _ledger_states, max_size=5),
    venue=st.dictionaries(_ids, _venue_states, max_size=5),
    expected=st.dictionaries(st.sampled_from(["BTC", "USDT", "ETH"]), _amounts, max_size=3),
    actual=st.dictionaries(st.sampled_from(["BTC", "USDT", "ETH"]), _amounts, max_size=3),
    held=st.dictionaries(st.sampled_from(["PERP", "FUT", "OTHER"]), _amounts, max_size=3),
    venue_held=st.dictionaries(st.sampled_from(["PERP", "FUT", "OTHER"]), _amounts, max_size=3),
)
def test_every_difference_is_found_and_nothing_else(
    ledger: dict[str, OrderState],
    venue: dict[str, OrderState],
    expected: dict[str, Decimal],
    actual: dict[str, Decimal],
    held: dict[str, Decimal],
    venue_held: dict[str, Decimal],
) -> None:
    steps = {"PERP": Decimal(10), "FUT": Decimal("0.001")}
    found = compare(
        facts(
            ledger_orders=[order(c, s) for c, s in ledger.items()],
            venue_orders=[order(c, s) for c, s in venue.items()],
            expected_balances=expected,
            venue_balances=actual,
            expected_positions=held,
            venue_positions=venue_held,
            position_steps=steps,
        )
    )
    by_kind: dict[Kind, set[str]] = {kind: set() for kind in Kind}
    for finding in found:
        by_kind[finding.kind].add(finding.subject)
    assert len(found) == sum(len(v) for v in by_kind.values())  # no duplicate
    assert by_kind[Kind.FOREIGN_ORDER] == {c for c in venue if not c.startswith("td")}
    assert by_kind[Kind.UNKNOWN_ORDER] == {c for c in venue if c.startswith("td")} - set(ledger)
    assert by_kind[Kind.MISSING_AT_VENUE] == {
        c
        for c, s in ledger.items()
        if s in (S.OPEN, S.PARTIALLY_FILLED, S.CANCEL_PENDING) and c not in venue
    }
    assert by_kind[Kind.POSITION] == {
        i
        for i, step in steps.items()
        if abs(held.get(i, Decimal(0)) - venue_held.get(i, Decimal(0))) > step
    }
    # Only the currencies given a step are compared; within one step is rounding.
    assert by_kind[Kind.BALANCE] == {
        c
        for c, step in STEPS.items()
        if abs(expected.get(c, Decimal(0)) - actual.get(c, Decimal(0))) > step
    }


@given(
    kinds=st.lists(st.sampled_from(list(Kind)), max_size=4),
    trigger=st.sampled_from(list(Trigger)),
    before=st.booleans(),
)
def test_the_outcome_is_the_most_serious_finding(
    kinds: list[Kind], trigger: Trigger, before: bool
) -> None:
    findings = [Finding(kind=k, subject="x", ledger="-", venue="-") for k in kinds]
    result = outcome(findings, trigger=trigger, mismatch_before=before)
    if {Kind.UNKNOWN_ORDER, Kind.UNKNOWN_FILL} & set(kinds):
        assert result is Outcome.LOCKED
    elif {Kind.MISSING_AT_VENUE, Kind.POSITION, Kind.BALANCE} & set(kinds):
        # One mismatch at start is enough (nothing trades); while running it must persist.
        expected = Outcome.AUDITING if trigger is Trigger.STARTUP or before else Outcome.MISMATCH
        assert result is expected
    elif Kind.FOREIGN_ORDER in kinds:
        assert result is Outcome.FOREIGN
    else:
        assert result is Outcome.CLEAN


def test_a_balance_one_step_off_is_rounding_two_steps_is_a_finding() -> None:
    one_step = facts(venue_balances={"BTC": Decimal("10.001"), "USDT": Decimal("999.99")})
    assert compare(one_step) == []
    two_steps = facts(venue_balances={"BTC": Decimal("10.002"), "USDT": Decimal(1000)})
    (finding,) = compare(two_steps)
    assert finding == Finding(
        kind=Kind.BALANCE, subject="BTC", ledger="10", venue="10.002 (difference 0.002)"
    )


def test_no_baseline_compares_no_balance_and_unbooked_fills_lock() -> None:
    found = compare(
        facts(
            expected_balances=None,
            venue_balances={"BTC": Decimal(99)},
            unbooked_fills=[("t-9", "td1_x")],
        )
    )
    assert [f.kind for f in found] == [Kind.UNKNOWN_FILL]
    assert outcome(found, trigger=Trigger.PERIODIC, mismatch_before=False) is Outcome.LOCKED


def test_the_summary_names_each_finding_and_counts_foreign_orders() -> None:
    found = compare(
        facts(venue_orders=[order("web_1", S.OPEN), order("web_2", S.OPEN), order("td9_z", S.OPEN)])
    )
    text = summary(found, Outcome.LOCKED)
    assert text == (
        "locked: unknown_order td9_z: ledger not open, venue OPEN (venue id v-td9_z);"
        " 2 foreign orders left alone"
    )
    assert summary([], Outcome.CLEAN) == "clean: ledger and venue agree"


def test_steps_come_from_spot_instruments_only() -> None:
    perpetual = InstrumentInfo(
        rules=InstrumentRules(
            name="BTC-PERPETUAL",
            base="BTC",
            quote="USD",
            tick_size=Decimal("0.5"),
            step_size=Decimal(10),
            min_quantity=Decimal(10),
        ),
        spot=False,
        inverse=True,
    )
    assert tolerances([BTCUSDT, perpetual]) == {"BTC": Decimal("0.001"), "USDT": Decimal("0.01")}
    assert tolerances([perpetual]) == {}
