"""``SqliteStore.apply_retention``: rollups, deletion and reads across the tiers, on a real file."""

from __future__ import annotations

import random
import shutil
import sqlite3
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from roadside.cloud.storage.base import ALL_DEVICES, CountBucket, CountQuery, IngestBatch, Origin
from roadside.cloud.storage.retention import Coverage, RetentionPolicy, floor_time
from roadside.cloud.storage.retention_job import RetentionJob
from roadside.cloud.storage.sqlite import SqliteStore
from roadside.shared.limits import to_epoch_us
from roadside.shared.schemas import CountRecord, DetectionEvent, Health, SensorReading

pytestmark = pytest.mark.timeout(20)

NOW = datetime(2024, 5, 11, 0, 17, 30, tzinfo=UTC)
POLICY = RetentionPolicy(raw_days=2, minute_days=5, hour_days=30)
DAY, HOUR, MINUTE = timedelta(days=1), timedelta(hours=1), timedelta(minutes=1)
# What POLICY keeps at NOW: raw from 9 May 00:00, minutes from 6 May 00:00, hours from 11 April.
RAW_FROM, MINUTE_FROM = datetime(2024, 5, 9, tzinfo=UTC), datetime(2024, 5, 6, tzinfo=UTC)
EVERYTHING = CountQuery(NOW - 60 * DAY, NOW + DAY, bucket_s=86400)

Written = list[tuple[datetime, str, str, int]]  # (interval start, device, class, count)


class Sequences:
    def __init__(self) -> None:
        self.next = 0

    def __call__(self) -> int:
        self.next += 1
        return self.next


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "telemetry.db"


@pytest.fixture
def store(path: Path, request: pytest.FixtureRequest) -> Iterator[SqliteStore]:
    if "rows" in request.fixturenames:
        request.getfixturevalue("rows")  # the file is filled before the store opens it
    s = SqliteStore(path)
    yield s
    s.close()


@pytest.fixture
def seq() -> Sequences:
    return Sequences()


def count(start: datetime, n: int, cls: str = "car", model: str = "det-1.0") -> CountRecord:
    return CountRecord(
        interval_start=start,
        interval_s=60,
        line="stop-bar",
        cls=cls,
        direction="in",
        count=n,
        model_version=model,
    )


def write_counts(store: SqliteStore, seq: Sequences, rows: Written) -> None:
    store.write(
        [
            IngestBatch(Origin(device, "main-st", seq()), counts=[count(t, n, cls)])
            for t, device, cls, n in rows
        ]
    )


def ten_days(store: SqliteStore, seq: Sequences) -> Written:
    """A record every five minutes (at a random second) per device for ten days up to NOW."""
    rng = random.Random(7)
    rows: Written = []
    slot = NOW - 10 * DAY
    while slot < NOW:
        for device in ("pole-1", "pole-2"):
            at = slot + timedelta(seconds=rng.randrange(300))
            rows.append((at, device, rng.choice(("car", "truck")), rng.randrange(10)))
        slot += 5 * MINUTE
    write_counts(store, seq, rows)
    return rows


@pytest.fixture(scope="module")
def ten_days_file(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Written]:
    """A file holding ``ten_days`` and nothing else, written once for the module."""
    path = tmp_path_factory.mktemp("ten-days") / "telemetry.db"
    store = SqliteStore(path)
    try:
        written = ten_days(store, Sequences())
    finally:
        store.close()  # the last connection: the WAL is folded into the file
    return path, written


@pytest.fixture
def rows(ten_days_file: tuple[Path, Written], path: Path, seq: Sequences) -> Written:
    """``ten_days`` in the test's own file (a copy of ``ten_days_file``); what was written."""
    template, written = ten_days_file
    shutil.copyfile(template, path)
    seq.next = len(written)  # its envelopes took sequence numbers 1..len(written)
    return written


def expected(rows: Written, bucket_s: int, **only: str) -> list[CountBucket]:
    totals: Counter[tuple[datetime, str, str]] = Counter()
    for t, device, cls, n in rows:
        if only.get("device", device) == device and only.get("cls", cls) == cls:
            totals[(floor_time(t, timedelta(seconds=bucket_s)), device, cls)] += n
    return [
        CountBucket(start, device, "main-st", "stop-bar", cls, "in", n)
        for (start, device, cls), n in sorted(totals.items())
    ]


def total(store: SqliteStore, query: CountQuery = EVERYTHING) -> int:
    return sum(b.count for b in store.count_buckets(query))


