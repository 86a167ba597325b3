"""The pure Deribit parser: own fixtures in the exact wire format, and hypothesis."""

from __future__ import annotations

import json
from decimal import Decimal
from typing import Any

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tradingd.adapters.base import ParseError
from tradingd.adapters.deribit.parsing import (
    FrameKind,
    NotificationError,
    RpcFailure,
    channel_name,
    classify_instrument,
    parse_bar,
    parse_channel_list,
    parse_chart_data,
    parse_frame,
    parse_instruments,
    parse_server_time_us,
    parse_ticker,
    parse_trades,
    parse_trades_page,
    resolution_code,
    rpc_result,
)
from tradingd.model import (
    Bar,
    Channel,
    MarketType,
    PositiveDecimalMemo,
    Subscription,
    Ticker,
    Trade,
)

EXCHANGE = "deribit"
RECEIVED = 1_700_000_000_123_456
ENCODE = msgspec.json.Encoder(decimal_format="number").encode


def notification(channel: str, data: Any) -> bytes:
    return ENCODE(
        {"jsonrpc": "2.0", "method": "subscription", "params": {"channel": channel, "data": data}}
    )


def parse(frame: bytes | str) -> Any:
    return parse_frame(frame, exchange=EXCHANGE, received_us=RECEIVED)


TRADES_FRAME = (
    b'{"jsonrpc":"2.0","method":"subscription","params":{"channel":"trades.BTC-PERPETUAL.100ms",'
    b'"data":[{"trade_seq":30289442,"trade_id":"48079269","timestamp":1590484512188,'
    b'"tick_direction":2,"price":8950,"mark_price":8948.9,"instrument_name":"BTC-PERPETUAL",'
    b'"index_price":8955.88,"direction":"sell","amount":10},'
    b'{"trade_seq":30289443,"trade_id":"48079270","timestamp":1590484512190,"tick_direction":3,'
    b'"price":8950.5,"mark_price":8948.9,"instrument_name":"BTC-PERPETUAL",'
    b'"index_price":8955.88,"direction":"buy","amount":1.2e2,"contracts":12.0}]}}'
)

TICKER_DATA: dict[str, Any] = {
    "best_ask_amount": 100,
    "best_ask_price": 36443,
    "best_bid_amount": 5000,
    "best_bid_price": 36442.5,
    "current_funding": 0,
    "estimated_delivery_price": 36441.64,
    "funding_8h": 0.0000211,
    "index_price": 36441.64,
    "instrument_name": "BTC-PERPETUAL",
    "interest_value": 1.7362511643080387,
    "last_price": 36457.5,
    "mark_price": 36446.51,
    "max_price": 36991.72,
    "min_price": 35898.37,
    "open_interest": 502097590,
    "settlement_price": 36169.49,
    "state": "open",
    "stats": {"high": 36824.5, "low": 35213.5, "price_change": 0.7229, "volume": 7871.02},
    "timestamp": 1623060194301,
}

BAR_DATA = {
    "volume": 0.05219351,
    "tick": 1573645080000,
    "open": 8869.79,
    "low": 8788.25,
    "high": 8870.31,
    "cost": 460,
    "close": 8791.25,
}


# ---------------------------------------------------------------------------- trades


def test_trades_notification_yields_one_trade_per_element_exactly() -> None:
    frame = parse(TRADES_FRAME)
    assert frame.kind is FrameKind.DATA
    assert frame.channel == "trades.BTC-PERPETUAL.100ms"
    first, second = frame.records
    assert first == Trade(
        exchange=EXCHANGE,
        instrument_name="BTC-PERPETUAL",
        market_type=MarketType.PERPETUAL,
        trade_id="48079269",
        trade_seq=30289442,
        price_text="8950",
        quantity_text="10",
        is_buyer_maker=True,
        trade_us=1590484512188000,
        received_us=RECEIVED,
    )
    assert second.is_buyer_maker is False
    assert second.price == Decimal("8950.5")
    # Exponent notation is a JSON number like any other.
    assert second.quantity == Decimal(120)
    assert second.trade_us == 1590484512190000


def test_trade_ids_stay_strings_and_prices_never_go_through_float() -> None:
    data = [
        {
            "trade_seq": 1,
            "trade_id": "ETH-2696097",
            "timestamp": 1590486335742,
            "price": 0.1,
            "instrument_name": "ETH-PERPETUAL",
            "direction": "buy",
            "amount": 0.30000000000000004,
        }
    ]
    (trade,) = parse_trades(ENCODE(data), exchange=EXCHANGE, received_us=RECEIVED)
    assert trade.trade_id == "ETH-2696097"
    assert trade.price.as_tuple() == Decimal("0.1").as_tuple()
    assert str(trade.quantity) == "0.30000000000000004"


