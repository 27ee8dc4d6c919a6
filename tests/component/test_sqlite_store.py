"""``SqliteStore`` against real SQLite files: idempotency, queries, durability, threads."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from cloud.storage.base import CountBucket, CountQuery, EventQuery, IngestBatch, Origin, SensorQuery
from cloud.storage.sqlite import SqliteStore
from shared.errors import ConfigError, TransportError
from shared.schemas import CountRecord, DetectionEvent, Health, SensorReading, StreamHealth

pytestmark = pytest.mark.timeout(15)

T0 = datetime(2024, 5, 1, 8, 0, tzinfo=UTC)
DAY = CountQuery(T0 - timedelta(hours=12), T0 + timedelta(hours=12))


def count(minute: int = 0, n: int = 1, **kw: Any) -> CountRecord:
    values = {
        "interval_start": T0 + timedelta(minutes=minute),
        "interval_s": 60,
        "line": "north",
        "cls": "car",
        "direction": "in",
        "count": n,
        "model_version": "det-1.0",
    }
    return CountRecord(**{**values, **kw})


def event(second: float = 0, **kw: Any) -> DetectionEvent:
    values = {
        "event_id": uuid.uuid4(),
        "ts": T0 + timedelta(seconds=second),
        "type": "line_crossing",
        "stream": "cam0",
        "cls": "car",
        "line": "north",
        "direction": "in",
        "track_id": 4,
        "confidence": 0.75,
        "speed_kmh": 42.5,
        "model_version": "det-1.0",
    }
    return DetectionEvent(**{**values, **kw})


def health(second: float = 0, **kw: Any) -> Health:
    values = {
        "ts": T0 + timedelta(seconds=second),
        "uptime_s": 100.0 + second,
        "model_version": "det-1.0",
        "provider": "CPUExecutionProvider",
        "streams": {"cam0": StreamHealth(fps=9.5, dropped_frames=2)},
        "inference_p50_ms": 8.0,
        "outbox_backlog": 0,
    }
    return Health(**{**values, **kw})


def batch(seq: int, device: str = "pole-1", site: str = "main-st", **records: Any) -> IngestBatch:
    return IngestBatch(Origin(device, site, seq), **records)


@pytest.fixture
def store(tmp_path: Path) -> Iterator[SqliteStore]:
    s = SqliteStore(tmp_path / "telemetry.db")
    yield s
    s.close()


def test_the_same_batch_twice_is_stored_once(store: SqliteStore) -> None:
    b = batch(
        1,
        counts=[count(n=3)],
        events=[event()],
        sensors=[SensorReading(ts=T0, sensor="aq1", quantity="pm25", value=12.5, unit="µg/m³")],
    )
    store.write([b])
    store.write([b, b])
    assert [x.count for x in store.count_buckets(DAY)] == [3]
    assert len(store.events(EventQuery(DAY.start, DAY.end))) == 1
    assert len(store.sensor_series(SensorQuery(DAY.start, DAY.end))) == 1
    assert store.recent_sequences("pole-1", 10) == [1]


def test_counts_are_summed_per_bucket_across_envelopes_lanes_and_models(store: SqliteStore) -> None:
    store.write(
        [
            batch(1, counts=[count(0, 2, lane=1), count(0, 3, lane=2), count(59, 4)]),
            batch(2, counts=[count(61, 5, model_version="det-1.1"), count(0, 1, direction="out")]),
            batch(3, device="pole-2", counts=[count(5, 7)]),
        ]
    )
    assert store.count_buckets(DAY) == [
        CountBucket(T0, "pole-1", "main-st", "north", "car", "in", 9),
        CountBucket(T0, "pole-1", "main-st", "north", "car", "out", 1),
        CountBucket(T0, "pole-2", "main-st", "north", "car", "in", 7),
        CountBucket(T0 + timedelta(hours=1), "pole-1", "main-st", "north", "car", "in", 5),
    ]


def test_buckets_are_epoch_aligned_and_the_window_is_half_open(store: SqliteStore) -> None:
    store.write([batch(1, counts=[count(m, 1) for m in (-1, 0, 14, 15, 29, 30)])])
    window = CountQuery(T0, T0 + timedelta(minutes=30), bucket_s=900)
    assert [(b.bucket_start, b.count) for b in store.count_buckets(window)] == [
        (T0, 2),
        (T0 + timedelta(minutes=15), 2),
    ]
    assert all(b.bucket_start.tzinfo is UTC for b in store.count_buckets(window))


def test_count_filters(store: SqliteStore) -> None:
    store.write(
        [
            batch(
                1,
                counts=[
                    count(n=1),
                    count(n=2, cls="truck"),
                    count(n=4, line="south"),
                    count(n=8, direction="out"),
                ],
            ),
            batch(1, device="pole-2", site="elm-st", counts=[count(n=16)]),
        ]
    )

    def total(**filters: Any) -> int:
        return sum(b.count for b in store.count_buckets(CountQuery(DAY.start, DAY.end, **filters)))

    assert total() == 31
    assert total(device_id="pole-2") == 16
    assert total(site="main-st") == 15
    assert total(cls="truck") == 2
    assert total(line="south") == 4
    assert total(direction="out") == 8
    assert total(device_id="pole-1", cls="car", direction="in", line="north") == 1


def test_events_come_back_oldest_first_limited_and_filtered(store: SqliteStore) -> None:
    e = [event(s) for s in (3, 1, 2)]
    wrong_way = event(
        1.5,
        type="wrong_way",
        cls=None,
        line=None,
        direction=None,
        track_id=None,
        confidence=None,
        speed_kmh=None,
    )
    store.write([batch(1, events=[e[0], e[1]]), batch(2, device="pole-2", events=[e[2], wrong_way])])
    window = EventQuery(DAY.start, DAY.end)
    assert [s.event for s in store.events(window)] == [e[1], wrong_way, e[2], e[0]]
    limited = EventQuery(DAY.start, DAY.end, limit=2)
    assert [s.event for s in store.events(limited)] == [e[1], wrong_way]
    by_type = store.events(EventQuery(DAY.start, DAY.end, type="wrong_way"))
    assert [(s.device_id, s.site, s.event) for s in by_type] == [("pole-2", "main-st", wrong_way)]
    assert [s.event for s in store.events(EventQuery(DAY.start, DAY.end, device_id="pole-1"))] == [e[1], e[0]]
    assert store.events(EventQuery(DAY.start, DAY.end, limit=0)) == []


def test_event_times_keep_their_microseconds(store: SqliteStore) -> None:
    e = event(0.123456)
    store.write([batch(1, events=[e])])
    (stored,) = store.events(EventQuery(DAY.start, DAY.end))
    assert stored.event.ts == e.ts
    assert stored.event.ts.tzinfo is UTC


def test_sensor_series(store: SqliteStore) -> None:
    readings = [
        SensorReading(
            ts=T0 + timedelta(seconds=s),
            sensor="aq1",
            quantity=q,
            value=v,
            unit="µg/m³",
            quality="spike" if v > 100 else "ok",
        )
        for s, q, v in ((2, "pm25", 11.0), (1, "pm25", 150.0), (1, "no2", 20.0))
    ]
    store.write([batch(1, sensors=readings)])
    series = store.sensor_series(SensorQuery(DAY.start, DAY.end, quantity="pm25"))
    assert [s.reading for s in series] == [readings[1], readings[0]]


def test_latest_health_is_the_newest_report(store: SqliteStore) -> None:
    assert store.latest_health("pole-1") is None
    newest = health(60, model_version="det-1.1")
    store.write([batch(1, health=health(0)), batch(3, health=newest), batch(2, health=health(30))])
    store.write([batch(4, device="pole-2", health=health(90))])
    assert store.latest_health("pole-1") == newest


def test_recent_sequences_are_within_the_window_of_the_highest(store: SqliteStore) -> None:
    store.write([batch(s) for s in (1, 2, 5, 7, 8, 10)] + [batch(50, device="pole-2")])
    assert store.recent_sequences("pole-1", 5) == [7, 8, 10]
    assert store.recent_sequences("pole-1", 100) == [1, 2, 5, 7, 8, 10]
    assert store.recent_sequences("pole-1", 0) == []
    assert store.recent_sequences("nobody", 5) == []


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


def test_bucket_width_must_be_positive(store: SqliteStore) -> None:
    with pytest.raises(ValueError, match="bucket_s"):
        store.count_buckets(CountQuery(DAY.start, DAY.end, bucket_s=0))