def table(path: Path, name: str) -> list[tuple[Any, ...]]:
    # A second connection, as an operator's sqlite3 shell would be: WAL lets it read beside the store.
    with sqlite3.connect(path) as db:
        return db.execute(f"SELECT * FROM {name} ORDER BY 1, 2, 3, 4, 5").fetchall()  # noqa: S608 (test constant)


def us(when: datetime) -> int:
    return to_epoch_us(when)


def test_totals_stay_exact_across_the_raw_minute_and_hour_tiers(store: SqliteStore, rows: Written) -> None:
    report = store.apply_retention(POLICY, NOW)
    assert report.coverage == Coverage(RAW_FROM, MINUTE_FROM)
    assert report.deleted["counts"] == sum(1 for t, *_ in rows if t < RAW_FROM)
    window = CountQuery(NOW - 11 * DAY, NOW + HOUR, bucket_s=3600)
    assert store.count_buckets(window) == expected(rows, 3600)
    assert store.count_buckets(EVERYTHING) == expected(rows, 86400)
    assert total(store) == sum(n for *_, n in rows)
    only = CountQuery(window.start, window.end, bucket_s=3600, device_id="pole-2", cls="truck")
    assert store.count_buckets(only) == expected(rows, 3600, device="pole-2", cls="truck")
    # Summed over the devices (the console's totals), from every tier alike.
    summed: Counter[tuple[datetime, str]] = Counter()
    for b in expected(rows, 3600):
        summed[(b.bucket_start, b.cls)] += b.count
    assert store.count_buckets(replace(window, per_device=False)) == [
        CountBucket(t, ALL_DEVICES, "main-st", "stop-bar", cls, "in", n)
        for (t, cls), n in sorted(summed.items())
    ]
    # Inside the minute tier minutes stay exact too.
    minutes = CountQuery(MINUTE_FROM, RAW_FROM, bucket_s=60)
    assert store.count_buckets(minutes) == expected([r for r in rows if MINUTE_FROM <= r[0] < RAW_FROM], 60)


def test_each_tier_keeps_only_its_own_period(path: Path, store: SqliteStore, rows: Written) -> None:
    store.apply_retention(POLICY, NOW)
    assert min(r[5] for r in table(path, "counts")) >= us(RAW_FROM)
    assert min(r[0] for r in table(path, "counts_1m")) >= us(MINUTE_FROM)
    assert min(r[0] for r in table(path, "counts_1h")) == us(floor_time(NOW - 10 * DAY, HOUR))
    # Rollups keep who produced each count.
    assert {(r[1], r[2], r[3]) for r in table(path, "counts_1h")} == {
        ("pole-1", "main-st", "det-1.0"),
        ("pole-2", "main-st", "det-1.0"),
    }


def test_rerunning_never_double_counts(path: Path, store: SqliteStore, rows: Written) -> None:
    store.apply_retention(POLICY, NOW)
    rollups = {name: table(path, name) for name in ("counts_1m", "counts_1h")}
    again = store.apply_retention(POLICY, NOW)
    assert {name: table(path, name) for name in rollups} == rollups
    assert sum(again.deleted.values()) == 0
    assert sum(again.rolled.values()) == 0  # each bucket is recomputed once per arrival, not per run
    for later in (NOW + MINUTE, NOW + 3 * HOUR, NOW + 2 * DAY):
        store.apply_retention(POLICY, later)
        assert total(store) == sum(n for *_, n in rows)


def test_late_records_inside_the_raw_window_show_at_once_and_reach_the_rollups(
    store: SqliteStore, seq: Sequences, rows: Written
) -> None:
    store.apply_retention(POLICY, NOW)
    # A second report for a minute and series already rolled up (an envelope delayed in an outbox).
    at, device, cls, _ = next(r for r in rows if r[0] >= NOW - DAY)
    late = (at, device, cls, 5)
    write_counts(store, seq, [late])
    assert total(store) == sum(n for *_, n in rows) + 5  # read from raw
    store.apply_retention(POLICY, NOW + MINUTE)
    # Two days on, that minute has left raw: it is read from the recomputed minute rollup.
    store.apply_retention(POLICY, NOW + 2 * DAY)
    minute = CountQuery(floor_time(at, MINUTE), floor_time(at, MINUTE) + MINUTE, bucket_s=60)
    assert store.count_buckets(minute) == expected(
        [r for r in [*rows, late] if floor_time(r[0], MINUTE) == floor_time(at, MINUTE)], 60
    )
    assert total(store) == sum(n for *_, n in rows) + 5


