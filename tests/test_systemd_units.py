"""The shipped unit files: what they must say, and what systemd's own tools think of them."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

UNIT_DIR = Path(__file__).resolve().parents[1] / "systemd"
MAIN = "tradingd.service"
BOOTSTRAP = "tradingd-bootstrap.service"
PRUNE = "tradingd-prune.service"
PRUNE_TIMER = "tradingd-prune.timer"
ALERT = "tradingd-alert@.service"
# The alert template as systemd instantiates it for a failed tradingd.service.
ALERT_INSTANCE = "tradingd-alert@tradingd.service.service"
SERVICES = (MAIN, BOOTSTRAP, PRUNE)
INSTALLED_BINARY = "/opt/tradingd/venv/bin/tradingd"
SECRETS = (
    "binance-api-key",
    "binance-api-secret",
    "deribit-api-key",
    "deribit-api-secret",
    "tradingd-db-password",
)
DEFAULT_DAEMON_STOP_TIMEOUT = 20.0
# Settings that make up the sandbox; both units must agree on every one of them.
SANDBOX = (
    "User",
    "Group",
    "UMask",
    "NoNewPrivileges",
    "CapabilityBoundingSet",
    "AmbientCapabilities",
    "ProtectSystem",
    "ProtectHome",
    "PrivateTmp",
    "PrivateDevices",
    "DevicePolicy",
    "PrivateUsers",
    "PrivateIPC",
    "PrivateMounts",
    "ProtectClock",
    "ProtectHostname",
    "ProtectKernelTunables",
    "ProtectKernelModules",
    "ProtectKernelLogs",
    "ProtectControlGroups",
    "ProtectProc",
    "ProcSubset",
    "RestrictAddressFamilies",
    "RestrictNamespaces",
    "RestrictRealtime",
    "RestrictSUIDSGID",
    "LockPersonality",
    "MemoryDenyWriteExecute",
    "RemoveIPC",
    "SystemCallArchitectures",
    "SystemCallFilter",
    "SystemCallErrorNumber",
    "NoExecPaths",
    "ExecPaths",
    "LoadCredentialEncrypted",
    "StateDirectory",
)

Unit = dict[str, dict[str, list[str]]]


def parse_unit(path: Path) -> Unit:
    """Sections -> key -> every value in order (unit files repeat keys)."""
    unit: Unit = {}
    section: dict[str, list[str]] = {}
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            section = unit.setdefault(line[1:-1], {})
            continue
        key, value = line.split("=", 1)
        section.setdefault(key.strip(), []).append(value.strip())
    return unit


def seconds(value: str) -> float:
    """A systemd time span such as 60s, 15min, 3h or 1min 30s."""
    units = {"": 1, "s": 1, "sec": 1, "min": 60, "m": 60, "h": 3600, "ms": 0.001}
    total = 0.0
    for number, unit in re.findall(r"(\d+(?:\.\d+)?)\s*([a-z]*)", value):
        total += float(number) * units[unit]
    return total


@pytest.fixture(scope="module")
def main_unit() -> Unit:
    return parse_unit(UNIT_DIR / MAIN)


@pytest.fixture(scope="module")
def bootstrap_unit() -> Unit:
    return parse_unit(UNIT_DIR / BOOTSTRAP)


@pytest.fixture(scope="module")
def prune_unit() -> Unit:
    return parse_unit(UNIT_DIR / PRUNE)


@pytest.fixture(scope="module")
def alert_unit() -> Unit:
    return parse_unit(UNIT_DIR / ALERT)


def one(unit: Unit, section: str, key: str) -> str:
    values = unit[section].get(key, [])
    assert len(values) == 1, f"[{section}] {key}= set {len(values)} times"
    return values[0]


def test_main_unit_is_a_notify_service_with_a_watchdog(main_unit: Unit):
    assert one(main_unit, "Service", "Type") == "notify"
    assert one(main_unit, "Service", "NotifyAccess") == "main"
    assert 10 <= seconds(one(main_unit, "Service", "WatchdogSec")) <= 120
    assert one(main_unit, "Service", "ExecStart") == (
        f"{INSTALLED_BINARY} --config /etc/tradingd/tradingd.toml"
    )
    assert one(main_unit, "Service", "ExecReload") == "/bin/kill -HUP $MAINPID"


def test_main_unit_restart_policy(main_unit: Unit):
    assert one(main_unit, "Service", "Restart") == "on-failure"
    assert one(main_unit, "Service", "RestartPreventExitStatus").split() == ["78"]
    # In [Unit], where systemd reads them, and wide enough to ever trigger.
    assert "StartLimitIntervalSec" not in main_unit["Service"]
    interval = seconds(one(main_unit, "Unit", "StartLimitIntervalSec"))
    burst = int(one(main_unit, "Unit", "StartLimitBurst"))
    restart_delay = seconds(one(main_unit, "Service", "RestartSec"))
    assert interval > restart_delay * burst


def test_main_unit_stops_gracefully(main_unit: Unit):
    assert one(main_unit, "Service", "KillMode") == "mixed"
    assert seconds(one(main_unit, "Service", "TimeoutStopSec")) > DEFAULT_DAEMON_STOP_TIMEOUT
    environment = " ".join(main_unit["Service"]["Environment"]).split()
    assert "PYTHONFAULTHANDLER=1" in environment


@pytest.mark.parametrize(
    ("name", "secrets"),
    [
        (MAIN, SECRETS),
        (BOOTSTRAP, SECRETS),
        (PRUNE, ("tradingd-db-password",)),
        (ALERT, ("tradingd-alert-webhook", "tradingd-telegram-token")),
    ],
)
def test_every_secret_is_a_credential_never_an_environment_variable(
    name: str, secrets: tuple[str, ...]
):
    unit = parse_unit(UNIT_DIR / name)
    assert sorted(unit["Service"]["LoadCredentialEncrypted"]) == sorted(secrets)
    assert "EnvironmentFile" not in unit["Service"]
    for assignment in " ".join(unit["Service"].get("Environment", [])).split():
        assert not re.search(r"KEY|SECRET|PASSWORD|TOKEN", assignment.split("=")[0])


@pytest.mark.parametrize("name", [*SERVICES, ALERT])
def test_runs_as_the_dedicated_user_with_its_state_directory(name: str):
    unit = parse_unit(UNIT_DIR / name)
    assert one(unit, "Service", "User") == "tradingd"
    assert one(unit, "Service", "StateDirectory") == "tradingd"
    assert "DynamicUser" not in unit["Service"]


def test_bootstrap_unit_is_a_long_oneshot(bootstrap_unit: Unit, main_unit: Unit):
    assert one(bootstrap_unit, "Service", "Type") == "oneshot"
    assert one(bootstrap_unit, "Service", "RemainAfterExit") == "yes"
    assert one(bootstrap_unit, "Service", "ExecStart") == (
        f"{INSTALLED_BINARY} --bootstrap --config /etc/tradingd/tradingd.toml"
    )
    assert seconds(one(bootstrap_unit, "Service", "TimeoutStartSec")) >= 3600
    assert BOOTSTRAP in main_unit["Unit"]["Requires"]
    assert BOOTSTRAP in main_unit["Unit"]["After"]


def test_every_service_shares_one_sandbox(
    main_unit: Unit, bootstrap_unit: Unit, prune_unit: Unit, alert_unit: Unit
):
    for key in SANDBOX:
        assert key in main_unit["Service"], f"{key}= missing from {MAIN}"
        assert main_unit["Service"][key] == bootstrap_unit["Service"].get(key), key
        if key != "LoadCredentialEncrypted":
            assert main_unit["Service"][key] == prune_unit["Service"].get(key), key
            assert main_unit["Service"][key] == alert_unit["Service"].get(key), key


@pytest.mark.parametrize("name", SERVICES)
def test_a_unit_that_fails_for_good_pages_a_human(name: str, alert_unit: Unit):
    unit = parse_unit(UNIT_DIR / name)
    assert one(unit, "Unit", "OnFailure") == "tradingd-alert@%n.service"
    assert "OnFailure" not in alert_unit["Unit"]  # an alert that fails must not alert again
    assert one(alert_unit, "Service", "Type") == "oneshot"
    assert one(alert_unit, "Service", "ExecStart") == (
        f"{INSTALLED_BINARY} alert --unit %i --config /etc/tradingd/tradingd.toml"
    )


def test_prune_is_a_low_priority_daily_oneshot(prune_unit: Unit):
    assert one(prune_unit, "Service", "Type") == "oneshot"
    assert one(prune_unit, "Service", "ExecStart") == (
        f"{INSTALLED_BINARY} prune --config /etc/tradingd/tradingd.toml"
    )
    assert int(one(prune_unit, "Service", "Nice")) >= 10
    assert one(prune_unit, "Service", "IOSchedulingClass") == "idle"
    assert one(prune_unit, "Service", "CPUSchedulingPolicy") == "batch"
    # Its own runtime directory: the daemon's is removed whenever the daemon stops.
    assert one(prune_unit, "Service", "RuntimeDirectory") == "tradingd-prune"
    timer = parse_unit(UNIT_DIR / PRUNE_TIMER)
    assert one(timer, "Timer", "Persistent") == "true"  # a run missed while off happens later
    assert "Unit" not in timer["Timer"]  # starts the service of the same name
    assert one(timer, "Install", "WantedBy") == "timers.target"


# systemd-analyze needs no running systemd, only the package.

requires_systemd_analyze = pytest.mark.skipif(
    shutil.which("systemd-analyze") is None,
    reason="systemd-analyze not installed (Debian: apt-get install systemd)",
)


@pytest.fixture(scope="module")
def verifiable_units(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Copies of both units whose ExecStart= names the tradingd this test runs from.

    `verify` refuses an ExecStart= binary that does not exist, and /opt/tradingd is not
    installed on a development or CI machine.
    """
    binary = Path(sys.executable).with_name("tradingd")
    if not binary.exists():
        pytest.skip(f"no installed tradingd entry point beside {sys.executable}")
    directory = tmp_path_factory.mktemp("units")
    for name in (*SERVICES, PRUNE_TIMER, ALERT):
        text = (UNIT_DIR / name).read_text().replace(INSTALLED_BINARY, str(binary))
        (directory / name).write_text(text)
    shutil.copy(directory / ALERT, directory / ALERT_INSTANCE)
    yield directory


