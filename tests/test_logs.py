"""Logging: the journald native protocol as a socket we bind receives it, and the stderr modes."""

from __future__ import annotations

import array
import errno
import fcntl
import io
import logging
import os
import socket
import struct
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from loguru import logger

from tradingd import logs
from tradingd.logs import (
    BackgroundSink,
    JournalSink,
    configure_logging,
    encode_journal_entry,
    flush_logs,
    journal_field_name,
    journal_stream_matches,
    set_level,
    syslog_priority,
)

Fields = list[tuple[str, bytes]]


def decode_journal_entry(data: bytes) -> Fields:
    """The journald side of the native protocol (both field forms), written independently."""
    fields: Fields = []
    position = 0
    while position < len(data):
        end = data.index(b"\n", position)
        line = data[position:end]
        if b"=" in line:
            name, value = line.split(b"=", 1)
            position = end + 1
        else:
            name = line
            (size,) = struct.unpack_from("<Q", data, end + 1)
            start = end + 1 + 8
            value = data[start : start + size]
            assert data[start + size : start + size + 1] == b"\n", "binary field not terminated"
            position = start + size + 1
        fields.append((name.decode("ascii"), value))
    return fields


class FakeJournal:
    """journald's native socket: receives datagrams, including a memfd passed as SCM_RIGHTS."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
        self.sock.bind(path)
        self.memfd_entries = 0

    def receive(self, timeout: float = 5.0) -> dict[str, str]:
        fields = self.receive_raw(timeout)
        return {name: value.decode() for name, value in fields}

    def receive_raw(self, timeout: float = 5.0) -> Fields:
        self.sock.settimeout(timeout)
        fd_size = array.array("i").itemsize
        data, ancillary, _flags, _addr = self.sock.recvmsg(1 << 20, socket.CMSG_SPACE(fd_size))
        for level, kind, payload in ancillary:
            if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                assert data == b"", "a memfd entry comes in an empty datagram"
                (fd,) = array.array("i", payload[:fd_size])
                try:
                    seals = fcntl.fcntl(fd, fcntl.F_GET_SEALS)
                    assert seals & fcntl.F_SEAL_WRITE and seals & fcntl.F_SEAL_SHRINK
                    os.lseek(fd, 0, os.SEEK_SET)
                    with os.fdopen(os.dup(fd), "rb") as memfd:
                        data = memfd.read()
                finally:
                    os.close(fd)
                self.memfd_entries += 1
        return decode_journal_entry(data)

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def short_dir() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="jrn") as directory:
        yield Path(directory)


@pytest.fixture
def journal(short_dir: Path) -> Iterator[FakeJournal]:
    fake = FakeJournal(str(short_dir / "socket"))
    yield fake
    fake.close()


@pytest.fixture(autouse=True)
def restore_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    logger.remove()
    logger.add(sys.stderr)
    logs._state = None
    root.handlers[:] = handlers
    root.setLevel(level)
    logging.captureWarnings(False)


def stderr_is_journal() -> dict[str, str]:
    """An environment whose JOURNAL_STREAM names this process's fd 2, as systemd would set."""
    status = os.fstat(2)
    return {"JOURNAL_STREAM": f"{status.st_dev}:{status.st_ino}"}


def test_decoder_reads_both_field_forms():
    datagram = (
        b"MESSAGE=hello\n"
        b"BINARY_BLOB\n" + struct.pack("<Q", 7) + b"a\nb\x00c=d\n"
        b"EMPTY=\n"
        b"EQUALS=x=y\n"
    )
    assert decode_journal_entry(datagram) == [
        ("MESSAGE", b"hello"),
        ("BINARY_BLOB", b"a\nb\x00c=d"),
        ("EMPTY", b""),
        ("EQUALS", b"x=y"),
    ]


def test_encoder_uses_the_binary_form_only_for_newlines():
    encoded = encode_journal_entry([("MESSAGE", "one\ntwo"), ("ACTOR", "receiver")])
    assert encoded == b"MESSAGE\n" + struct.pack("<Q", 7) + b"one\ntwo\nACTOR=receiver\n"


