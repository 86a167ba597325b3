"""The service manager notification protocol (sd_notify), written against the socket directly.

systemd declares the protocol stable and re-implementable: one ``AF_UNIX``/``SOCK_DGRAM``
datagram of newline-separated ``KEY=VALUE`` lines per notification, sent to the address in
``$NOTIFY_SOCKET`` (a path, or ``@name`` for the Linux abstract namespace). The kernel attaches
our credentials because the manager enables ``SO_PASSCRED`` on its end.

Every method here is a no-op outside systemd, never blocks (the socket is non-blocking, so a
stalled PID 1 cannot freeze the event loop) and never raises: the man page recommends ignoring
failures, and a notification must never be the reason the daemon stops trading.
"""

from __future__ import annotations

import asyncio
import errno as errno_codes
import os
import re
import socket
import time
from collections.abc import Awaitable, Callable, Mapping, MutableMapping
from typing import NoReturn, TypeVar

from loguru import logger

NOTIFY_SOCKET_ENV = "NOTIFY_SOCKET"
WATCHDOG_USEC_ENV = "WATCHDOG_USEC"
WATCHDOG_PID_ENV = "WATCHDOG_PID"

# PID 1 drops a whole datagram of PIPE_BUF (4096) bytes or more, READY=1 included, so the free
# text is capped well below that.
MAX_STATUS_BYTES = 1024
_FIELD_NAME = re.compile(r"^[A-Z][A-Z0-9_]*$")
# Everything str.splitlines() treats as a line break, plus NUL: PID 1 ignores a datagram with
# an embedded NUL, and a newline would start a new assignment.
_LINE_BREAKS = re.compile("[\x00\n\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029]+")


def one_line(text: str, limit: int = MAX_STATUS_BYTES) -> str:
    """``text`` as a single line of at most ``limit`` UTF-8 bytes (cut at a character)."""
    flat = _LINE_BREAKS.sub(" ", text).strip()
    encoded = flat.encode("utf-8", "replace")
    if len(encoded) <= limit:
        return flat
    return encoded[: limit - 3].decode("utf-8", "ignore") + "..."


def encode_notification(fields: Mapping[str, str]) -> bytes:
    """The datagram for ``fields``; values are flattened to one line each."""
    lines = []
    for name, value in fields.items():
        if not _FIELD_NAME.match(name):
            raise ValueError(f"invalid sd_notify field name {name!r}")
        lines.append(f"{name}={one_line(value)}")
    return "\n".join(lines).encode("utf-8", "replace")


def socket_address(value: str) -> str | bytes | None:
    """The ``sendto`` address for a ``$NOTIFY_SOCKET`` value, None when unsupported."""
    if value.startswith("/"):
        return value
    if value.startswith("@") and len(value) > 1:
        return b"\0" + os.fsencode(value[1:])
    # vsock:CID:PORT is for VM managers; a service has no use for it.
    return None


class Notifier:
    """Sends notifications to the service manager; does nothing when there is none.

    ``Notifier()`` reads ``$NOTIFY_SOCKET``; ``Notifier("/run/x")`` or ``Notifier("@x")`` uses the
    given address (tests); ``Notifier(environ={})`` is a disabled notifier.
    """

    def __init__(self, address: str | None = None, *, environ: Mapping[str, str] | None = None):
        if address is None:
            address = (os.environ if environ is None else environ).get(NOTIFY_SOCKET_ENV, "")
        self._address = socket_address(address) if address else None
        self._socket: socket.socket | None = None
        self._reported: set[str] = set()
        if address and self._address is None:
            logger.warning("Unsupported NOTIFY_SOCKET address {}; not notifying", address)

    @property
    def enabled(self) -> bool:
        return self._address is not None

    def notify(self, fields: Mapping[str, str]) -> bool:
        """Send ``fields`` as one datagram; True if the kernel accepted it."""
        if self._address is None:
            return False
        try:
            payload = encode_notification(fields)
        except ValueError:
            logger.exception("Refusing a malformed notification")
            return False
        try:
            if self._socket is None:
                self._socket = socket.socket(
                    socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC | socket.SOCK_NONBLOCK
                )
            self._socket.sendto(payload, self._address)
        except OSError as exc:
            self._report_failure(exc)
            return False
        return True

    def ready(self, status: str | None = None) -> bool:
        """Start-up (or a reload) is complete; arms the watchdog."""
        return self.notify(_with_status({"READY": "1"}, status))

    def status(self, text: str) -> bool:
        """One line shown by ``systemctl status``."""
        return self.notify({"STATUS": text})

    def watchdog(self) -> bool:
        return self.notify({"WATCHDOG": "1"})

    def watchdog_trigger(self) -> bool:
        """Ask the manager to act as if the watchdog had expired."""
        return self.notify({"WATCHDOG": "trigger"})

    def stopping(self, status: str | None = None) -> bool:
        return self.notify(_with_status({"STOPPING": "1"}, status))

    def extend_timeout(self, seconds: float) -> bool:
        """Push the running start/stop timeout to at least ``seconds`` from now.

        Repeat before that much time has passed while the slow step continues.
        """
        usec = max(1, round(seconds * 1_000_000))
        return self.notify({"EXTEND_TIMEOUT_USEC": str(usec)})

    def reloading(self, status: str | None = None) -> bool:
        """A reload began; follow with ``ready()`` when it is done (also when it failed).

        MONOTONIC_USEC must travel in the same datagram for ``Type=notify-reload`` (v253+);
        older managers ignore it.
        """
        now_usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        fields = {"RELOADING": "1", "MONOTONIC_USEC": str(now_usec)}
        return self.notify(_with_status(fields, status))

    def failed(self, errno: int, status: str) -> bool:
        """Report why the daemon is about to exit unsuccessfully."""
        return self.notify({"STATUS": status, "ERRNO": str(int(errno))})

    def close(self) -> None:
        if self._socket is not None:
            self._socket.close()
            self._socket = None

    def _report_failure(self, exc: OSError) -> None:
        name = errno_codes.errorcode.get(exc.errno or 0, type(exc).__name__)
        # Once per kind: a manager that went away would otherwise flood the log every ping.
        if name not in self._reported:
            self._reported.add(name)
            logger.warning("Service manager notification failed: {} ({})", name, exc.strerror)


