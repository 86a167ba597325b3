"""The strategy host: routing by symbol, isolation of a raising strategy, timers, pause/resume,
and the [[strategies]] configuration (validated on load, built by the host)."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from decimal import Decimal
from pathlib import Path

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.strategy_doubles import BTCUSDT, MemoryContext, bar, ticker
from tradingd.config import ConfigError, StrategyConfig, load_config, parse_config
from tradingd.execution.strategy_host import StrategyHost
from tradingd.model import Bar, MarketType, Ticker, Trade
from tradingd.strategies.api import Side, Strategy, SystemEvent
from tradingd.strategies.grid import Grid, GridParams
from tradingd.strategies.sma_cross import SmaCross

D = Decimal


class Recorder(Strategy):
    def __init__(self, ctx: MemoryContext, params: object, *, explode_on: str = "") -> None:
        super().__init__(ctx, params)
        self.seen: list[tuple[str, object]] = []
        self.explode_on = explode_on

    def _note(self, what: str, item: object) -> None:
        if what == self.explode_on:
            raise RuntimeError(f"boom in {what}")
        self.seen.append((what, item))

    def on_start(self) -> None:
        self._note("start", None)

    def on_bar(self, bar: Bar) -> None:
        self._note("bar", bar.instrument_name)

    def on_ticker(self, ticker: Ticker) -> None:
        self._note("ticker", ticker.instrument_name)

    def on_trade(self, trade: Trade) -> None:
        self._note("trade", (trade.instrument_name, trade.trade_seq))

    def on_system_event(self, event: SystemEvent) -> None:
        self._note("event", event.instrument)

    def on_timer(self, name: str, now_us: int) -> None:
        self._note("timer", (name, now_us))


def _entry(name: str, symbols: list[str]) -> StrategyConfig:
    return StrategyConfig(name=name, strategy="recorder", exchange="binance", symbols=symbols)


def _host(
    *strategies: tuple[str, list[str], Recorder],
) -> tuple[StrategyHost, list[tuple[str, str]]]:
    paused: list[tuple[str, str]] = []
    host = StrategyHost(
        "binance",
        [(_entry(name, symbols), strategy) for name, symbols, strategy in strategies],
        on_pause=lambda name, reason: paused.append((name, reason)),
    )
    return host, paused


def test_market_data_goes_to_the_strategies_of_its_instrument() -> None:
    a, b = Recorder(MemoryContext(), None), Recorder(MemoryContext(), None)
    host, _ = _host(("a", ["BTCUSDT"], a), ("b", ["ETHUSDT", "BTCUSDT"], b))
    host.on_bars([bar("1", 1, instrument="ETHUSDT"), bar("1", 2)])
    host.on_tickers([ticker("1", "2", "XRPUSDT")])
    host.on_system_event(
        SystemEvent(
            kind="volume_anomaly", exchange="binance", instrument="ETHUSDT", detail={}, at_us=0
        )
    )
    host.on_system_event(
        SystemEvent(kind="volume_anomaly", exchange="binance", instrument="", detail={}, at_us=0)
    )
    assert a.seen == [("bar", "BTCUSDT"), ("event", "")]
    assert b.seen == [("bar", "ETHUSDT"), ("bar", "BTCUSDT"), ("event", "ETHUSDT"), ("event", "")]


def trade(instrument: str, seq: int) -> Trade:
    return Trade(
        exchange="binance",
        instrument_name=instrument,
        market_type=MarketType.SPOT,
        trade_id=str(seq),
        trade_seq=seq,
        price_text="1",
        quantity_text="1",
        is_buyer_maker=False,
        trade_us=seq,
        received_us=seq,
    )


def test_trades_reach_the_strategies_of_their_instrument_in_batch_order() -> None:
    a, b = Recorder(MemoryContext(), None), Recorder(MemoryContext(), None)
    host, _ = _host(("a", ["BTCUSDT"], a), ("b", ["ETHUSDT", "BTCUSDT"], b))
    host.on_trades([trade("XRPUSDT", 1), trade("SOLUSDT", 1)])
    # A watched instrument's only trade last in a batch of unwatched ones still arrives.
    host.on_trades([trade("XRPUSDT", 2), trade("ETHUSDT", 1)])
    host.on_trades([trade("BTCUSDT", 1), trade("XRPUSDT", 3), trade("ETHUSDT", 2)])
    assert a.seen == [("trade", ("BTCUSDT", 1))]
    assert b.seen == [
        ("trade", ("ETHUSDT", 1)),
        ("trade", ("BTCUSDT", 1)),
        ("trade", ("ETHUSDT", 2)),
    ]
    unwatched, _ = _host()
    unwatched.on_trades([trade("BTCUSDT", 4)])


def test_a_raising_strategy_is_paused_reported_and_the_others_go_on(logged: list[str]) -> None:
    bad = Recorder(MemoryContext(), None, explode_on="bar")
    good = Recorder(MemoryContext(), None)
    host, paused = _host(("bad", ["BTCUSDT"], bad), ("good", ["BTCUSDT"], good))
    host.on_bars([bar("1", 1), bar("1", 2)])
    host.on_tickers([ticker("1", "2")])
    assert paused == [("bad", "on_bar raised RuntimeError: boom in bar")]
    assert host.is_paused("bad") and not host.is_paused("good")
    assert bad.seen == []  # no ticker after the pause
    assert good.seen == [("bar", "BTCUSDT"), ("bar", "BTCUSDT"), ("ticker", "BTCUSDT")]
    [status] = [s for s in host.status() if s.name == "bad"]
    assert status.paused and "boom in bar" in status.reason
    assert any("Traceback" in line or "boom in bar" in line for line in logged)
    assert host.resume("bad")
    host.on_tickers([ticker("1", "2")])
    assert bad.seen == [("ticker", "BTCUSDT")]
    assert not host.pause("nobody", "x") and not host.resume("nobody")


def test_timers_fire_when_due_once_and_can_be_replaced_or_removed() -> None:
    rec = Recorder(MemoryContext(), None)
    host, _ = _host(("a", ["BTCUSDT"], rec))
    host.set_timer("a", "t", 1.0, now_us=0)
    host.set_timer("a", "u", 0.5, now_us=0)
    assert host.next_timer_due_us() == 500_000
    host.fire_due_timers(400_000)
    assert rec.seen == []
    host.fire_due_timers(1_000_000)
    assert rec.seen == [("timer", ("u", 1_000_000)), ("timer", ("t", 1_000_000))]
    host.fire_due_timers(5_000_000)  # late: fires once, not once per missed period
    assert len(rec.seen) == 4
    assert host.next_timer_due_us() == 5_500_000
    host.set_timer("a", "u", 0, now_us=5_000_000)
    assert host.next_timer_due_us() == 6_000_000
    host.pause("a", "operator")
    host.fire_due_timers(6_000_000)
    assert len(rec.seen) == 4  # paused: rescheduled, not called
    assert host.next_timer_due_us() == 7_000_000


def test_start_failure_pauses_only_that_strategy() -> None:
    bad = Recorder(MemoryContext(), None, explode_on="start")
    good = Recorder(MemoryContext(), None)
    host, paused = _host(("bad", ["BTCUSDT"], bad), ("good", ["BTCUSDT"], good))
    host.start()
    assert [name for name, _ in paused] == ["bad"]
    assert good.seen == [("start", None)]


# -- configuration ----------------------------------------------------------------------------

EXCHANGE = """
[exchanges.binance]
ws_url = "wss://stream.binance.com:9443"
rest_url = "https://api.binance.com"
symbols = ["BTCUSDT", "ETHUSDT"]
"""

GOOD = (
    EXCHANGE
    + """