_names = st.from_regex(r"[A-Z][A-Z0-9_]{0,30}", fullmatch=True)
_values = st.one_of(st.text(), st.binary())


@given(st.lists(st.tuples(_names, _values), max_size=8))
def test_encode_decode_round_trip(fields: list[tuple[str, str | bytes]]):
    expected = [
        (name, value if isinstance(value, bytes) else value.encode("utf-8", "backslashreplace"))
        for name, value in fields
    ]
    assert decode_journal_entry(encode_journal_entry(fields)) == expected


@pytest.mark.parametrize(
    ("key", "name"),
    [
        ("ACTOR", "ACTOR"),
        ("exchange", "EXCHANGE"),
        ("order-id", "ORDER_ID"),
        ("_trusted", "TRUSTED"),
        ("1st", "F_1ST"),
        ("é", None),
        ("___", None),
        ("x" * 80, "X" * 64),
    ],
)
def test_field_names_are_sanitised(key: str, name: str | None):
    assert journal_field_name(key) == name


@pytest.mark.parametrize(
    ("level", "priority"),
    [
        ("TRACE", 7),
        ("DEBUG", 7),
        ("INFO", 6),
        ("SUCCESS", 5),
        ("WARNING", 4),
        ("ERROR", 3),
        ("CRITICAL", 2),
    ],
)
def test_priority_mapping(level: str, priority: int):
    assert syslog_priority(logger.level(level).no) == priority


@pytest.mark.parametrize(("custom", "priority"), [(1, 7), (22, 6), (35, 4), (45, 3), (60, 2)])
def test_custom_levels_map_to_the_priority_below(custom: int, priority: int):
    assert syslog_priority(custom) == priority


def test_journal_stream_match_and_mismatch(short_dir: Path):
    with open(short_dir / "stream", "w") as stream:
        status = os.fstat(stream.fileno())
        fd = stream.fileno()
        assert journal_stream_matches(fd, {"JOURNAL_STREAM": f"{status.st_dev}:{status.st_ino}"})
        assert not journal_stream_matches(
            fd, {"JOURNAL_STREAM": f"{status.st_dev}:{status.st_ino + 1}"}
        )
        assert not journal_stream_matches(fd, {"JOURNAL_STREAM": "garbage"})
        assert not journal_stream_matches(fd, {})
    assert not journal_stream_matches(fd, {"JOURNAL_STREAM": "1:2"})  # closed fd


def test_mode_selection(journal: FakeJournal, short_dir: Path):
    assert configure_logging("INFO", journal_socket=journal.path, environ=stderr_is_journal()) == (
        "journal"
    )
    missing = str(short_dir / "no-socket")
    assert configure_logging("INFO", journal_socket=missing, environ=stderr_is_journal()) == (
        "stderr-prefixed"
    )
    assert configure_logging(
        "INFO", journal_socket=journal.path, environ={"JOURNAL_STREAM": "1:1"}
    ) == ("stderr-prefixed")
    assert configure_logging("INFO", journal_socket=journal.path, environ={}) == "terminal"


async def test_socket_path_comes_from_the_environment(journal: FakeJournal):
    environ = {**stderr_is_journal(), "TRADINGD_JOURNAL_SOCKET": journal.path}
    assert configure_logging("INFO", environ=environ) == "journal"
    logger.info("via the environment")
    await flush_logs()
    assert journal.receive()["MESSAGE"] == "via the environment"


async def test_journal_entries_carry_message_priority_code_and_bound_fields(
    journal: FakeJournal,
):
    configure_logging("TRACE", journal_socket=journal.path, environ=stderr_is_journal())
    log = logger.bind(ACTOR="receiver", EXCHANGE="binance", symbol="BTCUSDT")
    log.warning("order rejected\nreason: insufficient margin")
    line = sys._getframe().f_lineno - 1
    await flush_logs()
    fields = journal.receive()
    assert fields["MESSAGE"] == "order rejected\nreason: insufficient margin"
    assert fields["PRIORITY"] == "4"
    assert fields["SYSLOG_IDENTIFIER"] == "tradingd"
    assert fields["CODE_FILE"] == __file__
    assert fields["CODE_LINE"] == str(line)
    assert (
        fields["CODE_FUNC"] == "test_journal_entries_carry_message_priority_code_and_bound_fields"
    )
    assert fields["ACTOR"] == "receiver"
    assert fields["EXCHANGE"] == "binance"
    assert fields["SYMBOL"] == "BTCUSDT"


