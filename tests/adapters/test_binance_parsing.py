"""The pure Binance spot parsers: our own fixtures in the venue's exact wire formats."""

from __future__ import annotations

import json
from decimal import Decimal

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tradingd.adapters.base import ParseError
from tradingd.adapters.binance.parsing import (
    BinanceParser,
    FrameParseError,
    _checked_bar,
    binance_interval,
    parse_exchange_info,
    parse_klines,
    parse_rest_error,
    parse_rest_trades,
    parse_server_time_us,
    resolution_us,
    stream_name,
)
from tradingd.model import (
    Bar,
    Channel,
    DeadLetter,
    MarketType,
    PositiveDecimalMemo,
    StreamNotice,
    Subscription,
    Ticker,
    Trade,
)

RECEIVED_US = 1_767_225_600_123_456  # 2026-01-01T00:00:00.123456Z

TRADE_FRAME = (
    b'{"stream":"bnbbtc@trade","data":{"e":"trade","E":1767225600000123,"s":"BNBBTC",'
    b'"t":12345,"p":"0.00100000","q":"100.00000000","T":1767225600000120,"m":true,"M":true}}'
)
KLINE_FRAME = (
    b'{"stream":"bnbbtc@kline_1m","data":{"e":"kline","E":1767225602136000,"s":"BNBBTC",'
    b'"k":{"t":1767225600000000,"T":1767225659999999,"s":"BNBBTC","i":"1m","f":100,"L":200,'
    b'"o":"0.0010","c":"0.0020","h":"0.0025","l":"0.0010","v":"1000","n":100,"x":false,'
    b'"q":"1.0000","V":"500","Q":"0.500","B":"123456"}}}'
)
BOOK_TICKER_FRAME = (
    b'{"stream":"bnbusdt@bookTicker","data":{"u":400900217,"s":"BNBUSDT",'
    b'"b":"25.35190000","B":"31.21000000","a":"25.36520000","A":"40.66000000"}}'
)


def parser(time_unit: str = "MICROSECOND") -> BinanceParser:
    return BinanceParser("binance", time_unit=time_unit)  # type: ignore[arg-type]


def with_data(frame: bytes, **changes: object) -> bytes:
    document = json.loads(frame)
    document["data"].update(changes)
    return json.dumps(document).encode()


def with_kline(**changes: object) -> bytes:
    document = json.loads(KLINE_FRAME)
    document["data"]["k"].update(changes)
    return json.dumps(document).encode()


# --- stream names ------------------------------------------------------------------------------


def test_stream_names_are_lowercase_and_map_the_canonical_channels() -> None:
    assert stream_name(Subscription(Channel.TRADES, "BTCUSDT")) == "btcusdt@trade"
    assert stream_name(Subscription(Channel.TICKERS, "BTCUSDT")) == "btcusdt@bookTicker"
    assert stream_name(Subscription(Channel.BARS, "BTCUSDT"), "1h") == "btcusdt@kline_1h"
    assert stream_name(Subscription(Channel.BARS, "ETHBTC", "5m"), "1h") == "ethbtc@kline_5m"


def test_resolutions_map_to_binance_intervals() -> None:
    assert binance_interval("1m") == "1m"
    assert binance_interval("1d") == "1d"
    assert binance_interval("1mo") == "1M"
    assert resolution_us("1m") == 60_000_000
    with pytest.raises(ValueError, match="no kline interval"):
        binance_interval("7m")


# --- market-data frames ------------------------------------------------------------------------


def test_trade_frame_becomes_a_trade_with_every_field() -> None:
    (trade,) = parser().parse_frame(TRADE_FRAME, RECEIVED_US)
    assert trade == Trade(
        exchange="binance",
        instrument_name="BNBBTC",
        market_type=MarketType.SPOT,
        trade_id="12345",
        trade_seq=12345,
        price_text="0.00100000",
        quantity_text="100.00000000",
        is_buyer_maker=True,
        was_best_price_match=True,
        trade_us=1767225600000120,
        received_us=RECEIVED_US,
    )
    assert f"{trade.price:f}" == "0.00100000"  # the venue's text, digit for digit

    tiny = with_data(TRADE_FRAME, p="0.00000010")
    (trade,) = parser().parse_frame(tiny, RECEIVED_US)
    assert isinstance(trade, Trade)
    assert trade.price_text == "0.00000010"  # not str(Decimal)'s "1.0E-7"


