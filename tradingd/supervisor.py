"""An OTP-style one_for_one supervisor for the daemon's actor tasks.

Every actor task is owned here. A failing actor is restarted on its own (one_for_one) after a
capped, jittered exponential backoff; more than ``max_restarts`` failures of one actor within
``restart_period`` seconds escalate: the supervisor reports the actor and its last error and the
daemon exits non-zero, so systemd restarts the whole process. Nothing dies silently.
"""

from __future__ import annotations

import asyncio
import collections
import enum
import random
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Protocol

import msgspec
from loguru import logger

from tradingd.backoff import backoff_delay
from tradingd.config import SupervisorConfig


class RestartPolicy(enum.StrEnum):
    PERMANENT = "permanent"  # always restarted, whether it failed or returned
    TRANSIENT = "transient"  # restarted only when it failed
    TEMPORARY = "temporary"  # never restarted


class ActorContext:
    """What a running actor gets from its supervisor: readiness, liveness and a logger."""

    def __init__(
        self, name: str, fields: dict[str, str], ready: asyncio.Event | None = None
    ) -> None:
        self.name = name
        self.log = logger.bind(ACTOR=name, **fields)
        # Shared across restarts: "has reported ready at least once".
        self._ready = ready or asyncio.Event()
        self.last_checkin = time.monotonic()

    def ready(self) -> None:
        """The actor has finished starting and is doing its job."""
        self.checkin()
        if not self._ready.is_set():
            self._ready.set()
            self.log.debug("actor ready")

    def checkin(self) -> None:
        """The actor's loop made progress (cheap: call it as often as convenient)."""
        self.last_checkin = time.monotonic()


class Actor(Protocol):
    name: str

    async def run(self, ctx: ActorContext) -> None: ...


@dataclass
class ActorSpec:
    actor: Actor
    restart: RestartPolicy = RestartPolicy.PERMANENT
    # The actor must check in at least this often for the daemon to count as healthy.
    checkin_timeout: float | None = None
    # Extra journal fields for the actor's log lines (EXCHANGE=..., SYMBOL=...).
    log_fields: dict[str, str] = field(default_factory=dict)


class ActorStatus(msgspec.Struct, frozen=True):
    name: str
    state: str  # starting | running | backoff | stopped | failed
    ready: bool
    restarts: int
    last_error: str
    seconds_since_checkin: float
    # The longest it may go without checking in (None: no limit), and whether it is past it.
    checkin_timeout: float | None = None
    overdue: bool = False


class SupervisorEscalation(Exception):
    def __init__(self, actor: str, failures: int, period: float, last_error: str) -> None:
        super().__init__(
            f"actor {actor!r} failed {failures} times within {period:g} s; last error: {last_error}"
        )
        self.actor = actor
        self.last_error = last_error


class _Child:
    def __init__(self, spec: ActorSpec) -> None:
        self.spec = spec
        self.name = spec.actor.name
        self.ctx = ActorContext(self.name, spec.log_fields)
        self.task: asyncio.Task[None] | None = None
        self.state = "starting"
        self.restarts = 0
        self.last_error = ""
        self.failures: collections.deque[float] = collections.deque()
        self.stopping = False


def _overdue(child: _Child, now: float) -> bool:
    """A running actor that has not checked in within its timeout."""
    timeout = child.spec.checkin_timeout
    return (
        timeout is not None and child.state == "running" and now - child.ctx.last_checkin > timeout
    )


