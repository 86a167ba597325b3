"""Draw the Grafana dashboard (tradingd.json beside this file) from a live daemon, without Grafana.

It scrapes the daemon's /metrics every ``--interval`` seconds for ``--duration`` seconds,
evaluates every panel's queries with ``tradingd.promql`` (the PromQL subset the dashboard
uses, evaluated as Prometheus does) and draws the panels in the dashboard's grid to a PNG.
It is a preview, not a Grafana screenshot: same queries, legends, units and layout, plainer
drawing. Needs matplotlib (``pip install -e '.[docs]'``); the daemon does not.

    python deploy/grafana/render_preview.py --metrics http://127.0.0.1:9464/metrics \\
        --duration 300 --out docs/grafana-dashboard.png

``--save FILE`` keeps the raw scrapes (JSON lines) and ``--load FILE`` draws from them again.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import re
import sys
import threading
import time
import urllib.request
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlencode, urlsplit

from tradingd.promql import Sample, SeriesStore, evaluate, parse, scrape_samples

DASHBOARD = Path(__file__).resolve().with_name("tradingd.json")
# Grafana's "All" for the Daemon picker: every scraped instance.
VARIABLES = {"instance": ".*"}
PALETTE = (
    "#73bf69", "#f2cc0c", "#8ab8ff", "#ff780a", "#f2495c",
    "#5794f2", "#b877d9", "#705da0", "#37872d", "#fade2a",
)  # fmt: skip
BACKGROUND, PANEL, TEXT, GRID, MUTED = "#111217", "#181b1f", "#ccccdc", "#2c3235", "#8e8e9e"
COLOURS = {"green": "#73bf69", "red": "#f2495c"}


def substitute(expr: str, variables: Mapping[str, str] = VARIABLES) -> str:
    return re.sub(r"\$\{?(\w+)\}?", lambda m: variables.get(m.group(1), m.group(0)), expr)


def legend(template: str, sample: Sample) -> str:
    if not template:
        return "{" + ", ".join(f'{k}="{v}"' for k, v in sample.labels if k != "__name__") + "}"
    return re.sub(r"\{\{\s*(\w+)\s*\}\}", lambda m: sample.label(m.group(1)), template).strip()


@dataclass
class PanelData:
    """One panel's series, by legend: (time, value) pairs at each evaluation step."""

    panel: Mapping[str, Any]
    series: dict[str, list[tuple[float, float]]] = field(default_factory=dict)


def evaluate_dashboard(
    dashboard: Mapping[str, Any], store: SeriesStore, times: Sequence[float]
) -> list[PanelData]:
    out = []
    for panel in dashboard["panels"]:
        data = PanelData(panel)
        for target in panel.get("targets", []):
            expr = parse(substitute(target["expr"]))
            for t in times:
                value = evaluate(expr, store, t)
                vector = [Sample((), value)] if isinstance(value, float) else value
                for s in vector:
                    name = legend(target.get("legendFormat", ""), s)
                    data.series.setdefault(name, []).append((t, s.value))
        out.append(data)
    return out


# -- scraping -------------------------------------------------------------------------------


def scrape_for(url: str, duration: float, interval: float) -> Iterator[tuple[float, str]]:
    """(time, text) every ``interval`` seconds for ``duration`` seconds, paced by the clock."""
    pace = threading.Event()  # never set: its timed wait is the scrape interval
    started = time.time()
    tick = 0
    while (now := time.time()) - started <= duration:
        try:
            with urllib.request.urlopen(url, timeout=max(interval, 5.0)) as response:
                text = response.read().decode()
        except OSError as error:  # as Prometheus: a failed scrape, its series go stale
            print(f"scrape of {url} failed: {error}", file=sys.stderr)
            text = ""
        yield now, text
        tick += 1
        pace.wait(max(0.0, started + tick * interval - time.time()))


def load_scrapes(path: Path) -> Iterator[tuple[float, str]]:
    with path.open() as lines:
        for line in lines:
            record = json.loads(line)
            yield float(record["t"]), str(record["text"])


# -- checking the evaluator against Prometheus ----------------------------------------------


def prometheus_query(base: str, query: str, at: float) -> list[dict[str, Any]]:
    url = f"{base.rstrip('/')}/api/v1/query?" + urlencode({"query": query, "time": f"{at:.3f}"})
    with urllib.request.urlopen(url, timeout=30) as response:
        answer = json.loads(response.read())
    if answer.get("status") != "success":
        raise RuntimeError(f"Prometheus refused {query!r}: {answer}")
    result: list[dict[str, Any]] = answer["data"]["result"]
    return result


