"""The retention policy, the tier planner, the InfluxQL and Flux builders, the 2.x adapter's
retention calls (against fakes: no 2.x server here) and the retention job."""

from __future__ import annotations

import itertools
import logging
import threading
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from influxdb_client.client.flux_table import FluxRecord, FluxTable, TableList

from roadside.cloud.settings import load_hub_settings
from roadside.cloud.storage.base import CountBucket, CountQuery
from roadside.cloud.storage.influx import InfluxV2Store
from roadside.cloud.storage.retention import (
    ROLLUPS,
    Coverage,
    RetentionPolicy,
    RetentionReport,
    ShownPolicy,
    TierSpan,
    ceil_time,
    continuous_query_influxql,
    downsampling_tasks,
    floor_time,
    flux_string,
    merge_count_buckets,
    plan_spans,
    retention_policy_statements,
    rollup,
    rollup_select_influxql,
)
from roadside.cloud.storage.retention_job import THREAD_NAME, RetentionJob
from roadside.shared.errors import ConfigError, TransportError

NOW = datetime(2024, 5, 11, 13, 37, 12, tzinfo=UTC)
H = timedelta(hours=1)

# -- the policy ------------------------------------------------------------------------------


def test_default_policy_is_a_week_raw_three_months_of_minutes_two_years_of_hours() -> None:
    assert RetentionPolicy() == RetentionPolicy(raw_days=7, minute_days=90, hour_days=730)
    RetentionPolicy(3, 3, 3)  # equal tiers are allowed


@pytest.mark.parametrize(("raw", "minute", "hour"), [(8, 7, 30), (1, 31, 30), (0, 1, 1), (-1, 1, 1)])
def test_tiers_out_of_order_or_empty_are_a_config_error(raw: int, minute: int, hour: int) -> None:
    with pytest.raises(ConfigError, match="raw_days"):
        RetentionPolicy(raw, minute, hour)


def test_cuts_keep_at_least_the_days_on_whole_hours() -> None:
    policy = RetentionPolicy(2, 5, 30)
    assert policy.cut("raw", NOW) == datetime(2024, 5, 9, 13, tzinfo=UTC)
    assert policy.cut("hour", NOW) == datetime(2024, 4, 11, 13, tzinfo=UTC)
    # A server expires data itself, so its boundaries round up, inside what it surely keeps.
    assert policy.server_coverage(NOW) == Coverage(
        datetime(2024, 5, 9, 14, tzinfo=UTC), datetime(2024, 5, 6, 14, tzinfo=UTC)
    )


def test_floor_and_ceil_align_to_the_epoch_also_before_1970() -> None:
    before = datetime(1969, 12, 31, 23, 59, 30, tzinfo=UTC)
    assert floor_time(before, timedelta(minutes=1)) == datetime(1969, 12, 31, 23, 59, tzinfo=UTC)
    assert ceil_time(before, timedelta(minutes=1)) == datetime(1970, 1, 1, tzinfo=UTC)
    assert ceil_time(NOW.replace(minute=0, second=0), H) == NOW.replace(minute=0, second=0)


def test_hub_settings_carry_the_policy_and_refuse_disordered_tiers() -> None:
    settings = load_hub_settings(
        retention={"raw_days": 2, "minute_days": 5, "hour_days": 30, "interval_s": 60}
    )
    assert settings.retention.policy() == RetentionPolicy(2, 5, 30)
    assert load_hub_settings().retention.policy() == RetentionPolicy()
    with pytest.raises(ConfigError, match="retention"):
        load_hub_settings(retention={"raw_days": 100})


# -- the tier planner ----------------------------------------------------------------------------

COVERAGE = Coverage(
    raw_from=NOW.replace(minute=0, second=0) - 48 * H, minute_from=NOW.replace(minute=0, second=0) - 120 * H
)


def test_without_coverage_everything_is_raw() -> None:
    assert plan_spans(NOW - 1000 * H, NOW, None) == [TierSpan("raw", NOW - 1000 * H, NOW)]
    assert plan_spans(NOW, NOW, None) == []


