"""Replays captured Deribit traffic (the shared corpus beside the checkout) through the parsers.

Every field of every trade, bar, ticker and instrument is checked against the raw JSON: the
reference reading is ``json.loads(..., parse_float=Decimal)``, so equality is exact and the
Decimal keeps the JSON number's own text.
"""

from __future__ import annotations

import json
from collections import Counter
from decimal import Decimal
from pathlib import Path
from typing import Any

import msgspec
import pytest

from tradingd.adapters.deribit.parsing import (
    PERPETUAL_EXPIRATION_MS,
    FrameKind,
    RpcFailure,
    classify_instrument,
    parse_chart_data,
    parse_frame,
    parse_instruments,
    parse_server_time_us,
    parse_ticker,
    parse_trades_page,
    rpc_result,
)
from tradingd.model import Bar, Instrument, MarketType, Ticker, Trade

CORPUS = Path(__file__).resolve().parents[2] / ".." / "shared" / "corpus"
NAUTILUS = CORPUS / "nautilus_trader" / "real" / "crates" / "adapters" / "deribit" / "test_data"
EXCHANGE = "deribit"

pytestmark = [
    pytest.mark.corpus,
    pytest.mark.skipif(
        not CORPUS.is_dir(),
        reason=f"captured exchange corpus not found at {CORPUS} (it lives beside the checkout)",
    ),
]


_ENCODE = msgspec.json.Encoder(decimal_format="number").encode


def load(text: str | bytes) -> Any:
    return json.loads(text, parse_float=Decimal)


def same(parsed: Decimal | None, raw: object) -> bool:
    """Exactly the JSON number (same value and same text), or both absent."""
    if raw is None:
        return parsed is None
    return parsed is not None and parsed == Decimal(str(raw)) and str(parsed) == str(raw)


def check_trade(trade: Trade, raw: dict[str, Any], received_us: int) -> None:
    assert trade.exchange == EXCHANGE
    assert trade.instrument_name == raw["instrument_name"]
    assert trade.market_type is classify_instrument(raw["instrument_name"])[0]
    assert trade.trade_id == raw["trade_id"] and isinstance(trade.trade_id, str)
    assert trade.trade_seq == int(raw["trade_seq"])
    assert same(trade.price, raw["price"])
    assert same(trade.quantity, raw["amount"])
    assert trade.is_buyer_maker is (raw["direction"] == "sell")
    assert trade.was_best_price_match is None
    assert trade.trade_us == int(raw["timestamp"]) * 1000
    assert trade.received_us == received_us


def check_ticker(ticker: Ticker, raw: dict[str, Any], received_us: int) -> None:
    assert ticker.exchange == EXCHANGE
    assert ticker.instrument_name == raw["instrument_name"]
    for field in (
        "best_bid_price",
        "best_bid_amount",
        "best_ask_price",
        "best_ask_amount",
        "last_price",
        "mark_price",
        "index_price",
    ):
        assert same(getattr(ticker, field), raw.get(field)), field
    assert ticker.timestamp_us == int(raw["timestamp"]) * 1000
    assert ticker.received_us == received_us


def check_bar(bar: Bar, raw: dict[str, Any], instrument: str, resolution: str) -> None:
    assert bar.exchange == EXCHANGE
    assert bar.instrument_name == instrument and bar.resolution == resolution
    assert bar.tick_us == raw["tick"] * 1000
    for field in ("open", "high", "low", "close", "volume"):
        assert same(getattr(bar, field), raw[field]), field


def check_instrument(instrument: Instrument, raw: dict[str, Any], raw_text: str) -> None:
    assert instrument.exchange == EXCHANGE
    assert instrument.instrument_name == raw["instrument_name"]
    kind = raw["kind"]
    expected_type = {
        "future": MarketType.FUTURE,
        "future_combo": MarketType.FUTURE,
        "option": MarketType.OPTION,
        "option_combo": MarketType.OPTION,
        "spot": MarketType.SPOT,
    }[kind]
    if kind == "future" and raw.get("settlement_period") == "perpetual":
        expected_type = MarketType.PERPETUAL
    assert instrument.market_type is expected_type
    if kind in ("future", "option", "spot"):
        assert expected_type is classify_instrument(raw["instrument_name"])[0]
    assert instrument.base_currency == raw["base_currency"]
    assert instrument.quote_currency == raw["quote_currency"]
    assert same(instrument.tick_size, raw["tick_size"])
    assert same(instrument.min_trade_amount, raw["min_trade_amount"])
    assert same(instrument.contract_size, raw.get("contract_size", 1))
    expiration = raw.get("expiration_timestamp")
    if expected_type in (MarketType.PERPETUAL, MarketType.SPOT) or expiration in (
        None,
        PERPETUAL_EXPIRATION_MS,
    ):
        assert instrument.expiration_us is None
    else:
        assert instrument.expiration_us == expiration * 1000
    assert instrument.is_active is raw["is_active"]
    assert instrument.min_notional is None
    assert load(instrument.raw) == raw
    assert instrument.raw in raw_text