def _with_status(fields: dict[str, str], status: str | None) -> dict[str, str]:
    if status is not None:
        fields["STATUS"] = status
    return fields


def watchdog_period(
    environ: Mapping[str, str] | None = None, *, pid: int | None = None
) -> float | None:
    """Seconds between ``WATCHDOG=1`` pings: half of ``$WATCHDOG_USEC``.

    None when the watchdog is off, malformed, or meant for another process (``$WATCHDOG_PID``).
    """
    env = os.environ if environ is None else environ
    try:
        usec = int(env.get(WATCHDOG_USEC_ENV, ""))
    except ValueError:
        return None
    if usec <= 0:
        return None
    owner = env.get(WATCHDOG_PID_ENV)
    if owner:
        try:
            if int(owner) != (os.getpid() if pid is None else pid):
                return None
        except ValueError:
            return None
    return usec / 2_000_000


def clear_environment(environ: MutableMapping[str, str] | None = None) -> None:
    """Stop child processes (embedded PostgreSQL/Redis) from inheriting our notify socket.

    Call after creating the ``Notifier`` and reading ``watchdog_period()``. With
    ``NotifyAccess=main`` PID 1 would reject their messages anyway, but log a warning each time.
    """
    env = os.environ if environ is None else environ
    for name in (NOTIFY_SOCKET_ENV, WATCHDOG_USEC_ENV, WATCHDOG_PID_ENV):
        env.pop(name, None)


_T = TypeVar("_T")


async def extending_start_timeout(
    work: Awaitable[_T], notifier: Notifier, *, what: str, period: float
) -> _T:
    """Await ``work`` (a start-up step that reports no progress of its own, such as a migration
    rebuilding an index of a large table), and every ``period`` seconds it is still running show
    for how long and push systemd's start timeout ``3 * period`` further on."""
    future = asyncio.ensure_future(work)
    started = time.monotonic()
    try:
        while True:
            done, _ = await asyncio.wait({future}, timeout=period)
            if done:
                return future.result()
            notifier.status(f"starting: {what} (running for {time.monotonic() - started:.0f} s)")
            notifier.extend_timeout(3 * period)
    finally:
        if not future.done():
            future.cancel()


async def watchdog_loop(
    notifier: Notifier,
    period: float,
    healthy: Callable[[], bool],
    *,
    clock: Callable[[], float] | None = None,
    sleep: Callable[[float], Awaitable[object]] = asyncio.sleep,
    on_lag: Callable[[float], None] | None = None,
) -> NoReturn:
    """Send ``WATCHDOG=1`` every ``period`` seconds while the daemon is healthy; run as a task.

    That this coroutine runs at all shows the event loop is not blocked. It also measures how
    late each wake-up is (loop lag) and withholds the ping when the lag exceeds ``period`` or
    ``healthy()`` is false (or raises), so systemd restarts a daemon that is alive but stuck.
    ``clock``/``sleep`` default to the running loop's; ``on_lag`` receives every measured lag
    (seconds) for metrics.
    """
    if period <= 0:
        raise ValueError(f"watchdog period must be positive, found {period}")
    now = clock or asyncio.get_running_loop().time
    log = logger.bind(ACTOR="watchdog")
    problem: str | None = None
    due = now()
    while True:
        lag = max(0.0, now() - due)
        if on_lag is not None:
            on_lag(lag)
        if lag > period:
            current: str | None = "event loop lag"
            log.warning("Event loop lagged {:.3f}s (limit {:.3f}s)", lag, period)
        else:
            current = _health_problem(healthy)
        if current is None:
            notifier.watchdog()
            if problem is not None:
                log.info("Healthy again; watchdog pings resumed")
        elif current != problem:
            log.warning("Withholding watchdog pings: {}", current)
        problem = current
        due = now() + period
        await sleep(period)


def _health_problem(healthy: Callable[[], bool]) -> str | None:
    try:
        ok = healthy()
    except Exception:
        logger.exception("Health check raised; treating the daemon as unhealthy")
        return "health check raised"
    return None if ok else "health check failed"
