"""The Binance private API, sans-I/O: signing (the official vector), request builders, the
parsers of order answers and user-stream events, and the one error table."""

from __future__ import annotations

import json
from decimal import Decimal
from urllib.parse import parse_qsl

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tradingd.adapters.base import ParseError
from tradingd.adapters.binance import trading
from tradingd.adapters.binance.execution_parsing import (
    AccountPosition,
    ApiResponse,
    BalanceUpdate,
    ExecutionReport,
    StreamTerminated,
    classify_error,
    order_counts,
    parse_account,
    parse_my_trades,
    parse_order,
    parse_orders,
    parse_retry_after,
    parse_user_frame,
    used_weights,
)
from tradingd.adapters.binance.signing import (
    encode_query,
    format_decimal,
    hmac_signer,
    sign,
    signed_query,
    ws_api_payload,
)
from tradingd.adapters.trading import Verdict, transport_failure

# The official vector (rest-api.md, "SIGNED Endpoint Examples").
SECRET = "NhqPtmdSJYdKjVHjA7PZj4Mge3R5YNiP1e3UZjInClVN65XAbvqqM6A7H5fATj0j"
API_KEY = "vmPUZE6mv9SD5VNHk4HlWFsOr6aKE2zvsw0MuIgwCIPy6utIco14y7Ju91duEh8A"
PAYLOAD = (
    "symbol=LTCBTC&side=BUY&type=LIMIT&timeInForce=GTC&quantity=1&price=0.1"
    "&recvWindow=5000&timestamp=1499827319559"
)
SIGNATURE = "c8db56825ae71d6d79447849e617115f4a920fa2acdcab2b053c4b2838bd6b71"
CREDENTIALS = trading.Credentials(API_KEY, SECRET)


def test_the_official_signature_vector() -> None:
    assert sign(SECRET, PAYLOAD) == SIGNATURE


def test_a_limit_order_request_signs_exactly_as_the_official_example() -> None:
    params: list[tuple[str, trading.Param]] = [
        ("symbol", "LTCBTC"),
        ("side", "BUY"),
        ("type", "LIMIT"),
        ("timeInForce", "GTC"),
        ("quantity", Decimal("1.00")),
        ("price", Decimal("0.10")),
        ("recvWindow", 5000),
        ("timestamp", 1499827319559),
    ]
    assert signed_query(params, hmac_signer(SECRET)) == f"{PAYLOAD}&signature={SIGNATURE}"


def test_new_order_carries_our_client_id_and_a_verifiable_signature() -> None:
    request = trading.new_order(
        CREDENTIALS,
        trading.Clock(timestamp_ms=1499827319559, recv_window_ms=5000),
        symbol="LTCBTC",
        side="BUY",
        order_type="LIMIT",
        quantity=Decimal("1"),
        price=Decimal("0.1"),
        time_in_force="GTC",
        client_order_id="intent-42_a",
    )
    assert request.method == "POST" and request.path == "/api/v3/order"
    assert request.places_order and request.headers == {"X-MBX-APIKEY": API_KEY}
    unsigned, _, signature = request.query.rpartition("&signature=")
    assert sign(SECRET, unsigned) == signature
    params = dict(parse_qsl(unsigned))
    assert params["newClientOrderId"] == "intent-42_a"
    assert params["newOrderRespType"] == "FULL"
    assert params["timestamp"] == "1499827319559" and params["recvWindow"] == "5000"


@pytest.mark.parametrize("bad", ["", "a.b", "x" * 37, "a:b", "é"])
def test_client_ids_outside_the_venue_charset_are_refused_before_sending(bad: str) -> None:
    with pytest.raises(ValueError, match="client order id"):
        trading.query_order(
            CREDENTIALS, trading.Clock(timestamp_ms=1), symbol="BTCUSDT", client_order_id=bad
        )


def test_order_type_rules() -> None:
    clock = trading.Clock(timestamp_ms=1)
    with pytest.raises(ValueError, match="LIMIT order needs"):
        trading.new_order(
            CREDENTIALS, clock, symbol="X", side="BUY", order_type="LIMIT",
            quantity=Decimal(1), client_order_id="a",
        )  # fmt: skip
    with pytest.raises(ValueError, match="MARKET"):
        trading.new_order(
            CREDENTIALS, clock, symbol="X", side="BUY", order_type="MARKET",
            quantity=Decimal(1), price=Decimal(1), client_order_id="a",
        )  # fmt: skip
    with pytest.raises(ValueError, match="recvWindow"):
        trading.Clock(timestamp_ms=1, recv_window_ms=60_001)


