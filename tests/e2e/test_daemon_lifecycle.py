"""The daemon's life as systemd sees it: READY, WATCHDOG, RELOADING, STOPPING, exit codes, and
no process left behind (embedded PostgreSQL and Redis included), even after SIGKILL."""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.conftest import reachable_temp_dir
from tests.e2e.harness import (
    DaemonProcess,
    ExchangeEndpoint,
    NotifyListener,
    eventually,
    processes_mentioning,
    write_config,
)
from tradingd.cpus import loop_slice_us, process_cpus
from tradingd.testing.fake_deribit import FakeDeribit


@pytest.fixture
def embedded_state(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Path]:
    import shutil

    path, remove = reachable_temp_dir(tmp_path_factory, "daemon-state")
    yield path  # type: ignore[misc]
    if remove:
        shutil.rmtree(path, ignore_errors=True)


def one_exchange(fake: FakeDeribit) -> dict[str, ExchangeEndpoint]:
    return {
        "deribit": ExchangeEndpoint(
            "deribit", fake.ws_url, fake.rest_url, ["BTC-PERPETUAL"], {"currencies": ["BTC"]}
        )
    }


async def test_embedded_storage_start_ready_and_sigterm_leaves_nothing_behind(
    tmp_path: Path, embedded_state: Path, deribit: FakeDeribit
) -> None:
    config = write_config(
        tmp_path / "tradingd.toml", state_dir=embedded_state, exchanges=one_exchange(deribit)
    )
    async with NotifyListener(tmp_path / "notify.sock") as notify:
        started = time.monotonic()
        daemon = await DaemonProcess(config, notify, tmp_path / "daemon.log").start()
        ready = await daemon.wait_ready(timeout=120)
        print(
            f"start-up to READY=1 (embedded storage, first start): {time.monotonic() - started:.2f} s"
        )
        assert ready.get("READY") == "1"
        children = processes_mentioning(str(embedded_state))
        assert any("postgres" in cmd for _, cmd in children), children
        assert any("redis-server" in cmd for _, cmd in children), children
        rss_kib = int(
            next(
                line.split()[1]
                for line in Path(f"/proc/{daemon.pid}/status").read_text().splitlines()
                if line.startswith("VmRSS:")
            )
        )
        print(f"idle RSS of the daemon process: {rss_kib / 1024:.1f} MiB")
        assert await daemon.stop() == 0, daemon.output()[-3000:]
    assert processes_mentioning(str(embedded_state)) == []


async def test_sigkill_then_restart_recovers_embedded_storage(
    tmp_path: Path, embedded_state: Path, deribit: FakeDeribit
) -> None:
    config = write_config(
        tmp_path / "tradingd.toml", state_dir=embedded_state, exchanges=one_exchange(deribit)
    )
    async with NotifyListener(tmp_path / "notify.sock") as notify:
        first = await DaemonProcess(config, notify, tmp_path / "first.log").start()
        await first.wait_ready(timeout=120)
        first.signal(signal.SIGKILL)
        assert await first.wait() == -signal.SIGKILL

        async def orphans_gone() -> bool:
            return processes_mentioning(str(embedded_state)) == []

        await eventually(orphans_gone, timeout=30, what="embedded servers to die with tradingd")
        second = await DaemonProcess(config, notify, tmp_path / "second.log").start()
        started = time.monotonic()
        await second.wait_ready(timeout=120)
        print(
            f"start-up to READY=1 (embedded storage initialised): {time.monotonic() - started:.2f} s"
        )
        assert await second.stop() == 0, second.output()[-3000:]
    assert processes_mentioning(str(embedded_state)) == []


