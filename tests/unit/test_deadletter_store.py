"""The dead-letter store's bounds: a global cap, and one device's share of it."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from roadside.cloud.ingest.deadletter import DeadLetterStore


def _fill(store: DeadLetterStore, device: str | None, n: int, reason: str = "bad_signature") -> None:
    for i in range(n):
        store.add("roadside/v1/site/dev/counts", device, reason, f"letter {i}", b"x" * 10)


def test_a_device_flooding_refusals_evicts_only_its_own_letters(tmp_path: Path) -> None:
    store = DeadLetterStore(tmp_path / "dl.db", max_rows=100, max_rows_per_device=10)
    _fill(store, "good-1", 3)
    _fill(store, "good-2", 4)
    _fill(store, "flooder", 500)
    assert store.count() == 3 + 4 + 10
    assert len(store.recent(100, device_id="good-1")) == 3
    assert len(store.recent(100, device_id="good-2")) == 4
    kept = store.recent(100, device_id="flooder")
    assert [letter.detail for letter in kept] == [f"letter {i}" for i in range(499, 489, -1)]  # the newest
    assert store.evicted == 490


def test_unattributed_letters_share_one_bucket(tmp_path: Path) -> None:
    store = DeadLetterStore(tmp_path / "dl.db", max_rows=100, max_rows_per_device=5)
    _fill(store, "dev", 2)
    _fill(store, None, 20, reason="malformed")
    assert store.count(reason="malformed") == 5
    assert store.count() == 7
    assert store.evicted == 15


def test_the_global_cap_still_holds_and_the_default_share_is_a_tenth(tmp_path: Path) -> None:
    store = DeadLetterStore(tmp_path / "dl.db", max_rows=50)
    for device in range(12):
        _fill(store, f"dev-{device}", 5)  # each under its share of 5
    assert store.count() == 50
    assert store.evicted == 10
    _fill(store, "dev-0", 9)
    assert len(store.recent(100, device_id="dev-0")) == 5


def test_evictions_are_logged_at_most_once_a_minute(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    store = DeadLetterStore(tmp_path / "dl.db", max_rows=100, max_rows_per_device=2)
    with caplog.at_level(logging.WARNING, logger="roadside.cloud.ingest.deadletter"):
        _fill(store, "flooder", 200)
    warnings = [r for r in caplog.records if "evicted" in r.getMessage()]
    assert len(warnings) == 1
    assert "flooder is at its share of 2" in warnings[0].getMessage()
    assert store.evicted == 198


def test_a_hostile_device_id_cannot_break_the_log_line(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    store = DeadLetterStore(tmp_path / "dl.db", max_rows=100, max_rows_per_device=1)
    with caplog.at_level(logging.WARNING, logger="roadside.cloud.ingest.deadletter"):
        _fill(store, "evil\n\x1b[31mdevice", 3)
    assert all("\n" not in r.getMessage() for r in caplog.records)
    assert store.count() == 1