def test_integer_trade_id_is_a_schema_error() -> None:
    data = [
        {
            "trade_seq": 1,
            "trade_id": 48079269,
            "timestamp": 1,
            "price": 1,
            "instrument_name": "BTC-PERPETUAL",
            "direction": "buy",
            "amount": 10,
        }
    ]
    with pytest.raises(ParseError, match="trade_id"):
        parse_trades(ENCODE(data), exchange=EXCHANGE, received_us=RECEIVED)


@pytest.mark.parametrize(
    ("name", "market_type", "combo"),
    [
        ("BTC-PERPETUAL", MarketType.PERPETUAL, False),
        ("BTC_USDC-PERPETUAL", MarketType.PERPETUAL, False),
        ("BTC-27DEC24", MarketType.FUTURE, False),
        ("ETH-5JUN20", MarketType.FUTURE, False),
        ("BTC-27DEC24-50000-C", MarketType.OPTION, False),
        ("ETH-10SEP21-3350-P", MarketType.OPTION, False),
        ("XRP_USDC-30JUN23-0d625-C", MarketType.OPTION, False),
        ("BTC_USDC", MarketType.SPOT, False),
        ("STETH_ETH", MarketType.SPOT, False),
        ("BTC-FS-30SEP22_PERP", MarketType.FUTURE, True),
        ("BTC-FS-22MAY26_19MAY26", MarketType.FUTURE, True),
        ("BTC-CS-19MAY26-70000_75000", MarketType.OPTION, True),
        ("BTC-STRD-29MAY26-77000", MarketType.OPTION, True),
        ("BTC-CSR12-16SEP22-21000_23000", MarketType.OPTION, True),
    ],
)
def test_market_type_comes_from_the_instrument_name(
    name: str, market_type: MarketType, combo: bool
) -> None:
    assert classify_instrument(name) == (market_type, combo)


@pytest.mark.parametrize("name", ["", "btc-perpetual", "BTC", "BTC-", "BTC-27DEC24-X-C", "A B"])
def test_unrecognised_instrument_names_are_parse_errors(name: str) -> None:
    with pytest.raises(ParseError, match="instrument name"):
        classify_instrument(name)


def _trade(**overrides: Any) -> dict[str, Any]:
    trade: dict[str, Any] = {
        "trade_seq": 7,
        "trade_id": "7",
        "timestamp": 1590484512188,
        "tick_direction": 0,
        "price": 100.5,
        "instrument_name": "BTC-PERPETUAL",
        "index_price": 100,
        "direction": "buy",
        "amount": 10,
    }
    trade.update(overrides)
    return trade


@pytest.mark.parametrize(
    ("overrides", "reason"),
    [
        ({"amount": 0}, "amount must be a positive"),
        ({"amount": -10}, "amount must be a positive"),
        ({"price": 0}, "price must be a positive"),
        ({"price": -1.5}, "price must be a positive"),
        ({"price": "NaN"}, "price must be a positive"),
        ({"price": "Infinity"}, "price must be a positive"),
        ({"amount": "sNaN"}, "amount must be a positive"),
        ({"direction": "up"}, "direction"),
        ({"trade_seq": -1}, "trade_seq"),
        ({"trade_seq": "7"}, "trade_seq"),
        ({"timestamp": -1}, "timestamp"),
        ({"timestamp": 10**20}, "timestamp"),
        ({"trade_id": ""}, "trade_id"),
        ({"price": None}, "price"),
        ({"instrument_name": "nonsense"}, "instrument name"),
    ],
)
def test_impossible_trades_are_parse_errors(overrides: dict[str, Any], reason: str) -> None:
    frame = notification("trades.BTC-PERPETUAL.100ms", [_trade(), _trade(**overrides)])
    with pytest.raises(NotificationError, match=reason) as caught:
        parse(frame)
    assert caught.value.channel == "trades.BTC-PERPETUAL.100ms"


def _frame_with_numbers(price: bytes, amount: bytes, name: bytes = b"BTC-PERPETUAL") -> bytes:
    """A trades notification with the price and amount spelt exactly as given."""
    return (
        b'{"jsonrpc":"2.0","method":"subscription","params":{"channel":"trades.%s.100ms",'
        b'"data":[{"trade_seq":7,"trade_id":"7","timestamp":1590484512188,"price":%s,'
        b'"instrument_name":"%s","direction":"buy","amount":%s}]}}' % (name, price, name, amount)
    )


@pytest.mark.parametrize(
    "text",
    [
        "1.10",  # not the shortest form: kept, not "1.1"
        "1.2e2",
        "1E-7",
        "92294.50",
        "0.30000000000000001",  # 17 digits: a float would read 0.3
        "12345678901234567890.5e-10",  # more digits than a double holds
        "0.000000000000000000010",
    ],
)
def test_numbers_are_stored_exactly_as_the_venue_wrote_them(text: str) -> None:
    (trade,) = parse(_frame_with_numbers(text.encode(), text.encode())).records
    assert trade.price_text == text and trade.quantity_text == text
    assert trade.price == Decimal(text)


