"""Adapters are found by name through the ``tradingd.adapters`` entry-point group.

A third-party distribution adds a venue by declaring, in its own pyproject.toml::

    [project.entry-points."tradingd.adapters"]
    kraken = "tradingd_kraken:KrakenAdapter"
"""

from __future__ import annotations

import importlib
from importlib.metadata import entry_points
from pathlib import Path
from typing import cast

import aiohttp

from tradingd.adapters.base import AdapterFactory, ExchangeAdapter, SymbolRejected
from tradingd.config import ADAPTER_ENTRY_POINT_GROUP, Config, ConfigError, installed_adapters
from tradingd.execution.venue import ExecutionClientFactory

# The name, in an adapter's package, of its live ``ExecutionClientFactory``.
EXECUTION_CLIENT_FACTORY = "execution_client"

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


def load_execution_client(name: str) -> ExecutionClientFactory | None:
    """The live execution-client factory of adapter ``name``: ``execution_client`` in the
    package its entry point names (None when the adapter has no live trading)."""
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        if ep.name == name:
            package = importlib.import_module(ep.module)
            factory = getattr(package, EXECUTION_CLIENT_FACTORY, None)
            return cast(ExecutionClientFactory, factory) if callable(factory) else None
    raise UnknownAdapter(name, available_adapters())


def execution_client_factory(
    config: Config, exchange: str, config_path: Path | str
) -> ExecutionClientFactory:
    """The live factory of a configured exchange; an adapter without one is a ConfigError."""
    adapter = config.adapter_name(exchange)
    try:
        factory = load_execution_client(adapter)
    except UnknownAdapter as exc:
        raise ConfigError(config_path, f"exchanges.{exchange}.adapter", str(exc)) from None
    if factory is None:
        key = f"exchanges.{exchange}.mode" if config.exchanges[exchange].mode else "daemon.mode"
        raise ConfigError(
            config_path,
            key,
            f"expected 'paper' (adapter {adapter!r} has no live trading), found 'live'",
        )
    return factory


def create_adapter(
    config: Config, exchange: str, http: aiohttp.ClientSession, config_path: Path | str
) -> ExchangeAdapter:
    """The adapter for one configured exchange; a configuration it refuses is a ConfigError
    (in live mode, an adapter without live trading too)."""
    key = f"exchanges.{exchange}"
    if config.mode_of(exchange) == "live":
        execution_client_factory(config, exchange, config_path)
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
