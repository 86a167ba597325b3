"""``python -m bench.run --full|--quick``: every benchmark, results to JSON and BENCHMARKS.md.

``--full`` (``make bench``, about 6 minutes) writes ``bench/results/<date>.json`` and appends
its table to BENCHMARKS.md. ``--quick`` (``make bench-quick``, under a minute) uses small
counts and durations and only prints its table (``--record`` writes
``bench/results/<date>-quick.json`` too). ``--only parse,persist,...`` runs a subset and
writes nothing unless ``--record`` is given (for development).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import shutil
import sys
import time
import traceback
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import uvloop
from loguru import logger

from bench.e2e import bench_e2e
from bench.memory import bench_memory
from bench.orders import bench_orders
from bench.parse import bench_parse
from bench.persist import bench_persist
from bench.report import render
from bench.startup import bench_startup
from bench.stats import load_average, machine
from bench.storage import BenchStorage, scratch_dir
from bench.tick import bench_tick

REPO = Path(__file__).resolve().parents[1]
RESULTS_DIR = REPO / "bench" / "results"
BENCHMARKS_MD = REPO / "BENCHMARKS.md"
SECTIONS = ("parse", "persist", "e2e", "tick", "orders", "memory", "startup")


@dataclass(frozen=True)
class Settings:
    parse_frames: int
    parse_repeats: int
    parse_seconds_per_run: float
    persist_trades: int
    persist_repeats: int
    e2e_warmup: float
    e2e_windows: int
    e2e_window: float
    e2e_fixed_rates: tuple[float, ...]
    e2e_fixed_seconds: float
    tick_rates: tuple[float, ...]
    tick_seconds: float
    tick_warmup: float
    tick_repeats: int
    memory_idle: float
    memory_warmup: float
    memory_burst: float
    memory_rate: float
    startup_runs: int
    orders_rates: tuple[float, ...]
    orders_seconds: float


FULL = Settings(
    parse_frames=20_000,
    parse_repeats=5,
    parse_seconds_per_run=0.25,
    persist_trades=1_000_000,
    persist_repeats=2,
    e2e_warmup=5.0,
    e2e_windows=6,
    e2e_window=10.0,
    e2e_fixed_rates=(20_000.0, 50_000.0),
    e2e_fixed_seconds=10.0,
    tick_rates=(10_000.0, 50_000.0),
    tick_seconds=3.0,
    tick_warmup=2.0,
    tick_repeats=3,
    memory_idle=3.0,
    memory_warmup=5.0,
    memory_burst=120.0,
    memory_rate=30_000.0,
    startup_runs=3,
    orders_rates=(1_000.0, 10_000.0),
    orders_seconds=10.0,
)

QUICK = Settings(
    parse_frames=2_000,
    parse_repeats=3,
    parse_seconds_per_run=0.05,
    persist_trades=50_000,
    persist_repeats=1,
    e2e_warmup=2.0,
    e2e_windows=2,
    e2e_window=2.0,
    e2e_fixed_rates=(),
    e2e_fixed_seconds=0.0,
    tick_rates=(10_000.0, 50_000.0),
    tick_seconds=1.0,
    tick_warmup=0.5,
    tick_repeats=2,
    memory_idle=1.0,
    memory_warmup=1.0,
    memory_burst=6.0,
    memory_rate=30_000.0,
    startup_runs=1,
    orders_rates=(1_000.0, 10_000.0),
    orders_seconds=2.0,
)


def _progress(message: str) -> None:
    print(message, flush=True)


def _results_path(mode: str, today: str) -> Path:
    stem = today if mode == "full" else f"{today}-quick"
    path = RESULTS_DIR / f"{stem}.json"
    counter = 2
    while path.exists():
        path = RESULTS_DIR / f"{stem}-{counter}.json"
        counter += 1
    return path


def _unclean_exits(value: Any) -> list[int]:
    """Daemon exit codes other than 0 anywhere in a section's results."""
    found: list[int] = []
    if isinstance(value, dict):
        for key, item in value.items():
            if key == "daemon_exit_code" and item not in (0, None):
                found.append(item)
            elif key == "exit_codes":
                found.extend(code for code in item if code != 0)
            else:
                found.extend(_unclean_exits(item))
    return found


def _append_table(table: str, results_path: Path) -> None:
    if not BENCHMARKS_MD.exists():
        BENCHMARKS_MD.write_text("# Benchmarks\n\n## Results\n\n")
    with BENCHMARKS_MD.open("a") as out:
        out.write("\n" + table + f"\nRaw results: `{results_path.relative_to(REPO)}`.\n")


