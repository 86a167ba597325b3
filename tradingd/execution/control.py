"""The control channel: the operator's CLI reaches the running daemon's order desks over Redis.

The CLI PUBLISHes one msgspec-JSON ``Envelope`` on ``tradingd:control:db<N>`` (the Redis
database both use: pub/sub ignores database numbers). PUBLISH answers with
the number of subscribers that received it: 0 means no daemon listens, and nothing was asked
or queued (``NoDaemon``, exit 69). The daemon's ``ControlServer`` hands the request to the
``OrderDesk`` of the exchange named and RPUSHes one ``Reply`` on
``tradingd:control:reply:<id>`` (kept ``REPLY_TTL_S``), which the CLI BLPOPs with a timeout.
A request that reaches the daemon after its deadline is not executed: the CLI that sent it
has stopped waiting, and an operator's order must not happen later than they were told.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Mapping, Sequence
from typing import Protocol

import msgspec
import redis.asyncio as aioredis
from loguru import logger

from tradingd.execution.audit import Report
from tradingd.execution.desk import (
    MANUAL_STRATEGY,
    CancelReport,
    ExecutorSnapshot,
    OrderDesk,
    StrategyStatus,
)
from tradingd.strategies.api import Accepted, OrderIntent
from tradingd.supervisor import ActorContext

CONTROL_CHANNEL = "tradingd:control"
REPLY_PREFIX = "tradingd:control:reply:"
REPLY_TTL_S = 60


# -- requests ---------------------------------------------------------------------------------


class Submit(msgspec.Struct, frozen=True, kw_only=True, tag="submit"):
    """An operator's order: it always belongs to the strategy ``manual``."""

    exchange: str
    intent: OrderIntent


class Cancel(msgspec.Struct, frozen=True, kw_only=True, tag="cancel"):
    exchange: str
    client_order_id: str


class CancelEverything(msgspec.Struct, frozen=True, kw_only=True, tag="cancel_everything"):
    """Every exchange: deny new orders, cancel every open order, report (the kill switch);
    ``flatten``: then close every position."""

    reason: str
    flatten: bool = False


class ListStrategies(msgspec.Struct, frozen=True, tag="strategies"):
    pass


class Pause(msgspec.Struct, frozen=True, kw_only=True, tag="pause"):
    name: str
    reason: str


class Resume(msgspec.Struct, frozen=True, kw_only=True, tag="resume"):
    name: str


class Snapshot(msgspec.Struct, frozen=True, tag="snapshot"):
    """The executors' part of ``tradingd status``."""


class Reconcile(msgspec.Struct, frozen=True, kw_only=True, tag="reconcile"):
    """Reconcile the account of one exchange (None: every one) with its venue now."""

    exchange: str | None = None


class Subscribe(msgspec.Struct, frozen=True, kw_only=True, tag="subscribe"):
    """Capture these symbols of one exchange from now on (and after restarts)."""

    exchange: str
    symbols: list[str]
    operator: str


class Unsubscribe(msgspec.Struct, frozen=True, kw_only=True, tag="unsubscribe"):
    exchange: str
    symbols: list[str]
    operator: str


Request = (
    Submit
    | Cancel
    | CancelEverything
    | ListStrategies
    | Pause
    | Resume
    | Snapshot
    | Subscribe
    | Unsubscribe
    | Reconcile
)


class Envelope(msgspec.Struct, frozen=True, kw_only=True):
    id: str
    deadline_us: int  # wall clock, microseconds: not executed after it
    request: Request


# -- replies ----------------------------------------------------------------------------------


class Decided(msgspec.Struct, frozen=True, kw_only=True):
    accepted: bool
    client_order_id: str = ""
    reason: str = ""


class SubscriptionChange(msgspec.Struct, frozen=True, kw_only=True):
    """What a subscribe or unsubscribe did (``tradingd.subscriptions`` carries it out)."""

    exchange: str
    changed: list[str] = []  # subscribed (or unsubscribed) by this request
    unchanged: list[str] = []  # already so
    # Not listed by the venue (subscribe) or not captured (unsubscribe): nothing was changed.
    refused: list[str] = []
    symbols: list[str] = []  # what the exchange captures now
    connections: int = 0
    problem: str = ""  # non-empty: nothing was changed, and why (e.g. the venue unreachable)


