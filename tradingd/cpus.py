"""Which CPUs the daemon and its embedded servers run on (``daemon.cpus``; Linux affinity), and
how long the event loop may hold a core before another task gets it (``daemon.loop_slice_us``).

The event loop is one thread. When PostgreSQL, Redis or anything else shares its core, a tick
that arrives while the other process holds the core waits for the kernel to switch back: at
50,000 msgs/s on two cores that wait, not the loop's own work, is most of the tick-to-strategy
tail (BENCHMARKS.md). ``daemon.cpus`` gives the daemon cores of its own: every thread of the
daemon runs only there, and the embedded servers it starts only on the CPUs it may use that are
not listed. A PostgreSQL the daemon did not start is the operator's to place (systemd's
``CPUAffinity=``, README "Latency: a core of its own").

On shared cores, the loop thread asks for a short scheduler slice (Linux 6.12+, EEVDF): a task
with a shorter slice has an earlier deadline, so a frame's arrival wakes the loop ahead of a
PostgreSQL backend in the middle of its slice instead of after it. Only the loop thread: the
request is reset in every thread and process it starts.
"""

from __future__ import annotations

import ctypes
import os
import platform
import struct
from collections.abc import Iterable, Sequence, Set
from pathlib import Path
from typing import NamedTuple

from tradingd.config import Config, ConfigError


class CpuLayout(NamedTuple):
    daemon: frozenset[int]
    # Where the embedded servers run: the CPUs this process may use that the daemon does not.
    servers: frozenset[int]


def cpu_layout(cpus: Sequence[int], available: Set[int]) -> CpuLayout | None:
    """The layout ``daemon.cpus`` asks for on a process allowed ``available``; None when it asks
    for none. ValueError, worded for the operator, when it cannot be had here."""
    if not cpus:
        return None
    wanted = frozenset(cpus)
    missing = wanted - available
    if missing:
        raise ValueError(
            f"expected CPUs this process may run on ({describe_cpus(available)}), "
            f"found {describe_cpus(missing)}"
        )
    servers = frozenset(available) - wanted
    if not servers:
        raise ValueError(
            f"expected at least one of the CPUs this process may run on "
            f"({describe_cpus(available)}) left out for PostgreSQL, Redis and the system, "
            "found every one listed"
        )
    return CpuLayout(wanted, servers)


def configured_layout(config: Config, path: Path | str) -> CpuLayout | None:
    """``cpu_layout`` of ``daemon.cpus`` on this machine, as a ``ConfigError`` (exit 78) when it
    cannot be had: start-up and ``config check`` both ask here."""
    try:
        return cpu_layout(config.daemon.cpus, available_cpus())
    except ValueError as exc:
        raise ConfigError(path, "daemon.cpus", str(exc)) from None


def pin_daemon(layout: CpuLayout, path: Path | str) -> None:
    """This process to ``layout.daemon``; a ``ConfigError`` when the system forbids it (a
    systemd unit filtering ``@resources`` without taking ``sched_setaffinity`` back)."""
    try:
        pin_this_process(layout.daemon)
    except PermissionError as exc:
        raise ConfigError(
            path,
            "daemon.cpus",
            f"expected to be allowed to set CPU affinity, found it refused ({exc.strerror}); "
            "a systemd unit that filters @resources needs SystemCallFilter=sched_setaffinity",
        ) from None


def available_cpus() -> frozenset[int]:
    """The CPUs this thread may run on (systemd's ``CPUAffinity=`` and cgroups narrow them)."""
    return frozenset(os.sched_getaffinity(0))


def pin_process(pid: int, cpus: Iterable[int]) -> None:
    """Every thread of process ``pid`` to ``cpus`` (affinity is per thread: a process's own
    threads keep theirs when only its first thread is moved). Threads it starts later inherit
    their creator's."""
    allowed = frozenset(cpus)
    for tid in _threads(pid):
        try:
            os.sched_setaffinity(tid, allowed)
        except ProcessLookupError:
            continue  # the thread ended meanwhile