@pytest.mark.parametrize(
    ("amount", "shown"),
    [
        (b"0", "got 0"),
        (b"0.0", "got 0.0"),
        (b"-10", "got -10"),
        (b"-0", "got -0"),
        (b'"NaN"', 'got "NaN"'),
        (b'"Infinity"', 'got "Infinity"'),
        (b'"1.5"', 'got "1.5"'),  # a JSON string is no JSON number
        (b"null", "got null"),
        (b"true", "got true"),
        (b"[1]", "got [1]"),
        (b"1e20", "got 1e20"),
        (b"1e400", "got 1e400"),
        (b"1e-21", "got 1e-21"),
        (b"1." + b"0" * 63, "(65 characters)"),
    ],
)
def test_bad_amounts_are_refused_with_the_reason(amount: bytes, shown: str) -> None:
    with pytest.raises(NotificationError) as caught:
        parse(_frame_with_numbers(b"100.5", amount))
    reason = str(caught.value)
    assert "trade 7 amount must be a positive number in [1e-20, 1e20)" in reason
    assert shown in reason


def test_a_64_character_amount_is_still_a_number() -> None:
    text = "1." + "0" * 62
    (trade,) = parse(_frame_with_numbers(b"100.5", text.encode())).records
    assert trade.quantity_text == text


@pytest.mark.parametrize("price", [b"0", b"-13.5", b"-0.0", b"1e-7"])
def test_combo_prices_may_be_zero_or_negative_but_stay_in_range(price: bytes) -> None:
    frame = _frame_with_numbers(price, b"1", b"BTC-FS-30SEP22_PERP")
    (trade,) = parse(frame).records
    assert trade.price_text == price.decode()


@pytest.mark.parametrize("price", [b"-1e20", b"-1e-21", b'"-1"', b"null", b"1e20"])
def test_impossible_combo_prices_are_refused(price: bytes) -> None:
    with pytest.raises(NotificationError, match="price must be zero or a number of magnitude"):
        parse(_frame_with_numbers(price, b"1", b"BTC-FS-30SEP22_PERP"))


def test_combo_trades_may_have_negative_or_zero_prices() -> None:
    data = [_trade(instrument_name="BTC-FS-30SEP22_PERP", price=-13.5), _trade(price=0)]
    data[1]["instrument_name"] = "BTC-CS-19MAY26-70000_75000"
    trades = parse_trades(ENCODE(data), exchange=EXCHANGE, received_us=RECEIVED)
    assert [t.price for t in trades] == [Decimal("-13.5"), Decimal(0)]
    assert [t.market_type for t in trades] == [MarketType.FUTURE, MarketType.OPTION]


def test_empty_trades_array_is_a_parse_error() -> None:
    with pytest.raises(ParseError, match="no trades"):
        parse(notification("trades.BTC-PERPETUAL.100ms", []))


# ---------------------------------------------------------------------------- tickers


@pytest.mark.parametrize("amount", [b"0", b"0.0", b"-10", b"1e20", b"1e-21", b'"1.5"', b"null"])
def test_one_connections_memo_never_lets_a_refused_number_through(amount: bytes) -> None:
    """A connection's memo of accepted texts across frames: a text refused as a trade amount
    stays refused after it was accepted elsewhere by a wider rule (a zero book amount, a
    combo's price) and after good frames filled the memo."""
    positive = PositiveDecimalMemo()
    text = amount.decode()

    def parse_in_connection(frame: bytes) -> Any:
        return parse_frame(frame, exchange=EXCHANGE, received_us=RECEIVED, positive=positive)

    book = dict(TICKER_DATA, best_bid_amount=json.loads(amount), best_ask_amount=0)
    if text in ("0", "0.0"):
        (ticker,) = parse_in_connection(notification("ticker.BTC-PERPETUAL.100ms", book)).records
        assert ticker.best_bid_amount_text == text
    combo = _frame_with_numbers(amount, b"1", b"BTC-FS-30SEP22_PERP")
    if text in ("0", "0.0", "-10"):
        (trade,) = parse_in_connection(combo).records
        assert trade.price_text == text
    for _ in range(2):
        (trade,) = parse_in_connection(_frame_with_numbers(b"100.5", b"10")).records
        assert (trade.price_text, trade.quantity_text) == ("100.5", "10")
        with pytest.raises(NotificationError, match="trade 7 amount must be a positive"):
            parse_in_connection(_frame_with_numbers(b"100.5", amount))
        with pytest.raises(NotificationError, match="trade 7 price must be a positive"):
            parse_in_connection(_frame_with_numbers(amount, b"10"))
        with pytest.raises(NotificationError, match="last_price"):
            parse_in_connection(
                notification("ticker.BTC-PERPETUAL.100ms", dict(TICKER_DATA, last_price=0))
            )
    assert all(float(key) > 0 for key in positive.floats)
    assert text not in positive.floats