class SubscriptionControl(Protocol):
    """The daemon's end of live subscription changes."""

    async def subscribe(
        self, exchange: str, symbols: Sequence[str], operator: str
    ) -> SubscriptionChange: ...

    async def unsubscribe(
        self, exchange: str, symbols: Sequence[str], operator: str
    ) -> SubscriptionChange: ...


class Reply(msgspec.Struct, frozen=True, kw_only=True):
    id: str
    error: str = ""  # non-empty: the request was not (fully) executed, and why
    decision: Decided | None = None
    reports: list[CancelReport] = []
    strategies: list[StrategyStatus] = []
    snapshots: list[ExecutorSnapshot] = []
    found: bool = False  # pause/resume: the strategy runs in the daemon
    reconciliations: list[Report] = []
    subscription: SubscriptionChange | None = None


_encode = msgspec.json.Encoder().encode
_decode_envelope = msgspec.json.Decoder(Envelope).decode
_decode_reply = msgspec.json.Decoder(Reply).decode


class NoDaemon(Exception):
    """Nobody listens on the control channel: no daemon runs (against this Redis)."""

    def __init__(self) -> None:
        super().__init__(
            "no running daemon answers on the control channel (start it with `tradingd run` "
            "or `systemctl start tradingd`); nothing was sent"
        )


class NoReply(Exception):
    """The daemon received the request but did not answer in time: its outcome is unknown."""


def control_channel(redis: aioredis.Redis) -> str:
    """The channel of the daemon that uses ``redis``'s database. Redis pub/sub spans every
    database of a server: without the number, daemons sharing a server on different databases
    would take each other's requests (a kill switch cancelling another daemon's orders)."""
    db = redis.connection_pool.connection_kwargs.get("db") or 0
    return f"{CONTROL_CHANNEL}:db{db}"


def now_us() -> int:
    return time.time_ns() // 1000


# -- the CLI end ------------------------------------------------------------------------------


class ControlClient:
    def __init__(self, redis: aioredis.Redis) -> None:
        self._redis = redis

    async def request(self, request: Request, *, timeout_s: float = 10.0) -> Reply:
        """Ask the daemon; NoDaemon when nobody listens (nothing was asked), NoReply when no
        answer came within ``timeout_s`` (the daemon will not execute it after that)."""
        envelope = Envelope(
            id=uuid.uuid4().hex,
            deadline_us=now_us() + int(timeout_s * 1_000_000),
            request=request,
        )
        receivers = await self._redis.publish(control_channel(self._redis), _encode(envelope))
        if receivers == 0:
            raise NoDaemon()
        if receivers > 1:
            logger.warning("{} daemons received the request (one was expected)", receivers)
        key = REPLY_PREFIX + envelope.id
        # One second more than the deadline: a reply sent just before it still arrives.
        popped = await self._redis.blpop([key], timeout=timeout_s + 1)
        if popped is None:
            raise NoReply(
                f"the daemon did not answer within {timeout_s:g} s; the outcome is unknown "
                "(check `tradingd orders`)"
            )
        return _decode_reply(popped[1])


# -- the daemon end ---------------------------------------------------------------------------


