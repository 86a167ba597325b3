"""Logging set-up: loguru, routed to journald natively when systemd runs us.

Three modes, chosen once by ``configure_logging()``:

- ``journal``: stderr is the journal (``$JOURNAL_STREAM`` matches ``fstat(2)``) and the journal
  socket exists. Each record is one datagram in the journald native protocol, so a multi-line
  message or traceback stays one entry and every ``logger.bind(...)`` key becomes a field:
  ``journalctl -u tradingd ACTOR=receiver EXCHANGE=binance``.
- ``stderr-prefixed``: ``$JOURNAL_STREAM`` is set but does not match, or there is no socket.
  Plain lines on stderr, each prefixed ``<N>`` so journald still records the priority.
- ``terminal``: anything else; readable (coloured on a TTY) lines with the bound context.

The two journal modes write from a writer thread (``BackgroundSink``), so a slow journald
cannot stall the event loop. Call ``await flush_logs()`` before exiting; loguru's exit hook
also writes whatever is still queued. Tracebacks never include local variable values
(``diagnose=False``) because they could hold secrets; bound values whose key names a secret
are redacted.
"""

from __future__ import annotations

import asyncio
import errno
import fcntl
import inspect
import logging
import os
import re
import socket
import stat
import struct
import sys
import threading
import time
import traceback
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from types import FrameType
from typing import TYPE_CHECKING, Any, Literal, Protocol, TextIO

from loguru import logger

if TYPE_CHECKING:  # loguru's record types exist only in its stub
    from loguru import Message, Record

LogMode = Literal["journal", "stderr-prefixed", "terminal"]

JOURNAL_SOCKET = "/run/systemd/journal/socket"
JOURNAL_SOCKET_ENV = "TRADINGD_JOURNAL_SOCKET"
JOURNAL_STREAM_ENV = "JOURNAL_STREAM"
LEVELS = ("TRACE", "DEBUG", "INFO", "SUCCESS", "WARNING", "ERROR", "CRITICAL")
# The fields our code binds; the terminal format shows these, the other modes every extra.
CONTEXT_FIELDS = ("ACTOR", "EXCHANGE", "SYMBOL", "STATE")
# Fields the sink itself sets; a bound extra of the same name is dropped rather than duplicated.
RESERVED_FIELDS = frozenset(
    {"MESSAGE", "PRIORITY", "SYSLOG_IDENTIFIER", "CODE_FILE", "CODE_LINE", "CODE_FUNC"}
)
REDACTED = "[redacted]"
_SECRET_KEY = re.compile(r"SECRET|PASSWORD|PASSWD|TOKEN|PRIVATE_KEY|API_KEY|CREDENTIAL")
_FIELD_CHARS = re.compile(r"[^A-Z0-9_]")
_MAX_FIELD_NAME = 64
_SEALS = fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW | fcntl.F_SEAL_WRITE | fcntl.F_SEAL_SEAL


def syslog_priority(levelno: int) -> int:
    """The syslog priority for a loguru level number (custom levels fall in between)."""
    if levelno >= 50:
        return 2  # CRITICAL -> crit
    if levelno >= 40:
        return 3  # ERROR -> err
    if levelno >= 30:
        return 4  # WARNING -> warning
    if levelno >= 25:
        return 5  # SUCCESS -> notice
    if levelno >= 20:
        return 6  # INFO -> info
    return 7  # DEBUG, TRACE -> debug


_field_names: dict[str, str | None] = {}


def journal_field_name(key: str) -> str | None:
    """``key`` as a valid client-side journal field name, or None when nothing usable is left.

    journald ignores names that are not ``[A-Z0-9_]``, start with ``_`` (trusted fields) or a
    digit, or exceed 64 characters.
    """
    cached = _field_names.get(key)
    if cached is not None or key in _field_names:
        return cached
    name: str | None = _FIELD_CHARS.sub("_", key.upper()).lstrip("_")
    if name and name[0].isdigit():
        name = "F_" + name
    name = name[:_MAX_FIELD_NAME] if name else None
    if len(_field_names) < 4096:
        _field_names[key] = name
    return name


def is_secret_field(name: str) -> bool:
    return _SECRET_KEY.search(name.upper()) is not None