def analyze(*arguments: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["systemd-analyze", *map(str, arguments)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@requires_systemd_analyze
def test_units_verify_cleanly(verifiable_units: Path):
    result = analyze(
        "verify",
        "--recursive-errors=one",
        *(verifiable_units / name for name in (*SERVICES, PRUNE_TIMER, ALERT_INSTANCE)),
    )
    assert result.returncode == 0, result.stderr
    assert "ignoring" not in result.stderr, result.stderr


@requires_systemd_analyze
def test_verify_catches_what_systemd_252_does_not_know(verifiable_units: Path, tmp_path: Path):
    # Guards the check above: without --recursive-errors=one verify exits 0 on these.
    broken = tmp_path / MAIN
    text = (verifiable_units / MAIN).read_text().replace("Type=notify\n", "Type=notify-reload\n")
    broken.write_text(text + "\n[Service]\nRestartSteps=5\n")
    shutil.copy(verifiable_units / BOOTSTRAP, tmp_path / BOOTSTRAP)
    result = analyze("verify", "--recursive-errors=one", broken)
    assert result.returncode != 0
    assert "RestartSteps" in result.stderr


@requires_systemd_analyze
def test_the_prune_timer_calendar_is_valid():
    timer = parse_unit(UNIT_DIR / PRUNE_TIMER)
    result = analyze("calendar", one(timer, "Timer", "OnCalendar"))
    assert result.returncode == 0, result.stderr
    assert "Next elapse:" in result.stdout


@requires_systemd_analyze
@pytest.mark.parametrize("name", [*SERVICES, ALERT_INSTANCE])
def test_security_exposure_at_most_2(verifiable_units: Path, name: str):
    result = analyze("security", "--offline=yes", "--threshold=20", verifiable_units / name)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr
    match = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", result.stdout)
    assert match is not None, result.stdout[-2000:]
    assert float(match[1]) <= 2.0


@pytest.mark.skipif(
    shutil.which("systemd-sysusers") is None,
    reason="systemd-sysusers not installed (Debian: apt-get install systemd)",
)
def test_sysusers_snippet_creates_the_user(tmp_path: Path):
    (tmp_path / "etc").mkdir()
    result = subprocess.run(
        [
            "systemd-sysusers",
            "--dry-run",
            f"--root={tmp_path}",
            str(UNIT_DIR / "tradingd.sysusers"),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "Creating user 'tradingd'" in result.stdout + result.stderr
