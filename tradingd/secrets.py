"""Secrets: one file per secret, never in the configuration, never in a log line.

Read from ``$CREDENTIALS_DIRECTORY`` when systemd's ``LoadCredential=`` set it, else from the
configured secrets directory. A file that its group or others could read is refused.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

import msgspec

from tradingd.config import Config, ConfigError

CREDENTIALS_ENV = "CREDENTIALS_DIRECTORY"


class SecretError(Exception):
    """A secret that cannot be used; the message names the file, never its content."""


class Secret:
    """A secret value that does not show itself in reprs, f-strings or tracebacks."""

    __slots__ = ("_value", "name")

    def __init__(self, name: str, value: str) -> None:
        self.name = name
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return f"Secret({self.name!r}, '***')"

    __str__ = __repr__

    def __format__(self, spec: str) -> str:
        return repr(self)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other.name == self.name and other._value == self._value

    def __hash__(self) -> int:
        return hash(self.name)


class SecretStore:
    """Secret files in ``directory``.

    ``systemd_credentials``: the directory is systemd's ``$CREDENTIALS_DIRECTORY``. systemd
    writes each credential mode 0400, owned by root, and lets the unit's user read it through
    an ACL entry, whose mask shows in the group bits (0440). That directory is private to the
    unit and read-only, so there only permission for others is refused.
    """

    def __init__(self, directory: Path, *, systemd_credentials: bool = False) -> None:
        self.directory = directory
        self._forbidden = 0o007 if systemd_credentials else 0o077
        self._who = "others" if systemd_credentials else "group or others"

    def load(self, name: str) -> Secret:
        if not name or "/" in name or name in (".", ".."):
            raise SecretError(f"invalid secret name {name!r}")
        path = self.directory / name
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except FileNotFoundError:
            raise SecretError(f"secret file {path} does not exist") from None
        except OSError as exc:
            raise SecretError(f"secret file {path} cannot be opened: {exc.strerror}") from None
        try:
            info = os.fstat(fd)
            if not stat.S_ISREG(info.st_mode):
                raise SecretError(f"secret file {path} is not a regular file")
            if info.st_mode & self._forbidden:
                raise SecretError(
                    f"secret file {path} is accessible by {self._who} "
                    f"(mode {stat.S_IMODE(info.st_mode):04o}); refusing it. "
                    f"Run: chmod 600 {path}"
                )
            with os.fdopen(fd, "rb", closefd=False) as handle:
                raw = handle.read()
        finally:
            os.close(fd)
        try:
            value = raw.decode("utf-8").strip()
        except UnicodeDecodeError:
            raise SecretError(f"secret file {path} is not UTF-8 text") from None
        if not value:
            raise SecretError(f"secret file {path} is empty")
        return Secret(name, value)

    def load_optional(self, name: str) -> Secret | None:
        return self.load(name) if name else None


def secret_store(config: Config) -> SecretStore:
    """The secrets of ``config``: systemd's credentials directory when systemd set one."""
    directory = config.secrets_path()
    from_systemd = os.environ.get(CREDENTIALS_ENV, "")
    return SecretStore(
        directory, systemd_credentials=bool(from_systemd) and directory == Path(from_systemd)
    )


def configured_secret_keys(config: Config) -> list[tuple[str, str]]:
    """Every ``*_secret`` key with a value, as (dotted key, secret file name)."""
    found: list[tuple[str, str]] = []

    def walk(value: object, prefix: str) -> None:
        if isinstance(value, dict):
            for key, item in value.items():
                dotted = f"{prefix}.{key}" if prefix else str(key)
                if str(key).endswith("_secret") and isinstance(item, str) and item:
                    found.append((dotted, item))
                else:
                    walk(item, dotted)

    walk(msgspec.to_builtins(config), "")
    return found


def check_secret_files(config: Config, config_path: Path | str) -> None:
    """Every configured secret file exists, is private and readable (``config check`` and
    start-up); a ConfigError names the key. The values are read and dropped, never shown."""
    store = secret_store(config)
    for key, name in configured_secret_keys(config):
        try:
            store.load(name)
        except SecretError as exc:
            raise ConfigError(
                config_path, key, f"expected a private, non-empty secret file, found {exc}"
            ) from None