def test_ticker_notification() -> None:
    frame = parse(notification("ticker.BTC-PERPETUAL.100ms", TICKER_DATA))
    assert frame.kind is FrameKind.DATA
    assert frame.records == [
        Ticker(
            exchange=EXCHANGE,
            instrument_name="BTC-PERPETUAL",
            best_bid_price_text="36442.5",
            best_bid_amount_text="5000",
            best_ask_price_text="36443",
            best_ask_amount_text="100",
            last_price_text="36457.5",
            mark_price_text="36446.51",
            index_price_text="36441.64",
            timestamp_us=1623060194301000,
            received_us=RECEIVED,
        )
    ]


def test_ticker_allows_nulls_and_empty_option_book_sides() -> None:
    data = dict(
        TICKER_DATA,
        instrument_name="BTC-8JUN20-8750-P",
        best_bid_price=None,
        best_bid_amount=None,
        best_ask_price=0,
        best_ask_amount=0,
        last_price=None,
        mark_price=0,
    )
    del data["index_price"]
    ticker = parse_ticker(ENCODE(data), exchange=EXCHANGE, received_us=RECEIVED)
    assert ticker.best_bid_price is None and ticker.last_price is None
    assert ticker.best_ask_price == 0 and ticker.mark_price == 0
    assert ticker.index_price is None


@pytest.mark.parametrize(
    ("overrides", "reason"),
    [
        ({"index_price": 0}, "index_price"),
        ({"index_price": -5}, "index_price"),
        ({"best_bid_amount": -1}, "best_bid_amount"),
        ({"best_ask_price": -1}, "best_ask_price"),
        ({"last_price": 0}, "last_price"),
        ({"mark_price": "Infinity"}, "mark_price"),
        ({"timestamp": "1623060194301"}, "timestamp"),
        ({"instrument_name": None}, "instrument_name"),
    ],
)
def test_impossible_tickers_are_parse_errors(overrides: dict[str, Any], reason: str) -> None:
    with pytest.raises(ParseError, match=reason):
        parse(notification("ticker.BTC-PERPETUAL.100ms", dict(TICKER_DATA, **overrides)))


def test_combo_ticker_prices_may_be_negative() -> None:
    data = dict(
        TICKER_DATA,
        instrument_name="BTC-FS-30SEP22_PERP",
        best_bid_price=-7,
        best_ask_price=-5,
        last_price=-13.5,
    )
    ticker = parse_ticker(ENCODE(data), exchange=EXCHANGE, received_us=RECEIVED)
    assert ticker.best_bid_price == Decimal(-7)


# ---------------------------------------------------------------------------- bars


def test_chart_notification_is_an_open_bar_with_canonical_resolution() -> None:
    frame = parse(notification("chart.trades.BTC-PERPETUAL.1", BAR_DATA))
    assert frame.records == [
        Bar(
            exchange=EXCHANGE,
            instrument_name="BTC-PERPETUAL",
            resolution="1m",
            tick_us=1573645080000000,
            open_text="8869.79",
            high_text="8870.31",
            low_text="8788.25",
            close_text="8791.25",
            volume_text="0.05219351",
            closed=False,
            received_us=RECEIVED,
        )
    ]


@pytest.mark.parametrize(
    ("code", "resolution"), [("1", "1m"), ("5", "5m"), ("60", "1h"), ("1D", "1d"), ("720", "12h")]
)
def test_chart_resolutions(code: str, resolution: str) -> None:
    (bar,) = parse(notification(f"chart.trades.ETH-PERPETUAL.{code}", BAR_DATA)).records
    assert bar.resolution == resolution
    assert bar.instrument_name == "ETH-PERPETUAL"


@pytest.mark.parametrize(
    ("overrides", "reason"),
    [
        ({"high": 8000}, "inconsistent bar"),
        ({"low": 9000}, "inconsistent bar"),
        ({"volume": -1}, "volume"),
        ({"open": -1, "low": -1}, "open"),
        ({"tick": None}, "tick"),
    ],
)
def test_impossible_bars_are_parse_errors(overrides: dict[str, Any], reason: str) -> None:
    with pytest.raises(ParseError, match=reason):
        parse(notification("chart.trades.BTC-PERPETUAL.1", dict(BAR_DATA, **overrides)))


def test_unknown_chart_resolution_is_a_parse_error() -> None:
    with pytest.raises(ParseError, match="malformed chart channel"):
        parse(notification("chart.trades.BTC-PERPETUAL.7", BAR_DATA))


def test_zero_volume_filler_bar_is_valid() -> None:
    data = dict(BAR_DATA, open=1, high=1, low=1, close=1, volume=0, cost=0)
    bar = parse_bar(
        ENCODE(data),
        exchange=EXCHANGE,
        instrument_name="BTC-PERPETUAL",
        resolution="1m",
        received_us=RECEIVED,
    )
    assert bar.volume == 0


# ---------------------------------------------------------------------------- control frames