class ControlServer:
    """A supervised actor: serves the control channel with the exchanges' order desks."""

    name = "control"

    def __init__(
        self,
        desks: Mapping[str, OrderDesk],
        redis: aioredis.Redis,
        subscriptions: SubscriptionControl | None = None,
    ) -> None:
        self._desks = dict(desks)
        self._redis = redis
        self._subscriptions = subscriptions
        self.handled = 0
        self.expired = 0

    async def run(self, ctx: ActorContext) -> None:
        pubsub = self._redis.pubsub()
        try:
            await pubsub.subscribe(control_channel(self._redis))
            # Ready only once Redis confirms: from then on PUBLISH counts this subscriber.
            while True:
                confirmation = await pubsub.get_message(timeout=None)
                if confirmation is not None and confirmation["type"] == "subscribe":
                    break
            ctx.ready()
            async with asyncio.TaskGroup() as requests:
                while True:
                    message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=None)
                    if message is None or message["type"] != "message":
                        continue
                    ctx.checkin()
                    requests.create_task(self._serve(message["data"]))
        finally:
            await pubsub.aclose()

    async def _serve(self, raw: bytes) -> None:
        try:
            envelope = _decode_envelope(raw)
        except msgspec.DecodeError as exc:
            logger.warning("control request refused (not a request: {}): {!r}", exc, raw[:200])
            return
        try:
            reply = await self.handle(envelope)
        except Exception as exc:
            logger.opt(exception=exc).error("control request {} failed", envelope.request)
            reply = Reply(id=envelope.id, error=f"the daemon failed: {type(exc).__name__}: {exc}")
        key = REPLY_PREFIX + envelope.id
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.rpush(key, _encode(reply))
            pipe.expire(key, REPLY_TTL_S)
            await pipe.execute()

    async def handle(self, envelope: Envelope) -> Reply:
        """Execute one request (unless past its deadline) and say what happened."""
        reply_id = envelope.id
        request = envelope.request
        if now_us() > envelope.deadline_us:
            self.expired += 1
            logger.warning("control request past its deadline, not executed: {}", request)
            return Reply(id=reply_id, error="the request arrived after its deadline: not executed")
        self.handled += 1
        match request:
            case Submit(exchange=exchange, intent=intent):
                desk = self._desks.get(exchange)
                if desk is None:
                    return Reply(id=reply_id, error=self._unknown(exchange))
                decision = await desk.submit(MANUAL_STRATEGY, intent)
                logger.info("operator order on {}: {} -> {}", exchange, intent, decision)
                if isinstance(decision, Accepted):
                    decided = Decided(accepted=True, client_order_id=decision.client_order_id)
                else:
                    decided = Decided(accepted=False, reason=decision.reason)
                return Reply(id=reply_id, decision=decided)
            case Cancel(exchange=exchange, client_order_id=client_order_id):
                desk = self._desks.get(exchange)
                if desk is None:
                    return Reply(id=reply_id, error=self._unknown(exchange))
                decision = await desk.cancel(client_order_id)
                if isinstance(decision, Accepted):
                    decided = Decided(accepted=True, client_order_id=client_order_id)
                else:
                    decided = Decided(
                        accepted=False, client_order_id=client_order_id, reason=decision.reason
                    )
                return Reply(id=reply_id, decision=decided)
            case CancelEverything(reason=reason, flatten=flatten):
                reports = await asyncio.gather(
                    *(
                        desk.cancel_everything(reason, flatten=flatten)
                        for desk in self._desks.values()
                    ),
                    return_exceptions=True,
                )
                done: list[CancelReport] = []
                for exchange, report in zip(self._desks, reports, strict=True):
                    if isinstance(report, BaseException):
                        logger.opt(exception=report).error("cancel_everything on {}", exchange)
                        report = CancelReport(
                            exchange=exchange,
                            requested=0,
                            cancelled=0,
                            remaining=0,
                            errors=[f"cancel_everything failed: {type(report).__name__}: {report}"],
                        )
                    done.append(report)
                return Reply(id=reply_id, reports=done)
            case ListStrategies():
                return Reply(
                    id=reply_id,
                    strategies=[s for desk in self._desks.values() for s in desk.strategies()],
                )
            case Pause(name=name, reason=reason):
                found = [desk.pause_strategy(name, reason) for desk in self._desks.values()]
                return Reply(id=reply_id, found=any(found))
            case Resume(name=name):
                found = [desk.resume_strategy(name) for desk in self._desks.values()]
                return Reply(id=reply_id, found=any(found))
            case Reconcile(exchange=exchange):
                if exchange is not None and exchange not in self._desks:
                    return Reply(id=reply_id, error=self._unknown(exchange))
                chosen = [d for n, d in self._desks.items() if exchange in (None, n)]
                results = await asyncio.gather(*(d.reconcile() for d in chosen))
                reconciled = [r for r in results if r is not None]
                if len(reconciled) < len(chosen):
                    return Reply(
                        id=reply_id,
                        error="an executor has no reconciliation attached",
                        reconciliations=reconciled,
                    )
                return Reply(id=reply_id, reconciliations=reconciled)
            case Snapshot():
                return Reply(
                    id=reply_id, snapshots=[desk.snapshot() for desk in self._desks.values()]
                )
            case Subscribe() | Unsubscribe():
                if self._subscriptions is None:
                    return Reply(id=reply_id, error="this daemon takes no subscription changes")
                change = (
                    self._subscriptions.subscribe
                    if isinstance(request, Subscribe)
                    else self._subscriptions.unsubscribe
                )
                outcome = await change(request.exchange, request.symbols, request.operator)
                return Reply(id=reply_id, subscription=outcome)
        raise AssertionError(f"unhandled request {request!r}")

    def _unknown(self, exchange: str) -> str:
        return (
            f"no executor for exchange {exchange!r} in the daemon "
            f"(running: {', '.join(self._desks) or 'none'})"
        )
