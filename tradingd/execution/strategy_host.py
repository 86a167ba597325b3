"""The strategy host: runs one exchange's strategies inside its executor.

It routes market data to the strategies whose symbols include the instrument, keeps their
timers, and isolates them: a callback that raises pauses THAT strategy (logged with its
traceback, reported through ``on_pause`` so the executor records a system event), never the
others and never the daemon. A paused strategy gets no callbacks except ``on_order`` and
``on_fill``, which keep its view of its own orders current; ``resume`` lets it go on.

Everything here is synchronous and does no I/O: the executor calls it from its own task.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import msgspec
from loguru import logger

from tradingd.execution.desk import StrategyStatus
from tradingd.model import Bar, Ticker, Trade
from tradingd.strategies.api import FillView, OrderUpdate, Strategy, StrategyContext, SystemEvent
from tradingd.strategies.registry import load_strategy

if TYPE_CHECKING:
    from tradingd.config import Config, StrategyConfig

# Callbacks a paused strategy still receives: its own orders and fills.
_ALWAYS_DELIVERED = frozenset({"on_order", "on_fill"})


class _Running:
    __slots__ = ("config", "paused", "reason", "strategy")

    def __init__(self, config: StrategyConfig, strategy: Strategy) -> None:
        self.config = config
        self.strategy = strategy
        self.paused = False
        self.reason = ""


class StrategyHost:
    def __init__(
        self,
        exchange: str,
        entries: Sequence[tuple[StrategyConfig, Strategy]],
        *,
        on_pause: Callable[[str, str], None],
    ) -> None:
        self.exchange = exchange
        self._on_pause = on_pause
        self._running: dict[str, _Running] = {}
        self._by_instrument: dict[str, list[_Running]] = {}
        for config, strategy in entries:
            if config.name in self._running:
                raise ValueError(f"strategy name {config.name!r} is used twice")
            running = _Running(config, strategy)
            self._running[config.name] = running
            for symbol in config.symbols:
                self._by_instrument.setdefault(symbol, []).append(running)
        # (due_us, sequence, strategy, timer); stale entries are skipped against _timers.
        self._timer_heap: list[tuple[int, int, str, str]] = []
        self._timers: dict[tuple[str, str], tuple[int, int]] = {}  # -> (interval_us, due_us)
        self._sequence = 0

    @staticmethod
    def build(
        config: Config,
        exchange: str,
        make_context: Callable[[StrategyConfig], StrategyContext],
        on_pause: Callable[[str, str], None],
    ) -> StrategyHost:
        """Every enabled ``[[strategies]]`` entry of ``exchange``, each with its own context.
        The configuration was validated on load; a strategy whose constructor raises is kept,
        paused, with the reason."""
        entries: list[tuple[StrategyConfig, Strategy]] = []
        failed: dict[str, str] = {}
        for entry in config.strategies:
            if not entry.enabled or entry.exchange != exchange:
                continue
            cls = load_strategy(entry.strategy)
            params = msgspec.convert(entry.params, cls.Params, strict=True)
            ctx = make_context(entry)
            try:
                strategy = cls(ctx, params)
            except Exception as exc:
                logger.opt(exception=exc).error("strategy {} failed to start", entry.name)
                strategy = Strategy(ctx, params)
                failed[entry.name] = f"__init__ raised {type(exc).__name__}: {exc}"
            entries.append((entry, strategy))
        host = StrategyHost(exchange, entries, on_pause=on_pause)
        for name, reason in failed.items():
            host._fail(name, reason)
        return host

    def names(self) -> list[str]:
        return list(self._running)

    # -- lifecycle ------------------------------------------------------------------------

    def start(self) -> None:
        for running in list(self._running.values()):
            self._call(running, "on_start")

    def stop(self) -> None:
        for running in list(self._running.values()):
            self._call(running, "on_stop")

    # -- market data and events -----------------------------------------------------------

    def on_trades(self, trades: Sequence[Trade]) -> None:
        if not self._by_instrument:
            return  # no strategy: not a lookup per trade of a busy feed
        for trade in trades:
            for running in self._by_instrument.get(trade.instrument_name, ()):
                self._call(running, "on_trade", trade)

    def on_bars(self, bars: Sequence[Bar]) -> None:
        for bar in bars:
            for running in self._by_instrument.get(bar.instrument_name, ()):
                self._call(running, "on_bar", bar)

    def on_tickers(self, tickers: Sequence[Ticker]) -> None:
        for ticker in tickers:
            for running in self._by_instrument.get(ticker.instrument_name, ()):
                self._call(running, "on_ticker", ticker)

    def on_system_event(self, event: SystemEvent) -> None:
        """To the strategies trading ``event.instrument``; to all when it is ""."""
        targets = (
            list(self._running.values())
            if not event.instrument
            else self._by_instrument.get(event.instrument, [])
        )
        for running in targets:
            self._call(running, "on_system_event", event)

    def on_order(self, strategy: str, update: OrderUpdate) -> None:
        running = self._running.get(strategy)
        if running is not None:
            self._call(running, "on_order", update)

    def on_fill(self, strategy: str, fill: FillView) -> None:
        running = self._running.get(strategy)
        if running is not None:
            self._call(running, "on_fill", fill)

    # -- timers ---------------------------------------------------------------------------

    def set_timer(self, strategy: str, name: str, interval_s: float, now_us: int) -> None:
        """Call ``on_timer`` every ``interval_s`` from ``now_us`` on (0 removes the timer)."""
        if strategy not in self._running:
            raise KeyError(f"no strategy {strategy!r} on {self.exchange}")
        if interval_s < 0:
            raise ValueError(f"timer {name!r}: expected an interval >= 0, found {interval_s}")
        key = (strategy, name)
        if interval_s == 0:
            self._timers.pop(key, None)
            return
        interval_us = max(1, round(interval_s * 1_000_000))
        due = now_us + interval_us
        self._timers[key] = (interval_us, due)
        self._push(due, strategy, name)

    def _push(self, due: int, strategy: str, name: str) -> None:
        self._sequence += 1
        heapq.heappush(self._timer_heap, (due, self._sequence, strategy, name))

    def next_timer_due_us(self) -> int | None:
        while self._timer_heap:
            due, _, strategy, name = self._timer_heap[0]
            timer = self._timers.get((strategy, name))
            if timer is not None and timer[1] == due:
                return due
            heapq.heappop(self._timer_heap)  # replaced or removed
        return None

    def fire_due_timers(self, now_us: int) -> None:
        """Every timer due by ``now_us`` fires once (a late one does not fire its missed
        periods: it is rescheduled one interval after now)."""
        while (due := self.next_timer_due_us()) is not None and due <= now_us:
            _, _, strategy, name = heapq.heappop(self._timer_heap)
            interval_us, _ = self._timers[(strategy, name)]
            next_due = due + interval_us
            if next_due <= now_us:
                next_due = now_us + interval_us
            self._timers[(strategy, name)] = (interval_us, next_due)
            self._push(next_due, strategy, name)
            self._call(self._running[strategy], "on_timer", name, now_us)

    # -- pause / resume -------------------------------------------------------------------

    def pause(self, name: str, reason: str) -> bool:
        running = self._running.get(name)
        if running is None:
            return False
        running.paused = True
        running.reason = reason
        logger.warning("strategy {} paused: {}", name, reason)
        return True

    def resume(self, name: str) -> bool:
        running = self._running.get(name)
        if running is None:
            return False
        if running.paused:
            logger.info("strategy {} resumed (was paused: {})", name, running.reason)
        running.paused = False
        running.reason = ""
        return True

    def is_paused(self, name: str) -> bool:
        running = self._running.get(name)
        return running is not None and running.paused

    def status(self) -> list[StrategyStatus]:
        return [
            StrategyStatus(
                name=name,
                strategy=running.config.strategy,
                exchange=self.exchange,
                symbols=list(running.config.symbols),
                paused=running.paused,
                reason=running.reason,
            )
            for name, running in self._running.items()
        ]

    # -- isolation ------------------------------------------------------------------------

    def _call(self, running: _Running, callback: str, *args: Any) -> None:
        if running.paused and callback not in _ALWAYS_DELIVERED:
            return
        try:
            getattr(running.strategy, callback)(*args)
        except Exception as exc:
            name = running.config.name
            logger.opt(exception=exc).error("strategy {} raised in {}: paused", name, callback)
            self._fail(name, f"{callback} raised {type(exc).__name__}: {exc}")

    def _fail(self, name: str, reason: str) -> None:
        self.pause(name, reason)
        try:
            self._on_pause(name, reason)
        except Exception as exc:  # the executor's recorder must not take the others down
            logger.opt(exception=exc).error("recording the pause of strategy {} failed", name)