def test_a_long_window_is_read_from_each_tier_where_it_is_complete() -> None:
    start = NOW - 1000 * H
    assert plan_spans(start, NOW, COVERAGE) == [
        TierSpan("hour", start, COVERAGE.minute_from),
        TierSpan("minute", COVERAGE.minute_from, COVERAGE.raw_from),
        TierSpan("raw", COVERAGE.raw_from, NOW),
    ]
    assert plan_spans(NOW - 2 * H, NOW, COVERAGE) == [TierSpan("raw", NOW - 2 * H, NOW)]


@given(
    st.integers(min_value=-3000, max_value=100),
    st.integers(min_value=0, max_value=3000),
)
def test_spans_partition_the_window_in_order(start_h: int, length_h: int) -> None:
    start = NOW + start_h * H
    end = start + length_h * H
    spans = plan_spans(start, end, COVERAGE)
    if start == end:
        assert spans == []
        return
    assert spans[0].start == start
    assert spans[-1].end == end
    assert all(a.end == b.start for a, b in itertools.pairwise(spans))
    order = {"hour": 0, "minute": 1, "raw": 2}
    assert [order[s.tier] for s in spans] == sorted(order[s.tier] for s in spans)
    for s in spans:
        assert s.start < s.end
        if s.tier == "raw":
            assert s.start >= COVERAGE.raw_from
        elif s.tier == "minute":
            assert COVERAGE.minute_from <= s.start
            assert s.end <= COVERAGE.raw_from
        else:
            assert s.end <= COVERAGE.minute_from


def test_naive_windows_are_refused() -> None:
    with pytest.raises(ValueError, match="time zone"):
        plan_spans(datetime(2024, 1, 1), NOW, COVERAGE)  # naive: the point of the test


def test_buckets_of_several_tiers_are_summed_per_key_and_ordered() -> None:
    t = NOW.replace(minute=0, second=0)
    a = CountBucket(t, "d1", "s", "n", "car", "in", 2)
    merged = merge_count_buckets(
        [
            [CountBucket(t + H, "d1", "s", "n", "car", "in", 1), a],
            [a, CountBucket(t, "d0", "s", "n", "car", "in", 5)],
        ]
    )
    assert merged == [
        CountBucket(t, "d0", "s", "n", "car", "in", 5),
        CountBucket(t, "d1", "s", "n", "car", "in", 4),
        CountBucket(t + H, "d1", "s", "n", "car", "in", 1),
    ]


# -- InfluxQL for 1.x ---------------------------------------------------------------------------


def test_a_fresh_database_gets_three_policies_raw_the_default() -> None:
    shown = [ShownPolicy("autogen", "0s", default=True)]
    assert retention_policy_statements("roadside", RetentionPolicy(), shown) == [
        'CREATE RETENTION POLICY "raw" ON "roadside" DURATION 7d REPLICATION 1 DEFAULT',
        'CREATE RETENTION POLICY "minute" ON "roadside" DURATION 90d REPLICATION 1',
        'CREATE RETENTION POLICY "hour" ON "roadside" DURATION 730d REPLICATION 1',
    ]


def test_policies_in_place_need_nothing_and_changed_ones_are_altered() -> None:
    shown = [
        ShownPolicy("raw", "168h0m0s", default=True),
        ShownPolicy("minute", "2160h0m0s", default=False),
        ShownPolicy("hour", "17520h0m0s", default=False),
    ]
    assert retention_policy_statements("roadside", RetentionPolicy(), shown) == []
    assert retention_policy_statements("roadside", RetentionPolicy(2, 90, 730), shown) == [
        'ALTER RETENTION POLICY "raw" ON "roadside" DURATION 2d DEFAULT'
    ]
    not_default = [ShownPolicy("raw", "168h0m0s", default=False), *shown[1:]]
    assert retention_policy_statements("roadside", RetentionPolicy(), not_default) == [
        'ALTER RETENTION POLICY "raw" ON "roadside" DURATION 7d DEFAULT'
    ]


