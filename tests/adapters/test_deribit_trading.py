"""The Deribit private API, sans-I/O: requests, auth timing, parsers of results and user
notifications, label uniqueness, and the one error table."""

from __future__ import annotations

import json
from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tradingd.adapters.base import ParseError
from tradingd.adapters.deribit import trading as t
from tradingd.adapters.trading import Verdict

PLACE_RESULT = (
    b'{"trades":[{"trade_seq":1966068,"trade_id":"ETH-2696097","timestamp":1590486335742,'
    b'"tick_direction":0,"state":"filled","reduce_only":true,"price":202.8,"post_only":false,'
    b'"order_type":"limit","order_id":"ETH-584864807","matching_id":null,"mark_price":202.79,'
    b'"liquidity":"T","instrument_name":"ETH-PERPETUAL","index_price":202.86,'
    b'"fee_currency":"ETH","fee":0.00007766,"direction":"sell","amount":21}],'
    b'"order":{"web":false,"time_in_force":"good_til_cancelled","replaced":false,'
    b'"reduce_only":true,"price":198.75,"post_only":false,"order_type":"limit",'
    b'"order_state":"filled","order_id":"ETH-584864807","max_show":21,'
    b'"last_update_timestamp":1590486335742,"label":"","is_rebalance":false,'
    b'"is_liquidation":false,"instrument_name":"ETH-PERPETUAL","filled_amount":21,'
    b'"direction":"sell","creation_timestamp":1590486335742,"average_price":202.8,"api":true,'
    b'"amount":21}}'
)

ORDER_BY_LABEL = (
    b'{"time_in_force":"good_til_cancelled","reduce_only":false,"price":118.94,'
    b'"post_only":false,"order_type":"limit","order_state":"filled","order_id":"ETH-331562",'
    b'"max_show":37,"last_update_timestamp":1550219810944,"label":"fooBar",'
    b'"is_rebalance":false,"is_liquidation":false,"instrument_name":"ETH-PERPETUAL",'
    b'"filled_amount":37,"direction":"sell","creation_timestamp":1550219749176,'
    b'"average_price":118.94,"api":false,"amount":37}'
)


def _frame(data: bytes) -> dict[str, object]:
    decoded: dict[str, object] = json.loads(data)
    return decoded


def test_auth_requests_and_refresh_timing() -> None:
    frame = _frame(t.auth_client_credentials(7, "fo7WAPRm4P", "W0H6FJW4IRPZ1MOQ8FP6KMC5RZDUUKXS"))
    assert frame == {
        "jsonrpc": "2.0",
        "id": 7,
        "method": "public/auth",
        "params": {
            "grant_type": "client_credentials",
            "client_id": "fo7WAPRm4P",
            "client_secret": "W0H6FJW4IRPZ1MOQ8FP6KMC5RZDUUKXS",
        },
    }
    assert _frame(t.auth_refresh(8, "r-token"))["params"] == {
        "grant_type": "refresh_token",
        "refresh_token": "r-token",
    }
    received = 1_000_000_000_000_000
    token = t.parse_auth(
        b'{"access_token":"a","expires_in":900,"refresh_token":"r","scope":"connection",'
        b'"token_type":"bearer"}',
        received,
    )
    assert token.expires_us == received + 900_000_000
    assert token.refresh_due_us == received + 720_000_000  # 80 % of the lifetime
    year = t.parse_auth(b'{"access_token":"a","expires_in":31536000,"refresh_token":"r"}', 0)
    assert year.refresh_due_us == int(31536000 * 1e6 * 0.8)
    short = t.parse_auth(b'{"access_token":"a","expires_in":30,"refresh_token":"r"}', received)
    assert short.refresh_due_us == received  # less than the margin left: refresh now
    assert "a" not in repr(token).replace("expires", "").replace("refresh_due", "")
    with pytest.raises(ParseError):
        t.parse_auth(b'{"access_token":"a","expires_in":0,"refresh_token":"r"}', 0)


