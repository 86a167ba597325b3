"""``make demo``: fake Binance and Deribit on loopback, and the real daemon pointed at them.

Starts both fakes in this process (ports 18080 and 18081 unless told otherwise), keeps them
publishing trades, bars and tickers, writes ``<state>/tradingd.toml`` (embedded PostgreSQL and
Redis under the same directory, a backfill of the last two days), runs ``tradingd --bootstrap``
once if an exchange was never bootstrapped, then runs ``tradingd`` on that configuration as a
child process until Ctrl-C, and prints how to look at the data and unlock. No network needed.

The fake venues are new each run: their trade sequences start over, so the trades captured by
an earlier run (and any gaps noted against them) are cleared at start; bars and instruments stay.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import os
import shlex
import shutil
import signal
import socket
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from loguru import logger

from tradingd.config import load_config
from tradingd.exitcodes import EX_UNAVAILABLE
from tradingd.logs import configure_logging
from tradingd.secrets import secret_store
from tradingd.state import StateUnavailable, read_state
from tradingd.storage import StorageError, open_storage
from tradingd.storage.embedded import postgres_bin_dir
from tradingd.storage.migrations import migrate
from tradingd.testing.fake_binance import FakeBinance
from tradingd.testing.fake_deribit import FakeDeribit

DEFAULT_STATE_DIR = Path(".state/demo")
DEFAULT_BINANCE_PORT = 18080
DEFAULT_DERIBIT_PORT = 18081
BINANCE_SYMBOLS = ("BTCUSDT", "ETHUSDT")
DERIBIT_SYMBOLS = ("BTC-PERPETUAL", "ETH-PERPETUAL")
MINUTE_MS = 60_000


# -- configuration --------------------------------------------------------------------------


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, dt.date):
        return value.isoformat()
    if isinstance(value, str):
        escaped = value.replace("\\", "\\\\").replace('"', '\\"')
        return f'"{escaped}"'
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise TypeError(f"cannot write {type(value).__name__} as TOML")


def render_toml(document: Mapping[str, Any], prefix: str = "") -> str:
    """A small TOML writer for configuration documents (tables, scalars, arrays, dates)."""
    lines: list[str] = []
    tables: list[tuple[str, Mapping[str, Any]]] = []
    arrays: list[tuple[str, Sequence[Mapping[str, Any]]]] = []
    for key, value in document.items():
        if isinstance(value, Mapping):
            tables.append((f"{prefix}{key}", value))
        elif isinstance(value, list) and value and all(isinstance(v, Mapping) for v in value):
            arrays.append((f"{prefix}{key}", value))
        else:
            lines.append(f"{key} = {_toml_value(value)}")
    text = "\n".join(lines) + ("\n" if lines else "")
    for name, table in tables:
        has_scalars = any(not isinstance(v, Mapping) for v in table.values())
        header = f"\n[{name}]\n" if has_scalars else ""
        text += header + render_toml(table, prefix=f"{name}.")
    for name, entries in arrays:
        for entry in entries:
            text += f"\n[[{name}]]\n" + render_toml(entry, prefix=f"{name}.")
    return text


def demo_document(
    state_dir: Path,
    binance: tuple[str, str],
    deribit: tuple[str, str],
    start_date: dt.date,
    log_level: str = "INFO",
) -> dict[str, Any]:
    """The demo configuration: embedded storage under ``state_dir``, exchanges at the fakes,
    a paper account per exchange, and (where this build has strategies) sma_cross and grid."""
    document: dict[str, Any] = {
        "daemon": {"state_dir": str(state_dir.absolute()), "log_level": log_level},
        "backfill": {"start_date": start_date, "resolutions": ["1m", "1h"]},
        "exchanges": {
            "binance": {
                "ws_url": binance[0],
                "rest_url": binance[1],
                "symbols": list(BINANCE_SYMBOLS),
                "reconnect_backoff_max": 5.0,
            },
            "deribit": {
                "ws_url": deribit[0],
                "rest_url": deribit[1],
                "symbols": list(DERIBIT_SYMBOLS),
                "currencies": ["BTC", "ETH"],
                "reconnect_backoff_max": 5.0,
            },
        },
        "paper": {
            "balances": {
                "binance": {"USDT": 100_000, "BTC": 1, "ETH": 10},
                "deribit": {"BTC": 1, "ETH": 10},
            }
        },
    }
    # Sized for the fakes' prices (ETH about 3,000 USDT: a grid order of 0.01 ETH clears
    # Binance's 5 USDT minimum notional) and their small moves (levels 0.05 % apart).
    document["strategies"] = [
        {
            "name": "trend",
            "strategy": "sma_cross",
            "exchange": "binance",
            "symbols": [BINANCE_SYMBOLS[0]],
            "params": {"fast": 3, "slow": 8, "risk_pct": "5"},
        },
        {
            "name": "grid",
            "strategy": "grid",
            "exchange": "binance",
            "symbols": ["ETHUSDT"],
            "params": {
                "levels": 4,
                "spacing": "0.0005",
                "order_size": "0.01",
                "max_inventory": "0.1",
            },
        },
    ]
    return document


def write_config(path: Path, document: Mapping[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    header = "# Written by `make demo` (python -m tradingd.testing.demo); rewritten each run.\n"
    path.write_text(header + render_toml(document))


# -- the fake venues' market ----------------------------------------------------------------


def seed_deribit_history(
    fake: FakeDeribit, names: Sequence[str], start_ms: int, end_ms: int
) -> int:
    """Back-dated trades, one per minute, so Deribit has chart history to backfill.

    Call before ``fake.start()``: the fake's clock is moved back for each trade and nobody
    must see it meanwhile.
    """
    count = 0
    try:
        for minute in range(start_ms - start_ms % MINUTE_MS, end_ms, MINUTE_MS):
            fake.clock_offset_ms = minute + 30_000 - time.time_ns() // 1_000_000
            for name in names:
                fake.publish_trades(name, 1, deliver=False)
                count += 1
    finally:
        fake.clock_offset_ms = 0
    return count


async def publish_market_data(
    binance: FakeBinance, deribit: FakeDeribit, trades_per_second: float, stop: asyncio.Event
) -> None:
    """Trades, tickers and bar updates on both fakes until ``stop`` is set."""
    loop = asyncio.get_running_loop()
    started = loop.time()
    published: dict[tuple[str, str], int] = {}
    venues: list[tuple[str, FakeBinance | FakeDeribit, Sequence[str]]] = [
        ("binance", binance, BINANCE_SYMBOLS),
        ("deribit", deribit, DERIBIT_SYMBOLS),
    ]
    next_quotes = started
    closed_minute = -1
    while not stop.is_set():
        now = loop.time()
        for venue, fake, names in venues:
            for name in names:
                key = (venue, name)
                due = int(trades_per_second * (now - started)) - published.get(key, 0)
                if due > 0:
                    fake.publish_trades(name, due)
                    published[key] = published.get(key, 0) + due
        if now >= next_quotes:
            next_quotes = now + 1.0
            for _venue, fake, names in venues:
                for name in names:
                    fake.publish_ticker(name)
                    fake.publish_bar(name, closed=False)
        # Binance marks a kline final itself; the fake does it just before the minute ends.
        wall_ms = time.time_ns() // 1_000_000
        minute = wall_ms // MINUTE_MS
        if wall_ms % MINUTE_MS >= MINUTE_MS - 400 and minute != closed_minute:
            closed_minute = minute
            for name in BINANCE_SYMBOLS:
                binance.publish_bar(name, closed=True)
        # Pacing: publish what is due ten times a second (or stop at once).
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(0.1):
                await stop.wait()


# -- child processes ------------------------------------------------------------------------


class NotifyListener:
    """The service manager's end of sd_notify, for the daemon child: READY=1 and STATUS=."""

    def __init__(self) -> None:
        self.address = f"@tradingd-demo-{os.getpid()}-{time.monotonic_ns()}"
        self._socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_NONBLOCK)
        self._socket.bind(b"\0" + self.address[1:].encode())
        self.ready = asyncio.Event()
        self.status = ""

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            datagram = await loop.sock_recv(self._socket, 4096)
            for line in datagram.decode("utf-8", "replace").splitlines():
                key, _, value = line.partition("=")
                if key == "READY" and value == "1":
                    self.ready.set()
                elif key == "STATUS":
                    self.status = value

    def close(self) -> None:
        self._socket.close()