def replay_frame(payload: str, received_us: int) -> tuple[FrameKind, str]:
    """Parse one received frame and check its records against the raw JSON."""
    frame = parse_frame(payload, exchange=EXCHANGE, received_us=received_us)
    raw = load(payload)
    if frame.kind is FrameKind.DATA:
        data = raw["params"]["data"]
        channel = raw["params"]["channel"]
        if channel.startswith("trades."):
            assert len(frame.records) == len(data) >= 1
            for trade, raw_trade in zip(frame.records, data, strict=True):
                check_trade(trade, raw_trade, received_us)
        elif channel.startswith("ticker."):
            (ticker,) = frame.records
            check_ticker(ticker, data, received_us)
        else:
            (bar,) = frame.records
            instrument, _, code = channel.removeprefix("chart.trades.").rpartition(".")
            check_bar(bar, data, instrument, {"1": "1m"}.get(code, code))
        return frame.kind, channel.split(".")[0]
    if frame.kind is FrameKind.IGNORED:
        return frame.kind, frame.channel.split(".")[0] or frame.method
    return frame.kind, ""


# ---------------------------------------------------------------------------- cryptofeed


def cryptofeed_received(path: Path) -> list[tuple[float, str]]:
    frames = []
    for line in path.read_text().splitlines():
        if not line or " <-> " in line or " <- " in line:
            continue
        stamp, payload = line.split(": ", 1)
        frames.append((float(stamp), payload))
    return frames


@pytest.mark.parametrize(
    ("name", "tickers", "books"),
    [("DERIBIT.ws.1.0", 89, 46), ("older_2021-04/DERIBIT.ws.30.0", 92, 56)],
)
def test_cryptofeed_sessions(name: str, tickers: int, books: int) -> None:
    counts: Counter[tuple[FrameKind, str]] = Counter()
    for stamp, payload in cryptofeed_received(CORPUS / "cryptofeed_sample_data" / name):
        counts[replay_frame(payload, int(stamp * 1_000_000))] += 1
    assert counts[(FrameKind.DATA, "ticker")] == tickers
    assert counts[(FrameKind.IGNORED, "book")] == books
    assert counts[(FrameKind.REPLY, "")] == 1
    assert sum(counts.values()) == tickers + books + 1


def test_cryptofeed_subscribe_result_lists_only_granted_channels() -> None:
    lines = (CORPUS / "cryptofeed_sample_data" / "DERIBIT.ws.1.0").read_text().splitlines()
    asked = load(next(line for line in lines if " <- " in line).split(": ", 1)[1])
    reply_payload = next(
        p for _, p in cryptofeed_received(CORPUS / "cryptofeed_sample_data" / "DERIBIT.ws.1.0")
    )
    frame = parse_frame(reply_payload, exchange=EXCHANGE, received_us=0)
    assert frame.reply is not None and frame.reply.id == asked["id"]
    granted = load(bytes(frame.reply.result))
    assert set(granted) <= set(asked["params"]["channels"])


def test_cryptofeed_instruments() -> None:
    total = 0
    for line in (CORPUS / "cryptofeed_sample_data" / "DERIBIT.0").read_text().splitlines():
        if " -> " not in line:
            continue
        body = line.split(" -> ", 1)[1].split(": ", 1)[1]
        result = rpc_result(body)
        instruments = parse_instruments(result, exchange=EXCHANGE)
        raws = load(body)["result"]
        assert len(instruments) == len(raws) > 0
        for instrument, raw in zip(instruments, raws, strict=True):
            check_instrument(instrument, raw, body)
        total += len(instruments)
    assert total > 100