def compare_with_prometheus(base: str, dashboard: Mapping[str, Any], instants: int) -> int:
    """Evaluate every dashboard query at ``instants`` times of the last 5 minutes (or of
    what was scraped), both by the
    Prometheus at ``base`` and by tradingd.promql over the raw samples that Prometheus stored.
    Prints the agreement; 0 when every series matches to a relative 1e-6, 1 otherwise."""
    now = math.floor(time.time())
    raw = prometheus_query(base, '{__name__=~"tradingd_.+"}[15m]', now)
    scrapes: dict[tuple[str, float], list[tuple[dict[str, str], float]]] = {}
    for series in raw:
        target = series["metric"].get("instance", "")
        for at, value in series["values"]:
            scrapes.setdefault((target, float(at)), []).append((series["metric"], float(value)))
    if not scrapes:
        print(f"no tradingd_ series in {base}", file=sys.stderr)
        return 1
    store = SeriesStore()
    for (target, at), samples in sorted(scrapes.items(), key=lambda item: item[0][1]):
        store.add_scrape(at, samples, target)
    first, last = min(at for _, at in scrapes), max(at for _, at in scrapes)
    # Whole milliseconds: Prometheus's resolution, so both evaluate at the same instant.
    times = [round(last - i * min(300.0, last - first) / instants, 3) for i in range(instants)]
    compared, differing = 0, []
    for t in times:
        for panel in dashboard["panels"]:
            for target in panel.get("targets", []):
                query = substitute(target["expr"])
                value = evaluate(parse(query), store, t)
                ours = {} if isinstance(value, float) else {_key(s.labels): s.value for s in value}
                theirs = {
                    _key(tuple(r["metric"].items())): float(r["value"][1])
                    for r in prometheus_query(base, query, t)
                }
                for key in ours.keys() | theirs.keys():
                    compared += 1
                    a, b = ours.get(key, math.nan), theirs.get(key, math.nan)
                    if key not in ours or key not in theirs or not _close(a, b):
                        differing.append(f"{query} {dict(key)}: ours {a}, Prometheus's {b}")
    print(
        f"{len(raw)} series, {len(scrapes)} scrapes; {compared} values of "
        f"{sum(1 for p in dashboard['panels'] for _ in p.get('targets', []))} queries at "
        f"{instants} instants: {compared - len(differing)} agree, {len(differing)} differ"
    )
    for line in differing[:20]:
        print("  " + line)
    return 1 if differing else 0


def _key(labels: Iterable[tuple[str, str]]) -> tuple[tuple[str, str], ...]:
    return tuple(sorted(item for item in labels if item[0] != "__name__"))


def _close(a: float, b: float) -> bool:
    if math.isnan(a) or math.isnan(b):
        return math.isnan(a) and math.isnan(b)
    return a == b or abs(a - b) <= 1e-6 * max(abs(a), abs(b))


# -- drawing --------------------------------------------------------------------------------


def format_value(value: float, unit: str) -> str:
    if math.isnan(value):
        return "-"
    if unit == "percentunit":
        return f"{value * 100:.3g}%"
    if unit == "s":
        if value == 0:
            return "0 s"
        for scale, name in ((1, "s"), (1e-3, "ms"), (1e-6, "µs")):
            if abs(value) >= scale:
                return f"{value / scale:.3g} {name}"
        return f"{value * 1e6:.2g} µs"
    for scale, name in ((1e9, "G"), (1e6, "M"), (1e3, "K")):
        if abs(value) >= scale:
            return f"{value / scale:.3g}{name}"
    text = f"{value:.3g}"
    return text + (" /s" if unit == "ops" else "")


def last_value(data: PanelData) -> float:
    values = [v for series in data.series.values() for _, v in series[-1:] if not math.isnan(v)]
    return values[0] if values else math.nan


def stat_text_and_colour(panel: Mapping[str, Any], value: float) -> tuple[str, str]:
    defaults = panel.get("fieldConfig", {}).get("defaults", {})
    text, colour = format_value(value, defaults.get("unit", "")), "#3d71d9"
    steps = defaults.get("thresholds", {}).get("steps", [])
    for step in steps:
        if step["value"] is None or (not math.isnan(value) and value >= step["value"]):
            colour = COLOURS.get(step["color"], step["color"])
    for mapping in defaults.get("mappings", []):
        key = "" if math.isnan(value) else f"{value:g}"
        hit = mapping.get("options", {}).get(key)
        if mapping.get("type") == "value" and hit:
            text = hit.get("text", text)
            colour = COLOURS.get(hit.get("color", ""), colour)
    return text, colour