def test_trade_fields_that_differ_land_in_their_own_fields() -> None:
    # The parser builds records positionally: each field must get its own value, not a
    # neighbour's of the same type.
    frame = with_data(TRADE_FRAME, m=False, M=True, T=1767225600000121)
    (trade,) = parser().parse_frame(frame, RECEIVED_US + 1)
    assert trade == Trade(
        exchange="binance",
        instrument_name="BNBBTC",
        market_type=MarketType.SPOT,
        trade_id="12345",
        trade_seq=12345,
        price_text="0.00100000",
        quantity_text="100.00000000",
        is_buyer_maker=False,
        was_best_price_match=True,
        trade_us=1767225600000121,
        received_us=RECEIVED_US + 1,
    )


def test_trade_accepts_str_input_and_legacy_fields() -> None:
    legacy = with_data(TRADE_FRAME, b=88, a=50)  # buyer/seller order ids, removed in 2024
    (trade,) = parser().parse_frame(legacy.decode(), RECEIVED_US)
    assert isinstance(trade, Trade)
    assert trade.trade_seq == 12345


def test_trade_without_best_match_flag() -> None:
    document = json.loads(TRADE_FRAME)
    del document["data"]["M"]
    (trade,) = parser().parse_frame(json.dumps(document), RECEIVED_US)
    assert isinstance(trade, Trade)
    assert trade.was_best_price_match is None


def test_millisecond_parser_converts_venue_times() -> None:
    frame = with_data(TRADE_FRAME, T=1767225600000, E=1767225600001)
    (trade,) = parser("MILLISECOND").parse_frame(frame, RECEIVED_US)
    assert isinstance(trade, Trade)
    assert trade.trade_us == 1767225600000000


def test_kline_frame_becomes_a_bar() -> None:
    (bar,) = parser().parse_frame(KLINE_FRAME, RECEIVED_US)
    assert bar == Bar(
        exchange="binance",
        instrument_name="BNBBTC",
        resolution="1m",
        tick_us=1767225600000000,
        open_text="0.0010",
        high_text="0.0025",
        low_text="0.0010",
        close_text="0.0020",
        volume_text="1000",
        closed=False,
        received_us=RECEIVED_US,
    )
    (final,) = parser().parse_frame(with_kline(x=True), RECEIVED_US)
    assert isinstance(final, Bar)
    assert final.closed


def test_kline_with_zero_volume_is_fine() -> None:
    (bar,) = parser().parse_frame(with_kline(v="0.00000000"), RECEIVED_US)
    assert isinstance(bar, Bar)
    assert bar.volume == 0


def test_book_ticker_becomes_a_ticker_stamped_with_the_receive_time() -> None:
    (ticker,) = parser().parse_frame(BOOK_TICKER_FRAME, RECEIVED_US)
    assert ticker == Ticker(
        exchange="binance",
        instrument_name="BNBUSDT",
        best_bid_price_text="25.35190000",
        best_bid_amount_text="31.21000000",
        best_ask_price_text="25.36520000",
        best_ask_amount_text="40.66000000",
        timestamp_us=RECEIVED_US,
        received_us=RECEIVED_US,
    )


def test_book_ticker_with_an_event_time_uses_it() -> None:
    frame = with_data(BOOK_TICKER_FRAME, E=1767225600999, T=1767225600998)
    (ticker,) = parser("MILLISECOND").parse_frame(frame, RECEIVED_US)
    assert ticker == Ticker(
        exchange="binance",
        instrument_name="BNBUSDT",
        best_bid_price_text="25.35190000",
        best_bid_amount_text="31.21000000",
        best_ask_price_text="25.36520000",
        best_ask_amount_text="40.66000000",
        timestamp_us=1767225600999000,
        received_us=RECEIVED_US,
    )


def test_book_ticker_with_an_empty_side() -> None:
    frame = with_data(BOOK_TICKER_FRAME, b="0.00000000", B="0.00000000")
    (ticker,) = parser().parse_frame(frame, RECEIVED_US)
    assert isinstance(ticker, Ticker)
    assert ticker.best_bid_price is None and ticker.best_bid_amount is None
    assert ticker.best_ask_price == Decimal("25.36520000")
    # A quantity of zero at a price is what the venue says: kept.
    (ticker,) = parser().parse_frame(with_data(BOOK_TICKER_FRAME, B="0.00000000"), RECEIVED_US)
    assert isinstance(ticker, Ticker)
    assert (ticker.best_bid_price_text, ticker.best_bid_amount_text) == (
        "25.35190000",
        "0.00000000",
    )