class Supervisor:
    def __init__(
        self,
        config: SupervisorConfig,
        *,
        rng: random.Random | None = None,
        on_escalation: Callable[[SupervisorEscalation], None] | None = None,
    ) -> None:
        self._config = config
        self._rng = rng or random.Random()
        self._children: dict[str, _Child] = {}
        self._on_escalation = on_escalation
        self.escalation: SupervisorEscalation | None = None
        self._escalated = asyncio.Event()

    # -- starting -------------------------------------------------------------------------

    def start(self, spec: ActorSpec) -> None:
        name = spec.actor.name
        if name in self._children:
            raise ValueError(f"an actor named {name!r} is already supervised")
        child = _Child(spec)
        self._children[name] = child
        child.task = asyncio.get_running_loop().create_task(
            self._supervise(child), name=f"actor:{name}"
        )

    def start_all(self, specs: Iterable[ActorSpec]) -> None:
        for spec in specs:
            self.start(spec)

    async def wait_ready(self, names: Iterable[str] | None = None) -> None:
        """Return once every named actor (default: all) reported ready.

        Raises ``SupervisorEscalation`` if the supervisor escalates first.
        """
        wanted = [self._children[n] for n in (names or list(self._children))]
        waits = [asyncio.ensure_future(c.ctx._ready.wait()) for c in wanted]
        escalated = asyncio.ensure_future(self._escalated.wait())
        try:
            pending = set(waits)
            while pending:
                done, pending = await asyncio.wait(
                    pending | {escalated}, return_when=asyncio.FIRST_COMPLETED
                )
                if escalated in done:
                    assert self.escalation is not None
                    raise self.escalation
                pending.discard(escalated)
        finally:
            for w in [*waits, escalated]:
                w.cancel()

    # -- running --------------------------------------------------------------------------

    async def _supervise(self, child: _Child) -> None:
        spec = child.spec
        while True:
            child.state = "running"
            error: BaseException | None = None
            try:
                await spec.actor.run(child.ctx)
            except asyncio.CancelledError:
                child.state = "stopped"
                raise
            except Exception as exc:
                error = exc
            if child.stopping:
                child.state = "stopped"
                return
            if error is None:
                if spec.restart is not RestartPolicy.PERMANENT:
                    child.state = "stopped"
                    child.ctx.log.info("actor finished")
                    return
                child.last_error = "returned while it should keep running"
            else:
                child.last_error = f"{type(error).__name__}: {error}"
                child.ctx.log.opt(exception=error).error("actor failed: {}", child.last_error)
            if spec.restart is RestartPolicy.TEMPORARY:
                child.state = "failed"
                return
            now = time.monotonic()
            child.failures.append(now)
            while child.failures and now - child.failures[0] > self._config.restart_period:
                child.failures.popleft()
            if len(child.failures) > self._config.max_restarts:
                child.state = "failed"
                self._escalate(child)
                return
            delay = self.backoff_delay(len(child.failures))
            child.state = "backoff"
            child.ctx.log.warning(
                "restarting actor in {:.2f} s ({} failures within {:g} s)",
                delay,
                len(child.failures),
                self._config.restart_period,
            )
            await asyncio.sleep(delay)
            if child.stopping:
                child.state = "stopped"
                return
            child.restarts += 1
            child.ctx = ActorContext(child.name, spec.log_fields, child.ctx._ready)

    def backoff_delay(self, attempt: int) -> float:
        """Exponential in the attempt number, capped, with 'equal jitter' (half fixed)."""
        cfg = self._config
        return backoff_delay(attempt, cfg.backoff_initial, cfg.backoff_max, self._rng)

    def _escalate(self, child: _Child) -> None:
        if self.escalation is not None:
            return
        self.escalation = SupervisorEscalation(
            child.name, len(child.failures), self._config.restart_period, child.last_error
        )
        logger.bind(ACTOR=child.name).critical(
            "supervisor escalates: {}; exiting so that systemd restarts tradingd",
            self.escalation,
        )
        self._escalated.set()
        if self._on_escalation is not None:
            self._on_escalation(self.escalation)

    # -- health ---------------------------------------------------------------------------

    def healthy(self) -> bool:
        """Every actor is running (or finished normally) and checked in within its timeout."""
        if self.escalation is not None:
            return False
        now = time.monotonic()
        return not any(
            child.state == "failed" or _overdue(child, now) for child in self._children.values()
        )

    def snapshot(self) -> list[ActorStatus]:
        now = time.monotonic()
        return [
            ActorStatus(
                name=c.name,
                state=c.state,
                ready=c.ctx._ready.is_set(),
                restarts=c.restarts,
                last_error=c.last_error,
                seconds_since_checkin=round(now - c.ctx.last_checkin, 3),
                checkin_timeout=c.spec.checkin_timeout,
                overdue=_overdue(c, now),
            )
            for c in self._children.values()
        ]

    def names(self) -> list[str]:
        return list(self._children)

    # -- stopping -------------------------------------------------------------------------

    async def stop(self, names: Iterable[str], *, graceful_timeout: float | None = None) -> None:
        """Stop the named actors.

        With ``graceful_timeout`` the actors are left to finish on their own (they return once
        their input is closed and drained) for that long, then cancelled; without it they are
        cancelled at once. Either way this returns only when their tasks are done.
        """
        children = [self._children[n] for n in names if n in self._children]
        for child in children:
            child.stopping = True
        tasks = [c.task for c in children if c.task is not None and not c.task.done()]
        if not tasks:
            return
        if graceful_timeout is not None:
            _, still_running = await asyncio.wait(tasks, timeout=graceful_timeout)
            for task in still_running:
                logger.warning("actor {} did not finish in time; cancelling it", task.get_name())
            tasks = list(still_running)
        for task in tasks:
            task.cancel()
        results = await asyncio.gather(*tasks, return_exceptions=True)
        for task, result in zip(tasks, results, strict=True):
            if isinstance(result, Exception):
                logger.error("actor {} raised while stopping: {!r}", task.get_name(), result)

    async def remove(self, names: Iterable[str]) -> None:
        """Stop the named actors (cancelled at once) and forget them: no longer reported."""
        names = list(names)
        await self.stop(names)
        for name in names:
            self._children.pop(name, None)

    async def stop_all(self) -> None:
        await self.stop(list(self._children))
