"""Copies of the embedded servers' binaries (as root, ``/var/lib/tradingd/servers/<digest>``)
are pruned at start: the one in use, those a process runs from and those chosen recently stay."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

from tradingd.storage.server_copies import COPY_COMPLETE, mark_used, prune_server_copies

_DAY_AGO = 86400.0


def _copy(servers: Path, name: str, *, age_s: float) -> Path:
    copy = servers / name
    (copy / "bin").mkdir(parents=True)
    marker = copy / COPY_COMPLETE
    marker.touch()
    then = marker.stat().st_mtime - age_s
    os.utime(marker, (then, then))
    return copy


def test_unused_old_copies_are_removed_and_the_rest_kept(tmp_path: Path) -> None:
    servers = tmp_path / "servers"
    keep = _copy(servers, "aaaa", age_s=_DAY_AGO)
    old = _copy(servers, "bbbb", age_s=_DAY_AGO)
    recent = _copy(servers, "cccc", age_s=60)
    running = _copy(servers, "dddd", age_s=_DAY_AGO)
    dead_staging = servers / "eeee.999999999.partial"
    dead_staging.mkdir()
    live_staging = servers / f"ffff.{os.getpid()}.partial"
    live_staging.mkdir()
    # A process (of any tradingd version) still running a binary of that copy.
    binary = running / "bin" / "server"
    shutil.copy2("/bin/cat", binary)
    process = subprocess.Popen([binary], stdin=subprocess.PIPE)
    try:
        removed = prune_server_copies(servers, keep)
    finally:
        process.communicate(b"")
    assert sorted(removed) == sorted([old, dead_staging])
    assert keep.exists() and recent.exists() and running.exists() and live_staging.exists()
    assert not old.exists() and not dead_staging.exists()


def test_a_copy_chosen_at_start_counts_as_recently_used(tmp_path: Path) -> None:
    servers = tmp_path / "servers"
    other = _copy(servers, "bbbb", age_s=_DAY_AGO)
    mark_used(other)  # another daemon chose it and has not started its servers yet
    assert prune_server_copies(servers, servers / "aaaa") == []
    assert prune_server_copies(tmp_path / "missing", servers / "aaaa") == []
