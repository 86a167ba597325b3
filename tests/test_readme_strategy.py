"""The README's strategy example is complete and does what it says."""

from __future__ import annotations

import re
import sys
import types
from decimal import Decimal
from pathlib import Path

import msgspec
import pytest

from tests.strategy_doubles import MemoryContext, bar
from tradingd.model import MarketType, Trade
from tradingd.strategies.api import OrderType, Side, Strategy

README = Path(__file__).resolve().parents[1] / "README.md"
D = Decimal


def _example(monkeypatch: pytest.MonkeyPatch) -> types.ModuleType:
    text = README.read_text()
    match = re.search(r"```python\n(# my_strategies/dip\.py\n.*?)```", text, re.DOTALL)
    assert match, "the README lost its strategy example"
    module = types.ModuleType("dip_example")
    # Registered, as an imported module is: msgspec resolves annotations through it.
    monkeypatch.setitem(sys.modules, module.__name__, module)
    exec(compile(match[1], "README.md:dip.py", "exec"), module.__dict__)
    return module


def _trade(price: str) -> Trade:
    return Trade(
        exchange="binance",
        instrument_name="BTCUSDT",
        market_type=MarketType.SPOT,
        trade_id="1",
        trade_seq=1,
        price_text=str(D(price)),
        quantity_text=str(D(1)),
        is_buyer_maker=False,
        trade_us=0,
        received_us=0,
    )


def test_the_readme_example_buys_the_dip_and_sells_it_higher(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    module = _example(monkeypatch)
    cls = module.Dip
    assert issubclass(cls, Strategy)
    params = msgspec.convert({"dip": "0.02", "size": "0.0005"}, cls.Params, strict=True)
    ctx = MemoryContext()
    strategy = cls(ctx, params)
    ctx.strategy = strategy
    strategy.on_start()
    strategy.on_trade(_trade("90"))  # no closed bar yet
    strategy.on_bar(bar("100", 1))
    strategy.on_trade(_trade("99"))  # only 1 % down
    assert ctx.submitted == []
    strategy.on_trade(_trade("97.9"))
    strategy.on_trade(_trade("97.5"))  # the entry is still working
    [entry] = ctx.submitted
    assert (entry.side, entry.type, entry.quantity) == (Side.BUY, OrderType.MARKET, D("0.0005"))
    ctx.fill("td1", D("0.0005"), D(98))
    exit_ = ctx.submitted[-1]
    assert (exit_.side, exit_.price, exit_.quantity) == (Side.SELL, D("98.49"), D("0.0005"))