def test_place_order_sends_label_valid_until_and_exact_numbers() -> None:
    frame = t.place_order(
        3,
        direction="buy",
        instrument_name="BTC-PERPETUAL",
        amount=Decimal("10"),
        price=Decimal("8950.5"),
        label="intent-9f",
        valid_until_ms=1_700_000_005_000,
        post_only=True,
    )
    assert b'"amount":10' in frame and b'"price":8950.5' in frame
    params = _frame(frame)["params"]
    assert _frame(frame)["method"] == "private/buy"
    assert params == {
        "instrument_name": "BTC-PERPETUAL",
        "amount": 10,
        "type": "limit",
        "label": "intent-9f",
        "time_in_force": "good_til_cancelled",
        "reduce_only": False,
        "valid_until": 1_700_000_005_000,
        "price": 8950.5,
        "post_only": True,
        "reject_post_only": True,
    }
    market = _frame(
        t.place_order(
            4,
            direction="sell",
            instrument_name="ETH-PERPETUAL",
            amount=Decimal("1"),
            label="x",
            valid_until_ms=1,
            order_type="market",
        )
    )
    assert market["method"] == "private/sell" and "price" not in market["params"]  # type: ignore[operator]
    with pytest.raises(ValueError, match="label"):
        t.place_order(5, direction="buy", instrument_name="X", amount=Decimal(1),
                      price=Decimal(1), label="a" * 65, valid_until_ms=1)  # fmt: skip
    with pytest.raises(ValueError, match="limit order needs"):
        t.place_order(5, direction="buy", instrument_name="X", amount=Decimal(1), label="a",
                      valid_until_ms=1)  # fmt: skip


def test_every_other_private_request() -> None:
    cases = [
        (t.cancel(1, "ETH-1"), "private/cancel", {"order_id": "ETH-1"}),
        (t.cancel_all(1), "private/cancel_all", {}),
        (t.cancel_all_by_instrument(1, "BTC-PERPETUAL"), "private/cancel_all_by_instrument",
         {"instrument_name": "BTC-PERPETUAL"}),
        (t.cancel_by_label(1, "l1", "BTC"), "private/cancel_by_label",
         {"label": "l1", "currency": "BTC"}),
        (t.get_open_orders_by_currency(1, "BTC"), "private/get_open_orders_by_currency",
         {"currency": "BTC"}),
        (t.get_order_state_by_label(1, "ETH", "l1"), "private/get_order_state_by_label",
         {"currency": "ETH", "label": "l1"}),
        (t.get_user_trades_by_currency(1, "BTC", start_id="48079254"),
         "private/get_user_trades_by_currency",
         {"currency": "BTC", "count": 1000, "sorting": "asc", "start_id": "48079254"}),
        (t.get_positions(1, "BTC"), "private/get_positions", {"currency": "BTC"}),
        (t.get_account_summary(1, "BTC"), "private/get_account_summary", {"currency": "BTC"}),
        (t.enable_cancel_on_disconnect(1), "private/enable_cancel_on_disconnect",
         {"scope": "connection"}),
        (t.private_subscribe(1, t.user_channels("BTC")), "private/subscribe",
         {"channels": ["user.orders.any.BTC.raw", "user.trades.any.BTC.raw",
                       "user.portfolio.btc"]}),
    ]  # fmt: skip
    for frame, method, params in cases:
        decoded = _frame(frame)
        assert (decoded["method"], decoded["params"], decoded["jsonrpc"]) == (method, params, "2.0")


def test_the_official_place_result() -> None:
    placed = t.parse_place(PLACE_RESULT)
    assert placed.order.state == "filled" and placed.order.filled_amount == Decimal(21)
    assert placed.order.price == Decimal("198.75")
    [trade] = placed.trades
    assert (trade.trade_id, trade.fee, trade.maker) == ("ETH-2696097", Decimal("0.00007766"), False)
    assert trade.at_us == 1590486335742000


