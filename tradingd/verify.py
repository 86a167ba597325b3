"""``tradingd unlock``: the verification report, its checks, and the LOCKED → HEALTHY step.

Per exchange the report shows instruments by market type, public trades and the age of the
last one per configured instrument, OHLC rows of the last day, open gaps, dead letters and the
clock skew measured now. The checks (a failed one refuses the unlock; ``--force --reason``
overrides those marked forceable, and the reason records what was overridden):

- ``state``: the exchange is LOCKED or AUDITING. Not forceable: the only way to HEALTHY from
  elsewhere is through the state machine (an exchange already HEALTHY is left alone and is no
  failure).
- ``reconciliation`` (AUDITING only): the running daemon reconciles the account with the venue
  now (``tradingd reconcile``) and finds nothing differing.
- ``instruments``: every configured symbol has an active instrument.
- ``ohlc``: every configured symbol has bars that opened within the last day.
- ``trades``: every configured symbol has captured public trades (when the trades channel is
  configured): data capture must have been seen working before trading on it. A last trade
  older than an hour is a warning only (quiet instruments exist).
- ``gaps``: no open gap in the trade sequence.
- ``clock``: the exchange answered and the skew is within ``daemon.max_clock_skew`` (above
  ``daemon.clock_warn_skew``: a warning).
- ``ban``: no venue ban a recent lock recorded (``banned until ...``, Binance's 418) is still
  on. Not forceable: the venue escalates a ban for every request inside it.
- dead letters in the last day and the kill switch are warnings.

With ``--all`` it is all or nothing: if one exchange fails, none is unlocked. In a terminal it
asks for confirmation (``--yes`` skips it); elsewhere ``--yes`` is required.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Literal

import aiohttp
import asyncpg
import redis.asyncio as aioredis
from loguru import logger

from tradingd.adapters.base import ExchangeAdapter
from tradingd.adapters.registry import create_adapter
from tradingd.bans import banned_until_us
from tradingd.clock import ClockReading, measure_skew
from tradingd.config import Config, resolve_config_path
from tradingd.execution.control import ControlClient, NoDaemon, NoReply, Reconcile
from tradingd.exitcodes import EX_FAILURE, EX_OK, EX_UNAVAILABLE, EX_USAGE
from tradingd.model import Channel
from tradingd.secrets import secret_store
from tradingd.state import (
    ExchangeState,
    IllegalTransition,
    StateUnavailable,
    current_operator,
    history,
    read_kill_switch,
    read_state,
    transition,
)
from tradingd.storage import Storage, StorageError, open_storage

DEFAULT_REASON = "verified by operator"
STALE_TRADE_SECONDS = 3600.0

Verdict = Literal["ok", "warn", "fail"]


@dataclass(frozen=True)
class Check:
    name: str
    verdict: Verdict
    detail: str
    forceable: bool = True

    @property
    def failed(self) -> bool:
        return self.verdict == "fail"


@dataclass(frozen=True)
class SymbolFacts:
    symbol: str
    instrument_name: str | None  # as stored (None: no instrument matches the symbol)
    active: bool
    trades: int
    last_trade_age: float | None  # seconds
    ohlc_last_day: int


@dataclass
class ExchangeFacts:
    exchange: str
    state: ExchangeState | None
    state_error: str = ""
    instruments_by_type: dict[str, tuple[int, int]] = field(default_factory=dict)  # active, all
    symbols: list[SymbolFacts] = field(default_factory=list)
    trades_configured: bool = True
    open_gaps: int = 0
    dead_letters: int = 0
    dead_letters_last_day: int = 0
    clock: ClockReading | None = None
    clock_error: str = ""
    kill_switch: bool = False
    # AUDITING only: whether a reconciliation run for this unlock was clean, and its summary.
    reconciliation_clean: bool | None = None
    reconciliation: str = ""
    # Seconds left of the latest ban a recorded lock reason notes (None: none noted).
    ban_left: float | None = None


# -- the checks (pure) ----------------------------------------------------------------------


def evaluate(facts: ExchangeFacts, max_skew: float, warn_skew: float) -> list[Check]:
    checks: list[Check] = []
    if facts.state_error:
        checks.append(Check("state", "fail", facts.state_error, forceable=False))
    elif facts.state is ExchangeState.LOCKED:
        checks.append(Check("state", "ok", "LOCKED"))
    elif facts.state is ExchangeState.HEALTHY:
        checks.append(Check("state", "ok", "already HEALTHY: nothing to unlock"))
    elif facts.state is ExchangeState.AUDITING:
        checks.append(
            Check("state", "ok", "AUDITING: unlocked once a fresh reconciliation is clean")
        )
        checks.append(
            Check(
                "reconciliation",
                "ok" if facts.reconciliation_clean else "fail",
                facts.reconciliation or "not reconciled",
            )
        )
    else:
        shown = facts.state.value if facts.state else "never bootstrapped"
        hint = {
            None: "run `tradingd --bootstrap` first",
            ExchangeState.BOOTSTRAPPING: "the bootstrap has not finished: run it again",
            ExchangeState.RECONCILING: "the daemon is reconciling it; it returns to HEALTHY "
            "or LOCKED by itself",
        }.get(facts.state, "")
        checks.append(
            Check(
                "state",
                "fail",
                f"{shown}: unlock moves LOCKED (or AUDITING, reconciled) -> HEALTHY only; {hint}",
                forceable=False,
            )
        )

    if facts.ban_left is not None and facts.ban_left > 0:
        checks.append(
            Check(
                "ban",
                "fail",
                f"the venue's ban lasts {facts.ban_left:.0f} s more; unlock after it",
                forceable=False,
            )
        )

    missing = [s.symbol for s in facts.symbols if s.instrument_name is None]
    inactive = [s.symbol for s in facts.symbols if s.instrument_name is not None and not s.active]
    if missing or inactive:
        parts = []
        if missing:
            parts.append("no instrument for " + ", ".join(missing))
        if inactive:
            parts.append("inactive: " + ", ".join(inactive))
        checks.append(Check("instruments", "fail", "; ".join(parts)))
    else:
        checks.append(Check("instruments", "ok", f"{len(facts.symbols)} configured symbols active"))

    no_bars = [s.symbol for s in facts.symbols if s.ohlc_last_day <= 0]
    if no_bars:
        checks.append(Check("ohlc", "fail", "no bars in the last day for " + ", ".join(no_bars)))
    else:
        checks.append(Check("ohlc", "ok", "bars in the last day for every configured symbol"))

    if facts.trades_configured:
        never = [s.symbol for s in facts.symbols if s.trades <= 0]
        stale = [
            s.symbol
            for s in facts.symbols
            if s.trades > 0
            and s.last_trade_age is not None
            and s.last_trade_age > STALE_TRADE_SECONDS
        ]
        if never:
            checks.append(
                Check(
                    "trades",
                    "fail",
                    "no public trades captured for "
                    + ", ".join(never)
                    + " (run the daemon and let it capture first)",
                )
            )
        elif stale:
            checks.append(Check("trades", "warn", "last trade older than 1 h: " + ", ".join(stale)))
        else:
            checks.append(Check("trades", "ok", "trades captured for every configured symbol"))

    if facts.open_gaps:
        checks.append(Check("gaps", "fail", f"{facts.open_gaps} open gaps in the trade sequence"))
    else:
        checks.append(Check("gaps", "ok", "no open gaps"))

    if facts.clock is None:
        checks.append(
            Check(
                "clock", "fail", f"could not measure the skew: {facts.clock_error or 'no answer'}"
            )
        )
    else:
        skew = facts.clock.skew
        text = f"{skew:+.3f} s (limit {max_skew:g} s)"
        if abs(skew) > max_skew:
            checks.append(Check("clock", "fail", text + "; synchronise the system clock"))
        elif abs(skew) > warn_skew:
            checks.append(Check("clock", "warn", text))
        else:
            checks.append(Check("clock", "ok", text))

    if facts.dead_letters_last_day:
        checks.append(
            Check(
                "dead letters",
                "warn",
                f"{facts.dead_letters_last_day} in the last day (`tradingd dlq list`)",
            )
        )
    if facts.kill_switch:
        checks.append(
            Check(
                "kill switch",
                "warn",
                "the kill switch is on: nothing trades until `tradingd kill-switch off`",
            )
        )
    return checks


def _age(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def render_report(facts: ExchangeFacts, checks: Sequence[Check]) -> list[str]:
    lines = [f"== {facts.exchange}: {facts.state.value if facts.state else 'never bootstrapped'}"]
    lines.append("  instruments (active/all by market type):")
    if not facts.instruments_by_type:
        lines.append("    none")
    for market_type, (active, total) in sorted(facts.instruments_by_type.items()):
        lines.append(f"    {market_type:<10} {active}/{total}")
    lines.append(f"  {'symbol':<24} {'trades':>10} {'last trade':>11} {'ohlc 24h':>9}")
    for s in facts.symbols:
        name = s.instrument_name or f"{s.symbol} (unknown)"
        lines.append(
            f"  {name:<24} {s.trades:>10,} {_age(s.last_trade_age):>11} {s.ohlc_last_day:>9,}"
        )
    lines.append(f"  open gaps: {facts.open_gaps}")
    lines.append(
        f"  dead letters: {facts.dead_letters} ({facts.dead_letters_last_day} in the last day)"
    )
    if facts.clock is not None:
        lines.append(
            f"  clock skew: {facts.clock.skew:+.3f} s "
            f"(round trip {facts.clock.round_trip * 1000:.0f} ms)"
        )
    else:
        lines.append(f"  clock skew: unknown ({facts.clock_error})")
    lines.append("  checks:")
    marks = {"ok": "ok  ", "warn": "WARN", "fail": "FAIL"}
    for check in checks:
        lines.append(f"    [{marks[check.verdict]}] {check.name:<13} {check.detail}")
    return lines


# -- gathering the facts --------------------------------------------------------------------

_SYMBOL_FACTS = """
WITH wanted AS (
    SELECT s.symbol, s.ord,
           (SELECT i.instrument_name FROM instruments i
             WHERE i.exchange = $1 AND upper(i.instrument_name) = upper(s.symbol)
             ORDER BY (i.instrument_name = s.symbol) DESC LIMIT 1) AS instrument_name
    FROM unnest($2::text[]) WITH ORDINALITY AS s(symbol, ord)
)
SELECT w.symbol, w.instrument_name,
       coalesce((SELECT i.is_active FROM instruments i
                  WHERE i.exchange = $1 AND i.instrument_name = w.instrument_name), false)
           AS active,
       (SELECT count(*) FROM public_trades t
         WHERE t.exchange = $1 AND t.instrument_name = w.instrument_name) AS trades,
       (SELECT extract(epoch FROM now() - t.trade_timestamp)::float8 FROM public_trades t
         WHERE t.exchange = $1 AND t.instrument_name = w.instrument_name
         ORDER BY t.trade_seq DESC LIMIT 1) AS last_trade_age,
       (SELECT count(*) FROM ohlc o
         WHERE o.exchange = $1 AND o.instrument_name = w.instrument_name
           AND o.tick > now() - interval '1 day') AS ohlc_last_day
