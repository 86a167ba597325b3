"""Deribit's ``fills_since`` (the start-up gate's source of missed fills) against the fake
Deribit venue on loopback."""

from __future__ import annotations

import time
from decimal import Decimal

from tests.execution._live import LiveHarness
from tests.execution.test_live_deribit import (  # noqa: F401 (fixtures)
    MARKET_BUY,
    PERP,
    client,
    live,
    venue,
)
from tradingd.adapters.deribit.execution import DeribitExecution
from tradingd.execution.orders import OrderState


async def test_deribit_fills_since_gives_our_fills(live: LiveHarness) -> None:  # noqa: F811
    started = int(time.time() * 1_000_000) - 1_000_000
    client_id = await live.submit(MARKET_BUY)
    await live.until_state(client_id, OrderState.FILLED)
    execution = live.executor._venue
    assert isinstance(execution, DeribitExecution)
    fills = await execution.fills_since([PERP], started)
    assert {f.client_order_id for f in fills} == {client_id}
    assert sum(f.quantity for f in fills) == Decimal(20)
    assert await execution.fills_since([PERP], started + 3_600_000_000) == []
    assert execution.connection_epoch() == 1
