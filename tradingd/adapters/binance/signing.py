"""Binance request signing, sans-I/O.

REST: the signature is over the exact query string sent (``k=v&...`` in the order given), and
is appended (percent-encoded) as the last parameter. WebSocket API: over the params sorted by
name, joined the same way. A ``Signer`` turns that payload into the signature: HMAC-SHA256 hex
here (``hmac_signer``), Ed25519 base64 in ``ed25519``. Secrets never appear in what these
functions return, only the signature.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Callable, Mapping, Sequence
from decimal import Decimal
from typing import Final
from urllib.parse import quote

# Binance takes plain decimals only (no exponent): '^([0-9]{1,20})(\.[0-9]{1,20})?$'.
MAX_DIGITS: Final = 20

Param = str | int | Decimal | bool
# The payload -> its signature, as the venue expects it for the key's type.
Signer = Callable[[str], str]


def sign(secret: str, payload: str) -> str:
    """Lowercase hex HMAC-SHA256 of ``payload`` keyed by ``secret``."""
    return hmac.new(secret.encode(), payload.encode(), hashlib.sha256).hexdigest()


def hmac_signer(secret: str) -> Signer:
    return lambda payload: sign(secret, payload)


def format_decimal(value: Decimal) -> str:
    """``value`` as Binance accepts it: plain positional notation, no exponent, no trailing
    zeros past the point; raises ``ValueError`` for what no Binance number can be."""
    if not value.is_finite() or value < 0:
        raise ValueError(f"{value} is not a non-negative finite number")
    text = format(value, "f")
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    whole, _, fraction = text.partition(".")
    if len(whole) > MAX_DIGITS or len(fraction) > MAX_DIGITS:
        raise ValueError(f"{value} has more than {MAX_DIGITS} digits before or after the point")
    return text or "0"


def format_param(value: Param) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, Decimal):
        return format_decimal(value)
    return str(value)


def encode_query(params: Sequence[tuple[str, Param]]) -> str:
    """``k=v&...`` in the order given, values percent-encoded (the form Binance signs)."""
    return "&".join(f"{key}={quote(format_param(value), safe='-_.~')}" for key, value in params)


def signed_query(params: Sequence[tuple[str, Param]], signer: Signer) -> str:
    """The query string with ``signature`` appended (percent-encoded: an Ed25519 signature is
    base64) as its last parameter."""
    query = encode_query(params)
    return f"{query}&signature={quote(signer(query), safe='')}"


def ws_api_payload(params: Mapping[str, Param]) -> str:
    """The WebSocket API's signature payload: every param but ``signature``, sorted by name."""
    return "&".join(
        f"{key}={format_param(params[key])}" for key in sorted(params) if key != "signature"
    )


def ws_api_signature(params: Mapping[str, Param], signer: Signer) -> str:
    return signer(ws_api_payload(params))