def test_a_configured_raw_policy_name_and_awkward_database_names_are_quoted() -> None:
    statements = retention_policy_statements('o"db', RetentionPolicy(), [], raw_rp="short term")
    assert (
        statements[0] == 'CREATE RETENTION POLICY "short term" ON "o\\"db" DURATION 7d REPLICATION 1 DEFAULT'
    )


def test_the_counts_continuous_query_sums_per_minute_keeping_origin_tags() -> None:
    assert continuous_query_influxql(rollup("counts_1m"), "roadside") == (
        'CREATE CONTINUOUS QUERY "roadside_counts_1m" ON "roadside" RESAMPLE EVERY 1m FOR 30m BEGIN'
        ' SELECT sum("count") AS "count" INTO "roadside"."minute"."counts_1m" FROM "roadside"."raw"."counts"'
        ' GROUP BY time(1m), "device", "site", "model_version", "line", "cls", "direction" END'
    )
    hourly = continuous_query_influxql(rollup("counts_1h"), "roadside")
    assert 'RESAMPLE EVERY 10m FOR 3h BEGIN SELECT sum("count")' in hourly
    assert 'INTO "roadside"."hour"."counts_1h" FROM "roadside"."raw"."counts" GROUP BY time(1h)' in hourly


def test_sensor_and_event_rollups() -> None:
    sensors = rollup_select_influxql(rollup("sensors_1h"), "db")
    assert sensors == (
        'SELECT mean("value") AS "mean", min("value") AS "min", max("value") AS "max",'
        ' count("value") AS "n", last("unit") AS "unit" INTO "db"."hour"."sensors_1h"'
        ' FROM "db"."raw"."sensors" WHERE "quality" = \'ok\''
        ' GROUP BY time(1h), "device", "site", "sensor", "quantity"'
    )
    events = rollup_select_influxql(rollup("events_1m"), "db")
    assert events.startswith('SELECT count("event_id") AS "count" INTO "db"."minute"."events_1m"')
    assert events.endswith('GROUP BY time(1m), "device", "site", "model_version", "type"')
    # Every rollup but the sensors' keeps the model version that produced it.
    assert all("model_version" in r.group_tags for r in ROLLUPS if r.source != "sensors")
    assert {r.name for r in ROLLUPS} == {
        f"{m}_{w}" for m in ("counts", "sensors", "events") for w in ("1m", "1h")
    }


def test_a_backfill_is_the_same_select_over_a_window() -> None:
    start = datetime(2024, 5, 1, tzinfo=UTC)
    statement = rollup_select_influxql(rollup("sensors_1m"), "db", "raw", start, start + H)
    ns = int(start.timestamp()) * 10**9
    assert f"WHERE \"quality\" = 'ok' AND time >= {ns} AND time < {ns + 3600 * 10**9} GROUP BY" in statement


# -- Flux tasks for 2.x ---------------------------------------------------------------------------


def test_flux_strings_escape_quotes_backslashes_and_interpolation() -> None:
    assert flux_string('a"b\\c${d}') == '"a\\"b\\\\c\\${d}"'


def test_each_rollup_has_a_task_that_writes_to_its_bucket() -> None:
    tasks = {t.name: t.flux for t in downsampling_tasks("roadside", "city")}
    assert set(tasks) == {f"roadside_{r.name}" for r in ROLLUPS}
    counts = tasks["roadside_counts_1m"]
    assert counts.startswith('option task = {name: "roadside_counts_1m", every: 1m, offset: 15s}\n')
    assert 'from(bucket: "roadside")\n  |> range(start: -30m)\n' in counts
    assert 'r._measurement == "counts" and r._field == "count"' in counts
    assert 'group(columns: ["device", "site", "model_version", "line", "cls", "direction"])' in counts
    assert 'aggregateWindow(every: 1m, fn: sum, createEmpty: false, timeSrc: "_start")' in counts
    assert counts.endswith(
        '  |> set(key: "_measurement", value: "counts_1m")\n  |> to(bucket: "roadside_1m", org: "city")\n'
    )
    hourly = tasks["roadside_events_1h"]
    assert "every: 10m" in hourly
    assert "range(start: -3h)" in hourly
    assert "fn: count" in hourly
    assert 'to(bucket: "roadside_1h", org: "city")' in hourly
    sensors = tasks["roadside_sensors_1m"]
    assert 'r.quality == "ok"' in sensors
    assert all(f'value: "{f}")' in sensors for f in ("mean", "min", "max", "n"))


