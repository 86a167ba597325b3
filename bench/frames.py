"""Deterministic fixture frames in the venues' exact wire formats (pure: no clock, no I/O).

Binance frames are combined-stream frames as tradingd receives them (``timeUnit=MICROSECOND``:
every time field in microseconds); prices and quantities are JSON strings with the venue's
eight decimals. Deribit frames are JSON-RPC ``subscription`` notifications on the ``100ms``
channels tradingd subscribes to, numbers as JSON numbers, times in milliseconds. Field sets and
order follow the official examples in the protocol notes; values come from a seeded random walk,
so the same ``seed`` always yields the same bytes.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Final

# 2026-01-01T00:00:00Z: a fixed epoch keeps the frames identical from run to run.
BASE_US: Final = 1_767_225_600_000_000
MINUTE_US: Final = 60_000_000


@dataclass(frozen=True)
class BinanceSymbol:
    name: str
    base: str
    quote: str
    start_price_units: int
    price_decimals: int
    quantity_decimals: int


BINANCE_SYMBOLS: Final = (
    BinanceSymbol("BTCUSDT", "BTC", "USDT", 6_065_012, 2, 5),
    BinanceSymbol("ETHUSDT", "ETH", "USDT", 301_234, 2, 4),
    BinanceSymbol("BNBUSDT", "BNB", "USDT", 5_501, 1, 3),
    BinanceSymbol("SOLUSDT", "SOL", "USDT", 14_230, 2, 3),
)


@dataclass(frozen=True)
class DeribitInstrument:
    name: str
    base: str
    quote: str
    start_price_units: int
    # Price tick = 10**-price_decimals * tick_units.
    price_decimals: int
    tick_units: int
    # Amounts are multiples of the contract size (USD for the inverse perpetuals).
    contract_size: int


DERIBIT_INSTRUMENTS: Final = (
    DeribitInstrument("BTC-PERPETUAL", "BTC", "USD", 1_213_001, 1, 5, 10),
    DeribitInstrument("ETH-PERPETUAL", "ETH", "USD", 60_245, 2, 5, 1),
)


def binance_text(units: int, decimals: int) -> str:
    """Binance's eight-decimal text of ``units * 10**-decimals`` ("60650.12000000")."""
    scale = 10**decimals
    return f"{units // scale}.{units % scale:0{decimals}d}{'0' * (8 - decimals)}"


def json_number(units: int, decimals: int) -> str:
    """The shortest JSON number text of ``units * 10**-decimals`` (60650.5, 8950, 0.0001)."""
    sign = "-" if units < 0 else ""
    whole, fraction = divmod(abs(units), 10**decimals)
    if not fraction:
        return f"{sign}{whole}"
    return f"{sign}{whole}.{fraction:0{decimals}d}".rstrip("0")


def _json_bool(value: bool) -> bytes:
    return b"true" if value else b"false"


# --- Binance ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class BinanceTick:
    symbol: BinanceSymbol
    trade_id: int
    price: str
    quantity: str
    trade_us: int
    event_us: int
    buyer_is_maker: bool


def binance_ticks(count: int, seed: int) -> Iterator[BinanceTick]:
    """``count`` trades round-robin over ``BINANCE_SYMBOLS``, consecutive ids per symbol."""
    rng = random.Random(seed)
    prices = [s.start_price_units for s in BINANCE_SYMBOLS]
    ids = [rng.randrange(1_000_000_000, 4_000_000_000) for _ in BINANCE_SYMBOLS]
    now_us = BASE_US
    for index in range(count):
        slot = index % len(BINANCE_SYMBOLS)
        symbol = BINANCE_SYMBOLS[slot]
        prices[slot] = max(1, prices[slot] + rng.choice((-3, -2, -1, -1, 0, 0, 0, 1, 1, 2, 3)))
        ids[slot] += 1
        now_us += rng.randrange(50, 400)
        lots = rng.randint(1, 10 ** max(1, symbol.quantity_decimals - 1))
        yield BinanceTick(
            symbol=symbol,
            trade_id=ids[slot],
            price=binance_text(prices[slot], symbol.price_decimals),
            quantity=binance_text(lots, symbol.quantity_decimals),
            trade_us=now_us,
            event_us=now_us + rng.randrange(0, 3000),
            buyer_is_maker=rng.random() < 0.5,
        )


