"""What only ``SqliteStore`` does, on real SQLite files: durability across reopen, one
transaction per write, threads, ``:memory:``, and its errors. What every store does is in
``test_store_contract.py``."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path

import pytest

from roadside.cloud.storage.base import CountQuery
from roadside.cloud.storage.sqlite import SqliteStore
from roadside.shared.errors import ConfigError, TransportError
from tests.component.stores import T0, batch, count, event, health

pytestmark = pytest.mark.timeout(15)

DAY = CountQuery(T0 - timedelta(hours=12), T0 + timedelta(hours=12))


@pytest.fixture
def store(tmp_path: Path) -> Iterator[SqliteStore]:
    s = SqliteStore(tmp_path / "telemetry.db")
    yield s
    s.close()


def test_data_survives_close_and_reopen(tmp_path: Path) -> None:
    path = tmp_path / "nested" / "telemetry.db"
    first = SqliteStore(path)
    first.write([batch(1, counts=[count(n=6)], events=[event()], health=health())])
    first.close()
    second = SqliteStore(path)
    try:
        assert [b.count for b in second.count_buckets(DAY)] == [6]
        assert second.latest_health("pole-1") == health()
        assert second.recent_sequences("pole-1", 10) == [1]
        second.write([batch(1, counts=[count(n=6)])])
        assert [b.count for b in second.count_buckets(DAY)] == [6]
    finally:
        second.close()


def test_a_failed_write_stores_nothing_of_the_call(store: SqliteStore) -> None:
    # model_copy skips validation: a record the schema would have refused, to fail the second envelope.
    naive = count().model_copy(update={"interval_start": datetime(2024, 5, 1)})
    with pytest.raises(ValueError, match="time zone"):
        store.write([batch(1, counts=[count(n=1)]), batch(2, counts=[naive])])
    assert store.count_buckets(DAY) == []
    assert store.recent_sequences("pole-1", 10) == []


def test_concurrent_writers_from_two_threads(store: SqliteStore) -> None:
    errors: list[BaseException] = []

    def writer(device: str) -> None:
        try:
            for seq in range(40):
                store.write([batch(seq, device=device, counts=[count(n=1)])])
        except BaseException as exc:  # handed to the main thread, which fails on it
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(d,), name=f"writer-{d}") for d in ("a", "b")]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert not errors
    assert {b.device_id: b.count for b in store.count_buckets(DAY)} == {"a": 40, "b": 40}


def test_in_memory_store_for_tests() -> None:
    s = SqliteStore(":memory:")
    s.write([batch(1, counts=[count(n=2)])])
    assert [b.count for b in s.count_buckets(DAY)] == [2]
    s.ping()
    s.close()


def test_a_closed_store_raises_transport_error(store: SqliteStore) -> None:
    store.close()
    store.close()
    with pytest.raises(TransportError):
        store.ping()


def test_an_unopenable_path_is_a_config_error(tmp_path: Path) -> None:
    not_a_db = tmp_path / "junk.db"
    not_a_db.write_bytes(b"this is not a database file, not at all" * 100)
    with pytest.raises(ConfigError, match=r"junk\.db"):
        SqliteStore(not_a_db)
