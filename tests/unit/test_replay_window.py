"""The replay window: what it accepts and refuses, and that its memory stays bounded (issue 14).

A set of accepted numbers, pruned only past twice the window, grew a hub's
memory by every message of every device for weeks (``bench.soak``). The window
is now a bitmap: these tests hold it to the old rules and to its size.
"""

from __future__ import annotations

import time

import pytest
from hypothesis import given
from hypothesis import strategies as st

from roadside.shared.envelope import REPLAY_WINDOW_SIZE, ReplayWindow
from roadside.shared.errors import ReplayError
from roadside.shared.limits import MAX_WIRE_INT

EPOCH_SEQ = int(time.time() * 1000) << 20  # agents number messages from the clock (edge.outbox)


def test_a_number_is_accepted_once() -> None:
    window = ReplayWindow()
    window.check(EPOCH_SEQ)
    window.commit(EPOCH_SEQ)
    with pytest.raises(ReplayError, match="already accepted"):
        window.check(EPOCH_SEQ)


def test_late_numbers_inside_the_window_are_accepted_once() -> None:
    window = ReplayWindow(size=10)
    window.commit(100)
    window.check(95)  # never seen: a late redelivery is fine
    window.commit(95)
    with pytest.raises(ReplayError, match="already accepted"):
        window.check(95)
    with pytest.raises(ReplayError, match="older than the replay window"):
        window.check(90)


def test_a_jump_past_the_window_forgets_what_was_behind() -> None:
    window = ReplayWindow(size=10)
    window.commit(5)
    window.commit(100)
    window.check(95)
    with pytest.raises(ReplayError):
        window.check(5)
    assert len(window) == 1


@given(st.lists(st.integers(min_value=0, max_value=200), max_size=300), st.sampled_from([1, 7, 16, 21]))
def test_it_agrees_with_the_set_it_replaced(seqs: list[int], size: int) -> None:
    window, seen, highest = ReplayWindow(size=size), set[int](), -1
    for seq in seqs:
        old_refuses = seq in seen or (highest >= 0 and seq <= highest - size)
        try:
            window.check(seq)
            refused = False
        except ReplayError:
            refused = True
        assert refused == old_refuses, seq
        if not refused:
            window.commit(seq)
            seen.add(seq)
            highest = max(highest, seq)


def test_memory_stays_within_the_window_however_long_a_device_sends() -> None:
    window = ReplayWindow()
    for i in range(4 * REPLAY_WINDOW_SIZE):
        window.commit(EPOCH_SEQ + i)
    assert len(window) == REPLAY_WINDOW_SIZE
    # 8 KiB of bits; the set it replaced held 9 MB here.
    assert window.nbytes == REPLAY_WINDOW_SIZE // 8


def test_a_window_too_wide_for_a_ring_keeps_every_number() -> None:
    """A redrive remembers every number the store holds (``size=MAX_WIRE_INT``): no ring of
    2**53 bits is allocated, and a number far behind the newest is still told apart."""
    window = ReplayWindow(size=MAX_WIRE_INT)
    assert window.nbytes == 0
    window.commit(EPOCH_SEQ)
    window.commit(5)
    window.check(6)  # never accepted, however old
    with pytest.raises(ReplayError, match="already accepted"):
        window.check(5)
    assert len(window) == 2
