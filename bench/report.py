"""The Markdown table of one benchmark run (appended to BENCHMARKS.md by a full run)."""

from __future__ import annotations

from typing import Any


def _n(value: float, digits: int = 0) -> str:
    return f"{value:,.{digits}f}"


def _row(cells: list[str]) -> str:
    return "| " + " | ".join(cells) + " |"


def _summary_cells(
    summary: dict[str, Any] | None, digits: int = 0, scale: float = 1.0
) -> list[str]:
    if summary is None:
        return ["-", "-", "-"]
    return [_n(summary[k] * scale, digits) for k in ("median", "min", "max")]


def render(results: dict[str, Any]) -> str:
    meta = results["meta"]
    machine = meta["machine"]
    packages = ", ".join(f"{k} {v}" for k, v in machine["packages"].items())
    lines = [
        f"### {meta['started_at']} — {meta['mode']} run",
        "",
        f"Command: `{meta['command']}` ({meta['duration_seconds']:.0f} s). "
        f"Machine: {machine['cpu']}, {machine['cores']} cores, "
        f"{machine['memory_mb'] / 1024:.0f} GB RAM, {machine['os']}, Linux {machine['kernel']}, "
        f"Python {machine['python']}; {packages}.",
        "",
        f"Load average (1/5/15 min) at start {meta['load_average']['start']}, at end "
        f"{meta['load_average']['end']}. {meta.get('note', '')}".rstrip(),
        "",
        _row(["Benchmark", "Metric", "Median", "Min", "Max", "Target"]),
        _row(["---", "---", "---:", "---:", "---:", "---"]),
    ]
    parse = results.get("parse")
    if parse:
        for case in parse["cases"]:
            name = f"Parse {case['venue']} {case['kind']}"
            trades = case["tradingd"]["trades_per_s"]
            lines.append(
                _row(
                    [
                        name,
                        "tradingd frames/s",
                        *_summary_cells(case["tradingd"]["frames_per_s"]),
                        "",
                    ]
                )
            )
            if trades is not None:
                lines.append(_row([name, "tradingd trades/s", *_summary_cells(trades), ""]))
            if case["cryptofeed"] is not None:
                lines.append(
                    _row(
                        [
                            name,
                            "cryptofeed frames/s",
                            *_summary_cells(case["cryptofeed"]["frames_per_s"]),
                            "",
                        ]
                    )
                )
                lines.append(
                    _row(
                        [
                            name,
                            "ratio tradingd / cryptofeed",
                            *_summary_cells(case["ratio"], 2),
                            # The goal: 4x on trade rows, 2x on every other row.
                            "≥ 4x" if "trade" in case["kind"] else "≥ 2x",
                        ]
                    )
                )
    persist = results.get("persist")
    if persist:
        for variant, data in persist["variants"].items():
            name = f"Persist {data['trades']:,} trades, {variant}"
            lines.append(
                _row([name, "rows offered/s", *_summary_cells(data["rows_offered_per_s"]), ""])
            )
            lines.append(
                _row([name, "rows inserted/s", *_summary_cells(data["rows_inserted_per_s"]), ""])
            )
    e2e = results.get("e2e")
    if e2e:
        flood = e2e["flood"]
        name = "End to end, flood"
        lines.append(
            _row(
                [
                    name,
                    f"trades/s committed per {flood['window_seconds']:g} s window "
                    f"(sustained {_n(flood['sustained_committed_per_s'])})",
                    *_summary_cells(flood["committed_per_s"]),
                    "≥ 50,000",
                ]
            )
        )
        latency = flood["latency_ms"]
        lines.append(
            _row(
                [
                    name,
                    f"frame→commit ms p50 / p99 / max: {_n(latency['p50'])} / "
                    f"{_n(latency['p99'])} / {_n(latency['max'])}",
                    "",
                    "",
                    "",
                    "p99 < 250",
                ]
            )
        )
        cpu = flood.get("cpu_us_per_committed_trade", {})
        if cpu:
            lines.append(
                _row(
                    [
                        name,
                        "CPU µs per committed trade, daemon + PostgreSQL "
                        f"({_n(cpu.get('daemon', 0.0), 1)} + {_n(cpu.get('postgres', 0.0), 1)})",
                        _n(cpu["daemon+postgres"], 1),
                        "",
                        "",
                        "≤ 8",
                    ]
                )
            )
        for fixed in e2e.get("fixed_rates", {}).values():
            name = f"End to end, {_n(fixed['offered_per_s'])}/s offered"
            lines.append(
                _row(
                    [
                        name,
                        "trades/s committed per window",
                        *_summary_cells(fixed["committed_per_s"]),
                        "",
                    ]
                )
            )
            latency = fixed["latency_ms"]
            lines.append(
                _row(
                    [
                        name,
                        f"frame→commit ms p50 / p99 / max: {_n(latency['p50'])} / "
                        f"{_n(latency['p99'])} / {_n(latency['max'])}",
                        "",
                        "",
                        "",
                        "p99 < 250",
                    ]
                )
            )
    tick = results.get("tick")
    if tick:
        own_core = tick.get("own_core")
        layouts = [("", tick["rates"])]
        if own_core:
            cpu = ",".join(str(c) for c in own_core["daemon_cpus"])
            layouts.append((f", the daemon alone on CPU {cpu}", own_core["rates"]))
        for layout, rates in layouts:
            lines.extend(_tick_rows(layout, rates))
    orders = results.get("orders")
    if orders:
        for path in orders["order_path"]:
            name = f"Order path (tick → intent committed → venue), {_n(path['rate'])} msgs/s"
            for label, key in (
                ("intent committed", "intent_committed_ms"),
                ("handed to venue", "handed_to_venue_ms"),
            ):
                cut = path[key]
                lines.append(
                    _row([name, f"{label} p50 ms", _n(cut.get("p50", 0.0), 2), "", "", ""])
                )
                lines.append(
                    _row(
                        [
                            name,
                            f"{label} p99 ms",
                            _n(cut.get("p99", 0.0), 2),
                            "",
                            "",
                            "p99 < 5 ms" if key == "handed_to_venue_ms" else "",
                        ]
                    )
                )
        kill = orders["kill_switch"]
        lines.append(
            _row(
                [
                    f"Kill switch, {kill['open_orders']} open paper orders",
                    "all cancelled s",
                    _n(kill["all_cancelled_s"], 3),
                    "",
                    "",
                    "< 1 s",
                ]
            )
        )
    memory = results.get("memory")
    if memory:
        name = (
            f"Memory, {memory['burst_seconds']:g} s stalled database, "
            f"{_n(memory['offered_per_s'])} trades/s offered"
        )
        queue = memory["records_queue_at_end_of_burst"]
        single = [
            ("idle RSS MB", _n(memory["idle_rss_mb"]), "< 120"),
            ("peak RSS MB", _n(memory["peak_rss_mb"]), ""),
            ("RSS slope MB/min, whole burst", _n(memory["slope_mb_per_min"], 2), ""),
            ("RSS slope MB/min, second half", _n(memory["slope_second_half_mb_per_min"], 2), "≈ 0"),
            (
                "records queue (BLOCK) depth / capacity at end",
                f"{_n(queue.get('depth', 0))} / {_n(queue.get('capacity', 0))}",
                "",
            ),
            (
                "trades received in the second half (back-pressure)",
                _n(memory["received_in_second_half"]),
                "",
            ),
            (
                "persister retries during the stall",
                _n(memory["counters_at_end_of_burst"]["persister_retries"]),
                "",
            ),
            ("every published trade committed after release", str(memory["all_committed"]), ""),
        ]
        lines.extend(
            _row([name, metric, value, "", "", target]) for metric, value, target in single
        )
    startup = results.get("startup")
    if startup:
        name = "Start-up, embedded storage initialised"
        lines.append(
            _row([name, "exec → READY=1 s", *_summary_cells(startup["ready_seconds"], 2), ""])
        )
        lines.append(
            _row(
                [
                    name,
                    "idle RSS MB (daemon process)",
                    *_summary_cells(startup["idle_rss_mb"]),
                    "< 120",
                ]
            )
        )
        lines.append(
            _row(
                [
                    "Start-up, first (initdb + migrations)",
                    "exec → READY=1 s",
                    _n(startup["first_start_with_initdb_seconds"], 2),
                    "",
                    "",
                    "",
                ]
            )
        )
    unclean = results.get("unclean_daemon_exits")
    if unclean:
        lines.append("")
        lines.extend(
            f"Daemon exits other than 0 in {name}: {codes} (-9: killed after not stopping "
            "within 120 s of SIGTERM; -6: aborted to dump its stacks)."
            for name, codes in unclean.items()
        )
    failures = results.get("failures")
    if failures:
        lines.append("")
        lines.extend(f"Failed: {name}: {error}" for name, error in failures.items())
    return "\n".join(lines) + "\n"


def _tick_rows(layout: str, rates: dict[str, Any]) -> list[str]:
    lines: list[str] = []
    for rate, data in rates.items():
        name = f"Tick to strategy, {_n(float(rate))} msgs/s{layout}"
        target = "p99 < 1 ms"
        if "strategy_p99_us" in data:
            for label, key, goal in (
                ("p50", "strategy_p50_us", ""),
                ("p99", "strategy_p99_us", target),
            ):
                cells = _summary_cells(data[key], 3, 1e-3)
                lines.append(_row([name, f"{label} ms (executor)", *cells, goal]))
            target = ""
        for label, key, goal in (("p50", "p50_us", ""), ("p99", "p99_us", target)):
            cells = _summary_cells(data[key], 3, 1e-3)
            metric = f"{label} ms (analyzer, the last consumer)"
            lines.append(_row([name, metric, *cells, goal]))
        if "loop_lag_max_us" in data:
            for label, key in (("p99", "loop_lag_p99_us"), ("max", "loop_lag_max_us")):
                cells = _summary_cells(data[key], 2, 1e-3)
                lines.append(_row([name, f"loop stall (1 ms timer late) {label} ms", *cells, ""]))
    return lines
