"""The ``[metrics] listen`` HTTP listener: ``/metrics`` for Prometheus and ``/health`` as JSON.

A supervised actor. The metric families come from ``tradingd.exposition`` through a registry
of the daemon's own (never prometheus_client's global one, which holds the library's process
collectors and would be shared by every daemon in a test process). ``/health`` answers 200
while the daemon is ready and every actor is running and checking in within its timeout, 503
otherwise, with each actor's last check-in either way.
"""

from __future__ import annotations

import asyncio

import msgspec
import redis.asyncio as aioredis
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from tradingd.actors import pause
from tradingd.backoff import backoff_delay
from tradingd.exposition import DaemonCollector, Observed
from tradingd.state import StateUnavailable, read_kill_switch
from tradingd.supervisor import ActorContext, ActorStatus

# A scrape must not wait on a slow Redis for long: the kill switch then counts as on.
KILL_SWITCH_READ_TIMEOUT = 2.0
LISTEN_BACKOFF_MAX = 60.0


class Health(msgspec.Struct, frozen=True):
    ready: bool  # start-up finished and the daemon serves
    healthy: bool  # every actor running and checking in within its timeout
    actors: list[ActorStatus]


_encode = msgspec.json.Encoder().encode


class MetricsServer:
    name = "metrics"

    def __init__(self, host: str, port: int, observed: Observed, redis: aioredis.Redis) -> None:
        self._host = host
        self._port = port
        self._observed = observed
        self._redis = redis
        self.registry = CollectorRegistry(auto_describe=False)
        self._collector = DaemonCollector(observed)
        self.registry.register(self._collector)
        # The bound port once listening (differs from ``port`` when that is 0).
        self.port: int | None = None

    def health(self) -> Health:
        supervisor = self._observed.supervisor
        return Health(
            ready=self._observed.ready(),
            healthy=supervisor.healthy(),
            actors=supervisor.snapshot(),
        )

    async def run(self, ctx: ActorContext) -> None:
        app = web.Application()
        app.router.add_get("/metrics", self._metrics)
        app.router.add_get("/health", self._health)
        runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await runner.setup()
        try:
            await self._listen(ctx, runner)
            addresses = runner.addresses
            self.port = int(addresses[0][1]) if addresses else self._port
            ctx.log.info("serving /metrics and /health on {}:{}", self._host, self.port)
            ctx.ready()
            # Serving happens in aiohttp's handlers; this task only owns the listener.
            await asyncio.get_running_loop().create_future()
        finally:
            self.port = None
            await runner.cleanup()

    async def _listen(self, ctx: ActorContext, runner: web.AppRunner) -> None:
        """Bind, retrying with capped backoff: a taken port costs the metrics, not the daemon
        (an escalation would stop the trading for want of a listener)."""
        attempt = 0
        while True:
            try:
                await web.TCPSite(runner, self._host, self._port).start()
                return
            except OSError as exc:
                # Ready all the same: the daemon's READY=1 (and systemd's start) must not wait
                # for a port, or a taken one would stop trading after all.
                ctx.ready()
                attempt += 1
                delay = backoff_delay(attempt, 1.0, LISTEN_BACKOFF_MAX)
                ctx.log.error(
                    "metrics.listen {}:{}: cannot listen ({}); retrying in {:.0f} s",
                    self._host,
                    self._port,
                    exc.strerror or exc,
                    delay,
                )
                await pause(ctx, delay)

    async def _metrics(self, _request: web.Request) -> web.Response:
        self._collector.kill_switch = await self._kill_switch()
        body = generate_latest(self.registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def _health(self, _request: web.Request) -> web.Response:
        health = self.health()
        status = 200 if health.ready and health.healthy else 503
        return web.Response(body=_encode(health), status=status, content_type="application/json")

    async def _kill_switch(self) -> float:
        try:
            async with asyncio.timeout(KILL_SWITCH_READ_TIMEOUT):
                switch = await read_kill_switch(self._redis)
        except (StateUnavailable, TimeoutError):
            return 1.0
        return 0.0 if switch is None else 1.0