def test_every_private_endpoint_request() -> None:
    clock = trading.Clock(timestamp_ms=1_700_000_000_000, recv_window_ms=3000)
    cases = [
        (trading.query_order(CREDENTIALS, clock, symbol="BTCUSDT", client_order_id="c1"),
         "GET", "/api/v3/order", {"symbol": "BTCUSDT", "origClientOrderId": "c1"}),
        (trading.cancel_order(CREDENTIALS, clock, symbol="BTCUSDT", client_order_id="c1"),
         "DELETE", "/api/v3/order", {"symbol": "BTCUSDT", "origClientOrderId": "c1"}),
        (trading.cancel_open_orders(CREDENTIALS, clock, symbol="BTCUSDT"),
         "DELETE", "/api/v3/openOrders", {"symbol": "BTCUSDT"}),
        (trading.open_orders(CREDENTIALS, clock, symbol="BTCUSDT"),
         "GET", "/api/v3/openOrders", {"symbol": "BTCUSDT"}),
        (trading.open_orders(CREDENTIALS, clock, symbol=None), "GET", "/api/v3/openOrders", {}),
        (trading.account(CREDENTIALS, clock), "GET", "/api/v3/account",
         {"omitZeroBalances": "true"}),
        (trading.my_trades(CREDENTIALS, clock, symbol="BTCUSDT", from_id=77),
         "GET", "/api/v3/myTrades", {"symbol": "BTCUSDT", "fromId": "77", "limit": "1000"}),
        (trading.order_trades(CREDENTIALS, clock, symbol="BTCUSDT", order_id=12),
         "GET", "/api/v3/myTrades", {"symbol": "BTCUSDT", "orderId": "12", "limit": "1000"}),
    ]  # fmt: skip
    for request, method, path, expected in cases:
        assert (request.method, request.path) == (method, path)
        unsigned, _, signature = request.query.rpartition("&signature=")
        assert sign(SECRET, unsigned) == signature
        params = dict(parse_qsl(unsigned))
        assert params.pop("timestamp") == "1700000000000"
        assert params.pop("recvWindow") == "3000"
        assert params == expected
    assert clock.deadline_ms == 1_700_000_000_000 + 3000 + trading.DEADLINE_MARGIN_MS


def test_the_user_stream_subscription_signs_its_sorted_params() -> None:
    frame = json.loads(trading.user_stream_subscribe("req-1", CREDENTIALS, 1747385641636))
    assert frame["method"] == "userDataStream.subscribe.signature"
    assert frame["id"] == "req-1"
    params = frame["params"]
    payload = f"apiKey={API_KEY}&timestamp=1747385641636"
    assert ws_api_payload(params) == payload
    assert params["signature"] == sign(SECRET, payload)


def test_credentials_never_show_the_secret() -> None:
    assert SECRET not in repr(CREDENTIALS)


@given(
    st.decimals(min_value=0, max_value=Decimal("1e19"), places=8, allow_nan=False),
)
def test_decimals_are_formatted_plainly_and_exactly(value: Decimal) -> None:
    text = format_decimal(value)
    assert "e" not in text.lower()
    assert Decimal(text) == value


def test_exponents_never_reach_the_venue() -> None:
    assert format_decimal(Decimal("1e-05")) == "0.00001"
    assert format_decimal(Decimal("1E+3")) == "1000"
    with pytest.raises(ValueError):
        format_decimal(Decimal("-1"))
    with pytest.raises(ValueError):
        format_decimal(Decimal("1e-21"))


@given(
    st.lists(
        st.tuples(
            st.text(alphabet="abcdefghijklmnopqrstuvwxyzABC", min_size=1, max_size=10),
            st.text(max_size=20),
        ),
        max_size=8,
    ),
    st.text(min_size=1, max_size=64),
)
def test_a_signed_query_verifies_with_its_own_prefix(
    params: list[tuple[str, str]], secret: str
) -> None:
    query = signed_query(params, hmac_signer(secret))
    unsigned, _, signature = query.rpartition("&signature=")
    assert unsigned == encode_query(params)
    assert sign(secret, unsigned) == signature
    assert [v for _, v in parse_qsl(unsigned, keep_blank_values=True)] == [v for _, v in params]