# -- InfluxV2Store.ensure_retention against fakes (no 2.x server here) ----------------------------


@dataclass
class _Rule:
    every_seconds: int


@dataclass
class _Bucket:
    name: str
    retention_rules: list[Any] = field(default_factory=list)


@dataclass
class _Task:
    id: str
    name: str
    flux: str


class _FakeBuckets:
    def __init__(self, *existing: _Bucket) -> None:
        self.buckets = {b.name: b for b in existing}
        self.created: list[str] = []
        self.updated: list[str] = []

    def find_bucket_by_name(self, name: str) -> _Bucket | None:
        return self.buckets.get(name)

    def create_bucket(self, bucket_name: str, retention_rules: list[Any], org: str) -> None:
        self.created.append(bucket_name)
        self.buckets[bucket_name] = _Bucket(bucket_name, retention_rules)

    def update_bucket(self, bucket: _Bucket) -> None:
        self.updated.append(bucket.name)


class _FakeTasks:
    def __init__(self) -> None:
        self.tasks: list[_Task] = []
        self.updates: list[tuple[str, Any]] = []

    def find_tasks(self, name: str, org: str) -> list[_Task]:
        return [t for t in self.tasks if t.name == name]

    def create_task(self, task_create_request: Any) -> None:
        flux = task_create_request.flux
        name = flux.split('"')[1]  # option task = {name: "..."}
        self.tasks.append(_Task(str(len(self.tasks)), name, flux))

    def update_task_request(self, task_id: str, request: Any) -> None:
        self.updates.append((task_id, request))


@pytest.fixture
def v2() -> tuple[InfluxV2Store, _FakeBuckets, _FakeTasks]:
    # Building the client opens no connection; the APIs it hands out are replaced.
    store = InfluxV2Store("http://127.0.0.1:1", token="t0ken", org="city", bucket="roadside")
    buckets, tasks = _FakeBuckets(_Bucket("roadside", [_Rule(0)])), _FakeTasks()
    store._client.buckets_api = lambda: buckets  # type: ignore[method-assign,assignment,return-value]
    store._client.tasks_api = lambda: tasks  # type: ignore[method-assign,assignment,return-value]
    return store, buckets, tasks


def test_v2_retention_sets_bucket_expiry_and_creates_rollup_buckets_and_tasks(
    v2: tuple[InfluxV2Store, _FakeBuckets, _FakeTasks],
) -> None:
    store, buckets, tasks = v2
    store.ensure_retention(RetentionPolicy(2, 5, 30))
    assert buckets.updated == ["roadside"]
    assert [r.every_seconds for r in buckets.buckets["roadside"].retention_rules] == [2 * 86400]
    assert buckets.created == ["roadside_1m", "roadside_1h"]
    assert [r.every_seconds for r in buckets.buckets["roadside_1h"].retention_rules] == [30 * 86400]
    assert sorted(t.name for t in tasks.tasks) == sorted(f"roadside_{r.name}" for r in ROLLUPS)


def test_v2_retention_again_changes_nothing_and_a_changed_script_is_updated(
    v2: tuple[InfluxV2Store, _FakeBuckets, _FakeTasks],
) -> None:
    store, buckets, tasks = v2
    policy = RetentionPolicy(2, 5, 30)
    store.ensure_retention(policy)
    buckets.updated.clear()
    buckets.created.clear()
    store.ensure_retention(policy)
    assert (buckets.updated, buckets.created, len(tasks.tasks), tasks.updates) == ([], [], 6, [])
    tasks.tasks[0].flux = "an older script"
    store.ensure_retention(RetentionPolicy(3, 5, 30))
    assert buckets.updated == ["roadside"]
    ((task_id, request),) = tasks.updates
    assert task_id == tasks.tasks[0].id
    assert request.flux.startswith(f'option task = {{name: "{tasks.tasks[0].name}"')


