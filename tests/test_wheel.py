"""An installed wheel works: built from the checkout, installed (not editable) into a fresh venv,
its commands run from a directory outside the checkout against real PostgreSQL."""

from __future__ import annotations

import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

from tests.e2e.harness import offline_config

CHECKOUT = Path(__file__).resolve().parent.parent
# What the wheel is built from: the package, its data and its packaging, nothing else.
SOURCES = ["pyproject.toml", "README.md", "tradingd"]


def run(*command: str | Path, cwd: Path) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [str(part) for part in command],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=300,
        stdin=subprocess.DEVNULL,
        env={"PATH": "/usr/bin:/bin", "HOME": str(cwd)},
    )
    assert result.returncode == 0, f"{command}: {result.stdout}\n{result.stderr}"
    return result


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The ``tradingd`` script of a fresh venv holding the wheel (dependencies reached through
    a .pth file pointing at this venv's site-packages: offline and fast)."""
    work = tmp_path_factory.mktemp("wheel")
    source = work / "source"
    source.mkdir()
    for name in SOURCES:
        path = CHECKOUT / name
        if path.is_dir():
            shutil.copytree(path, source / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(path, source / name)
    wheels = work / "wheels"
    run(
        sys.executable,
        "-m",
        "pip",
        "wheel",
        "--no-deps",
        "--no-build-isolation",
        "--no-index",
        "-q",
        "-w",
        wheels,
        source,
        cwd=work,
    )
    (wheel,) = wheels.glob("tradingd-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
    # Real files in the package, no links: adapters, strategies and the migrations.
    for needed in (
        "tradingd/adapters/binance/parsing.py",
        "tradingd/strategies/api.py",
        "tradingd/strategies/sma_cross.py",
        "tradingd/sql/0001_core.sql",
    ):
        assert needed in names, needed
    venv = work / "venv"
    run(sys.executable, "-m", "venv", "--without-pip", venv, cwd=work)
    python = venv / "bin" / "python"
    purelib = run(
        python, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))", cwd=work
    ).stdout.strip()
    Path(purelib, "dependencies.pth").write_text(sysconfig.get_path("purelib") + "\n")
    run(
        sys.executable,
        "-m",
        "pip",
        "--python",
        python,
        "install",
        "--no-deps",
        "--no-index",
        "-q",
        wheel,
        cwd=work,
    )
    where = run(python, "-c", "import tradingd; print(tradingd.__file__)", cwd=work).stdout
    assert Path(where.strip()).is_relative_to(purelib), where
    return venv / "bin" / "tradingd"


@pytest.mark.slow
def test_the_installed_wheel_runs_help_migrate_and_config_check(
    installed: Path, tmp_path: Path, database_url: str, redis_url: str
) -> None:
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    config = offline_config(
        tmp_path / "tradingd.toml",
        state_dir=tmp_path / "state",
        database_url=database_url,
        redis_url=redis_url,
    )
    assert "usage: tradingd" in run(installed, "--help", cwd=outside).stdout
    migrated = run(installed, "--config", config, "migrate", cwd=outside)
    assert "0001_core" in migrated.stdout + migrated.stderr
    run(installed, "--config", config, "config", "check", cwd=outside)
    # The adapters and strategies came with the wheel, not from the checkout.
    for module in ("tradingd.adapters.binance", "tradingd.strategies.api"):
        found = run(
            installed.parent / "python",
            "-c",
            f"import {module} as m; print(m.__file__)",
            cwd=outside,
        ).stdout
        assert not Path(found.strip()).is_relative_to(CHECKOUT), found
