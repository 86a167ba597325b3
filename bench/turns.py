"""The event loop's longest turns: CPU time of every callback and task step, by where it ran.

``python -m bench.turns --quick --only tick`` runs ``bench.run`` with the same arguments on the
standard library's event loop instead of uvloop (its callbacks can be timed from Python; uvloop's
cannot) and times each turn with the thread's CPU clock, so that time the process spent waiting
for a core (the machine is shared) does not count. The table lists the sources of turns longer
than ``--over`` ms: a task step is named by the await it stopped at (innermost three frames), a
transport callback by its protocol. The stdlib loop itself is slower than uvloop, so the
absolute numbers are an upper bound for the daemon.
"""

from __future__ import annotations

import argparse
import asyncio
import asyncio.events
import collections
import re
import sys
import time
from collections.abc import Callable, Coroutine
from typing import Any

import uvloop

import bench.run

_TASK_NUMBER = re.compile(r"Task-\d+")


def _source(handle: asyncio.Handle) -> str:
    callback: Any = getattr(handle, "_callback", None)
    owner = getattr(callback, "__self__", None)
    if isinstance(owner, asyncio.Task):
        chain: list[str] = []
        inner: Any = owner.get_coro()
        while inner is not None and hasattr(inner, "cr_frame"):
            if inner.cr_frame is not None:
                chain.append(f"{inner.__qualname__}:{inner.cr_frame.f_lineno}")
            inner = inner.cr_await
        return _TASK_NUMBER.sub("Task", f"{owner.get_name()}: " + " > ".join(chain[-3:]))
    name = getattr(callback, "__qualname__", repr(callback))
    protocol = getattr(owner, "_protocol", None)
    if protocol is not None:
        name += f" [{type(protocol).__module__}.{type(protocol).__qualname__}]"
    return name


class TurnTimer:
    def __init__(self, over_ms: float) -> None:
        self.over_ns = int(over_ms * 1e6)
        self.durations: list[int] = []
        self.count: collections.Counter[str] = collections.Counter()
        self.longest: dict[str, int] = {}

    def install(self) -> Callable[[], None]:
        original = asyncio.events.Handle._run
        timer = self

        def timed(handle: asyncio.Handle) -> None:
            started = time.thread_time_ns()
            original(handle)
            took = time.thread_time_ns() - started
            timer.durations.append(took)
            if took > timer.over_ns:
                source = _source(handle)
                timer.count[source] += 1
                timer.longest[source] = max(timer.longest.get(source, 0), took)

        setattr(asyncio.events.Handle, "_run", timed)  # noqa: B010

        def uninstall() -> None:
            setattr(asyncio.events.Handle, "_run", original)  # noqa: B010

        return uninstall

    def report(self, top: int) -> str:
        ordered = sorted(self.durations)
        n = len(ordered)
        if not n:
            return "no turns"

        def q(p: float) -> float:
            return ordered[min(n - 1, int(p * n))] / 1e6

        lines = [
            f"{n:,} turns; CPU ms p99 {q(0.99):.2f}, p99.9 {q(0.999):.2f}, "
            f"max {ordered[-1] / 1e6:.2f}; over {self.over_ns / 1e6:g} ms: "
            f"{sum(1 for d in ordered if d > self.over_ns)}",
            "| turns over | longest ms | where |",
            "| ---: | ---: | --- |",
        ]
        for source, count in self.count.most_common(top):
            lines.append(f"| {count} | {self.longest[source] / 1e6:.2f} | {source} |")
        return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.turns", description=__doc__)
    parser.add_argument("--over", type=float, default=1.0, help="list turns longer (ms)")
    parser.add_argument("--top", type=int, default=15)
    args, rest = parser.parse_known_args(argv)
    timer = TurnTimer(args.over)

    def run_stdlib(main: Coroutine[Any, Any, None]) -> None:
        asyncio.run(main)

    uninstall = timer.install()
    original_run = uvloop.run
    # bench.run calls uvloop.run: the stdlib loop instead.
    setattr(uvloop, "run", run_stdlib)  # noqa: B010
    try:
        code = bench.run.main([*rest, "--no-write"])
    finally:
        setattr(uvloop, "run", original_run)  # noqa: B010
        uninstall()
    print(timer.report(args.top))
    return code


if __name__ == "__main__":
    sys.exit(main())