def draw(panels: Sequence[PanelData], title: str, subtitle: str, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter, MultipleLocator

    columns, row_px, width_px, header_px = 24, 26, 1800, 70
    bottom = max(p.panel["gridPos"]["y"] + p.panel["gridPos"]["h"] for p in panels)
    height_px = header_px + bottom * row_px
    dpi = 100
    figure = plt.figure(figsize=(width_px / dpi, height_px / dpi), dpi=dpi, facecolor=BACKGROUND)
    figure.text(0.008, 1 - 28 / height_px, title, color=TEXT, fontsize=17, weight="bold")
    figure.text(0.008, 1 - 54 / height_px, subtitle, color=MUTED, fontsize=10)
    pad = 4
    every = [t for data in panels for series in data.series.values() for t, _ in series]
    span = (min(every, default=0.0), max(every, default=1.0))
    tick_s = 60.0 * max(1, round((span[1] - span[0]) / 60 / 5))

    def clock(value: float, _position: int) -> str:
        return dt.datetime.fromtimestamp(value, dt.UTC).strftime("%H:%M")

    def box(grid: Mapping[str, int]) -> tuple[float, float, float, float]:
        left = grid["x"] / columns * width_px + pad
        top = header_px + grid["y"] * row_px + pad
        w = grid["w"] / columns * width_px - 2 * pad
        h = grid["h"] * row_px - 2 * pad
        return left / width_px, 1 - (top + h) / height_px, w / width_px, h / height_px

    for data in panels:
        panel, grid = data.panel, data.panel["gridPos"]
        left, low, w, h = box(grid)
        if panel["type"] == "row":
            figure.text(
                left,
                low + h / 2,
                panel["title"],
                color=TEXT,
                fontsize=14,
                weight="bold",
                va="center",
            )
            continue
        frame = figure.add_axes((left, low, w, h))
        frame.set_facecolor(PANEL)
        frame.set_xticks([])
        frame.set_yticks([])
        for spine in frame.spines.values():
            spine.set_color(GRID)
        frame.text(
            0.015,
            0.985,
            panel["title"],
            color=TEXT,
            fontsize=10.5,
            weight="bold",
            va="top",
            transform=frame.transAxes,
        )
        unit = panel.get("fieldConfig", {}).get("defaults", {}).get("unit", "")
        if panel["type"] == "stat":
            text, colour = stat_text_and_colour(panel, last_value(data))
            frame.set_facecolor(colour)
            frame.text(
                0.5,
                0.45,
                text,
                color="white",
                fontsize=34,
                weight="bold",
                ha="center",
                va="center",
                transform=frame.transAxes,
            )
            continue
        if panel["type"] == "table":
            rows = sorted(
                name
                for name, series in data.series.items()
                if series
                and series[-1][0] == max(t for s in data.series.values() for t, _ in s[-1:])
            )
            for i, name in enumerate(rows[:8]):
                frame.text(
                    0.04,
                    0.8 - i * 0.1,
                    name,
                    color=TEXT,
                    fontsize=11,
                    family="monospace",
                    va="top",
                    transform=frame.transAxes,
                )
            if not rows:
                frame.text(0.5, 0.5, "No data", color=MUTED, ha="center", transform=frame.transAxes)
            continue
        # Pixels: the title on top, the legend (up to 4 rows) and the time axis below the plot.
        columns_of_legend = 2 if len(data.series) > 4 else 1
        legend_rows = math.ceil(min(len(data.series), 8) / columns_of_legend)
        below = 15 * legend_rows + 34
        plot = figure.add_axes(
            (
                left + 56 / width_px,
                low + below / height_px,
                w - 66 / width_px,
                h - (below + 26) / height_px,
            )
        )
        plot.set_facecolor(PANEL)
        plot.tick_params(colors=MUTED, labelsize=8)
        for name, spine in plot.spines.items():
            spine.set_visible(name == "bottom")
            spine.set_color(GRID)
        plot.grid(True, color=GRID, linewidth=0.6)
        plot.xaxis.set_major_locator(MultipleLocator(tick_s))
        plot.xaxis.set_major_formatter(FuncFormatter(clock))
        plot.set_xlim(span)
        plot.yaxis.set_major_formatter(FuncFormatter(lambda v, _p, u=unit: format_value(v, u)))
        if not data.series:
            plot.set_yticks([])
            plot.text(
                0.5, 0.5, "No data", color=MUTED, ha="center", va="center", transform=plot.transAxes
            )
        handles = []
        for i, (name, series) in enumerate(sorted(data.series.items())):
            xs = [t for t, _ in series]
            (line,) = plot.plot(
                xs,
                [v for _, v in series],
                color=PALETTE[i % len(PALETTE)],
                linewidth=1.4,
                label=name,
            )
            handles.append(line)
        if handles:
            shown = handles[: 2 * 4]
            frame.legend(
                handles=shown,
                loc="lower left",
                ncol=columns_of_legend,
                frameon=False,
                fontsize=8,
                labelcolor=TEXT,
                handlelength=1.2,
                borderaxespad=0.2,
            )
            if len(handles) > len(shown):
                frame.text(
                    0.98,
                    0.02,
                    f"+{len(handles) - len(shown)} more",
                    color=MUTED,
                    fontsize=8,
                    ha="right",
                    transform=frame.transAxes,
                )
    out.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(out, dpi=dpi, facecolor=BACKGROUND)
    plt.close(figure)
    shrink_png(out)


def shrink_png(path: Path) -> None:
    """A 256-colour palette: the dark, flat picture keeps its look at a fraction of the size."""
    from PIL import Image

    with Image.open(path) as picture:
        paletted = picture.convert("RGB").quantize(colors=256, method=Image.Quantize.MEDIANCUT)
    paletted.save(path, optimize=True)


# -- command line ---------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--metrics", default="http://127.0.0.1:9464/metrics", help="the daemon's /metrics URL"
    )
    parser.add_argument(
        "--duration", type=float, default=300.0, help="seconds of scraping (default 300)"
    )
    parser.add_argument(
        "--interval", type=float, default=1.0, help="seconds between scrapes (default 1)"
    )
    parser.add_argument(
        "--step", type=float, default=5.0, help="seconds between drawn points (default 5)"
    )
    parser.add_argument("--save", type=Path, help="also write the raw scrapes to this file")
    parser.add_argument("--load", type=Path, help="draw from scrapes saved earlier; no scraping")
    parser.add_argument("--out", type=Path, default=Path("docs/grafana-dashboard.png"))
    parser.add_argument(
        "--compare-prometheus",
        metavar="URL",
        help="draw nothing: check tradingd.promql against this Prometheus (scraping a daemon)",
    )
    parser.add_argument("--instants", type=int, default=8, help="with --compare-prometheus")
    args = parser.parse_args(argv)
    dashboard = json.loads(DASHBOARD.read_text())
    if args.compare_prometheus:
        return compare_with_prometheus(args.compare_prometheus, dashboard, args.instants)
    store = SeriesStore()
    instance = urlsplit(args.metrics).netloc
    scrapes: Iterable[tuple[float, str]] = (
        load_scrapes(args.load)
        if args.load
        else scrape_for(args.metrics, args.duration, args.interval)
    )
    saved = args.save.open("w") if args.save and not args.load else None
    first = last = None
    count = 0
    try:
        for t, text in scrapes:
            store.add_scrape(t, scrape_samples(text, instance))
            if saved:
                saved.write(json.dumps({"t": t, "text": text}) + "\n")
                saved.flush()
            first, last, count = first or t, t, count + 1
            if count % 30 == 0:
                print(f"{count} scrapes, {t - first:.0f} s", file=sys.stderr)
    except KeyboardInterrupt:
        print(f"stopped: drawing the {count} scrapes taken", file=sys.stderr)
    if saved:
        saved.close()
    if first is None or last is None or count < 2:
        print("render_preview: fewer than two scrapes; nothing to draw", file=sys.stderr)
        return 1
    times = [first + i * args.step for i in range(int((last - first) / args.step) + 1)]
    panels = evaluate_dashboard(dashboard, store, times)
    start = dt.datetime.fromtimestamp(first, dt.UTC).strftime("%Y-%m-%d %H:%M")
    minutes = (last - first) / 60
    subtitle = (
        "A preview of deploy/grafana/tradingd.json drawn by deploy/grafana/render_preview.py, "
        f"not a Grafana screenshot: {count} scrapes of {instance}/metrics from {start} UTC, "
        f"{minutes:.0f} min, the dashboard's queries evaluated by tradingd.promql"
    )
    draw(panels, dashboard["title"], subtitle, args.out)
    print(
        f"wrote {args.out} ({args.out.stat().st_size // 1024} KiB) from {count} scrapes",
        file=sys.stderr,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