def test_unknown_valid_stream_types_are_ignored_and_counted() -> None:
    p = parser()
    depth = (
        b'{"stream":"btcusdt@depth@100ms","data":{"e":"depthUpdate","E":1,"s":"BTCUSDT",'
        b'"U":157,"u":160,"b":[["0.0024","10"]],"a":[["0.0026","100"]]}}'
    )
    agg = b'{"stream":"btcusdt@aggTrade","data":{"e":"aggTrade","a":1}}'
    assert p.parse_frame(depth, RECEIVED_US) == []
    assert p.parse_frame(depth, RECEIVED_US) == []
    assert p.parse_frame(agg, RECEIVED_US) == []
    assert p.ignored == {"depth@100ms": 2, "aggTrade": 1}


# --- control frames ----------------------------------------------------------------------------


def test_server_shutdown_combined_and_raw() -> None:
    combined = b'{"stream":"!serverShutdown","data":{"e":"serverShutdown","E":1770123456789}}'
    raw = b'{"e":"serverShutdown","E":1770123456789}'
    for frame in (combined, raw):
        (notice,) = parser().parse_frame(frame, RECEIVED_US)
        assert notice == StreamNotice(
            exchange="binance",
            kind="server_shutdown",
            detail="E=1770123456789",
            received_us=RECEIVED_US,
        )


def test_responses_are_named_after_the_request_they_answer() -> None:
    p = parser()
    p.expect_response(1, "subscribed")
    p.expect_response(2, "unsubscribed")
    (first,) = p.parse_frame(b'{"result":null,"id":1}', RECEIVED_US)
    (second,) = p.parse_frame(b'{"result":null,"id":2}', RECEIVED_US)
    (listing,) = p.parse_frame(b'{"result":["btcusdt@trade"],"id":3}', RECEIVED_US)
    assert isinstance(first, StreamNotice) and first.kind == "subscribed"
    assert isinstance(second, StreamNotice) and second.kind == "unsubscribed"
    assert isinstance(listing, StreamNotice)
    assert listing.kind == "response"
    assert listing.detail == 'id=3 result=["btcusdt@trade"]'


@pytest.mark.parametrize(
    ("frame", "detail"),
    [
        (
            b'{"code": 0, "msg": "Unknown property","id": 7}',
            "code=0 msg=Unknown property id=7",
        ),
        (
            b'{"code":3,"msg":"Invalid JSON: expected value at line 1 column 1"}',
            "code=3 msg=Invalid JSON: expected value at line 1 column 1 id=None",
        ),
        (
            b'{"error":{"code":2,"msg":"Invalid request"},"id":"abc"}',
            "code=2 msg=Invalid request id=abc",
        ),
    ],
)
def test_error_frames_become_error_notices(frame: bytes, detail: str) -> None:
    (notice,) = parser().parse_frame(frame, RECEIVED_US)
    assert isinstance(notice, StreamNotice)
    assert notice.kind == "error"
    assert notice.detail == detail


# --- frames that must be refused ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("frame", "reason", "stream"),
    [
        (b"garbage", "not JSON", ""),
        (b"", "not JSON", ""),
        (b"[1,2]", "schema mismatch", ""),
        (b'{"foo":1}', "neither a stream frame", ""),
        (b'{"stream":"nostream","data":{}}', "malformed stream name", "nostream"),
        (with_data(TRADE_FRAME, p="abc"), "trade price 'abc' is not a positive", "bnbbtc@trade"),
        (with_data(TRADE_FRAME, p=1.5), "schema mismatch: Expected `str`", "bnbbtc@trade"),
        (with_data(TRADE_FRAME, q="0.0"), "trade quantity '0.0' is not", "bnbbtc@trade"),
        (with_data(TRADE_FRAME, q="-5"), "trade quantity '-5' is not", "bnbbtc@trade"),
        (with_data(TRADE_FRAME, p="NaN"), "trade price 'NaN'", "bnbbtc@trade"),
        (with_data(TRADE_FRAME, p="sNaN"), "trade price 'sNaN'", "bnbbtc@trade"),
        (with_data(TRADE_FRAME, q="Infinity"), "trade quantity 'Infinity'", "bnbbtc@trade"),
        (with_data(TRADE_FRAME, p="1e-21"), "trade price '1e-21'", "bnbbtc@trade"),
        (with_data(TRADE_FRAME, t=-3), "trade id -3 is negative", "bnbbtc@trade"),
        (with_data(TRADE_FRAME, t="12"), "schema mismatch", "bnbbtc@trade"),
        (with_data(TRADE_FRAME, T=1767225600000), "not a time in the years", "bnbbtc@trade"),
        (with_data(TRADE_FRAME, m="yes"), "Expected `bool`", "bnbbtc@trade"),
        (with_kline(i="2m"), "unknown kline interval '2m'", "bnbbtc@kline_1m"),
        (with_kline(h="0.0001"), "bar prices are inconsistent", "bnbbtc@kline_1m"),
        (with_kline(o="0"), "bar open '0' is not a positive", "bnbbtc@kline_1m"),
        (with_kline(v="-1"), "bar volume '-1' is not a zero", "bnbbtc@kline_1m"),
        (with_kline(v="1e-400"), "bar volume '1e-400' is not a zero", "bnbbtc@kline_1m"),
        (with_data(BOOK_TICKER_FRAME, a="-25"), "best ask price '-25'", "bnbusdt@bookTicker"),
        (with_data(BOOK_TICKER_FRAME, b="nan"), "best bid price 'nan'", "bnbusdt@bookTicker"),
        (with_data(BOOK_TICKER_FRAME, A=None), "Expected `str`", "bnbusdt@bookTicker"),
    ],
)
def test_impossible_frames_raise_parse_error_with_a_precise_reason(
    frame: bytes, reason: str, stream: str
) -> None:
    with pytest.raises(FrameParseError) as caught:
        parser().parse_frame(frame, RECEIVED_US)
    assert reason in str(caught.value)
    assert caught.value.stream == stream
    assert isinstance(caught.value, ParseError)