def test_heartbeats() -> None:
    assert parse(
        b'{"jsonrpc":"2.0","method":"heartbeat","params":{"type":"test_request"}}'
    ).kind is (FrameKind.TEST_REQUEST)
    assert parse(b'{"jsonrpc":"2.0","method":"heartbeat","params":{"type":"heartbeat"}}').kind is (
        FrameKind.HEARTBEAT
    )
    with pytest.raises(ParseError, match="heartbeat"):
        parse(b'{"jsonrpc":"2.0","method":"heartbeat","params":{"type":"other"}}')


def test_replies() -> None:
    frame = parse(
        b'{"jsonrpc":"2.0","id":42,"result":["trades.BTC-PERPETUAL.100ms"],'
        b'"usIn":1,"usOut":2,"usDiff":1,"testnet":false}'
    )
    assert frame.kind is FrameKind.REPLY and frame.reply is not None
    assert frame.reply.id == 42 and frame.reply.error is None
    assert parse_channel_list(frame.reply.result) == ["trades.BTC-PERPETUAL.100ms"]
    error = parse(
        b'{"jsonrpc":"2.0","id":8163,"error":{"code":11050,"message":"bad_request"},'
        b'"testnet":false,"usIn":1535037392434763,"usOut":1535037392448119,"usDiff":13356}'
    )
    assert error.reply is not None and error.reply.error is not None
    assert error.reply.error.code == 11050
    assert error.reply.error.describe() == "11050 bad_request"


def test_unknown_notifications_and_methods_are_ignored() -> None:
    index = notification(
        "deribit_price_index.btc_usd",
        {"timestamp": 1535098298227, "price": 6521.17, "index_name": "btc_usd"},
    )
    assert parse(index).kind is FrameKind.IGNORED
    assert parse(b'{"jsonrpc":"2.0","method":"announcement","params":{}}').kind is FrameKind.IGNORED


@pytest.mark.parametrize(
    "frame",
    [
        b"",
        b"not json",
        b"[]",
        b"{}",
        b'{"jsonrpc":"2.0","method":"subscription","params":{"data":[]}}',
        b'{"jsonrpc":"2.0","method":"subscription","params":{"channel":"trades.X.100ms"}}',
        b'{"jsonrpc":"2.0","method":"subscription","params":"x"}',
        b'{"jsonrpc":"2.0","id":1}',
        b'{"method":1}',
    ],
)
def test_malformed_frames_are_parse_errors(frame: bytes) -> None:
    with pytest.raises(ParseError):
        parse(frame)


def test_text_frames_parse_like_bytes() -> None:
    assert parse(TRADES_FRAME.decode()).records == parse(TRADES_FRAME).records


# ---------------------------------------------------------------------------- RPC results


def test_rpc_result_and_failure() -> None:
    assert parse_server_time_us(rpc_result(b'{"jsonrpc":"2.0","id":1,"result":1733338800000}')) == (
        1733338800000000
    )
    with pytest.raises(RpcFailure) as caught:
        rpc_result(b'{"jsonrpc":"2.0","id":1,"error":{"code":10028,"message":"too_many_requests"}}')
    assert caught.value.error.code == 10028
    with pytest.raises(ParseError):
        rpc_result(b'{"jsonrpc":"2.0","id":1}')


def test_chart_data_marks_bars_closed_by_now() -> None:
    result = ENCODE(
        {
            "volume": [19.007942601, 20.095877981],
            "cost": [19000, 23400],
            "ticks": [1554373800000, 1554375600000],
            "status": "ok",
            "open": [4963.42, 4986.29],
            "low": [4728.94, 4726.6],
            "high": [5185.45, 5250.87],
            "close": [5052.95, 5013.59],
        }
    )
    bars = parse_chart_data(
        result,
        exchange=EXCHANGE,
        instrument_name="BTC-5APR19",
        resolution="30m",
        now_us=1554375600000000 + 1,
        received_us=RECEIVED,
    )
    assert [bar.closed for bar in bars] == [True, False]
    assert bars[1].high == Decimal("5250.87") and bars[0].volume == Decimal("19.007942601")
    no_data = ENCODE({"status": "no_data", "ticks": [], "open": [], "high": [], "low": []})
    assert (
        parse_chart_data(
            no_data,
            exchange=EXCHANGE,
            instrument_name="BTC-PERPETUAL",
            resolution="1m",
            now_us=0,
            received_us=0,
        )
        == []
    )
    ragged = ENCODE({"status": "ok", "ticks": [1], "open": [], "high": [], "low": [], "close": []})
    with pytest.raises(ParseError, match="lengths"):
        parse_chart_data(
            ragged,
            exchange=EXCHANGE,
            instrument_name="BTC-PERPETUAL",
            resolution="1m",
            now_us=0,
            received_us=0,
        )


def test_trades_page() -> None:
    result = ENCODE({"trades": [_trade(), _trade(trade_seq=8, trade_id="8")], "has_more": True})
    trades, has_more = parse_trades_page(result, exchange=EXCHANGE, received_us=RECEIVED)
    assert [t.trade_seq for t in trades] == [7, 8] and has_more


