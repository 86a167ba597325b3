from __future__ import annotations

import os
from pathlib import Path

import pytest

from tradingd.config import parse_config
from tradingd.secrets import Secret, SecretError, SecretStore, secret_store


def write_secret(directory: Path, name: str, value: str, mode: int) -> Path:
    path = directory / name
    path.write_text(value + "\n")
    path.chmod(mode)
    return path


def test_reads_a_private_secret(tmp_path: Path) -> None:
    write_secret(tmp_path, "binance-api-key", "AKIA-very-secret", 0o600)
    secret = SecretStore(tmp_path).load("binance-api-key")
    assert secret.reveal() == "AKIA-very-secret"
    for shown in (repr(secret), str(secret), f"{secret}", f"{secret!r}"):
        assert "AKIA" not in shown


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o644, 0o660, 0o777])
def test_refuses_a_secret_readable_by_others(tmp_path: Path, mode: int) -> None:
    path = write_secret(tmp_path, "binance-api-secret", "TOPSECRETVALUE", mode)
    with pytest.raises(SecretError) as caught:
        SecretStore(tmp_path).load("binance-api-secret")
    message = str(caught.value)
    assert str(path) in message
    assert f"chmod 600 {path}" in message
    assert "TOPSECRETVALUE" not in message


def test_missing_and_symlinked_secrets_are_refused(tmp_path: Path) -> None:
    store = SecretStore(tmp_path)
    with pytest.raises(SecretError, match="does not exist"):
        store.load("nope")
    target = write_secret(tmp_path, "real", "v", 0o600)
    (tmp_path / "link").symlink_to(target)
    with pytest.raises(SecretError):
        store.load("link")
    with pytest.raises(SecretError, match="invalid secret name"):
        store.load("../real")


def test_credentials_directory_wins(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    configured, credentials = tmp_path / "configured", tmp_path / "credentials"
    configured.mkdir()
    credentials.mkdir()
    config = parse_config({"daemon": {"secrets_dir": str(configured)}})
    monkeypatch.delenv("CREDENTIALS_DIRECTORY", raising=False)
    assert config.secrets_path() == configured
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(credentials))
    assert config.secrets_path() == credentials


def test_systemd_credentials_may_show_the_acl_mask_in_the_group_bits(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # systemd writes a credential 0400 owned by root and grants the unit's user read access
    # with an ACL entry; the ACL mask then shows as the group bits: 0440.
    credentials, configured = tmp_path / "credentials", tmp_path / "configured"
    credentials.mkdir()
    configured.mkdir()
    for directory in (credentials, configured):
        write_secret(directory, "binance-api-key", "from-systemd", 0o440)
        write_secret(directory, "world-readable", "x", 0o444)
    config = parse_config({"daemon": {"secrets_dir": str(configured)}})
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(credentials))
    store = secret_store(config)
    assert store.directory == credentials
    assert store.load("binance-api-key").reveal() == "from-systemd"
    with pytest.raises(SecretError, match="accessible by others"):
        store.load("world-readable")
    # Anywhere else, group access is refused as before.
    monkeypatch.delenv("CREDENTIALS_DIRECTORY")
    with pytest.raises(SecretError, match="accessible by group or others"):
        secret_store(config).load("binance-api-key")


def test_secret_equality_does_not_leak() -> None:
    assert Secret("a", "x") == Secret("a", "x")
    assert Secret("a", "x") != Secret("a", "y")
    assert os.environ.get("NOT_A_SECRET") is None