def test_v2_retention_without_the_bucket_is_a_config_error(
    v2: tuple[InfluxV2Store, _FakeBuckets, _FakeTasks],
) -> None:
    store, buckets, _ = v2
    del buckets.buckets["roadside"]
    with pytest.raises(ConfigError, match="bucket roadside does not exist"):
        store.ensure_retention(RetentionPolicy())


class _FakeQueryApi:
    def __init__(self) -> None:
        self.calls: list[tuple[str, dict[str, Any]]] = []

    def query(self, text: str, org: str, params: dict[str, Any]) -> TableList:
        self.calls.append((text, params))
        table = FluxTable()
        row = {
            "_time": params["start"],
            "_value": 1,
            "device": "d",
            "site": "s",
            "line": "n",
            "cls": "car",
            "direction": "in",
        }
        table.records = [FluxRecord(0, values=row)]
        result = TableList()
        result.append(table)
        return result


def test_v2_counts_past_raw_retention_are_read_from_the_rollup_buckets(
    v2: tuple[InfluxV2Store, _FakeBuckets, _FakeTasks],
) -> None:
    store, _, _ = v2
    store.ensure_retention(RetentionPolicy(2, 5, 30))
    reader = _FakeQueryApi()
    store._reader = reader  # type: ignore[assignment]
    store._retention_now = lambda: NOW  # type: ignore[method-assign]
    buckets = store.count_buckets(CountQuery(NOW - 10 * 24 * H, NOW, bucket_s=86400))
    sources = [(p["bucket"], text.split('r._measurement == "')[1].split('"')[0]) for text, p in reader.calls]
    assert sources == [("roadside_1h", "counts_1h"), ("roadside_1m", "counts_1m"), ("roadside", "counts")]
    assert sum(b.count for b in buckets) == 3


# -- the job ------------------------------------------------------------------------------------


class _Store:
    def __init__(self, fail: int = 0) -> None:
        self.calls: list[tuple[RetentionPolicy, datetime]] = []
        self.fail = fail

    def apply_retention(self, policy: RetentionPolicy, now: datetime) -> RetentionReport:
        self.calls.append((policy, now))
        if len(self.calls) <= self.fail:
            raise TransportError("store unreachable")
        return RetentionReport(None, {"counts_1m": 3}, {"counts": 2})


def test_a_run_applies_the_policy_at_the_clock_time() -> None:
    store = _Store()
    job = RetentionJob(store, RetentionPolicy(2, 5, 30), clock=lambda: NOW)
    report = job.run_once()
    assert store.calls == [(RetentionPolicy(2, 5, 30), NOW)]
    assert report is not None
    assert job.last_report == report
    assert (job.runs, job.errors) == (1, 0)


def test_a_failed_run_is_logged_and_counted_and_never_raised(caplog: pytest.LogCaptureFixture) -> None:
    job = RetentionJob(_Store(fail=1), RetentionPolicy(), clock=lambda: NOW)
    with caplog.at_level(logging.ERROR, logger="roadside.cloud.storage.retention_job"):
        assert job.run_once() is None
    assert (job.runs, job.errors) == (1, 1)
    assert job.last_error == "TransportError: store unreachable"
    assert "retention run failed" in caplog.text
    assert job.run_once() is not None
    assert (job.runs, job.errors) == (2, 1)
    assert not job.last_error


@pytest.mark.timeout(10)
def test_the_thread_runs_at_start_keeps_going_after_errors_and_stops_at_once() -> None:
    store = _Store(fail=1)
    job = RetentionJob(store, RetentionPolicy(), interval_s=3600, clock=lambda: NOW)
    job.start()
    try:
        assert job.ran.wait(5)  # the first run is at start, not after an interval
        assert any(t.name == THREAD_NAME for t in threading.enumerate())
    finally:
        job.stop(timeout_s=5)
    assert not any(t.name == THREAD_NAME and t.is_alive() for t in threading.enumerate())
    assert (job.runs, job.errors) == (1, 1)


def test_the_interval_must_be_positive() -> None:
    with pytest.raises(ValueError, match="interval_s"):
        RetentionJob(_Store(), RetentionPolicy(), interval_s=0)
