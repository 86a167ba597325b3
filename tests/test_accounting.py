"""Accounting: average cost, crossing zero, inverse contracts, fees, and replay == live."""

from __future__ import annotations

from decimal import Decimal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tradingd.execution.accounting import Book, FillRecord
from tradingd.strategies.api import Side

D = Decimal


def fill(
    side: str,
    quantity: str,
    price: str,
    *,
    trade_id: str,
    strategy: str = "s1",
    instrument: str = "BTCUSDT",
    fee: str = "0",
    fee_currency: str = "USDT",
    inverse: bool = False,
    exchange: str = "binance",
) -> FillRecord:
    return FillRecord(
        strategy=strategy,
        exchange=exchange,
        instrument=instrument,
        base="BTC",
        quote="USDT" if not inverse else "USD",
        side=Side(side),
        quantity=D(quantity),
        price=D(price),
        fee=D(fee),
        fee_currency=fee_currency,
        trade_id=trade_id,
        at_us=0,
        inverse=inverse,
    )


def test_average_cost_then_partial_close_realises_against_the_average() -> None:
    book = Book({"USDT": D(10000)})
    book.apply(fill("buy", "1", "100", trade_id="1", fee="0.1"))
    book.apply(fill("buy", "1", "200", trade_id="2", fee="0.2"))
    pos = book.position("s1", "BTCUSDT")
    assert pos.quantity == D(2) and pos.average_price == D(150)
    book.apply(fill("sell", "0.5", "170", trade_id="3", fee="0.085"))
    pos = book.position("s1", "BTCUSDT")
    assert pos.quantity == D("1.5")
    assert pos.average_price == D(150)
    assert pos.realised_pnl == D(10)  # 0.5 * (170 - 150)
    assert book.realised_pnl() == {"USDT": D(10)}
    assert book.fees("s1") == {"USDT": D("0.385")}
    assert book.balances() == {"USDT": D(10000) - 300 + 85 - D("0.385"), "BTC": D("1.5")}
    assert book.unrealised_pnl({"BTCUSDT": D(160)}) == {"USDT": D(15)}


def test_a_fill_that_crosses_zero_closes_then_opens_at_its_price() -> None:
    book = Book()
    book.apply(fill("buy", "1", "100", trade_id="1"))
    book.apply(fill("sell", "3", "90", trade_id="2"))
    pos = book.position("s1", "BTCUSDT")
    assert pos.quantity == D(-2)
    assert pos.average_price == D(90)
    assert pos.realised_pnl == D(-10)
    # The short gains when the price falls.
    assert book.unrealised_pnl({"BTCUSDT": D(80)}) == {"USDT": D(20)}
    book.apply(fill("buy", "2", "85", trade_id="3"))
    pos = book.position("s1", "BTCUSDT")
    assert pos.quantity == 0 and pos.average_price is None
    assert pos.realised_pnl == D(0)  # -10 + 2 * (90 - 85)


def test_a_duplicate_trade_id_is_applied_once() -> None:
    book = Book()
    assert book.apply(fill("buy", "1", "100", trade_id="7"))
    assert not book.apply(fill("buy", "1", "100", trade_id="7"))
    assert book.position("s1", "BTCUSDT").quantity == D(1)
    # The same trade id on another exchange is another trade.
    assert book.apply(fill("buy", "1", "100", trade_id="7", exchange="deribit"))


def test_inverse_contract_pnl_is_in_the_base_currency() -> None:
    book = Book({"BTC": D(1)})
    kw = {"instrument": "BTC-PERPETUAL", "inverse": True, "fee_currency": "BTC"}
    book.apply(fill("buy", "10000", "50000", trade_id="a", **kw))  # type: ignore[arg-type]
    book.apply(fill("sell", "10000", "40000", trade_id="b", fee="0.0001", **kw))  # type: ignore[arg-type]
    # 10000 USD long from 50k to 40k: 10000/50000 - 10000/40000 = -0.05 BTC
    assert book.realised_pnl() == {"BTC": D("-0.05")}
    assert book.balances() == {"BTC": D(1) - D("0.05") - D("0.0001")}
    assert "USD" not in book.balances()


def test_strategies_are_accounted_apart() -> None:
    book = Book()
    book.apply(fill("buy", "1", "100", trade_id="1", strategy="a"))
    book.apply(fill("sell", "1", "100", trade_id="2", strategy="b"))
    assert book.position("a", "BTCUSDT").quantity == D(1)
    assert book.position("b", "BTCUSDT").quantity == D(-1)
    assert [name for name, _ in book.positions()] == ["a", "b"]
    assert book.position("c", "BTCUSDT").quantity == 0


def test_a_non_positive_fill_is_refused() -> None:
    with pytest.raises(ValueError, match="positive"):
        Book().apply(fill("buy", "0", "100", trade_id="1"))


# -- properties -------------------------------------------------------------------------------

_prices = st.decimals(min_value=D("0.01"), max_value=D(100000), places=2)
_quantities = st.decimals(min_value=D("0.001"), max_value=D(50), places=3)


@st.composite
def _fills(draw: st.DrawFn) -> list[FillRecord]:
    count = draw(st.integers(min_value=0, max_value=40))
    records = []
    for i in range(count):
        inverse = draw(st.booleans())
        records.append(
            fill(
                draw(st.sampled_from(["buy", "sell"])),
                str(draw(_quantities)),
                str(draw(_prices)),
                trade_id=str(draw(st.integers(min_value=0, max_value=count + 5)) if i % 3 else i),
                strategy=draw(st.sampled_from(["a", "b"])),
                instrument="BTC-PERPETUAL" if inverse else draw(st.sampled_from(["X", "Y"])),
                inverse=inverse,
                fee=str(draw(st.decimals(min_value=D("-0.1"), max_value=D(1), places=4))),
                fee_currency=draw(st.sampled_from(["USDT", "BTC", "BNB"])),
            )
        )
    return records