def binance_trade_frame(tick: BinanceTick) -> bytes:
    """A ``<symbol>@trade`` frame (the stream tradingd subscribes to)."""
    return (
        b'{"stream":"%s@trade","data":{"e":"trade","E":%d,"s":"%s","t":%d,"p":"%s","q":"%s",'
        b'"T":%d,"m":%s,"M":true}}'
        % (
            tick.symbol.name.lower().encode(),
            tick.event_us,
            tick.symbol.name.encode(),
            tick.trade_id,
            tick.price.encode(),
            tick.quantity.encode(),
            tick.trade_us,
            _json_bool(tick.buyer_is_maker),
        )
    )


def binance_agg_trade_frame(tick: BinanceTick) -> bytes:
    """The same trade as an ``<symbol>@aggTrade`` frame (the stream cryptofeed subscribes to
    for trades): one aggregate of one trade, ``a`` = ``f`` = ``l`` = the trade id."""
    return (
        b'{"stream":"%s@aggTrade","data":{"e":"aggTrade","E":%d,"s":"%s","a":%d,"p":"%s",'
        b'"q":"%s","f":%d,"l":%d,"T":%d,"m":%s,"M":true}}'
        % (
            tick.symbol.name.lower().encode(),
            tick.event_us,
            tick.symbol.name.encode(),
            tick.trade_id,
            tick.price.encode(),
            tick.quantity.encode(),
            tick.trade_id,
            tick.trade_id,
            tick.trade_us,
            _json_bool(tick.buyer_is_maker),
        )
    )


def binance_union_trade_frame(tick: BinanceTick) -> bytes:
    """One frame both parsers read as a trade: the ``@trade`` stream name (tradingd routes on
    it) around a payload carrying the aggTrade event type and ids (cryptofeed dispatches on
    ``e == "aggTrade"``) as well as the trade id ``t``. Not a real frame: it exists so that
    the two handlers can be timed on byte-identical input."""
    return (
        b'{"stream":"%s@trade","data":{"e":"aggTrade","E":%d,"s":"%s","a":%d,"t":%d,"p":"%s",'
        b'"q":"%s","f":%d,"l":%d,"T":%d,"m":%s,"M":true}}'
        % (
            tick.symbol.name.lower().encode(),
            tick.event_us,
            tick.symbol.name.encode(),
            tick.trade_id,
            tick.trade_id,
            tick.price.encode(),
            tick.quantity.encode(),
            tick.trade_id,
            tick.trade_id,
            tick.trade_us,
            _json_bool(tick.buyer_is_maker),
        )
    )