def test_instruments_keep_raw_json_and_derive_market_types() -> None:
    perpetual = (
        '{"tick_size":0.5,"settlement_period":"perpetual","quote_currency":"USD",'
        '"min_trade_amount":10,"kind":"future","is_active":true,'
        '"instrument_name":"BTC-PERPETUAL","expiration_timestamp":32503708800000,'
        '"contract_size":10,"base_currency":"BTC"}'
    )
    future = perpetual.replace("perpetual", "month").replace("BTC-PERPETUAL", "BTC-29SEP23")
    future = future.replace("32503708800000", "1695974400000")
    option = (
        '{"tick_size":0.0005,"strike":40000.0,"settlement_period":"month",'
        '"quote_currency":"BTC","option_type":"put","min_trade_amount":0.1,"kind":"option",'
        '"is_active":false,"instrument_name":"BTC-24SEP21-40000-P",'
        '"expiration_timestamp":1632470400000,"contract_size":1.0,"base_currency":"BTC"}'
    )
    spot = (
        '{"tick_size":0.01,"quote_currency":"USDC","min_trade_amount":0.0001,"kind":"spot",'
        '"is_active":true,"instrument_name":"BTC_USDC","expiration_timestamp":32503708800000,'
        '"contract_size":0.0001,"base_currency":"BTC"}'
    )
    text = f"[{perpetual},{future}, {option},{spot}]"
    instruments = parse_instruments(text.encode(), exchange=EXCHANGE)
    assert [i.market_type for i in instruments] == [
        MarketType.PERPETUAL,
        MarketType.FUTURE,
        MarketType.OPTION,
        MarketType.SPOT,
    ]
    assert [i.raw for i in instruments] == [perpetual, future, option, spot]
    assert [i.expiration_us for i in instruments] == [
        None,
        1695974400000000,
        1632470400000000,
        None,
    ]
    assert instruments[0].contract_size == Decimal(10)
    assert instruments[2].tick_size == Decimal("0.0005") and not instruments[2].is_active
    assert instruments[3].quote_currency == "USDC"
    with pytest.raises(ParseError, match="tick_size"):
        parse_instruments(f"[{perpetual.replace('0.5', '0')}]".encode(), exchange=EXCHANGE)


# ---------------------------------------------------------------------------- channels


@pytest.mark.parametrize(
    ("canonical", "code"), [("1m", "1"), ("5m", "5"), ("1h", "60"), ("1d", "1D"), ("12h", "720")]
)
def test_resolution_codes(canonical: str, code: str) -> None:
    assert resolution_code(canonical) == code


def test_four_hour_bars_do_not_exist_on_deribit() -> None:
    with pytest.raises(ValueError, match="4h"):
        resolution_code("4h")


def test_channel_names() -> None:
    assert channel_name(Subscription(Channel.TRADES, "BTC-PERPETUAL")) == (
        "trades.BTC-PERPETUAL.100ms"
    )
    assert channel_name(Subscription(Channel.TICKERS, "BTC-PERPETUAL")) == (
        "ticker.BTC-PERPETUAL.100ms"
    )
    assert channel_name(Subscription(Channel.BARS, "BTC-PERPETUAL"), "1h") == (
        "chart.trades.BTC-PERPETUAL.60"
    )
    assert channel_name(Subscription(Channel.BARS, "ETH-PERPETUAL", "1d"), "1m") == (
        "chart.trades.ETH-PERPETUAL.1D"
    )


# ---------------------------------------------------------------------------- hypothesis

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=12),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=4)
    ),
    max_leaves=12,
)
decimals_or_junk = (
    st.decimals(allow_nan=True, allow_infinity=True).map(str)
    | st.decimals(allow_nan=False, allow_infinity=False, places=8).map(lambda d: float(d))
    | json_values
)
trade_like = st.fixed_dictionaries(
    {},
    optional={
        "trade_seq": st.integers(min_value=-5, max_value=2**64) | json_values,
        "trade_id": st.text(max_size=10) | st.integers(),
        "timestamp": st.integers(min_value=-5, max_value=2**60) | json_values,
        "price": decimals_or_junk,
        "amount": decimals_or_junk,
        "direction": st.sampled_from(["buy", "sell", "x"]),
        "instrument_name": st.sampled_from(
            ["BTC-PERPETUAL", "BTC-FS-30SEP22_PERP", "BTC-27DEC24-50000-C", "zz", ""]
        )
        | st.text(max_size=20),
    },
)
ticker_like = st.fixed_dictionaries(
    {},
    optional={
        name: decimals_or_junk
        for name in (
            "best_bid_price",
            "best_bid_amount",
            "best_ask_price",
            "best_ask_amount",
            "last_price",
            "mark_price",
            "index_price",
        )
    }
    | {
        "timestamp": st.integers(min_value=-5, max_value=2**60) | json_values,
        "instrument_name": st.sampled_from(["BTC-PERPETUAL", "BTC-FS-30SEP22_PERP", "x"]),
    },
)
bar_like = st.fixed_dictionaries(
    {},
    optional={name: decimals_or_junk for name in ("open", "high", "low", "close", "volume")}
    | {"tick": st.integers(min_value=-5, max_value=2**60) | json_values},
)
channels = st.sampled_from(
    [
        "trades.BTC-PERPETUAL.100ms",
        "ticker.BTC-PERPETUAL.100ms",
        "chart.trades.BTC-PERPETUAL.1",
        "chart.trades.BTC-PERPETUAL.",
        "chart.trades..1",
        "book.BTC-PERPETUAL.100ms",
        "",
    ]
)
HYPOTHESIS = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _only_parse_errors(frame: bytes) -> None:
    try:
        parse(frame)
    except ParseError:
        pass