def encode_journal_entry(fields: Iterable[tuple[str, str | bytes]]) -> bytes:
    """One journal entry in the native protocol.

    A value containing a newline uses the binary-safe form
    ``NAME\\n<little-endian uint64 length><value>\\n``; any other is ``NAME=value\\n``.
    """
    parts: list[bytes] = []
    for name, value in fields:
        data = value if isinstance(value, bytes) else value.encode("utf-8", "backslashreplace")
        key = name.encode("ascii")
        if b"\n" in data:
            parts += (key, b"\n", struct.pack("<Q", len(data)), data, b"\n")
        else:
            parts += (key, b"=", data, b"\n")
    return b"".join(parts)


def journal_stream_matches(fd: int = 2, environ: Mapping[str, str] | None = None) -> bool:
    """Whether ``fd`` is the journal stream systemd connected (``$JOURNAL_STREAM`` = dev:ino)."""
    value = (os.environ if environ is None else environ).get(JOURNAL_STREAM_ENV, "")
    try:
        device, inode = (int(part) for part in value.split(":", 1))
        status = os.fstat(fd)
    except (ValueError, OSError):
        return False
    return (status.st_dev, status.st_ino) == (device, inode)


def is_socket(path: str) -> bool:
    try:
        return stat.S_ISSOCK(os.stat(path).st_mode)
    except OSError:
        return False


def _record_text(message: Message) -> str:
    # The handler format is "{message}"; loguru appends "\n" and the formatted traceback.
    return str(message).rstrip("\n")


def _context_pairs(extra: Mapping[Any, Any]) -> list[tuple[str, str]]:
    pairs = []
    for key, value in extra.items():
        name = journal_field_name(str(key))
        if name is None:
            continue
        pairs.append((name, REDACTED if is_secret_field(name) else str(value)))
    return pairs


def _prefixed_lines(priority: int, text: str) -> str:
    prefix = f"<{priority}>"
    return "".join(f"{prefix}{line}\n" for line in text.split("\n"))


class JournalSink:
    """A loguru sink speaking the journald native protocol over a datagram socket.

    An entry too large for one datagram goes as a sealed memfd passed with ``SCM_RIGHTS``. If
    journald cannot be reached the entry is written ``<N>``-prefixed to ``fallback`` instead.
    """

    def __init__(
        self,
        identifier: str = "tradingd",
        socket_path: str = JOURNAL_SOCKET,
        *,
        send_buffer: int = 8 << 20,
        send_timeout: float = 1.0,
        retry_after: float = 10.0,
        fallback: TextIO | None = None,
    ) -> None:
        self.identifier = identifier
        self.socket_path = socket_path
        self._send_buffer = send_buffer
        self._send_timeout = send_timeout
        self._retry_after = retry_after
        self._fallback = fallback
        self._socket: socket.socket | None = None
        self._lock = threading.Lock()
        self._reported: set[str] = set()
        self._failing_until: float | None = None

    def fields(self, message: Message) -> list[tuple[str, str | bytes]]:
        record = message.record
        fields: list[tuple[str, str | bytes]] = [
            ("MESSAGE", _record_text(message)),
            ("PRIORITY", str(syslog_priority(record["level"].no))),
            ("SYSLOG_IDENTIFIER", self.identifier),
            ("CODE_FILE", record["file"].path),
            ("CODE_LINE", str(record["line"])),
            ("CODE_FUNC", record["function"]),
        ]
        if record["name"]:
            fields.append(("LOGGER", record["name"]))
        error = record["exception"].value if record["exception"] is not None else None
        if (
            isinstance(error, OSError)
            and error.errno is not None
            and "ERRNO" not in record["extra"]
        ):
            fields.append(("ERRNO", str(error.errno)))
        fields += [
            pair for pair in _context_pairs(record["extra"]) if pair[0] not in RESERVED_FIELDS
        ]
        return fields

    def write(self, message: Message) -> None:
        # Never log through loguru in here: the sink runs inside loguru's handler.
        stream = self._fallback or sys.stderr
        now = time.monotonic()
        if self._failing_until is None or now >= self._failing_until:
            try:
                self.send(encode_journal_entry(self.fields(message)))
            except OSError as exc:
                # A stuck or absent journald must not cost a send timeout per record: go
                # straight to stderr for a while, then try the socket again.
                self._failing_until = now + self._retry_after
                self._note_failure(stream, exc)
            else:
                if self._failing_until is not None:
                    self._failing_until = None
                    stream.write(f"<5>journald native logging to {self.socket_path} resumed\n")
                return
        priority = syslog_priority(message.record["level"].no)
        stream.write(_prefixed_lines(priority, _record_text(message)))
        stream.flush()

    def notice(self, text: str) -> None:
        stream = self._fallback or sys.stderr
        stream.write(f"<4>{text}\n")
        stream.flush()

    def send(self, payload: bytes) -> None:
        """Send one encoded entry, through a memfd when it is too large for a datagram."""
        with self._lock:
            sock = self._connect()
            try:
                sock.sendto(payload, self.socket_path)
            except OSError as exc:
                if exc.errno not in (errno.EMSGSIZE, errno.ENOBUFS):
                    raise
                self._send_memfd(sock, payload)

    def stop(self) -> None:
        with self._lock:
            if self._socket is not None:
                self._socket.close()
                self._socket = None

    def _connect(self) -> socket.socket:
        if self._socket is None:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
            try:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, self._send_buffer)
            except OSError:
                pass  # the kernel caps it at net.core.wmem_max; the memfd path covers the rest
            sock.settimeout(self._send_timeout)
            self._socket = sock
        return self._socket

    def _send_memfd(self, sock: socket.socket, payload: bytes) -> None:
        fd = os.memfd_create("journal-entry", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
        try:
            view = memoryview(payload)
            while view:
                view = view[os.write(fd, view) :]
            fcntl.fcntl(fd, fcntl.F_ADD_SEALS, _SEALS)
            rights = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, struct.pack("i", fd))]
            sock.sendmsg([], rights, 0, self.socket_path)
        finally:
            os.close(fd)

    def _note_failure(self, stream: TextIO, exc: OSError) -> None:
        name = errno.errorcode.get(exc.errno or 0, type(exc).__name__)
        if name in self._reported:
            return
        self._reported.add(name)
        stream.write(
            f"<4>journald native logging to {self.socket_path} failed ({name}); "
            "writing to stderr instead\n"
        )