def binance_kline_frames(count: int, seed: int) -> list[bytes]:
    """``<symbol>@kline_1m`` updates: each symbol's current minute re-sent as trades arrive,
    every 30th update of a symbol final (``x: true``) and the next minute begun."""
    rng = random.Random(seed)
    frames: list[bytes] = []
    states: list[dict[str, int]] = []
    for symbol in BINANCE_SYMBOLS:
        price = symbol.start_price_units
        first_id = rng.randrange(1_000_000_000, 4_000_000_000)
        states.append(
            {
                "open_us": BASE_US,
                "o": price,
                "h": price,
                "l": price,
                "c": price,
                "v": 0,
                "n": 0,
                "f": first_id,
                "L": first_id - 1,
                "updates": 0,
            }
        )
    now_us = BASE_US
    for index in range(count):
        slot = index % len(BINANCE_SYMBOLS)
        symbol, state = BINANCE_SYMBOLS[slot], states[slot]
        now_us += rng.randrange(1_000, 50_000)
        trades = rng.randint(1, 40)
        for _ in range(trades):
            state["c"] = max(1, state["c"] + rng.choice((-2, -1, 0, 1, 2)))
            state["h"] = max(state["h"], state["c"])
            state["l"] = min(state["l"], state["c"])
        volume_units = rng.randint(1, 10**symbol.quantity_decimals) * trades
        state["v"] += volume_units
        state["n"] += trades
        state["L"] += trades
        state["updates"] += 1
        closed = state["updates"] % 30 == 0
        pd, qd = symbol.price_decimals, symbol.quantity_decimals
        quote_units = state["v"] * state["c"] // 10**qd
        taker_units = state["v"] // 2
        frames.append(
            b'{"stream":"%s@kline_1m","data":{"e":"kline","E":%d,"s":"%s","k":{"t":%d,"T":%d,'
            b'"s":"%s","i":"1m","f":%d,"L":%d,"o":"%s","c":"%s","h":"%s","l":"%s","v":"%s",'
            b'"n":%d,"x":%s,"q":"%s","V":"%s","Q":"%s","B":"0"}}}'
            % (
                symbol.name.lower().encode(),
                now_us,
                symbol.name.encode(),
                state["open_us"],
                state["open_us"] + MINUTE_US - 1,
                symbol.name.encode(),
                state["f"],
                state["L"],
                binance_text(state["o"], pd).encode(),
                binance_text(state["c"], pd).encode(),
                binance_text(state["h"], pd).encode(),
                binance_text(state["l"], pd).encode(),
                binance_text(state["v"], qd).encode(),
                state["n"],
                _json_bool(closed),
                binance_text(quote_units, pd).encode(),
                binance_text(taker_units, qd).encode(),
                binance_text(quote_units // 2, pd).encode(),
            )
        )
        if closed:
            price = state["c"]
            state.update(
                open_us=state["open_us"] + MINUTE_US,
                o=price,
                h=price,
                l=price,
                v=0,
                n=0,
                f=state["L"] + 1,
                updates=0,
            )
    return frames


def binance_book_ticker_frames(count: int, seed: int) -> list[bytes]:
    """``<symbol>@bookTicker`` frames (spot: no event type, no time)."""
    rng = random.Random(seed)
    update_ids = [rng.randrange(10_000_000_000, 90_000_000_000) for _ in BINANCE_SYMBOLS]
    prices = [s.start_price_units for s in BINANCE_SYMBOLS]
    frames: list[bytes] = []
    for index in range(count):
        slot = index % len(BINANCE_SYMBOLS)
        symbol = BINANCE_SYMBOLS[slot]
        update_ids[slot] += rng.randint(1, 20)
        prices[slot] = max(2, prices[slot] + rng.choice((-1, 0, 0, 1)))
        pd, qd = symbol.price_decimals, symbol.quantity_decimals
        frames.append(
            b'{"stream":"%s@bookTicker","data":{"u":%d,"s":"%s","b":"%s","B":"%s","a":"%s",'
            b'"A":"%s"}}'
            % (
                symbol.name.lower().encode(),
                update_ids[slot],
                symbol.name.encode(),
                binance_text(prices[slot] - 1, pd).encode(),
                binance_text(rng.randint(1, 10 ** (qd + 1)), qd).encode(),
                binance_text(prices[slot], pd).encode(),
                binance_text(rng.randint(1, 10 ** (qd + 1)), qd).encode(),
            )
        )
    return frames


# --- Deribit ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class DeribitTradesFrame:
    frame: bytes
    trades: int


def deribit_trade_frames(count: int, seed: int, max_trades: int = 10) -> list[DeribitTradesFrame]:
    """``trades.<instrument>.100ms`` notifications carrying 1..``max_trades`` trades each
    (uniformly), alternating instruments; ``trade_seq`` consecutive per instrument."""
    rng = random.Random(seed)
    prices = [i.start_price_units for i in DERIBIT_INSTRUMENTS]
    seqs = [rng.randrange(100_000_000, 300_000_000) for _ in DERIBIT_INSTRUMENTS]
    trade_id = rng.randrange(300_000_000, 400_000_000)
    now_ms = BASE_US // 1000
    frames: list[DeribitTradesFrame] = []
    for index in range(count):
        slot = index % len(DERIBIT_INSTRUMENTS)
        instrument = DERIBIT_INSTRUMENTS[slot]
        pd = instrument.price_decimals
        now_ms += rng.randrange(20, 120)
        trades: list[bytes] = []
        for _ in range(rng.randint(1, max_trades)):
            step = rng.choice((-2, -1, 0, 0, 1, 2))
            prices[slot] = max(instrument.tick_units, prices[slot] + step * instrument.tick_units)
            seqs[slot] += 1
            trade_id += rng.randint(1, 3)
            contracts = rng.choice((1, 1, 1, 2, 3, 5, 10, 25, 100))
            mark = prices[slot] + rng.randint(-20, 20)
            index_price = prices[slot] + rng.randint(-40, 40)
            trades.append(
                b'{"trade_seq":%d,"trade_id":"%d","timestamp":%d,"tick_direction":%d,'
                b'"price":%s,"mark_price":%s,"instrument_name":"%s","index_price":%s,'
                b'"direction":"%s","contracts":%d.0,"amount":%d.0}'
                % (
                    seqs[slot],
                    trade_id,
                    now_ms,
                    rng.randint(0, 3),
                    json_number(prices[slot], pd).encode(),
                    json_number(mark, pd + 2).encode(),
                    instrument.name.encode(),
                    json_number(index_price, pd + 1).encode(),
                    rng.choice((b"buy", b"sell")),
                    contracts,
                    contracts * instrument.contract_size,
                )
            )
        frames.append(
            DeribitTradesFrame(
                b'{"jsonrpc":"2.0","method":"subscription","params":{"channel":"trades.%s.100ms",'
                b'"data":[%s]}}' % (instrument.name.encode(), b",".join(trades)),
                len(trades),
            )
        )
    return frames


def deribit_ticker_frames(count: int, seed: int) -> list[bytes]:
    """``ticker.<instrument>.100ms`` notifications with every field of the official example."""
    rng = random.Random(seed)
    prices = [i.start_price_units for i in DERIBIT_INSTRUMENTS]
    open_interest = [rng.randrange(100_000_000, 900_000_000) for _ in DERIBIT_INSTRUMENTS]
    now_ms = BASE_US // 1000
    frames: list[bytes] = []
    for index in range(count):
        slot = index % len(DERIBIT_INSTRUMENTS)
        instrument = DERIBIT_INSTRUMENTS[slot]
        pd, tick = instrument.price_decimals, instrument.tick_units
        now_ms += rng.randrange(50, 150)
        prices[slot] = max(2 * tick, prices[slot] + rng.choice((-1, 0, 0, 1)) * tick)
        open_interest[slot] += rng.randint(-10_000, 10_000)
        price = prices[slot]
        index_units = price * 100 + rng.randint(-2_000, 2_000)
        frames.append(
            b'{"jsonrpc":"2.0","method":"subscription","params":{"channel":"ticker.%s.100ms",'
            b'"data":{"best_ask_amount":%d,"best_ask_price":%s,"best_bid_amount":%d,'
            b'"best_bid_price":%s,"current_funding":0,"estimated_delivery_price":%s,'
            b'"funding_8h":%s,"index_price":%s,"instrument_name":"%s","interest_value":%s,'
            b'"last_price":%s,"mark_price":%s,"max_price":%s,"min_price":%s,'
            b'"open_interest":%d,"settlement_price":%s,"state":"open","stats":{"high":%s,'
            b'"low":%s,"price_change":%s,"volume":%s,"volume_usd":%d},"timestamp":%d}}}'
            % (
                instrument.name.encode(),
                rng.randint(1, 500) * instrument.contract_size,
                json_number(price, pd).encode(),
                rng.randint(1, 500) * instrument.contract_size,
                json_number(price - tick, pd).encode(),
                json_number(index_units, pd + 2).encode(),
                json_number(rng.randint(1, 99_999), 9).encode(),
                json_number(index_units, pd + 2).encode(),
                instrument.name.encode(),
                json_number(rng.randint(10**15, 2 * 10**16), 16).encode(),
                json_number(price + rng.choice((-1, 0, 1)) * tick, pd).encode(),
                json_number(price * 100 + rng.randint(-500, 500), pd + 2).encode(),
                json_number(price * 103 // 100, pd).encode(),
                json_number(price * 97 // 100, pd).encode(),
                open_interest[slot],
                json_number(price * 100 - 12_345, pd + 2).encode(),
                json_number(price * 102 // 100, pd).encode(),
                json_number(price * 98 // 100, pd).encode(),
                json_number(rng.randint(-50_000, 50_000), 4).encode(),
                json_number(rng.randint(10**11, 10**12), 8).encode(),
                rng.randint(10**8, 10**9),
                now_ms,
            )
        )
    return frames
