"""The cost of signing one Binance request with each key type (``key_type``): HMAC-SHA256 and
Ed25519 (the optional ``cryptography`` extra), over a new-order payload.

``python -m bench.signing [--calls 20000] [--repeat 5]``: prints the best per-call time of each.
"""

from __future__ import annotations

import argparse
import timeit

from tradingd.adapters.binance import ed25519
from tradingd.adapters.binance.signing import hmac_signer

# RFC 8032's test key 2 as a PEM file holds it; the secret of Binance's HMAC example.
PEM = (
    "-----BEGIN PRIVATE KEY-----\n"
    "MC4CAQAwBQYDK2VwBCIEIEzNCJso/5banbbDRuwRTg9bijGfNaumJNqM9u1PuKb7\n"
    "-----END PRIVATE KEY-----\n"
)
SECRET = "NhqPtmdSJYdKjVHjA7PZj4Mge3R5YNiP1e3UZjInClVN65XAbvqqM6A7H5fATj0j"
PAYLOAD = (
    "symbol=BTCUSDT&side=BUY&type=LIMIT&timeInForce=GTC&quantity=0.001&price=60000"
    "&newClientOrderId=td1_abcdefgh&newOrderRespType=FULL&recvWindow=5000"
    "&timestamp=1796536800000"
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--calls", type=int, default=20_000)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    hmac_sign = hmac_signer(SECRET)
    key = ed25519.load_private_key(PEM)
    for name, call in (
        ("hmac-sha256", lambda: hmac_sign(PAYLOAD)),
        ("ed25519", lambda: ed25519.sign(key, PAYLOAD)),
    ):
        best = min(timeit.repeat(call, number=args.calls, repeat=args.repeat)) / args.calls
        print(f"{name:12} {best * 1e6:7.1f} us per request ({len(PAYLOAD)}-character payload)")


if __name__ == "__main__":
    main()
