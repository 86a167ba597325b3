"""The fake Binance's flood path renders the same frames and keeps the same tape as the path
that builds a wire dict per trade (the benchmark's feeder floods; the tests publish)."""

from __future__ import annotations

from tradingd.testing.fake_binance import FakeBinance, _Connection

SHAPES = [(combined, microseconds) for combined in (True, False) for microseconds in (True, False)]


def _listening(fake: FakeBinance, instrument: str) -> list[_Connection]:
    stream = f"{instrument.lower()}@trade"
    connections = [
        _Connection(
            ws=None,  # type: ignore[arg-type]  (nothing is written: frames stay in the outbox)
            request=None,  # type: ignore[arg-type]
            streams={stream: None},
            combined=combined,
            microseconds=microseconds,
        )
        for combined, microseconds in SHAPES
    ]
    for conn in connections:
        fake._connections.add(conn)
    return connections


def _tape(fake: FakeBinance, instrument: str) -> tuple[object, ...]:
    symbol = fake._symbols[instrument]
    return (
        list(symbol.tape_price),
        list(symbol.tape_quantity),
        list(symbol.tape_maker),
        symbol.minute_bars,
        symbol.price_units,
    )


def test_a_flood_is_byte_for_byte_what_publishing_sends() -> None:
    published, flooded = FakeBinance(seed=3), FakeBinance(seed=3)
    by_dict, by_tape = _listening(published, "ETHUSDT"), _listening(flooded, "ETHUSDT")
    wire: list[dict[str, object]] = []
    for count, now_us in (
        (1, 1_765_000_000_000_000),
        (250, 1_765_000_000_123_456),
        (37, 1_765_000_061_999_999),
    ):
        # One clock for both, moving between calls (a new minute bar at the last).
        published._now_us = flooded._now_us = lambda now_us=now_us: now_us  # type: ignore[method-assign]
        wire += published.publish_trades("ETHUSDT", count)
        flooded.flood_trades("ETHUSDT", count)
    for dict_conn, tape_conn in zip(by_dict, by_tape, strict=True):
        assert len(tape_conn.outbox) == 288
        assert list(tape_conn.outbox) == list(dict_conn.outbox)
    assert _tape(flooded, "ETHUSDT") == _tape(published, "ETHUSDT")
    assert flooded.tape("ETHUSDT") == wire


def test_a_tape_listener_still_gets_the_wire_dicts_of_a_flood() -> None:
    fake = FakeBinance(seed=5)
    heard: list[tuple[str, int]] = []
    fake.tape_listeners.append(lambda instrument, trades: heard.append((instrument, len(trades))))
    fake.flood_trades("BTCUSDT", 12)
    assert heard == [("BTCUSDT", 12)]