# ---------------------------------------------------------------------------- ssc2ce, tardis


def test_ssc2ce_testnet_dump() -> None:
    kinds = Counter(
        replay_frame(line, 1)
        for line in (CORPUS / "ssc2ce" / "deribit_dump.jsonl").read_text().splitlines()
        if line
    )
    assert kinds == {(FrameKind.REPLY, ""): 1, (FrameKind.IGNORED, "book"): 5}


def test_tardis_messages() -> None:
    path = CORPUS / "tardis_node" / "tardis_mappers_test_deribit_messages.jsonl"
    kinds = Counter(replay_frame(line, 7) for line in path.read_text().splitlines() if line)
    assert kinds == {
        (FrameKind.DATA, "trades"): 3,
        (FrameKind.DATA, "ticker"): 10,
        (FrameKind.IGNORED, "book"): 4,
        (FrameKind.IGNORED, "quote"): 1,
    }


def test_tardis_combo_ticker_with_negative_prices() -> None:
    path = CORPUS / "tardis_node" / "tardis_mappers_test_deribit_messages.jsonl"
    line = next(x for x in path.read_text().splitlines() if "BTC-FS-30SEP22_PERP" in x)
    (ticker,) = parse_frame(line, exchange=EXCHANGE, received_us=0).records
    assert ticker.best_bid_price == Decimal(-7) and ticker.last_price == Decimal("-13.5")


# ---------------------------------------------------------------------------- ccxt

# ccxt's fixture tooling turned numbers into strings; Deribit sends these as JSON integers.
# ccxt's fixtures store every number as a string; Deribit sends JSON numbers, which the parser
# keeps as their exact text (a JSON string is no number to it). Restored here: integers as int,
# decimals as Decimal (written back as a JSON number with the same text).
_STRINGIFIED_INTEGERS = {"trade_seq", "timestamp", "tick_direction", "usIn", "usOut", "usDiff"}
_STRINGIFIED_DECIMALS = {
    "amount",
    "best_ask_amount",
    "best_ask_price",
    "best_bid_amount",
    "best_bid_price",
    "contracts",
    "high",
    "index_price",
    "last_price",
    "low",
    "mark_price",
    "max_price",
    "min_price",
    "price",
    "price_change",
    "volume",
    "volume_notional",
    "volume_usd",
}


def _unstringify(value: Any) -> Any:
    if isinstance(value, dict):
        return {key: _unstringify_field(key, item) for key, item in value.items()}
    if isinstance(value, list):
        return [_unstringify(item) for item in value]
    return value


def _unstringify_field(key: str, item: Any) -> Any:
    if isinstance(item, str) and key in _STRINGIFIED_INTEGERS:
        return int(item)
    if isinstance(item, str) and key in _STRINGIFIED_DECIMALS:
        return Decimal(item)
    return _unstringify(item)


def ccxt_responses(method: str) -> list[dict[str, Any]]:
    fixture = load((CORPUS / "ccxt_static" / "response" / "deribit.json").read_text())
    return [_unstringify(entry["httpResponse"]) for entry in fixture["methods"][method]]


def test_ccxt_trades() -> None:
    for response in ccxt_responses("fetchTrades"):
        body = _ENCODE(response)
        trades, has_more = parse_trades_page(rpc_result(body), exchange=EXCHANGE, received_us=3)
        raws = response["result"]["trades"]
        assert len(trades) == len(raws) > 0
        assert has_more is response["result"]["has_more"]
        for trade, raw in zip(trades, raws, strict=True):
            check_trade(trade, raw, 3)
            assert trade.market_type is MarketType.SPOT


def test_ccxt_ticker() -> None:
    for response in ccxt_responses("fetchTicker"):
        body = _ENCODE(response)
        ticker = parse_ticker(rpc_result(body), exchange=EXCHANGE, received_us=5)
        check_ticker(ticker, response["result"], 5)


def test_ccxt_chart_data() -> None:
    (response,) = ccxt_responses("fetchOHLCV")
    result = response["result"]
    bars = parse_chart_data(
        rpc_result(_ENCODE(response)),
        exchange=EXCHANGE,
        instrument_name="BTC_USDT",
        resolution="1h",
        now_us=int(response["usOut"]),
        received_us=1,
    )
    check_columnar(bars, result, "BTC_USDT", "1h")


