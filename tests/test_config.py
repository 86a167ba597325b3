"""Configuration: the shipped default is valid; every broken file gets one precise line and 78."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import tomllib
from pathlib import Path

import msgspec
import pytest

from tradingd.config import (
    DEFAULT_CONFIG_PATH,
    Config,
    ConfigError,
    ExchangeConfig,
    StrategyConfig,
    changed_keys,
    load_config,
    parse_config,
    redact_url,
    redacted,
)
from tradingd.cpus import describe_cpus

REPO = Path(__file__).resolve().parents[1]

MINIMAL_EXCHANGE = """
[exchanges.binance]
ws_url = "wss://stream.binance.com:9443"
rest_url = "https://api.binance.com"
symbols = ["BTCUSDT"]
"""

BROKEN_CONFIGS = [
    # (file text, expected message after "<path>: ")
    ('[daemon]\nstop_timeout = "soon"\n', "daemon.stop_timeout: expected float, found str 'soon'"),
    ("[daemon]\nstop_timeout = -1\n", "daemon.stop_timeout: expected float > 0.0, found int -1"),
    (
        '[daemon]\nlog_leve = "INFO"\n',
        "daemon.log_leve: expected a known key, found an unknown key",
    ),
    ('[daemon]\nlog_level = "LOUD"\n', "daemon.log_level: expected one of"),
    ("[deamon]\n", "deamon: expected a known key, found an unknown key"),
    ("[daemon]\ncpus = [1, 0, 1]\n", "daemon.cpus: expected each CPU once, found [1, 0, 1]"),
    ("[daemon]\ncpus = [-1]\n", "daemon.cpus[0]: expected int >= 0, found int -1"),
    (
        "[daemon]\nloop_slice_us = 50\n",
        "daemon.loop_slice_us: expected 0 (the kernel's slice) or 100 to 100000, found 50",
    ),
    (
        MINIMAL_EXCHANGE.replace('symbols = ["BTCUSDT"]', 'symbols = ["BTCUSDT", "ETHUSDT", 3]'),
        "exchanges.binance.symbols[2]: expected str, found int 3",
    ),
    (
        MINIMAL_EXCHANGE.replace("wss://stream", "https://stream"),
        "exchanges.binance.ws_url: expected a ws:// or wss:// URL, found str",
    ),
    (
        MINIMAL_EXCHANGE.replace('ws_url = "wss://stream.binance.com:9443"\n', ""),
        "exchanges.binance.ws_url: expected a value (required), found nothing",
    ),
    (
        MINIMAL_EXCHANGE + 'channels = ["trades", "orderbook"]\n',
        "exchanges.binance.channels[1]: expected one of 'trades', 'bars', 'tickers', "
        "found str 'orderbook'",
    ),
    (
        MINIMAL_EXCHANGE.replace('["BTCUSDT"]', "[]"),
        "exchanges.binance.symbols: expected at least one",
    ),
    ("[supervisor]\nmax_restarts = 0\n", "supervisor.max_restarts: expected int >= 1, found int 0"),
    ('[backfill]\nstart_date = "last week"\n', "backfill.start_date: expected a date (YYYY-MM-DD)"),
    ('[backfill]\nresolutions = ["1m", "7m"]\n', "backfill.resolutions[1]: expected one of"),
    ('[database]\nurl = "mysql://u:hunter2@db/x"\n', "database.url: expected a URL"),
    ("[daemon\n", "expected valid TOML"),
    (
        "[analyzer]\nmin_buckets = 90\nwindow_buckets = 60\n",
        "analyzer.min_buckets: expected at most analyzer.window_buckets (60), found 90",
    ),
    ("exchanges = 5\n", "exchanges: expected a table, found int 5"),
    (
        MINIMAL_EXCHANGE + 'api_key_secret = "../../etc/shadow"\n',
        "exchanges.binance.api_key_secret: expected a secret file name",
    ),
    ("[exchanges.Binance-Spot]\n", "exchanges.Binance-Spot: expected an exchange name"),
    ('[metrics]\nlisten = "9464"\n', 'metrics.listen: expected HOST:PORT ("" to disable)'),
    ('[metrics]\nlisten = "localhost:70000"\n', "metrics.listen: expected HOST:PORT with a port"),
    (
        '[daemon]\nmode = "live"\n' + MINIMAL_EXCHANGE,
        "exchanges.binance.api_key_secret: expected a secret file name (live mode signs with "
        "the venue's API key), found nothing",
    ),
    (
        MINIMAL_EXCHANGE + 'mode = "live"\napi_key_secret = "binance-key"\n',
        "exchanges.binance.api_secret_secret: expected a secret file name",
    ),
    (
        MINIMAL_EXCHANGE + 'ws_api_url = "https://ws-api.binance.com"\n',
        'exchanges.binance.ws_api_url: expected a ws:// or wss:// URL ("" for the default)',
    ),
    ("[risk]\nunknown_order_limit = 0\n", "risk.unknown_order_limit: expected float > 0.0"),
    (
        "[risk]\ndaily_loss_limit = { USDT = -5 }\n",
        "risk.daily_loss_limit.USDT: expected a number >= 0, found -5",
    ),
    ("[risk]\nmax_venue_failures = 0\n", "risk.max_venue_failures: expected int >= 1"),
    ("[alerts]\nmax_per_minute = 0\n", "alerts.max_per_minute: expected int >= 1"),
    (MINIMAL_EXCHANGE + 'key_type = "rsa"\n', "exchanges.binance.key_type: expected one of"),
    (
        '[exchanges.deribit]\nws_url = "wss://www.deribit.com/ws/api/v2"\n'
        'rest_url = "https://www.deribit.com/api/v2"\nsymbols = ["BTC-PERPETUAL"]\n'
        'mode = "live"\napi_key_secret = "k"\napi_secret_secret = "s"\nkey_type = "ed25519"\n',
        "exchanges.deribit.key_type: expected 'hmac' (Ed25519 keys are Binance's)",
    ),
]


def test_shipped_default_config_is_valid_and_complete() -> None:
    config = load_config(REPO / DEFAULT_CONFIG_PATH)
    assert set(config.exchanges) == {"binance", "deribit"}
    assert config.daemon.mode == "paper"
    assert config.database.url == "" and config.redis.url == ""
    # Every key of every section is written out in the shipped file (it documents them all).
    text = (REPO / DEFAULT_CONFIG_PATH).read_text()
    for section, values in redacted(config).items():
        if section == "exchanges":
            for exchange in values.values():
                for key in exchange:
                    assert f"\n{key} =" in text, key
            continue
        if section == "strategies":
            for entry in values:
                for key in entry:
                    assert f"\n{key} =" in text, f"strategies.{key}"
            continue
        for key in values:
            assert f"\n{key} =" in text, f"{section}.{key}"


# Values the shipped file sets on purpose where the schema has no default or an empty one.
_CHOSEN_IN_THE_SHIPPED_FILE = {
    ("paper", "balances"),
    *(
        (f"exchanges.{venue}", key)
        for venue in ("binance", "deribit")
        for key in ("ws_url", "rest_url", "adapter", "symbols", "currencies")
    ),
}


def _schema_default(field: msgspec.structs.FieldInfo) -> object:
    if field.default is not msgspec.NODEFAULT:
        return field.default
    if field.default_factory is not msgspec.NODEFAULT:
        return field.default_factory()
    return msgspec.NODEFAULT


def test_shipped_config_sets_every_schema_key_to_its_default() -> None:
    """config/tradingd.toml is the configuration reference: each key of each section of the
    schema in tradingd/config.py is written out in its section, with the schema's default."""
    raw = tomllib.loads((REPO / DEFAULT_CONFIG_PATH).read_text())
    sections: list[tuple[str, dict[str, object], type[msgspec.Struct]]] = []
    for field in msgspec.structs.fields(Config):
        if field.name == "exchanges":
            sections += [(f"exchanges.{n}", t, ExchangeConfig) for n, t in raw["exchanges"].items()]
        elif field.name == "strategies":
            sections += [("strategies", t, StrategyConfig) for t in raw["strategies"]]
        else:
            sections.append((field.name, raw.get(field.name, {}), field.type))
    for section, table, schema in sections:
        for field in msgspec.structs.fields(schema):
            assert field.name in table, f"{section}.{field.name} is not in the shipped file"
            if schema is StrategyConfig or (section, field.name) in _CHOSEN_IN_THE_SHIPPED_FILE:
                continue
            shown = msgspec.convert(table[field.name], field.type, strict=False)
            default = _schema_default(field)
            assert shown == default, f"{section}.{field.name}: file {shown!r}, schema {default!r}"