async def test_every_level_arrives_with_its_priority(journal: FakeJournal):
    configure_logging("TRACE", journal_socket=journal.path, environ=stderr_is_journal())
    for level in ("TRACE", "DEBUG", "INFO", "SUCCESS", "WARNING", "ERROR", "CRITICAL"):
        logger.log(level, level.lower())
    await flush_logs()
    received = {f["MESSAGE"]: f["PRIORITY"] for f in (journal.receive() for _ in range(7))}
    assert received == {
        "trace": "7",
        "debug": "7",
        "info": "6",
        "success": "5",
        "warning": "4",
        "error": "3",
        "critical": "2",
    }


async def test_exception_traceback_is_one_entry_without_local_values(journal: FakeJournal):
    configure_logging("INFO", journal_socket=journal.path, environ=stderr_is_journal())
    api_secret = "s3cr3t-value"
    try:
        raise FileNotFoundError(errno.ENOENT, "No such file", "/spool/" + str(len(api_secret)))
    except OSError:
        logger.bind(ACTOR="persister").exception("spool write failed")
    await flush_logs()
    fields = journal.receive()
    assert fields["PRIORITY"] == "3"
    assert fields["MESSAGE"].startswith("spool write failed\nTraceback (most recent call last):")
    assert "FileNotFoundError" in fields["MESSAGE"]
    assert "s3cr3t-value" not in fields["MESSAGE"]
    assert fields["ERRNO"] == "2"
    assert fields["ACTOR"] == "persister"


async def test_bound_secrets_are_redacted_and_reserved_fields_kept(journal: FakeJournal):
    configure_logging("INFO", journal_socket=journal.path, environ=stderr_is_journal())
    logger.bind(api_secret="hunter2", PRIORITY="0", MESSAGE="forged").info("real")
    await flush_logs()
    raw = journal.receive_raw()
    fields = dict(raw)
    assert fields["API_SECRET"] == b"[redacted]"
    assert [v for k, v in raw if k == "MESSAGE"] == [b"real"]
    assert [v for k, v in raw if k == "PRIORITY"] == [b"6"]


async def test_standard_library_logging_reaches_the_journal(journal: FakeJournal):
    configure_logging("INFO", journal_socket=journal.path, environ=stderr_is_journal())
    logging.getLogger("aiohttp.client").warning("connection reset by %s", "peer")
    logging.getLogger("aiohttp.client").debug("below the level")
    await flush_logs()
    fields = journal.receive()
    assert fields["MESSAGE"] == "connection reset by peer"
    assert fields["PRIORITY"] == "4"
    assert fields["LOGGER"] == "aiohttp.client"
    assert fields["CODE_FUNC"] == "test_standard_library_logging_reaches_the_journal"


def test_large_entry_goes_through_a_sealed_memfd(journal: FakeJournal):
    sink = JournalSink("tradingd", journal.path, send_buffer=4096)
    handler = logger.add(sink, format="{message}")
    try:
        big = "x" * 300_000 + "\nlast line"
        logger.bind(ACTOR="analyzer").info(big)
        small = "fits in a datagram"
        logger.info(small)
    finally:
        logger.remove(handler)
    first = journal.receive()
    assert journal.memfd_entries == 1
    assert first["MESSAGE"] == big
    assert first["ACTOR"] == "analyzer"
    assert journal.receive()["MESSAGE"] == small
    assert journal.memfd_entries == 1


def test_unreachable_journal_falls_back_to_prefixed_stderr(short_dir: Path):
    fallback = io.StringIO()
    sink = JournalSink("tradingd", str(short_dir / "gone"), fallback=fallback)
    handler = logger.add(sink, format="{message}")
    try:
        logger.error("first\nsecond")
        logger.info("third")
    finally:
        logger.remove(handler)
    lines = fallback.getvalue().splitlines()
    assert lines[0].startswith("<4>journald native logging to ")  # reported once
    assert lines[1:] == ["<3>first", "<3>second", "<6>third"]


