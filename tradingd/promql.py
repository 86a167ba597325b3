"""The part of PromQL that the shipped Grafana dashboard uses, evaluated over scraped samples.

It lets ``deploy/grafana/render_preview.py`` draw the dashboard from a live daemon without a
Prometheus server, and lets the tests evaluate every dashboard query against a real scrape.
The daemon never imports it. Pure functions over a ``SeriesStore``; no I/O.

Supported: vector selectors with ``= != =~ !~`` matchers, range selectors, ``rate``,
``irate``, ``increase``, ``histogram_quantile``, ``sum``/``min``/``max``/``avg``/``count``
with ``by``/``without``, ``+ - * /`` and the comparison filters ``== != > < >= <=`` between
vectors (one-to-one on all labels but the name) and scalars. ``rate`` and ``increase``
extrapolate as Prometheus 2.x does, ``histogram_quantile`` interpolates as Prometheus does, and
an instant selector looks back 5 minutes and honours staleness (a series missing from a later
scrape ends there). Anything else is refused with ``PromQLError``.
"""

from __future__ import annotations

import itertools
import math
import re
from bisect import bisect_left, bisect_right
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

from prometheus_client.parser import text_string_to_metric_families

LOOKBACK_S = 300.0

Labels = tuple[tuple[str, str], ...]


class PromQLError(ValueError):
    """A query outside the supported subset, or malformed."""


@dataclass(frozen=True)
class Sample:
    labels: Labels  # sorted; includes __name__ while the selector's name is kept
    value: float

    def label(self, name: str) -> str:
        return dict(self.labels).get(name, "")


def make_labels(mapping: Mapping[str, str]) -> Labels:
    return tuple(sorted(mapping.items()))


def _without(labels: Labels, names: Iterable[str]) -> Labels:
    drop = set(names)
    return tuple(item for item in labels if item[0] not in drop)


# -- storage --------------------------------------------------------------------------------


@dataclass
class _Series:
    times: list[float] = field(default_factory=list)
    values: list[float] = field(default_factory=list)
    # Times at which the series was missing from a scrape after being present.
    stale: list[float] = field(default_factory=list)


class SeriesStore:
    """Samples by series, in scrape order: what Prometheus would hold after scraping."""

    def __init__(self) -> None:
        self._series: dict[Labels, _Series] = {}
        self._present: dict[str, set[Labels]] = {}

    def add_scrape(
        self,
        timestamp: float,
        samples: Iterable[tuple[Mapping[str, str], float]],
        target: str = "",
    ) -> None:
        """One scrape of ``target``: its series missing from it end here (staleness)."""
        seen: set[Labels] = set()
        for mapping, value in samples:
            labels = make_labels(mapping)
            series = self._series.setdefault(labels, _Series())
            if series.times and timestamp <= series.times[-1]:
                raise ValueError(f"scrape at {timestamp} is not after {series.times[-1]}")
            series.times.append(timestamp)
            series.values.append(float(value))
            seen.add(labels)
        for labels in self._present.get(target, set()) - seen:
            self._series[labels].stale.append(timestamp)
        self._present[target] = seen

    def select(self, matchers: tuple[Matcher, ...]) -> Iterable[tuple[Labels, _Series]]:
        for labels, series in self._series.items():
            mapping = dict(labels)
            if all(m.matches(mapping.get(m.label, "")) for m in matchers):
                yield labels, series


def scrape_samples(
    text: str, instance: str, job: str = "tradingd"
) -> Iterable[tuple[dict[str, str], float]]:
    """A /metrics text's samples as Prometheus stores them: name, labels, job and instance."""
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            yield {"__name__": s.name, **s.labels, "job": job, "instance": instance}, s.value


# -- syntax ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Matcher:
    label: str
    op: str
    value: str

    def matches(self, actual: str) -> bool:
        if self.op == "=":
            return actual == self.value
        if self.op == "!=":
            return actual != self.value
        found = re.fullmatch(self.value, actual) is not None
        return found if self.op == "=~" else not found


@dataclass(frozen=True)
class Number:
    value: float


@dataclass(frozen=True)
class Selector:
    matchers: tuple[Matcher, ...]
    range_s: float | None = None


@dataclass(frozen=True)
class Call:
    function: str
    args: tuple[Expr, ...]


@dataclass(frozen=True)
class Aggregate:
    op: str
    grouping: tuple[str, ...]
    without: bool
    expr: Expr


@dataclass(frozen=True)
class Binary:
    op: str
    lhs: Expr
    rhs: Expr


Expr = Number | Selector | Call | Aggregate | Binary

