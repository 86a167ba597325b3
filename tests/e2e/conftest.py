from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import pytest

from tests.e2e.harness import LIVE_DAEMONS
from tradingd.testing.fake_binance import FakeBinance
from tradingd.testing.fake_deribit import FakeDeribit


@pytest.fixture(autouse=True)
def no_daemon_outlives_its_test() -> Iterator[None]:
    yield
    for daemon in list(LIVE_DAEMONS):
        if daemon.process is not None and daemon.process.returncode is None:
            daemon.process.kill()
        LIVE_DAEMONS.discard(daemon)


@pytest.fixture
async def binance() -> AsyncIterator[FakeBinance]:
    fake = FakeBinance(seed=11)
    await fake.start()
    try:
        yield fake
    finally:
        await fake.stop()


@pytest.fixture
async def deribit() -> AsyncIterator[FakeDeribit]:
    async with FakeDeribit(seed=12) as fake:
        yield fake