# --- the error table -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "code", "message", "verdict"),
    [
        (400, -1013, "Filter failure: LOT_SIZE", Verdict.REJECTED),
        (400, -2010, "Account has insufficient balance for requested action.", Verdict.REJECTED),
        (400, -2010, "Duplicate order sent.", Verdict.UNKNOWN),
        (400, -1100, "Illegal characters found in parameter 'newClientOrderId'", Verdict.REJECTED),
        (400, -1111, "Parameter 'quantity' has too much precision.", Verdict.REJECTED),
        (400, -1006, "An unexpected response was received from the message bus.", Verdict.UNKNOWN),
        (400, -1007, "Timeout waiting for response from backend server.", Verdict.UNKNOWN),
        (503, -1007, "Timeout waiting for response from backend server.", Verdict.UNKNOWN),
        (500, None, "", Verdict.UNKNOWN),
        (502, None, "", Verdict.UNKNOWN),
        (400, -1021, "Timestamp for this request is outside of the recvWindow.",
         Verdict.RESEND_AFTER_CLOCK_SYNC),
        (400, -2013, "Order does not exist.", Verdict.NOT_FOUND),
        (400, -2011, "Unknown order sent.", Verdict.NOT_FOUND),
        (400, -2011, "Order was not canceled due to cancel restrictions.", Verdict.REJECTED),
        (401, -2015, "Invalid API-key, IP, or permissions for action.", Verdict.AUTH_FAILED),
        (400, -1022, "Signature for this request is not valid.", Verdict.AUTH_FAILED),
        (400, -9999, "something new", Verdict.UNKNOWN),
        (400, None, "<html>", Verdict.UNKNOWN),
        (403, None, "", Verdict.UNKNOWN),
    ],
)  # fmt: skip
def test_every_error_class(status: int, code: int | None, message: str, verdict: Verdict) -> None:
    assert classify_error(status, code, message).verdict is verdict


def test_rate_limits_and_bans_carry_retry_after() -> None:
    limited = classify_error(429, -1003, "Too many requests", parse_retry_after("7"))
    assert (limited.verdict, limited.retry_after) == (Verdict.RATE_LIMITED, 7.0)
    banned = classify_error(418, -1003, "Way too much request weight used; IP banned", None)
    assert banned.verdict is Verdict.BANNED and banned.retry_after == 60.0
    assert "IP banned" in banned.reason
    assert parse_retry_after("soon") is None and parse_retry_after(None) is None
    assert transport_failure("read timeout").verdict is Verdict.UNKNOWN


def test_order_count_headers() -> None:
    headers = {"x-mbx-order-count-10s": "3", "X-MBX-ORDER-COUNT-1D": "12", "Other": "1"}
    assert order_counts(headers) == {"10S": 3, "1D": 12}
    assert used_weights({"x-mbx-used-weight-1m": "40", "X-MBX-USED-WEIGHT-1M": "x"}) == {"1M": 40}


# --- order answers ---------------------------------------------------------------------------

FULL = (
    b'{"symbol":"BTCUSDT","orderId":28,"orderListId":-1,"clientOrderId":"6gCrw2kRUAF9CvJDGP16IP",'
    b'"transactTime":1507725176595,"price":"0.00000000","origQty":"10.00000000",'
    b'"executedQty":"10.00000000","origQuoteOrderQty":"0.000000",'
    b'"cummulativeQuoteQty":"10.00000000","status":"FILLED","timeInForce":"GTC",'
    b'"type":"MARKET","side":"SELL","workingTime":1507725176595,'
    b'"selfTradePreventionMode":"NONE","fills":[{"price":"4000.00000000","qty":"1.00000000",'
    b'"commission":"4.00000000","commissionAsset":"USDT","tradeId":56}]}'
)


def test_a_full_order_response() -> None:
    order = parse_order(FULL, "MILLISECOND")
    assert order.status == "FILLED" and order.client_order_id == "6gCrw2kRUAF9CvJDGP16IP"
    assert order.executed_quantity == Decimal("10")
    [fill] = order.fills
    assert (fill.trade_id, fill.price, fill.quantity) == (56, Decimal(4000), Decimal(1))
    assert (fill.commission, fill.commission_asset) == (Decimal(4), "USDT")
    assert fill.at_us == 1507725176595000


def test_an_ack_response_has_no_status() -> None:
    body = (
        b'{"symbol":"BTCUSDT","orderId":28,"orderListId":-1,"clientOrderId":"x","transactTime":1}'
    )
    order = parse_order(body, "MILLISECOND")
    assert order.status is None and order.order_id == 28


