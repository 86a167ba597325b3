"""Parse benchmark: each adapter's pure parser against cryptofeed's message handlers.

Both sides get the same fixture frames as ``bytes`` (the type tradingd's transport delivers;
cryptofeed's JSON decoder is also faster on bytes than on str), on one core, in one process,
alternating run by run so that load from other processes hits both alike. tradingd's side is
``BinanceParser.parse_frame`` / ``deribit.parsing.parse_frame`` producing canonical records;
cryptofeed's is the feed's ``message_handler`` producing its own types and awaiting a callback
that only counts them. tradingd's parsers keep their memo of accepted decimal texts across the
passes, as a connection keeps it; the passes repeat the same frames, so after the first every
text is one it has seen (one pass over the fixtures finds 96-98 % of the trade prices seen
before, 77 % of Binance's and 99.9 % of Deribit's quantities). The cryptofeed feeds are built
offline: their symbol tables are primed from the fixture instruments (no exchangeInfo request),
nothing connects.

cryptofeed subscribes to ``@aggTrade`` for Binance trades and drops ``@trade`` frames, so the
Binance trade rows come twice: each library on its own trade stream carrying the same trades
(``trade``), and both on one byte-identical frame that each reads as a trade
(``trade, identical bytes``; see ``frames.binance_union_trade_frame``). cryptofeed's kline
handler is built with ``candle_closed_only=False`` so that, like tradingd, it builds a record
for every kline update.
"""

from __future__ import annotations

import asyncio
import gc
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from bench.frames import (
    BASE_US,
    BINANCE_SYMBOLS,
    DERIBIT_INSTRUMENTS,
    binance_agg_trade_frame,
    binance_book_ticker_frames,
    binance_kline_frames,
    binance_ticks,
    binance_trade_frame,
    binance_union_trade_frame,
    deribit_ticker_frames,
    deribit_trade_frames,
)
from bench.stats import Summary, summarize
from tradingd.adapters.binance.parsing import BinanceParser
from tradingd.adapters.deribit.parsing import parse_frame as deribit_parse_frame
from tradingd.model import PositiveDecimalMemo, Trade

# Receive time handed to both parsers; never read from a clock inside the timed loops.
RECEIVED_US = BASE_US + 1_000_000
RECEIVED_SECONDS = RECEIVED_US / 1_000_000


@dataclass(frozen=True)
class ParseCase:
    venue: str
    kind: str
    ours: Sequence[bytes]
    theirs: Sequence[bytes]
    # Trades carried by one pass over the frames (the same on both sides).
    trades: int
    identical: bool


def parse_cases(frames_per_case: int, seed: int = 2026) -> list[ParseCase]:
    """Every case of the benchmark with ``frames_per_case`` distinct frames each."""
    n = frames_per_case
    ticks = list(binance_ticks(n, seed))
    trade_frames = [binance_trade_frame(t) for t in ticks]
    agg_frames = [binance_agg_trade_frame(t) for t in ticks]
    union_frames = [binance_union_trade_frame(t) for t in ticks]
    klines = binance_kline_frames(n, seed + 1)
    book = binance_book_ticker_frames(n, seed + 2)
    deribit_single = deribit_trade_frames(n, seed + 3, max_trades=1)
    deribit_multi = deribit_trade_frames(n, seed + 4, max_trades=10)
    tickers = deribit_ticker_frames(n, seed + 5)
    single = [f.frame for f in deribit_single]
    multi = [f.frame for f in deribit_multi]
    multi_trades = sum(f.trades for f in deribit_multi)
    return [
        ParseCase("binance", "trade", trade_frames, agg_frames, n, False),
        ParseCase("binance", "trade, identical bytes", union_frames, union_frames, n, True),
        ParseCase("binance", "kline", klines, klines, 0, True),
        ParseCase("binance", "bookTicker", book, book, 0, True),
        ParseCase("deribit", "trades, 1 per frame", single, single, n, True),
        ParseCase("deribit", "trades, 1..10 per frame", multi, multi, multi_trades, True),
        ParseCase("deribit", "ticker", tickers, tickers, 0, True),
    ]


# --- tradingd --------------------------------------------------------------------------------


def ours_runner(venue: str) -> Callable[[Sequence[bytes], int], int]:
    """A loop over frames through tradingd's parser; returns the records produced."""
    if venue == "binance":
        parse = BinanceParser("binance").parse_frame

        def run_binance(frames: Sequence[bytes], passes: int) -> int:
            received_us = RECEIVED_US
            records = 0
            for _ in range(passes):
                for frame in frames:
                    records += len(parse(frame, received_us))
            return records

        return run_binance

    # One connection's memo of accepted texts, as the session keeps (like the Binance parser).
    positive = PositiveDecimalMemo()

    def run_deribit(frames: Sequence[bytes], passes: int) -> int:
        received_us = RECEIVED_US
        parse = deribit_parse_frame
        records = 0
        for _ in range(passes):
            for frame in frames:
                parsed = parse(
                    frame, exchange="deribit", received_us=received_us, positive=positive
                )
                records += len(parsed.records)
        return records

    return run_deribit