AGGREGATIONS = frozenset({"sum", "min", "max", "avg", "count"})
FUNCTIONS = frozenset({"rate", "irate", "increase", "histogram_quantile"})
COMPARISONS = frozenset({"==", "!=", ">", "<", ">=", "<="})
_PRECEDENCE = (COMPARISONS, frozenset({"+", "-"}), frozenset({"*", "/"}))
_DURATION = re.compile(r"(\d+)(ms|s|m|h|d|w|y)")
_UNIT_S = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800, "y": 31536000}
_TOKEN = re.compile(
    r"""\s*(?:
      (?P<number>\d+(?:\.\d*)?(?:[eE][-+]?\d+)?(?![A-Za-z_0-9.])|\.\d+)
    | (?P<duration>(?:\d+(?:ms|s|m|h|d|w|y))+)
    | (?P<ident>[A-Za-z_:][A-Za-z0-9_:]*)
    | (?P<string>"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*')
    | (?P<op>=~|!~|==|!=|>=|<=|[-+*/(){}\[\],=<>])
    )""",
    re.VERBOSE,
)


def _tokenize(query: str) -> list[tuple[str, str]]:
    tokens: list[tuple[str, str]] = []
    position = 0
    while position < len(query):
        if query[position:].strip() == "":
            break
        found = _TOKEN.match(query, position)
        if found is None or found.lastgroup is None:
            raise PromQLError(f"unexpected {query[position:].strip()[:20]!r} in {query!r}")
        tokens.append((found.lastgroup, found.group(found.lastgroup)))
        position = found.end()
    return tokens


def _duration_s(text: str) -> float:
    return sum(int(n) * _UNIT_S[unit] for n, unit in _DURATION.findall(text))


def _unquote(text: str) -> str:
    return re.sub(r"\\(.)", r"\1", text[1:-1])


class _Parser:
    def __init__(self, query: str) -> None:
        self.query = query
        self.tokens = _tokenize(query)
        self.at = 0

    def peek(self) -> tuple[str, str] | None:
        return self.tokens[self.at] if self.at < len(self.tokens) else None

    def take(self, value: str | None = None, kind: str | None = None) -> str:
        token = self.peek()
        if (
            token is None
            or (value is not None and token[1] != value)
            or (kind and token[0] != kind)
        ):
            wanted = value or kind
            found = "the end" if token is None else repr(token[1])
            raise PromQLError(f"expected {wanted} but found {found} in {self.query!r}")
        self.at += 1
        return token[1]

    def parse(self) -> Expr:
        expr = self.binary(0)
        if (token := self.peek()) is not None:
            raise PromQLError(f"unexpected {token[1]!r} in {self.query!r}")
        return expr

    def binary(self, level: int) -> Expr:
        if level == len(_PRECEDENCE):
            return self.unary()
        lhs = self.binary(level + 1)
        while (
            (token := self.peek()) is not None
            and token[0] == "op"
            and token[1] in _PRECEDENCE[level]
        ):
            self.at += 1
            lhs = Binary(token[1], lhs, self.binary(level + 1))
        return lhs

    def unary(self) -> Expr:
        token = self.peek()
        if token == ("op", "-"):
            self.at += 1
            return Binary("*", Number(-1.0), self.unary())
        return self.primary()

    def primary(self) -> Expr:
        token = self.peek()
        if token is None:
            raise PromQLError(f"unexpected end of {self.query!r}")
        kind, text = token
        if kind == "number":
            self.at += 1
            return Number(float(text))
        if text == "(":
            self.at += 1
            inner = self.binary(0)
            self.take(")")
            return inner
        if text == "{":
            return self.selector(None)
        if kind != "ident":
            raise PromQLError(f"unexpected {text!r} in {self.query!r}")
        self.at += 1
        following = self.peek()
        if (
            text in AGGREGATIONS
            and following is not None
            and following[1] in ("(", "by", "without")
        ):
            return self.aggregate(text)
        if following == ("op", "("):
            if text not in FUNCTIONS:
                raise PromQLError(f"function {text}() is not supported (in {self.query!r})")
            self.at += 1
            args = [self.binary(0)]
            while self.peek() == ("op", ","):
                self.at += 1
                args.append(self.binary(0))
            self.take(")")
            return Call(text, tuple(args))
        return self.selector(text)

    def grouping(self) -> tuple[str, ...]:
        self.take("(")
        names: list[str] = []
        while self.peek() != ("op", ")"):
            names.append(self.take(kind="ident"))
            if self.peek() == ("op", ","):
                self.at += 1
        self.take(")")
        return tuple(names)

    def aggregate(self, op: str) -> Expr:
        grouping: tuple[str, ...] = ()
        without = False
        if (token := self.peek()) is not None and token[1] in ("by", "without"):
            self.at += 1
            without = token[1] == "without"
            grouping = self.grouping()
        self.take("(")
        expr = self.binary(0)
        self.take(")")
        if (token := self.peek()) is not None and token[1] in ("by", "without"):
            self.at += 1
            without = token[1] == "without"
            grouping = self.grouping()
        return Aggregate(op, grouping, without, expr)

    def selector(self, name: str | None) -> Expr:
        matchers: list[Matcher] = [] if name is None else [Matcher("__name__", "=", name)]
        if self.peek() == ("op", "{"):
            self.at += 1
            while self.peek() != ("op", "}"):
                label = self.take(kind="ident")
                op = self.take(kind="op")
                if op not in ("=", "!=", "=~", "!~"):
                    raise PromQLError(f"bad matcher {label}{op} in {self.query!r}")
                matchers.append(Matcher(label, op, _unquote(self.take(kind="string"))))
                if self.peek() == ("op", ","):
                    self.at += 1
            self.take("}")
        if not matchers:
            raise PromQLError(f"a selector needs a name or a matcher in {self.query!r}")
        range_s = None
        if self.peek() == ("op", "["):
            self.at += 1
            range_s = _duration_s(self.take(kind="duration"))
            self.take("]")
        return Selector(tuple(matchers), range_s)


