"""Progress of a long one-shot job (the bootstrap's backfill), shown where the operator looks.

- a terminal (stderr is a TTY): one live bar, redrawn in place a few times a second;
- anything else (a pipe, the journal): one log line every ``line_interval`` seconds;
- under systemd: the same line as ``STATUS=``, plus ``EXTEND_TIMEOUT_USEC=`` while work is
  advancing, so a slow but moving backfill outlives ``TimeoutStartSec=`` and a stuck one does not.

The counting and the rendering are pure (``render_bar``, ``ProgressSnapshot``); ``ProgressReporter``
only decides when to draw. Work units are whatever the caller counts (bars for the backfill).
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TextIO

from loguru import logger

from tradingd.sdnotify import Notifier

BAR_WIDTH = 28
# A terminal line longer than this wraps and breaks the in-place redraw.
MAX_LINE = 118


def render_bar(fraction: float, width: int = BAR_WIDTH) -> str:
    """``[#####.....]`` with ``width`` cells inside the brackets, ``fraction`` clamped to [0, 1]."""
    if fraction != fraction:  # NaN
        fraction = 0.0
    fraction = min(1.0, max(0.0, fraction))
    filled = int(fraction * width)
    return "[" + "#" * filled + "." * (width - filled) + "]"


def format_duration(seconds: float) -> str:
    """``42s``, ``3m05s``, ``2h07m`` (ETA text)."""
    seconds = max(0, int(seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


@dataclass
class Task:
    """One unit of tracked work (a backfill series), counted in work units."""

    label: str
    total: int
    done: int = 0
    finished: bool = False


@dataclass(frozen=True)
class ProgressSnapshot:
    total: int
    done: int
    tasks_finished: int
    tasks: int
    current: str
    phase: str
    elapsed: float
    unit: str = "units"
    task_noun: str = "tasks"

    @property
    def fraction(self) -> float:
        if self.total <= 0:
            return 1.0 if self.tasks and self.tasks_finished == self.tasks else 0.0
        return min(1.0, self.done / self.total)

    def eta(self) -> float | None:
        if self.done <= 0 or self.total <= self.done or self.elapsed <= 0:
            return None
        return self.elapsed * (self.total - self.done) / self.done

    def line(self) -> str:
        """One line for a log, STATUS= or the live bar's text."""
        if not self.tasks:
            return self.phase or "starting"
        parts = [
            f"{self.fraction * 100:5.1f}%",
            f"{self.tasks_finished}/{self.tasks} {self.task_noun}",
            f"{self.done:,}/{self.total:,} {self.unit}",
        ]
        eta = self.eta()
        if eta is not None:
            parts.append(f"ETA {format_duration(eta)}")
        if self.current:
            parts.append(self.current)
        elif self.phase:
            parts.append(self.phase)
        return " ".join(parts)


@dataclass
class ProgressReporter:
    """Collects progress from concurrent workers and shows it (see the module docstring)."""

    notifier: Notifier
    interactive: bool
    title: str = "bootstrap"
    unit: str = "bars"
    task_noun: str = "series"
    stream: TextIO | None = None
    line_interval: float = 10.0
    draw_interval: float = 0.2
    # Extend systemd's start timeout only while work moved within this many seconds.
    stall_after: float = 300.0
    extend_by: float = 30.0
    extend_every: float = 10.0
    clock: Callable[[], float] = time.monotonic
    tasks: list[Task] = field(default_factory=list)
    phase: str = ""
    _current: str = ""
    _started: float = 0.0
    _last_advance: float = 0.0
    _last_line: float = float("-inf")
    _last_extend: float = float("-inf")
    _drawn: bool = False

    def __post_init__(self) -> None:
        self._started = self._last_advance = self.clock()

    @classmethod
    def for_stderr(cls, notifier: Notifier, title: str = "bootstrap") -> ProgressReporter:
        return cls(notifier=notifier, interactive=sys.stderr.isatty(), title=title)

    # -- what workers call ----------------------------------------------------------------

    def add(self, label: str, total: int) -> Task:
        task = Task(label, max(0, total))
        self.tasks.append(task)
        return task

    def advance(self, task: Task, units: int, current: str = "") -> None:
        task.done = min(task.total, task.done + max(0, units)) if task.total else task.done
        if current:
            self._current = current
        self._last_advance = self.clock()

    def finish(self, task: Task) -> None:
        task.done = task.total
        task.finished = True
        self._last_advance = self.clock()

    def set_phase(self, text: str) -> None:
        self.phase = text
        self._current = ""
        self._last_advance = self.clock()
        self.notifier.status(f"{self.title}: {text}")

    def touch(self) -> None:
        """Work is alive although no unit finished (e.g. waiting out a rate limit)."""
        self._last_advance = self.clock()

    # -- display --------------------------------------------------------------------------

    def snapshot(self) -> ProgressSnapshot:
        return ProgressSnapshot(
            total=sum(t.total for t in self.tasks),
            done=sum(t.done for t in self.tasks),
            tasks_finished=sum(1 for t in self.tasks if t.finished),
            tasks=len(self.tasks),
            current=self._current,
            phase=self.phase,
            elapsed=self.clock() - self._started,
            unit=self.unit,
            task_noun=self.task_noun,
        )

    def tick(self) -> None:
        """Draw or log if due; tell systemd; cheap enough to call several times a second."""
        now = self.clock()
        line = self.snapshot().line()
        if self.interactive:
            self._draw(line)
        elif now - self._last_line >= self.line_interval:
            self._last_line = now
            logger.info("{} progress: {}", self.title, line)
        if now - self._last_extend >= self.extend_every:
            self._last_extend = now
            self.notifier.status(f"{self.title}: {line}")
            if now - self._last_advance <= self.stall_after:
                self.notifier.extend_timeout(self.extend_by)

    def _draw(self, line: str) -> None:
        stream = self.stream or sys.stderr
        text = f"{self.title} {render_bar(self.snapshot().fraction)} {line}"[:MAX_LINE]
        # Cursor back to column 0 afterwards: a log line printed meanwhile overwrites the bar
        # instead of being glued to its end.
        stream.write(f"\r\x1b[K{text}\r")
        stream.flush()
        self._drawn = True

    def close(self) -> None:
        """Leave the terminal clean (the bar erased) and send a last STATUS=."""
        if self.interactive and self._drawn:
            stream = self.stream or sys.stderr
            stream.write("\r\x1b[K")
            stream.flush()
            self._drawn = False

    async def run(self) -> None:
        """Redraw until cancelled (own this task: cancel it when the work ends)."""
        interval = self.draw_interval if self.interactive else 1.0
        try:
            while True:
                self.tick()
                await asyncio.sleep(interval)
        finally:
            self.close()