# Texts float() reads (or almost) that are no plain in-range decimal: refused, the text quoted.
NOT_AMOUNTS = ["1_0", "\u0661", "nan", "inf", "0", "-1", "1e400", "1" * 65, "", " ", "0x10"]


@pytest.mark.parametrize("text", NOT_AMOUNTS)
@pytest.mark.parametrize("field", ["p", "q"])
def test_a_trade_amount_that_is_no_plain_decimal_is_refused_with_its_text(
    text: str, field: str
) -> None:
    what = {"p": "trade price", "q": "trade quantity"}[field]
    frame = with_data(TRADE_FRAME, **{field: text})
    with pytest.raises(FrameParseError) as caught:
        parser().parse_frame(frame, RECEIVED_US)
    assert str(caught.value) == (
        f"{what} {text!r} is not a positive decimal number in [1e-20, 1e20)"
    )
    assert caught.value.stream == "bnbbtc@trade"


@pytest.mark.parametrize("text", [t for t in NOT_AMOUNTS if t != "0"])
def test_a_book_amount_that_is_no_plain_decimal_is_refused_with_its_text(text: str) -> None:
    with pytest.raises(FrameParseError, match="best bid quantity") as caught:
        parser().parse_frame(with_data(BOOK_TICKER_FRAME, B=text), RECEIVED_US)
    assert repr(text) in str(caught.value)


@pytest.mark.parametrize("text", NOT_AMOUNTS)
def test_a_refused_text_stays_refused_and_an_accepted_one_stays_accepted(text: str) -> None:
    """One parser (one memo of accepted texts) across frames: a refused text is refused again,
    in every field, after the frames before it were accepted."""
    p = parser()
    for _ in range(2):
        assert len(p.parse_frame(TRADE_FRAME, RECEIVED_US)) == 1
        with pytest.raises(FrameParseError, match="trade price"):
            p.parse_frame(with_data(TRADE_FRAME, p=text), RECEIVED_US)
        with pytest.raises(FrameParseError, match="trade quantity"):
            p.parse_frame(with_data(TRADE_FRAME, q=text), RECEIVED_US)
        with pytest.raises(FrameParseError, match="bar high"):
            p.parse_frame(with_kline(h=text), RECEIVED_US)
        if text != "0":  # a zero bid price says the side is empty
            with pytest.raises(FrameParseError, match="best bid price"):
                p.parse_frame(with_data(BOOK_TICKER_FRAME, b=text), RECEIVED_US)
        assert len(p.parse_frame(KLINE_FRAME, RECEIVED_US)) == 1
        assert len(p.parse_frame(BOOK_TICKER_FRAME, RECEIVED_US)) == 1


def test_a_bar_of_texts_already_seen_is_still_checked_for_order() -> None:
    """The bar's order is read from the remembered floats of texts accepted before."""
    p = parser()
    (bar,) = p.parse_frame(with_kline(o="0.0010", h="0.0025", l="0.0010", c="0.0020"), RECEIVED_US)
    assert isinstance(bar, Bar)
    with pytest.raises(FrameParseError, match="inconsistent"):
        p.parse_frame(with_kline(o="0.0025", h="0.0020", l="0.0010", c="0.0020"), RECEIVED_US)
    with pytest.raises(FrameParseError, match="inconsistent"):
        p.parse_frame(with_kline(o="0.0010", h="0.0025", l="0.0020", c="0.0010"), RECEIVED_US)


