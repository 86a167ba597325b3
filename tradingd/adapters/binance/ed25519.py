"""Ed25519 API keys for Binance (``key_type = "ed25519"``), sans-I/O: the private key read from
its PEM text, and the signature Binance takes from such a key: base64 of Ed25519 over the same
payload an HMAC key signs (percent-encoded in a REST query, as is in a WebSocket API request).

Needs the optional ``cryptography`` package (``pip install 'tradingd[ed25519]'``); the
configuration check refuses ``key_type = "ed25519"`` without it (exit 78).
"""

from __future__ import annotations

import base64

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import load_pem_private_key


def load_private_key(pem: str) -> Ed25519PrivateKey:
    """The key of a PEM ``PRIVATE KEY`` block (PKCS#8, unencrypted, as Binance's key
    generator writes it); ``ValueError`` for anything else."""
    try:
        key = load_pem_private_key(pem.encode(), password=None)
    except (ValueError, TypeError) as exc:
        raise ValueError(f"an unencrypted PEM private key, found {exc}") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise ValueError(f"an Ed25519 private key, found {type(key).__name__}")
    return key


def sign(key: Ed25519PrivateKey, payload: str) -> str:
    """Base64 of the Ed25519 signature of ``payload`` (deterministic: RFC 8032)."""
    return base64.b64encode(key.sign(payload.encode())).decode()