def test_a_cancel_answer_names_our_original_id() -> None:
    body = (
        b'{"symbol":"LTCBTC","origClientOrderId":"myOrder1","orderId":4,"orderListId":-1,'
        b'"clientOrderId":"cancelMyOrder1","transactTime":1684804350068,"price":"2.00000000",'
        b'"origQty":"1.00000000","executedQty":"0.00000000","origQuoteOrderQty":"0.000000",'
        b'"cummulativeQuoteQty":"0.00000000","status":"CANCELED","timeInForce":"GTC",'
        b'"type":"LIMIT","side":"BUY","selfTradePreventionMode":"NONE"}'
    )
    order = parse_order(body, "MILLISECOND")
    assert (order.client_order_id, order.status) == ("myOrder1", "CANCELED")


def test_open_orders_account_and_trades() -> None:
    orders = parse_orders(
        b'[{"symbol":"LTCBTC","orderId":1,"orderListId":-1,"clientOrderId":"myOrder1",'
        b'"price":"0.1","origQty":"1.0","executedQty":"0.0","cummulativeQuoteQty":"0.0",'
        b'"status":"NEW","timeInForce":"GTC","type":"LIMIT","side":"BUY","stopPrice":"0.0",'
        b'"icebergQty":"0.0","time":1499827319559,"updateTime":1499827319559,"isWorking":true,'
        b'"workingTime":1499827319559,"origQuoteOrderQty":"0.000000",'
        b'"selfTradePreventionMode":"NONE"}]',
        "MILLISECOND",
    )
    assert [(o.client_order_id, o.status, o.price) for o in orders] == [
        ("myOrder1", "NEW", Decimal("0.1"))
    ]
    balances = parse_account(
        b'{"makerCommission":15,"canTrade":true,"accountType":"SPOT","balances":'
        b'[{"asset":"BTC","free":"4723846.89208129","locked":"0.00000000"}],"permissions":["SPOT"]}'
    )
    assert balances["BTC"].free == Decimal("4723846.89208129")
    [trade] = parse_my_trades(
        b'[{"symbol":"BNBBTC","id":28457,"orderId":100234,"orderListId":-1,'
        b'"price":"4.00000100","qty":"12.00000000","quoteQty":"48.000012",'
        b'"commission":"10.10000000","commissionAsset":"BNB","time":1499865549590,'
        b'"isBuyer":true,"isMaker":false,"isBestMatch":true}]',
        "MILLISECOND",
    )
    assert (trade.trade_id, trade.order_id, trade.side, trade.maker) == (
        28457,
        100234,
        "BUY",
        False,
    )


@pytest.mark.parametrize(
    "body",
    [b"", b"{}", b"[]", b'{"symbol":"X","orderId":"1","clientOrderId":"a"}',
     b'{"symbol":"X","orderId":1,"clientOrderId":"a","executedQty":"-1"}',
     b'{"symbol":"X","orderId":1,"clientOrderId":"a","status":"WHATEVER"}'],
)  # fmt: skip
def test_bad_order_answers_are_parse_errors(body: bytes) -> None:
    with pytest.raises(ParseError):
        parse_order(body, "MILLISECOND")


# --- the user stream -------------------------------------------------------------------------


def _report(**changes: object) -> bytes:
    event: dict[str, object] = {
        "e": "executionReport", "E": 1499405658658, "s": "ETHBTC",
        "c": "mUvoqJxFIILMdfAW5iGSOW", "S": "BUY", "o": "LIMIT", "f": "GTC",
        "q": "1.00000000", "p": "0.10264410", "P": "0.00000000", "F": "0.00000000", "g": -1,
        "C": "", "x": "NEW", "X": "NEW", "r": "NONE", "i": 4293153, "l": "0.00000000",
        "z": "0.00000000", "L": "0.00000000", "n": "0", "N": None, "T": 1499405658657, "t": -1,
        "v": 3, "I": 8641984, "w": True, "m": False, "M": False, "O": 1499405658657,
        "Z": "0.00000000", "Y": "0.00000000", "Q": "0.00000000", "W": 1499405658657, "V": "NONE",
    }  # fmt: skip
    event.update(changes)
    return json.dumps({"subscriptionId": 0, "event": event}).encode()


def test_the_official_execution_report() -> None:
    report = parse_user_frame(_report(), "MILLISECOND")
    assert isinstance(report, ExecutionReport)
    assert (report.client_order_id, report.status, report.fill) == (
        "mUvoqJxFIILMdfAW5iGSOW",
        "NEW",
        None,
    )
    assert report.event_us == 1499405658658000