@pytest.mark.parametrize(("text", "expected"), BROKEN_CONFIGS)
def test_broken_config_names_file_key_expectation(tmp_path: Path, text: str, expected: str) -> None:
    path = tmp_path / "tradingd.toml"
    path.write_text(textwrap.dedent(text))
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    message = str(caught.value)
    assert message.startswith(f"{path}: ")
    assert expected in message
    assert "\n" not in message
    assert "hunter2" not in message


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="file not found"):
        load_config(tmp_path / "nope.toml")


@pytest.mark.parametrize(("text", "expected"), BROKEN_CONFIGS[:12])
def test_cli_exits_78_with_one_line(tmp_path: Path, text: str, expected: str) -> None:
    path = tmp_path / "tradingd.toml"
    path.write_text(textwrap.dedent(text))
    result = subprocess.run(
        [sys.executable, "-m", "tradingd", "--config", str(path), "config", "check"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 78, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1
    assert str(path) in lines[0] and expected in lines[0]


def test_config_check_prints_effective_config_with_secrets_redacted(tmp_path: Path) -> None:
    path = tmp_path / "tradingd.toml"
    path.write_text(
        '[database]\nurl = "postgresql://trader:s3cr3t-pw@db.internal:5432/tradingd"\n'
        + MINIMAL_EXCHANGE
    )
    result = subprocess.run(
        [sys.executable, "-m", "tradingd", "--config", str(path), "config", "check"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert "s3cr3t-pw" not in result.stdout + result.stderr
    assert "trader:***@db.internal" in result.stdout
    assert '"stop_timeout": 20.0' in result.stdout


def test_config_env_variable_selects_file(tmp_path: Path) -> None:
    path = tmp_path / "other.toml"
    path.write_text('[daemon]\nstop_timeout = "x"\n')
    result = subprocess.run(
        [sys.executable, "-m", "tradingd", "config", "check"],
        capture_output=True,
        text=True,
        timeout=60,
        env={"TRADINGD_CONFIG": str(path), "PATH": "/usr/bin:/bin"},
    )
    assert result.returncode == 78
    assert str(path) in result.stderr


def test_unknown_adapter_lists_available(tmp_path: Path) -> None:
    path = tmp_path / "tradingd.toml"
    path.write_text(MINIMAL_EXCHANGE + 'adapter = "kraken"\n')
    result = subprocess.run(
        [sys.executable, "-m", "tradingd", "--config", str(path), "config", "check"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 78
    assert "exchanges.binance.adapter" in result.stderr
    assert "expected an installed exchange adapter (binance, deribit), found 'kraken'" in (
        result.stderr
    )


def test_redact_url() -> None:
    assert redact_url("postgresql://u:pw@h:1/db") == "postgresql://u:***@h:1/db"
    assert redact_url("redis://h:6379/0") == "redis://h:6379/0"
    assert redact_url("redis://:pw@h/0") == "redis://:***@h/0"


def test_changed_keys() -> None:
    doc = {"daemon": {"log_level": "INFO"}}
    a = parse_config(doc)
    b = parse_config({"daemon": {"log_level": "DEBUG", "stop_timeout": 5}})
    assert changed_keys(a, b) == ["daemon.log_level", "daemon.stop_timeout"]
    assert changed_keys(a, a) == []


def test_live_mode_with_both_key_files_named_is_valid(tmp_path: Path) -> None:
    path = tmp_path / "tradingd.toml"
    path.write_text(
        MINIMAL_EXCHANGE
        + 'mode = "live"\napi_key_secret = "binance-key"\napi_secret_secret = "binance-secret"\n'
    )
    config = load_config(path)
    assert config.mode_of("binance") == "live"
    assert config.exchanges["binance"].ws_api_url == ""  # the adapter's default
    assert config.risk.unknown_order_limit == 30.0
    # A live exchange that is disabled needs no keys.
    path.write_text(MINIMAL_EXCHANGE + 'mode = "live"\nenabled = false\n')
    assert load_config(path).mode_of("binance") == "live"


ED25519_LIVE = (
    MINIMAL_EXCHANGE
    + 'mode = "live"\napi_key_secret = "binance-key"\napi_secret_secret = "binance-pem"\n'
    + 'key_type = "ed25519"\n'
)


def test_an_ed25519_key_is_valid_with_the_extra_and_exits_78_without_it(tmp_path: Path) -> None:
    path = tmp_path / "tradingd.toml"
    path.write_text(ED25519_LIVE)
    assert load_config(path).exchanges["binance"].key_type == "ed25519"
    # Without the ed25519 extra: a cryptography that cannot be imported shadows the real one.
    hidden = tmp_path / "hidden" / "cryptography"
    hidden.mkdir(parents=True)
    (hidden / "__init__.py").write_text('raise ImportError("No module named cryptography")\n')
    result = subprocess.run(
        [sys.executable, "-m", "tradingd", "--config", str(path), "config", "check"],
        capture_output=True,
        text=True,
        timeout=60,
        env={"PYTHONPATH": str(hidden.parent), "PATH": "/usr/bin:/bin"},
    )
    assert result.returncode == 78, result.stderr
    (line,) = result.stderr.strip().splitlines()
    assert f"{path}: exchanges.binance.key_type: expected 'hmac', or the ed25519" in line
    assert "pip install 'tradingd[ed25519]'" in line


def test_config_check_shows_the_cpu_layout_or_exits_78_for_a_cpu_not_here(tmp_path: Path) -> None:
    available = sorted(os.sched_getaffinity(0))
    path = tmp_path / "tradingd.toml"

    def check(cpus: list[int]) -> subprocess.CompletedProcess[str]:
        path.write_text(f"[daemon]\ncpus = {cpus}\n" + MINIMAL_EXCHANGE)
        return subprocess.run(
            [sys.executable, "-m", "tradingd", "--config", str(path), "config", "check"],
            capture_output=True,
            text=True,
            timeout=60,
        )

    missing = check([available[-1] + 1])
    assert missing.returncode == 78
    assert missing.stderr.strip() == (
        f"tradingd: configuration error: {path}: daemon.cpus: expected CPUs this process may run "
        f"on ({describe_cpus(available)}), found {available[-1] + 1}"
    )
    if len(available) > 1:
        fine = check([available[-1]])
        assert fine.returncode == 0, fine.stderr
        assert (
            f"# CPUs: the daemon on {available[-1]}, embedded servers on "
            f"{describe_cpus(available[:-1])}" in fine.stderr
        )