def test_a_trigger_order_with_market_price_and_counts() -> None:
    order = t.parse_order(
        b'{"triggered":false,"trigger":"index_price","time_in_force":"good_til_cancelled",'
        b'"trigger_price":144.73,"reduce_only":false,"price":"market_price","post_only":false,'
        b'"order_type":"stop_market","order_state":"untriggered","order_id":"ETH-SLIS-12",'
        b'"max_show":5,"last_update_timestamp":1550575961291,"label":"","is_rebalance":false,'
        b'"is_liquidation":false,"instrument_name":"ETH-PERPETUAL","direction":"sell",'
        b'"creation_timestamp":1550575961291,"api":false,"amount":5}'
    )
    assert order.price is None and order.state == "untriggered"
    assert t.parse_cancel_count(b"5") == 5
    with pytest.raises(ParseError):
        t.parse_cancel_count(b"-1")


def test_a_label_lookup_is_a_list_and_two_matches_are_a_fault() -> None:
    assert t.parse_order_by_label(b"[]", "fooBar") is None
    one = t.parse_order_by_label(b"[" + ORDER_BY_LABEL + b"]", "fooBar")
    assert one is not None and one.order_id == "ETH-331562" and one.filled_amount == 37
    twice = b"[" + ORDER_BY_LABEL + b"," + ORDER_BY_LABEL.replace(b"ETH-331562", b"ETH-9") + b"]"
    with pytest.raises(t.LabelNotUnique) as raised:
        t.parse_order_by_label(twice, "fooBar")
    assert raised.value.order_ids == ["ETH-331562", "ETH-9"]
    assert raised.value.classified().verdict is Verdict.FAULT


def test_trades_positions_and_account() -> None:
    page = t.parse_trades_page(
        b'{"trades":[{"trade_seq":299513,"trade_id":"47958936","timestamp":1589923311862,'
        b'"tick_direction":2,"state":"filled","reduce_only":false,"price":9681.5,'
        b'"post_only":false,"order_type":"limit","order_id":"3993343822","matching_id":null,'
        b'"mark_price":9684,"liquidity":"M","instrument_name":"BTC-26JUN20",'
        b'"index_price":9679.48,"fee_currency":"BTC","fee":-2.1e-7,"direction":"buy",'
        b'"amount":10,"label":"ours-1"}],"has_more":false}'
    )
    [trade] = page.trades
    assert trade.fee == Decimal("-2.1e-7") and trade.maker and trade.label == "ours-1"
    [position] = t.parse_positions(
        b'[{"average_price":7440.18,"delta":0.006687487,"direction":"buy",'
        b'"instrument_name":"BTC-PERPETUAL","kind":"future","realized_funding":-1e-08,'
        b'"size":-50,"size_currency":0.006687487}]'
    )
    assert position.size == Decimal(-50)
    summary = t.parse_account_summary(
        b'{"currency":"BTC","balance":3.4906363,"equity":2.6437733,"available_funds":2.2638913,'
        b'"initial_margin":0.379882}'
    )
    assert summary.balance == Decimal("3.4906363")