def test_a_trade_report_carries_its_fill_and_a_cancel_names_the_original_id() -> None:
    trade = parse_user_frame(
        _report(x="TRADE", X="PARTIALLY_FILLED", l="0.4", L="0.1026", z="0.4", n="0.0004",
                N="ETH", t=991, m=True),
        "MILLISECOND",
    )  # fmt: skip
    assert isinstance(trade, ExecutionReport) and trade.fill is not None
    assert (trade.fill.trade_id, trade.fill.quantity, trade.fill.maker) == (
        991,
        Decimal("0.4"),
        True,
    )
    cancel = parse_user_frame(
        _report(x="CANCELED", X="CANCELED", c="cxl-1", C="ours-1"), "MILLISECOND"
    )
    assert isinstance(cancel, ExecutionReport) and cancel.client_order_id == "ours-1"
    with pytest.raises(ParseError, match="TRADE"):
        parse_user_frame(_report(x="TRADE", X="FILLED", l="0"), "MILLISECOND")


def test_account_balance_terminated_and_responses() -> None:
    position = parse_user_frame(
        b'{"subscriptionId":0,"event":{"e":"outboundAccountPosition","E":1564034571105,'
        b'"u":1564034571073,"B":[{"a":"ETH","f":"10000.000000","l":"0.000000"}]}}',
        "MILLISECOND",
    )
    assert isinstance(position, AccountPosition) and position.balances["ETH"].free == Decimal(10000)
    update = parse_user_frame(
        b'{"subscriptionId":0,"event":{"e":"balanceUpdate","E":1573200697110,"a":"BTC",'
        b'"d":"100.00000000","T":1573200697068}}',
        "MILLISECOND",
    )
    assert isinstance(update, BalanceUpdate) and update.delta == Decimal(100)
    ended = parse_user_frame(
        b'{"subscriptionId":0,"event":{"e":"eventStreamTerminated","E":1728973001334}}',
        "MILLISECOND",
    )
    assert isinstance(ended, StreamTerminated)
    ok = parse_user_frame(b'{"id":"r1","status":200,"result":{"subscriptionId":0}}', "MILLISECOND")
    assert isinstance(ok, ApiResponse) and ok.subscription_id == 0 and ok.error is None
    refused = parse_user_frame(
        b'{"id":"r2","status":401,"error":{"code":-2015,"msg":"Invalid API-key"}}', "MILLISECOND"
    )
    assert isinstance(refused, ApiResponse) and refused.error is not None
    assert refused.error.verdict is Verdict.AUTH_FAILED
    assert (
        parse_user_frame(b'{"subscriptionId":0,"event":{"e":"listStatus","E":1}}', "MILLISECOND")
        is None
    )
    with pytest.raises(ParseError, match="unknown event"):
        parse_user_frame(b'{"subscriptionId":0,"event":{"e":"surprise","E":1}}', "MILLISECOND")


_decimals = st.decimals(min_value=Decimal("0.00000001"), max_value=Decimal("1e9"), places=8)


@given(
    client_id=st.from_regex(r"[a-zA-Z0-9_-]{1,36}", fullmatch=True),
    quantity=_decimals,
    price=_decimals,
    trade_id=st.integers(min_value=0, max_value=2**62),
    event_ms=st.integers(min_value=946_684_800_000, max_value=4_102_444_799_999),
)
def test_trade_reports_round_trip_exactly(
    client_id: str, quantity: Decimal, price: Decimal, trade_id: int, event_ms: int
) -> None:
    frame = _report(c=client_id, x="TRADE", X="FILLED", l=str(quantity), L=str(price),
                    z=str(quantity), q=str(quantity), t=trade_id, E=event_ms, T=event_ms)  # fmt: skip
    report = parse_user_frame(frame, "MILLISECOND")
    assert isinstance(report, ExecutionReport) and report.fill is not None
    assert report.client_order_id == client_id
    assert (report.fill.quantity, report.fill.price, report.fill.trade_id) == (
        quantity,
        price,
        trade_id,
    )
    assert report.event_us == event_ms * 1000


@given(st.binary(max_size=200))
def test_arbitrary_bytes_never_crash_the_user_stream_parser(frame: bytes) -> None:
    try:
        parse_user_frame(frame, "MICROSECOND")
    except ParseError:
        pass