def ours_trades(case: ParseCase) -> int:
    """Trades tradingd's parser produces for one pass over the case's frames (not timed)."""
    if case.venue == "binance":
        parser = BinanceParser("binance")
        events = [e for f in case.ours for e in parser.parse_frame(f, RECEIVED_US)]
    else:
        events = [
            e
            for f in case.ours
            for e in deribit_parse_frame(f, exchange="deribit", received_us=RECEIVED_US).records
        ]
    return sum(1 for e in events if type(e) is Trade)


# --- cryptofeed ------------------------------------------------------------------------------


class _OfflineConnection:
    """Stands in for cryptofeed's connection: its handlers read ``uuid``; ``subscribe`` (which
    resets the feed's per-connection state) may ``write`` (nothing here: no channels)."""

    uuid = "bench-offline"

    async def write(self, message: str) -> None:
        return None


@dataclass
class CryptofeedHandlers:
    binance: Callable[[bytes, Any, float], Awaitable[None]]
    deribit: Callable[[bytes, Any, float], Awaitable[None]]
    # Callback invocations by cryptofeed data type (trades, ticker, candles, ...).
    counts: dict[str, int] = field(default_factory=dict)
    version: str = ""


def cryptofeed_handlers() -> CryptofeedHandlers | None:
    """cryptofeed's Binance and Deribit message handlers, built offline; None if it is not
    installed (it is only in the ``bench`` extra)."""
    try:
        import cryptofeed
        from cryptofeed.defines import (
            BINANCE,
            CANDLES,
            DERIBIT,
            FUNDING,
            OPEN_INTEREST,
            PERPETUAL,
            SPOT,
            TICKER,
            TRADES,
        )
        from cryptofeed.exchanges import Binance, Deribit
        from cryptofeed.symbols import Symbol, Symbols
    except ImportError:
        return None
    binance_map = {Symbol(s.base, s.quote, type=SPOT).normalized: s.name for s in BINANCE_SYMBOLS}
    deribit_map = {
        Symbol(i.base, i.quote, type=PERPETUAL).normalized: i.name for i in DERIBIT_INSTRUMENTS
    }
    Symbols.set(BINANCE, binance_map, {"instrument_type": dict.fromkeys(binance_map, SPOT)})
    Symbols.set(DERIBIT, deribit_map, {"instrument_type": dict.fromkeys(deribit_map, PERPETUAL)})
    counts: dict[str, int] = {}

    def counting(data_type: str) -> Callable[[Any, float], Awaitable[None]]:
        counts[data_type] = 0

        async def callback(obj: Any, receipt_timestamp: float) -> None:
            counts[data_type] += 1

        return callback

    kinds = (TRADES, TICKER, CANDLES, FUNDING, OPEN_INTEREST)
    binance = Binance(
        candle_closed_only=False, callbacks={k: counting(k) for k in (TRADES, TICKER, CANDLES)}
    )
    deribit = Deribit(callbacks={k: counting(k) for k in kinds if k != CANDLES})

    async def connected() -> None:
        # What cryptofeed does once a connection is up: reset the per-connection state.
        for feed in (binance, deribit):
            await feed.subscribe(_OfflineConnection())

    asyncio.run(connected())
    return CryptofeedHandlers(
        binance=binance.message_handler,
        deribit=deribit.message_handler,
        counts=counts,
        version=getattr(cryptofeed, "__version__", ""),
    )


async def run_cryptofeed(
    handler: Callable[[bytes, Any, float], Awaitable[None]], frames: Sequence[bytes], passes: int
) -> None:
    connection = _OfflineConnection()
    timestamp = RECEIVED_SECONDS
    for _ in range(passes):
        for frame in frames:
            await handler(frame, connection, timestamp)


def cryptofeed_trades(handlers: CryptofeedHandlers, case: ParseCase) -> int:
    """Trades cryptofeed's handler reports for one pass over the case's frames (not timed)."""
    handler = handlers.binance if case.venue == "binance" else handlers.deribit
    before = handlers.counts.get("trades", 0)
    asyncio.run(run_cryptofeed(handler, case.theirs, 1))
    return handlers.counts.get("trades", 0) - before


# --- timing ----------------------------------------------------------------------------------


def _time_ours(
    run: Callable[[Sequence[bytes], int], int], frames: Sequence[bytes], passes: int
) -> float:
    gc.collect()
    start = time.perf_counter()
    run(frames, passes)
    return time.perf_counter() - start


