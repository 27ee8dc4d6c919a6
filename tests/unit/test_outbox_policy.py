"""The outbox drop rule (``roadside.edge.outbox.policy``), without a disk."""

from __future__ import annotations

import random

from hypothesis import given
from hypothesis import strategies as st

from roadside.edge.outbox import Priority
from roadside.edge.outbox.policy import QueuedMessage, bytes_to_free, choose_drops, drop_order

BUDGET = 10_000


@st.composite
def queues(draw: st.DrawFn) -> list[QueuedMessage]:
    """Messages with distinct sequence numbers, any priority and size, in any order."""
    seqs = draw(st.lists(st.integers(1, 10**6), unique=True, max_size=40))
    priorities = st.sampled_from([int(p) for p in Priority])
    return [QueuedMessage(seq, draw(priorities), draw(st.integers(1, 2_000))) for seq in seqs]


@st.composite
def full_outboxes(draw: st.DrawFn) -> tuple[list[QueuedMessage], int]:
    """A queue and an incoming size, as ``Outbox.put`` calls the rule: incoming fits the budget."""
    queued = draw(queues())
    return queued, draw(st.integers(1, BUDGET))


def _used(queued: list[QueuedMessage]) -> int:
    return sum(m.size for m in queued)


@given(full_outboxes())
def test_frees_enough_and_no_more_than_needed(case: tuple[list[QueuedMessage], int]) -> None:
    queued, incoming = case
    need = bytes_to_free(_used(queued), incoming, BUDGET)
    drops = choose_drops(queued, _used(queued), incoming, BUDGET)
    freed = sum(m.size for m in drops)
    assert freed >= need or len(drops) == len(queued)
    assert _used(queued) - freed + incoming <= BUDGET  # incoming <= BUDGET, as put checks
    if drops:
        assert freed - drops[-1].size < need  # without the last one it would not fit


@given(full_outboxes())
def test_never_drops_a_higher_priority_while_a_lower_one_remains(
    case: tuple[list[QueuedMessage], int],
) -> None:
    queued, incoming = case
    drops = choose_drops(queued, _used(queued), incoming, BUDGET)
    kept = [m for m in queued if m not in drops]
    for dropped in drops:
        assert all(k.priority >= dropped.priority for k in kept)


@given(full_outboxes())
def test_oldest_first_within_a_priority(case: tuple[list[QueuedMessage], int]) -> None:
    queued, incoming = case
    drops = choose_drops(queued, _used(queued), incoming, BUDGET)
    kept = [m for m in queued if m not in drops]
    for dropped in drops:
        assert all(k.seq > dropped.seq for k in kept if k.priority == dropped.priority)
    assert drops == sorted(drops, key=drop_order)


@given(full_outboxes(), st.randoms(use_true_random=False))
def test_the_order_messages_are_given_in_does_not_matter(
    case: tuple[list[QueuedMessage], int], rng: random.Random
) -> None:
    queued, incoming = case
    shuffled = list(queued)
    rng.shuffle(shuffled)
    assert choose_drops(shuffled, _used(queued), incoming, BUDGET) == choose_drops(
        queued, _used(queued), incoming, BUDGET
    )


@given(queues(), st.integers(0, BUDGET))
def test_nothing_goes_while_the_new_message_fits(queued: list[QueuedMessage], room: int) -> None:
    assert choose_drops(queued, BUDGET - room, room, BUDGET) == []


def test_samples_then_health_go_before_counts_and_events() -> None:
    k = 1024
    queued = [
        QueuedMessage(1, Priority.EVENTS, 200 * k),
        QueuedMessage(2, Priority.HEALTH, 200 * k),
        QueuedMessage(3, Priority.COUNTS, 200 * k),
        QueuedMessage(4, Priority.HEALTH, 200 * k),
        QueuedMessage(5, Priority.SAMPLES, 100 * k),
    ]
    drops = choose_drops(queued, 900 * k, 500 * k, 1024 * k)  # 376 KiB to free
    assert [m.seq for m in drops] == [5, 2, 4]


def test_too_little_to_drop_gives_everything_there_is() -> None:
    queued = [QueuedMessage(1, Priority.OTA, 10), QueuedMessage(2, Priority.EVENTS, 10)]
    assert [m.seq for m in choose_drops(queued, 20, 100, 50)] == [2, 1]


def test_bytes_to_free() -> None:
    assert bytes_to_free(used=90, incoming=10, budget=100) == 0
    assert bytes_to_free(used=90, incoming=11, budget=100) == 1
    assert bytes_to_free(used=0, incoming=0, budget=0) == 0