def test_a_bar_is_checked_alike_when_the_memo_empties_between_its_prices() -> None:
    """A memo holding one text forgets each price as the next is accepted."""
    prices = ("1.5", "2.5", "0.5", "1")
    checked = [
        _checked_bar("binance", "BNBBTC", "1m", 0, *prices, "10", False, 0, "", memo)
        for memo in (PositiveDecimalMemo(capacity=1), PositiveDecimalMemo())
    ]
    assert checked[0] == checked[1]
    assert (checked[0].open_text, checked[0].high_text) == ("1.5", "2.5")
    with pytest.raises(FrameParseError, match="inconsistent"):
        _checked_bar(
            "binance", "BNBBTC", "1m", 0, "3", "2.5", "0.5", "1", "10", False, 0, "",
            PositiveDecimalMemo(capacity=1),
        )  # fmt: skip


def test_the_one_pass_and_the_general_path_agree() -> None:
    """Frames the one-pass path reads (bytes) and the same frames as str (general path)."""
    union = (
        b'{"stream":"btcusdt@trade","data":{"e":"aggTrade","E":1767225600000123,"s":"BTCUSDT",'
        b'"a":7,"t":7,"p":"60650.10000000","q":"0.00100000","f":7,"l":7,"T":1767225600000120,'
        b'"m":false,"M":true}}'
    )
    for frame in (TRADE_FRAME, union, KLINE_FRAME, BOOK_TICKER_FRAME):
        warm = parser()
        general = warm.parse_frame(frame.decode(), RECEIVED_US)
        assert warm.parse_frame(frame, RECEIVED_US) == general
        assert parser().parse_frame(frame, RECEIVED_US) == general
    (trade,) = parser().parse_frame(union, RECEIVED_US)
    assert isinstance(trade, Trade)
    assert (trade.trade_seq, trade.price_text, trade.quantity_text) == (
        7,
        "60650.10000000",
        "0.00100000",
    )


def records_or_refusal(p: BinanceParser, frame: bytes | str) -> list[object] | str:
    """What ``p`` reads from ``frame``: its records, or the refusal's words."""
    try:
        return list(p.parse_frame(frame, RECEIVED_US))
    except ParseError as exc:
        return str(exc)


_decimal_texts = st.one_of(
    st.sampled_from(["25.35190000", "0", "0.00000000", "1.", ".5", "1e-3", " 1", "1_0", "9" * 21]),
    st.text("0123456789.", min_size=1, max_size=22),
)


@given(
    st.tuples(_decimal_texts, _decimal_texts, _decimal_texts, _decimal_texts),
    st.one_of(st.none(), st.just(1767225600000123)),
)
@settings(max_examples=300)
def test_a_book_ticker_reads_alike_on_the_one_pass_path_and_the_general_one(
    texts: tuple[str, str, str, str], event_time: int | None
) -> None:
    """Whatever the four texts and whether an event time comes, the bytes read by a parser that
    has routed the stream and seen both prices (the spelled-out usual case) give what the
    general path gives, or the same refusal."""
    b, bid_amount, a, ask_amount = texts
    changes: dict[str, object] = {"b": b, "B": bid_amount, "a": a, "A": ask_amount}
    if event_time is not None:
        changes["E"] = event_time
    frame = with_data(BOOK_TICKER_FRAME, **changes)

    warm = parser()
    general = records_or_refusal(warm, frame.decode())  # routes the stream and remembers the prices
    assert records_or_refusal(warm, frame) == general
    assert records_or_refusal(parser(), frame) == general


@given(
    st.tuples(_decimal_texts, _decimal_texts),
    st.one_of(st.integers(-3, 3), st.integers(0, 2**63 - 1)),
    st.sampled_from([1767225600000120, 1767225600000, 946684800000000 - 1, 4102444800000000]),
    st.sampled_from([None, False, True]),
)
@settings(max_examples=300)
def test_a_trade_reads_alike_on_the_one_pass_path_and_the_general_one(
    texts: tuple[str, str], trade_seq: int, trade_time: int, best_match: bool | None
) -> None:
    """Whatever the price, quantity, sequence, time and best-match flag, the bytes read by a
    parser that has routed the stream and accepted both texts before (the spelled-out usual
    case) give what the general path gives, or the same refusal."""
    price, quantity = texts
    frame = with_data(TRADE_FRAME, p=price, q=quantity, t=trade_seq, T=trade_time, M=best_match)

    warm = parser()
    # Routes the stream and remembers both texts wherever the rule accepts them.
    records_or_refusal(warm, with_data(TRADE_FRAME, p=price, q=quantity).decode())
    general = records_or_refusal(warm, frame.decode())
    assert records_or_refusal(warm, frame) == general
    assert records_or_refusal(parser(), frame) == general