def check_columnar(
    bars: list[Bar], result: dict[str, Any], instrument: str, resolution: str
) -> None:
    assert len(bars) == len(result["ticks"]) > 0
    for index, bar in enumerate(bars):
        raw = {name: result[name][index] for name in ("open", "high", "low", "close", "volume")}
        check_bar(bar, dict(raw, tick=result["ticks"][index]), instrument, resolution)


# ---------------------------------------------------------------------------- nautilus


def nautilus(name: str) -> str:
    return (NAUTILUS / name).read_text()


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("ws_trades.json", (FrameKind.DATA, "trades")),
        ("ws_trades_option_combo.json", (FrameKind.DATA, "trades")),
        ("ws_ticker.json", (FrameKind.DATA, "ticker")),
        ("ws_chart.json", (FrameKind.DATA, "chart")),
        ("ws_test_request.json", (FrameKind.TEST_REQUEST, "")),
        ("ws_error.json", (FrameKind.REPLY, "")),
        ("ws_quote.json", (FrameKind.IGNORED, "quote")),
        ("ws_book_grouped_snapshot.json", (FrameKind.IGNORED, "book")),
        ("ws_portfolio.json", (FrameKind.IGNORED, "user")),
        ("ws_volatility_index.json", (FrameKind.IGNORED, "deribit_volatility_index")),
        ("http_test.json", (FrameKind.REPLY, "")),
    ],
)
def test_nautilus_frames(name: str, expected: tuple[FrameKind, str]) -> None:
    assert replay_frame(nautilus(name), 11) == expected


def test_nautilus_multi_trade_frame_and_combo() -> None:
    frame = parse_frame(nautilus("ws_trades.json"), exchange=EXCHANGE, received_us=0)
    assert [t.trade_seq for t in frame.records] == [271252854, 271252855]
    (combo,) = parse_frame(
        nautilus("ws_trades_option_combo.json"), exchange=EXCHANGE, received_us=0
    ).records
    assert combo.market_type is MarketType.OPTION and combo.instrument_name.startswith("BTC-CS-")


def test_nautilus_rate_limit_error() -> None:
    frame = parse_frame(nautilus("ws_error.json"), exchange=EXCHANGE, received_us=0)
    assert frame.reply is not None and frame.reply.error is not None
    assert (frame.reply.error.code, frame.reply.error.message) == (10028, "too_many_requests")
    with pytest.raises(RpcFailure):
        rpc_result(nautilus("ws_error.json"))


@pytest.mark.parametrize(
    "name",
    [
        "http_get_last_trades.json",
        "http_get_last_trades_future_combo.json",
        "http_get_last_trades_option_combo.json",
        "http_get_last_trades_perpetual_with_combo_tags.json",
    ],
)
def test_nautilus_trade_history(name: str) -> None:
    text = nautilus(name)
    trades, has_more = parse_trades_page(rpc_result(text), exchange=EXCHANGE, received_us=9)
    raw = load(text)["result"]
    assert has_more is raw["has_more"]
    assert len(trades) == len(raw["trades"]) > 0
    for trade, raw_trade in zip(trades, raw["trades"], strict=True):
        check_trade(trade, raw_trade, 9)


def test_nautilus_chart_history() -> None:
    text = nautilus("http_get_tradingview_chart_data.json")
    raw = load(text)
    bars = parse_chart_data(
        rpc_result(text),
        exchange=EXCHANGE,
        instrument_name="BTC-PERPETUAL",
        resolution="1m",
        now_us=raw["usIn"],
        received_us=1,
    )
    check_columnar(bars, raw["result"], "BTC-PERPETUAL", "1m")
    assert all(bar.closed for bar in bars)


@pytest.mark.parametrize(
    "name",
    [
        "http_get_instruments.json",
        "http_get_instruments_future_combo.json",
        "http_get_instruments_option_combo.json",
    ],
)
def test_nautilus_instruments(name: str) -> None:
    text = nautilus(name)
    instruments = parse_instruments(rpc_result(text), exchange=EXCHANGE)
    raws = load(text)["result"]
    assert len(instruments) == len(raws) > 0
    for instrument, raw in zip(instruments, raws, strict=True):
        check_instrument(instrument, raw, text)


def test_nautilus_server_time() -> None:
    assert parse_server_time_us(rpc_result(nautilus("http_get_time.json"))) == 1733338800000000
