"""The daemon's Prometheus metric families, read from the actors' own counters at scrape time.

Nothing here runs per message: the actors keep plain integer counters and log-linear
histograms (``tradingd.metrics``) as they already do for ``tradingd status``, and this
collector turns them into metric families only when Prometheus asks. Histograms in
microseconds are exposed in seconds with fixed buckets (``LatencyHistogram.cumulative``).

Everything is labelled by exchange where the counter belongs to one exchange; the persister,
the analyzer and the shared queues serve every exchange and carry no exchange label.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from decimal import Decimal
from typing import Protocol

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from tradingd.actors.persister import Persister
from tradingd.actors.receiver import Receiver
from tradingd.actors.repairer import GapRepairer
from tradingd.execution.executor import Executor
from tradingd.metrics import LatencyHistogram
from tradingd.queues import BoundedQueue
from tradingd.state import ExchangeState
from tradingd.supervisor import Supervisor

# Bucket upper bounds in microseconds: latencies from 100 µs to 60 s.
LATENCY_BOUNDS_US: tuple[int, ...] = (
    100,
    250,
    500,
    1_000,
    2_500,
    5_000,
    10_000,
    25_000,
    50_000,
    100_000,
    250_000,
    500_000,
    1_000_000,
    2_500_000,
    5_000_000,
    10_000_000,
    30_000_000,
    60_000_000,
)
# Gap repairs take seconds to minutes.
REPAIR_BOUNDS_US: tuple[int, ...] = tuple(
    s * 1_000_000 for s in (1, 2, 5, 10, 30, 60, 120, 300, 600, 1800)
)
BATCH_ROWS_BOUNDS: tuple[int, ...] = (1, 10, 50, 100, 500, 1_000, 2_500, 5_000, 10_000)


class Observed(Protocol):
    """What the collector reads: the composition root (``tradingd.daemon.Daemon``)."""

    @property
    def receivers(self) -> Mapping[str, Sequence[Receiver]]: ...
    @property
    def repairers(self) -> Mapping[str, GapRepairer]: ...
    @property
    def executors(self) -> Mapping[str, Executor]: ...
    @property
    def persister(self) -> Persister | None: ...
    @property
    def queues(self) -> Sequence[BoundedQueue[object]]: ...
    @property
    def supervisor(self) -> Supervisor: ...

    def exchange_names(self) -> list[str]: ...
    def exchange_state(self, exchange: str) -> str | None: ...
    def ready(self) -> bool: ...


def histogram_family(
    name: str,
    documentation: str,
    labels: Sequence[str],
    series: Sequence[tuple[Sequence[str], LatencyHistogram]],
    bounds: Sequence[int],
    scale: float,
) -> HistogramMetricFamily:
    """One histogram family from LatencyHistograms; values and bounds are divided by ``scale``
    (1e6 turns microseconds into seconds)."""
    family = HistogramMetricFamily(name, documentation, labels=list(labels))
    for values, histogram in series:
        cumulative = histogram.cumulative(bounds)
        buckets = [(_bound(b / scale), float(c)) for b, c in zip(bounds, cumulative, strict=True)]
        buckets.append(("+Inf", float(histogram.count)))
        family.add_metric(list(values), buckets, histogram.total / scale)
    return family


def _bound(value: float) -> str:
    return repr(float(value))


def _number(value: Decimal) -> float:
    # Prometheus samples are floats: the exact Decimal stays in the ledger and the reports.
    return float(value)


class DaemonCollector(Collector):
    """Every family of the daemon, built from ``observed`` at each scrape.

    ``kill_switch`` is refreshed from Redis by the HTTP handler just before a scrape (the only
    value not held in memory): 1 on, 0 off, and 1 when it could not be read (any doubt counts
    as on, as for the executor)."""

    def __init__(self, observed: Observed) -> None:
        self._observed = observed
        self.kill_switch = 0.0

    def describe(self) -> list[Metric]:
        # Families depend on what runs; an empty describe keeps registration from scraping.
        return []

    def collect(self) -> Iterator[Metric]:
        yield from self._daemon()
        yield from self._receivers()
        yield from self._queues()
        yield from self._persister()
        yield from self._repairers()
        yield from self._executors()

    # -- daemon, actors, safety ---------------------------------------------------------------

    def _daemon(self) -> Iterator[Metric]:
        observed = self._observed
        yield GaugeMetricFamily(
            "tradingd_ready",
            "1 once every actor started and the daemon serves",
            int(observed.ready()),
        )
        yield GaugeMetricFamily(
            "tradingd_kill_switch",
            "1 while the kill switch is on (or unreadable)",
            self.kill_switch,
        )
        state = GaugeMetricFamily(
            "tradingd_exchange_state",
            "1 for the exchange's current state, 0 for the others",
            labels=["exchange", "state"],
        )
        for name in observed.exchange_names():
            current = observed.exchange_state(name)
            for value in ExchangeState:
                state.add_metric([name, value.value], int(current == value.value))
        yield state
        restarts = CounterMetricFamily(
            "tradingd_actor_restarts", "Restarts of each actor by its supervisor", labels=["actor"]
        )
        checkin = GaugeMetricFamily(
            "tradingd_actor_seconds_since_checkin",
            "Seconds since the actor's loop last made progress",
            labels=["actor"],
        )
        overdue = GaugeMetricFamily(
            "tradingd_actor_overdue",
            "1 when the actor is failed or has not checked in within its timeout",
            labels=["actor"],
        )
        for actor in observed.supervisor.snapshot():
            restarts.add_metric([actor.name], actor.restarts)
            checkin.add_metric([actor.name], actor.seconds_since_checkin)
            overdue.add_metric([actor.name], int(actor.overdue or actor.state == "failed"))
        yield from (restarts, checkin, overdue)

    # -- data plane ---------------------------------------------------------------------------

    def _receivers(self) -> Iterator[Metric]:
        labels = ["exchange", "connection"]
        frames = CounterMetricFamily(
            "tradingd_frames_received", "WebSocket frames received", labels=labels
        )
        records = CounterMetricFamily(
            "tradingd_records_received",
            "Canonical records parsed from frames, by kind",
            labels=["exchange", "kind"],
        )
        parse_errors = CounterMetricFamily(
            "tradingd_parse_errors",
            "Frames that could not be parsed (each became a dead letter)",
            labels=["exchange"],
        )
        reconnects = CounterMetricFamily(
            "tradingd_reconnects", "Connections re-opened after a loss", labels=labels
        )
        rotations = CounterMetricFamily(
            "tradingd_rotations", "Planned rotations to a fresh connection", labels=labels
        )
        connected = GaugeMetricFamily(
            "tradingd_connected", "1 while the connection is open", labels=labels
        )
        since_frame = GaugeMetricFamily(
            "tradingd_seconds_since_frame",
            "Seconds since the connection's last frame (-1 before the first)",
            labels=labels,
        )
        for exchange, receivers in self._observed.receivers.items():
            kinds = {"trade": 0, "bar": 0, "ticker": 0}
            errors = 0
            for index, receiver in enumerate(receivers):
                stats = receiver.snapshot()
                values = [exchange, str(index)]
                frames.add_metric(values, stats.frames)
                reconnects.add_metric(values, stats.reconnects)
                rotations.add_metric(values, stats.rotations)
                connected.add_metric(values, int(stats.connected))
                since_frame.add_metric(values, stats.seconds_since_frame)
                kinds["trade"] += stats.trades
                kinds["bar"] += stats.bars
                kinds["ticker"] += stats.tickers
                errors += stats.dead_letters
            for kind, count in kinds.items():
                records.add_metric([exchange, kind], count)
            parse_errors.add_metric([exchange], errors)
        yield from (frames, records, parse_errors, reconnects, rotations, connected, since_frame)

    def _queues(self) -> Iterator[Metric]:
        depth = GaugeMetricFamily("tradingd_queue_depth", "Items queued now", labels=["queue"])
        capacity = GaugeMetricFamily("tradingd_queue_capacity", "Queue capacity", labels=["queue"])
        high = GaugeMetricFamily(
            "tradingd_queue_high_water", "Deepest the queue has been", labels=["queue"]
        )
        dropped = CounterMetricFamily(
            "tradingd_queue_dropped",
            "Items dropped or replaced by the queue's overflow policy",
            labels=["queue", "policy"],
        )
        for queue in self._observed.queues:
            stats = queue.stats()
            depth.add_metric([stats.name], stats.depth)
            capacity.add_metric([stats.name], stats.capacity)
            high.add_metric([stats.name], stats.high_water)
            dropped.add_metric([stats.name, stats.policy], stats.dropped)
        yield from (depth, capacity, high, dropped)

    def _persister(self) -> Iterator[Metric]:
        persister = self._observed.persister
        written = CounterMetricFamily(
            "tradingd_rows_written", "Rows the persister committed, by kind", labels=["kind"]
        )
        dead_letters = CounterMetricFamily(
            "tradingd_dead_letters_written", "Dead letters stored in the dead_letters table"
        )
        retries = CounterMetricFamily(
            "tradingd_persister_retries", "Batches retried after a PostgreSQL outage"
        )
        if persister is None:
            return
        written.add_metric(["trade"], persister.trades_written)
        written.add_metric(["bar"], persister.bars_written)
        written.add_metric(["ticker_snapshot"], persister.ticker_snapshot_rows)
        dead_letters.add_metric([], persister.dead_letters_written)
        retries.add_metric([], persister.retries)
        yield from (written, dead_letters, retries)
        yield histogram_family(
            "tradingd_persister_batch_rows",
            "Records per committed batch",
            [],
            [((), persister.batch_rows)],
            BATCH_ROWS_BOUNDS,
            1.0,
        )
        yield histogram_family(
            "tradingd_persister_commit_seconds",
            "Time to write and commit one batch",
            [],
            [((), persister.flush_time)],
            LATENCY_BOUNDS_US,
            1e6,
        )
        yield histogram_family(
            "tradingd_frame_to_commit_seconds",
            "From a record's frame arriving to its batch committing (sampled in large batches)",
            [],
            [((), persister.commit_latency)],
            LATENCY_BOUNDS_US,
            1e6,
        )

    def _repairers(self) -> Iterator[Metric]:
        open_gaps = GaugeMetricFamily(
            "tradingd_gaps_open", "Gaps in the trade tape not yet repaired", labels=["exchange"]
        )
        gapped = GaugeMetricFamily(
            "tradingd_instrument_gap_open",
            "1 for each instrument with a gap being repaired",
            labels=["exchange", "instrument"],
        )
        detected = CounterMetricFamily(
            "tradingd_gaps_detected", "Gaps detected", labels=["exchange"]
        )
        repaired = CounterMetricFamily(
            "tradingd_gaps_repaired", "Gaps repaired from the venue", labels=["exchange"]
        )
        unfillable = CounterMetricFamily(
            "tradingd_gaps_unfillable", "Gaps the venue could not fill", labels=["exchange"]
        )
        rows = CounterMetricFamily(
            "tradingd_repaired_rows", "Trades inserted by repairs", labels=["exchange"]
        )
        series: list[tuple[Sequence[str], LatencyHistogram]] = []
        for exchange, repairer in self._observed.repairers.items():
            open_gaps.add_metric([exchange], repairer.open_gaps)
            for instrument in sorted(repairer.open_gap_instruments() or ()):
                gapped.add_metric([exchange, instrument], 1)
            detected.add_metric([exchange], repairer.stats.detected)
            repaired.add_metric([exchange], repairer.stats.repaired)
            unfillable.add_metric([exchange], repairer.stats.unfillable)
            rows.add_metric([exchange], repairer.rows_inserted)
            series.append(([exchange], repairer.latency))
        yield from (open_gaps, gapped, detected, repaired, unfillable, rows)
        yield histogram_family(
            "tradingd_repair_latency_seconds",
            "From a gap's detection to its repair",
            ["exchange"],
            series,
            REPAIR_BOUNDS_US,
            1e6,
        )

    # -- executor -------------------------------------------------------------------------------

    def _executors(self) -> Iterator[Metric]:
        open_orders = GaugeMetricFamily(
            "tradingd_orders_open",
            "Non-terminal orders in the ledger, by state",
            labels=["exchange", "state"],
        )
        transitions = CounterMetricFamily(
            "tradingd_orders",
            "Orders reaching each state since start",
            labels=["exchange", "state"],
        )
        unknown = GaugeMetricFamily(
            "tradingd_orders_unknown",
            "Orders whose outcome the venue has not yet told (block their instrument)",
            labels=["exchange"],
        )
        fills = CounterMetricFamily(
            "tradingd_fills", "Fills recorded since start", labels=["exchange", "instrument"]
        )
        denials = CounterMetricFamily(
            "tradingd_order_denials", "Orders denied, by reason", labels=["exchange", "reason"]
        )
        trading = GaugeMetricFamily(
            "tradingd_trading_allowed",
            "1 while the executor last saw the gate open and is not halted",
            labels=["exchange"],
        )
        positions = GaugeMetricFamily(
            "tradingd_position",
            "Signed open position, by strategy",
            labels=["exchange", "strategy", "instrument"],
        )
        balances = GaugeMetricFamily(
            "tradingd_balance", "Account balance as the fills say", labels=["exchange", "currency"]
        )
        realised = GaugeMetricFamily(
            "tradingd_realised_pnl",
            "Gross realised PnL (fees not deducted), by strategy",
            labels=["exchange", "strategy", "currency"],
        )
        unrealised = GaugeMetricFamily(
            "tradingd_unrealised_pnl",
            "Open positions valued at the last trade price, by strategy",
            labels=["exchange", "strategy", "currency"],
        )
        round_trips: list[tuple[Sequence[str], LatencyHistogram]] = []
        tick_ages: list[tuple[Sequence[str], LatencyHistogram]] = []
        for exchange, executor in self._observed.executors.items():
            by_state = executor.orders_by_state()
            for state, count in sorted(by_state.items()):
                open_orders.add_metric([exchange, state], count)
            unknown.add_metric([exchange], by_state.get("UNKNOWN", 0))
            for state, count in sorted(executor.transitions.items()):
                transitions.add_metric([exchange, state], count)
            for instrument, count in sorted(executor.fills.items()):
                fills.add_metric([exchange, instrument], count)
            for reason, count in sorted(executor.denials.items()):
                denials.add_metric([exchange, reason], count)
            trading.add_metric([exchange], int(executor.trading_allowed_hint()))
            accounts = executor.accounts()
            for strategy, instrument, quantity in accounts.positions:
                positions.add_metric([exchange, strategy, instrument], _number(quantity))
            for currency, total in sorted(accounts.balances.items()):
                balances.add_metric([exchange, currency], _number(total))
            for strategy, by_currency in sorted(accounts.realised.items()):
                for currency, amount in sorted(by_currency.items()):
                    realised.add_metric([exchange, strategy, currency], _number(amount))
            for strategy, by_currency in sorted(accounts.unrealised.items()):
                for currency, amount in sorted(by_currency.items()):
                    unrealised.add_metric([exchange, strategy, currency], _number(amount))
            round_trips.append(([exchange], executor.place_latency))
            tick_ages.append(([exchange], executor.tick_latency))
        yield from (open_orders, transitions, unknown, fills, denials, trading)
        yield from (positions, balances, realised, unrealised)
        yield histogram_family(
            "tradingd_order_round_trip_seconds",
            "From sending a new order to the venue's reply",
            ["exchange"],
            round_trips,
            LATENCY_BOUNDS_US,
            1e6,
        )
        yield histogram_family(
            "tradingd_tick_to_strategy_seconds",
            "From a market record's frame arriving to the strategies being handed it",
            ["exchange"],
            tick_ages,
            LATENCY_BOUNDS_US,
            1e6,
        )
