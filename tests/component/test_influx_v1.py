"""``InfluxV1Store`` against a real ``influxd`` (1.6 from Debian) on free loopback ports.

One server serves the module, each test its own database; the outage tests
start their own server so that stopping it disturbs no one else.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from cloud.storage.base import CountBucket, CountQuery, EventQuery, IngestBatch, Origin, SensorQuery
from cloud.storage.influx import WRITE_CHUNK, InfluxV1Store
from shared.errors import ConfigError, SchemaError, TransportError
from shared.schemas import CountRecord, DetectionEvent, Health, SensorReading, StreamHealth
from tests.component.influxd import InfluxServer

pytestmark = pytest.mark.timeout(15)

T0 = datetime(2024, 5, 1, 8, 0, tzinfo=UTC)
DAY = CountQuery(T0 - timedelta(hours=12), T0 + timedelta(hours=12))
EVENTS = EventQuery(DAY.start, DAY.end)


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
        "outbox_backlog": 3,
    }
    return Health(**{**values, **kw})


def batch(seq: int, device: str = "pole-1", site: str = "main-st", **records: Any) -> IngestBatch:
    return IngestBatch(Origin(device, site, seq), **records)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[InfluxServer]:
    with InfluxServer(tmp_path_factory.mktemp("influx")) as s:
        yield s


@pytest.fixture
def store(server: InfluxServer) -> Iterator[InfluxV1Store]:
    s = InfluxV1Store(server.url, f"roadside_{uuid.uuid4().hex[:12]}", timeout_s=5)
    yield s
    s.close()


def test_everything_written_reads_back(store: InfluxV1Store) -> None:
    e = event(0.123456)
    reading = SensorReading(ts=T0, sensor="aq1", quantity="pm25", value=12.5, unit="µg/m³")
    store.write([batch(7, counts=[count(n=4, lane=1)], events=[e], sensors=[reading], health=health())])
    assert store.count_buckets(DAY) == [CountBucket(T0, "pole-1", "main-st", "north", "car", "in", 4)]
    (stored,) = store.events(EVENTS)
    assert (stored.device_id, stored.site, stored.event) == ("pole-1", "main-st", e)
    assert stored.event.ts.tzinfo is UTC
    (series,) = store.sensor_series(SensorQuery(DAY.start, DAY.end))
    assert series.reading == reading
    assert store.latest_health("pole-1") == health()
    assert store.recent_sequences("pole-1", 100) == [7]
    store.ping()


def test_the_same_batch_twice_is_stored_once(store: InfluxV1Store) -> None:
    b = batch(1, counts=[count(n=3), count(1, n=2)], events=[event(), event()], health=health())
    store.write([b])
    store.write([b, b])
    assert [x.count for x in store.count_buckets(DAY)] == [5]
    assert len(store.events(EVENTS)) == 2
    assert store.recent_sequences("pole-1", 10) == [1]


def test_bucket_sums_across_devices_envelopes_lanes_and_models(store: InfluxV1Store) -> None:
    store.write(
        [
            # One interval reported in two envelopes: both parts count.
            batch(1, counts=[count(0, 2, lane=1), count(0, 3, lane=2), count(59, 4)]),
            batch(
                2, counts=[count(0, 10), count(61, 5, model_version="det-1.1"), count(0, 1, direction="out")]
            ),
            batch(1, device="pole-2", site="elm-st", counts=[count(5, 7), count(30, 1, cls="truck")]),
        ]
    )
    assert store.count_buckets(DAY) == [
        CountBucket(T0, "pole-1", "main-st", "north", "car", "in", 19),
        CountBucket(T0, "pole-1", "main-st", "north", "car", "out", 1),
        CountBucket(T0, "pole-2", "elm-st", "north", "car", "in", 7),
        CountBucket(T0, "pole-2", "elm-st", "north", "truck", "in", 1),
        CountBucket(T0 + timedelta(hours=1), "pole-1", "main-st", "north", "car", "in", 5),
    ]
    assert [b.count for b in store.count_buckets(CountQuery(DAY.start, DAY.end, device_id="pole-2"))] == [
        7,
        1,
    ]
    assert [b.count for b in store.count_buckets(CountQuery(DAY.start, DAY.end, cls="truck"))] == [1]
    quarter = CountQuery(T0, T0 + timedelta(minutes=30), bucket_s=900, site="main-st")
    assert [(b.bucket_start, b.count) for b in store.count_buckets(quarter)] == [
        (T0, 15),
        (T0, 1),
    ]


def test_events_oldest_first_with_limit_filter_and_same_instant_kept(store: InfluxV1Store) -> None:
    same_a, same_b, same_c = event(1), event(1), event(1)  # one frame's crossings, sent in two envelopes
    later, earlier = (
        event(5),
        event(
            0.5,
            type="wrong_way",
            cls=None,
            line=None,
            direction=None,
            track_id=None,
            confidence=None,
            speed_kmh=None,
        ),
    )
    store.write(
        [
            batch(1, events=[same_a, same_b, later]),
            batch(2, device="pole-2", events=[earlier]),
            batch(3, events=[same_c]),
        ]
    )
    assert [s.event for s in store.events(EVENTS)] == [earlier, same_a, same_b, same_c, later]
    # A limit that falls between points of one instant cuts them as InfluxDB likes; 3 falls after them.
    assert [s.event for s in store.events(EventQuery(DAY.start, DAY.end, limit=3))] == [
        earlier,
        same_a,
        same_b,
    ]
    assert [s.event for s in store.events(EventQuery(DAY.start, DAY.end, limit=1))] == [earlier]
    assert [s.event for s in store.events(EventQuery(DAY.start, DAY.end, type="wrong_way"))] == [earlier]
    assert len(store.events(EventQuery(DAY.start, DAY.end, device_id="pole-1"))) == 4
    assert store.events(EventQuery(DAY.start, DAY.end, limit=0)) == []


def test_awkward_names_survive_escaping_and_quoting(store: InfluxV1Store) -> None:
    device, site = r"pole 7,a=b\x", 'O\'Neil "st" \\ end.'
    store.write([batch(1, device=device, site=site, counts=[count(n=2)], health=health())])
    (bucket,) = store.count_buckets(CountQuery(DAY.start, DAY.end, device_id=device, site=site))
    assert (bucket.device_id, bucket.site, bucket.count) == (device, site, 2)
    assert store.latest_health(device) == health()
    assert store.recent_sequences(device, 5) == [1]


def test_latest_health_and_recent_sequences(store: InfluxV1Store) -> None:
    assert store.latest_health("pole-1") is None
    assert store.recent_sequences("pole-1", 10) == []
    newest = health(60, model_version="det-1.1", provider="CUDAExecutionProvider")
    store.write([batch(1, health=health(0)), batch(5, health=newest), batch(2, health=health(30))])
    store.write([batch(8, counts=[count()]), batch(9, device="pole-2", health=health(90))])
    assert store.latest_health("pole-1") == newest
    assert store.recent_sequences("pole-1", 7) == [2, 5, 8]
    assert store.recent_sequences("pole-1", 0) == []


def test_a_large_write_goes_in_chunks(store: InfluxV1Store) -> None:
    envelopes = WRITE_CHUNK // 10 + 50
    store.write([batch(seq, counts=[count(m, 1) for m in range(10)]) for seq in range(envelopes)])
    assert sum(b.count for b in store.count_buckets(DAY)) == envelopes * 10
    assert len(store.recent_sequences("pole-1", 10**6)) == envelopes


def test_a_field_type_conflict_is_a_clear_schema_error(server: InfluxServer, store: InfluxV1Store) -> None:
    # Someone else's float "count" in the same shard (1.x fixes field types per shard, a week here).
    line = f"counts,device=x count=1.5 {int(T0.timestamp()) * 10**9}".encode()
    foreign = httpx.post(f"{server.url}/write", params={"db": store._database}, content=line)
    assert foreign.status_code == 204
    with pytest.raises(SchemaError, match="field type conflict"):
        store.write([batch(1, counts=[count()])])


def test_a_missing_retention_policy_is_a_config_error(server: InfluxServer) -> None:
    s = InfluxV1Store(server.url, f"roadside_{uuid.uuid4().hex[:12]}", retention_policy="nope")
    try:
        with pytest.raises(ConfigError, match="retention policy not found"):
            s.write([batch(1, counts=[count()])])
    finally:
        s.close()


def test_stopped_server_is_a_transport_error_then_writes_resume(tmp_path: Path) -> None:
    with InfluxServer(tmp_path) as own:
        s = InfluxV1Store(own.url, "roadside", timeout_s=2)
        try:
            s.write([batch(1, counts=[count(n=1)])])
            own.stop()
            started = time.monotonic()
            with pytest.raises(TransportError, match=r"127\.0\.0\.1"):
                s.write([batch(2, counts=[count(n=2)])])
            with pytest.raises(TransportError):
                s.ping()
            with pytest.raises(TransportError):
                s.count_buckets(DAY)
            assert time.monotonic() - started < 3
            own.start()
            s.write([batch(2, counts=[count(n=2)])])
            assert [b.count for b in s.count_buckets(DAY)] == [3]
        finally:
            s.close()


def test_a_store_made_while_influxdb_is_down_creates_the_database_later(tmp_path: Path) -> None:
    with InfluxServer(tmp_path) as own:
        own.stop()
        s = InfluxV1Store(own.url, "late", timeout_s=2)
        try:
            own.start()
            s.write([batch(1, counts=[count(n=4)])])
            assert [b.count for b in s.count_buckets(DAY)] == [4]
        finally:
            s.close()


def test_a_dropped_database_is_created_again(server: InfluxServer, store: InfluxV1Store) -> None:
    store.write([batch(1, counts=[count()])])
    dropped = httpx.post(f"{server.url}/query", data={"q": f'DROP DATABASE "{store._database}"'})
    assert dropped.status_code == 200
    store.write([batch(2, counts=[count(n=2)])])
    assert [b.count for b in store.count_buckets(DAY)] == [2]