async def _run_async(
    settings: Settings,
    sections: list[str],
    workdir: Path,
    results: dict[str, Any],
    failures: dict[str, str],
) -> None:
    async def attempt(name: str, run: Callable[[], Awaitable[dict[str, Any]]]) -> None:
        if name not in sections:
            return
        _progress(f"{name}:")
        started = time.monotonic()
        try:
            results[name] = await run()
        except Exception as exc:
            failures[name] = f"{type(exc).__name__}: {exc}"
            _progress(f"  FAILED: {failures[name]}")
            logger.opt(exception=exc).error("benchmark {} failed", name)
        else:
            results[name]["seconds"] = round(time.monotonic() - started, 1)

    s = settings
    if "startup" in sections:
        await attempt("startup", lambda: bench_startup(workdir / "startup", runs=s.startup_runs))
    storage_sections = {"persist", "e2e", "tick", "orders", "memory"} & set(sections)
    if not storage_sections:
        return
    async with BenchStorage() as storage:
        await attempt(
            "persist",
            lambda: bench_persist(storage, s.persist_trades, s.persist_repeats),
        )
        await attempt(
            "e2e",
            lambda: bench_e2e(
                storage,
                workdir / "e2e",
                warmup=s.e2e_warmup,
                windows=s.e2e_windows,
                window=s.e2e_window,
                fixed_rates=s.e2e_fixed_rates,
                fixed_seconds=s.e2e_fixed_seconds,
            ),
        )
        await attempt(
            "tick",
            lambda: bench_tick(
                storage,
                workdir / "tick",
                rates=s.tick_rates,
                seconds=s.tick_seconds,
                warmup=s.tick_warmup,
                repeats=s.tick_repeats,
            ),
        )
        await attempt(
            "orders",
            lambda: bench_orders(storage.pool, storage.redis, s.orders_rates, s.orders_seconds),
        )
        await attempt(
            "memory",
            lambda: bench_memory(
                storage,
                workdir,
                idle_seconds=s.memory_idle,
                warmup=s.memory_warmup,
                burst_seconds=s.memory_burst,
                rate=s.memory_rate,
            ),
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__)
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument("--full", action="store_true", help="the full suite (about 6 minutes)")
    mode.add_argument("--quick", action="store_true", help="small counts (under a minute)")
    parser.add_argument("--only", default="", help=f"comma-separated subset of {SECTIONS}")
    parser.add_argument("--note", default="", help="a sentence for the table (e.g. the load)")
    parser.add_argument("--no-write", action="store_true", help="print the table; write no file")
    parser.add_argument(
        "--record", action="store_true", help="write the JSON even for --quick or --only"
    )
    parser.add_argument("--keep", action="store_true", help="keep the work directory (logs)")
    args = parser.parse_args(argv)
    mode_name = "full" if args.full else "quick"
    settings = FULL if args.full else QUICK
    sections = [s for s in args.only.split(",") if s] or list(SECTIONS)
    unknown = set(sections) - set(SECTIONS)
    if unknown:
        parser.error(f"unknown sections: {', '.join(sorted(unknown))}")

    workdir = scratch_dir("run")
    logger.remove()
    logger.add(workdir / "bench.log", level="INFO", backtrace=False, diagnose=False)
    started = dt.datetime.now(dt.UTC)
    clock = time.monotonic()
    load_start = load_average()
    _progress(f"tradingd benchmarks ({mode_name}); work directory {workdir}")
    results: dict[str, Any] = {}
    failures: dict[str, str] = {}
    if "parse" in sections:
        _progress("parse:")
        try:
            results["parse"] = bench_parse(
                settings.parse_frames, settings.parse_repeats, settings.parse_seconds_per_run
            )
        except Exception as exc:
            failures["parse"] = f"{type(exc).__name__}: {exc}"
            traceback.print_exc()
    uvloop.run(_run_async(settings, sections, workdir, results, failures))
    unclean = {name: codes for name in SECTIONS if (codes := _unclean_exits(results.get(name)))}
    for name, codes in unclean.items():
        _progress(f"{name}: the daemon exited with {codes} (logs kept; see daemon.log)")
    command = "make bench" if args.full else "make bench-quick"
    results["meta"] = {
        "mode": mode_name,
        "started_at": started.strftime("%Y-%m-%d %H:%M UTC"),
        "command": f"{command} (.venv/bin/python -m bench.run --{mode_name}"
        + (f" --only {args.only}" if args.only else "")
        + ")",
        "duration_seconds": time.monotonic() - clock,
        "load_average": {"start": load_start, "end": load_average()},
        "machine": machine(),
        "settings": asdict(settings),
        "sections": sections,
        "note": args.note,
    }
    if failures:
        results["failures"] = failures
    if unclean:
        results["unclean_daemon_exits"] = unclean
    table = render(results)
    print()
    print(table)
    if args.record or (args.full and not args.only and not args.no_write):
        RESULTS_DIR.mkdir(parents=True, exist_ok=True)
        path = _results_path(mode_name, started.strftime("%Y-%m-%d"))
        path.write_text(json.dumps(results, indent=1, sort_keys=True) + "\n")
        _progress(f"results: {path.relative_to(REPO)}")
        if args.full and not args.only:
            _append_table(table, path)
            _progress(f"table appended to {BENCHMARKS_MD.relative_to(REPO)}")
    if args.keep or failures or unclean:
        _progress(f"logs kept in {workdir}")
    else:
        shutil.rmtree(workdir, ignore_errors=True)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