class PrefixedStderrSink:
    """Plain lines for journald's stream transport, each prefixed ``<N>`` with its priority."""

    def __init__(self, stream: TextIO | None = None) -> None:
        self._stream = stream

    def notice(self, text: str) -> None:
        stream = self._stream or sys.stderr
        stream.write(f"<4>{text}\n")
        stream.flush()

    def write(self, message: Message) -> None:
        record = message.record
        context = " ".join(f"{name}={value}" for name, value in _context_pairs(record["extra"]))
        where = f"{record['name']}:{record['function']}:{record['line']}"
        text = f"{where} [{context}] " if context else f"{where} "
        stream = self._stream or sys.stderr
        stream.write(
            _prefixed_lines(syslog_priority(record["level"].no), text + _record_text(message))
        )
        stream.flush()


# Erase to the end of the line: a progress bar (tradingd.progress) may be drawn on it, with the
# cursor left at column 0; a shorter log line must not leave the bar's tail behind it.
ERASE_LINE = "\x1b[K"


def erasing_terminal_format(record: Record) -> str:
    return ERASE_LINE + terminal_format(record)


def terminal_format(record: Record) -> str:
    """A loguru format template: time, level, bound context, message."""
    context = " ".join(
        f"{name.lower()}={{extra[{name}]}}" for name in CONTEXT_FIELDS if name in record["extra"]
    )
    shown = f" <cyan>{context}</cyan>" if context else ""
    return (
        "<green>{time:HH:mm:ss.SSS}</green> <level>{level: <8}</level>"
        + shown
        + " <level>{message}</level>\n{exception}"
    )


class _RecordWriter(Protocol):
    def write(self, message: Message) -> None: ...

    def notice(self, text: str) -> None: ...


