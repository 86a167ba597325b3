"""The performance report as one self-contained HTML page: inline CSS and SVG, no script, no
font or image to fetch, so it opens anywhere, offline, and can be mailed as it is."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from decimal import Decimal
from html import escape

from tradingd.execution.performance import (
    TOTAL,
    EquityPoint,
    Performance,
    PerformanceReport,
)

WIDTH, HEIGHT, PAD = 720, 180, 40
# A chart is WIDTH pixels wide: more points than this only make the page heavy.
MAX_POINTS = 1200

_STYLE = """
body { font: 14px/1.4 system-ui, sans-serif; margin: 2em; color: #222; }
table { border-collapse: collapse; margin: 1em 0; }
th, td { padding: 4px 10px; border-bottom: 1px solid #ddd; text-align: right; }
th:first-child, td:first-child { text-align: left; }
h2 { margin-top: 2em; }
svg { background: #fafafa; border: 1px solid #ddd; display: block; margin: 0.5em 0; }
.axis { font-size: 11px; fill: #666; }
"""


def fmt(value: Decimal | float | None, places: int = 2) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{places}f}"
    text = format(value.normalize(), "f")
    return text if "." not in text else text.rstrip("0").rstrip(".")


def _when(at_us: int) -> str:
    return datetime.fromtimestamp(at_us / 1_000_000, tz=UTC).strftime("%Y-%m-%d %H:%M")


def thin(
    times: Sequence[int], values: Sequence[float], limit: int = MAX_POINTS
) -> tuple[list[int], list[float]]:
    """At most about ``limit`` points: per bucket of consecutive points its first, lowest,
    highest and last, in time order, so that no peak or trough is lost."""
    if len(values) <= limit:
        return list(times), list(values)
    size = -(-len(values) // (limit // 4))
    kept_times: list[int] = []
    kept_values: list[float] = []
    for start in range(0, len(values), size):
        indices = range(start, min(start + size, len(values)))
        low = min(indices, key=values.__getitem__)
        high = max(indices, key=values.__getitem__)
        for i in sorted({indices[0], low, high, indices[-1]}):
            kept_times.append(times[i])
            kept_values.append(values[i])
    return kept_times, kept_values


def chart(points: Sequence[EquityPoint], end_us: int, *, drawdown: bool, title: str) -> str:
    """A step line of the equity (or of the drawdown, drawn below zero) over the period."""
    times, values = thin(
        [p.at_us for p in points], [float(-p.drawdown if drawdown else p.equity) for p in points]
    )
    start = times[0] if times else 0
    span = max(1, end_us - start)
    low, high = min([0.0, *values]), max([0.0, *values])
    if high == low:
        high = low + 1.0

    def x(at_us: int) -> float:
        return PAD + (WIDTH - 2 * PAD) * (min(at_us, end_us) - start) / span

    def y(value: float) -> float:
        return HEIGHT - PAD / 2 - (HEIGHT - PAD) * (value - low) / (high - low)

    path: list[str] = []
    for i, (at_us, value) in enumerate(zip(times, values, strict=True)):
        if i:
            path.append(f"{x(at_us):.1f},{y(values[i - 1]):.1f}")
        path.append(f"{x(at_us):.1f},{y(value):.1f}")
    if values:
        path.append(f"{x(end_us):.1f},{y(values[-1]):.1f}")
    colour = "#c0392b" if drawdown else "#2471a3"
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" '
        f'viewBox="0 0 {WIDTH} {HEIGHT}" role="img" aria-label="{escape(title)}">'
        f"<title>{escape(title)}</title>"
        f'<line x1="{PAD}" y1="{y(0):.1f}" x2="{WIDTH - PAD}" y2="{y(0):.1f}" stroke="#999" '
        'stroke-dasharray="4 3"/>'
        f'<polyline fill="none" stroke="{colour}" stroke-width="1.5" points="{" ".join(path)}"/>'
        f'<text class="axis" x="4" y="{y(high) + 4:.1f}">{fmt(high)}</text>'
        f'<text class="axis" x="4" y="{y(low) + 4:.1f}">{fmt(low)}</text>'
        f'<text class="axis" x="{PAD}" y="{HEIGHT - 4}">{_when(start)}</text>'
        f'<text class="axis" x="{WIDTH - PAD}" y="{HEIGHT - 4}" text-anchor="end">'
        f"{_when(end_us)}</text>"
        "</svg>"
    )


_COLUMNS = (
    "strategy",
    "currency",
    "fills",
    "trades",
    "win rate",
    "realised",
    "fees",
    "net",
    "Sharpe",
    "Sortino",
    "max drawdown",
    "exposure",
)


def _row(p: Performance) -> str:
    other = ", ".join(f"{fmt(v)} {escape(c)}" for c, v in sorted(p.other_fees.items()))
    cells = [
        escape(p.strategy),
        escape(p.currency),
        str(p.fills),
        str(p.trades),
        "-" if p.win_rate is None else f"{p.win_rate:.1%}",
        fmt(p.realised_pnl),
        fmt(p.fees) + (f" (+ {other})" if other else ""),
        fmt(p.net_pnl),
        fmt(p.sharpe),
        fmt(p.sortino),
        fmt(p.max_drawdown),
        f"{p.exposure:.1%}",
    ]
    return "<tr>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>"


def render(report: PerformanceReport, *, generated_us: int, title: str = "tradingd report") -> str:
    rows = [*report.strategies, *report.total]
    header = "<tr>" + "".join(f"<th>{escape(c)}</th>" for c in _COLUMNS) + "</tr>"
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{escape(title)}</title><style>{_STYLE}</style></head><body>",
        f"<h1>{escape(title)}</h1>",
        f"<p>Period {_when(report.start_us)} to {_when(report.end_us)} UTC ({report.days} days),"
        f" from the ledger's fills; generated {_when(generated_us)} UTC. Realised PnL only"
        " (open positions are not marked); Sharpe and Sortino of daily net PnL, annualised"
        " over 365 days.</p>",
    ]
    if not rows:
        parts.append("<p>No fills in the period.</p>")
    else:
        parts.append(f"<table>{header}{''.join(_row(p) for p in rows)}</table>")
    for p in sorted(rows, key=lambda p: (p.strategy != TOTAL, p.strategy, p.currency)):
        name = "all strategies" if p.strategy == TOTAL else p.strategy
        label = f"{name}, {p.currency}"
        parts.append(f"<h2>{escape(label)}</h2>")
        parts.append(f"<h3>Equity (net PnL, {escape(p.currency)})</h3>")
        parts.append(chart(p.equity, report.end_us, drawdown=False, title=f"equity of {label}"))
        parts.append(f"<h3>Drawdown (max {fmt(p.max_drawdown)} {escape(p.currency)})</h3>")
        parts.append(chart(p.equity, report.end_us, drawdown=True, title=f"drawdown of {label}"))
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"