class CountingSink(JournalSink):
    attempts = 0

    def send(self, payload: bytes) -> None:
        self.attempts += 1
        super().send(payload)


def fill_until_refused(sink: CountingSink, fallback: io.StringIO) -> int:
    """Log until a send fails; returns how many entries the journal accepted."""
    handler = logger.add(sink, format="{message}")
    try:
        for index in range(10_000):
            logger.info("entry {}", index)
            if fallback.getvalue():
                return index
    finally:
        logger.remove(handler)
    raise AssertionError("the journal socket never filled up")


def test_stuck_journal_costs_one_send_timeout_then_goes_to_stderr(journal: FakeJournal):
    journal.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # nobody reads it
    fallback = io.StringIO()
    sink = CountingSink(
        "tradingd", journal.path, send_timeout=0.05, retry_after=3600, fallback=fallback
    )
    accepted = fill_until_refused(sink, fallback)
    handler = logger.add(sink, format="{message}")
    try:
        for index in range(20):
            logger.warning("while stuck {}", index)
    finally:
        logger.remove(handler)
    assert sink.attempts == accepted + 1
    lines = fallback.getvalue().splitlines()
    assert "failed (TimeoutError)" in lines[0]
    assert lines[1] == f"<6>entry {accepted}"
    assert lines[2:] == [f"<4>while stuck {index}" for index in range(20)]


def test_journal_is_retried_after_a_failure(journal: FakeJournal):
    journal.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    fallback = io.StringIO()
    sink = CountingSink(
        "tradingd", journal.path, send_timeout=0.05, retry_after=0, fallback=fallback
    )
    accepted = fill_until_refused(sink, fallback)
    for _ in range(accepted):
        journal.receive()
    handler = logger.add(sink, format="{message}")
    try:
        logger.info("after recovery")
    finally:
        logger.remove(handler)
    assert journal.receive()["MESSAGE"] == "after recovery"
    assert fallback.getvalue().splitlines()[-1].endswith("resumed")


async def test_stderr_prefixed_mode_prefixes_every_line():
    stream = io.StringIO()
    mode = configure_logging("DEBUG", stream=stream, environ={"JOURNAL_STREAM": "1:1"})
    assert mode == "stderr-prefixed"
    logger.bind(ACTOR="executor", EXCHANGE="deribit").error("order failed\ndetails follow")
    logger.debug("debugging")
    await flush_logs()
    lines = stream.getvalue().splitlines()
    assert lines[0].startswith(f"<3>{__name__}:test_stderr_prefixed_mode_prefixes_every_line:")
    assert "[ACTOR=executor EXCHANGE=deribit] order failed" in lines[0]
    assert lines[1] == "<3>details follow"
    assert lines[2].startswith("<7>") and lines[2].endswith(" debugging")


async def test_terminal_mode_shows_the_bound_context():
    stream = io.StringIO()
    assert configure_logging("INFO", stream=stream, environ={}) == "terminal"
    logger.bind(ACTOR="receiver", EXCHANGE="binance").info("connected")
    logger.info("no context")
    await flush_logs()
    first, second = stream.getvalue().splitlines()
    assert "INFO" in first
    assert first.endswith("actor=receiver exchange=binance connected")
    assert "\x1b[" not in first  # not a TTY: no colour codes
    assert second.endswith("INFO     no context")


async def test_set_level_changes_the_threshold():
    stream = io.StringIO()
    configure_logging("INFO", stream=stream, environ={"JOURNAL_STREAM": "1:1"})
    logger.debug("hidden")
    set_level("debug")
    logger.debug("shown")
    set_level("WARNING")
    logger.info("hidden too")
    logger.warning("warned")
    await flush_logs()
    text = stream.getvalue()
    assert "hidden" not in text
    assert " shown" in text and " warned" in text
    assert logging.getLogger().level == logging.WARNING
    with pytest.raises(ValueError):
        set_level("LOUD")


