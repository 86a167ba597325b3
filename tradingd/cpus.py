"""Which CPUs the daemon and its embedded servers run on (``daemon.cpus``; Linux affinity).

The event loop is one thread. When PostgreSQL, Redis or anything else shares its core, a tick
that arrives while the other process holds the core waits for the kernel to switch back: at
50,000 msgs/s on two cores that wait, not the loop's own work, is most of the tick-to-strategy
tail (BENCHMARKS.md). ``daemon.cpus`` gives the daemon cores of its own: every thread of the
daemon runs only there, and the embedded servers it starts only on the CPUs it may use that are
not listed. A PostgreSQL the daemon did not start is the operator's to place (systemd's
``CPUAffinity=``, README "Latency: a core of its own").
"""

from __future__ import annotations

import os
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