def tradingd_command(config_path: Path, *arguments: str) -> list[str]:
    return [sys.executable, "-m", "tradingd", "--config", str(config_path), *arguments]


def _child_env(notify_socket: str | None = None) -> dict[str, str]:
    env = dict(os.environ)
    for name in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID"):
        env.pop(name, None)
    if notify_socket:
        env["NOTIFY_SOCKET"] = notify_socket
    return env


async def stop_child(process: asyncio.subprocess.Process, signum: int, grace: float) -> int:
    if process.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            process.send_signal(signum)
        try:
            async with asyncio.timeout(grace):
                return await process.wait()
        except TimeoutError:
            logger.warning("child {} did not stop within {:.0f} s; killing it", process.pid, grace)
            with contextlib.suppress(ProcessLookupError):
                process.kill()
    return await process.wait()


async def run_child(
    argv: Sequence[str], stop: asyncio.Event, stop_signal: list[int], env: dict[str, str]
) -> int:
    """Run a child in its own process group (Ctrl-C reaches only us; we pass it on)."""
    process = await asyncio.create_subprocess_exec(*argv, env=env, start_new_session=True)
    waiter = asyncio.ensure_future(process.wait())
    stopper = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait({waiter, stopper}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        stopper.cancel()
    if not waiter.done():
        waiter.cancel()
        return await stop_child(process, stop_signal[0] if stop_signal else signal.SIGTERM, 60)
    return waiter.result()


# -- storage look-ups -----------------------------------------------------------------------


async def prepare_storage(config_path: Path) -> dict[str, str | None]:
    """Migrate, clear the previous run's trade tapes, and return each exchange's state."""
    config = load_config(config_path)
    storage = await open_storage(config, secrets=secret_store(config), attach=True)
    try:
        await migrate(storage.pool)
        cleared = await storage.pool.fetchval("SELECT count(*) FROM public_trades")
        if cleared:
            async with storage.pool.acquire() as conn, conn.transaction():
                await conn.execute("TRUNCATE public_trades")
                await conn.execute("DELETE FROM data_gaps")
            print(
                f"demo: cleared {cleared:,} trades of an earlier run (the fake venues start "
                "new trade sequences each run)",
                flush=True,
            )
        states: dict[str, str | None] = {}
        for name in config.enabled_exchanges():
            try:
                state = await read_state(storage.redis, name)
            except StateUnavailable:
                state = None
            states[name] = state.value if state else None
        return states
    finally:
        await storage.close()


async def psql_command(config_path: Path) -> str:
    """The exact psql command line for the running daemon's embedded PostgreSQL."""
    config = load_config(config_path)
    storage = await open_storage(config, secrets=secret_store(config), attach=True)
    try:
        parts = urlsplit(storage.database_url)
    finally:
        await storage.close()
    query = parse_qs(parts.query)
    host = query.get("host", [parts.hostname or "localhost"])[0]
    port = query.get("port", [str(parts.port or 5432)])[0]
    user = parts.username or "tradingd"
    database = parts.path.lstrip("/") or "tradingd"
    psql = shutil.which("psql") or str(postgres_bin_dir() / "psql")
    connection = f"host={host} port={port} user={user} dbname={database}"
    return f"{shlex.quote(psql)} {shlex.quote(connection)}"


def _shown(path: Path | str) -> str:
    """``path`` relative to the working directory when inside it (shorter to type)."""
    try:
        return str(Path(path).relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def next_steps(config_path: Path, psql: str) -> str:
    tradingd = shutil.which("tradingd") or str(Path(sys.executable).parent / "tradingd")
    cli = f"{shlex.quote(_shown(tradingd))} --config {shlex.quote(_shown(config_path))}"
    return "\n".join(
        [
            "",
            "=" * 78,
            "demo: tradingd is running against the fake Binance and Deribit (Ctrl-C stops it).",
            "In another terminal:",
            f"  {cli} status",
            f"  {psql}",
            "      SELECT exchange, market_type, count(*) FROM instruments GROUP BY 1, 2;",
            "      SELECT count(*) FROM public_trades;",
            "      SELECT count(*) FROM ohlc WHERE tick > now() - interval '1 day';",
            f"  {cli} unlock --all",
            f"  {cli} status",
            "Once HEALTHY, the executors trade on paper (strategies and your own orders):",
            f"  {cli} orders",
            f"  {psql}",
            "      SELECT client_order_id, strategy, side, state FROM orders ORDER BY id;",
            "      SELECT * FROM fills ORDER BY id;",
            "The first-launch guide (docs/first-launch.md) walks through these.",
            "=" * 78,
            "",
        ]
    )


# -- main -----------------------------------------------------------------------------------


async def _start_fakes(binance: FakeBinance, deribit: FakeDeribit) -> None:
    """Both fakes listening, or neither (OSError: a port is taken)."""
    try:
        await binance.start()
        await deribit.start()
    except OSError:
        await binance.stop()
        await deribit.stop()
        raise


async def run_demo(args: argparse.Namespace, state_dir: Path) -> int:
    config_path = state_dir / "tradingd.toml"
    stop = asyncio.Event()
    stop_signal: list[int] = []
    loop = asyncio.get_running_loop()

    def on_signal(signum: int) -> None:
        if not stop_signal:
            print(f"\ndemo: {signal.Signals(signum).name}: stopping", flush=True)
            stop_signal.append(signum)
        stop.set()

    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, on_signal, signum)

    now = dt.datetime.now(dt.UTC)
    start_date = (now - dt.timedelta(days=args.history_days)).date()
    binance = FakeBinance(host=args.host, port=args.binance_port)
    deribit = FakeDeribit(host=args.host, port=args.deribit_port)
    start_ms = int(
        dt.datetime(start_date.year, start_date.month, start_date.day, tzinfo=dt.UTC).timestamp()
        * 1000
    )
    seeded = seed_deribit_history(deribit, DERIBIT_SYMBOLS, start_ms, time.time_ns() // 1_000_000)
    logger.info("fake Deribit: {} back-dated trades since {}", seeded, start_date)
    try:
        await _start_fakes(binance, deribit)
    except OSError as exc:
        print(
            f"demo: cannot listen on {args.host} ({exc.strerror or exc}): another demo or "
            f"program holds port {args.binance_port} or {args.deribit_port}; stop it, or choose "
            "others with --binance-port and --deribit-port (0: any free port)",
            file=sys.stderr,
            flush=True,
        )
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(signum)
        return EX_UNAVAILABLE
    print(
        f"demo: fake Binance at {binance.rest_url}, fake Deribit at {deribit.rest_url}", flush=True
    )
    write_config(
        config_path,
        demo_document(
            state_dir,
            (binance.ws_url, binance.rest_url),
            (deribit.ws_url, deribit.rest_url),
            start_date,
        ),
    )
    print(f"demo: configuration {_shown(config_path)}", flush=True)
    notify = NotifyListener()
    code = 0
    try:
        async with asyncio.TaskGroup() as group:
            feeder = group.create_task(
                publish_market_data(binance, deribit, args.trades_per_second, stop)
            )
            listener = group.create_task(notify.run())
            try:
                code = await _run_children(args, config_path, notify, stop, stop_signal)
            finally:
                stop.set()
                listener.cancel()
                await feeder
    finally:
        notify.close()
        await binance.stop()
        await deribit.stop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(signum)
    return code


async def _run_children(
    args: argparse.Namespace,
    config_path: Path,
    notify: NotifyListener,
    stop: asyncio.Event,
    stop_signal: list[int],
) -> int:
    try:
        states = await prepare_storage(config_path)
    except StorageError as exc:
        print(f"demo: storage unavailable: {exc}", file=sys.stderr)
        return 69
    pending = [name for name, state in states.items() if state in (None, "BOOTSTRAPPING")]
    if pending and not stop.is_set():
        print(
            f"demo: bootstrapping {', '.join(pending)} (history since the configured date)",
            flush=True,
        )
        code = await run_child(
            tradingd_command(config_path, "--bootstrap"), stop, stop_signal, _child_env()
        )
        if stop.is_set():
            return code
        if code != 0:
            print(
                f"demo: the bootstrap exited {code}; starting the daemon anyway (it captures)",
                flush=True,
            )
    elif not stop.is_set():
        print(
            "demo: " + ", ".join(f"{n} {s}" for n, s in states.items()) + "; no bootstrap needed",
            flush=True,
        )
    if stop.is_set():
        return 0
    process = await asyncio.create_subprocess_exec(
        *tradingd_command(config_path), env=_child_env(notify.address), start_new_session=True
    )
    exited = asyncio.ensure_future(process.wait())
    ready = asyncio.ensure_future(notify.ready.wait())
    stopping = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait({exited, ready, stopping}, return_when=asyncio.FIRST_COMPLETED)
        if ready.done() and not exited.done() and not stop.is_set():
            print(next_steps(config_path, await psql_command(config_path)), flush=True)
            await asyncio.wait({exited, stopping}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        ready.cancel()
        stopping.cancel()
        exited.cancel()
    if process.returncode is None:
        signum = stop_signal[0] if stop_signal else signal.SIGTERM
        return await stop_child(process, signum, 60)
    print(f"demo: tradingd exited {process.returncode}", flush=True)
    return process.returncode


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tradingd.testing.demo",
        description="Fake Binance and Deribit on loopback and tradingd pointed at them.",
    )
    parser.add_argument("--state-dir", default=str(DEFAULT_STATE_DIR), help="default: .state/demo")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument(
        "--binance-port", type=int, default=DEFAULT_BINANCE_PORT, help="0: any free port"
    )
    parser.add_argument(
        "--deribit-port", type=int, default=DEFAULT_DERIBIT_PORT, help="0: any free port"
    )
    parser.add_argument("--trades-per-second", type=float, default=5.0, help="per instrument")
    parser.add_argument("--history-days", type=int, default=2, help="backfill this many days")
    args = parser.parse_args(argv)
    configure_logging("INFO")
    import uvloop

    return uvloop.run(run_demo(args, Path(args.state_dir).absolute()))


if __name__ == "__main__":
    sys.exit(main())
