"""Deribit (API v2): public market data over JSON-RPC WebSocket, history over JSON-RPC HTTP.

Market-data connections are unauthenticated, so channels use the ``100ms`` interval (``raw``
needs an authenticated connection): every trade is still delivered, batched per 100 ms.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Mapping, Sequence

import aiohttp

from tradingd.adapters.base import (
    ExchangeAdapter,
    MarketDataSession,
    VenueUnavailable,
    check_symbols,
)
from tradingd.adapters.deribit.execution import DeribitExecution, currency_of
from tradingd.adapters.deribit.http import (
    SUBSCRIBE_POOL,
    CreditBucket,
    DeribitHttp,
    RpcRejected,
    TradesNotServed,
)
from tradingd.adapters.deribit.parsing import resolution_code
from tradingd.adapters.deribit.websocket import DeribitSession
from tradingd.config import ExchangeConfig
from tradingd.execution.venue import ExecutionClientFactory
from tradingd.model import Bar, Channel, Instrument, Subscription, Trade, resolution_seconds

__all__ = ["DeribitAdapter", "DeribitExecution", "DeribitSession", "RpcRejected", "TradesNotServed"]

# Deribit instrument names: upper case, dash-separated ("BTC-PERPETUAL", "BTC_USDC-PERPETUAL",
# "BTC-27DEC26-100000-C").
SYMBOL_SYNTAX = re.compile(r"[A-Z0-9]+(?:_[A-Z0-9]+)?(?:-[A-Z0-9.]+)+|[A-Z0-9]+_[A-Z0-9]+")

# Frames of 100 ms trade batches on busy instruments are far larger than aiohttp's 4 MiB
# default would ever need, but a full ticker burst must not kill the connection.
MAX_FRAME_BYTES = 16 * 1024 * 1024


class DeribitAdapter:
    """``ExchangeAdapter`` for Deribit."""

    name = "deribit"

    def __init__(
        self, config: ExchangeConfig, *, exchange: str, http: aiohttp.ClientSession
    ) -> None:
        resolution_code(config.bar_resolution)  # fail fast: Deribit has no 4h bars
        # Deribit's instrument names are case-sensitive: "btc-perpetual" never captures.
        check_symbols(config.symbols, SYMBOL_SYNTAX, "Deribit instrument", "BTC-PERPETUAL")
        self.config = config
        self.exchange = exchange
        self._http_session = http
        self.http = DeribitHttp(
            http,
            rest_url=config.rest_url,
            exchange=exchange,
            request_timeout=config.request_timeout,
        )
        # public/subscribe has its own pool, per IP for public connections: shared by all.
        self.subscribe_bucket = CreditBucket.for_pool(SUBSCRIBE_POOL)

    def stream_intervals(self) -> Mapping[Channel, float]:
        # The chart channel sends at least one (filler) candle per period; trades and tickers
        # only on change.
        return {Channel.BARS: float(resolution_seconds(self.config.bar_resolution))}

    def plan_connections(self, subscriptions: Sequence[Subscription]) -> list[list[Subscription]]:
        unique = sorted(
            set(subscriptions), key=lambda s: (s.instrument_name, s.channel, s.resolution)
        )
        size = self.config.max_streams_per_connection
        return [unique[start : start + size] for start in range(0, len(unique), size)]

    async def connect(self, subscriptions: Sequence[Subscription]) -> DeribitSession:
        config = self.config
        try:
            async with asyncio.timeout(config.request_timeout):
                ws = await self._http_session.ws_connect(
                    config.ws_url,
                    autoping=True,
                    max_msg_size=MAX_FRAME_BYTES,
                    decode_text=False,
                )
        except TimeoutError:
            raise VenueUnavailable(
                f"{config.ws_url}: no connection within {config.request_timeout}s"
            ) from None
        except (aiohttp.ClientError, OSError) as exc:
            raise VenueUnavailable(f"{config.ws_url}: {type(exc).__name__}: {exc}") from None
        session = DeribitSession(
            ws,
            exchange=self.exchange,
            url=config.ws_url,
            bar_resolution=config.bar_resolution,
            request_timeout=config.request_timeout,
            subscribe_bucket=self.subscribe_bucket,
        )
        try:
            await session.start(subscriptions, config.heartbeat_interval)
        except BaseException:
            await session.close()
            raise
        return session

    async def fetch_instruments(self) -> list[Instrument]:
        return await self.http.fetch_instruments(list(self.config.currencies))

    async def fetch_server_time_us(self) -> int:
        return await self.http.fetch_server_time_us()

    async def fetch_bars(
        self, instrument_name: str, resolution: str, start_us: int, end_us: int
    ) -> list[Bar]:
        return await self.http.fetch_bars(instrument_name, resolution, start_us, end_us)

    async def fetch_trades(
        self, instrument_name: str, first_seq: int, last_seq: int
    ) -> list[Trade]:
        return await self.http.fetch_trades(instrument_name, first_seq, last_seq)

    async def close(self) -> None:
        """Nothing to release: the HTTP session belongs to the caller."""


def execution_client(
    config: ExchangeConfig,
    *,
    exchange: str,
    http: aiohttp.ClientSession,
    api_key: str,
    api_secret: str,
) -> DeribitExecution:
    """The live client of one Deribit account (an ``ExecutionClientFactory``): the key pair is
    the API key's client id and client secret; every private call goes over one authenticated
    WebSocket at ``ws_api_url`` (empty: ``ws_url``)."""
    currencies = list(config.currencies) or sorted({currency_of(s) for s in config.symbols})
    return DeribitExecution(
        exchange,
        http,
        config.ws_api_url or config.ws_url,
        api_key,
        api_secret,
        currencies=currencies,
        request_timeout=config.request_timeout,
        connect_within=config.request_timeout,
        reconnect_initial=config.reconnect_backoff_initial,
        reconnect_max=config.reconnect_backoff_max,
    )


def _conforms(adapter: DeribitAdapter, session: DeribitSession) -> None:
    """Never called: mypy checks here that both satisfy the adapter protocols."""
    checked_adapter: ExchangeAdapter = adapter
    checked_session: MarketDataSession = session
    del checked_adapter, checked_session


def _conforms_live() -> None:
    """Never called: mypy checks here that the factory builds an ``ExecutionClient``."""
    checked: ExecutionClientFactory = execution_client
    del checked
