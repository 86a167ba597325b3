"""Real captured Binance spot traffic through the pure parsers, field by field.

Every trade, bar and ticker is checked against the raw JSON it came from, with exact decimal
equality to the venue's text. The captures were made without ``timeUnit=MICROSECOND``, so they
are parsed with a millisecond parser.
"""

from __future__ import annotations

import gzip
import json
from collections import Counter
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from tradingd.adapters.base import ParseError
from tradingd.adapters.binance.parsing import (
    BinanceParser,
    parse_exchange_info,
    parse_klines,
    parse_rest_trades,
    parse_server_time_us,
)
from tradingd.model import Bar, MarketType, Ticker, Trade

CORPUS = Path(__file__).resolve().parents[2] / ".." / "shared" / "corpus"
NAUTILUS = CORPUS / "nautilus_trader/real/tests/integration_tests/adapters/binance/resources"

pytestmark = [
    pytest.mark.corpus,
    pytest.mark.skipif(
        not CORPUS.is_dir(),
        reason=f"the captured exchange corpus is not beside the checkout ({CORPUS.resolve()})",
    ),
]


def exact(value: Decimal | None, text: str) -> bool:
    """The decimal is the venue's text, digit for digit (scale included)."""
    return value is not None and f"{value:f}" == text


def check_trade(trade: Trade, raw: dict[str, Any], received_us: int) -> None:
    assert trade.exchange == "binance"
    assert trade.instrument_name == raw["s"]
    assert trade.market_type is MarketType.SPOT
    assert trade.trade_id == str(raw["t"])
    assert trade.trade_seq == raw["t"]
    assert exact(trade.price, raw["p"]), (trade.price, raw["p"])
    assert exact(trade.quantity, raw["q"]), (trade.quantity, raw["q"])
    assert trade.is_buyer_maker is raw["m"]
    assert trade.was_best_price_match is raw.get("M")
    assert trade.trade_us == raw["T"] * 1000
    assert trade.received_us == received_us


def check_bar(bar: Bar, raw: dict[str, Any], received_us: int) -> None:
    k = raw["k"]
    assert bar.instrument_name == raw["s"]
    assert bar.resolution == k["i"]
    assert bar.tick_us == k["t"] * 1000
    for field, key in (("open", "o"), ("high", "h"), ("low", "l"), ("close", "c")):
        assert exact(getattr(bar, field), k[key]), (field, getattr(bar, field), k[key])
    assert exact(bar.volume, k["v"])
    assert bar.closed is k["x"]
    assert bar.received_us == received_us


def check_ticker(ticker: Ticker, raw: dict[str, Any], received_us: int) -> None:
    assert ticker.instrument_name == raw["s"]
    assert exact(ticker.best_bid_price, raw["b"])
    assert exact(ticker.best_bid_amount, raw["B"])
    assert exact(ticker.best_ask_price, raw["a"])
    assert exact(ticker.best_ask_amount, raw["A"])
    assert ticker.last_price is None
    expected_time = raw["E"] * 1000 if "E" in raw else received_us
    assert ticker.timestamp_us == expected_time
    assert ticker.received_us == received_us


def replay(frames: Iterator[tuple[int, str]]) -> tuple[Counter[str], BinanceParser, list[str]]:
    """Every frame through one parser; every record checked against its source JSON."""
    parser = BinanceParser("binance", time_unit="MILLISECOND")
    counts: Counter[str] = Counter()
    refused: list[str] = []
    for received_us, text in frames:
        try:
            events = parser.parse_frame(text.encode(), received_us)
        except ParseError:
            refused.append(text)
            continue
        data = json.loads(text).get("data", {})
        for event in events:
            counts[type(event).__name__] += 1
            if isinstance(event, Trade):
                check_trade(event, data, received_us)
            elif isinstance(event, Bar):
                check_bar(event, data, received_us)
            elif isinstance(event, Ticker):
                check_ticker(event, data, received_us)
    return counts, parser, refused


def hftbacktest_frames(path: Path) -> Iterator[tuple[int, str]]:
    with gzip.open(path, "rt") as lines:
        for line in lines:
            local_ns, raw = line.rstrip("\n").split(" ", 1)
            yield int(local_ns) // 1000, raw


def cryptofeed_frames(path: Path) -> Iterator[tuple[int, str]]:
    with path.open() as lines:
        for line in lines:
            line = line.rstrip("\n")
            if not line or " <-> " in line or " <- " in line:
                continue  # connection opened / frame sent by the client
            timestamp, raw = line.split(": ", 1)
            yield round(float(timestamp) * 1_000_000), raw


def test_hftbacktest_spot_session() -> None:
    counts, parser, refused = replay(
        hftbacktest_frames(CORPUS / "hftbacktest_examples/spot_ethusdt_20240808.gz")
    )
    assert counts == {"Trade": 6106, "Ticker": 24077}
    assert parser.ignored == {"depth@100ms": 3434}
    # The one refused line is the REST depth snapshot the collector wrote into the stream.
    assert len(refused) == 1
    assert json.loads(refused[0]).keys() >= {"lastUpdateId", "bids", "asks"}


@pytest.mark.parametrize(
    ("name", "bars", "tickers", "agg_trades", "depth"),
    [
        ("BINANCE.ws.1.0", 2, 84, 2, 177),
        ("older_2021-04/BINANCE.ws.1.0", 20, 570, 24, 614),
        ("BINANCE_US.ws.1.0", 5, 128, 11, 336),
    ],
)
def test_cryptofeed_spot_sessions(
    name: str, bars: int, tickers: int, agg_trades: int, depth: int
) -> None:
    # These captures subscribed aggTrade, not trade: they exercise klines and bookTicker.
    counts, parser, refused = replay(cryptofeed_frames(CORPUS / "cryptofeed_sample_data" / name))
    assert refused == []
    assert counts == {"Bar": bars, "Ticker": tickers}
    assert parser.ignored == {"aggTrade": agg_trades, "depth@100ms": depth}