class BackgroundSink:
    """Hands records to a writer thread, so a slow journald never stalls the event loop.

    The caller pays a deque append (loguru's own ``enqueue=True`` pickles every record through
    a pipe, which costs the caller several times more). Beyond ``limit`` waiting records new
    ones are counted and dropped rather than blocking the loop; the count is reported.
    ``stop()`` writes everything queued; loguru calls it on ``logger.remove()`` and at exit.
    Several handlers can share one writer through ``handler_sink()``; it stops with the last.
    """

    def __init__(self, sink: _RecordWriter, *, limit: int = 100_000) -> None:
        self._sink = sink
        self._limit = limit
        self._pending: deque[Message] = deque()
        self._dropped = 0
        self._queued = 0
        self._written = 0
        self._users = 0
        self._stopping = False
        self._lock = threading.Lock()
        self._work = threading.Condition(self._lock)
        self._done = threading.Condition(self._lock)
        self._thread = threading.Thread(target=self._run, name="tradingd-log-writer", daemon=True)
        self._thread.start()

    def write(self, message: Message) -> None:
        with self._lock:
            if not self._stopping:
                if len(self._pending) >= self._limit:
                    self._dropped += 1
                else:
                    self._pending.append(message)
                    self._queued += 1
                    self._work.notify()
                return
        self._sink.write(message)  # after stop() (late exit hooks): write it directly

    def drain(self, timeout: float | None = None) -> bool:
        """Wait until every record queued so far is written; False on timeout.

        Not named ``flush``: loguru calls a sink's ``flush()`` after every write.
        """
        with self._lock:
            target = self._queued
            return self._done.wait_for(lambda: self._written >= target, timeout)

    def stop(self) -> None:
        with self._lock:
            if self._stopping:
                return
            self._stopping = True
            self._work.notify()
        self._thread.join()
        stop = getattr(self._sink, "stop", None)
        if callable(stop):
            stop()

    def handler_sink(self) -> _SharedWriter:
        with self._lock:
            self._users += 1
        return _SharedWriter(self)

    def _release(self) -> None:
        with self._lock:
            self._users -= 1
            last = self._users == 0
        if last:
            self.stop()

    def _run(self) -> None:
        while True:
            with self._lock:
                self._work.wait_for(lambda: bool(self._pending) or self._stopping)
                batch, self._pending = self._pending, deque()
                dropped, self._dropped = self._dropped, 0
                if not batch and self._stopping:
                    return
            for message in batch:
                try:
                    self._sink.write(message)
                except Exception:
                    traceback.print_exc(file=sys.stderr)
            if dropped:
                self._sink.notice(f"{dropped} log records dropped: the log writer fell behind")
            with self._lock:
                self._written += len(batch)
                self._done.notify_all()


class _SharedWriter:
    """One loguru handler's view of a shared ``BackgroundSink``."""

    def __init__(self, writer: BackgroundSink) -> None:
        self.write = writer.write
        self.stop = writer._release


class _InterceptHandler(logging.Handler):
    """Routes the standard library's logging (asyncio, aiohttp, asyncpg) into loguru."""

    def emit(self, record: logging.LogRecord) -> None:
        level: str | int
        try:
            level = logger.level(record.levelname).name
        except ValueError:
            level = record.levelno
        # Report the caller of the logging call, not this handler or logging's internals.
        frame: FrameType | None = inspect.currentframe()
        depth = 0
        while frame is not None and (depth == 0 or frame.f_code.co_filename == logging.__file__):
            frame, depth = frame.f_back, depth + 1
        logger.opt(depth=depth, exception=record.exc_info).bind(LOGGER=record.name).log(
            level, record.getMessage()
        )


class _Band:
    """The level range [low, high) one loguru handler is responsible for."""

    def __init__(self, state: _State, low: int, high: float) -> None:
        self.state = state
        self.low = low
        self.high = high
        self.handler_id = -1

    def accepts(self, record: Record) -> bool:
        return self.state.threshold <= record["level"].no < self.high


class _State:
    def __init__(self, mode: LogMode, add: Callable[[int, Callable[[Record], bool]], int]):
        self.mode = mode
        self.add = add
        self.threshold = 0
        self.bands: list[_Band] = []
        self.writer: BackgroundSink | None = None


_state: _State | None = None
_state_lock = threading.Lock()

_STDLIB_LEVELS = {
    "TRACE": logging.DEBUG,
    "DEBUG": logging.DEBUG,
    "INFO": logging.INFO,
    "SUCCESS": logging.INFO,
    "WARNING": logging.WARNING,
    "ERROR": logging.ERROR,
    "CRITICAL": logging.CRITICAL,
}