def parse(query: str) -> Expr:
    return _Parser(query).parse()


# -- evaluation -----------------------------------------------------------------------------

Value = float | list[Sample]


def _instant(store: SeriesStore, selector: Selector, t: float) -> list[Sample]:
    out: list[Sample] = []
    for labels, series in store.select(selector.matchers):
        index = bisect_right(series.times, t) - 1
        if index < 0 or t - series.times[index] > LOOKBACK_S:
            continue
        ended = bisect_right(series.stale, t) - 1
        if ended >= 0 and series.stale[ended] > series.times[index]:
            continue
        out.append(Sample(labels, series.values[index]))
    return out


def _window(series: _Series, start: float, end: float) -> tuple[list[float], list[float]]:
    # Prometheus 2.x: both ends of the range are included.
    lo, hi = bisect_left(series.times, start), bisect_right(series.times, end)
    return series.times[lo:hi], series.values[lo:hi]


def _extrapolated(
    times: list[float], values: list[float], start: float, end: float, rate: bool
) -> float | None:
    """Prometheus's ``extrapolatedRate`` for counters (resets count as restarts from zero)."""
    if len(values) < 2:
        return None
    result = values[-1] - values[0]
    for previous, current in itertools.pairwise(values):
        if current < previous:
            result += previous
    to_start, to_end = times[0] - start, end - times[-1]
    sampled = times[-1] - times[0]
    average = sampled / (len(values) - 1)
    if result > 0 and values[0] >= 0:
        to_zero = sampled * (values[0] / result)
        to_start = min(to_start, to_zero)
    threshold = average * 1.1
    interval = sampled
    interval += to_start if to_start < threshold else average / 2
    interval += to_end if to_end < threshold else average / 2
    result *= interval / sampled
    return result / (end - start) if rate else result


def _irate(times: list[float], values: list[float]) -> float | None:
    if len(values) < 2:
        return None
    last, previous = values[-1], values[-2]
    delta = last if last < previous else last - previous
    return delta / (times[-1] - times[-2])


def _bucket_quantile(q: float, buckets: list[tuple[float, float]]) -> float:
    """Prometheus's ``bucketQuantile`` over (upper bound, cumulative count) pairs."""
    if q < 0:
        return -math.inf
    if q > 1:
        return math.inf
    buckets = sorted(buckets)
    if not buckets or buckets[-1][0] != math.inf:
        return math.nan
    merged: list[list[float]] = []
    for bound, count in buckets:
        if merged and merged[-1][0] == bound:
            merged[-1][1] += count
        else:
            merged.append([bound, count])
    for i in range(1, len(merged)):  # counts may be a hair off monotonic after rate()
        merged[i][1] = max(merged[i][1], merged[i - 1][1])
    if len(merged) < 2:
        return math.nan
    observations = merged[-1][1]
    if observations == 0:
        return math.nan
    rank = q * observations
    b = next(i for i, (_, count) in enumerate(merged) if count >= rank)
    if b == len(merged) - 1:
        return merged[-2][0]
    if b == 0 and merged[0][0] <= 0:
        return merged[0][0]
    start, end, count = 0.0, merged[b][0], merged[b][1]
    if b > 0:
        start = merged[b - 1][0]
        count -= merged[b - 1][1]
        rank -= merged[b - 1][1]
    return start + (end - start) * (rank / count)


