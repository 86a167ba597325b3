"""The composition root: builds storage, adapters, queues and actors, and runs their lifecycle.

Start-up: storage (embedded or external, retried) → migrations → adapters → clock check →
per-exchange state on start → queues and actors under the supervisor → READY=1 once every actor
reported ready. Shutdown (SIGTERM/SIGINT): STOPPING=1 → stop intake (receivers) → close the
queues and let the persister drain them into PostgreSQL → stop the rest → close connections →
stop embedded servers → exit 0, all within ``daemon.stop_timeout``.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import os
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import aiohttp
from loguru import logger

from tradingd import __version__
from tradingd.actors.analyzer import Analyzer
from tradingd.actors.persister import Persister
from tradingd.actors.receiver import MarketDataOutlets, Receiver
from tradingd.actors.repairer import GapRepairer
from tradingd.adapters.base import ExchangeAdapter
from tradingd.adapters.registry import create_adapter
from tradingd.alerting import Alerter, alert_queue, raise_alert
from tradingd.clock import ClockCheck, ClockWatch, SkewTooLarge
from tradingd.config import LIVE_RELOADABLE, Config, ConfigError, changed_keys, load_config
from tradingd.cpus import configured_layout, describe_cpus, pin_daemon, request_loop_slice
from tradingd.execution.executor import Executor
from tradingd.execution.instruments import load_instruments
from tradingd.execution.risk import InstrumentInfo
from tradingd.execution.wiring import build_executor, control_server, market_feed
from tradingd.exitcodes import EX_CONFIG, EX_OK, EX_SOFTWARE, EX_UNAVAILABLE
from tradingd.logs import set_level
from tradingd.metrics_server import MetricsServer
from tradingd.model import Bar, Channel, DeadLetter, MarketEvent, Subscription, Ticker, Trade
from tradingd.observer import StateChangeObserver
from tradingd.queues import BoundedQueue, OverflowPolicy
from tradingd.reconcile import Reconciler, StartupStates
from tradingd.sdnotify import (
    Notifier,
    clear_environment,
    extending_start_timeout,
    watchdog_loop,
    watchdog_period,
)
from tradingd.secrets import secret_store
from tradingd.sequencing import Gap, SequenceTracker
from tradingd.shared_state import SharedStateWatch
from tradingd.status import STATUS_KEY, DaemonStatus, ExchangeStatus, encode_status, one_line
from tradingd.storage import Storage, StorageError, StorageRejected, open_storage
from tradingd.storage.embedded import EmbeddedStorageError
from tradingd.storage.migrations import migrate
from tradingd.subscriptions import (
    ExchangeCapture,
    LiveSubscriptions,
    captured_symbols,
    subscriptions_of,
)
from tradingd.supervisor import ActorSpec, RestartPolicy, Supervisor, SupervisorEscalation

_T = TypeVar("_T")

# Seconds between start-timeout extensions while migrations run: a migration that rebuilds an
# index of a large table takes minutes, far beyond TimeoutStartSec=2min, and reports nothing.
MIGRATION_HEARTBEAT = 20.0


class Shutdown(Exception):
    """Asked to stop before start-up finished."""


async def last_sequences(storage: Storage, exchange: str, instruments: list[str]) -> dict[str, int]:
    rows = await storage.pool.fetch(
        "SELECT i.name AS instrument_name,"
        " (SELECT max(trade_seq) FROM public_trades t"
        "   WHERE t.exchange = $1 AND t.instrument_name = i.name) AS last_seq"
        " FROM unnest($2::text[]) AS i(name)",
        exchange,
        instruments,
    )
    return {r["instrument_name"]: r["last_seq"] for r in rows if r["last_seq"] is not None}


def _request_loop_slice(slice_us: int) -> None:
    # Latency, not correctness: a refusal is reported and the daemon runs on.
    try:
        granted = request_loop_slice(slice_us)
    except OSError as exc:
        logger.warning(
            "daemon.loop_slice_us: the event loop keeps the kernel's scheduler slice ({}); a "
            "systemd unit that filters @resources needs SystemCallFilter=sched_setattr",
            exc,
        )
        return
    if granted:
        logger.info("event loop scheduler slice: {} us", granted)
    else:
        logger.info("event loop scheduler slice: the kernel's (no per-task slice before 6.12)")


class Daemon:
    def __init__(self, config: Config, config_path: Path, *, notifier: Notifier | None = None):
        self.config = config
        self.config_path = config_path
        self.notifier = notifier or Notifier()
        # Read before clear_environment(): the embedded servers must not inherit the socket.
        self.watchdog_period = watchdog_period()
        clear_environment()
        self.started_at_us = time.time_ns() // 1000
        self._stop = asyncio.Event()
        self._reload = asyncio.Event()
        self._sigint_count = 0
        self.storage: Storage | None = None
        self.http: aiohttp.ClientSession | None = None
        self.adapters: dict[str, ExchangeAdapter] = {}
        self.receivers: dict[str, list[Receiver]] = {}
        # What each exchange captures: the configured symbols with the live changes on top.
        self._symbols: dict[str, list[str]] = {}
        self.captures: dict[str, ExchangeCapture] = {}
        self.repairers: dict[str, GapRepairer] = {}
        self.supervisor = Supervisor(config.supervisor, on_escalation=self._on_escalation)
        self.alerts = alert_queue(config.alerts)
        self.persister: Persister | None = None
        self.analyzer: Analyzer | None = None
        self.clock: ClockCheck | None = None
        self.states: StartupStates | None = None
        self.queues: list[BoundedQueue[object]] = []
        self._stored_sequences: dict[str, dict[str, int]] = {}
        self._unlisted: dict[str, set[str]] = {}
        self._instruments: dict[str, dict[str, InstrumentInfo]] = {}
        self.executors: dict[str, Executor] = {}
        self._exit_code = EX_OK
        # True from READY=1 until the shutdown begins (the /health readiness).
        self._serving = False
        self.metrics_server: MetricsServer | None = None

    # -- signals --------------------------------------------------------------------------

    def install_signal_handlers(self) -> None:
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, self.request_stop, "SIGTERM")
        loop.add_signal_handler(signal.SIGINT, self._on_sigint)
        loop.add_signal_handler(signal.SIGHUP, self._reload.set)

    def _on_escalation(self, escalation: SupervisorEscalation) -> None:
        raise_alert(self.alerts, f"escalation:{escalation.actor}", f"exiting: {escalation}")
        self._stop.set()

    def request_stop(self, why: str = "requested") -> None:
        if not self._stop.is_set():
            logger.info("stopping ({})", why)
        self._stop.set()

    def _on_sigint(self) -> None:
        self._sigint_count += 1
        if self._sigint_count >= 2:
            logger.warning("second SIGINT: forcing exit now")
            os._exit(130)
        self.request_stop("SIGINT; press Ctrl-C again to force")

    async def _until_stopped(self, work: asyncio.Future[_T]) -> _T:
        """Await start-up work, giving up if a stop is requested meanwhile."""
        stop: asyncio.Future[Any] = asyncio.ensure_future(self._stop.wait())
        pending: set[asyncio.Future[Any]] = {work, stop}
        try:
            done, _ = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stop.cancel()
        if work not in done:
            work.cancel()
            # Let it clean up (close what it opened) before the shutdown path runs.
            await asyncio.gather(work, return_exceptions=True)
            raise Shutdown()
        return work.result()

    # -- lifecycle ------------------------------------------------------------------------

    async def run(self) -> int:
        self.install_signal_handlers()
        exit_code = EX_OK
        try:
            await self._start()
        except Shutdown:
            logger.info("stopped during start-up")
            await self._shutdown()
            return EX_OK
        except SkewTooLarge as exc:
            logger.critical("CRITICAL TIME SKEW DETECTED: {}", exc)
            self.notifier.failed(0, f"CRITICAL TIME SKEW DETECTED: {exc}")
            await self._shutdown()
            return EX_UNAVAILABLE
        except SupervisorEscalation:
            # Already logged with the actor's name and last error.
            await self._shutdown()
            return EX_SOFTWARE
        except StorageError as exc:
            # The reason first, then the shutdown's own lines.
            logger.critical("storage unavailable: {}", exc)
            await self._shutdown()
            return EX_CONFIG if isinstance(exc, StorageRejected) else EX_UNAVAILABLE
        except BaseException:
            await self._shutdown()
            raise
        try:
            exit_code = await self._serve()
        finally:
            await self._shutdown()
        return exit_code

    async def _start(self) -> None:
        cfg = self.config
        self.notifier.status("starting: storage")
        secrets = secret_store(cfg)

        def on_wait(message: str) -> None:
            self.notifier.status(message)
            self.notifier.extend_timeout(60)

        cpus = configured_layout(cfg, self.config_path)
        if cpus is not None:
            # First: every thread started from here on (and the embedded servers' own
            # setting) follows.
            pin_daemon(cpus, self.config_path)
            logger.info(
                "daemon on CPUs {}, embedded servers on {}",
                describe_cpus(cpus.daemon),
                describe_cpus(cpus.servers),
            )
        if cfg.daemon.loop_slice_us:
            _request_loop_slice(cfg.daemon.loop_slice_us)
        self.storage = await self._until_stopped(
            asyncio.ensure_future(
                open_storage(
                    cfg,
                    on_wait=on_wait,
                    secrets=secrets,
                    server_cpus=None if cpus is None else cpus.servers,
                )
            )
        )
        self.notifier.status("starting: migrations")
        applied = await extending_start_timeout(
            migrate(self.storage.pool), self.notifier, what="migrations", period=MIGRATION_HEARTBEAT
        )
        if applied:
            logger.info("applied migrations: {}", ", ".join(applied))
        self.http = aiohttp.ClientSession()
        for name in cfg.enabled_exchanges():
            self.adapters[name] = create_adapter(cfg, name, self.http, self.config_path)
            self._symbols[name] = await captured_symbols(
                self.storage.pool, name, cfg.exchanges[name].symbols
            )

        self.notifier.status("starting: clock check")
        self.clock = ClockCheck(cfg.daemon, self.adapters)
        await self._until_stopped(
            asyncio.ensure_future(
                asyncio.gather(self.clock.check_at_start(), self._skip_unlisted_symbols())
            )
        )

        self.states = StartupStates(cfg, self.storage, self.adapters, self.clock)
        await self.states.on_start()

        for name in self.adapters:
            traded = [
                s.instrument_name for s in self._subscriptions(name) if s.channel is Channel.TRADES
            ]
            self._stored_sequences[name] = await last_sequences(self.storage, name, traded)
            self._instruments[name] = await load_instruments(
                self.storage.pool, name, cfg.exchanges[name].symbols
            )
        self._build_actors()
        self.notifier.status("starting: actors")
        await self._until_stopped(asyncio.ensure_future(self.supervisor.wait_ready()))

    async def _skip_unlisted_symbols(self) -> None:
        """A configured symbol the venue does not list is reported and left out, so that the
        others stream (one unknown Binance stream fails the whole connection). When the
        instruments cannot be fetched (offline), every configured symbol is kept."""

        async def check(name: str, adapter: ExchangeAdapter) -> None:
            ex = self.config.exchanges[name]
            try:
                async with asyncio.timeout(ex.request_timeout):
                    listed = {i.instrument_name for i in await adapter.fetch_instruments()}
            except Exception as exc:
                logger.bind(EXCHANGE=name).info(
                    "{}: instruments not fetched ({!r}): every configured symbol is subscribed",
                    name,
                    exc,
                )
                return
            unlisted = [symbol for symbol in self._symbols[name] if symbol not in listed]
            if unlisted:
                logger.bind(EXCHANGE=name).error(
                    "{}: not listed by the venue, skipped: {} (fix exchanges.{}.symbols, or"
                    " `tradingd unsubscribe` one added live)",
                    name,
                    ", ".join(unlisted),
                    name,
                )
                self._unlisted[name] = set(unlisted)

        await asyncio.gather(*(check(name, adapter) for name, adapter in self.adapters.items()))

    def _subscriptions(self, exchange: str) -> list[Subscription]:
        unlisted = self._unlisted.get(exchange, set())
        symbols = [s for s in self._symbols[exchange] if s not in unlisted]
        return subscriptions_of(self.config.exchanges[exchange], symbols)

    def _build_actors(self) -> None:
        cfg = self.config
        assert self.storage is not None and self.http is not None
        records: BoundedQueue[Trade | Bar | DeadLetter] = BoundedQueue(
            "records", cfg.persister.queue_size, OverflowPolicy.BLOCK
        )
        tickers: BoundedQueue[Ticker] = BoundedQueue(
            "tickers",
            cfg.persister.ticker_queue_size,
            OverflowPolicy.KEEP_LATEST,
            key=lambda t: (t.exchange, t.instrument_name),
        )
        analysis: BoundedQueue[Trade] | None = None
        if cfg.analyzer.enabled:
            analysis = BoundedQueue("analysis", cfg.analyzer.queue_size, OverflowPolicy.DROP_OLDEST)
        self.queues = [records, tickers]  # type: ignore[list-item]
        if analysis is not None:
            self.queues.append(analysis)  # type: ignore[arg-type]
        self._records, self._tickers, self._analysis = records, tickers, analysis

        specs: list[ActorSpec] = []
        self.persister = Persister(
            cfg.persister, self.storage.pool, self.storage.redis, records, tickers
        )
        specs.append(ActorSpec(self.persister, checkin_timeout=60.0))
        if analysis is not None:
            self.analyzer = Analyzer(cfg.analyzer, self.storage.pool, analysis)
            specs.append(ActorSpec(self.analyzer, checkin_timeout=60.0))
        for name, adapter in self.adapters.items():
            ex = cfg.exchanges[name]
            gaps: BoundedQueue[Gap] = BoundedQueue(f"gaps:{name}", 10_000, OverflowPolicy.BLOCK)
            self.queues.append(gaps)  # type: ignore[arg-type]
            feed: BoundedQueue[MarketEvent] = market_feed(name)
            self.queues.append(feed)  # type: ignore[arg-type]
            outlets = MarketDataOutlets(records, tickers, analysis, gaps, feed)
            stored = self._stored_sequences.get(name, {})
            tracker = SequenceTracker(name, stored)
            repairer = GapRepairer(
                name,
                adapter,
                self.storage.pool,
                gaps,
                stored_sequences=stored,
                db_backoff_max=cfg.persister.retry_backoff_max,
                venue_backoff_max=ex.reconnect_backoff_max,
            )
            self.repairers[name] = repairer
            executor = build_executor(
                cfg,
                name,
                pool=self.storage.pool,
                redis=self.storage.redis,
                instruments=self._instruments.get(name, {}),
                feed=feed,
                open_gaps=repairer.open_gap_instruments,
                http=self.http,
                config_path=self.config_path,
            )
            self.executors[name] = executor
            specs.append(ActorSpec(executor, checkin_timeout=60.0, log_fields={"EXCHANGE": name}))
            specs.append(ActorSpec(repairer, checkin_timeout=120.0, log_fields={"EXCHANGE": name}))
            capture = ExchangeCapture(
                name,
                adapter=adapter,
                config=ex,
                outlets=outlets,
                tracker=tracker,
                supervisor=self.supervisor,
            )
            self.captures[name] = capture
            # The same list: live subscription changes add and remove receivers in it.
            self.receivers[name] = capture.receivers
            specs.extend(capture.specs(self._subscriptions(name)))
        assert self.clock is not None and self.states is not None
        specs.append(
            ActorSpec(ClockWatch(self.clock, self.states.lock_all), RestartPolicy.PERMANENT)
        )
        specs.append(ActorSpec(Reconciler(self.states, self), RestartPolicy.PERMANENT))
        self.shared_state = SharedStateWatch(
            self.storage.pool,
            self.storage.redis,
            self.adapters,
            on_lost=lambda key, text: raise_alert(self.alerts, key, text),
        )
        specs.append(ActorSpec(self.shared_state, RestartPolicy.PERMANENT))
        self.queues.append(self.alerts)  # type: ignore[arg-type]
        alerter = Alerter(cfg.alerts, secret_store(cfg), self.alerts, self.storage.pool)
        specs.append(ActorSpec(alerter, RestartPolicy.TRANSIENT))
        specs.append(ActorSpec(StateChangeObserver(self.storage.pool, cfg.daemon.status_interval)))
        subscriptions = LiveSubscriptions(self.storage.pool, self.captures)
        specs.append(ActorSpec(control_server(self.executors, self.storage.redis, subscriptions)))
        address = cfg.metrics.address()
        if address is not None:
            self.metrics_server = MetricsServer(*address, self, self.storage.redis)
            specs.append(ActorSpec(self.metrics_server))
        self.supervisor.start_all(specs)

    # -- market data flow, as reconciliation sees it ----------------------------------------

    def flowing(self, exchange: str) -> bool:
        receivers = self.receivers.get(exchange, [])
        fresh_for = self.config.exchanges[exchange].stale_after
        return bool(receivers) and all(r.data_fresh(fresh_for) for r in receivers)

    async def wait_flowing(self, exchange: str) -> None:
        await asyncio.gather(*(r.data_arrived.wait() for r in self.receivers.get(exchange, [])))

    async def _serve(self) -> int:
        cfg = self.config
        self._serving = True
        # What start-up built lives as long as the process: kept out of the cyclic collector's
        # full passes, which would otherwise walk all of it and stall the event loop.
        gc.freeze()
        self.notifier.ready(f"running: {len(self.supervisor.names())} actors")
        logger.success(
            "tradingd {} running (pid {}): {}",
            __version__,
            os.getpid(),
            ", ".join(f"{name} ({cfg.mode_of(name)})" for name in self.adapters) or "no exchanges",
        )
        async with asyncio.TaskGroup() as group:
            background: list[asyncio.Task[None]] = []
            period = self.watchdog_period
            if period is not None:
                background.append(
                    group.create_task(watchdog_loop(self.notifier, period, self.healthy))
                )
            background.append(group.create_task(self._publish_status_loop()))
            if self.storage is not None and self.storage.embedded is not None:
                background.append(group.create_task(self._watch_embedded_storage()))
            while not self._stop.is_set():
                reload = asyncio.ensure_future(self._reload.wait())
                stop = asyncio.ensure_future(self._stop.wait())
                await asyncio.wait({reload, stop}, return_when=asyncio.FIRST_COMPLETED)
                reload.cancel()
                stop.cancel()
                if self._reload.is_set():
                    self._reload.clear()
                    self.reload_config()
            for task in background:
                task.cancel()
        if self.supervisor.escalation is not None:
            return EX_SOFTWARE
        return self._exit_code

    async def _watch_embedded_storage(self) -> None:
        assert self.storage is not None and self.storage.embedded is not None
        try:
            await self.storage.embedded.watch()
        except EmbeddedStorageError as exc:
            logger.critical("{}; exiting so that systemd restarts tradingd", exc)
            self._exit_code = EX_UNAVAILABLE
            self.request_stop("embedded storage died")

    def healthy(self) -> bool:
        return self.supervisor.healthy()

    # -- what the metrics read (tradingd.exposition.Observed) ------------------------------

    def ready(self) -> bool:
        return self._serving

    def exchange_names(self) -> list[str]:
        return list(self.config.enabled_exchanges())

    def exchange_state(self, exchange: str) -> str | None:
        return self.states.cached(exchange)[0] if self.states is not None else None

    def reload_config(self) -> None:
        self.notifier.reloading()
        try:
            new = load_config(self.config_path)
        except ConfigError as exc:
            logger.error("reload rejected, keeping the running configuration: {}", exc)
            self.notifier.ready("running; reload rejected: invalid configuration")
            return
        changes = changed_keys(self.config, new)
        live = [key for key in changes if key in LIVE_RELOADABLE]
        restart = [key for key in changes if key not in LIVE_RELOADABLE]
        if "daemon.log_level" in live:
            set_level(new.daemon.log_level)
        if live:
            logger.info("reload applied: {}", ", ".join(live))
        if restart:
            logger.warning("reload: these changes need a restart to apply: {}", ", ".join(restart))
        if not changes:
            logger.info("reload: configuration unchanged")
        self.config = _merge_live(self.config, new)
        self.notifier.ready("running; configuration reloaded")

    # -- status ---------------------------------------------------------------------------

    def snapshot(self) -> DaemonStatus:
        exchanges = []
        for name in self.config.enabled_exchanges():
            receivers = self.receivers.get(name, [])
            stats = [r.snapshot() for r in receivers]
            state, reason = (None, "")
            if self.states is not None:
                state, reason = self.states.cached(name)
            repairer = self.repairers.get(name)
            exchanges.append(
                ExchangeStatus(
                    name=name,
                    state=state,
                    state_reason=reason,
                    connections=len(receivers),
                    connected=sum(1 for s in stats if s.connected),
                    trades=sum(s.trades for s in stats),
                    dead_letters=sum(s.dead_letters for s in stats),
                    gaps_open=repairer.open_gaps if repairer is not None else 0,
                    seconds_since_frame=min((s.seconds_since_frame for s in stats), default=-1.0),
                    last_error=next((s.last_error for s in stats if s.last_error), ""),
                    repair=repairer.snapshot() if repairer is not None else {},
                )
            )
        return DaemonStatus(
            pid=os.getpid(),
            version=__version__,
            started_at_us=self.started_at_us,
            updated_at_us=time.time_ns() // 1000,
            mode=self.config.daemon.mode,
            exchanges=exchanges,
            actors=self.supervisor.snapshot(),
            queues=[q.stats() for q in self.queues],
            persister=self.persister.stats() if self.persister is not None else {},
            clock=self.clock.snapshot() if self.clock is not None else {},
            analyzer=self.analyzer.stats() if self.analyzer is not None else {},
        )

    async def _publish_status_loop(self) -> None:
        interval = self.config.daemon.status_interval
        while True:
            status = self.snapshot()
            self.notifier.status(one_line(status))
            if self.storage is not None:
                try:
                    await self.storage.redis.set(
                        STATUS_KEY, encode_status(status), ex=int(interval * 3) + 1
                    )
                except Exception as exc:  # Redis down must not stop the daemon
                    logger.debug("status not published to Redis: {}", exc)
            # Ends on stop even if a cancellation was swallowed inside the Redis client (seen
            # when SIGTERM lands during the first publish).
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), interval)
            if self._stop.is_set():
                return

    # -- shutdown -------------------------------------------------------------------------

    async def _shutdown(self) -> None:
        self._serving = False
        timeout = self.config.daemon.stop_timeout
        self.notifier.stopping("stopping: draining queues")
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout

        def remaining() -> float:
            return max(0.1, deadline - loop.time())

        try:
            async with asyncio.timeout(timeout):
                intake = [r.name for rs in self.receivers.values() for r in rs]
                await self.supervisor.stop(intake)
                await self.supervisor.stop([r.name for r in self.repairers.values()])
                for queue in self.queues:
                    queue.close()
                writers = [a.name for a in (self.persister, self.analyzer) if a is not None]
                await self.supervisor.stop(writers, graceful_timeout=remaining() * 0.8)
                # What is queued (an escalation's alert) is sent before the daemon exits.
                self.alerts.close()
                await self.supervisor.stop([Alerter.name], graceful_timeout=remaining() * 0.5)
                await self.supervisor.stop_all()
        except TimeoutError:
            logger.error("shutdown exceeded daemon.stop_timeout ({} s); cutting it short", timeout)
            await self.supervisor.stop_all()
        for adapter in self.adapters.values():
            await _quietly(adapter.close)
        if self.http is not None:
            await _quietly(self.http.close)
        if self.storage is not None:
            # `tradingd status` must not report a stopped daemon as running.
            await _quietly(lambda: self.storage.redis.delete(STATUS_KEY) if self.storage else None)
            await _quietly(self.storage.close)
        logger.info("stopped")


def _merge_live(running: Config, new: Config) -> Config:
    import msgspec

    daemon = msgspec.structs.replace(running.daemon, log_level=new.daemon.log_level)
    return msgspec.structs.replace(running, daemon=daemon)


async def _quietly(close: Callable[[], object]) -> None:
    try:
        result = close()
        if asyncio.iscoroutine(result):
            await result
    except Exception as exc:
        logger.warning("error while closing: {!r}", exc)
