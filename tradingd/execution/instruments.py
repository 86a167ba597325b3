"""The venue's rules of each traded instrument, from the ``instruments`` table the daemon keeps
synchronised with the venues (tick size, step size, minimum quantity and notional)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from decimal import Decimal, InvalidOperation

import asyncpg

from tradingd.execution.risk import InstrumentInfo
from tradingd.model import MarketType
from tradingd.strategies.api import InstrumentRules


def step_size(raw: str, min_quantity: Decimal) -> Decimal:
    """Binance's LOT_SIZE stepSize when the venue's description has one, else the minimum
    quantity (Deribit's min_trade_amount is also its increment)."""
    try:
        document = json.loads(raw)
    except ValueError:
        return min_quantity
    filters = document.get("filters") if isinstance(document, dict) else None
    for item in filters if isinstance(filters, list) else []:
        if isinstance(item, dict) and item.get("filterType") == "LOT_SIZE":
            try:
                step = Decimal(str(item.get("stepSize")))
            except InvalidOperation:
                break
            if step.is_finite() and step > 0:
                return step
    return min_quantity


def info_of(record: asyncpg.Record) -> InstrumentInfo:
    market_type = MarketType(record["market_type"])
    min_quantity: Decimal = record["min_trade_amount"]
    spot = market_type is MarketType.SPOT
    return InstrumentInfo(
        rules=InstrumentRules(
            name=record["instrument_name"],
            base=record["base_currency"],
            quote=record["quote_currency"],
            tick_size=record["tick_size"],
            step_size=step_size(record["raw"], min_quantity) if min_quantity > 0 else Decimal(1),
            min_quantity=min_quantity,
            min_notional=record["min_notional"],
            contract_size=record["contract_size"],
        ),
        spot=spot,
        # Deribit's BTC/ETH futures and perpetuals are quoted in USD and sized in USD.
        inverse=not spot and record["quote_currency"] == "USD",
    )


async def load_instruments(
    pool: asyncpg.Pool, exchange: str, symbols: Sequence[str]
) -> dict[str, InstrumentInfo]:
    records = await pool.fetch(
        "SELECT instrument_name, market_type, base_currency, quote_currency, tick_size,"
        " min_trade_amount, contract_size, min_notional, raw::text AS raw"
        " FROM instruments WHERE exchange = $1 AND instrument_name = ANY($2::text[])"
        " AND is_active",
        exchange,
        list(symbols),
    )
    return {record["instrument_name"]: info_of(record) for record in records}