def test_bar_order_is_exact_beyond_float_precision() -> None:
    """Prices equal as floats but not as decimals: the exact numbers decide."""
    high = "1.00000000000000001"
    (bar,) = parser().parse_frame(with_kline(o="1", l="1", c="1", h=high), RECEIVED_US)
    assert isinstance(bar, Bar)
    assert bar.high_text == high
    with pytest.raises(FrameParseError, match="inconsistent"):
        parser().parse_frame(with_kline(o=high, l="1", c="1", h="1"), RECEIVED_US)


def test_microsecond_parser_rejects_millisecond_times() -> None:
    """A venue that ignored timeUnit=MICROSECOND must not put 1970 into the trade key."""
    frame = with_data(TRADE_FRAME, T=1767225600000)
    with pytest.raises(ParseError, match="expected microseconds"):
        parser().parse_frame(frame, RECEIVED_US)


# --- REST bodies -------------------------------------------------------------------------------

EXCHANGE_INFO = {
    "timezone": "UTC",
    "serverTime": 1565246363776,
    "rateLimits": [
        {"rateLimitType": "REQUEST_WEIGHT", "interval": "MINUTE", "intervalNum": 1, "limit": 6000},
        {"rateLimitType": "ORDERS", "interval": "SECOND", "intervalNum": 10, "limit": 100},
    ],
    "exchangeFilters": [],
    "symbols": [
        {
            "symbol": "ETHBTC",
            "status": "TRADING",
            "baseAsset": "ETH",
            "baseAssetPrecision": 8,
            "quoteAsset": "BTC",
            "filters": [
                {
                    "filterType": "PRICE_FILTER",
                    "minPrice": "0.00000100",
                    "maxPrice": "100000.00000000",
                    "tickSize": "0.00000100",
                },
                {
                    "filterType": "LOT_SIZE",
                    "minQty": "0.00100000",
                    "maxQty": "100000.00000000",
                    "stepSize": "0.00100000",
                },
                {
                    "filterType": "MIN_NOTIONAL",
                    "minNotional": "0.00100000",
                    "applyToMarket": True,
                    "avgPriceMins": 5,
                },
                {
                    "filterType": "NOTIONAL",
                    "minNotional": "10.00000000",
                    "applyMinToMarket": False,
                    "maxNotional": "10000.00000000",
                    "applyMaxToMarket": False,
                    "avgPriceMins": 5,
                },
                {"filterType": "MAX_NUM_ORDERS", "maxNumOrders": 25},
            ],
            "permissions": [],
            "permissionSets": [["SPOT", "MARGIN"]],
        },
        {
            "symbol": "LUNAUSDT",
            "status": "BREAK",
            "baseAsset": "LUNA",
            "quoteAsset": "USDT",
            "filters": [
                {"filterType": "PRICE_FILTER", "tickSize": "0.00010000"},
                {"filterType": "LOT_SIZE", "minQty": "0.01000000"},
                {"filterType": "MIN_NOTIONAL", "minNotional": "1.00000000"},
            ],
        },
        {
            "symbol": "ABCUSDT",
            "status": "HALT",
            "baseAsset": "ABC",
            "quoteAsset": "USDT",
            "filters": [
                {"filterType": "PRICE_FILTER", "tickSize": "0.01"},
                {"filterType": "LOT_SIZE", "minQty": "1"},
            ],
        },
    ],
}


def test_exchange_info_becomes_instruments() -> None:
    body = json.dumps(EXCHANGE_INFO).encode()
    info = parse_exchange_info(body, "binance")
    assert info.request_weight_per_minute == 6000
    eth, luna, abc = info.instruments
    assert eth.instrument_name == "ETHBTC"
    assert eth.market_type is MarketType.SPOT
    assert (eth.base_currency, eth.quote_currency) == ("ETH", "BTC")
    assert str(eth.tick_size) == "0.00000100"
    assert str(eth.min_trade_amount) == "0.00100000"
    assert str(eth.min_notional) == "10.00000000"  # NOTIONAL governs when both are present
    assert eth.is_active
    assert json.loads(eth.raw) == EXCHANGE_INFO["symbols"][0]  # type: ignore[index]
    assert str(luna.min_notional) == "1.00000000"  # MIN_NOTIONAL only
    assert not luna.is_active
    assert abc.min_notional is None
    assert not abc.is_active


def test_exchange_info_symbol_without_price_filter_is_refused() -> None:
    broken = json.loads(json.dumps(EXCHANGE_INFO))
    broken["symbols"][0]["filters"] = broken["symbols"][0]["filters"][1:]
    with pytest.raises(ParseError, match="ETHBTC: no PRICE_FILTER"):
        parse_exchange_info(json.dumps(broken), "binance")