def test_tardis_messages() -> None:
    path = CORPUS / "tardis_node/tardis_mappers_test_binance_messages.jsonl"
    frames = ((1_567_296_001_000_000, line) for line in path.read_text().splitlines() if line)
    counts, parser, refused = replay(frames)
    assert refused == []
    assert counts == {"Trade": 2, "Ticker": 1}
    assert parser.ignored == {"ticker": 1, "depth": 4, "depthSnapshot": 2}


@pytest.mark.parametrize(
    ("name", "kind"), [("ws_spot_trade.json", "Trade"), ("ws_spot_ticker_book.json", "Ticker")]
)
def test_nautilus_ws_messages(name: str, kind: str) -> None:
    text = (NAUTILUS / "ws_messages" / name).read_text()
    counts, _, refused = replay(iter([(1_700_000_000_000_000, text)]))
    assert refused == []
    assert counts == {kind: 1}


def exchange_info_bodies() -> Iterator[tuple[str, str]]:
    for name in ("BINANCE.0", "BINANCE_US.0"):
        for line in (CORPUS / "cryptofeed_sample_data" / name).read_text().splitlines():
            if "/api/v3/exchangeInfo -> " in line:
                yield name, line.split(": ", 1)[1]
    yield "nautilus", (NAUTILUS / "http_responses/http_spot_market_exchange_info.json").read_text()


@pytest.mark.parametrize(
    ("source", "body"), list(exchange_info_bodies()) if CORPUS.is_dir() else []
)
def test_exchange_info_every_symbol(source: str, body: str) -> None:
    info = parse_exchange_info(body.encode(), "binance")
    document = json.loads(body)
    assert len(info.instruments) == len(document["symbols"]) > 0
    assert info.request_weight_per_minute == 1200
    for instrument, raw in zip(info.instruments, document["symbols"], strict=True):
        filters = {f["filterType"]: f for f in raw["filters"]}
        assert instrument.instrument_name == raw["symbol"]
        assert instrument.market_type is MarketType.SPOT
        assert instrument.base_currency == raw["baseAsset"]
        assert instrument.quote_currency == raw["quoteAsset"]
        assert exact(instrument.tick_size, filters["PRICE_FILTER"]["tickSize"])
        assert exact(instrument.min_trade_amount, filters["LOT_SIZE"]["minQty"])
        notional = filters.get("NOTIONAL", filters.get("MIN_NOTIONAL"))
        if notional is None:
            assert instrument.min_notional is None
        else:
            assert exact(instrument.min_notional, notional["minNotional"])
        assert instrument.is_active is (raw["status"] == "TRADING")
        assert json.loads(instrument.raw) == raw


def test_nautilus_rest_klines_trades_and_time() -> None:
    klines_body = (NAUTILUS / "http_responses/http_spot_market_klines.json").read_bytes()
    rows = json.loads(klines_body)
    last_close_us = rows[-1][6] * 1000
    bars = parse_klines(
        klines_body,
        exchange="binance",
        instrument_name="BTCUSDT",
        resolution="1m",
        now_us=last_close_us,  # the last bar closes exactly now: not closed yet
        time_unit="MILLISECOND",
    )
    assert len(bars) == len(rows) == 10
    for bar, row in zip(bars, rows, strict=True):
        assert bar.tick_us == row[0] * 1000
        assert [f"{v:f}" for v in (bar.open, bar.high, bar.low, bar.close, bar.volume)] == row[1:6]
    assert [bar.closed for bar in bars] == [True] * 9 + [False]

    for name in ("http_spot_market_trades.json", "http_spot_market_historical_trades.json"):
        body = (NAUTILUS / "http_responses" / name).read_bytes()
        trades = parse_rest_trades(
            body,
            exchange="binance",
            instrument_name="BTCUSDT",
            received_us=7,
            time_unit="MILLISECOND",
        )
        raws = json.loads(body)
        assert len(trades) == len(raws) > 0
        for trade, raw in zip(trades, raws, strict=True):
            assert trade.trade_seq == raw["id"]
            assert trade.trade_id == str(raw["id"])
            assert exact(trade.price, raw["price"])
            assert exact(trade.quantity, raw["qty"])
            assert trade.trade_us == raw["time"] * 1000
            assert trade.is_buyer_maker is raw["isBuyerMaker"]
            assert trade.was_best_price_match is raw["isBestMatch"]
        assert [t.trade_seq for t in trades] == sorted(t.trade_seq for t in trades)

    time_body = (NAUTILUS / "http_responses/http_spot_market_time.json").read_bytes()
    assert parse_server_time_us(time_body) == json.loads(time_body)["serverTime"] * 1000


def test_ccxt_spot_klines() -> None:
    fixtures = json.loads((CORPUS / "ccxt_static/response/binance.json").read_text())
    (entry,) = [e for e in fixtures["methods"]["fetchOHLCV"] if "Spot" in e["description"]]
    rows = entry["httpResponse"]
    bars = parse_klines(
        json.dumps(rows),
        exchange="binance",
        instrument_name="BTCUSDT",
        resolution="1h",
        now_us=rows[-1][6] * 1000 + 1,
        time_unit="MILLISECOND",
    )
    assert len(bars) == len(rows) > 0
    for bar, row in zip(bars, rows, strict=True):
        assert bar.tick_us == row[0] * 1000
        assert [f"{v:f}" for v in (bar.open, bar.high, bar.low, bar.close, bar.volume)] == row[1:6]
        assert bar.closed
