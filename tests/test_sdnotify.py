"""sd_notify: datagrams as a fake service manager receives them, and the watchdog task."""

from __future__ import annotations

import asyncio
import errno
import os
import socket
import struct
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tradingd.sdnotify import (
    MAX_STATUS_BYTES,
    Notifier,
    clear_environment,
    encode_notification,
    extending_start_timeout,
    one_line,
    watchdog_loop,
    watchdog_period,
)

_CREDENTIALS = struct.Struct("3i")  # struct ucred: pid, uid, gid


class FakeManager:
    """The service manager's end: a bound datagram socket with SO_PASSCRED."""

    def __init__(self, address: str) -> None:
        self.address = address
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
        self.sock.bind(b"\0" + address[1:].encode() if address.startswith("@") else address)
        self.sock.setblocking(False)

    def _read(self) -> tuple[dict[str, str], tuple[int, int, int] | None]:
        data, ancillary, _flags, _addr = self.sock.recvmsg(
            4096, socket.CMSG_SPACE(_CREDENTIALS.size)
        )
        credentials = None
        for level, kind, payload in ancillary:
            if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS:
                credentials = _CREDENTIALS.unpack(payload[: _CREDENTIALS.size])
        fields = dict(line.split("=", 1) for line in data.decode().split("\n") if line)
        return fields, credentials

    def receive(self, timeout: float = 5.0) -> tuple[dict[str, str], tuple[int, int, int] | None]:
        """The next notification; waits (bounded) for it to arrive."""
        self.sock.settimeout(timeout)
        try:
            return self._read()
        finally:
            self.sock.setblocking(False)

    async def next(self, within: float = 5.0) -> dict[str, str]:
        loop = asyncio.get_running_loop()
        readable: asyncio.Future[None] = loop.create_future()
        loop.add_reader(self.sock.fileno(), lambda: readable.done() or readable.set_result(None))
        try:
            await asyncio.wait_for(readable, within)
        finally:
            loop.remove_reader(self.sock.fileno())
        return self._read()[0]

    def pending(self) -> list[dict[str, str]]:
        """Every notification already queued, without waiting."""
        received = []
        while True:
            try:
                received.append(self._read()[0])
            except BlockingIOError:
                return received

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def short_dir() -> Iterator[Path]:
    # AF_UNIX paths are limited to 108 bytes; pytest's tmp_path can be longer.
    with tempfile.TemporaryDirectory(prefix="sdn") as directory:
        yield Path(directory)


@pytest.fixture(params=["path", "abstract"])
def manager(request: pytest.FixtureRequest, short_dir: Path) -> Iterator[FakeManager]:
    if request.param == "path":
        address = str(short_dir / "notify")
    else:
        address = f"@tradingd-test-{uuid.uuid4().hex}"
    fake = FakeManager(address)
    yield fake
    fake.close()


@pytest.fixture
def notifier(manager: FakeManager) -> Iterator[Notifier]:
    sender = Notifier(environ={"NOTIFY_SOCKET": manager.address})
    yield sender
    sender.close()


def test_ready_carries_status_and_our_credentials(manager: FakeManager, notifier: Notifier):
    assert notifier.enabled
    assert notifier.ready("Trading 3 symbols")
    fields, credentials = manager.receive()
    assert fields == {"READY": "1", "STATUS": "Trading 3 symbols"}
    assert credentials is not None
    assert credentials[0] == os.getpid()
    assert credentials[1] == os.getuid()