def _numbers(book: Book, marks: dict[str, Decimal]) -> object:
    return (
        book.positions(),
        book.balances(),
        book.realised_pnl(),
        book.realised_pnl("a"),
        book.fees(),
        book.fees("b"),
        book.unrealised_pnl(marks),
    )


@settings(max_examples=300, deadline=None)
@given(_fills(), st.integers(min_value=0, max_value=40), _prices)
def test_replay_of_the_ledger_equals_live_accounting(
    fills: list[FillRecord], restart_at: int, mark: Decimal
) -> None:
    """Live: fills applied one by one, duplicates included (the stream and a query may both
    report one). Ledger: what the fills table holds (unique per (exchange, trade_id), in
    insertion order). Restart: replay the ledger so far, then go on live."""
    start = {"USDT": D(1000), "BTC": D(2)}
    live = Book(start)
    ledger = [f for f in fills if live.apply(f)]
    restart_at = min(restart_at, len(fills))
    restarted = Book.replay([f for f in ledger if f in fills[:restart_at]], start)
    # What the restarted process sees next may repeat what it already has.
    for f in fills[restart_at:]:
        restarted.apply(f)
    marks = {"X": mark, "Y": mark + 1, "BTC-PERPETUAL": mark}
    replayed = Book.replay(ledger, start)
    assert _numbers(replayed, marks) == _numbers(live, marks)
    assert _numbers(restarted, marks) == _numbers(live, marks)


@settings(max_examples=300, deadline=None)
@given(_fills(), _prices)
def test_position_is_the_signed_sum_of_fills_and_pnl_is_conserved(
    fills: list[FillRecord], mark: Decimal
) -> None:
    book = Book()
    applied = [f for f in fills if book.apply(f)]
    for strategy in ("a", "b"):
        for instrument in ("X", "Y", "BTC-PERPETUAL"):
            mine = [f for f in applied if f.strategy == strategy and f.instrument == instrument]
            signed = sum((f.quantity if f.side is Side.BUY else -f.quantity for f in mine), D(0))
            position = book.position(strategy, instrument)
            assert position.quantity == signed
            # Realised + unrealised at a mark == the cash flow of closing everything there.
            inverse = instrument == "BTC-PERPETUAL"
            if inverse:
                cash = (
                    sum(
                        (
                            (f.quantity if f.side is Side.BUY else -f.quantity) / f.price
                            for f in mine
                        ),
                        D(0),
                    )
                    - signed / mark
                )
            else:
                cash = (
                    sum(
                        (
                            (-f.quantity if f.side is Side.BUY else f.quantity) * f.price
                            for f in mine
                        ),
                        D(0),
                    )
                    + signed * mark
                )
            currency = "BTC" if inverse else "USDT"
            unrealised = book.unrealised_pnl({instrument: mark}, strategy).get(currency, D(0))
            total = position.realised_pnl + unrealised
            assert abs(total - cash) <= D("1e-15") * (1 + abs(cash))


def _reference(fills: list[FillRecord]) -> dict[tuple[str, str], tuple[Decimal, Decimal, Decimal]]:
    """An independent formulation by cost basis: (strategy, instrument) -> (quantity, average,
    realised). Linear: cost = sum(q * price); inverse: cost = sum(q / price)."""
    book: dict[tuple[str, str], list[Decimal]] = {}
    seen: set[tuple[str, str]] = set()
    for f in fills:
        if (f.exchange, f.trade_id) in seen:
            continue
        seen.add((f.exchange, f.trade_id))
        q, cost, realised = book.setdefault((f.strategy, f.instrument), [D(0), D(0), D(0)])
        sign = 1 if f.side is Side.BUY else -1
        size = f.quantity

        def basis(n: Decimal, f: FillRecord = f) -> Decimal:
            return n / f.price if f.inverse else n * f.price

        if q == 0 or (q > 0) == (sign > 0):
            q, cost = q + sign * size, cost + basis(size)
        else:
            closed = min(size, abs(q))
            closed_cost = cost * closed / abs(q)
            # What the closed part earned had it been long (inverse: coins paid at entry
            # less coins back at exit).
            gain = closed_cost - closed / f.price if f.inverse else closed * f.price - closed_cost
            realised += gain if q > 0 else -gain
            cost -= closed_cost
            q += sign * closed
            if size > closed:
                q, cost = sign * (size - closed), basis(size - closed)
        book[(f.strategy, f.instrument)] = [q, cost, realised]
    result = {}
    for key, (q, cost, realised) in book.items():
        inverse = key[1] == "BTC-PERPETUAL"
        average = D(0) if q == 0 else (abs(q) / cost if inverse else cost / abs(q))
        result[key] = (q, average, realised)
    return result


@settings(max_examples=300, deadline=None)
@given(_fills())
def test_average_cost_agrees_with_a_cost_basis_reference(fills: list[FillRecord]) -> None:
    book = Book.replay(fills)
    for (strategy, instrument), (quantity, average, realised) in _reference(fills).items():
        position = book.position(strategy, instrument)
        assert position.quantity == quantity
        assert abs((position.average_price or D(0)) - average) <= D("1e-12") * (1 + average)
        assert abs(position.realised_pnl - realised) <= D("1e-12") * (1 + abs(realised))