FROM wanted w ORDER BY w.ord
"""


async def gather_facts(
    config: Config,
    pool: asyncpg.Pool,
    redis: aioredis.Redis,
    exchange: str,
    adapter: ExchangeAdapter | None,
    clock_ns: Callable[[], int] = time.time_ns,
) -> ExchangeFacts:
    settings = config.exchanges[exchange]
    try:
        state = await read_state(redis, exchange)
        facts = ExchangeFacts(exchange, state)
    except StateUnavailable as exc:
        facts = ExchangeFacts(exchange, None, state_error=str(exc))
    facts.trades_configured = Channel.TRADES in settings.channels
    ends = [banned_until_us(t.reason) for t in await history(pool, exchange, limit=50)]
    if noted := [end for end in ends if end is not None]:
        facts.ban_left = max(noted) / 1e6 - clock_ns() / 1e9
    if facts.state is ExchangeState.AUDITING:
        facts.reconciliation_clean, facts.reconciliation = await fresh_reconciliation(
            redis, exchange
        )
    rows = await pool.fetch(
        "SELECT market_type, count(*) FILTER (WHERE is_active) AS active, count(*) AS total"
        " FROM instruments WHERE exchange = $1 GROUP BY market_type",
        exchange,
    )
    facts.instruments_by_type = {r["market_type"]: (r["active"], r["total"]) for r in rows}
    for row in await pool.fetch(_SYMBOL_FACTS, exchange, list(settings.symbols)):
        facts.symbols.append(
            SymbolFacts(
                symbol=row["symbol"],
                instrument_name=row["instrument_name"],
                active=row["active"],
                trades=row["trades"],
                last_trade_age=row["last_trade_age"],
                ohlc_last_day=row["ohlc_last_day"],
            )
        )
    facts.open_gaps = await pool.fetchval(
        "SELECT count(*) FROM data_gaps WHERE exchange = $1 AND status = 'open'", exchange
    )
    facts.dead_letters, facts.dead_letters_last_day = await pool.fetchrow(
        "SELECT count(*), count(*) FILTER (WHERE received_at > now() - interval '1 day')"
        " FROM dead_letters WHERE exchange = $1",
        exchange,
    )
    try:
        facts.kill_switch = await read_kill_switch(redis) is not None
    except StateUnavailable as exc:  # an unreadable kill switch must not read as "off"
        facts.kill_switch = True
        logger.warning("{}", exc)
    if adapter is None:
        facts.clock_error = "no adapter"
    else:
        try:
            async with asyncio.timeout(settings.request_timeout * 2):
                facts.clock = await measure_skew(exchange, adapter, clock_ns)
        except Exception as exc:
            facts.clock_error = f"{type(exc).__name__}: {exc}"
    return facts


async def fresh_reconciliation(redis: aioredis.Redis, exchange: str) -> tuple[bool, str]:
    """Whether the running daemon, reconciling ``exchange`` now, finds nothing differing."""
    try:
        reply = await ControlClient(redis).request(Reconcile(exchange=exchange), timeout_s=30.0)
    except NoDaemon:
        return False, (
            "no running daemon to reconcile with: start it (an exchange under AUDITING does "
            "not trade), then unlock"
        )
    except NoReply as exc:
        return False, f"no reconciliation: {exc}"
    if reply.error or not reply.reconciliations:
        return False, f"no reconciliation: {reply.error or 'no report'}"
    report = reply.reconciliations[0]
    return report.clean, f"fresh reconciliation: {report.summary}"


# -- the command ----------------------------------------------------------------------------


@dataclass
class UnlockPlan:
    reports: dict[str, tuple[ExchangeFacts, list[Check]]]

    def to_unlock(self) -> list[str]:
        return [
            name
            for name, (facts, _checks) in self.reports.items()
            if facts.state in (ExchangeState.LOCKED, ExchangeState.AUDITING)
        ]

    def failures(self, *, forceable: bool | None = None) -> dict[str, list[Check]]:
        found: dict[str, list[Check]] = {}
        for name, (_facts, checks) in self.reports.items():
            failed = [
                c for c in checks if c.failed and (forceable is None or c.forceable == forceable)
            ]
            if failed:
                found[name] = failed
        return found


def _selected(args: argparse.Namespace, config: Config) -> list[str] | str:
    if getattr(args, "all", False):
        names = list(config.enabled_exchanges())
        return names or "no exchange is enabled"
    name = args.exchange
    if name not in config.exchanges:
        return f"unknown exchange {name!r}; configured: {', '.join(config.exchanges) or 'none'}"
    return [name]


async def verify(
    config: Config,
    storage: Storage,
    exchanges: Sequence[str],
    *,
    config_path: str = "<config>",
) -> UnlockPlan:
    """Gather the facts and run the checks for ``exchanges`` (no state change)."""
    reports: dict[str, tuple[ExchangeFacts, list[Check]]] = {}
    async with aiohttp.ClientSession() as http:
        adapters = {name: create_adapter(config, name, http, config_path) for name in exchanges}
        try:
            gathered = await asyncio.gather(
                *(
                    gather_facts(config, storage.pool, storage.redis, name, adapters[name])
                    for name in exchanges
                )
            )
        finally:
            for adapter in adapters.values():
                await adapter.close()
    for facts in gathered:
        checks = evaluate(facts, config.daemon.max_clock_skew, config.daemon.clock_warn_skew)
        reports[facts.exchange] = (facts, checks)
    return UnlockPlan(reports)


def _confirm(prompt: str) -> bool:
    try:
        answer = input(prompt)
    except EOFError:
        return False
    return answer.strip().lower() in ("y", "yes")


async def run_unlock(
    args: argparse.Namespace,
    config: Config,
    *,
    confirm: Callable[[str], bool] | None = None,
    interactive: bool | None = None,
) -> int:
    """The ``unlock`` command; returns the exit status (0 unlocked or nothing to do, 1 refused,
    64 usage, 69 storage unavailable)."""
    force = bool(getattr(args, "force", False))
    reason_given = (getattr(args, "reason", None) or "").strip()
    if force and not reason_given:
        print("tradingd: error: --force needs --reason TEXT (it is recorded)", file=sys.stderr)
        return EX_USAGE
    selected = _selected(args, config)
    if isinstance(selected, str):
        print(f"tradingd: error: {selected}", file=sys.stderr)
        return EX_USAGE
    config_path = str(resolve_config_path(getattr(args, "config", None)))
    try:
        storage = await open_storage(
            config,
            on_wait=lambda message: logger.warning("{}", message),
            secrets=secret_store(config),
            attach=True,
        )
    except StorageError as exc:
        logger.critical("storage unavailable: {}", exc)
        return EX_UNAVAILABLE
    try:
        return await _unlock(
            args, config, storage, selected, config_path, force, reason_given, confirm, interactive
        )
    finally:
        await storage.close()


async def _unlock(
    args: argparse.Namespace,
    config: Config,
    storage: Storage,
    selected: list[str],
    config_path: str,
    force: bool,
    reason_given: str,
    confirm: Callable[[str], bool] | None,
    interactive: bool | None,
) -> int:
    plan = await verify(config, storage, selected, config_path=config_path)
    for facts, checks in plan.reports.values():
        print("\n".join(render_report(facts, checks)))
    hard = plan.failures(forceable=False)
    targets = plan.to_unlock()
    soft = {n: c for n, c in plan.failures(forceable=True).items() if n in targets}
    if hard:
        print("", file=sys.stderr)
        for name, failed in hard.items():
            for check in failed:
                print(
                    f"tradingd: refusing to unlock {name}: {check.name}: {check.detail}",
                    file=sys.stderr,
                )
        print(
            "tradingd: nothing was unlocked (--force does not override the state)", file=sys.stderr
        )
        return EX_FAILURE
    if not targets:
        print("nothing to unlock: " + ", ".join(f"{n} is already HEALTHY" for n in plan.reports))
        return EX_OK
    if soft and not force:
        print("", file=sys.stderr)
        for name, failed in soft.items():
            for check in failed:
                print(
                    f"tradingd: refusing to unlock {name}: {check.name}: {check.detail}",
                    file=sys.stderr,
                )
        print(
            "tradingd: nothing was unlocked; fix the above, or override with "
            "--force --reason TEXT (recorded with your name)",
            file=sys.stderr,
        )
        return EX_FAILURE
    operator = current_operator()
    if soft:
        overridden = "; ".join(
            f"{name}: " + ", ".join(c.name for c in checks) for name, checks in soft.items()
        )
        reason = f"FORCED past failed checks ({overridden}): {reason_given}"
    else:
        reason = reason_given or DEFAULT_REASON
    if not getattr(args, "yes", False):
        if interactive is None:
            interactive = sys.stdin.isatty()
        if not interactive:
            print(
                "tradingd: not a terminal: add --yes to unlock without confirmation",
                file=sys.stderr,
            )
            return EX_USAGE
        ask = confirm or _confirm
        prompt = (
            f"unlock {', '.join(targets)} (LOCKED -> HEALTHY, trading allowed) as {operator}"
            f"{' despite FAILED checks' if soft else ''}? [y/N] "
        )
        if not await asyncio.to_thread(ask, prompt):
            print("nothing was unlocked")
            return EX_FAILURE
    code = EX_OK
    for name in targets:
        try:
            record = await transition(
                storage.pool,
                storage.redis,
                name,
                ExchangeState.HEALTHY,
                operator=operator,
                reason=reason,
                only_from=frozenset({ExchangeState.LOCKED, ExchangeState.AUDITING}),
            )
        except IllegalTransition as exc:
            print(f"tradingd: {exc}", file=sys.stderr)
            code = EX_FAILURE
            continue
        at = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(record.at_us / 1e6))
        print(f"{name}: HEALTHY (by {operator} at {at}Z: {reason})")
    return code