KLINES = (
    b'[[1499040000000,"0.01634790","0.80000000","0.01575800","0.01577100","148976.11427815",'
    b'1499644799999,"2434.19055334",308,"1756.87402397","28.46694368","0"],'
    b'[1499644800000,"0.01577100","0.01600000","0.01500000","0.01590000","100.0",'
    b'1500249599999,"1.0",10,"0.5","0.1","0"]]'
)


def test_klines_are_closed_only_once_their_close_time_has_passed() -> None:
    now_us = 1499644800000 * 1000 + 5  # just after the first bar's close
    first, second = parse_klines(
        KLINES,
        exchange="binance",
        instrument_name="ETHBTC",
        resolution="1w",
        now_us=now_us,
        time_unit="MILLISECOND",
    )
    assert first == Bar(
        exchange="binance",
        instrument_name="ETHBTC",
        resolution="1w",
        tick_us=1499040000000000,
        open_text="0.01634790",
        high_text="0.80000000",
        low_text="0.01575800",
        close_text="0.01577100",
        volume_text="148976.11427815",
        closed=True,
        received_us=now_us,
    )
    assert second.tick_us == 1499644800000000
    assert not second.closed


def test_klines_in_microseconds() -> None:
    body = b'[[1767225600000000,"1","2","0.5","1.5","3",1767225659999999,"4",5,"6","7","0"]]'
    (bar,) = parse_klines(
        body,
        exchange="binance",
        instrument_name="BTCUSDT",
        resolution="1m",
        now_us=1767225660000000,
    )
    assert bar.tick_us == 1767225600000000
    assert bar.closed


def test_rest_trades() -> None:
    body = (
        b'[{"id":28457,"price":"4.00000100","qty":"12.00000000","quoteQty":"48.000012",'
        b'"time":1499865549590123,"isBuyerMaker":true,"isBestMatch":true}]'
    )
    (trade,) = parse_rest_trades(
        body, exchange="binance", instrument_name="BNBBTC", received_us=RECEIVED_US
    )
    assert trade == Trade(
        exchange="binance",
        instrument_name="BNBBTC",
        market_type=MarketType.SPOT,
        trade_id="28457",
        trade_seq=28457,
        price_text="4.00000100",
        quantity_text="12.00000000",
        is_buyer_maker=True,
        was_best_price_match=True,
        trade_us=1499865549590123,
        received_us=RECEIVED_US,
    )


def test_rest_trades_refuse_impossible_values() -> None:
    body = b'[{"id":1,"price":"0","qty":"1","time":1499865549590123,"isBuyerMaker":true}]'
    with pytest.raises(ParseError, match="price '0' is not a positive"):
        parse_rest_trades(body, exchange="binance", instrument_name="X", received_us=1)


def test_server_time_in_either_unit() -> None:
    assert parse_server_time_us(b'{"serverTime": 1499827319559}') == 1499827319559000
    assert parse_server_time_us(b'{"serverTime": 1499827319559123}') == 1499827319559123
    with pytest.raises(ParseError, match="serverTime"):
        parse_server_time_us(b'{"serverTime": 5}')


def test_rest_error_body() -> None:
    assert parse_rest_error(b'{"code": -1121, "msg": "Invalid symbol."}') == (
        -1121,
        "Invalid symbol.",
    )
    assert parse_rest_error(b"<html>") is None


# --- properties --------------------------------------------------------------------------------

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=6), children, max_size=4)
    ),
    max_leaves=12,
)
STREAMS = ["btcusdt@trade", "btcusdt@kline_1m", "btcusdt@bookTicker", "!serverShutdown", "x@depth"]
TRADE_KEYS = ["e", "E", "s", "t", "p", "q", "T", "m", "M"]
KLINE_KEYS = ["t", "T", "i", "o", "c", "h", "l", "v", "x"]
numberish = st.one_of(
    st.decimals(allow_nan=True, allow_infinity=True).map(str),
    st.sampled_from(["1", "0", "-0", "1e5", "abc", "", "NaN", "sNaN", "-Infinity"]),
    st.integers(),
    st.booleans(),
    st.none(),
)
field_values = numberish | json_values
payloads = st.one_of(
    json_values,
    st.fixed_dictionaries(
        {}, optional={k: field_values for k in [*TRADE_KEYS, "a", "b", "A", "B"]}
    ),
    st.fixed_dictionaries(
        {"s": st.text(max_size=8)},
        optional={"k": st.fixed_dictionaries({}, optional={k: field_values for k in KLINE_KEYS})},
    ),
)
frames = st.one_of(
    json_values,
    st.fixed_dictionaries(
        {"stream": st.sampled_from(STREAMS) | st.text(max_size=12), "data": payloads}
    ),
    st.fixed_dictionaries(
        {},
        optional={
            "result": json_values,
            "id": json_values,
            "code": json_values,
            "msg": json_values,
            "error": json_values,
            "e": st.just("serverShutdown") | json_values,
            "E": json_values,
        },
    ),
)
OUTPUT_TYPES = (Trade, Bar, Ticker, StreamNotice, DeadLetter)