@HYPOTHESIS
@given(st.binary(max_size=300))
def test_arbitrary_bytes_raise_only_parse_error(frame: bytes) -> None:
    _only_parse_errors(frame)
    for parser in (parse_trades, parse_ticker):
        try:
            parser(frame, exchange=EXCHANGE, received_us=RECEIVED)
        except ParseError:
            pass
    for pure in (parse_instruments,):
        try:
            pure(frame, exchange=EXCHANGE)
        except ParseError:
            pass
    for result_parser in (parse_channel_list, parse_server_time_us):
        try:
            result_parser(frame)
        except ParseError:
            pass
    try:
        rpc_result(frame)
    except (ParseError, RpcFailure):
        pass


@HYPOTHESIS
@given(json_values, channels, st.sampled_from(["subscription", "heartbeat", "", "x"]))
def test_arbitrary_json_raises_only_parse_error(data: Any, channel: str, method: str) -> None:
    _only_parse_errors(ENCODE(data))
    _only_parse_errors(
        ENCODE({"jsonrpc": "2.0", "method": method, "params": {"channel": channel, "data": data}})
    )
    _only_parse_errors(ENCODE({"jsonrpc": "2.0", "id": data, "result": data, "error": data}))
    for kwargs in ({"now_us": 0, "received_us": 0},):
        try:
            parse_chart_data(
                ENCODE(data),
                exchange=EXCHANGE,
                instrument_name="BTC-PERPETUAL",
                resolution="1m",
                **kwargs,
            )
        except ParseError:
            pass
        try:
            parse_trades_page(ENCODE(data), exchange=EXCHANGE, received_us=0)
        except ParseError:
            pass


@HYPOTHESIS
@given(st.lists(trade_like, min_size=0, max_size=3), ticker_like, bar_like)
def test_almost_valid_payloads_raise_only_parse_error(
    trades: list[dict[str, Any]], ticker: dict[str, Any], bar: dict[str, Any]
) -> None:
    _only_parse_errors(notification("trades.BTC-PERPETUAL.100ms", trades))
    _only_parse_errors(notification("ticker.BTC-PERPETUAL.100ms", ticker))
    _only_parse_errors(notification("chart.trades.BTC-PERPETUAL.1", bar))
    _only_parse_errors(notification("chart.trades.BTC-FS-30SEP22_PERP.1", bar))


def _outcome(parse_data: Any, *args: Any, **kwargs: Any) -> Any:
    try:
        return parse_data(*args, **kwargs)
    except ParseError as exc:
        return f"refused: {exc}"


@HYPOTHESIS
@given(st.lists(trade_like, min_size=0, max_size=3), ticker_like)
def test_one_pass_frames_read_like_their_payload_alone(
    trades: list[dict[str, Any]], ticker: dict[str, Any]
) -> None:
    """Trades and tickers are decoded with the envelope; the records, or the reason for
    refusing, are those of the payload's own decoder."""
    for channel, data, parse_data in (
        ("trades.BTC-PERPETUAL.100ms", trades, parse_trades),
        ("ticker.BTC-PERPETUAL.100ms", ticker, parse_ticker),
    ):
        alone = _outcome(parse_data, ENCODE(data), exchange=EXCHANGE, received_us=RECEIVED)
        framed = _outcome(parse, notification(channel, data))
        if isinstance(alone, str):
            assert framed == f"refused: {channel}: {alone.removeprefix('refused: ')}"
        else:
            expected = alone if channel.startswith("trades.") else [alone]
            assert framed.kind is FrameKind.DATA and framed.records == expected


positive_decimals = st.decimals(
    min_value=Decimal("1e-8"), max_value=Decimal("1e12"), allow_nan=False, allow_infinity=False
).filter(lambda value: len(str(value)) <= 64)  # longer is a corrupt frame (tradingd.model)


