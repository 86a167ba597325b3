"""The pure sequence tracker: duplicates dropped, every jump reported exactly once."""

from __future__ import annotations

import itertools

from hypothesis import given
from hypothesis import strategies as st

from tradingd.model import MarketType, Trade
from tradingd.sequencing import (
    DAEMON_START,
    LIVE_STREAM,
    RECONNECT,
    Gap,
    SequenceTracker,
    missing_ranges,
    subtract_ranges,
)


def trade(seq: int, instrument: str = "BTCUSDT", received_us: int | None = None) -> Trade:
    return Trade(
        exchange="binance",
        instrument_name=instrument,
        market_type=MarketType.SPOT,
        trade_id=str(seq),
        trade_seq=seq,
        price_text="1",
        quantity_text="1",
        is_buyer_maker=False,
        trade_us=seq,
        received_us=seq if received_us is None else received_us,
    )


def spans(gaps: list[Gap]) -> list[tuple[str, int, int]]:
    return [(g.instrument_name, g.first_seq, g.last_seq) for g in gaps]


def test_consecutive_trades_pass_and_a_jump_is_a_gap() -> None:
    tracker = SequenceTracker("binance")
    fresh, gaps = tracker.observe([trade(1), trade(2), trade(5, received_us=777), trade(6)])
    assert [t.trade_seq for t in fresh] == [1, 2, 5, 6]
    assert gaps == [Gap("binance", "BTCUSDT", 3, 4, LIVE_STREAM, 777)]
    assert gaps[0].size == 2


def test_duplicates_and_old_trades_are_dropped() -> None:
    tracker = SequenceTracker("binance", {"BTCUSDT": 10})
    fresh, gaps = tracker.observe([trade(9), trade(10), trade(11), trade(11)])
    assert [t.trade_seq for t in fresh] == [11]
    assert gaps == []
    assert tracker.duplicates == 3


def test_seeded_from_storage_the_first_live_trade_reveals_the_gap() -> None:
    tracker = SequenceTracker("binance", {"BTCUSDT": 100})
    _, gaps = tracker.observe([trade(120)])
    assert [(g.first_seq, g.last_seq, g.reason) for g in gaps] == [(101, 119, DAEMON_START)]
    # The start reason applies to the first trade only; later jumps are the live stream's.
    _, gaps = tracker.observe([trade(125)])
    assert [(g.first_seq, g.last_seq, g.reason) for g in gaps] == [(121, 124, LIVE_STREAM)]


def test_seed_keeps_the_highest_sequence() -> None:
    tracker = SequenceTracker("binance")
    tracker.seed("BTCUSDT", 100)
    tracker.seed("BTCUSDT", 90)
    assert tracker.last_seq("BTCUSDT") == 100
    assert tracker.known() == {"BTCUSDT": 100}


def test_a_reconnect_names_the_next_gap_of_each_instrument() -> None:
    tracker = SequenceTracker("binance")
    tracker.observe([trade(1, "A"), trade(1, "B")])
    tracker.resumed(["A", "B", "never seen"], RECONNECT)
    # B continues without a gap: its reconnect reason is spent all the same.
    _, gaps = tracker.observe([trade(2, "B"), trade(5, "A"), trade(9, "B")])
    assert [(g.instrument_name, g.reason) for g in gaps] == [("A", RECONNECT), ("B", LIVE_STREAM)]
    assert tracker.last_seq("never seen") is None


def test_caught_up_means_no_gap_before_a_stream_starting_there() -> None:
    tracker = SequenceTracker("binance", {"A": 10})
    assert tracker.caught_up("A", 11)
    assert tracker.caught_up("A", 5)
    assert not tracker.caught_up("A", 12)
    assert not tracker.caught_up("B", 1)


def test_instruments_are_tracked_independently() -> None:
    tracker = SequenceTracker("binance")
    fresh, gaps = tracker.observe([trade(1, "A"), trade(7, "B"), trade(2, "A"), trade(9, "B")])
    assert len(fresh) == 4
    assert spans(gaps) == [("B", 8, 8)]


instruments = st.sampled_from(["A", "B", "C"])
arrivals = st.lists(st.tuples(instruments, st.integers(min_value=1, max_value=60)), max_size=300)


@given(arrivals, st.lists(st.integers(1, 20), max_size=10))
def test_any_arrival_order_accounts_for_every_sequence(
    arrived: list[tuple[str, int]], batch_sizes: list[int]
) -> None:
    """Whatever the order, duplicates, jumps and batching: per instrument, accepted trades are
    strictly increasing, nothing is both accepted and in a gap, and accepted + gaps cover the
    range from the first accepted trade to the last exactly once."""
    tracker = SequenceTracker("binance")
    trades = [trade(seq, name) for name, seq in arrived]
    fresh: list[Trade] = []
    gaps: list[Gap] = []
    start = 0
    for size in [*batch_sizes, len(trades)]:
        got, found = tracker.observe(trades[start : start + size])
        fresh += got
        gaps += found
        start += size
    assert len(fresh) + tracker.duplicates == len(trades)
    for name in {n for n, _ in arrived}:
        accepted = [t.trade_seq for t in fresh if t.instrument_name == name]
        assert accepted == sorted(set(accepted))
        assert tracker.last_seq(name) == accepted[-1]
        covered = list(accepted)
        for gap in gaps:
            if gap.instrument_name == name:
                assert gap.first_seq <= gap.last_seq
                covered.extend(range(gap.first_seq, gap.last_seq + 1))
        assert sorted(covered) == list(range(accepted[0], accepted[-1] + 1))


