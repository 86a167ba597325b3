"""Adapters are found by name through the ``tradingd.adapters`` entry-point group.

A third-party distribution adds a venue by declaring, in its own pyproject.toml::

    [project.entry-points."tradingd.adapters"]
    kraken = "tradingd_kraken:KrakenAdapter"
"""

from __future__ import annotations

from importlib.metadata import entry_points
from pathlib import Path
from typing import cast

import aiohttp

from tradingd.adapters.base import AdapterFactory, ExchangeAdapter, SymbolRejected
from tradingd.config import ADAPTER_ENTRY_POINT_GROUP, Config, ConfigError, installed_adapters

ENTRY_POINT_GROUP = ADAPTER_ENTRY_POINT_GROUP


class UnknownAdapter(LookupError):
    def __init__(self, name: str, available: list[str]) -> None:
        super().__init__(
            f"unknown exchange adapter {name!r}; available: {', '.join(available) or 'none'}"
        )
        self.name = name
        self.available = available


def available_adapters() -> list[str]:
    return installed_adapters()


def load_adapter(name: str) -> AdapterFactory:
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        if ep.name == name:
            return cast(AdapterFactory, ep.load())
    raise UnknownAdapter(name, available_adapters())


def create_adapter(
    config: Config, exchange: str, http: aiohttp.ClientSession, config_path: Path | str
) -> ExchangeAdapter:
    """The adapter for one configured exchange; a configuration it refuses is a ConfigError."""
    key = f"exchanges.{exchange}"
    try:
        factory = load_adapter(config.adapter_name(exchange))
    except UnknownAdapter as exc:
        raise ConfigError(config_path, f"{key}.adapter", str(exc)) from None
    try:
        return factory(config.exchanges[exchange], exchange=exchange, http=http)
    except SymbolRejected as exc:
        raise ConfigError(config_path, f"{key}.symbols[{exc.index}]", exc.problem) from None
    except ValueError as exc:
        raise ConfigError(config_path, key, str(exc)) from None
