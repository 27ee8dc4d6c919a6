"""The ``TimeSeriesStore`` contract: what every store does, run against each real store.

One suite, parametrized over ``tests.component.stores.STORE_KINDS``: the embedded SQLite
store on a file, ``InfluxV1Store`` on a real ``influxd`` 1.x (one server for the process, a
database per test), and ``InfluxV2Store`` where a 2.x server is named (skipped here: see
``tests/component/stores.py``). What only one store does (SQLite's transactions and file
handling, InfluxDB's chunking, field types and outages) is tested in that store's own module.

A new store joins by adding its kind to ``STORE_KINDS`` and ``open_store``.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, timedelta
from pathlib import Path
from typing import Any

import pytest

from roadside.cloud.storage.base import (
    ALL_DEVICES,
    CountBucket,
    CountQuery,
    EventQuery,
    HealthQuery,
    LatestSensorQuery,
    SensorQuery,
    SpeedQuery,
    SupportsHealthHistory,
    TimeSeriesStore,
    event_key,
    events_page,
    latest_health_many,
    latest_sensor_readings,
    speed_statistics,
)
from roadside.cloud.storage.signals import ControllerEvent, DetectorQuery, IntervalQuery, SupportsSignals
from roadside.shared.schemas import DetectorChange, DetectorState, SensorReading, TurningMovement, ZoneStat
from tests.component.stores import STORE_KINDS, T0, batch, count, event, health, open_store

pytestmark = pytest.mark.timeout(15)

DAY = CountQuery(T0 - timedelta(hours=12), T0 + timedelta(hours=12))
EVENTS = EventQuery(DAY.start, DAY.end)


@pytest.fixture(params=STORE_KINDS)
def store(
    request: pytest.FixtureRequest, tmp_path: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[TimeSeriesStore]:
    with open_store(request.param, tmp_path, tmp_path_factory) as s:
        yield s


def reading(second: float, quantity: str = "pm25", value: float = 12.5, **kw: Any) -> SensorReading:
    values = {"sensor": "aq1", "unit": "µg/m³", "quality": "ok"}
    return SensorReading(
        ts=T0 + timedelta(seconds=second), quantity=quantity, value=value, **{**values, **kw}
    )


def test_everything_written_reads_back(store: TimeSeriesStore) -> None:
    e = event(0.123456)  # microseconds survive
    r = reading(0)
    store.write([batch(7, counts=[count(n=4, lane=1)], events=[e], sensors=[r], health=health())])
    assert store.count_buckets(DAY) == [CountBucket(T0, "pole-1", "main-st", "north", "car", "in", 4)]
    (stored,) = store.events(EVENTS)
    assert (stored.device_id, stored.site, stored.event) == ("pole-1", "main-st", e)
    assert stored.event.ts.tzinfo is UTC
    (series,) = store.sensor_series(SensorQuery(DAY.start, DAY.end))
    assert (series.device_id, series.site, series.reading) == ("pole-1", "main-st", r)
    assert store.latest_health("pole-1") == health()
    assert store.recent_sequences("pole-1", 100) == [7]
    store.ping()


def test_the_same_batch_twice_is_stored_once(store: TimeSeriesStore) -> None:
    b = batch(
        1,
        counts=[count(n=3), count(1, n=2)],
        events=[event(), event()],
        sensors=[reading(0)],
        health=health(),
    )
    store.write([b])
    store.write([b, b])
    assert [x.count for x in store.count_buckets(DAY)] == [5]
    assert len(store.events(EVENTS)) == 2
    assert len(store.sensor_series(SensorQuery(DAY.start, DAY.end))) == 1
    assert store.recent_sequences("pole-1", 10) == [1]


def test_counts_are_summed_per_bucket_across_devices_envelopes_lanes_and_models(
    store: TimeSeriesStore,
) -> None:
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


def test_buckets_are_epoch_aligned_and_the_window_is_half_open(store: TimeSeriesStore) -> None:
    store.write([batch(1, counts=[count(m, 1) for m in (-1, 0, 14, 15, 29, 30)])])
    window = CountQuery(T0, T0 + timedelta(minutes=30), bucket_s=900)
    buckets = store.count_buckets(window)
    assert [(b.bucket_start, b.count) for b in buckets] == [(T0, 2), (T0 + timedelta(minutes=15), 2)]
    assert all(b.bucket_start.tzinfo is UTC for b in buckets)


def test_count_filters(store: TimeSeriesStore) -> None:
    store.write(
        [
            batch(1, counts=[count(n=1), count(n=2, cls="truck"), count(n=4, line="south"), count(n=8, direction="out")]),
            batch(1, device="pole-2", site="elm-st", counts=[count(n=16)]),
        ]
    )  # fmt: skip

    def total(**filters: Any) -> int:
        return sum(b.count for b in store.count_buckets(CountQuery(DAY.start, DAY.end, **filters)))

    assert total() == 31
    assert total(device_id="pole-2") == 16
    assert total(site="main-st") == 15
    assert total(cls="truck") == 2
    assert total(line="south") == 4
    assert total(direction="out") == 8
    assert total(device_id="pole-1", cls="car", direction="in", line="north") == 1


def test_counts_summed_over_devices_equal_the_per_device_rows_summed(store: TimeSeriesStore) -> None:
    store.write(
        [
            batch(1, counts=[count(0, 2), count(0, 3, direction="out"), count(61, 4), count(5, 1, cls="truck")]),
            batch(1, device="pole-2", counts=[count(1, 10), count(62, 5), count(3, 6, line="south")]),
            batch(1, device="pole-3", site="elm-st", counts=[count(0, 7), count(2, 8, cls="truck")]),
        ]
    )  # fmt: skip

    def summed(**filters: Any) -> list[CountBucket]:
        """The per-device answer summed by hand, in the order the store promises."""
        totals: dict[tuple[Any, ...], int] = {}
        for b in store.count_buckets(CountQuery(DAY.start, DAY.end, **filters)):
            key = (b.bucket_start, b.line, b.cls, b.direction, b.site)
            totals[key] = totals.get(key, 0) + b.count
        return [
            CountBucket(t, ALL_DEVICES, site, line, cls, d, n)
            for (t, line, cls, d, site), n in sorted(totals.items())
        ]

    everything = store.count_buckets(CountQuery(DAY.start, DAY.end, per_device=False))
    assert everything == summed()
    assert CountBucket(T0, ALL_DEVICES, "main-st", "north", "car", "in", 12) in everything  # two devices
    assert len(everything) < len(store.count_buckets(DAY))
    for filters in ({"site": "main-st"}, {"cls": "truck"}, {"device_id": "pole-2"}, {"line": "south"},
                    {"direction": "out"}, {"bucket_s": 900}, {"site": "nowhere"}):  # fmt: skip
        per_site = CountQuery(DAY.start, DAY.end, per_device=False, **filters)
        assert store.count_buckets(per_site) == summed(**filters)


def test_bucket_width_must_be_positive(store: TimeSeriesStore) -> None:
    with pytest.raises(ValueError, match="bucket_s"):
        store.count_buckets(CountQuery(DAY.start, DAY.end, bucket_s=0))


def test_events_come_back_oldest_first_limited_and_filtered(store: TimeSeriesStore) -> None:
    same_a, same_b, same_c = event(1), event(1), event(1)  # one frame's crossings, sent in two envelopes
    later = event(5)
    bare = {"cls": None, "line": None, "direction": None, "track_id": None, "confidence": None}
    earlier = event(0.5, type="wrong_way", speed_kmh=None, **bare)
    store.write(
        [
            batch(1, events=[same_a, same_b, later]),
            batch(2, device="pole-2", events=[earlier]),
            batch(3, events=[same_c]),
        ]
    )
    # Ties in time are ordered by device, sequence number and place in the envelope.
    assert [s.event for s in store.events(EVENTS)] == [earlier, same_a, same_b, same_c, later]
    assert [s.event for s in store.events(EventQuery(DAY.start, DAY.end, limit=1))] == [earlier]
    wrong_way = store.events(EventQuery(DAY.start, DAY.end, type="wrong_way"))
    assert [(s.device_id, s.site, s.event) for s in wrong_way] == [("pole-2", "main-st", earlier)]
    assert len(store.events(EventQuery(DAY.start, DAY.end, device_id="pole-1"))) == 4
    assert store.events(EventQuery(DAY.start, DAY.end, limit=0)) == []


def test_sensor_series_oldest_first_and_filtered(store: TimeSeriesStore) -> None:
    readings = [reading(2, value=11.0), reading(1, value=150.0, quality="spike"), reading(1, "no2", 20.0)]
    store.write([batch(1, sensors=readings), batch(2, device="pole-2", sensors=[reading(3)])])
    pm25 = store.sensor_series(SensorQuery(DAY.start, DAY.end, quantity="pm25", device_id="pole-1"))
    assert [s.reading for s in pm25] == [readings[1], readings[0]]
    assert len(store.sensor_series(SensorQuery(DAY.start, DAY.end))) == 4
    assert len(store.sensor_series(SensorQuery(DAY.start, DAY.end, limit=2))) == 2
    assert store.sensor_series(SensorQuery(DAY.start, DAY.end, limit=0)) == []


def test_latest_health_is_the_newest_report_whatever_the_arrival_order(store: TimeSeriesStore) -> None:
    assert store.latest_health("pole-1") is None
    newest = health(60, model_version="det-1.1", provider="CUDAExecutionProvider")
    store.write([batch(1, health=health(0)), batch(3, health=newest), batch(2, health=health(30))])
    store.write([batch(4, device="pole-2", health=health(90))])
    assert store.latest_health("pole-1") == newest


def test_health_history_in_the_window_thinned_per_step_and_bounded(store: TimeSeriesStore) -> None:
    assert isinstance(store, SupportsHealthHistory)
    reports = [health(30 * i, outbox_backlog=i) for i in range(10)]  # every 30 s for 5 minutes
    store.write([batch(i + 1, health=h) for i, h in reversed(list(enumerate(reports)))])  # any order
    store.write([batch(1, device="pole-2", health=health(45, outbox_backlog=99))])
    window = HealthQuery("pole-1", T0 + timedelta(seconds=30), T0 + timedelta(seconds=270))
    assert store.health_history(window) == reports[1:9]  # [from, to): 30 s in, 270 s out
    # One per minute, the latest of each: 0:30 (the rest of minute 0 is outside), 1:30, 2:30, 3:30, 4:00.
    per_minute = store.health_history(replace(window, step_s=60))
    assert [h.outbox_backlog for h in per_minute] == [1, 3, 5, 7, 8]
    assert store.health_history(replace(window, limit=3)) == reports[6:9]  # the newest three
    assert store.health_history(replace(window, limit=0)) == []
    assert store.health_history(replace(window, device_id="pole-3")) == []
    latest = store.latest_health_many(["pole-1", "pole-2", "pole-3"])
    assert latest == {"pole-1": reports[-1], "pole-2": health(45, outbox_backlog=99)}
    assert latest_health_many(store, ["pole-2"]) == {"pole-2": health(45, outbox_backlog=99)}


def test_recent_sequences_are_within_the_window_of_the_highest(store: TimeSeriesStore) -> None:
    assert store.recent_sequences("pole-1", 10) == []
    store.write(
        [batch(s) for s in (1, 2, 5, 7, 8)] + [batch(10, counts=[count()]), batch(50, device="pole-2")]
    )
    assert store.recent_sequences("pole-1", 5) == [7, 8, 10]
    assert store.recent_sequences("pole-1", 100) == [1, 2, 5, 7, 8, 10]
    assert store.recent_sequences("pole-1", 0) == []
    assert store.recent_sequences("nobody", 5) == []


def test_awkward_names_survive_escaping_and_quoting(store: TimeSeriesStore) -> None:
    device, site = r"pole 7,a=b\x", 'O\'Neil "st" \\ end.'
    store.write([batch(1, device=device, site=site, counts=[count(n=2)], health=health())])
    (bucket,) = store.count_buckets(CountQuery(DAY.start, DAY.end, device_id=device, site=site))
    assert (bucket.device_id, bucket.site, bucket.count) == (device, site, 2)
    assert store.latest_health(device) == health()
    assert store.recent_sequences(device, 5) == [1]


# -- the API's queries: native where a store has them, from the core methods where not --------


def test_event_pages_are_stable_and_cover_every_event_once(store: TimeSeriesStore) -> None:
    events = [event(s // 3) for s in range(12)]  # four instants, three events each
    store.write([batch(1, events=events[:6]), batch(2, device="pole-2", events=events[6:])])
    seen, after = [], None
    for _ in range(10):
        page = events_page(store, EventQuery(DAY.start, DAY.end, limit=5), after)
        if not page:
            break
        seen += page
        after = event_key(page[-1])
    assert [s.event for s in seen] == sorted(events, key=lambda e: (e.ts, str(e.event_id)))


def test_speed_statistics_per_bucket(store: TimeSeriesStore) -> None:
    speeds = [30.0, 40.0, 50.0, 60.0]
    store.write(
        [
            batch(
                1,
                events=[event(60 * i, speed_kmh=v) for i, v in enumerate(speeds)]
                + [event(9, speed_kmh=None)],
            )
        ]
    )
    stats = speed_statistics(store, SpeedQuery(DAY.start, DAY.end))
    assert stats.complete
    (bucket,) = stats.buckets
    assert (bucket.bucket_start, bucket.device_id, bucket.count) == (T0, "pole-1", 4)
    assert (bucket.mean_kmh, bucket.p85_kmh) == (45.0, 60.0)
    assert not speed_statistics(store, SpeedQuery(DAY.start, DAY.end, max_samples=2)).complete


def test_latest_reading_of_each_sensor(store: TimeSeriesStore) -> None:
    store.write(
        [
            batch(1, sensors=[reading(1, value=1.0), reading(5, value=5.0), reading(3, "no2", 3.0)]),
            batch(2, device="pole-2", sensors=[reading(2, value=2.0)]),
        ]
    )
    latest = latest_sensor_readings(store, LatestSensorQuery(DAY.start, DAY.end))
    assert [(r.device_id, r.reading.quantity, r.reading.value) for r in latest] == [
        ("pole-1", "no2", 3.0),
        ("pole-1", "pm25", 5.0),
        ("pole-2", "pm25", 2.0),
    ]


# Signal control (SupportsSignals: SQLite and InfluxDB 1.x; docs/signals.md) ------------------------


def _signals(store: TimeSeriesStore) -> SupportsSignals:
    if not isinstance(store, SupportsSignals):
        pytest.skip(f"{type(store).__name__} keeps no signal data")
    return store


def test_detector_changes_movements_zones_and_controller_events_read_back_once(
    store: TimeSeriesStore,
) -> None:
    signals = _signals(store)

    def change(second: float, zone: str, state: DetectorState, **kw: Any) -> DetectorChange:
        return DetectorChange(ts=T0 + timedelta(seconds=second), stream="north", zone=zone, zone_kind="presence",
                              state=state, **kw)  # fmt: skip

    changes = [change(0.1234, "z1", "on", occupants=2), change(0.1234, "z2", "fault", reason="dark"),
               change(2, "z1", "off")]  # fmt: skip
    movement = TurningMovement(interval_start=T0, interval_s=900, stream="north", entry="north", exit="east",
                               cls="car", count=3)  # fmt: skip
    stat = ZoneStat(interval_start=T0, interval_s=900, stream="north", zone="z1", volume=4, occupancy=0.125,
                    mean_speed_kmh=None)  # fmt: skip
    first = batch(1, detector=changes, movements=[movement], zone_stats=[stat])
    store.write([first, first])  # a redelivery in the same write
    store.write([first, batch(2, movements=[movement.model_copy(update={"count": 2})])])
    store.write([batch(3, device="pole-2", detector=[change(1, "z9", "on")])])
    got = signals.detector_changes(DetectorQuery(DAY.start, DAY.end, ("pole-1",)))
    assert [(s.device_id, s.site, s.change) for s in got] == [("pole-1", "main-st", c) for c in changes]
    assert len(signals.detector_changes(DetectorQuery(DAY.start, DAY.end, ("pole-1", "pole-2")))) == 4
    assert len(signals.detector_changes(DetectorQuery(DAY.start, DAY.end, ("pole-1",), limit=2))) == 2
    assert signals.detector_changes(DetectorQuery(DAY.start, DAY.end, ())) == []
    (summed,) = signals.turning_movements(IntervalQuery(DAY.start, DAY.end, ("pole-1",)))
    assert summed.movement == movement.model_copy(update={"count": 5})  # two envelopes of one interval
    (zone,) = signals.zone_statistics(IntervalQuery(DAY.start, DAY.end, ("pole-1",)))
    assert (zone.device_id, zone.stat) == ("pole-1", stat)
    events = [ControllerEvent(T0 + timedelta(seconds=s), code, 2) for s, code in ((1.5, 1), (9, 8), (1.5, 4))]
    signals.write_controller_events("main-5th", events)
    signals.write_controller_events("main-5th", events[:1])  # posted twice: stored once
    signals.write_controller_events("other", events[:1])
    assert signals.controller_events("main-5th", DAY.start, DAY.end, 10) == sorted(events)
    assert signals.controller_events("main-5th", DAY.start, T0 + timedelta(seconds=5), 10) == sorted(
        events[::2]
    )