def test_reads_notify_socket_from_the_environment(
    manager: FakeManager, monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.setenv("NOTIFY_SOCKET", manager.address)
    sender = Notifier()
    try:
        assert sender.watchdog()
        assert manager.receive()[0] == {"WATCHDOG": "1"}
    finally:
        sender.close()


def test_reloading_sends_monotonic_time_in_the_same_datagram(
    manager: FakeManager, notifier: Notifier
):
    before = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    notifier.reloading("Reloading configuration")
    after = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    fields, _ = manager.receive()
    assert fields["RELOADING"] == "1"
    assert fields["STATUS"] == "Reloading configuration"
    assert before <= int(fields["MONOTONIC_USEC"]) <= after


def test_status_is_flattened_to_one_line(manager: FakeManager, notifier: Notifier):
    notifier.status("binance: ok\nderibit: reconnecting\r\n\x00queue 3%\u2028done")
    fields, _ = manager.receive()
    assert fields == {"STATUS": "binance: ok deribit: reconnecting queue 3% done"}


def test_long_status_is_cut_so_the_datagram_stays_acceptable(
    manager: FakeManager, notifier: Notifier
):
    notifier.ready("€" * 5000)
    fields, _ = manager.receive()
    assert fields["READY"] == "1"
    assert len(fields["STATUS"].encode()) <= MAX_STATUS_BYTES
    assert fields["STATUS"].endswith("...")


@pytest.mark.parametrize(
    ("send", "expected"),
    [
        (lambda n: n.extend_timeout(90), {"EXTEND_TIMEOUT_USEC": "90000000"}),
        (lambda n: n.extend_timeout(0.25), {"EXTEND_TIMEOUT_USEC": "250000"}),
        (lambda n: n.stopping("Draining"), {"STOPPING": "1", "STATUS": "Draining"}),
        (lambda n: n.stopping(), {"STOPPING": "1"}),
        (lambda n: n.watchdog(), {"WATCHDOG": "1"}),
        (lambda n: n.watchdog_trigger(), {"WATCHDOG": "trigger"}),
        (
            lambda n: n.failed(errno.ECONNREFUSED, "PostgreSQL unreachable"),
            {"STATUS": "PostgreSQL unreachable", "ERRNO": str(errno.ECONNREFUSED)},
        ),
        (lambda n: n.ready(), {"READY": "1"}),
    ],
)
def test_message_helpers(manager: FakeManager, notifier: Notifier, send, expected):
    assert send(notifier)
    assert manager.receive()[0] == expected


def test_no_op_without_notify_socket(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    sender = Notifier()
    assert not sender.enabled
    assert not sender.ready("x")
    assert not sender.watchdog()
    assert sender._socket is None


def test_unsupported_address_disables_the_notifier():
    assert not Notifier("vsock:2:1234").enabled
    assert not Notifier(environ={"NOTIFY_SOCKET": "@"}).enabled


def test_no_exception_when_nobody_listens(short_dir: Path):
    gone = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    gone.bind(str(short_dir / "closed"))
    gone.close()  # the path remains, nobody reads it: ECONNREFUSED
    for address in (
        str(short_dir / "missing"),  # ENOENT
        str(short_dir / "closed"),
        f"@tradingd-nobody-{uuid.uuid4().hex}",
    ):
        sender = Notifier(address)
        try:
            assert sender.enabled
            assert not sender.ready("x")
            assert not sender.watchdog()
        finally:
            sender.close()


def test_a_full_manager_queue_does_not_block(manager: FakeManager, notifier: Notifier):
    manager.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1024)
    results = [notifier.status(f"update {i}") for i in range(2000)]
    assert results[0]
    assert not all(results)  # the queue filled and sends failed instead of blocking


def test_invalid_field_names_are_refused(manager: FakeManager, notifier: Notifier):
    assert not notifier.notify({"lower": "1"})
    assert not notifier.notify({"A=B": "1"})
    assert manager.pending() == []


@given(st.text())
def test_one_line_never_leaves_a_line_break_or_nul(text: str):
    flat = one_line(text)
    assert "\n" not in flat and "\x00" not in flat and "\r" not in flat
    assert len(flat.encode("utf-8", "replace")) <= MAX_STATUS_BYTES
    assert encode_notification({"STATUS": text}).count(b"\n") == 0


@pytest.mark.parametrize(
    ("environ", "expected"),
    [
        ({}, None),
        ({"WATCHDOG_USEC": "30000000"}, 15.0),
        ({"WATCHDOG_USEC": "400000", "WATCHDOG_PID": str(os.getpid())}, 0.2),
        ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": str(os.getpid() + 1)}, None),
        ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "nonsense"}, None),
        ({"WATCHDOG_USEC": "0"}, None),
        ({"WATCHDOG_USEC": "-5"}, None),
        ({"WATCHDOG_USEC": "thirty"}, None),
        ({"WATCHDOG_PID": str(os.getpid())}, None),
    ],
)
def test_watchdog_period(environ: dict[str, str], expected: float | None):
    assert watchdog_period(environ) == expected