@given(st.integers(0, 50), st.integers(1, 80), st.lists(st.integers(0, 120), max_size=20))
def test_a_seeded_tracker_reports_everything_after_the_seed(
    seed: int, count: int, dropped: list[int]
) -> None:
    """A tape with some trades lost: the gaps are exactly the lost trades after the seed."""
    tape = range(seed + 1, seed + 1 + count)
    lost = {seq for seq in dropped if seq in tape and seq != tape[-1]}
    tracker = SequenceTracker("binance", {"A": seed})
    fresh, gaps = tracker.observe([trade(s, "A") for s in tape if s not in lost])
    reported = {s for g in gaps for s in range(g.first_seq, g.last_seq + 1)}
    assert reported == lost
    assert [t.trade_seq for t in fresh] == [s for s in tape if s not in lost]


@given(st.integers(0, 40), st.integers(0, 40))
def test_two_overlapping_streams_of_one_tape_stitch_without_gaps(
    old_stops: int, new_starts: int
) -> None:
    """A rotation: the old connection delivers a prefix of the tape, the replacement a suffix
    that overlaps it; routed in that order they yield the tape once, with no gap."""
    tape = list(range(1, 41))
    old = tape[: max(old_stops, new_starts)]
    new = tape[new_starts:]
    tracker = SequenceTracker("binance", {"A": 0})
    got_old, gaps_old = tracker.observe([trade(s, "A") for s in old])
    assert tracker.caught_up("A", new[0]) if new else True
    got_new, gaps_new = tracker.observe([trade(s, "A") for s in new])
    assert [t.trade_seq for t in got_old + got_new] == tape
    assert gaps_old == gaps_new == []
    assert tracker.duplicates == len(old) + len(new) - len(tape)


@given(
    st.sets(st.integers(0, 100), max_size=100),
    st.integers(0, 100),
    st.integers(0, 100),
)
def test_missing_ranges_are_exactly_the_absent_numbers(
    present: set[int], first: int, last: int
) -> None:
    ranges = missing_ranges(present, first, last)
    missing = [n for a, b in ranges for n in range(a, b + 1)]
    assert missing == [n for n in range(first, last + 1) if n not in present]
    assert all(b + 1 < c for (_, b), (c, _) in itertools.pairwise(ranges))


@given(
    st.integers(0, 60),
    st.integers(0, 60),
    st.lists(st.tuples(st.integers(-5, 70), st.integers(0, 15)), max_size=8),
)
def test_subtract_ranges_leaves_exactly_the_uncovered_numbers(
    first: int, last: int, covers: list[tuple[int, int]]
) -> None:
    covered = [(low, low + length) for low, length in covers]
    ranges = subtract_ranges(first, last, covered)
    remaining = [n for a, b in ranges for n in range(a, b + 1)]
    inside = {n for low, high in covered for n in range(low, high + 1)}
    assert remaining == [n for n in range(first, last + 1) if n not in inside]
    assert all(a <= b for a, b in ranges)
    assert all(b + 1 < c for (_, b), (c, _) in itertools.pairwise(ranges))


# Runs of consecutive trades (how a live stream arrives), overlapping and jumping.
runs = st.lists(
    st.tuples(instruments, st.integers(min_value=1, max_value=60), st.integers(1, 12)),
    max_size=40,
)


@given(runs, st.lists(st.integers(1, 30), max_size=10))
def test_a_batch_is_planned_as_its_trades_one_by_one(
    arrived: list[tuple[str, int, int]], batch_sizes: list[int]
) -> None:
    trades = [
        trade(seq, name, received_us=index)
        for index, (name, first, count) in enumerate(arrived)
        for seq in range(first, first + count)
    ]
    batched, single = SequenceTracker("binance", {"A": 5}), SequenceTracker("binance", {"A": 5})
    for tracker in (batched, single):
        tracker.resumed(["A"], RECONNECT)
    fresh: list[Trade] = []
    gaps: list[Gap] = []
    start = 0
    for size in [*batch_sizes, len(trades)]:
        got, found = batched.observe(trades[start : start + size])
        fresh += got
        gaps += found
        start += size
    fresh_one_by_one: list[Trade] = []
    gaps_one_by_one: list[Gap] = []
    for one in trades:
        got, found = single.observe([one])
        fresh_one_by_one += got
        gaps_one_by_one += found
    assert fresh == fresh_one_by_one
    assert gaps == gaps_one_by_one
    assert (batched.known(), batched.duplicates) == (single.known(), single.duplicates)
