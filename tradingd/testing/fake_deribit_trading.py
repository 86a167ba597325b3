"""The trading side of the fake Deribit venue: accounts, a matching engine, the private JSON-RPC
methods over the authenticated WebSocket, the ``user.*`` channels, and fault injection.

Attach it to a ``FakeDeribit`` (before or after starting it): ``FakeDeribitTrading(fake)``.

* ``public/auth`` (``client_credentials`` and ``refresh_token``): connection-scoped tokens of
  ``token_lifetime`` seconds; a private call on a connection that is not authenticated (or
  whose token expired by the venue's clock) answers 13009 ``unauthorized``, over HTTP 10000.
* ``private/buy|sell`` (``label``, ``valid_until``: past it, 13888 ``timed_out``),
  ``cancel``, ``cancel_all`` (``_by_instrument``), ``cancel_by_label``,
  ``get_open_orders_by_currency``,
  ``get_order_state_by_label`` (a list: labels are not unique here either),
  ``get_user_trades_by_currency`` (``start_id``), ``get_positions``, ``get_account_summary``,
  ``enable_cancel_on_disconnect`` (a connection's resting orders are cancelled when it ends),
  ``private/subscribe`` to ``user.orders.*``, ``user.trades.*``, ``user.portfolio.*``.

Matching is the Binance fake's: a marketable order takes the top of book (``top_size`` per
level, walking a tick at a time), the rest rests at its price and fills against the tape the
fake publishes afterwards. Fees (``taker_fee``/``maker_fee`` of the traded value) are paid in
the instrument's currency; the balance moves by fees only (positions carry no P&L here: the
fake keeps what the chaos tests compare simple). ``orders`` is the venue's own record:
``duplicate_labels()`` counts venue orders per label.
"""

from __future__ import annotations

import asyncio
import collections
import itertools
import secrets
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from decimal import ROUND_DOWN, Decimal, InvalidOperation
from typing import Any, Final

import msgspec

from tradingd.testing.fake_deribit import Connection, FakeDeribit, RpcFailure

_ENCODER: Final = msgspec.json.Encoder(decimal_format="number")
_EIGHT: Final = Decimal("1e-8")

UNAUTHORIZED: Final = (13009, "unauthorized")
AUTHORIZATION_REQUIRED: Final = (10000, "authorization_required")
INVALID_CREDENTIALS: Final = (13004, "invalid_credentials")
NOT_ENOUGH_FUNDS: Final = (10009, "not_enough_funds")
ORDER_NOT_FOUND: Final = (10004, "order_not_found")
INVALID_AMOUNT: Final = (10021, "invalid_amount")
PRICE_WRONG_TICK: Final = (10043, "price_wrong_tick")
POST_ONLY_REJECT: Final = (11054, "post_only_reject")
TIMED_OUT: Final = (13888, "timed_out")
TOO_MANY_REQUESTS: Final = (10028, "too_many_requests")
SYSTEM_MAINTENANCE: Final = (11051, "system_maintenance")
ERROR: Final = (10001, "error")
INVALID_PARAMS: Final = (-32602, "Invalid params")
# Margin a new order must find free, as a share of its value (a plausible initial margin).
INITIAL_MARGIN: Final = Decimal("0.02")


@dataclass
class Account:
    client_id: str
    client_secret: str
    balances: dict[str, Decimal]
    initial: dict[str, Decimal]
    positions: dict[str, Decimal] = field(default_factory=dict)


@dataclass
class VenueTrade:
    trade_id: str
    number: int  # the order of trades, for start_id paging
    price: Decimal
    amount: Decimal
    fee: Decimal
    maker: bool
    timestamp: int


@dataclass
class VenueOrder:
    account: Account
    order_id: str
    label: str
    instrument: str
    currency: str
    direction: str
    order_type: str
    time_in_force: str
    price: Decimal | None
    amount: Decimal
    created_ms: int
    connection: Connection | None
    state: str = "open"
    filled: Decimal = Decimal(0)
    value: Decimal = Decimal(0)
    updated_ms: int = 0
    cancel_reason: str = ""
    trades: list[VenueTrade] = field(default_factory=list)

    @property
    def remaining(self) -> Decimal:
        return self.amount - self.filled