def test_watchdog_period_reads_the_environment(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("WATCHDOG_USEC", "10000000")
    monkeypatch.delenv("WATCHDOG_PID", raising=False)
    assert watchdog_period() == 5.0
    assert watchdog_period(pid=1) == 5.0  # no WATCHDOG_PID: any process may ping
    monkeypatch.setenv("WATCHDOG_PID", "1")
    assert watchdog_period() is None
    assert watchdog_period(pid=1) == 5.0


def test_clear_environment_keeps_children_off_the_notify_socket():
    environ = {"NOTIFY_SOCKET": "@x", "WATCHDOG_USEC": "1", "WATCHDOG_PID": "2", "HOME": "/"}
    clear_environment(environ)
    assert environ == {"HOME": "/"}


class Health:
    """healthy() for the watchdog loop, recording every answer and waking waiters."""

    def __init__(self) -> None:
        self.ok = True
        self.answers: list[bool] = []
        self.changed = asyncio.Event()

    def __call__(self) -> bool:
        self.answers.append(self.ok)
        self.changed.set()
        return self.ok

    async def wait_answers(self, value: bool, count: int) -> None:
        start = len(self.answers)
        while sum(1 for a in self.answers[start:] if a is value) < count:
            self.changed.clear()
            await asyncio.wait_for(self.changed.wait(), 5)


async def test_watchdog_loop_pings_only_while_healthy(manager: FakeManager, notifier: Notifier):
    health = Health()
    task = asyncio.create_task(watchdog_loop(notifier, 0.02, health))
    try:
        for _ in range(3):
            assert await manager.next() == {"WATCHDOG": "1"}
        health.ok = False
        await health.wait_answers(False, 3)
        health.ok = True
        await health.wait_answers(True, 1)
        assert await manager.next() == {"WATCHDOG": "1"}
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    # Exactly one ping per healthy answer (pings already read included), none otherwise.
    assert 3 + 1 + len(manager.pending()) == health.answers.count(True)
    assert health.answers.count(False) >= 3


class RecordingNotifier(Notifier):
    def __init__(self) -> None:
        super().__init__(environ={})
        self.pings = 0

    def watchdog(self) -> bool:
        self.pings += 1
        return True


class ManualTime:
    """A clock the test moves and a sleep() that returns when the test says so."""

    def __init__(self) -> None:
        self.now = 100.0
        self.sleeping: asyncio.Queue[float] = asyncio.Queue()
        self.wake: asyncio.Queue[None] = asyncio.Queue()

    def clock(self) -> float:
        return self.now

    async def sleep(self, delay: float) -> None:
        await self.sleeping.put(delay)
        await self.wake.get()

    async def advance(self, seconds: float) -> None:
        """Let the loop's pending sleep end ``seconds`` later; returns when it sleeps again."""
        self.now += seconds
        await self.wake.put(None)
        await asyncio.wait_for(self.sleeping.get(), 5)


async def test_watchdog_loop_withholds_pings_while_the_loop_lags():
    notifier, manual, lags = RecordingNotifier(), ManualTime(), []
    health = Health()
    task = asyncio.create_task(
        watchdog_loop(
            notifier, 10.0, health, clock=manual.clock, sleep=manual.sleep, on_lag=lags.append
        )
    )
    try:
        assert await asyncio.wait_for(manual.sleeping.get(), 5) == 10.0
        assert notifier.pings == 1
        await manual.advance(10.0)  # on time
        assert notifier.pings == 2
        await manual.advance(25.0)  # woke 15 s late: the loop was blocked longer than a period
        assert notifier.pings == 2
        assert len(health.answers) == 2  # lag alone decides; healthy() is not consulted
        await manual.advance(10.5)  # 0.5 s late is within the period
        assert notifier.pings == 3
        health.ok = False
        await manual.advance(10.0)
        assert notifier.pings == 3
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    assert lags == pytest.approx([0.0, 0.0, 15.0, 0.5, 0.0])


async def test_watchdog_loop_treats_a_raising_health_check_as_unhealthy():
    notifier, manual = RecordingNotifier(), ManualTime()
    calls = []

    def broken() -> bool:
        calls.append(1)
        raise RuntimeError("bug in the health check")

    task = asyncio.create_task(
        watchdog_loop(notifier, 1.0, broken, clock=manual.clock, sleep=manual.sleep)
    )
    try:
        await asyncio.wait_for(manual.sleeping.get(), 5)
        await manual.advance(1.0)
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    assert len(calls) == 2
    assert notifier.pings == 0


async def test_watchdog_loop_rejects_a_non_positive_period():
    with pytest.raises(ValueError):
        await watchdog_loop(RecordingNotifier(), 0, lambda: True)


async def test_a_long_start_up_step_keeps_extending_the_start_timeout(
    manager: FakeManager, notifier: Notifier
):
    finish = asyncio.Event()

    async def migration() -> str:
        await finish.wait()
        return "applied"

    step = asyncio.create_task(
        extending_start_timeout(migration(), notifier, what="migrations", period=0.02)
    )
    for _ in range(2):
        status = await manager.next()
        assert status["STATUS"].startswith("starting: migrations (running for ")
        assert await manager.next() == {"EXTEND_TIMEOUT_USEC": "60000"}
    finish.set()
    assert await step == "applied"


async def test_a_start_up_step_cancelled_takes_its_work_with_it(notifier: Notifier):
    started = asyncio.Event()

    async def migration() -> None:
        started.set()
        await asyncio.Event().wait()

    work = asyncio.ensure_future(migration())
    step = asyncio.create_task(extending_start_timeout(work, notifier, what="x", period=60))
    await started.wait()
    step.cancel()
    with pytest.raises(asyncio.CancelledError):
        await step
    assert work.cancelled()