def _time_cryptofeed(
    handler: Callable[[bytes, Any, float], Awaitable[None]], frames: Sequence[bytes], passes: int
) -> float:
    """Seconds for ``passes`` over ``frames``; the event loop is made before the clock starts
    (no handler suspends, so the loop only steps the coroutine)."""
    gc.collect()
    with asyncio.Runner() as runner:
        runner.get_loop()
        start = time.perf_counter()
        runner.run(run_cryptofeed(handler, frames, passes))
        return time.perf_counter() - start


def _passes_for(seconds_per_pass: float, target_seconds: float) -> int:
    return max(1, round(target_seconds / max(seconds_per_pass, 1e-9)))


@dataclass
class CaseResult:
    case: ParseCase
    ours_seconds: list[float] = field(default_factory=list)
    theirs_seconds: list[float] = field(default_factory=list)
    ours_passes: int = 1
    theirs_passes: int = 1
    ours_trades: int = 0
    theirs_trades: int | None = None

    def as_dict(self) -> dict[str, Any]:
        case = self.case
        frames = len(case.ours)
        ours_fps = [frames * self.ours_passes / s for s in self.ours_seconds]
        result: dict[str, Any] = {
            "venue": case.venue,
            "kind": case.kind,
            "identical_frames": case.identical,
            "frames_per_pass": frames,
            "trades_per_pass": case.trades,
            "trades_produced": {"tradingd": self.ours_trades, "cryptofeed": self.theirs_trades},
            "tradingd": _rates(ours_fps, case.trades / frames),
            "cryptofeed": None,
            "ratio": None,
        }
        if self.theirs_seconds:
            theirs_fps = [frames * self.theirs_passes / s for s in self.theirs_seconds]
            result["cryptofeed"] = _rates(theirs_fps, case.trades / frames)
            ratios = [a / b for a, b in zip(ours_fps, theirs_fps, strict=True)]
            result["ratio"] = summarize(ratios)
        return result


def _rates(frames_per_s: list[float], trades_per_frame: float) -> dict[str, Summary | None]:
    return {
        "frames_per_s": summarize(frames_per_s),
        "trades_per_s": (
            summarize([r * trades_per_frame for r in frames_per_s]) if trades_per_frame else None
        ),
    }


def bench_parse(
    frames_per_case: int,
    repeats: int,
    target_seconds: float,
    *,
    include_cryptofeed: bool = True,
    progress: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Run every case ``repeats`` times on each side; each timed run lasts ~``target_seconds``."""
    cases = parse_cases(frames_per_case)
    handlers = cryptofeed_handlers() if include_cryptofeed else None
    results: list[CaseResult] = []
    for case in cases:
        result = CaseResult(case)
        result.ours_trades = ours_trades(case)
        if result.ours_trades != case.trades:
            raise AssertionError(
                f"{case.venue} {case.kind}: tradingd produced {result.ours_trades} trades, "
                f"expected {case.trades}"
            )
        run_ours = ours_runner(case.venue)
        result.ours_passes = _passes_for(_time_ours(run_ours, case.ours, 1), target_seconds)
        theirs: Callable[[bytes, Any, float], Awaitable[None]] | None = None
        if handlers is not None:
            theirs = handlers.binance if case.venue == "binance" else handlers.deribit
            result.theirs_trades = cryptofeed_trades(handlers, case)
            if result.theirs_trades != case.trades:
                raise AssertionError(
                    f"{case.venue} {case.kind}: cryptofeed reported {result.theirs_trades} "
                    f"trades, expected {case.trades}"
                )
            per_pass = _time_cryptofeed(theirs, case.theirs, 1)
            result.theirs_passes = _passes_for(per_pass, target_seconds)
        for _ in range(repeats):
            result.ours_seconds.append(_time_ours(run_ours, case.ours, result.ours_passes))
            if theirs is not None:
                result.theirs_seconds.append(
                    _time_cryptofeed(theirs, case.theirs, result.theirs_passes)
                )
        summary = result.as_dict()
        ratio = summary["ratio"]
        progress(
            f"  parse {case.venue:8s} {case.kind:26s} "
            f"tradingd {summary['tradingd']['frames_per_s']['median']:>10,.0f} frames/s"
            + (
                f"  cryptofeed {summary['cryptofeed']['frames_per_s']['median']:>10,.0f}"
                f"  ratio {ratio['median']:.2f}x"
                if ratio is not None
                else ""
            )
        )
        results.append(result)
    return {
        "frames_per_case": frames_per_case,
        "repeats": repeats,
        "target_seconds_per_run": target_seconds,
        "cryptofeed": None if handlers is None else (handlers.version or "installed"),
        "cases": [r.as_dict() for r in results],
    }
