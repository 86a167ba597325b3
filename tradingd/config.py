"""The configuration schema (the one place it is defined) and its loader.

The file is TOML, parsed with ``tomllib`` into frozen msgspec Structs. Anything wrong with it
raises ``ConfigError`` with one line naming the file, the key path, what was expected and what
was found; the CLI turns that into exit code 78 (EX_CONFIG), which systemd does not restart.

No secret value lives in the configuration: keys ending in ``_secret`` name a secret *file*
(see ``tradingd.secrets``). URLs may embed a password; ``redacted()`` hides it.
"""

from __future__ import annotations

import importlib
import os
import re
import tomllib
from datetime import date
from decimal import Decimal
from importlib.metadata import entry_points
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar
from urllib.parse import urlsplit, urlunsplit

import msgspec
import msgspec.inspect
from msgspec import Meta

from tradingd.model import Channel
from tradingd.strategies.api import MANUAL_STRATEGY
from tradingd.strategies.registry import UnknownStrategy, load_strategy

_T = TypeVar("_T")

ADAPTER_ENTRY_POINT_GROUP = "tradingd.adapters"

DEFAULT_CONFIG_PATH = Path("config/tradingd.toml")
# Where state lives when daemon.state_dir is empty and systemd gave no $STATE_DIRECTORY, as
# root: a place the unprivileged user of the embedded servers can reach.
DEFAULT_STATE_DIR_ROOT = Path("/var/lib/tradingd")
CONFIG_ENV = "TRADINGD_CONFIG"

PositiveFloat = Annotated[float, Meta(gt=0)]
NonNegativeFloat = Annotated[float, Meta(ge=0)]
PositiveInt = Annotated[int, Meta(ge=1)]
NonNegativeInt = Annotated[int, Meta(ge=0)]
WsUrl = Annotated[str, Meta(pattern=r"^wss?://[^\s/]+")]
OptionalWsUrl = Annotated[str, Meta(pattern=r"^(|wss?://[^\s/]+.*)$")]
HttpUrl = Annotated[str, Meta(pattern=r"^https?://[^\s/]+")]
SecretName = Annotated[str, Meta(pattern=r"^([A-Za-z0-9][A-Za-z0-9_.-]{0,127})?$")]
Resolution = Literal["1m", "3m", "5m", "15m", "30m", "1h", "2h", "4h", "6h", "12h", "1d"]
LogLevel = Literal["TRACE", "DEBUG", "INFO", "SUCCESS", "WARNING", "ERROR", "CRITICAL"]


class DaemonConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    # Relative: to the configuration file's directory. Empty: $STATE_DIRECTORY (systemd's
    # StateDirectory=), else DEFAULT_STATE_DIR_ROOT as root, else the user's XDG state home.
    state_dir: str = ""
    log_level: LogLevel = "INFO"
    stop_timeout: PositiveFloat = 20.0
    mode: Literal["paper", "live"] = "paper"
    # $CREDENTIALS_DIRECTORY (systemd LoadCredential=) when set; else this; else <state>/secrets
    secrets_dir: str = ""
    max_clock_skew: PositiveFloat = 60.0
    clock_warn_skew: PositiveFloat = 1.0
    clock_check_interval: PositiveFloat = 600.0
    status_interval: PositiveFloat = 10.0
    # CPUs (Linux numbers) every thread of the daemon runs on; the embedded servers run on the
    # others (tradingd.cpus). Empty: wherever the kernel puts them.
    cpus: list[NonNegativeInt] = []
    # The event loop thread's scheduler slice (Linux 6.12+; tradingd.cpus); 0: the kernel's.
    loop_slice_us: Annotated[int, Meta(ge=0, le=100_000)] = 100


class SupervisorConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    max_restarts: PositiveInt = 5
    restart_period: PositiveFloat = 30.0
    backoff_initial: PositiveFloat = 0.2
    backoff_max: PositiveFloat = 10.0


class DatabaseConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    # Empty: embedded PostgreSQL under the state directory.
    url: str = ""
    password_secret: SecretName = ""
    pool_size: PositiveInt = 8
    connect_backoff_max: PositiveFloat = 30.0
    # How long start-up waits for an external server before giving up (0: forever).
    connect_timeout: NonNegativeFloat = 0.0


class RedisConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    # Empty: embedded Redis under the state directory.
    url: str = ""
    password_secret: SecretName = ""
    connect_backoff_max: PositiveFloat = 30.0
    # How long start-up waits for an external server before giving up (0: forever).
    connect_timeout: NonNegativeFloat = 0.0


class PersisterConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    batch_size: PositiveInt = 5000
    flush_interval: PositiveFloat = 0.05
    writers: Annotated[int, Meta(ge=1, le=8)] = 3
    queue_size: PositiveInt = 200_000
    ticker_snapshot_interval: PositiveFloat = 60.0
    ticker_queue_size: PositiveInt = 10_000
    retry_backoff_max: PositiveFloat = 10.0


class AnalyzerConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    enabled: bool = True
    queue_size: PositiveInt = 100_000
    bucket_seconds: PositiveInt = 60
    window_buckets: PositiveInt = 60
    min_buckets: PositiveInt = 10
    threshold: PositiveFloat = 4.0


class BackfillConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    start_date: date = date(2026, 11, 1)
    resolutions: list[Resolution] = msgspec.field(default_factory=lambda: ["1m"])
    page_delay: NonNegativeFloat = 0.0
    # `tradingd backfill trades`: the Binance public data repository (daily/monthly trade files).
    trades_base_url: HttpUrl = "https://data.binance.vision"


class RetentionConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    # Whole months of public_trades kept before the current one (0: keep every trade).
    trades_months: NonNegativeInt = 0
    # Days of ticker snapshots and of dead letters kept (0: keep them all).
    tickers_days: NonNegativeInt = 90
    dead_letters_days: NonNegativeInt = 30
    # Days of account reconciliation reports kept (each exchange's latest baseline always is).
    reconciliations_days: NonNegativeInt = 30


class AlertsConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    # Name of the secret file holding an incoming-webhook URL (Slack, Mattermost and compatible:
    # JSON {"text": ...} is POSTed to it). Such a URL is a credential. Empty: no webhook.
    webhook_url_secret: SecretName = ""
    # Telegram: the bot token is a secret (its file name here); the chat id is not.
    telegram_token_secret: SecretName = ""
    telegram_chat_id: str = ""
    telegram_api_url: HttpUrl = "https://api.telegram.org"
    # The daemon's own alerts (locks, breaker trips, kill switch, UNKNOWN orders, escalations):
    # one message per incident within this many seconds, at most max_per_minute messages.
    dedup_seconds: PositiveFloat = 3600.0
    max_per_minute: PositiveInt = 10
    queue_size: PositiveInt = 1000


class MetricsConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    # "host:port" of the /metrics and /health listener; empty disables it. Loopback by default:
    # the exposition names instruments, balances and PnL.
    listen: Annotated[str, Meta(pattern=r"^(|\[?[^\s\[\]]*\]?:[0-9]{1,5})$")] = "127.0.0.1:9464"

    def address(self) -> tuple[str, int] | None:
        """(host, port), or None when disabled; ``[::1]:9464`` for IPv6."""
        if not self.listen:
            return None
        host, _, port = self.listen.rpartition(":")
        return host.strip("[]"), int(port)


class ExchangeConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    ws_url: WsUrl
    rest_url: HttpUrl
    adapter: str = ""  # empty: the section name
    enabled: bool = True
    symbols: list[Annotated[str, Meta(min_length=1)]] = []
    channels: list[Channel] = msgspec.field(
        default_factory=lambda: [Channel.TRADES, Channel.BARS, Channel.TICKERS]
    )
    bar_resolution: Resolution = "1m"
    # Deribit: currencies whose instruments are synchronised.
    currencies: list[Annotated[str, Meta(min_length=1)]] = []
    max_streams_per_connection: PositiveInt = 1024
    request_timeout: PositiveFloat = 10.0
    reconnect_backoff_initial: PositiveFloat = 0.5
    reconnect_backoff_max: PositiveFloat = 30.0
    # A connection that stays up this long resets the reconnect backoff.
    healthy_after: PositiveFloat = 60.0
    # Open a replacement connection before the venue's forced cut (Binance: 24 h).
    rotate_after: PositiveFloat = 23 * 3600.0
    heartbeat_interval: Annotated[float, Meta(ge=10)] = 30.0
    # No message on a connection for this long: it is dead, reconnect.
    stale_after: PositiveFloat = 90.0
    # A stream with a known cadence (bars) silent for this many of its intervals is
    # resubscribed (and the connection replaced after repeated tries).
    stream_stale_multiple: Annotated[float, Meta(ge=1)] = 3.0
    # Live mode: the API key and secret (Deribit: client id and client secret), as secret files.
    api_key_secret: SecretName = ""
    api_secret_secret: SecretName = ""
    # Live mode, Binance: the API key's type. "hmac": api_secret_secret holds its secret;
    # "ed25519": it holds the PEM private key (needs pip install 'tradingd[ed25519]').
    key_type: Literal["hmac", "ed25519"] = "hmac"
    # "paper" or "live" for this exchange's executor; empty: daemon.mode.
    mode: Literal["", "paper", "live"] = ""
    # Live mode: the venue's private WebSocket (Binance's WebSocket API for the user-data stream;
    # Deribit: ws_url). Empty: the adapter's default.
    ws_api_url: OptionalWsUrl = ""


class RiskConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    # Notional limits are in the instrument's quote currency (USD for Deribit inverse contracts).
    max_order_notional: Decimal = Decimal(10_000)
    # The account's position on one instrument, valued at the order's price.
    max_position_notional: Decimal = Decimal(50_000)
    max_open_orders: PositiveInt = 50
    max_orders_per_second: PositiveInt = 10
    # A limit price further than this fraction from the last trade is denied (fat finger).
    price_band: Decimal = Decimal("0.05")
    # Market data of the instrument older than this (seconds) denies new orders, and trips the
    # circuit breaker while orders are open on it.
    max_data_age: PositiveFloat = 10.0
    # An order whose outcome stays UNKNOWN this long (seconds) locks the exchange.
    unknown_order_limit: PositiveFloat = 30.0
    # Circuit breaker (per exchange; each trip locks it until `tradingd unlock`). Per PnL
    # currency (USDT, USD, BTC for inverse contracts, ...): the day's (UTC) realised+unrealised
    # loss net of fees, and the fall from the day's peak; a currency not listed has no limit.
    daily_loss_limit: dict[str, Decimal] = msgspec.field(
        default_factory=lambda: {
            "USDT": Decimal(1000),
            "USDC": Decimal(1000),
            "USD": Decimal(1000),
            "BTC": Decimal("0.02"),
            "ETH": Decimal("0.3"),
        }
    )
    max_drawdown: dict[str, Decimal] = msgspec.field(
        default_factory=lambda: {
            "USDT": Decimal(1500),
            "USDC": Decimal(1500),
            "USD": Decimal(1500),
            "BTC": Decimal("0.03"),
            "ETH": Decimal("0.45"),
        }
    )
    # Venue rejects and UNKNOWN outcomes: more than this many within the window trips it.
    max_venue_failures: PositiveInt = 5
    venue_failure_window: PositiveFloat = 60.0
    # Seconds between reconciliations of the account (open orders, balances) with the venue.
    reconcile_interval: PositiveFloat = 60.0


class PaperConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    # Fees and slippage are fractions of the notional / of the price.
    maker_fee: Decimal = Decimal("0.001")
    taker_fee: Decimal = Decimal("0.001")
    slippage: Decimal = Decimal("0.0005")
    # exchange -> currency -> starting balance of the simulated account.
    balances: dict[str, dict[str, Decimal]] = {}


class StrategyConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """One ``[[strategies]]`` table: a registered strategy run on one exchange's symbols."""

    name: Annotated[str, Meta(pattern=r"^[A-Za-z0-9][A-Za-z0-9_-]{0,31}$")]
    strategy: Annotated[str, Meta(min_length=1)]  # its name in the tradingd.strategies group
    exchange: str
    symbols: Annotated[list[Annotated[str, Meta(min_length=1)]], Meta(min_length=1)]
    # Validated against the strategy's own Params struct when the file is loaded.
    params: dict[str, Any] = {}
    enabled: bool = True


class Config(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    daemon: DaemonConfig = DaemonConfig()
    supervisor: SupervisorConfig = SupervisorConfig()
    database: DatabaseConfig = DatabaseConfig()
    redis: RedisConfig = RedisConfig()
    persister: PersisterConfig = PersisterConfig()
    analyzer: AnalyzerConfig = AnalyzerConfig()
    backfill: BackfillConfig = BackfillConfig()
    retention: RetentionConfig = RetentionConfig()
    alerts: AlertsConfig = AlertsConfig()
    metrics: MetricsConfig = MetricsConfig()
    risk: RiskConfig = RiskConfig()
    paper: PaperConfig = PaperConfig()
    exchanges: dict[str, ExchangeConfig] = {}
    strategies: list[StrategyConfig] = []

    def mode_of(self, exchange: str) -> str:
        """ "paper" or "live": the exchange's own ``mode``, else ``daemon.mode``."""
        return self.exchanges[exchange].mode or self.daemon.mode

    def enabled_exchanges(self) -> dict[str, ExchangeConfig]:
        return {name: ex for name, ex in self.exchanges.items() if ex.enabled}

    def adapter_name(self, exchange: str) -> str:
        return self.exchanges[exchange].adapter or exchange

    def state_path(self) -> Path:
        return self.state_location()[0]

    def state_location(self) -> tuple[Path, str]:
        """The state directory and where it came from (``config check`` shows both).

        ``daemon.state_dir`` was made absolute against the configuration file's directory when
        the file was loaded, so the working directory never changes where the state is."""
        if self.daemon.state_dir:
            return Path(
                self.daemon.state_dir
            ).absolute(), "daemon.state_dir, relative to the config file"
        systemd = os.environ.get("STATE_DIRECTORY", "").split(":")[0]
        if systemd:
            return Path(systemd).absolute(), "$STATE_DIRECTORY"
        if os.geteuid() == 0:
            return DEFAULT_STATE_DIR_ROOT, "the default for root"
        xdg = os.environ.get("XDG_STATE_HOME", "")
        base = Path(xdg) if xdg.startswith("/") else Path.home() / ".local" / "state"
        return base / "tradingd", "the default for a user ($XDG_STATE_HOME or ~/.local/state)"

    def secrets_path(self) -> Path:
        # systemd's LoadCredential= wins over the configured directory.
        configured = os.environ.get("CREDENTIALS_DIRECTORY", "") or self.daemon.secrets_dir
        return Path(configured) if configured else self.state_path() / "secrets"


# Settings that a SIGHUP applies to the running daemon; everything else needs a restart.
LIVE_RELOADABLE = frozenset({"daemon.log_level"})

_EXCHANGE_NAME = re.compile(r"^[a-z][a-z0-9_]{0,31}$")


class ConfigError(Exception):
    """A configuration file that cannot be used; the message is one line for the operator."""

    def __init__(self, path: Path | str, key: str, problem: str) -> None:
        where = f"{path}: {key}: " if key else f"{path}: "
        super().__init__(where + problem)
        self.path = str(path)
        self.key = key
        self.problem = problem


def resolve_config_path(cli_path: str | None) -> Path:
    if cli_path:
        return Path(cli_path)
    env = os.environ.get(CONFIG_ENV)
    return Path(env) if env else DEFAULT_CONFIG_PATH


def load_config(path: Path) -> Config:
    try:
        raw_text = path.read_bytes()
    except FileNotFoundError:
        raise ConfigError(path, "", "file not found") from None
    except OSError as exc:
        raise ConfigError(path, "", f"cannot read: {exc.strerror}") from None
    try:
        document = tomllib.loads(raw_text.decode("utf-8"))
    except UnicodeDecodeError:
        raise ConfigError(path, "", "expected UTF-8 text, found undecodable bytes") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(path, "", f"expected valid TOML, found a syntax error ({exc})") from None
    return parse_config(document, path)


def parse_config(document: dict[str, Any], path: Path | str = "<config>") -> Config:
    document = dict(document)
    raw_exchanges = document.pop("exchanges", {})
    base = _convert(document, Config, path, prefix="")
    base = msgspec.structs.replace(base, daemon=_anchored_paths(base.daemon, path))
    if not isinstance(raw_exchanges, dict):
        raise ConfigError(path, "exchanges", f"expected a table, found {_describe(raw_exchanges)}")
    exchanges: dict[str, ExchangeConfig] = {}
    for name, section in raw_exchanges.items():
        key = f"exchanges.{name}"
        if not _EXCHANGE_NAME.match(name):
            raise ConfigError(
                path, key, "expected an exchange name of lowercase letters, digits and _"
            )
        if not isinstance(section, dict):
            raise ConfigError(path, key, f"expected a table, found {_describe(section)}")
        _check_adapter_known(name, section, path)
        exchanges[name] = _convert(section, ExchangeConfig, path, prefix=key)
    config = msgspec.structs.replace(base, exchanges=exchanges)
    _check_semantics(config, path)
    _check_strategies(config, path)
    return config


def installed_adapters() -> list[str]:
    """The adapter names installed in the ``tradingd.adapters`` entry-point group."""
    return sorted({ep.name for ep in entry_points(group=ADAPTER_ENTRY_POINT_GROUP)})


def _check_adapter_known(name: str, section: dict[str, Any], path: Path | str) -> None:
    # Before the section's keys: for a venue we have no adapter for, those are meaningless.
    adapter = section.get("adapter") or name
    if not isinstance(adapter, str):
        return  # the schema check names the key and type
    available = installed_adapters()
    if adapter not in available:
        key = f"exchanges.{name}.adapter" if section.get("adapter") else f"exchanges.{name}"
        raise ConfigError(
            path,
            key,
            f"expected an installed exchange adapter ({', '.join(available) or 'none'}), "
            f"found {adapter!r}",
        )


def _anchored_paths(daemon: DaemonConfig, path: Path | str) -> DaemonConfig:
    """Relative directories are relative to the configuration file, never to the working
    directory: resolved once, here."""
    base = Path(path).absolute().parent
    anchored = {
        key: str(base / value)
        for key, value in (("state_dir", daemon.state_dir), ("secrets_dir", daemon.secrets_dir))
        if value and not Path(value).is_absolute()
    }
    return msgspec.structs.replace(daemon, **anchored) if anchored else daemon


def _check_strategies(config: Config, path: Path | str) -> None:
    seen: set[str] = set()
    for index, entry in enumerate(config.strategies):
        key = f"strategies[{index}]"
        if entry.name == MANUAL_STRATEGY:
            raise ConfigError(
                path,
                f"{key}.name",
                f"expected a name other than {MANUAL_STRATEGY!r} (the operator's orders), found it",
            )
        if entry.name in seen:
            raise ConfigError(
                path, f"{key}.name", f"expected a unique name, found {entry.name!r} again"
            )
        seen.add(entry.name)
        exchange = config.exchanges.get(entry.exchange)
        if exchange is None:
            raise ConfigError(
                path,
                f"{key}.exchange",
                f"expected a configured exchange ({', '.join(config.exchanges) or 'none'}), "
                f"found {entry.exchange!r}",
            )
        for symbol_index, symbol in enumerate(entry.symbols):
            if symbol not in exchange.symbols:
                raise ConfigError(
                    path,
                    f"{key}.symbols[{symbol_index}]",
                    f"expected one of exchanges.{entry.exchange}.symbols "
                    f"({', '.join(exchange.symbols)}), found {symbol!r}",
                )
        try:
            strategy = load_strategy(entry.strategy)
        except (UnknownStrategy, TypeError) as exc:
            raise ConfigError(path, f"{key}.strategy", str(exc)) from None
        try:
            _convert(entry.params, strategy.Params, path, prefix=f"{key}.params")
        except TypeError as exc:  # a Params struct msgspec cannot use: the plugin's bug
            raise ConfigError(
                path, f"{key}.strategy", f"strategy {entry.strategy!r} has unusable Params: {exc}"
            ) from None


def _check_semantics(config: Config, path: Path | str) -> None:
    if len(set(config.daemon.cpus)) != len(config.daemon.cpus):
        raise ConfigError(
            path, "daemon.cpus", f"expected each CPU once, found {config.daemon.cpus}"
        )
    slice_us = config.daemon.loop_slice_us
    if 0 < slice_us < 100:
        raise ConfigError(
            path,
            "daemon.loop_slice_us",
            f"expected 0 (the kernel's slice) or 100 to 100000, found {slice_us}",
        )
    address = config.metrics.address()
    if address is not None and (not address[0] or address[1] > 65535):
        raise ConfigError(
            path,
            "metrics.listen",
            f'expected HOST:PORT with a port up to 65535 (or "" to disable), '
            f"found {config.metrics.listen!r}",
        )
    for name, exchange in config.exchanges.items():
        _check_live_keys(config, name, path)
        if exchange.enabled and not exchange.symbols:
            raise ConfigError(
                path, f"exchanges.{name}.symbols", "expected at least one symbol, found none"
            )
        for index, symbol in enumerate(exchange.symbols):
            if symbol != symbol.strip() or " " in symbol:
                raise ConfigError(
                    path,
                    f"exchanges.{name}.symbols[{index}]",
                    f"expected a symbol without spaces, found {symbol!r}",
                )
    if config.supervisor.backoff_initial > config.supervisor.backoff_max:
        raise ConfigError(
            path,
            "supervisor.backoff_initial",
            f"expected at most supervisor.backoff_max ({config.supervisor.backoff_max}), "
            f"found {config.supervisor.backoff_initial}",
        )
    if config.analyzer.min_buckets > config.analyzer.window_buckets:
        raise ConfigError(
            path,
            "analyzer.min_buckets",
            f"expected at most analyzer.window_buckets ({config.analyzer.window_buckets}), "
            f"found {config.analyzer.min_buckets}",
        )
    _check_money(config, path)
    alerts = config.alerts
    if bool(alerts.telegram_token_secret) != bool(alerts.telegram_chat_id):
        key, other = (
            ("alerts.telegram_chat_id", "alerts.telegram_token_secret")
            if alerts.telegram_token_secret
            else ("alerts.telegram_token_secret", "alerts.telegram_chat_id")
        )
        raise ConfigError(path, key, f"expected a value when {other} is set, found none")
    for url_key, url in (("database.url", config.database.url), ("redis.url", config.redis.url)):
        if url and not re.match(r"^(postgres(ql)?|rediss?|unix)://", url):
            raise ConfigError(path, url_key, f"expected a URL, found {redact_url(url)!r}")


def _check_live_keys(config: Config, name: str, path: Path | str) -> None:
    exchange = config.exchanges[name]
    if not exchange.enabled or config.mode_of(name) != "live":
        return
    for key in ("api_key_secret", "api_secret_secret"):
        if not getattr(exchange, key):
            raise ConfigError(
                path,
                f"exchanges.{name}.{key}",
                "expected a secret file name (live mode signs with the venue's API key), "
                "found nothing",
            )
    if exchange.key_type == "ed25519":
        if config.adapter_name(name) != "binance":
            raise ConfigError(
                path,
                f"exchanges.{name}.key_type",
                f"expected 'hmac' (Ed25519 keys are Binance's), found 'ed25519' on adapter "
                f"{config.adapter_name(name)!r}",
            )
        try:
            importlib.import_module("cryptography.hazmat.primitives.asymmetric.ed25519")
        except ImportError:
            raise ConfigError(
                path,
                f"exchanges.{name}.key_type",
                "expected 'hmac', or the ed25519 extra installed for 'ed25519' "
                "(pip install 'tradingd[ed25519]'), found 'ed25519' without the cryptography "
                "package",
            ) from None


def _check_money(config: Config, path: Path | str) -> None:
    amounts: list[tuple[str, Decimal]] = [
        ("risk.max_order_notional", config.risk.max_order_notional),
        ("risk.max_position_notional", config.risk.max_position_notional),
        ("risk.price_band", config.risk.price_band),
        ("paper.maker_fee", config.paper.maker_fee),
        ("paper.taker_fee", config.paper.taker_fee),
        ("paper.slippage", config.paper.slippage),
    ]
    for name in ("daily_loss_limit", "max_drawdown"):
        limits: dict[str, Decimal] = getattr(config.risk, name)
        amounts += [(f"risk.{name}.{currency}", v) for currency, v in limits.items()]
    for exchange, balances in config.paper.balances.items():
        if exchange not in config.exchanges:
            raise ConfigError(
                path,
                f"paper.balances.{exchange}",
                f"expected a configured exchange ({', '.join(sorted(config.exchanges))}), "
                f"found {exchange!r}",
            )
        amounts += [(f"paper.balances.{exchange}.{c}", v) for c, v in balances.items()]
    for key, amount in amounts:
        if not amount.is_finite() or amount < 0:
            raise ConfigError(path, key, f"expected a number >= 0, found {amount}")
    if not 0 < config.risk.price_band <= 1:
        raise ConfigError(
            path,
            "risk.price_band",
            f"expected a fraction in (0, 1], found {config.risk.price_band}",
        )


_MSGSPEC_ERROR = re.compile(r"^(?P<what>.*?)(?: - at `\$(?P<where>[^`]*)`)?$", re.DOTALL)
_EXPECTED_GOT = re.compile(
    r"^Expected `(?P<expected>[^`]+)`(?P<rest>.*?)(?:, got `(?P<got>[^`]+)`)?$"
)


def _convert(section: dict[str, Any], kind: type[_T], path: Path | str, prefix: str) -> _T:
    try:
        return msgspec.convert(section, kind, strict=True)
    except msgspec.ValidationError as exc:
        raise _translate(str(exc), section, kind, path, prefix) from None


def _translate(
    message: str, section: dict[str, Any], kind: type[Any], path: Path | str, prefix: str
) -> ConfigError:
    match = _MSGSPEC_ERROR.match(message)
    assert match is not None
    what, where = match["what"], match["where"] or ""
    key = _join_key(prefix, where)
    value_found = _lookup(section, where)
    if what.startswith("Object contains unknown field"):
        field = what.split("`")[1]
        return ConfigError(
            path, _join_key(key, "." + field), "expected a known key, found an unknown key"
        )
    if what.startswith("Object missing required field"):
        field = what.split("`")[1]
        return ConfigError(
            path, _join_key(key, "." + field), "expected a value (required), found nothing"
        )
    if what.startswith("Invalid enum value"):
        choices = _choices_at(kind, where)
        return ConfigError(path, key, f"expected one of {choices}, found {_describe(value_found)}")
    if what.startswith("Invalid RFC3339 encoded date"):
        return ConfigError(
            path, key, f"expected a date (YYYY-MM-DD), found {_describe(value_found)}"
        )
    expected_match = _EXPECTED_GOT.match(what)
    if expected_match:
        expected = expected_match["expected"] + expected_match["rest"].rstrip(",")
        for prefix_text, friendly in _FRIENDLY_EXPECTATIONS.items():
            if expected.startswith(prefix_text):
                expected = friendly
        expected = {"object": "a table", "array": "an array"}.get(expected, expected)
        return ConfigError(path, key, f"expected {expected}, found {_describe(value_found)}")
    if what.startswith("expected ") and ", found " in what:
        return ConfigError(path, key, what)  # a Struct's own check (__post_init__) said it all
    return ConfigError(path, key, f"{what[0].lower()}{what[1:]}, found {_describe(value_found)}")


_FRIENDLY_EXPECTATIONS = {
    "str matching regex '^wss?": "a ws:// or wss:// URL",
    "str matching regex '^(|wss?": 'a ws:// or wss:// URL ("" for the default)',
    "str matching regex '^https?": "an http:// or https:// URL",
    "str matching regex '^([A-Za-z0-9]": "a secret file name (letters, digits, _ . -)",
    "str matching regex '^(|\\\\[?": 'HOST:PORT ("" to disable)',
}


def _choices_at(kind: type[Any], where: str) -> str:
    """The allowed values of the Literal or Enum field at ``where`` in ``kind``."""
    info: Any = msgspec.inspect.type_info(kind)
    for name, _index in _PATH_TOKEN.findall(where):
        while isinstance(info, msgspec.inspect.UnionType):
            info = next(t for t in info.types if not isinstance(t, msgspec.inspect.NoneType))
        if name and isinstance(info, msgspec.inspect.StructType):
            info = next(f.type for f in info.fields if f.name == name)
        elif name and isinstance(info, msgspec.inspect.DictType):
            info = info.value_type
        elif not name and isinstance(info, (msgspec.inspect.ListType, msgspec.inspect.SetType)):
            info = info.item_type
    if isinstance(info, msgspec.inspect.LiteralType):
        return ", ".join(repr(v) for v in info.values)
    if isinstance(info, msgspec.inspect.EnumType):
        return ", ".join(repr(m.value) for m in info.cls)
    return "the documented values"


def _join_key(prefix: str, where: str) -> str:
    if not prefix:
        return where.lstrip(".")
    if not where:
        return prefix
    return prefix + where


_PATH_TOKEN = re.compile(r"\.(\w+)|\[(\d+)\]")


def _lookup(section: Any, where: str) -> Any:
    value = section
    for name, index in _PATH_TOKEN.findall(where):
        try:
            value = value[name] if name else value[int(index)]
        except (KeyError, IndexError, TypeError):
            return _MISSING
    return value


_MISSING = object()


def _describe(value: Any) -> str:
    if value is _MISSING:
        return "nothing"
    kind = {
        bool: "bool",
        int: "int",
        float: "float",
        str: "str",
        list: "array",
        dict: "table",
    }.get(type(value), type(value).__name__)
    if isinstance(value, (dict, list)):
        return kind
    shown = repr(value)
    if isinstance(value, str):
        shown = repr(redact_url(value))
    if len(shown) > 60:
        shown = shown[:57] + "..."
    return f"{kind} {shown}"


def redact_url(url: str) -> str:
    """The URL with any password replaced, safe for logs and ``config check``."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparsable URL>"
    if parts.password is None:
        return url
    netloc = parts.netloc.rsplit("@", 1)
    userinfo = netloc[0].split(":", 1)[0]
    return urlunsplit(parts._replace(netloc=f"{userinfo}:***@{netloc[1]}"))


def redacted(config: Config) -> dict[str, Any]:
    """The effective configuration as plain data, with every secret-bearing value hidden."""
    data: dict[str, Any] = msgspec.to_builtins(config)
    data["database"]["url"] = redact_url(config.database.url)
    data["redis"]["url"] = redact_url(config.redis.url)
    return data


def changed_keys(old: Config, new: Config) -> list[str]:
    """Dotted keys whose values differ between two configurations."""
    changes: list[str] = []

    def walk(a: Any, b: Any, prefix: str) -> None:
        if isinstance(a, dict) and isinstance(b, dict):
            for k in sorted(set(a) | set(b)):
                walk(a.get(k, _MISSING), b.get(k, _MISSING), f"{prefix}.{k}" if prefix else k)
        elif a != b:
            changes.append(prefix)

    walk(msgspec.to_builtins(old), msgspec.to_builtins(new), "")
    return changes
