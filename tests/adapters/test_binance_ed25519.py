"""Ed25519 API keys for Binance: the signing function against RFC 8032's vectors, Binance's
payload signed and verified as the venue does, the signature percent-encoded in a REST query,
and the fake venue accepting only the key's own signatures (REST and the WebSocket API)."""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator
from decimal import Decimal
from urllib.parse import unquote

import aiohttp
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given
from hypothesis import strategies as st

from tradingd.adapters.binance import credentials, ed25519, trading
from tradingd.adapters.binance.execution_parsing import ExecutionReport
from tradingd.adapters.binance.private import BinancePrivateClient, UserStream
from tradingd.adapters.binance.signing import signed_query
from tradingd.adapters.trading import Verdict
from tradingd.config import ExchangeConfig
from tradingd.testing.fake_binance import FakeBinance
from tradingd.testing.fake_binance_trading import FakeBinanceTrading

# RFC 8032, 7.1, TEST 2: secret key, public key, message, signature (hex).
RFC_SECRET = "4ccd089b28ff96da9db6c346ec114e0f5b8a319f35aba624da8cf6ed4fb8a6fb"
RFC_PUBLIC = "3d4017c3e843895a92b70aa74d1b7ebc9c982ccf2ec4968cc0cd55f12af4660c"
RFC_SIGNATURE = (
    "92a009a9f0d4cab8720e820b5f642540a2b27b5416503f8fb3762223ebdb69da"
    "085ac1e43e15996e458f3613d0f11d8c387b2eaeb4302aeeb00d291612bb0c00"
)
# The same key as a Binance key file holds it (PKCS#8 PEM).
PEM = (
    "-----BEGIN PRIVATE KEY-----\n"
    "MC4CAQAwBQYDK2VwBCIEIEzNCJso/5banbbDRuwRTg9bijGfNaumJNqM9u1PuKb7\n"
    "-----END PRIVATE KEY-----\n"
)
PUBLIC_PEM = (
    "-----BEGIN PUBLIC KEY-----\n"
    "MCowBQYDK2VwAyEAPUAXw+hDiVqStwqnTRt+vJyYLM8uxJaMwM1V8Sr0Zgw=\n"
    "-----END PUBLIC KEY-----\n"
)
# The payload of Binance's signed-endpoint example (rest-api.md).
PAYLOAD = (
    "symbol=LTCBTC&side=BUY&type=LIMIT&timeInForce=GTC&quantity=1&price=0.1"
    "&recvWindow=5000&timestamp=1499827319559"
)
KEY = "ed25519-api-key"


def test_the_rfc_8032_vector_from_the_pem_key() -> None:
    key = ed25519.load_private_key(PEM)
    public = key.public_key().public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw
    )
    assert public.hex() == RFC_PUBLIC
    assert (
        key.private_bytes(
            serialization.Encoding.Raw,
            serialization.PrivateFormat.Raw,
            serialization.NoEncryption(),
        ).hex()
        == RFC_SECRET
    )
    assert base64.b64decode(ed25519.sign(key, "r")).hex() == RFC_SIGNATURE  # "r" is 0x72


def test_binances_payload_signs_deterministically_and_verifies_with_the_public_key() -> None:
    key = ed25519.load_private_key(PEM)
    signature = ed25519.sign(key, PAYLOAD)
    assert signature == ed25519.sign(key, PAYLOAD)
    assert len(base64.b64decode(signature)) == 64
    key.public_key().verify(base64.b64decode(signature), PAYLOAD.encode())


@given(st.text(max_size=200))
def test_a_signed_query_carries_the_base64_signature_percent_encoded(text: str) -> None:
    key = ed25519.load_private_key(PEM)
    query = signed_query([("symbol", "BTCUSDT"), ("note", text)], lambda p: ed25519.sign(key, p))
    unsigned, _, encoded = query.rpartition("&signature=")
    assert "+" not in encoded and "/" not in encoded and "=" not in encoded
    key.public_key().verify(base64.b64decode(unquote(encoded)), unsigned.encode())


@pytest.mark.parametrize(
    "pem",
    [
        "not a key",
        # An RSA key is a key, but not an Ed25519 one.
        "-----BEGIN PRIVATE KEY-----\nMIIBVAIBADANBgkqhkiG9w0BAQEFAASCAT4wggE6AgEAAkEAq7BFUpkGp3+LQmlQ\n"
        "-----END PRIVATE KEY-----\n",
    ],
)
def test_a_secret_that_is_no_ed25519_key_is_refused(pem: str) -> None:
    with pytest.raises(ValueError, match=r"(PEM|Ed25519) private key, found"):
        ed25519.load_private_key(pem)


def test_the_config_key_type_chooses_the_signer() -> None:
    hmac_config = ExchangeConfig(ws_url="wss://x.test/ws", rest_url="https://x.test")
    assert credentials(hmac_config, "k", "secret").key_type == "hmac"
    chosen = ExchangeConfig(ws_url="wss://x.test/ws", rest_url="https://x.test", key_type="ed25519")
    made = credentials(chosen, KEY, PEM)
    assert made.key_type == "ed25519" and "BEGIN" not in repr(made)
    assert made.sign(PAYLOAD) == ed25519.sign(ed25519.load_private_key(PEM), PAYLOAD)
    with pytest.raises(ValueError):
        credentials(chosen, KEY, "an HMAC secret by mistake")


@pytest.fixture
async def venue() -> AsyncIterator[FakeBinanceTrading]:
    fake = FakeBinance(seed=7)
    desk = FakeBinanceTrading(fake)
    desk.add_account(KEY, "unused", {"USDT": "50000", "BTC": "1"}, ed25519_public_pem=PUBLIC_PEM)
    await fake.start()
    try:
        yield desk
    finally:
        await fake.stop()


def signed_by(pem: str) -> trading.Credentials:
    key = ed25519.load_private_key(pem)
    return trading.Credentials.signed_by(KEY, lambda p: ed25519.sign(key, p), "ed25519")


async def test_the_fake_venue_trades_with_an_ed25519_key_rest_and_user_stream(venue) -> None:
    async with aiohttp.ClientSession() as http:
        private = BinancePrivateClient(
            http, venue.fake.rest_url, signed_by(PEM), request_timeout=2.0
        )
        await private.sync_clock()
        stream = await UserStream.connect(
            http, venue.ws_api_url, private.credentials, private.venue_now_ms(), reply_within=5
        )
        events = stream.events()
        answer = await private.place(
            symbol="BTCUSDT", side="BUY", order_type="MARKET", quantity=Decimal("0.01"),
            client_order_id="ed-1",
        )  # fmt: skip
        assert answer.order is not None and answer.order.status == "FILLED"
        report = await anext(events)
        assert isinstance(report, ExecutionReport) and report.client_order_id == "ed-1"
        await stream.close()


async def test_the_fake_venue_refuses_another_keys_signature(venue) -> None:
    other = Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    async with aiohttp.ClientSession() as http:
        private = BinancePrivateClient(
            http, venue.fake.rest_url, signed_by(other.decode()), request_timeout=2.0
        )
        refused = await private.balances()
        assert not isinstance(refused, dict) and refused.verdict is Verdict.AUTH_FAILED
        assert refused.code == -1022
        with pytest.raises(ConnectionError, match="refused"):
            await UserStream.connect(
                http, venue.ws_api_url, signed_by(other.decode()), private.venue_now_ms(),
                reply_within=5,
            )  # fmt: skip
    assert venue.orders == []