async def test_watchdog_reload_and_stop_notifications(
    tmp_path: Path, database_url: str, redis_url: str, deribit: FakeDeribit
) -> None:
    path = tmp_path / "tradingd.toml"
    config = write_config(
        path,
        state_dir=tmp_path / "state",
        database_url=database_url,
        redis_url=redis_url,
        exchanges=one_exchange(deribit),
    )
    async with NotifyListener(tmp_path / "notify.sock") as notify:
        daemon = await DaemonProcess(config, notify, tmp_path / "daemon.log").start(
            env={"WATCHDOG_USEC": "600000"}
        )
        await daemon.wait_ready()
        # Without a WATCHDOG_PID the period applies to the main process: pings every 0.3 s.
        await notify.wait_for(lambda m: m.get("WATCHDOG") == "1", timeout=10)
        await notify.wait_for(lambda m: m.get("WATCHDOG") == "1", timeout=10)

        # A live change (log level) applies; a restart-only change is reported.
        def rewrite(**daemon_section: object) -> None:
            write_config(
                path,
                state_dir=tmp_path / "state",
                database_url=database_url,
                redis_url=redis_url,
                exchanges=one_exchange(deribit),
                sections={"daemon": daemon_section},
            )

        rewrite(log_level="DEBUG", stop_timeout=15.0)
        marker = len(notify.messages)
        daemon.signal(signal.SIGHUP)
        reloading = await notify.wait_for(lambda m: m.get("RELOADING") == "1", 10, marker)
        assert int(reloading["MONOTONIC_USEC"]) > 0
        await notify.wait_for(lambda m: m.get("READY") == "1", 10, marker)

        # An invalid file is rejected and the daemon keeps running on the old one.
        rewrite(log_level="DEBUG", stop_timeout="x")
        marker = len(notify.messages)
        daemon.signal(signal.SIGHUP)
        await notify.wait_for(lambda m: "reload rejected" in m.get("STATUS", ""), 10, marker)
        assert await daemon.stop() == 0
    output = daemon.output()
    assert "reload applied: daemon.log_level" in output
    assert "need a restart" in output and "daemon.stop_timeout" in output
    assert "reload rejected" in output and "daemon.stop_timeout" in output