@dataclass
class DeribitFaults:
    """Switches tests turn on; counters are consumed one request at a time."""

    drop_response_after_match: int = 0  # matched, then the connection is cut before the answer
    error_before_match: int = 0  # 10001 "error" before anything is matched
    timed_out: int = 0  # 13888 without processing (as if valid_until had passed)
    rate_limited: int = 0  # 10028, and the venue ends the session
    maintenance: int = 0  # 11051 for the next orders (a maintenance window of N requests)
    delay: float = 0.0  # seconds an order waits before the engine takes it
    duplicate_events: bool = False  # every user notification sent twice
    disconnect_user_stream_after: int | None = None  # then every private connection is cut


@dataclass
class _Session:
    account: Account
    token: str
    expires_ms: int
    cancel_on_disconnect: bool = False


class FakeDeribitTrading:
    def __init__(
        self,
        fake: FakeDeribit,
        *,
        taker_fee: Decimal = Decimal("0.0005"),
        maker_fee: Decimal = Decimal("0.0001"),
        top_size: Decimal | None = None,
        token_lifetime: int = 900,
    ) -> None:
        self.fake = fake
        self.taker_fee = taker_fee
        self.maker_fee = maker_fee
        self.top_size = top_size
        self.token_lifetime = token_lifetime
        self.faults = DeribitFaults()
        self.accounts: dict[str, Account] = {}
        self.orders: list[VenueOrder] = []
        self.faults_injected: collections.Counter[str] = collections.Counter()
        self._sessions: dict[Connection, _Session] = {}
        self._refresh_tokens: dict[str, Account] = {}
        self._order_numbers = itertools.count(8_000_000_001)
        self._trade_numbers = itertools.count(1)
        fake.extra_methods.update(self._methods())
        fake.tape_listeners.append(self._on_tape)
        fake.disconnect_listeners.append(self._on_disconnect)

    # --- control API ------------------------------------------------------------------------

    def add_account(self, client_id: str, client_secret: str, balances: dict[str, str]) -> Account:
        initial = {c: Decimal(v) for c, v in balances.items()}
        account = Account(client_id, client_secret, dict(initial), dict(initial))
        self.accounts[client_id] = account
        return account

    def duplicate_labels(self) -> dict[str, int]:
        counts = collections.Counter(o.label for o in self.orders if o.label)
        return {label: n for label, n in counts.items() if n > 1}

    def orders_by_label(self, label: str) -> list[VenueOrder]:
        return [o for o in self.orders if o.label == label]

    def wipe(self) -> None:
        """A testnet-style reset: every order, trade and position gone, balances reset."""
        self.orders.clear()
        for account in self.accounts.values():
            account.balances = dict(account.initial)
            account.positions.clear()

    def authenticated_connections(self) -> int:
        return len(self._sessions)

    def place_foreign_order(self, account: Account, label: str, instrument: str) -> VenueOrder:
        """An order under ``label`` that our client did not send (to test label faults)."""
        book = self.fake.book(instrument)
        order = self._new_order(
            account, "buy", instrument, book.min_amount, book.bid - book.tick * 100, label,
            "limit", "good_til_cancelled", None,
        )  # fmt: skip
        self.orders.append(order)
        return order

    # --- methods ----------------------------------------------------------------------------

    def _methods(self) -> dict[str, Callable[[dict[str, Any], Connection | None], object]]:
        private: dict[str, Callable[[dict[str, Any], _Session, Connection], object]] = {
            "private/buy": lambda p, s, c: self._place(p, s, c, "buy"),
            "private/sell": lambda p, s, c: self._place(p, s, c, "sell"),
            "private/cancel": self._cancel_one,
            "private/cancel_all": self._cancel_all,
            "private/cancel_all_by_instrument": self._cancel_all,
            "private/cancel_by_label": self._cancel_by_label,
            "private/get_open_orders_by_currency": self._open_orders,
            "private/get_order_state_by_label": self._by_label,
            "private/get_user_trades_by_currency": self._user_trades,
            "private/get_positions": self._positions,
            "private/get_account_summary": self._summary,
            "private/enable_cancel_on_disconnect": self._enable_cod,
            "private/subscribe": self._subscribe,
        }
        methods: dict[str, Callable[[dict[str, Any], Connection | None], object]] = {
            "public/auth": self._auth
        }
        for name, handler in private.items():
            methods[name] = self._authorised(handler)
        return methods

    def _authorised(
        self, handler: Callable[[dict[str, Any], _Session, Connection], object]
    ) -> Callable[[dict[str, Any], Connection | None], object]:
        def call(params: dict[str, Any], connection: Connection | None) -> object:
            if connection is None:
                raise RpcFailure(AUTHORIZATION_REQUIRED)
            session = self._sessions.get(connection)
            if session is None or session.expires_ms <= self.fake.now_ms():
                raise RpcFailure(UNAUTHORIZED)
            return handler(params, session, connection)

        return call

    def _auth(self, params: dict[str, Any], connection: Connection | None) -> object:
        grant = params.get("grant_type")
        if grant == "client_credentials":
            account = self.accounts.get(str(params.get("client_id", "")))
            if account is None or params.get("client_secret") != account.client_secret:
                raise RpcFailure(INVALID_CREDENTIALS)
        elif grant == "refresh_token":
            found = self._refresh_tokens.pop(str(params.get("refresh_token", "")), None)
            if found is None:
                raise RpcFailure(UNAUTHORIZED)
            account = found
        else:
            raise RpcFailure(INVALID_PARAMS, {"reason": "unsupported", "param": "grant_type"})
        now = self.fake.now_ms()
        access = f"{now}.{secrets.token_urlsafe(24)}"
        refresh = f"{now}.{secrets.token_urlsafe(24)}"
        self._refresh_tokens[refresh] = account
        if connection is not None:
            previous = self._sessions.get(connection)
            self._sessions[connection] = _Session(
                account=account,
                token=access,
                expires_ms=now + self.token_lifetime * 1000,
                cancel_on_disconnect=previous.cancel_on_disconnect if previous else False,
            )
        return {
            "access_token": access,
            "expires_in": self.token_lifetime,
            "refresh_token": refresh,
            "scope": "connection mainaccount trade:read_write",
            "enabled_features": [],
            "token_type": "bearer",
        }

    def _enable_cod(self, params: dict[str, Any], session: _Session, c: Connection) -> object:
        session.cancel_on_disconnect = True
        return "ok"

    def _subscribe(self, params: dict[str, Any], session: _Session, c: Connection) -> object:
        channels = params.get("channels")
        if not isinstance(channels, list):
            raise RpcFailure(INVALID_PARAMS, {"reason": "must be an array", "param": "channels"})
        granted = [ch for ch in channels if isinstance(ch, str) and ch.startswith("user.")]
        c.channels.update(granted)
        return granted

    def _place(
        self, params: dict[str, Any], session: _Session, connection: Connection, direction: str
    ) -> Coroutine[Any, Any, object]:
        return self._place_async(params, session, connection, direction)

    async def _place_async(
        self, params: dict[str, Any], session: _Session, connection: Connection, direction: str
    ) -> object:
        faults = self.faults
        if faults.delay:
            await asyncio.sleep(faults.delay)  # the venue's latency, simulated
        for name, error in (
            ("rate_limited", TOO_MANY_REQUESTS),
            ("maintenance", SYSTEM_MAINTENANCE),
            ("timed_out", TIMED_OUT),
            ("error_before_match", ERROR),
        ):
            if getattr(faults, name):
                setattr(faults, name, getattr(faults, name) - 1)
                self.faults_injected[name] += 1
                raise RpcFailure(error)
        valid_until = params.get("valid_until")
        if isinstance(valid_until, int) and valid_until < self.fake.now_ms():
            raise RpcFailure(TIMED_OUT)
        instrument = str(params.get("instrument_name", ""))
        try:
            book = self.fake.book(instrument)
        except KeyError:
            raise RpcFailure((10020, "invalid_or_unsupported_instrument")) from None
        amount = _decimal(params, "amount")
        if amount is None or amount <= 0 or amount % book.min_amount != 0:
            raise RpcFailure(INVALID_AMOUNT)
        order_type = str(params.get("type", "limit"))
        price = _decimal(params, "price")
        if order_type == "limit":
            if price is None or price <= 0 or price % book.tick != 0:
                raise RpcFailure(PRICE_WRONG_TICK)
        elif order_type == "market":
            price = None
        else:
            raise RpcFailure(INVALID_PARAMS, {"reason": "unsupported", "param": "type"})
        marketable = price is None or (
            price >= book.ask if direction == "buy" else price <= book.bid
        )
        if params.get("post_only") and marketable:
            raise RpcFailure(POST_ONLY_REJECT)
        account = session.account
        reference = price if price is not None else book.ask
        margin = _value(amount, reference, book.inverse) * INITIAL_MARGIN
        if account.balances.get(book.currency, Decimal(0)) < margin:
            raise RpcFailure(NOT_ENOUGH_FUNDS)
        order = self._new_order(
            account, direction, instrument, amount, price, str(params.get("label", "")),
            order_type, str(params.get("time_in_force", "good_til_cancelled")), connection,
        )  # fmt: skip
        self.orders.append(order)
        self._notify_order(order)
        self._match_taker(order)
        if faults.drop_response_after_match:
            faults.drop_response_after_match -= 1
            self.faults_injected["drop_response_after_match"] += 1
            transport = connection.request.transport
            if transport is not None:
                transport.abort()
        return {
            "order": self._order_view(order),
            "trades": [self._trade_view(order, t) for t in order.trades],
        }

    def _new_order(
        self, account: Account, direction: str, instrument: str, amount: Decimal,
        price: Decimal | None, label: str, order_type: str, tif: str,
        connection: Connection | None,
    ) -> VenueOrder:  # fmt: skip
        book = self.fake.book(instrument)
        number = next(self._order_numbers)
        now = self.fake.now_ms()
        return VenueOrder(
            account=account,
            order_id=str(number) if book.currency == "BTC" else f"{book.currency}-{number}",
            label=label,
            instrument=instrument,
            currency=book.currency,
            direction=direction,
            order_type=order_type,
            time_in_force=tif,
            price=price,
            amount=amount,
            created_ms=now,
            updated_ms=now,
            connection=connection,
        )

    def _mine(self, session: _Session, currency: str | None = None) -> list[VenueOrder]:
        return [
            o for o in self.orders
            if o.account is session.account and (currency is None or o.currency == currency)
        ]  # fmt: skip

    def _cancel_one(self, params: dict[str, Any], session: _Session, c: Connection) -> object:
        order_id = str(params.get("order_id", ""))
        for order in self._mine(session):
            if order.order_id == order_id:
                if order.state != "open":
                    raise RpcFailure((11044, "not_open_order"))
                self._close(order, "cancelled", "user_request")
                return self._order_view(order)
        raise RpcFailure(ORDER_NOT_FOUND)

    def _cancel_all(self, params: dict[str, Any], session: _Session, c: Connection) -> object:
        instrument = params.get("instrument_name")
        open_orders = [
            o for o in self._mine(session) if o.state == "open"
            and (instrument is None or o.instrument == instrument)
        ]  # fmt: skip
        for order in open_orders:
            self._close(order, "cancelled", "user_request")
        return len(open_orders)

    def _cancel_by_label(self, params: dict[str, Any], session: _Session, c: Connection) -> object:
        label = str(params.get("label", ""))
        currency = params.get("currency")
        matched = [
            o for o in self._mine(session, currency if isinstance(currency, str) else None)
            if o.label == label and o.state == "open"
        ]  # fmt: skip
        for order in matched:
            self._close(order, "cancelled", "user_request")
        return len(matched)

    def _open_orders(self, params: dict[str, Any], session: _Session, c: Connection) -> object:
        currency = str(params.get("currency", ""))
        return [self._order_view(o) for o in self._mine(session, currency) if o.state == "open"]

    def _by_label(self, params: dict[str, Any], session: _Session, c: Connection) -> object:
        currency = str(params.get("currency", ""))
        label = str(params.get("label", ""))
        return [self._order_view(o) for o in self._mine(session, currency) if o.label == label]

    def _user_trades(self, params: dict[str, Any], session: _Session, c: Connection) -> object:
        currency = str(params.get("currency", ""))
        count = int(params.get("count", 10))
        # Trade ids grow per currency: paging by start_id (inclusive) follows them.
        rows = sorted(
            ((o, t) for o in self._mine(session, currency) for t in o.trades),
            key=lambda pair: _id_number(pair[1].trade_id),
        )
        start_id = params.get("start_id")
        if start_id is not None:
            first = _id_number(str(start_id))
            rows = [(o, t) for o, t in rows if _id_number(t.trade_id) >= first]
        page = rows[:count]
        return {"trades": [self._trade_view(o, t) for o, t in page], "has_more": len(rows) > count}

    def _positions(self, params: dict[str, Any], session: _Session, c: Connection) -> object:
        currency = str(params.get("currency", ""))
        result = []
        for instrument, size in session.account.positions.items():
            book = self.fake.book(instrument)
            if currency not in ("any", book.currency):
                continue
            result.append({
                "instrument_name": instrument, "size": size, "kind": "future",
                "direction": "buy" if size > 0 else "sell" if size < 0 else "zero",
                "average_price": book.ask, "mark_price": book.ask, "index_price": book.ask,
            })  # fmt: skip
        return result

    def _summary(self, params: dict[str, Any], session: _Session, c: Connection) -> object:
        currency = str(params.get("currency", ""))
        return self._portfolio(session.account, currency)

    # --- matching ---------------------------------------------------------------------------

    def _match_taker(self, order: VenueOrder) -> None:
        book = self.fake.book(order.instrument)
        level = book.ask if order.direction == "buy" else book.bid
        step = book.tick if order.direction == "buy" else -book.tick

        def crosses(price: Decimal) -> bool:
            if price <= 0:
                return False
            if order.price is None:
                return True
            return price <= order.price if order.direction == "buy" else price >= order.price

        if order.time_in_force == "fill_or_kill":
            levels = 0
            probe = level
            while crosses(probe) and (
                self.top_size is None or levels * self.top_size < order.amount
            ):
                levels += 1
                probe += step
            if levels == 0 or (self.top_size is not None and levels * self.top_size < order.amount):
                self._close(order, "cancelled", "")
                return
        while order.remaining > 0 and crosses(level):
            size = order.remaining if self.top_size is None else min(order.remaining, self.top_size)
            self._fill(order, level, size, maker=False)
            level += step
            if order.order_type == "limit" and self.top_size is not None:
                break
        if order.remaining > 0 and (
            order.order_type == "market" or order.time_in_force == "immediate_or_cancel"
        ):
            self._close(order, "cancelled", "")

    def _on_tape(self, instrument: str, trades: list[dict[str, object]]) -> None:
        resting = [o for o in self.orders if o.instrument == instrument and o.state == "open"]
        for trade in trades:
            price = Decimal(str(trade["price"]))
            left = Decimal(str(trade["amount"]))
            for order in resting:
                if left <= 0 or order.state != "open" or order.price is None:
                    continue
                if (order.direction == "buy" and price <= order.price) or (
                    order.direction == "sell" and price >= order.price
                ):
                    size = min(order.remaining, left)
                    self._fill(order, order.price, size, maker=True)
                    left -= size

    def _fill(self, order: VenueOrder, price: Decimal, amount: Decimal, *, maker: bool) -> None:
        book = self.fake.book(order.instrument)
        account = order.account
        fee = (
            _value(amount, price, book.inverse) * (self.maker_fee if maker else self.taker_fee)
        ).quantize(_EIGHT, ROUND_DOWN)
        account.balances[order.currency] = account.balances.get(order.currency, Decimal(0)) - fee
        signed = amount if order.direction == "buy" else -amount
        account.positions[order.instrument] = (
            account.positions.get(order.instrument, Decimal(0)) + signed
        )
        trade = VenueTrade(
            trade_id=self.fake.next_trade_id(order.currency),
            number=next(self._trade_numbers),
            price=price,
            amount=amount,
            fee=fee,
            maker=maker,
            timestamp=self.fake.now_ms(),
        )
        order.trades.append(trade)
        order.filled += amount
        order.value += price * amount
        order.updated_ms = trade.timestamp
        if order.remaining == 0:
            order.state = "filled"
        self._notify_trade(order, trade)
        self._notify_order(order)
        self._notify_portfolio(account, order.currency)

    def _close(self, order: VenueOrder, state: str, reason: str) -> None:
        order.state = state
        order.cancel_reason = reason
        order.updated_ms = self.fake.now_ms()
        self._notify_order(order)

    def _on_disconnect(self, connection: Connection) -> None:
        session = self._sessions.pop(connection, None)
        if session is None or not session.cancel_on_disconnect:
            return
        for order in self.orders:
            if order.connection is connection and order.state == "open":
                self._close(order, "cancelled", "cancel_on_disconnect")

    # --- views and notifications ------------------------------------------------------------

    def _order_view(self, order: VenueOrder) -> dict[str, object]:
        average = (order.value / order.filled).quantize(_EIGHT) if order.filled else Decimal(0)
        return {
            "order_id": order.order_id,
            "order_state": order.state,
            "order_type": order.order_type,
            "original_order_type": order.order_type,
            "time_in_force": order.time_in_force,
            "instrument_name": order.instrument,
            "direction": order.direction,
            "label": order.label,
            "amount": order.amount,
            "filled_amount": order.filled,
            "price": order.price if order.price is not None else "market_price",
            "average_price": average,
            "post_only": False,
            "reduce_only": False,
            "api": True,
            "web": False,
            "replaced": False,
            "is_liquidation": False,
            "creation_timestamp": order.created_ms,
            "last_update_timestamp": order.updated_ms,
            **({"cancel_reason": order.cancel_reason} if order.cancel_reason else {}),
        }

    def _trade_view(self, order: VenueOrder, trade: VenueTrade) -> dict[str, object]:
        view: dict[str, object] = {
            "trade_id": trade.trade_id,
            "trade_seq": trade.number,
            "timestamp": trade.timestamp,
            "order_id": order.order_id,
            "order_type": order.order_type,
            "instrument_name": order.instrument,
            "direction": order.direction,
            "price": trade.price,
            "amount": trade.amount,
            "fee": trade.fee,
            "fee_currency": order.currency,
            "liquidity": "M" if trade.maker else "T",
            "state": order.state,
            "matching_id": None,
            "tick_direction": 0,
            "index_price": trade.price,
            "mark_price": trade.price,
            "reduce_only": False,
            "post_only": False,
        }
        if order.label:
            view["label"] = order.label
        return view

    def _portfolio(self, account: Account, currency: str) -> dict[str, object]:
        balance = account.balances.get(currency, Decimal(0))
        return {
            "currency": currency, "balance": balance, "equity": balance,
            "available_funds": balance, "available_withdrawal_funds": balance,
            "margin_balance": balance, "initial_margin": 0, "maintenance_margin": 0,
        }  # fmt: skip

    def _notify_order(self, order: VenueOrder) -> None:
        view = self._order_view(order)
        self._notify(
            order.account,
            {
                f"user.orders.any.{order.currency}.raw": view,
                f"user.orders.{order.instrument}.raw": view,
                f"user.orders.any.{order.currency}.100ms": [view],
                f"user.orders.{order.instrument}.100ms": [view],
            },
        )

    def _notify_trade(self, order: VenueOrder, trade: VenueTrade) -> None:
        data = [self._trade_view(order, trade)]
        self._notify(
            order.account,
            {
                f"user.trades.any.{order.currency}.raw": data,
                f"user.trades.{order.instrument}.raw": data,
                f"user.trades.any.{order.currency}.100ms": data,
                f"user.trades.{order.instrument}.100ms": data,
            },
        )

    def _notify_portfolio(self, account: Account, currency: str) -> None:
        self._notify(
            account, {f"user.portfolio.{currency.lower()}": self._portfolio(account, currency)}
        )

    def _notify(self, account: Account, by_channel: dict[str, object]) -> None:
        sent = False
        for connection, session in list(self._sessions.items()):
            if session.account is not account:
                continue
            for channel, data in by_channel.items():
                if channel not in connection.channels:
                    continue
                frame = _ENCODER.encode(
                    {"jsonrpc": "2.0", "method": "subscription",
                     "params": {"channel": channel, "data": data}}
                )  # fmt: skip
                connection.send(frame)
                sent = True
                if self.faults.duplicate_events:
                    self.faults_injected["duplicate_event"] += 1
                    connection.send(frame)
        countdown = self.faults.disconnect_user_stream_after
        if sent and countdown is not None:
            countdown -= 1
            self.faults.disconnect_user_stream_after = countdown if countdown > 0 else None
            if countdown <= 0:
                self.faults_injected["user_stream_disconnect"] += 1
                for connection, session in list(self._sessions.items()):
                    if session.account is account:
                        connection.close_after_pending()


def _decimal(params: dict[str, Any], name: str) -> Decimal | None:
    value = params.get(name)
    if value is None or isinstance(value, bool):
        return None
    try:
        # A JSON number decoded to float: its shortest repr is the text the client sent.
        return Decimal(repr(value)) if isinstance(value, float) else Decimal(str(value))
    except InvalidOperation:
        raise RpcFailure(INVALID_PARAMS, {"reason": "must be a number", "param": name}) from None


def _value(amount: Decimal, price: Decimal, inverse: bool) -> Decimal:
    """An order's value in the settlement currency (inverse: USD amount / price)."""
    return amount / price if inverse else amount * price


def _id_number(trade_id: str) -> int:
    digits = trade_id.rsplit("-", 1)[-1]
    return int(digits) if digits.isdigit() else 0