def test_late_records_older_than_the_raw_window_are_added_once(
    path: Path, store: SqliteStore, seq: Sequences, rows: Written
) -> None:
    store.apply_retention(POLICY, NOW)
    before = total(store)
    # An outbox backlog delivered days late: one record in the minute tier, one in the hour tier.
    write_counts(store, seq, [(NOW - 4 * DAY, "pole-1", "car", 7), (NOW - 8 * DAY, "pole-2", "car", 11)])
    assert total(store) == before + 18  # visible at once: raw is read over the whole window
    store.apply_retention(POLICY, NOW + MINUTE)
    assert total(store) == before + 18
    assert store.count_buckets(CountQuery(NOW - 11 * DAY, NOW, bucket_s=3600)) == expected(
        [*rows, (NOW - 4 * DAY, "pole-1", "car", 7), (NOW - 8 * DAY, "pole-2", "car", 11)], 3600
    )
    assert min(r[5] for r in table(path, "counts")) >= us(RAW_FROM)  # and they left raw
    store.apply_retention(POLICY, NOW + 2 * MINUTE)
    store.apply_retention(POLICY, NOW + HOUR)
    assert total(store) == before + 18


def test_records_past_every_tier_are_gone(path: Path, store: SqliteStore, seq: Sequences) -> None:
    write_counts(store, seq, [(NOW - 40 * DAY, "pole-1", "car", 3), (NOW - HOUR, "pole-1", "car", 1)])
    report = store.apply_retention(POLICY, NOW)
    assert total(store) == 1
    assert report.deleted["counts"] == 1
    assert report.deleted["counts_1h"] == 1  # rolled, then past the hour tier's 30 days
    assert [r[0] for r in table(path, "counts_1h")] == [us(floor_time(NOW - HOUR, HOUR))]


def test_a_minute_of_the_open_hour_is_rolled_and_its_hour_waits_for_the_hour_to_close(
    path: Path, store: SqliteStore, seq: Sequences
) -> None:
    write_counts(store, seq, [(NOW - 10 * MINUTE, "pole-1", "car", 2), (NOW, "pole-1", "car", 4)])
    store.apply_retention(POLICY, NOW)
    assert [(r[0], r[7]) for r in table(path, "counts_1m")] == [
        (us(floor_time(NOW - 10 * MINUTE, MINUTE)), 2)
    ]
    assert table(path, "counts_1h") == []
    store.apply_retention(POLICY, NOW.replace(minute=0, second=0) + HOUR)
    assert [(r[0], r[7]) for r in table(path, "counts_1h")] == [(us(NOW.replace(minute=0, second=0)), 6)]


def test_sensor_rollups_keep_mean_min_max_of_good_readings_and_events_count_by_type(
    path: Path, store: SqliteStore, seq: Sequences
) -> None:
    t = datetime(2024, 5, 10, 9, 0, tzinfo=UTC)
    readings = [
        SensorReading(ts=t + i * MINUTE, sensor="aq1", quantity="pm25", value=v, unit="µg/m³")
        for i, v in enumerate([1.0, 2.0, 6.0])
    ]
    readings.append(
        SensorReading(
            ts=t + 3 * MINUTE, sensor="aq1", quantity="pm25", value=900.0, unit="µg/m³", quality="spike"
        )
    )
    events = [
        DetectionEvent.model_validate(
            {
                "event_id": uuid.uuid4(),
                "ts": t + timedelta(seconds=10 * i),
                "type": kind,
                "stream": "cam0",
                "model_version": "det-1.0",
            }
        )
        for i, kind in enumerate(["wrong_way", "wrong_way", "stopped_vehicle"])
    ]
    store.write([IngestBatch(Origin("pole-1", "main-st", seq()), sensors=readings, events=events)])
    report = store.apply_retention(POLICY, NOW)
    assert report.rolled["sensors_1h"] == 1
    assert table(path, "sensors_1h") == [
        (us(t), "pole-1", "main-st", "aq1", "pm25", 3, 9.0, 1.0, 6.0, "µg/m³")
    ]
    assert table(path, "events_1m") == [
        (us(t), "pole-1", "main-st", "det-1.0", "stopped_vehicle", 1),
        (us(t), "pole-1", "main-st", "det-1.0", "wrong_way", 2),
    ]
    store.apply_retention(POLICY, NOW + 2 * DAY)  # raw gone; rollups stay as they were
    assert table(path, "sensors") == [] and table(path, "events") == []  # noqa: PT018
    assert table(path, "sensors_1h")[0][5:9] == (3, 9.0, 1.0, 6.0)


def health(at: datetime) -> Health:
    return Health(
        ts=at, uptime_s=1.0, model_version="det-1.0", provider="CPUExecutionProvider", outbox_backlog=0
    )


