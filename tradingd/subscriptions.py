"""Live subscriptions: change what a running daemon captures, without a restart.

``tradingd subscribe`` / ``unsubscribe`` reach the daemon over the control channel
(``tradingd.execution.control``); ``LiveSubscriptions`` carries the change out:

1. the symbols are checked with the venue (its instrument list, which is stored as at
   bootstrap): a symbol it does not list, or no longer trades, refuses the whole request, and
   nothing changes;
2. the change is recorded in ``live_subscriptions`` (PostgreSQL): the daemon starts from the
   configuration's symbols and applies these on top (``captured_symbols``), so it survives a
   restart;
3. ``ExchangeCapture`` applies it to the receivers: new streams go to the live connections with
   room (each session keeps to its venue's message rate: SUBSCRIBE batches within 5 messages a
   second on Binance, ``public/subscribe`` credits on Deribit), the rest to new connections
   planned by the adapter within ``max_streams_per_connection``; a connection left with nothing
   to capture is closed. A new instrument's trades are gap-tracked from the first one seen.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Mapping, Sequence

import asyncpg
from loguru import logger

from tradingd.actors.receiver import MarketDataOutlets, Receiver
from tradingd.adapters.base import ExchangeAdapter
from tradingd.bootstrap import find_instrument, store_instruments
from tradingd.config import ExchangeConfig
from tradingd.execution.control import SubscriptionChange
from tradingd.model import Channel, Subscription
from tradingd.sequencing import SequenceTracker
from tradingd.supervisor import ActorSpec, Supervisor

# -- persistence ------------------------------------------------------------------------------


async def captured_symbols(
    pool: asyncpg.Pool, exchange: str, configured: Sequence[str]
) -> list[str]:
    """What ``exchange`` captures: the configured symbols, less those unsubscribed at run time,
    plus those subscribed at run time (in the order they were added)."""
    rows = await pool.fetch(
        "SELECT instrument_name, subscribed FROM live_subscriptions WHERE exchange = $1"
        " ORDER BY changed_at, instrument_name",
        exchange,
    )
    changes = {r["instrument_name"]: r["subscribed"] for r in rows}
    symbols = [s for s in dict.fromkeys(configured) if changes.get(s, True)]
    symbols += [s for s, subscribed in changes.items() if subscribed and s not in symbols]
    return symbols


async def record_change(
    pool: asyncpg.Pool, exchange: str, symbols: Sequence[str], subscribed: bool, operator: str
) -> None:
    await pool.executemany(
        "INSERT INTO live_subscriptions (exchange, instrument_name, subscribed, operator)"
        " VALUES ($1, $2, $3, $4) ON CONFLICT (exchange, instrument_name) DO UPDATE"
        " SET subscribed = EXCLUDED.subscribed, operator = EXCLUDED.operator, changed_at = now()",
        [(exchange, symbol, subscribed, operator) for symbol in symbols],
    )


def subscriptions_of(config: ExchangeConfig, symbols: Sequence[str]) -> list[Subscription]:
    """Every configured channel of each symbol."""
    return [
        Subscription(channel, symbol, config.bar_resolution if channel is Channel.BARS else "")
        for symbol in symbols
        for channel in config.channels
    ]


# -- the receivers of one exchange ------------------------------------------------------------


class ExchangeCapture:
    """The receivers of one exchange and the symbols they capture; grows and shrinks live."""

    def __init__(
        self,
        exchange: str,
        *,
        adapter: ExchangeAdapter,
        config: ExchangeConfig,
        outlets: MarketDataOutlets,
        tracker: SequenceTracker,
        supervisor: Supervisor,
    ) -> None:
        self.exchange = exchange
        self.adapter = adapter
        self.config = config
        self._outlets = outlets
        self.tracker = tracker
        self._supervisor = supervisor
        self._intervals = dict(adapter.stream_intervals())
        # Streams one connection takes: the configured limit, or the venue's if lower (as the
        # adapter plans them).
        probe = [
            Subscription(Channel.TRADES, f"PROBE{n}")
            for n in range(config.max_streams_per_connection + 1)
        ]
        self.per_connection = len(adapter.plan_connections(probe)[0])
        self.receivers: list[Receiver] = []
        self._next_index = 0
        # One change at a time: each one plans against what the previous one left.
        self._lock = asyncio.Lock()

    def specs(self, subscriptions: Sequence[Subscription]) -> list[ActorSpec]:
        """Receivers for ``subscriptions``, planned over connections by the adapter (the
        daemon starts them with the other actors)."""
        return [self._spec(plan) for plan in self.adapter.plan_connections(subscriptions)]

    def _spec(self, plan: list[Subscription]) -> ActorSpec:
        receiver = Receiver(
            exchange=self.exchange,
            index=self._next_index,
            adapter=self.adapter,
            subscriptions=plan,
            config=self.config,
            outlets=self._outlets,
            tracker=self.tracker,
            rng=random.Random(),
            intervals=self._intervals,
            stale_multiple=self.config.stream_stale_multiple,
        )
        self._next_index += 1
        self.receivers.append(receiver)
        return ActorSpec(
            receiver,
            checkin_timeout=self.config.stale_after + 30.0,
            log_fields={"EXCHANGE": self.exchange},
        )

    def symbols(self) -> list[str]:
        """The instruments captured now, in the order they were added."""
        return list(
            dict.fromkeys(s.instrument_name for r in self.receivers for s in r.subscriptions)
        )

    async def add(self, symbols: Sequence[str]) -> None:
        """Capture ``symbols`` (not yet captured) too: on the live connections while they have
        room, then on new ones."""
        async with self._lock:
            captured = set(self.symbols())
            fresh = [s for s in dict.fromkeys(symbols) if s not in captured]
            if not fresh:
                return
            for symbol in fresh:
                # What happened while it was not captured is not a gap: start from the next trade.
                self.tracker.forget(symbol)
            pending = subscriptions_of(self.config, fresh)
            for receiver in self.receivers:
                room = self.per_connection - len(receiver.subscriptions)
                if room <= 0 or not pending:
                    continue
                taken, pending = pending[:room], pending[room:]
                await receiver.change(taken, [])
            for spec in self.specs(pending):
                self._supervisor.start(spec)

    async def remove(self, symbols: Sequence[str]) -> None:
        """Stop capturing ``symbols``: unsubscribed on their connections; a connection left with
        nothing to capture is closed."""
        async with self._lock:
            gone = set(symbols)
            emptied: list[Receiver] = []
            for receiver in self.receivers:
                leaving = [s for s in receiver.subscriptions if s.instrument_name in gone]
                if not leaving:
                    continue
                if len(leaving) == len(receiver.subscriptions):
                    emptied.append(receiver)
                else:
                    await receiver.change([], leaving)
            if emptied:
                await self._supervisor.remove([r.name for r in emptied])
                self.receivers[:] = [r for r in self.receivers if r not in emptied]


# -- the control channel's end ----------------------------------------------------------------


class LiveSubscriptions:
    """Carries out ``tradingd subscribe`` / ``unsubscribe`` (``SubscriptionControl``)."""

    def __init__(self, pool: asyncpg.Pool, captures: Mapping[str, ExchangeCapture]) -> None:
        self._pool = pool
        self._captures = dict(captures)

    def _unknown(self, exchange: str) -> SubscriptionChange:
        return SubscriptionChange(
            exchange=exchange,
            problem=f"the daemon captures no exchange {exchange!r} "
            f"(running: {', '.join(self._captures) or 'none'}); nothing was changed",
        )

    async def subscribe(
        self, exchange: str, symbols: Sequence[str], operator: str
    ) -> SubscriptionChange:
        capture = self._captures.get(exchange)
        if capture is None:
            return self._unknown(exchange)
        try:
            async with asyncio.timeout(capture.config.request_timeout):
                listed = await capture.adapter.fetch_instruments()
        except Exception as exc:
            return SubscriptionChange(
                exchange=exchange,
                problem=f"the venue's instrument list could not be fetched "
                f"({type(exc).__name__}: {exc}); nothing was changed",
            )
        resolved: list[str] = []
        refused: list[str] = []
        for symbol in dict.fromkeys(symbols):
            instrument = find_instrument(listed, symbol)
            if instrument is None or not instrument.is_active:
                refused.append(symbol)
            else:
                resolved.append(instrument.instrument_name)
        captured = capture.symbols()
        if refused:
            return SubscriptionChange(
                exchange=exchange,
                refused=refused,
                symbols=captured,
                connections=len(capture.receivers),
            )
        # Instrument metadata first, as at bootstrap: the executor and reports read it.
        await store_instruments(self._pool, exchange, listed, time.time_ns() // 1000)
        new = [s for s in dict.fromkeys(resolved) if s not in captured]
        await record_change(self._pool, exchange, resolved, True, operator)
        await capture.add(new)
        logger.bind(EXCHANGE=exchange).info(
            "{}: {} subscribed {} (now {} symbols on {} connections)",
            exchange,
            operator,
            ", ".join(new) or "nothing new",
            len(capture.symbols()),
            len(capture.receivers),
        )
        return SubscriptionChange(
            exchange=exchange,
            changed=new,
            unchanged=[s for s in dict.fromkeys(resolved) if s not in new],
            symbols=capture.symbols(),
            connections=len(capture.receivers),
        )

    async def unsubscribe(
        self, exchange: str, symbols: Sequence[str], operator: str
    ) -> SubscriptionChange:
        capture = self._captures.get(exchange)
        if capture is None:
            return self._unknown(exchange)
        captured = capture.symbols()
        folded = {s.upper(): s for s in captured}
        resolved: list[str] = []
        refused: list[str] = []
        for symbol in dict.fromkeys(symbols):
            name = symbol if symbol in captured else folded.get(symbol.upper())
            if name is None:
                refused.append(symbol)
            else:
                resolved.append(name)
        if refused:
            return SubscriptionChange(
                exchange=exchange,
                refused=refused,
                symbols=captured,
                connections=len(capture.receivers),
            )
        await record_change(self._pool, exchange, resolved, False, operator)
        await capture.remove(resolved)
        logger.bind(EXCHANGE=exchange).info(
            "{}: {} unsubscribed {} (now {} symbols on {} connections)",
            exchange,
            operator,
            ", ".join(resolved),
            len(capture.symbols()),
            len(capture.receivers),
        )
        return SubscriptionChange(
            exchange=exchange,
            changed=resolved,
            symbols=capture.symbols(),
            connections=len(capture.receivers),
        )