@given(st.binary(max_size=200))
def test_arbitrary_bytes_only_ever_raise_parse_error(frame: bytes) -> None:
    _only_parse_errors(frame)


@settings(max_examples=300)
@given(frames)
def test_arbitrary_json_only_ever_raises_parse_error(document: object) -> None:
    _only_parse_errors(msgspec.json.encode(document))


def _only_parse_errors(body: bytes) -> None:
    p = BinanceParser("binance")
    p.expect_response(1, "subscribed")
    try:
        events = p.parse_frame(body, RECEIVED_US)
    except ParseError:
        pass
    else:
        assert all(isinstance(e, OUTPUT_TYPES) for e in events)
    for rest_parser in (
        lambda: parse_exchange_info(body, "binance"),
        lambda: parse_rest_trades(body, exchange="b", instrument_name="X", received_us=1),
        lambda: parse_klines(body, exchange="b", instrument_name="X", resolution="1m", now_us=1),
        lambda: parse_server_time_us(body),
    ):
        try:
            rest_parser()
        except ParseError:
            pass
    parse_rest_error(body)


@settings(max_examples=200)
@given(st.lists(json_values, max_size=3) | json_values)
def test_arbitrary_json_rest_bodies_only_ever_raise_parse_error(document: object) -> None:
    _only_parse_errors(msgspec.json.encode(document))


venue_decimals = st.builds(
    lambda whole, fraction, width: f"{whole}.{fraction:0{width}d}"[: len(str(whole)) + 1 + width],
    st.integers(min_value=0, max_value=10**12),
    st.integers(min_value=0, max_value=10**8 - 1),
    st.integers(min_value=1, max_value=8),
).filter(lambda text: Decimal(text) > 0)


@given(
    trade_id=st.integers(min_value=0, max_value=2**63 - 1),
    price=venue_decimals,
    quantity=venue_decimals,
    trade_us=st.integers(min_value=946_684_800_000_000, max_value=4_102_444_799_999_999),
    maker=st.booleans(),
    symbol=st.from_regex(r"[A-Z0-9]{2,12}", fullmatch=True),
)
def test_valid_trades_keep_every_field_exactly(
    trade_id: int, price: str, quantity: str, trade_us: int, maker: bool, symbol: str
) -> None:
    frame = json.dumps(
        {
            "stream": f"{symbol.lower()}@trade",
            "data": {
                "e": "trade",
                "E": trade_us,
                "s": symbol,
                "t": trade_id,
                "p": price,
                "q": quantity,
                "T": trade_us,
                "m": maker,
                "M": True,
            },
        }
    )
    (trade,) = BinanceParser("binance").parse_frame(frame, RECEIVED_US)
    assert isinstance(trade, Trade)
    assert (trade.trade_id, trade.trade_seq) == (str(trade_id), trade_id)
    assert (trade.price_text, trade.quantity_text) == (price, quantity)  # the wire's text
    assert (f"{trade.price:f}", f"{trade.quantity:f}") == (price, quantity)
    assert (trade.trade_us, trade.is_buyer_maker, trade.instrument_name) == (
        trade_us,
        maker,
        symbol,
    )


bar_prices = st.sampled_from(
    ["1", "1.0", "1.00000000000000001", "0.99999999999999999", "2", "1.5", "1.50", "0.5"]
)


@given(open_=bar_prices, high=bar_prices, low=bar_prices, close=bar_prices)
def test_a_bar_is_accepted_exactly_when_its_prices_are_in_order(
    open_: str, high: str, low: str, close: str
) -> None:
    """Texts equal as floats but not as decimals, or equal as decimals but not as texts."""
    frame = with_kline(o=open_, h=high, l=low, c=close)
    d_open, d_high, d_low, d_close = map(Decimal, (open_, high, low, close))
    if d_low <= d_open <= d_high and d_low <= d_close <= d_high:
        (bar,) = parser().parse_frame(frame, RECEIVED_US)
        assert isinstance(bar, Bar)
        assert (bar.open_text, bar.high_text, bar.low_text, bar.close_text) == (
            open_,
            high,
            low,
            close,
        )
    else:
        with pytest.raises(FrameParseError, match="inconsistent"):
            parser().parse_frame(frame, RECEIVED_US)