def test_old_health_is_deleted_but_each_device_keeps_its_latest(store: SqliteStore, seq: Sequences) -> None:
    store.write(
        [
            IngestBatch(Origin("quiet", "main-st", seq()), health=health(NOW - 9 * DAY)),
            IngestBatch(Origin("quiet", "main-st", seq()), health=health(NOW - 8 * DAY)),
            IngestBatch(Origin("busy", "main-st", seq()), health=health(NOW - 9 * DAY)),
            IngestBatch(Origin("busy", "main-st", seq()), health=health(NOW - HOUR)),
        ]
    )
    report = store.apply_retention(POLICY, NOW)
    assert report.deleted["health"] == 2
    assert store.latest_health("quiet") == health(NOW - 8 * DAY)
    assert store.latest_health("busy") == health(NOW - HOUR)


def test_the_first_run_rolls_up_records_written_before_the_rollups_existed(
    path: Path, store: SqliteStore, seq: Sequences, rows: Written
) -> None:
    with sqlite3.connect(path) as db:
        db.execute("DELETE FROM rollup_dirty")  # as in a file written by a hub before this release
    store.apply_retention(POLICY, NOW)
    assert total(store) == sum(n for *_, n in rows)


def test_the_watermark_survives_a_restart_and_never_moves_back(path: Path, rows: Written) -> None:
    first = SqliteStore(path)
    first.apply_retention(POLICY, NOW)
    first.close()
    store = SqliteStore(path)
    try:
        assert total(store) == sum(n for *_, n in rows)
        # A longer raw period cannot bring deleted rows back: raw still starts where it did.
        longer = store.apply_retention(RetentionPolicy(raw_days=4, minute_days=5, hour_days=30), NOW + HOUR)
        assert longer.coverage == Coverage(RAW_FROM, MINUTE_FROM + HOUR)
        assert store.count_buckets(CountQuery(NOW - 11 * DAY, NOW, bucket_s=3600)) == expected(rows, 3600)
    finally:
        store.close()


def test_the_job_applies_retention_to_the_store_in_its_thread(store: SqliteStore, rows: Written) -> None:
    job = RetentionJob(store, POLICY, interval_s=3600, clock=lambda: NOW)
    job.start()
    try:
        assert job.ran.wait(10)
    finally:
        job.stop()
    assert job.errors == 0
    assert job.last_report is not None
    assert job.last_report.coverage == Coverage(RAW_FROM, MINUTE_FROM)
    assert total(store) == sum(n for *_, n in rows)


def test_a_write_marks_each_minute_once_and_an_older_files_per_row_triggers_are_dropped(
    path: Path, seq: Sequences
) -> None:
    SqliteStore(path).close()
    with sqlite3.connect(path) as db:  # the trigger an older hub kept, which marked per inserted row
        db.execute(
            "CREATE TRIGGER counts_mark_rollup AFTER INSERT ON counts BEGIN INSERT OR IGNORE INTO rollup_dirty"
            " VALUES ('counts', 60000000, NEW.interval_start_us - NEW.interval_start_us % 60000000); END"
        )
    store = SqliteStore(path)
    try:
        minute = NOW.replace(second=0) - HOUR
        event = DetectionEvent(
            event_id=uuid.uuid4(),
            ts=minute + timedelta(seconds=59),
            type="line_crossing",
            stream="cam0",
            cls="car",
            model_version="m",
        )
        reading = SensorReading(ts=minute + MINUTE, sensor="aq", quantity="no2", value=1.0, unit="ppb")
        store.write(
            [
                IngestBatch(
                    Origin("dev", "main-st", seq()), counts=[count(minute, 1), count(minute, 2, "bus")]
                ),
                IngestBatch(Origin("dev", "main-st", seq()), counts=[count(minute + MINUTE, 3)]),
                IngestBatch(Origin("dev", "main-st", seq()), events=[event], sensors=[reading]),
            ]
        )
        with sqlite3.connect(path) as db:
            triggers = db.execute("SELECT name FROM sqlite_master WHERE type = 'trigger'").fetchall()
            marks = sorted(db.execute("SELECT kind, width_us, bucket_us FROM rollup_dirty").fetchall())
        assert triggers == []
        us = to_epoch_us(minute)
        assert marks == sorted(
            [("counts", 60_000_000, us), ("counts", 60_000_000, us + 60_000_000),
             ("events", 60_000_000, us), ("sensors", 60_000_000, us + 60_000_000)]
        )  # fmt: skip
        store.apply_retention(POLICY, NOW)
        assert total(store) == 6
    finally:
        store.close()