[[strategies]]
name = "trend"
strategy = "sma_cross"
exchange = "binance"
symbols = ["BTCUSDT"]
params = { fast = 5, slow = 20, risk_pct = 2.5 }

[[strategies]]
name = "grid-eth"
strategy = "grid"
exchange = "binance"
symbols = ["ETHUSDT"]
params = { levels = 3, spacing = "0.005", order_size = "0.01", max_inventory = "0.05" }
"""
)


def test_strategies_build_from_the_configuration(tmp_path: Path) -> None:
    path = tmp_path / "tradingd.toml"
    path.write_text(GOOD)
    config = load_config(path)
    contexts: dict[str, MemoryContext] = {}

    def make_context(entry: StrategyConfig) -> MemoryContext:
        contexts[entry.name] = MemoryContext(name=entry.name, symbols=tuple(entry.symbols))
        return contexts[entry.name]

    host = StrategyHost.build(config, "binance", make_context, lambda n, r: None)
    assert host.names() == ["trend", "grid-eth"]
    assert [(s.strategy, s.symbols) for s in host.status()] == [
        ("sma_cross", ["BTCUSDT"]),
        ("grid", ["ETHUSDT"]),
    ]
    running = host._running
    assert isinstance(running["trend"].strategy, SmaCross)
    assert running["trend"].strategy.params.risk_pct == D("2.5")
    grid = running["grid-eth"].strategy
    assert isinstance(grid, Grid) and grid.params == GridParams(
        levels=3, spacing=D("0.005"), order_size=D("0.01"), max_inventory=D("0.05")
    )
    assert StrategyHost.build(config, "deribit", make_context, lambda n, r: None).names() == []


BROKEN = [
    (GOOD.replace("fast = 5", "fast = 50"), "strategies[0].params: expected fast < slow"),
    (
        GOOD.replace("fast = 5", 'fast = "5"'),
        "strategies[0].params.fast: expected int, found str '5'",
    ),
    (
        GOOD.replace("risk_pct = 2.5", "risk_pct = 0"),
        "strategies[0].params: expected risk_pct > 0 and <= 100, found 0",
    ),
    (
        GOOD.replace("fast = 5,", "fats = 5,"),
        "strategies[0].params.fats: expected a known key, found an unknown key",
    ),
    (
        GOOD.replace('"grid-eth"', '"trend"'),
        "strategies[1].name: expected a unique name, found 'trend' again",
    ),
    (
        GOOD.replace('"grid-eth"', '"manual"'),
        "strategies[1].name: expected a name other than 'manual'",
    ),
    (
        GOOD.replace('strategy = "grid"', 'strategy = "gird"'),
        "strategies[1].strategy: expected a registered strategy (grid, sma_cross",
    ),
    (
        GOOD.replace(
            'exchange = "binance"\nsymbols = ["ETH', 'exchange = "kraken"\nsymbols = ["ETH'
        ),
        "strategies[1].exchange: expected a configured exchange (binance), found 'kraken'",
    ),
    (
        GOOD.replace('symbols = ["ETHUSDT"]\nparams', 'symbols = ["SOLUSDT"]\nparams'),
        "strategies[1].symbols[0]: expected one of exchanges.binance.symbols (BTCUSDT, ETHUSDT), found 'SOLUSDT'",
    ),
    (
        GOOD.replace('symbols = ["ETHUSDT"]\nparams', "symbols = []\nparams"),
        "strategies[1].symbols: expected array of length >= 1",
    ),
    (
        GOOD.replace('name = "trend"\n', ""),
        "strategies[0].name: expected a value (required), found nothing",
    ),
]


@pytest.mark.parametrize(("text", "expected"), BROKEN)
def test_a_bad_strategy_entry_names_file_key_and_expectation(
    tmp_path: Path, text: str, expected: str
) -> None:
    path = tmp_path / "tradingd.toml"
    path.write_text(textwrap.dedent(text))
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert str(caught.value).startswith(f"{path}: ")
    assert expected in str(caught.value)


def test_a_bad_param_exits_78_with_one_line(tmp_path: Path) -> None:
    path = tmp_path / "tradingd.toml"
    path.write_text(BROKEN[1][0])
    result = subprocess.run(
        [sys.executable, "-m", "tradingd", "--config", str(path), "config", "check"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 78
    assert result.stderr.strip().splitlines() == [
        f"tradingd: configuration error: {path}: strategies[0].params.fast: expected int, found str '5'"
    ]


def test_no_strategies_is_the_default() -> None:
    assert parse_config({}).strategies == []


def test_third_party_strategies_come_from_the_entry_point_group(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from importlib.metadata import EntryPoint

    from tradingd.strategies import registry

    group = registry.ENTRY_POINT_GROUP
    fake = [
        EntryPoint("recorder", "tests.test_strategy_host:Recorder", group),
        EntryPoint("not_one", "tests.strategy_doubles:MemoryContext", group),
    ]
    monkeypatch.setattr(registry, "entry_points", lambda group: fake)
    assert registry.available_strategies() == ["not_one", "recorder"]
    assert registry.load_strategy("recorder") is Recorder
    with pytest.raises(TypeError, match="expected a subclass of"):
        registry.load_strategy("not_one")
    with pytest.raises(registry.UnknownStrategy, match=r"\(not_one, recorder\), found 'x'"):
        registry.load_strategy("x")
    document = {
        "exchanges": {
            "binance": {"ws_url": "wss://x", "rest_url": "https://x", "symbols": ["BTCUSDT"]}
        },
        "strategies": [
            {"name": "r", "strategy": "not_one", "exchange": "binance", "symbols": ["BTCUSDT"]}
        ],
    }
    with pytest.raises(ConfigError, match=r"strategies\[0\]\.strategy: entry point .*subclass"):
        parse_config(document)
    document["strategies"][0]["strategy"] = "recorder"
    assert parse_config(document).strategies[0].strategy == "recorder"


def test_configured_strategies_trade_through_the_host(tmp_path: Path) -> None:
    """sma_cross and grid built from the configuration, fed through the host: each trades its
    own symbol, and one raising does not stop the other."""
    path = tmp_path / "tradingd.toml"
    path.write_text(GOOD.replace("fast = 5, slow = 20", "fast = 2, slow = 3"))
    eth = msgspec.structs.replace(BTCUSDT, name="ETHUSDT", base="ETH", min_notional=None)
    contexts: dict[str, MemoryContext] = {}

    def make_context(entry: StrategyConfig) -> MemoryContext:
        ctx = MemoryContext(
            name=entry.name,
            symbols=tuple(entry.symbols),
            rules={"BTCUSDT": BTCUSDT, "ETHUSDT": eth},
        )
        contexts[entry.name] = ctx
        return ctx

    paused: list[str] = []
    host = StrategyHost.build(
        load_config(path), "binance", make_context, lambda n, r: paused.append(n)
    )
    host.start()
    host.on_tickers([ticker("99.99", "100.01", "ETHUSDT"), ticker("99", "101", "BTCUSDT")])
    host.on_bars([bar(c, i) for i, c in enumerate(["100", "101", "103"])])
    trend, grid = contexts["trend"], contexts["grid-eth"]
    assert [(s.instrument, s.side) for s in trend.submitted] == [("BTCUSDT", Side.BUY)]
    assert {s.instrument for s in grid.submitted} == {"ETHUSDT"} and len(grid.submitted) == 6
    # The grid breaks: only it is paused; the trend strategy still decides.
    trend.finish("td1", "CANCELED")

    def broken(name: str) -> None:
        raise RuntimeError("a bug in the strategy")

    grid.instrument = broken  # type: ignore[method-assign,assignment]
    host.on_tickers([ticker("99.99", "100.01", "ETHUSDT")])
    assert paused == ["grid-eth"] and host.is_paused("grid-eth")
    host.on_bars([bar("104", 3)])
    assert len(trend.submitted) == 2


@settings(max_examples=100, deadline=None)
@given(
    explode=st.lists(
        st.sampled_from(["", "start", "bar", "ticker", "event", "timer"]), min_size=1, max_size=5
    ),
    events=st.lists(st.sampled_from(["bar", "ticker", "event", "timer"]), max_size=20),
)
def test_whatever_raises_only_that_strategy_is_paused(
    explode: list[str], events: list[str]
) -> None:
    strategies = [Recorder(MemoryContext(), None, explode_on=e) for e in explode]
    paused: list[str] = []
    host = StrategyHost(
        "binance",
        [(_entry(f"s{i}", ["BTCUSDT"]), s) for i, s in enumerate(strategies)],
        on_pause=lambda name, reason: paused.append(name),
    )
    host.start()
    now = 0
    for i, name in enumerate(f"s{j}" for j in range(len(strategies))):
        host.set_timer(name, "t", 1.0, now_us=i)
    for kind in events:
        if kind == "bar":
            host.on_bars([bar("1", now)])
        elif kind == "ticker":
            host.on_tickers([ticker("1", "2")])
        elif kind == "event":
            host.on_system_event(
                SystemEvent(kind="k", exchange="binance", instrument="", detail={}, at_us=0)
            )
        else:
            now += 2_000_000
            host.fire_due_timers(now)
    raised = {
        f"s{i}"
        for i, (s, e) in enumerate(zip(strategies, explode, strict=True))
        if e == "start" or (e and e in events)
    }
    assert set(paused) == raised and len(paused) == len(raised)  # each reported once
    assert {s.name for s in host.status() if s.paused} == raised
    for i, strategy in enumerate(strategies):
        if f"s{i}" not in raised:
            assert len(strategy.seen) == 1 + len(events)  # start + every event


def test_a_strategy_notice_is_logged_once_naming_the_strategy(logged: list[str]) -> None:
    from types import SimpleNamespace
    from typing import cast

    from tradingd.execution.executor import Executor, ExecutorContext

    ctx = ExecutorContext(cast(Executor, SimpleNamespace(exchange="binance")), "eth-grid")
    ctx.notice("ETHUSDT: levels -5 are not placed")
    ctx.notice("ETHUSDT: levels -5 are not placed")
    wanted = [line for line in logged if "strategy eth-grid: ETHUSDT: levels -5" in line]
    assert len(wanted) == 1 and "WARNING" in wanted[0]
