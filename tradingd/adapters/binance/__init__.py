"""Binance spot: combined market streams (trades, klines, book tickers) and REST history; in live
mode (``execution_client``) signed REST order entry and the WebSocket API's user-data stream."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

import aiohttp

from tradingd.adapters.base import RangeUnavailable, check_symbols
from tradingd.adapters.binance import trading
from tradingd.adapters.binance.execution import BinanceExecution
from tradingd.adapters.binance.http import BinanceRestClient, RequestRejected
from tradingd.adapters.binance.parsing import BinanceParser, FrameParseError, stream_name
from tradingd.adapters.binance.private import BinancePrivateClient
from tradingd.adapters.binance.websocket import (
    VENUE_MAX_STREAMS_PER_CONNECTION,
    BinanceMarketDataSession,
    open_session,
)
from tradingd.config import ExchangeConfig
from tradingd.execution.venue import ExecutionClientFactory
from tradingd.model import Bar, Channel, Instrument, Subscription, Trade

# Binance spot symbols: base and quote asset run together, upper case ("BTCUSDT").
SYMBOL_SYNTAX = re.compile(r"[A-Z0-9]{2,20}")

# The WebSocket API (user-data stream) when exchanges.NAME.ws_api_url is empty.
DEFAULT_WS_API_URL = "wss://ws-api.binance.com:443/ws-api/v3"

# Binance pushes every kline stream every 2 s, whether or not the bar changed.
KLINE_PUSH_SECONDS = 2.0

__all__ = [
    "BinanceAdapter",
    "BinanceExecution",
    "BinanceMarketDataSession",
    "BinanceParser",
    "BinanceRestClient",
    "FrameParseError",
    "RequestRejected",
]


class BinanceAdapter:
    """Binance spot market data (implements ``ExchangeAdapter``)."""

    def __init__(
        self, config: ExchangeConfig, *, exchange: str, http: aiohttp.ClientSession
    ) -> None:
        # One malformed stream name makes Binance refuse the whole connection.
        check_symbols(config.symbols, SYMBOL_SYNTAX, "Binance spot", "BTCUSDT")
        self.name = exchange
        self.config = config
        self._http = http
        self._max_streams = min(config.max_streams_per_connection, VENUE_MAX_STREAMS_PER_CONNECTION)
        self.rest = BinanceRestClient(
            http, config.rest_url, exchange=exchange, request_timeout=config.request_timeout
        )
        self._sessions: set[BinanceMarketDataSession] = set()

    def stream_names(self, subscriptions: Sequence[Subscription]) -> list[str]:
        """Each subscription's stream name, in order, without duplicates."""
        resolution = self.config.bar_resolution
        return list(dict.fromkeys(stream_name(s, resolution) for s in subscriptions))

    def stream_intervals(self) -> Mapping[Channel, float]:
        # Kline streams push every 2 s (1 s for 1s klines); trades and book tickers on change.
        return {Channel.BARS: KLINE_PUSH_SECONDS}

    def plan_connections(self, subscriptions: Sequence[Subscription]) -> list[list[Subscription]]:
        unique: dict[str, Subscription] = {}
        for subscription in subscriptions:
            unique.setdefault(stream_name(subscription, self.config.bar_resolution), subscription)
        planned = list(unique.values())
        size = self._max_streams
        return [planned[i : i + size] for i in range(0, len(planned), size)]

    async def connect(self, subscriptions: Sequence[Subscription]) -> BinanceMarketDataSession:
        session = await open_session(
            self._http,
            self.config.ws_url,
            self.stream_names(subscriptions),
            exchange=self.name,
            default_resolution=self.config.bar_resolution,
            max_streams=self._max_streams,
            connect_timeout=self.config.request_timeout,
        )
        self._sessions = {s for s in self._sessions if not s.closed}
        self._sessions.add(session)
        return session

    async def fetch_instruments(self) -> list[Instrument]:
        return (await self.rest.exchange_info()).instruments

    async def fetch_server_time_us(self) -> int:
        return await self.rest.server_time_us()

    async def fetch_bars(
        self, instrument_name: str, resolution: str, start_us: int, end_us: int
    ) -> list[Bar]:
        bars = await self.rest.klines(instrument_name.upper(), resolution, start_us, end_us)
        return [bar for bar in bars if bar.closed]

    async def fetch_trades(
        self, instrument_name: str, first_seq: int, last_seq: int
    ) -> list[Trade]:
        if last_seq < first_seq:
            return []
        symbol = instrument_name.upper()
        trades = await self.rest.historical_trades(symbol, first_seq, last_seq - first_seq + 1)
        if trades and trades[0].trade_seq > first_seq:
            raise RangeUnavailable(
                f"{self.name} {symbol}: trades {first_seq}..{trades[0].trade_seq - 1} are no "
                f"longer served (the oldest available id is {trades[0].trade_seq})",
                first_available_seq=trades[0].trade_seq,
            )
        return [trade for trade in trades if first_seq <= trade.trade_seq <= last_seq]

    async def close(self) -> None:
        sessions, self._sessions = self._sessions, set()
        for session in sessions:
            await session.close()


def execution_client(
    config: ExchangeConfig,
    *,
    exchange: str,
    http: aiohttp.ClientSession,
    api_key: str,
    api_secret: str,
) -> BinanceExecution:
    """The live client of one Binance spot account (an ``ExecutionClientFactory``): signed REST
    at ``rest_url``, the user-data stream at ``ws_api_url``."""
    private = BinancePrivateClient(
        http,
        config.rest_url,
        credentials(config, api_key, api_secret),
        request_timeout=config.request_timeout,
    )
    return BinanceExecution(
        exchange,
        http,
        private,
        config.ws_api_url or DEFAULT_WS_API_URL,
        reply_within=config.request_timeout,
        connect_within=config.request_timeout,
        reconnect_initial=config.reconnect_backoff_initial,
        reconnect_max=config.reconnect_backoff_max,
    )


def credentials(config: ExchangeConfig, api_key: str, api_secret: str) -> trading.Credentials:
    """The key and what signs for it: the HMAC secret, or (``key_type = "ed25519"``) the
    Ed25519 private key of the PEM text; ``ValueError`` for a secret that is not one."""
    if config.key_type == "hmac":
        return trading.Credentials(api_key, api_secret)
    from tradingd.adapters.binance import ed25519  # the optional extra: only when chosen

    key = ed25519.load_private_key(api_secret)
    return trading.Credentials.signed_by(
        api_key, lambda payload: ed25519.sign(key, payload), "ed25519"
    )


def _conforms_live() -> None:
    """Never called: mypy checks here that the factory builds an ``ExecutionClient``."""
    checked: ExecutionClientFactory = execution_client
    del checked
