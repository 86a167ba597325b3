"""SIGKILL of an executor process between intent and send, and after send (paper venue): the
restarted executor reconciles with the venue, and no order is sent twice or lost."""

from __future__ import annotations

import asyncio
import sys

import asyncpg
import pytest
import redis.asyncio as aioredis

from tests.execution._doubles import REPO, healthy, running_executor, ticker, trade
from tradingd.execution.orders import OrderState

S = OrderState
ORDERS = 6


@pytest.mark.parametrize("point", ["before_send", "after_send"])
async def test_sigkill_loses_nothing_and_sends_nothing_twice(
    point: str,
    migrated_database_url: str,
    redis_url: str,
    pool: asyncpg.Pool,
    rds: aioredis.Redis,
) -> None:
    await healthy(rds)
    child = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "tests.execution._crashing_executor",
        migrated_database_url,
        redis_url,
        point,
        str(ORDERS),
        cwd=REPO,
        stdout=asyncio.subprocess.PIPE,
    )
    out, _ = await asyncio.wait_for(child.communicate(), 60)
    assert child.returncode == -9  # it really was SIGKILLed
    accepted = out.decode().split()
    # Accepted means durable: the last one may or may not have been answered before the kill.
    assert len(accepted) in (ORDERS - 1, ORDERS)
    before = await pool.fetch("SELECT client_order_id, state FROM orders ORDER BY id")
    assert len(before) == ORDERS
    assert set(accepted) <= {row["client_order_id"] for row in before}
    crashed = before[-1]["client_order_id"]
    # Committed claimed (one commit per burst): either way it may be on the wire, to be asked.
    assert before[-1]["state"] == "SENDING"

    async with running_executor(pool, rds) as h:
        await h.feed(trade("100", "1", 2, h.clock.now), ticker("99.9", "100.1", h.clock.now))
        await h.settle()
        await h.feed(trade("98", "1", 3, h.clock.now))  # fills the resting limits
        await h.settle()

    sent = {
        row["client_order_id"]: row["n"]
        for row in await pool.fetch(
            "SELECT client_order_id, count(*) AS n FROM paper_orders GROUP BY 1"
        )
    }
    orders = {
        row["client_order_id"]: (row["state"], row["filled_quantity"])
        for row in await pool.fetch("SELECT client_order_id, state, filled_quantity FROM orders")
    }
    # Nothing sent twice; nothing new sent for the orders of the killed process.
    assert all(count == 1 for count in sent.values()), sent
    # Nothing lost: every order the venue has is known to the ledger with the venue's outcome,
    # every order it does not have is NEVER_PLACED.
    for client_id, (state, filled) in orders.items():
        if client_id in sent:
            assert state == "FILLED" and filled > 0, (client_id, state)
        else:
            assert state == "NEVER_PLACED", (client_id, state)
    assert (crashed in sent) == (point == "after_send")
    fills = await pool.fetchval("SELECT count(*) FROM fills")
    assert fills == len(sent)