async def test_bad_config_exits_78_before_touching_anything(tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text("[daemon]\nstop_timeout = 'soon'\n")
    async with NotifyListener(tmp_path / "notify.sock") as notify:
        daemon = await DaemonProcess(path, notify, tmp_path / "daemon.log").start()
        assert await daemon.wait() == 78
    assert f"{path}: daemon.stop_timeout" in daemon.output()


async def test_unreachable_database_retries_and_reports_the_wait(tmp_path: Path) -> None:
    config = write_config(
        tmp_path / "tradingd.toml",
        state_dir=tmp_path / "state",
        database_url="postgresql://tradingd@127.0.0.1:9/tradingd",
        redis_url="redis://127.0.0.1:9/0",
        exchanges={},
        sections={"database": {"connect_backoff_max": 0.2}},
    )
    async with NotifyListener(tmp_path / "notify.sock") as notify:
        daemon = await DaemonProcess(config, notify, tmp_path / "daemon.log").start()
        waiting = await notify.wait_for(lambda m: "next try in" in m.get("STATUS", ""), 30)
        assert "waiting for" in waiting["STATUS"] and "127.0.0.1:9" in waiting["STATUS"]
        # The wait is reported again as it goes on: the daemon keeps retrying, it does not exit.
        await notify.wait_for(lambda m: "attempt 3" in m.get("STATUS", ""), 30)
        assert daemon.process is not None and daemon.process.returncode is None
        assert await daemon.stop() == 0


async def test_an_actor_failing_past_the_restart_intensity_exits_70(
    tmp_path: Path, database_url: str, redis_url: str, deribit: FakeDeribit
) -> None:
    """The persister cannot write (its table is gone): it is restarted with backoff, then the
    supervisor escalates and the daemon exits 70 naming the actor, for systemd to restart."""
    import asyncpg

    config = write_config(
        tmp_path / "tradingd.toml",
        state_dir=tmp_path / "state",
        database_url=database_url,
        redis_url=redis_url,
        exchanges=one_exchange(deribit),
        sections={"supervisor": {"max_restarts": 3, "backoff_initial": 0.05, "backoff_max": 0.2}},
    )
    async with NotifyListener(tmp_path / "notify.sock") as notify:
        daemon = await DaemonProcess(config, notify, tmp_path / "daemon.log").start()
        await daemon.wait_ready()
        await deribit.wait_subscribed("BTC-PERPETUAL", "trades")
        conn = await asyncpg.connect(database_url)
        await conn.execute("ALTER TABLE public_trades RENAME TO public_trades_elsewhere")
        await conn.close()
        deribit.publish_trades("BTC-PERPETUAL", 20)
        assert await daemon.wait(timeout=60) == 70
    output = daemon.output()
    assert "supervisor escalates" in output
    assert "'persister' failed 4 times" in output


async def test_a_second_sigint_forces_the_exit(
    tmp_path: Path, database_url: str, redis_url: str, deribit: FakeDeribit
) -> None:
    """The first SIGINT starts the ordered shutdown, which waits to drain into a locked table;
    the second one ends the process at once (exit 130)."""
    import asyncpg
    import redis.asyncio as aioredis

    from tradingd.status import STATUS_KEY, decode_status

    config = write_config(
        tmp_path / "tradingd.toml",
        state_dir=tmp_path / "state",
        database_url=database_url,
        redis_url=redis_url,
        exchanges=one_exchange(deribit),
        sections={"daemon": {"stop_timeout": 60.0}},
    )
    async with NotifyListener(tmp_path / "notify.sock") as notify:
        daemon = await DaemonProcess(config, notify, tmp_path / "daemon.log").start()
        await daemon.wait_ready()
        await deribit.wait_subscribed("BTC-PERPETUAL", "trades")
        locker = await asyncpg.connect(database_url)
        transaction = locker.transaction()
        await transaction.start()
        await locker.execute("LOCK TABLE public_trades IN ACCESS EXCLUSIVE MODE")
        deribit.publish_trades("BTC-PERPETUAL", 50)
        redis = aioredis.Redis.from_url(redis_url)

        async def in_hand() -> bool:
            raw = await redis.get(STATUS_KEY)
            return raw is not None and decode_status(raw).exchanges[0].trades == 50

        await eventually(in_hand, what="the trades to be received")
        await redis.aclose()
        marker = len(notify.messages)
        daemon.signal(signal.SIGINT)
        await notify.wait_for(lambda m: m.get("STOPPING") == "1", 10, marker)
        started = time.monotonic()
        daemon.signal(signal.SIGINT)
        assert await daemon.wait(timeout=10) == 130
        assert time.monotonic() - started < 5
        await transaction.rollback()
        await locker.close()
    assert "second SIGINT: forcing exit now" in daemon.output()


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="a core of its own needs two CPUs")
async def test_daemon_cpus_put_the_daemon_on_its_cores_and_the_embedded_servers_on_the_rest(
    tmp_path: Path, embedded_state: Path, deribit: FakeDeribit
) -> None:
    # Also: the loop thread alone asks for daemon.loop_slice_us (default 100 us).
    kernel_slices = loop_slice_us(0) > 0
    available = frozenset(os.sched_getaffinity(0))
    own = frozenset({max(available)})
    config = write_config(
        tmp_path / "tradingd.toml",
        state_dir=embedded_state,
        exchanges=one_exchange(deribit),
        sections={"daemon": {"cpus": sorted(own)}},
    )
    async with NotifyListener(tmp_path / "notify.sock") as notify:
        daemon = await DaemonProcess(config, notify, tmp_path / "daemon.log").start()
        await daemon.wait_ready(timeout=120)
        # Every thread, including those started after the pinning (the loop's own helpers).
        threads = process_cpus(daemon.pid)
        assert set(threads.values()) == {own}, threads
        servers = [
            pid
            for pid, cmd in processes_mentioning(str(embedded_state))
            if "postgres" in cmd or "redis-server" in cmd
        ]
        assert len(servers) == 2, servers
        # With the backends PostgreSQL forked since (our pool's connections among them).
        every = [pid for server in servers for pid in (server, *descendants(server))]
        assert len(every) > 4, every
        for pid in every:
            with contextlib.suppress(ProcessLookupError):
                assert set(process_cpus(pid).values()) == {available - own}, pid
        if kernel_slices:
            assert loop_slice_us(daemon.pid) == 100
            others = [tid for tid in threads if tid != daemon.pid]
            assert others and all(loop_slice_us(tid) != 100 for tid in others)
            for pid in every:
                with contextlib.suppress(ProcessLookupError, OSError):
                    assert loop_slice_us(pid) != 100, pid
        assert await daemon.stop() == 0, daemon.output()[-3000:]
    assert "daemon on CPUs" in daemon.output()


async def test_daemon_cpus_the_machine_lacks_exit_78_naming_the_key(tmp_path: Path) -> None:
    missing = max(os.sched_getaffinity(0)) + 1
    config = write_config(
        tmp_path / "tradingd.toml",
        state_dir=tmp_path / "state",
        exchanges={},
        sections={"daemon": {"cpus": [missing]}},
    )
    async with NotifyListener(tmp_path / "notify.sock") as notify:
        daemon = await DaemonProcess(config, notify, tmp_path / "daemon.log").start()
        assert await daemon.wait() == 78
    assert f"{config}: daemon.cpus: expected CPUs this process may run on" in daemon.output()
    assert not (tmp_path / "state").exists()


def descendants(pid: int) -> list[int]:
    found: list[int] = []
    with contextlib.suppress(FileNotFoundError):
        for task in Path(f"/proc/{pid}/task").iterdir():
            with contextlib.suppress(FileNotFoundError):
                for child in (task / "children").read_text().split():
                    found += [int(child), *descendants(int(child))]
    return found
