"""As root, from a checkout in a 0700 home: the embedded servers still start, nothing to set.

The servers run as the unprivileged ``tradingd`` user, which cannot pass through root's home:
their data and a copy of their binaries go where it can reach, and both choices are logged.
CI runs as root, so this runs there.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import pytest
import redis.asyncio as aioredis

from tradingd.config import DEFAULT_STATE_DIR_ROOT
from tradingd.storage import embedded
from tradingd.storage.embedded import EmbeddedStorage

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="the root-only layout needs root")


@pytest.fixture
def private_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A 0700 home holding a "venv" whose server binaries are reachable only through it."""
    home = tmp_path / "root-home"
    home.mkdir(mode=0o700)
    site = home / "checkout" / ".venv" / "site-packages"
    site.mkdir(parents=True)
    real_pginstall = embedded.postgres_bin_dir().parent
    real_redis_bin = embedded.redis_server_binary().parent
    (site / "pginstall").symlink_to(real_pginstall)
    (site / "redis-bin").symlink_to(real_redis_bin)
    monkeypatch.setattr(embedded, "postgres_bin_dir", lambda: site / "pginstall" / "bin")
    monkeypatch.setattr(
        embedded, "redis_server_binary", lambda: site / "redis-bin" / "redis-server"
    )
    yield home
    before = set((DEFAULT_STATE_DIR_ROOT / "embedded").glob("checkout-*"))
    for data_root in before:
        if (data_root / ".owner").exists() and (data_root / ".owner").read_text() == str(home):
            shutil.rmtree(data_root, ignore_errors=True)


async def test_root_runs_embedded_servers_from_a_0700_home(
    private_home: Path, logged: list[str]
) -> None:
    state_dir = private_home / "checkout" / ".state"
    storage = EmbeddedStorage(state_dir)
    dsn, redis_url = await storage.start()
    try:
        layout = storage._layout
        assert layout is not None
        data_root = layout.postgres_dir.parent
        (data_root / ".owner").write_text(str(private_home))  # for the fixture's clean-up
        assert data_root.is_relative_to(DEFAULT_STATE_DIR_ROOT / "embedded")
        assert layout.postgres_bin.is_relative_to(DEFAULT_STATE_DIR_ROOT / "servers")
        assert layout.redis_server.is_relative_to(DEFAULT_STATE_DIR_ROOT / "servers")
        assert (state_dir / "embedded.lock").exists()  # the state directory stays where it is
        assert os.stat(private_home).st_mode & 0o777 == 0o700  # root's home is left alone
        connection = await asyncpg.connect(dsn)
        try:
            assert await connection.fetchval("SELECT current_user") == "tradingd"
        finally:
            await connection.close()
        client = aioredis.Redis.from_url(redis_url)
        try:
            assert await client.ping()
        finally:
            await client.aclose()
        text = "\n".join(logged)
        assert f"their data is in {data_root}" in text
        assert str(layout.redis_server.parent) in text  # where the binaries run from
    finally:
        await storage.stop()

    # A restart finds the same data (the choice depends only on the state directory).
    again = EmbeddedStorage(state_dir)
    await again.start()
    try:
        assert again._layout is not None
        assert again._layout.postgres_dir == layout.postgres_dir
    finally:
        await again.stop()


def test_cli_as_root_from_a_0700_home_with_nothing_set(tmp_path: Path) -> None:
    """`tradingd migrate` as root, its configuration and state in a 0700 home, run from
    another directory: it works, and says where the servers' data went."""
    home = tmp_path / "home"
    home.mkdir(mode=0o700)
    (home / "config").mkdir()
    config = home / "config" / "tradingd.toml"
    config.write_text('[daemon]\nstate_dir = "../.state"\n')
    result = subprocess.run(
        [sys.executable, "-m", "tradingd", "migrate", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd="/",
        env={"PATH": "/usr/bin:/bin", "HOME": str(home)},
    )
    said = re.search(r"their data is in (/var/lib/tradingd/embedded/\S+)", result.stderr)
    try:
        assert result.returncode == 0, result.stderr
        assert "applied: 0001_core.sql" in result.stdout
        assert said is not None, result.stderr
        assert (home / ".state" / "embedded.lock").exists()  # beside the config, not in /
    finally:
        if said is not None:
            shutil.rmtree(said[1], ignore_errors=True)
