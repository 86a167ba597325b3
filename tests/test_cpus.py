"""``daemon.cpus``: the layout it asks for, how it is worded, and pinning a live process."""

from __future__ import annotations

import errno
import itertools
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tradingd.config import ConfigError
from tradingd.cpus import (
    CpuLayout,
    cpu_layout,
    describe_cpus,
    loop_slice_us,
    pin_daemon,
    pin_process,
    process_cpus,
    request_loop_slice,
)

cpu_sets = st.frozensets(st.integers(0, 300), min_size=1, max_size=40)


def kernel_list(text: str) -> set[int]:
    """The kernel's CPU list format ("0-2,5"), as /proc/<pid>/status prints it."""
    cpus: set[int] = set()
    for part in text.split(","):
        first, _, last = part.partition("-")
        cpus.update(range(int(first), int(last or first) + 1))
    return cpus


@given(cpu_sets)
def test_described_cpus_read_back_in_the_kernels_format(cpus: frozenset[int]) -> None:
    text = describe_cpus(cpus)
    assert kernel_list(text) == cpus
    # Ranges are maximal: no two parts could have been one.
    parts = [sorted(kernel_list(part)) for part in text.split(",")]
    assert all(a[-1] + 1 < b[0] for a, b in itertools.pairwise(parts))


def test_described_cpus_examples() -> None:
    assert describe_cpus({0, 1, 2, 5}) == "0-2,5"
    assert describe_cpus({3}) == "3"
    assert describe_cpus([]) == "none"


@given(cpu_sets, st.data())
def test_a_layout_splits_the_available_cpus(available: frozenset[int], data: st.DataObject) -> None:
    listed = data.draw(st.lists(st.sampled_from(sorted(available)), unique=True, min_size=1))
    if set(listed) == available:
        with pytest.raises(ValueError, match="found every one listed"):
            cpu_layout(listed, available)
        return
    layout = cpu_layout(listed, available)
    assert layout is not None
    assert layout.daemon == frozenset(listed)
    assert layout.daemon | layout.servers == available
    assert not layout.daemon & layout.servers


def test_no_cpus_listed_is_no_layout() -> None:
    assert cpu_layout([], {0, 1}) is None


def test_a_cpu_the_process_may_not_use_is_named() -> None:
    with pytest.raises(ValueError) as caught:
        cpu_layout([1, 4, 5], {0, 1, 2})
    assert str(caught.value) == "expected CPUs this process may run on (0-2), found 4-5"


def test_pinning_moves_every_thread_of_a_live_process(tmp_path: Path) -> None:
    available = os.sched_getaffinity(0)
    target = frozenset({max(available)})
    # A child with a second thread started before the pinning: affinity is per thread.
    script = (
        "import sys, threading\n"
        "threading.Thread(target=sys.stdin.read, daemon=True).start()\n"
        "print(flush=True)\n"
        "sys.stdin.read()\n"
    )
    child = subprocess.Popen(
        [sys.executable, "-c", script], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        assert child.stdout is not None and child.stdin is not None
        child.stdout.readline()
        before = process_cpus(child.pid)
        assert len(before) == 2 and set(before.values()) == {frozenset(available)}
        pin_process(child.pid, target)
        after = process_cpus(child.pid)
        assert after.keys() == before.keys()
        assert set(after.values()) == {target}
        status = Path(f"/proc/{child.pid}/status").read_text()
        allowed = next(line for line in status.splitlines() if line.startswith("Cpus_allowed_list"))
        assert kernel_list(allowed.split()[1]) == target
    finally:
        child.kill()
        child.wait()


def test_a_process_that_is_gone_is_reported() -> None:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    with pytest.raises(ProcessLookupError):
        pin_process(child.pid, {0})


def test_pinning_the_system_refuses_is_a_configuration_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def refused(tid: int, cpus: object) -> None:
        raise PermissionError(errno.EPERM, os.strerror(errno.EPERM))

    monkeypatch.setattr(os, "sched_setaffinity", refused)
    with pytest.raises(ConfigError) as caught:
        pin_daemon(CpuLayout(frozenset({1}), frozenset({0})), "/etc/tradingd/tradingd.toml")
    assert str(caught.value) == (
        "/etc/tradingd/tradingd.toml: daemon.cpus: expected to be allowed to set CPU affinity, "
        "found it refused (Operation not permitted); a systemd unit that filters @resources "
        "needs SystemCallFilter=sched_setaffinity"
    )


def test_the_loop_slice_is_the_calling_threads_alone() -> None:
    if loop_slice_us(0) == 0:
        pytest.skip("this kernel has no per-task slice (Linux 6.12+)")
    seen: dict[str, int] = {}

    def loop_thread() -> None:
        seen["before"] = loop_slice_us(0)
        seen["granted"] = request_loop_slice(100)
        helper = threading.Thread(target=lambda: seen.setdefault("helper", loop_slice_us(0)))
        helper.start()
        helper.join()
        child = subprocess.run(
            [
                sys.executable,
                "-c",
                "from tradingd.cpus import loop_slice_us; print(loop_slice_us(0))",
            ],
            capture_output=True,
            text=True,
            check=True,
        )
        seen["child"] = int(child.stdout)

    # A thread of its own: the test process's threads keep their slice.
    thread = threading.Thread(target=loop_thread)
    thread.start()
    thread.join()
    assert seen["granted"] == 100
    assert seen["before"] != 100
    # Neither a thread nor a process started from the loop thread inherits it.
    assert seen["helper"] == seen["before"]
    assert seen["child"] == seen["before"]
    assert loop_slice_us(0) == seen["before"]
