"""What a venue tells the executor, with no storage behind it: adapters and execution clients
import these without reaching the ledger (and its database driver)."""

from __future__ import annotations

from decimal import Decimal

import msgspec


class Fill(msgspec.Struct, frozen=True, kw_only=True):
    """A fill as a venue reports it, keyed by our client order id."""

    client_order_id: str
    trade_id: str
    quantity: Decimal
    price: Decimal
    fee: Decimal
    fee_currency: str
    liquidity: str  # "maker" | "taker"
    at_us: int