def test_user_notifications() -> None:
    raw_order = (
        b'{"time_in_force":"good_til_cancelled","replaced":false,"reduce_only":false,'
        b'"price":10502.52,"post_only":false,"original_order_type":"market","order_type":"limit",'
        b'"order_state":"open","order_id":"5","max_show":200,"last_update_timestamp":1581507423789,'
        b'"label":"","is_rebalance":false,"is_liquidation":false,"instrument_name":"BTC-PERPETUAL",'
        b'"filled_amount":0,"direction":"buy","creation_timestamp":1581507423789,'
        b'"average_price":0,"api":false,"amount":200}'
    )
    single = t.parse_user_notification("user.orders.BTC-PERPETUAL.raw", raw_order)
    assert isinstance(single, t.OrdersUpdate) and single.orders[0].order_id == "5"
    assert single.orders[0].average_price is None
    batched = t.parse_user_notification("user.orders.any.BTC.100ms", b"[" + raw_order + b"]")
    assert isinstance(batched, t.OrdersUpdate) and len(batched.orders) == 1
    trades = t.parse_user_notification(
        "user.trades.BTC-PERPETUAL.100ms",
        b'[{"trade_seq":30289432,"trade_id":"48079254","timestamp":1590484156350,'
        b'"tick_direction":0,"state":"filled","reduce_only":false,"price":8954,'
        b'"post_only":false,"order_type":"market","order_id":"4008965646","matching_id":null,'
        b'"mark_price":8952.86,"liquidity":"T","instrument_name":"BTC-PERPETUAL",'
        b'"index_price":8956.73,"fee_currency":"BTC","fee":0.00000168,"direction":"sell",'
        b'"amount":20}]',
    )
    assert isinstance(trades, t.TradesUpdate) and trades.trades[0].amount == 20
    portfolio = t.parse_user_notification(
        "user.portfolio.btc",
        b'{"currency":"BTC","equity":100.5,"available_funds":95.2,"maintenance_margin":3.1}',
    )
    assert isinstance(portfolio, t.PortfolioUpdate) and portfolio.equity == Decimal("100.5")
    assert t.parse_user_notification("trades.BTC-PERPETUAL.100ms", b"[]") is None
    with pytest.raises(ParseError):
        t.parse_user_notification("user.trades.x", b'[{"trade_id":"1"}]')
    with pytest.raises(ParseError, match="filled"):
        t.parse_order(raw_order.replace(b'"filled_amount":0', b'"filled_amount":300'))


@pytest.mark.parametrize(
    ("code", "verdict"),
    [
        (10009, Verdict.REJECTED), (10002, Verdict.REJECTED), (11054, Verdict.REJECTED),
        (13888, Verdict.REJECTED), (10004, Verdict.NOT_FOUND), (10028, Verdict.RATE_LIMITED),
        (11051, Verdict.MAINTENANCE), (10041, Verdict.MAINTENANCE), (13009, Verdict.AUTH_FAILED),
        (13004, Verdict.AUTH_FAILED), (13032, Verdict.FAULT), (10040, Verdict.UNKNOWN),
        (10001, Verdict.UNKNOWN), (13028, Verdict.UNKNOWN), (99999, Verdict.UNKNOWN),
    ],
)  # fmt: skip
def test_every_error_class(code: int, verdict: Verdict) -> None:
    classified = t.classify_error(code, "msg")
    assert classified.verdict is verdict and classified.code == code
    assert (classified.retry_after is not None) == (verdict is Verdict.RATE_LIMITED)


_amounts = st.decimals(min_value=Decimal("0.0001"), max_value=Decimal("1e9"), places=4)


@given(
    label=st.from_regex(r"[\x21-\x7e]{1,64}", fullmatch=True),
    amount=_amounts,
    price=_amounts,
    filled=st.integers(min_value=0, max_value=100),
)
def test_orders_round_trip_exactly(
    label: str, amount: Decimal, price: Decimal, filled: int
) -> None:
    filled_amount = (amount * filled / 100).quantize(Decimal("0.0001"))
    data = json.dumps({
        "order_id": "BTC-1", "order_state": "open", "instrument_name": "BTC-PERPETUAL",
        "direction": "buy", "label": label, "amount": "__A__", "filled_amount": "__F__",
        "price": "__P__", "last_update_timestamp": 1, "time_in_force": "good_til_cancelled",
    }).replace('"__A__"', str(amount)).replace('"__F__"', str(filled_amount)).replace(
        '"__P__"', str(price))  # fmt: skip
    update = t.parse_user_notification("user.orders.any.BTC.raw", data.encode())
    assert isinstance(update, t.OrdersUpdate)
    [order] = update.orders
    assert (order.label, order.amount, order.price, order.filled_amount) == (
        label,
        amount,
        price,
        filled_amount,
    )


@given(
    st.binary(max_size=200),
    st.sampled_from(["user.orders.x.raw", "user.trades.x", "user.portfolio.btc"]),
)
def test_arbitrary_bytes_never_crash_the_notification_parser(data: bytes, channel: str) -> None:
    try:
        t.parse_user_notification(channel, data)
    except ParseError:
        pass