def _normalise_level(level: str) -> str:
    name = level.strip().upper()
    if name not in LEVELS:
        raise ValueError(f"unknown log level {level!r}; expected one of {', '.join(LEVELS)}")
    return name


def configure_logging(
    level: str,
    *,
    identifier: str = "tradingd",
    journal_socket: str | None = None,
    stream: TextIO | None = None,
    environ: Mapping[str, str] | None = None,
) -> LogMode:
    """Replace every loguru handler with the one sink this environment calls for.

    ``journal_socket`` (else ``$TRADINGD_JOURNAL_SOCKET``, else journald's) is where native
    entries go; ``stream`` (default: ``sys.stderr`` at write time) is the plain-text output.
    Returns the mode chosen. Standard-library logging is routed through loguru too.
    """
    global _state
    level = _normalise_level(level)
    env = os.environ if environ is None else environ
    socket_path = journal_socket or env.get(JOURNAL_SOCKET_ENV) or JOURNAL_SOCKET
    mode: LogMode
    if journal_stream_matches(2, env) and is_socket(socket_path):
        mode = "journal"
    elif JOURNAL_STREAM_ENV in env:
        mode = "stderr-prefixed"
    else:
        mode = "terminal"

    writer: BackgroundSink | None = None
    if mode == "journal":
        writer = BackgroundSink(JournalSink(identifier, socket_path, fallback=stream))
    elif mode == "stderr-prefixed":
        writer = BackgroundSink(PrefixedStderrSink(stream))

    def add(low: int, keep: Callable[[Record], bool]) -> int:
        common: dict[str, Any] = {"level": low, "filter": keep, "backtrace": False}
        # diagnose=False: tracebacks must not show local values, they could be secrets.
        if writer is None:
            # Interactive: immediate, in order with print() and tracebacks; no writer thread.
            target = stream or sys.stderr
            on_tty = getattr(target, "isatty", lambda: False)()
            return logger.add(
                target,
                format=erasing_terminal_format if on_tty else terminal_format,
                diagnose=False,
                **common,
            )
        return logger.add(writer.handler_sink(), format="{message}", diagnose=False, **common)

    with _state_lock:
        logger.remove()
        _state = _State(mode, add)
        _state.writer = writer
        _apply_level(_state, logger.level(level).no)
    logging.basicConfig(handlers=[_InterceptHandler()], level=_STDLIB_LEVELS[level], force=True)
    logging.captureWarnings(True)
    return mode


def set_level(level: str) -> None:
    """Change the threshold of the configured sinks (SIGHUP reload).

    Never moves a level range from one handler to another while records are in flight, so
    no record is lost or written twice.
    """
    level = _normalise_level(level)
    with _state_lock:
        if _state is None:
            raise RuntimeError("configure_logging() has not been called")
        _apply_level(_state, logger.level(level).no)
    logging.getLogger().setLevel(_STDLIB_LEVELS[level])


def _apply_level(state: _State, threshold: int) -> None:
    # Each handler owns a fixed band of levels and bands never overlap, so every record is
    # decided by exactly one filter. Lowering the level adds a handler for the newly
    # uncovered band (loguru's cheap per-call level check stays effective); raising it
    # removes bands that lie wholly below the threshold.
    lowest = min((band.low for band in state.bands), default=None)
    if lowest is None or threshold < lowest:
        band = _Band(state, threshold, lowest if lowest is not None else float("inf"))
        band.handler_id = state.add(threshold, band.accepts)
        state.bands.append(band)
    state.threshold = threshold
    for band in [band for band in state.bands if band.high <= threshold]:
        state.bands.remove(band)
        logger.remove(band.handler_id)


def _drain_all() -> None:
    with _state_lock:
        writer = _state.writer if _state is not None else None
    if writer is not None:
        writer.drain()


async def flush_logs() -> None:
    """Wait until every record logged so far has been written, without blocking the loop.

    Call it last before exiting; loguru's exit hook also writes what is queued.
    """
    await asyncio.to_thread(_drain_all)
    # Handlers added elsewhere: enqueue=True ones block in complete(), so keep it off the loop.
    completer = await asyncio.to_thread(logger.complete)
    await completer