def _histogram_quantile(q: float, vector: list[Sample]) -> list[Sample]:
    groups: dict[Labels, list[tuple[float, float]]] = {}
    for s in vector:
        le = s.label("le")
        if not le:
            continue
        groups.setdefault(_without(s.labels, ("le", "__name__")), []).append((float(le), s.value))
    return [Sample(labels, _bucket_quantile(q, buckets)) for labels, buckets in groups.items()]


def _aggregate(node: Aggregate, vector: list[Sample]) -> list[Sample]:
    groups: dict[Labels, list[float]] = {}
    for s in vector:
        if node.without:
            key = _without(s.labels, (*node.grouping, "__name__"))
        else:
            key = tuple(item for item in s.labels if item[0] in node.grouping)
        groups.setdefault(key, []).append(s.value)
    combine: dict[str, Callable[[list[float]], float]] = {
        "sum": math.fsum,
        "min": min,
        "max": max,
        "avg": lambda values: math.fsum(values) / len(values),
        "count": lambda values: float(len(values)),
    }
    return [Sample(key, combine[node.op](values)) for key, values in groups.items()]


_ARITHMETIC: dict[str, Callable[[float, float], float]] = {
    "+": lambda a, b: a + b,
    "-": lambda a, b: a - b,
    "*": lambda a, b: a * b,
    "/": lambda a, b: (
        a / b if b else (math.nan if a == 0 or math.isnan(a) else math.copysign(math.inf, a))
    ),
    "==": lambda a, b: float(a == b),
    "!=": lambda a, b: float(a != b),
    ">": lambda a, b: float(a > b),
    "<": lambda a, b: float(a < b),
    ">=": lambda a, b: float(a >= b),
    "<=": lambda a, b: float(a <= b),
}


def _binary(op: str, lhs: Value, rhs: Value) -> Value:
    apply = _ARITHMETIC[op]
    compare = op in COMPARISONS
    if isinstance(lhs, float) and isinstance(rhs, float):
        return apply(lhs, rhs)
    if isinstance(lhs, list) and isinstance(rhs, list):
        by_labels = {_without(s.labels, ("__name__",)): s.value for s in rhs}
        out = []
        for s in lhs:
            key = _without(s.labels, ("__name__",))
            if key not in by_labels:
                continue
            value = apply(s.value, by_labels[key])
            if compare:
                if value:
                    out.append(s)
            else:
                out.append(Sample(key, value))
        return out
    vector, scalar, vector_left = (lhs, rhs, True) if isinstance(lhs, list) else (rhs, lhs, False)
    assert isinstance(vector, list) and isinstance(scalar, float)
    out = []
    for s in vector:
        value = apply(s.value, scalar) if vector_left else apply(scalar, s.value)
        if compare:
            if value:
                out.append(s)
        else:
            out.append(Sample(_without(s.labels, ("__name__",)), value))
    return out


def evaluate(expr: Expr, store: SeriesStore, t: float) -> Value:
    """The instant value of ``expr`` at ``t`` (seconds): a scalar or a vector."""
    if isinstance(expr, Number):
        return expr.value
    if isinstance(expr, Selector):
        if expr.range_s is not None:
            raise PromQLError("a range selector only goes inside rate(), irate() or increase()")
        return _instant(store, expr, t)
    if isinstance(expr, Aggregate):
        vector = evaluate(expr.expr, store, t)
        if not isinstance(vector, list):
            raise PromQLError(f"{expr.op}() takes a vector")
        return _aggregate(expr, vector)
    if isinstance(expr, Binary):
        return _binary(expr.op, evaluate(expr.lhs, store, t), evaluate(expr.rhs, store, t))
    if expr.function == "histogram_quantile":
        if len(expr.args) != 2:
            raise PromQLError("histogram_quantile(q, vector) takes two arguments")
        q, vector = evaluate(expr.args[0], store, t), evaluate(expr.args[1], store, t)
        if not isinstance(q, float) or not isinstance(vector, list):
            raise PromQLError("histogram_quantile(q, vector) takes a scalar and a vector")
        return _histogram_quantile(q, vector)
    (arg,) = expr.args if len(expr.args) == 1 else (None,)
    if not isinstance(arg, Selector) or arg.range_s is None:
        raise PromQLError(f"{expr.function}() takes one range selector")
    start = t - arg.range_s
    out: list[Sample] = []
    for labels, series in store.select(arg.matchers):
        times, values = _window(series, start, t)
        if expr.function == "irate":
            value = _irate(times, values)
        else:
            value = _extrapolated(times, values, start, t, rate=expr.function == "rate")
        if value is not None:
            out.append(Sample(_without(labels, ("__name__",)), value))
    return out