async def test_set_level_loses_and_duplicates_nothing_under_concurrent_logging():
    stream = io.StringIO()
    configure_logging("INFO", stream=stream, environ={"JOURNAL_STREAM": "1:1"})
    count = 3000
    done = threading.Event()

    def produce() -> None:
        for index in range(count):
            logger.warning("n={}", index)
        done.set()

    producer = threading.Thread(target=produce)
    producer.start()
    switches = 0
    while not done.is_set() or switches < 8:
        set_level(("DEBUG", "WARNING", "TRACE", "INFO")[switches % 4])
        switches += 1
    producer.join()
    await flush_logs()
    numbers = [line.rsplit("n=", 1)[1] for line in stream.getvalue().splitlines()]
    assert sorted(map(int, numbers)) == list(range(count))


class GatedWriter:
    """An inner sink that blocks until the test opens the gate."""

    def __init__(self) -> None:
        self.gate = threading.Event()
        self.entered = threading.Event()
        self.written: list[str] = []
        self.notices: list[str] = []
        self.stopped = False

    def write(self, message: str) -> None:
        self.entered.set()
        assert self.gate.wait(5)
        self.written.append(str(message).rstrip("\n"))

    def notice(self, text: str) -> None:
        self.notices.append(text)

    def stop(self) -> None:
        self.stopped = True


def test_background_sink_drops_beyond_its_limit_and_says_so():
    inner = GatedWriter()
    background = BackgroundSink(inner, limit=3)
    handler = logger.add(background, format="{message}")
    try:
        logger.info("first")
        assert inner.entered.wait(5)  # the writer holds "first"; the queue is empty again
        for index in range(5):
            logger.info("queued {}", index)
        inner.gate.set()
        assert background.drain(5)
    finally:
        logger.remove(handler)
    assert inner.written == ["first", "queued 0", "queued 1", "queued 2"]
    assert inner.notices == ["2 log records dropped: the log writer fell behind"]
    assert inner.stopped


def test_background_sink_writes_everything_queued_when_stopped():
    inner = GatedWriter()
    handler = logger.add(BackgroundSink(inner), format="{message}")
    for index in range(100):
        logger.info("n={}", index)
    inner.gate.set()
    logger.remove(handler)  # what loguru's exit hook does
    assert inner.written == [f"n={index}" for index in range(100)]


def test_nothing_is_lost_at_interpreter_exit():
    program = """
import sys
from loguru import logger
from tradingd.logs import configure_logging
assert configure_logging("INFO", environ={"JOURNAL_STREAM": "1:1"}) == "stderr-prefixed"
for index in range(2000):
    logger.info("n={}", index)
sys.exit(3)
"""
    result = subprocess.run(
        [sys.executable, "-c", program], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 3, result.stderr[-2000:]
    lines = result.stderr.splitlines()
    assert len(lines) == 2000
    assert lines[-1].startswith("<6>") and lines[-1].endswith(" n=1999")


def test_configure_rejects_unknown_levels():
    with pytest.raises(ValueError):
        configure_logging("verbose", environ={})
    with pytest.raises(RuntimeError):
        set_level("INFO")


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_a_log_line_erases_the_progress_bar_under_it() -> None:
    """Issue 14: the bootstrap's bar was left drawn over (after) shorter log lines."""
    from tradingd.progress import ProgressReporter
    from tradingd.sdnotify import Notifier

    terminal = _Terminal()
    configure_logging("INFO", stream=terminal, environ={})
    try:
        bar = ProgressReporter(notifier=Notifier(environ={}), interactive=True, stream=terminal)
        bar.add("BTCUSDT 1m", 100)
        bar.tick()
        logger.info("short")
    finally:
        configure_logging("INFO", environ={})
    drawn, _, after = terminal.getvalue().partition("bootstrap [")
    assert drawn == "\r\x1b[K"
    line = after.split("\r", 1)[1]  # the bar leaves the cursor at column 0
    assert line.startswith("\x1b[K") and "short" in line


def test_a_log_file_gets_no_terminal_escapes() -> None:
    piped = io.StringIO()
    configure_logging("INFO", stream=piped, environ={})
    try:
        logger.info("plain")
    finally:
        configure_logging("INFO", environ={})
    assert "\x1b" not in piped.getvalue() and "plain" in piped.getvalue()
