"""``InfluxV1Store.ensure_retention`` and tiered reads against a real ``influxd`` (1.6 from Debian).

Continuous queries run on the server's own schedule (and the test server has the CQ service
off), so a test runs the very ``SELECT ... INTO`` a continuous query holds, as shown by
``SHOW CONTINUOUS QUERIES``, over a time range of its choosing. Reads past the raw retention
are reached by moving the store's clock forward, not by waiting days.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest

from roadside.cloud.storage.base import ALL_DEVICES, CountBucket, CountQuery, IngestBatch, Origin
from roadside.cloud.storage.influx import InfluxV1Store
from roadside.cloud.storage.retention import ROLLUPS, RetentionPolicy, floor_time
from roadside.shared.errors import SchemaError
from roadside.shared.limits import to_epoch_us
from roadside.shared.schemas import CountRecord, DetectionEvent, SensorReading
from tests.component.influxd import InfluxServer
from tests.component.stores import unique_name

pytestmark = pytest.mark.timeout(20)

POLICY = RetentionPolicy(raw_days=1, minute_days=3, hour_days=10)
HOUR, MINUTE, DAY = timedelta(hours=1), timedelta(minutes=1), timedelta(days=1)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[InfluxServer]:
    # A server of its own, not the process's shared one: these tests DELETE points and run
    # SELECT ... INTO across shards, which InfluxDB 1.x does not isolate well from a busy server.
    with InfluxServer(tmp_path_factory.mktemp("influx")) as s:
        yield s


@pytest.fixture
def store(server: InfluxServer) -> Iterator[InfluxV1Store]:
    s = InfluxV1Store(server.url, unique_name(), timeout_s=5)
    yield s
    s.close()


def influxql(server: InfluxServer, store: InfluxV1Store, statement: str) -> list[dict[str, Any]]:
    """Run a statement as an operator would, outside the store; the rows of its first series."""
    response = httpx.post(f"{server.url}/query", params={"db": store._database}, data={"q": statement})
    response.raise_for_status()
    result = response.json()["results"][0]
    assert "error" not in result, result["error"]
    rows = []
    for series in result.get("series", []):
        rows += [dict(zip(series["columns"], values, strict=True)) for values in series["values"]]
    return rows


def policies(server: InfluxServer, store: InfluxV1Store) -> dict[str, tuple[str, bool]]:
    rows = influxql(server, store, f'SHOW RETENTION POLICIES ON "{store._database}"')
    return {r["name"]: (r["duration"], r["default"]) for r in rows}


def continuous_queries(server: InfluxServer, store: InfluxV1Store) -> dict[str, str]:
    response = httpx.post(f"{server.url}/query", data={"q": "SHOW CONTINUOUS QUERIES"})
    series = response.json()["results"][0].get("series", [])
    ours = [s for s in series if s["name"] == store._database]
    return {name: query for s in ours for name, query in s.get("values", [])}


def counts_over(start: datetime, hours: int, store: InfluxV1Store) -> list[tuple[datetime, str, int]]:
    """A count record every seven minutes for ``hours`` hours; what was written."""
    written, batches = [], []
    for i in range(hours * 60 // 7):
        at = start + i * 7 * MINUTE + timedelta(seconds=i % 50)
        device, n = ("pole-1", "pole-2")[i % 2], 1 + i % 9
        record = CountRecord(
            interval_start=at,
            interval_s=60,
            line="stop-bar",
            cls="car",
            direction="in",
            count=n,
            model_version="det-1.0",
        )
        batches.append(IngestBatch(Origin(device, "main-st", i + 1), counts=[record]))
        written.append((at, device, n))
    store.write(batches)
    return written


def hourly(written: list[tuple[datetime, str, int]]) -> list[CountBucket]:
    sums: dict[tuple[datetime, str], int] = {}
    for at, device, n in written:
        key = (floor_time(at, HOUR), device)
        sums[key] = sums.get(key, 0) + n
    return [CountBucket(t, d, "main-st", "stop-bar", "car", "in", n) for (t, d), n in sorted(sums.items())]


def run_held_select(
    server: InfluxServer, store: InfluxV1Store, held: str, start: datetime, end: datetime
) -> int:
    """The SELECT ... INTO that a continuous query holds, over ``[start, end)``, as the server
    would run it; the number of points written."""
    select = re.search(r" BEGIN (SELECT .*) END$", held)
    assert select is not None, held
    window = f"time >= {to_epoch_us(start) * 1000} AND time < {to_epoch_us(end) * 1000}"
    text = select.group(1)
    text = text.replace(" GROUP BY ", f" {'AND' if ' WHERE ' in text else 'WHERE'} {window} GROUP BY ", 1)
    (row,) = influxql(server, store, text)
    return int(row["written"])


def test_ensure_retention_creates_policies_and_continuous_queries_and_is_idempotent(
    server: InfluxServer, store: InfluxV1Store
) -> None:
    store.ensure_retention(POLICY)
    assert policies(server, store) == {
        "autogen": ("0s", False),
        "raw": ("24h0m0s", True),
        "minute": ("72h0m0s", False),
        "hour": ("240h0m0s", False),
    }
    cqs = continuous_queries(server, store)
    assert set(cqs) == {f"roadside_{r.name}" for r in ROLLUPS}
    # The server keeps its own rendering of the statement, quotes dropped where it can.
    assert cqs["roadside_counts_1m"] == (
        f"CREATE CONTINUOUS QUERY roadside_counts_1m ON {store._database} RESAMPLE EVERY 1m FOR 30m BEGIN"  # noqa: S608 (InfluxQL of test names)
        f" SELECT sum(count) AS count INTO {store._database}.minute.counts_1m FROM {store._database}.raw.counts"
        " GROUP BY time(1m), device, site, model_version, line, cls, direction END"
    )
    store.ensure_retention(POLICY)
    assert policies(server, store)["raw"] == ("24h0m0s", True)
    assert continuous_queries(server, store) == cqs


def test_a_changed_policy_is_altered_and_a_changed_continuous_query_replaced(
    server: InfluxServer, store: InfluxV1Store
) -> None:
    store.ensure_retention(POLICY)
    cqs = continuous_queries(server, store)
    db = store._database
    # As an older release might have left it: same name, other text.
    influxql(server, store, f'DROP CONTINUOUS QUERY "roadside_events_1h" ON "{db}"')
    influxql(
        server,
        store,
        f'CREATE CONTINUOUS QUERY "roadside_events_1h" ON "{db}" BEGIN SELECT count("event_id") AS "count"'  # noqa: S608 (InfluxQL of test names)
        f' INTO "{db}"."hour"."events_1h" FROM "{db}"."raw"."events" GROUP BY time(1h) END',
    )
    store.ensure_retention(RetentionPolicy(raw_days=2, minute_days=3, hour_days=20))
    assert policies(server, store)["raw"] == ("48h0m0s", True)
    assert policies(server, store)["hour"] == ("480h0m0s", False)
    assert continuous_queries(server, store) == cqs


def test_rollups_filled_by_the_continuous_queries_read_back_past_raw_retention(
    server: InfluxServer, store: InfluxV1Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    store.ensure_retention(POLICY)
    now = datetime.now(UTC)
    start = floor_time(now, HOUR) - 3 * HOUR
    written = counts_over(start, 3, store)
    window = CountQuery(start - HOUR, start + 4 * HOUR, bucket_s=3600)
    assert store.count_buckets(window) == hourly(written)  # raw, as before retention

    held = continuous_queries(server, store)
    assert run_held_select(server, store, held["roadside_counts_1m"], start, start + 3 * HOUR) > 0
    assert run_held_select(server, store, held["roadside_counts_1h"], start, start + 3 * HOUR) == 6
    # As if raw_days had passed: the raw points go (rollups are other measurements, so they stay).
    influxql(server, store, 'DELETE FROM "counts"')
    assert store.count_buckets(window) == []

    # Two days on the raw points are past raw_days: the window is read from counts_1m.
    monkeypatch.setattr(store, "_retention_now", lambda: now + 2 * DAY)
    assert store.count_buckets(window) == hourly(written)
    per_site = store.count_buckets(replace(window, per_device=False))
    assert {b.device_id for b in per_site} == {ALL_DEVICES}
    assert sum(b.count for b in per_site) == sum(n for *_, n in written)
    assert len(per_site) < len(hourly(written))
    # Five days on, past minute_days too: from counts_1h.
    monkeypatch.setattr(store, "_retention_now", lambda: now + 5 * DAY)
    assert store.count_buckets(window) == hourly(written)
    whole = CountQuery(start - 20 * DAY, now + 5 * DAY, bucket_s=86400)
    assert sum(b.count for b in store.count_buckets(whole)) == sum(n for *_, n in written)


def test_a_window_across_tiers_sums_each_part_once(
    server: InfluxServer, store: InfluxV1Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    store.ensure_retention(POLICY)
    now = datetime.now(UTC)
    start = floor_time(now, HOUR) - 6 * HOUR
    written = counts_over(start, 6, store)
    assert store.backfill_rollups(start, start + 6 * HOUR) > 0
    # The first three hours leave raw, as they would a day later.
    influxql(server, store, f'DELETE FROM "counts" WHERE time < {to_epoch_us(start + 3 * HOUR) * 1000}')  # noqa: S608 (test names)
    # At this clock the boundary between minute rollups and raw points falls inside the data.
    monkeypatch.setattr(store, "_retention_now", lambda: start + 3 * HOUR + DAY)
    window = CountQuery(start, start + 6 * HOUR, bucket_s=6 * 3600)
    assert sum(b.count for b in store.count_buckets(window)) == sum(n for *_, n in written)
    assert store.count_buckets(CountQuery(start, start + 6 * HOUR, bucket_s=3600)) == hourly(written)


def test_backfill_rolls_up_sensors_and_events_and_is_idempotent(
    server: InfluxServer, store: InfluxV1Store
) -> None:
    store.ensure_retention(POLICY)
    t = floor_time(datetime.now(UTC), HOUR) - 2 * HOUR
    readings = [
        SensorReading(ts=t + i * MINUTE, sensor="aq1", quantity="pm25", value=v, unit="ug/m3")
        for i, v in enumerate([1.0, 2.0, 6.0])
    ]
    readings.append(
        SensorReading(
            ts=t + 3 * MINUTE, sensor="aq1", quantity="pm25", value=900.0, unit="ug/m3", quality="spike"
        )
    )
    events = [
        DetectionEvent.model_validate(
            {
                "event_id": uuid.uuid4(),
                "ts": t + i * MINUTE,
                "type": kind,
                "stream": "cam0",
                "model_version": "det-1.0",
            }
        )
        for i, kind in enumerate(["wrong_way", "wrong_way", "stopped_vehicle"])
    ]
    store.write([IngestBatch(Origin("pole-1", "main-st", 1), sensors=readings, events=events)])
    first = store.backfill_rollups(t, t + HOUR)
    assert store.backfill_rollups(t, t + HOUR) == first
    db = store._database
    (hour,) = influxql(server, store, f'SELECT * FROM "{db}"."hour"."sensors_1h"')  # noqa: S608 (InfluxQL of test names)
    assert (hour["n"], hour["mean"], hour["min"], hour["max"], hour["unit"]) == (3, 3.0, 1.0, 6.0, "ug/m3")
    assert (hour["device"], hour["site"], hour["sensor"], hour["quantity"]) == (
        "pole-1",
        "main-st",
        "aq1",
        "pm25",
    )
    rows = influxql(
        server,
        store,
        f'SELECT sum("count") FROM "{db}"."minute"."events_1m" GROUP BY "type", "model_version"',  # noqa: S608 (InfluxQL of test names)
    )
    assert sorted(r["sum"] for r in rows) == [1, 2]
    by_type = influxql(
        server,
        store,
        f'SELECT "count", "model_version" FROM "{db}"."hour"."events_1h" WHERE "type" = \'wrong_way\'',  # noqa: S608 (InfluxQL of test names)
    )
    assert [(r["count"], r["model_version"]) for r in by_type] == [(2, "det-1.0")]


def test_a_record_older_than_raw_retention_is_refused_while_the_rest_is_stored(store: InfluxV1Store) -> None:
    # InfluxDB 1.x answers 400 "partial write: points beyond retention policy dropped=N" and keeps
    # the points inside the policy: an outbox backlog older than raw_days is lost to raw.
    store.ensure_retention(POLICY)
    now = floor_time(datetime.now(UTC), MINUTE)

    def record(at: datetime) -> CountRecord:
        return CountRecord(
            interval_start=at, interval_s=60, line="l", cls="car", direction="in", count=1, model_version="m"
        )

    with pytest.raises(SchemaError, match="points beyond retention policy dropped=1"):
        store.write(
            [IngestBatch(Origin("pole-1", "main-st", 1), counts=[record(now - 2 * DAY), record(now)])]
        )
    assert [b.count for b in store.count_buckets(CountQuery(now - HOUR, now + HOUR))] == [1]
