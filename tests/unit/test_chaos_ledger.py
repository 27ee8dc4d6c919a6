"""The chaos ledger's books (bench.chaos.ledger): pure bookkeeping, no servers."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bench.chaos.ledger import Ledger, RecordId


def made(ledger: Ledger, device: str, messages: dict[int, int]) -> None:
    for seq, records in messages.items():
        ledger.created(device, seq, records)


def store_all(ledger: Ledger, device: str, messages: dict[int, int]) -> None:
    for seq, records in messages.items():
        for idx in range(records):
            ledger.stored(RecordId(device, seq, idx))


def test_every_record_stored_once_balances() -> None:
    ledger = Ledger()
    made(ledger, "d1", {1: 3, 2: 1, 3: 0})
    store_all(ledger, "d1", {1: 3, 2: 1})
    books = ledger.books()
    assert (books.created, books.stored, books.lost, books.duplicated) == (4, 4, 0, 0)
    assert books.balanced


def test_a_missing_record_is_lost_and_named() -> None:
    ledger = Ledger()
    made(ledger, "d1", {1: 2})
    ledger.stored(RecordId("d1", 1, 0))
    books = ledger.books()
    assert books.lost == 1
    assert books.lost_sample == (RecordId("d1", 1, 1),)
    assert not books.balanced
    assert "  lost: d1 seq 1 idx 1" in books.lines()


def test_a_row_found_twice_is_duplicated() -> None:
    ledger = Ledger()
    made(ledger, "d1", {5: 1})
    ledger.stored(RecordId("d1", 5, 0))
    ledger.stored(RecordId("d1", 5, 0))
    books = ledger.books()
    assert (books.stored, books.duplicated, books.lost) == (1, 1, 0)
    assert books.duplicated_sample == (RecordId("d1", 5, 0),)
    assert not books.balanced


def test_stored_but_never_created_is_unexplained() -> None:
    ledger = Ledger()
    ledger.stored(RecordId("d9", 1, 0))
    books = ledger.books()
    assert books.unexplained == 1
    assert not books.balanced


def test_a_rejected_message_is_accounted_by_reason_not_lost() -> None:
    ledger = Ledger()
    made(ledger, "d1", {1: 2, 2: 2})
    store_all(ledger, "d1", {1: 2})
    ledger.rejected("d1", 2, "clock")
    books = ledger.books()
    assert books.rejected == {"clock": 2}
    assert books.lost == 0
    assert books.balanced


def test_a_refused_redelivery_of_a_stored_message_is_listed_and_costs_nothing() -> None:
    ledger = Ledger()
    made(ledger, "d1", {1: 1})
    store_all(ledger, "d1", {1: 1})
    ledger.rejected("d1", 1, "replay")
    books = ledger.books()
    assert books.rejected == {"replay (a copy; the original stored)": 1}
    assert books.balanced


def test_dropped_by_the_disk_budget_is_not_lost() -> None:
    ledger = Ledger()
    made(ledger, "d1", {1: 3, 2: 3})
    store_all(ledger, "d1", {2: 3})
    ledger.dropped("d1", 1)
    books = ledger.books()
    assert (books.dropped, books.lost) == (3, 0)
    assert books.balanced


def test_negative_record_counts_are_refused() -> None:
    with pytest.raises(ValueError, match="negative"):
        Ledger().created("d1", 1, -1)


messages = st.dictionaries(st.integers(1, 40), st.integers(0, 4), max_size=25)


@given(messages, st.sets(st.integers(1, 40)), st.sets(st.integers(1, 40)), st.sets(st.integers(1, 40)))
def test_created_is_always_stored_plus_accounted_plus_lost(
    created: dict[int, int], stored: set[int], rejected: set[int], dropped: set[int]
) -> None:
    ledger = Ledger()
    made(ledger, "d", created)
    store_all(ledger, "d", {s: n for s, n in created.items() if s in stored})
    for seq in rejected:
        ledger.rejected("d", seq, "schema")
    for seq in dropped:
        ledger.dropped("d", seq)
    books = ledger.books()
    fresh_rejections = sum(n for r, n in books.rejected.items() if "copy" not in r)
    assert books.created == books.stored + books.dropped + fresh_rejections + books.lost
    assert books.duplicated == 0
    assert books.unexplained == 0
