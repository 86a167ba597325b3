"""Live mode's wiring: the adapter registry finds each venue's execution client, built with
the keys read from their secret files; a key file that cannot be used names its key."""

from __future__ import annotations

from pathlib import Path

import aiohttp
import msgspec
import pytest

from tradingd.adapters.binance import DEFAULT_WS_API_URL, BinanceExecution
from tradingd.adapters.deribit import DeribitExecution
from tradingd.adapters.registry import load_execution_client
from tradingd.config import Config, ConfigError, parse_config
from tradingd.execution.wiring import live_client


def live_config(tmp_path: Path, *, binance_ws_api_url: str = "") -> Config:
    secrets = tmp_path / "secrets"
    secrets.mkdir(exist_ok=True)
    for name, value in (("bk", "binance-key"), ("bs", "binance-secret"), ("dk", "d-id")):
        (secrets / name).write_text(value + "\n")
        (secrets / name).chmod(0o600)
    return parse_config(
        {
            "daemon": {"mode": "live", "secrets_dir": str(secrets)},
            "exchanges": {
                "binance": {
                    "ws_url": "ws://127.0.0.1:9", "rest_url": "http://127.0.0.1:9",
                    "symbols": ["BTCUSDT"], "api_key_secret": "bk", "api_secret_secret": "bs",
                    "ws_api_url": binance_ws_api_url,
                },
                "deribit": {
                    "ws_url": "ws://127.0.0.1:9/ws/api/v2", "rest_url": "http://127.0.0.1:9",
                    "symbols": ["BTC-PERPETUAL", "ETH_USDC-PERPETUAL"],
                    "api_key_secret": "dk", "api_secret_secret": "ds",
                },
            },
        },
        tmp_path / "tradingd.toml",
    )  # fmt: skip


def test_every_installed_adapter_has_live_trading() -> None:
    assert load_execution_client("binance") is not None
    assert load_execution_client("deribit") is not None


async def test_the_binance_client_signs_with_the_key_files(tmp_path: Path) -> None:
    async with aiohttp.ClientSession() as http:
        default = live_client(live_config(tmp_path), "binance", http, "tradingd.toml")
        testnet = "wss://ws-api.testnet.binance.vision/ws-api/v3"
        configured = live_client(
            live_config(tmp_path, binance_ws_api_url=testnet), "binance", http, "tradingd.toml"
        )
    assert isinstance(default, BinanceExecution) and isinstance(configured, BinanceExecution)
    assert default.private.credentials.api_key == "binance-key"
    assert default._ws_api_url == DEFAULT_WS_API_URL
    assert configured._ws_api_url == testnet
    assert default.fault() is None


async def test_a_missing_key_file_names_its_key(tmp_path: Path) -> None:
    config = live_config(tmp_path)
    async with aiohttp.ClientSession() as http:
        with pytest.raises(ConfigError) as caught:
            live_client(config, "deribit", http, "tradingd.toml")
        (tmp_path / "secrets" / "ds").write_text("d-secret\n")
        (tmp_path / "secrets" / "ds").chmod(0o600)
        deribit = live_client(config, "deribit", http, "tradingd.toml")
    assert caught.value.key == "exchanges.deribit.api_secret_secret"
    assert "does not exist" in str(caught.value)
    assert isinstance(deribit, DeribitExecution)
    assert deribit._ws_url == "ws://127.0.0.1:9/ws/api/v2"  # Deribit's private calls: ws_url
    assert deribit._currencies == ["BTC", "USDC"]  # from the symbols when none configured


async def test_an_ed25519_key_signs_from_its_pem_file_and_another_secret_names_its_key(
    tmp_path: Path,
) -> None:
    pytest.importorskip("cryptography")
    from tests.adapters.test_binance_ed25519 import PAYLOAD, PEM
    from tradingd.adapters.binance import ed25519

    config = live_config(tmp_path)
    binance = config.exchanges["binance"]
    config = msgspec.structs.replace(
        config,
        exchanges={
            **config.exchanges,
            "binance": msgspec.structs.replace(binance, key_type="ed25519"),
        },
    )
    async with aiohttp.ClientSession() as http:
        with pytest.raises(ConfigError) as caught:  # "bs" holds an HMAC secret
            live_client(config, "binance", http, "tradingd.toml")
        (tmp_path / "secrets" / "bs").write_text(PEM)
        client = live_client(config, "binance", http, "tradingd.toml")
    assert caught.value.key == "exchanges.binance.api_secret_secret"
    assert "expected an unencrypted PEM private key" in str(caught.value)
    assert "binance-secret" not in str(caught.value)
    assert isinstance(client, BinanceExecution)
    credentials = client.private.credentials
    assert credentials.key_type == "ed25519"
    assert credentials.sign(PAYLOAD) == ed25519.sign(ed25519.load_private_key(PEM), PAYLOAD)