@HYPOTHESIS
@given(
    st.lists(
        st.tuples(
            positive_decimals,
            positive_decimals,
            st.integers(min_value=0, max_value=2**62),
            st.integers(min_value=0, max_value=253_402_300_799_999),
            st.booleans(),
            st.text(min_size=1, max_size=20),
        ),
        min_size=1,
        max_size=10,
    )
)
def test_valid_trades_round_trip_exactly(
    rows: list[tuple[Decimal, Decimal, int, int, bool, str]],
) -> None:
    data = [
        {
            "trade_seq": seq,
            "trade_id": trade_id,
            "timestamp": timestamp,
            "price": price,
            "amount": amount,
            "direction": "sell" if sell else "buy",
            "instrument_name": "BTC-27DEC24-50000-C",
        }
        for price, amount, seq, timestamp, sell, trade_id in rows
    ]
    frame = notification("trades.BTC-27DEC24-50000-C.100ms", data)
    trades = parse(frame).records
    assert len(trades) == len(rows)
    for trade, (price, amount, seq, timestamp, sell, trade_id) in zip(trades, rows, strict=True):
        assert trade.price == price and str(trade.price) == str(price)
        assert trade.quantity == amount
        assert trade.trade_seq == seq and trade.trade_us == timestamp * 1000
        assert trade.is_buyer_maker is sell and trade.trade_id == trade_id
        assert trade.market_type is MarketType.OPTION


in_range_numbers = st.one_of(
    st.decimals(
        min_value=Decimal("1e-20"),
        max_value=Decimal("1e20"),
        allow_nan=False,
        allow_infinity=False,
    ).filter(lambda value: value < Decimal("1e20") and len(str(value)) <= 64),
    st.floats(min_value=1e-20, max_value=1e20, exclude_max=True),
)


@HYPOTHESIS
@given(in_range_numbers, in_range_numbers, st.booleans())
def test_numbers_the_fake_venue_writes_are_stored_with_the_same_value(
    price: Decimal | float, amount: Decimal | float, negative_combo: bool
) -> None:
    """The fake venue writes Decimals and floats as JSON numbers (msgspec, ``number`` format),
    as Deribit writes doubles: whatever it writes, the record holds the same value."""
    name = "BTC-FS-30SEP22_PERP" if negative_combo else "BTC-PERPETUAL"
    signed_price = -price if negative_combo else price
    frame = notification(
        f"trades.{name}.100ms", [_trade(price=signed_price, amount=amount, instrument_name=name)]
    )
    (trade,) = parse(frame).records
    written = json.loads(frame, parse_float=Decimal, parse_int=Decimal)["params"]["data"][0]
    assert trade.price_text == ENCODE(signed_price).decode()  # the very text written
    assert trade.price == written["price"] == Decimal(str(signed_price))
    assert trade.quantity == written["amount"] == Decimal(str(amount))
    ticker = parse(
        notification(
            f"ticker.{name}.100ms",
            dict(
                TICKER_DATA, instrument_name=name, best_bid_price=signed_price, index_price=amount
            ),
        )
    ).records[0]
    assert ticker.best_bid_price == trade.price and ticker.index_price == trade.quantity


def test_json_module_agrees_with_the_decimal_text() -> None:
    """Guard for the corpus layer: json.loads(parse_float=Decimal) is the reference reading."""
    raw = json.loads('{"p": 92294.50, "q": 1e-8}', parse_float=Decimal)
    (trade,) = parse_trades(
        ENCODE([_trade(price=raw["p"], amount=raw["q"])]), exchange=EXCHANGE, received_us=0
    )
    assert str(trade.price) == "92294.50" and trade.quantity == Decimal("1e-8")


VALID_FRAMES = [
    TRADES_FRAME,
    notification("ticker.BTC-PERPETUAL.100ms", TICKER_DATA),
    notification("chart.trades.BTC-PERPETUAL.1", BAR_DATA),
    b'{"jsonrpc":"2.0","id":42,"result":["trades.BTC-PERPETUAL.100ms"]}',
]


@HYPOTHESIS
@given(
    st.sampled_from(VALID_FRAMES),
    st.lists(st.tuples(st.integers(min_value=0), st.binary(min_size=0, max_size=3)), max_size=4),
)
def test_mutated_valid_frames_raise_only_parse_error(
    frame: bytes, edits: list[tuple[int, bytes]]
) -> None:
    mutated = bytearray(frame)
    for position, replacement in edits:
        at = position % (len(mutated) + 1)
        mutated[at : at + len(replacement)] = replacement
    _only_parse_errors(bytes(mutated))


@pytest.mark.parametrize(
    "frame",
    [
        b'{"jsonrpc":"2.0","method":"\xff"}',
        TRADES_FRAME.replace(b'"48079269"', b'"\xff\xfe"'),
        TRADES_FRAME.replace(b'"direction":"sell"', b'"direction":"\xff"'),
    ],
)
def test_invalid_utf8_is_a_parse_error(frame: bytes) -> None:
    with pytest.raises(ParseError):
        parse(frame)


def test_invalid_utf8_in_an_instrument_is_a_parse_error() -> None:
    text = (
        b'[{"x":"\xff","tick_size":0.5,"quote_currency":"USD","min_trade_amount":10,'
        b'"kind":"future","instrument_name":"BTC-PERPETUAL","base_currency":"BTC"}]'
    )
    with pytest.raises(ParseError):
        parse_instruments(text, exchange=EXCHANGE)