def pin_this_process(cpus: Iterable[int]) -> None:
    pin_process(os.getpid(), cpus)


def process_cpus(pid: int) -> dict[int, frozenset[int]]:
    """Each thread of ``pid`` with the CPUs it may run on."""
    threads: dict[int, frozenset[int]] = {}
    for tid in _threads(pid):
        try:
            threads[tid] = frozenset(os.sched_getaffinity(tid))
        except ProcessLookupError:
            continue
    return threads


def describe_cpus(cpus: Iterable[int]) -> str:
    """``{0, 1, 2, 5}`` -> ``"0-2,5"``, the kernel's own list format."""
    ranges: list[str] = []
    ordered = sorted(cpus)
    start = previous = None
    for cpu in [*ordered, None]:
        if cpu is not None and previous is not None and cpu == previous + 1:
            previous = cpu
            continue
        if start is not None:
            ranges.append(str(start) if start == previous else f"{start}-{previous}")
        start = previous = cpu
    return ",".join(ranges) or "none"


def _threads(pid: int) -> list[int]:
    try:
        return [int(tid) for tid in os.listdir(f"/proc/{pid}/task")]
    except FileNotFoundError:
        raise ProcessLookupError(pid) from None


# sched_setattr(2) / sched_getattr(2): no wrapper in Python's os module.
_SCHED_SETATTR: dict[str, int] = {"x86_64": 314, "aarch64": 274}
_SCHED_GETATTR: dict[str, int] = {"x86_64": 315, "aarch64": 275}
# struct sched_attr, SCHED_ATTR_SIZE_VER0: size, policy, flags, nice, priority, runtime,
# deadline, period.
_SCHED_ATTR = struct.Struct("=IIQiIQQQ")
_SCHED_OTHER = 0
_SCHED_FLAG_RESET_ON_FORK = 0x01


def request_loop_slice(slice_us: int) -> int:
    """Ask that the calling thread be scheduled with a slice of ``slice_us`` (the kernel keeps
    it within 100 us..100 ms); returns the slice the kernel then reports, in microseconds (0:
    the kernel has no per-task slice, before Linux 6.12). OSError when refused (a seccomp
    filter, an unknown architecture) or when the thread is not an ordinary (SCHED_OTHER) one."""
    _, policy, _, nice, _, _, _, _ = _sched_getattr(0)
    if policy != _SCHED_OTHER:
        raise OSError(f"the loop thread runs under scheduling policy {policy}, left as it is")
    request = _SCHED_ATTR.pack(
        _SCHED_ATTR.size, policy, _SCHED_FLAG_RESET_ON_FORK, nice, 0, slice_us * 1000, 0, 0
    )
    _syscall(_SCHED_SETATTR, "sched_setattr", 0, ctypes.c_char_p(request), 0)
    return loop_slice_us(0)


def loop_slice_us(tid: int) -> int:
    """The slice thread ``tid`` (0: this one) is scheduled with, in microseconds (0: none)."""
    runtime_ns: int = _sched_getattr(tid)[5]
    return runtime_ns // 1000


def _sched_getattr(tid: int) -> tuple[int, ...]:
    buffer = ctypes.create_string_buffer(_SCHED_ATTR.size)
    _syscall(_SCHED_GETATTR, "sched_getattr", tid, buffer, _SCHED_ATTR.size, 0)
    return _SCHED_ATTR.unpack(buffer.raw)


def _syscall(numbers: dict[str, int], name: str, *args: object) -> None:
    machine = platform.machine()
    if machine not in numbers:
        raise OSError(f"{name}: no system call number known for {machine}")
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.syscall(numbers[machine], *args) != 0:
        error = ctypes.get_errno()
        raise OSError(error, f"{name}: {os.strerror(error)}")
