"""``InfluxV2Store``: InfluxDB 2.x through ``influxdb_client`` (synchronous writes, Flux reads)
with a token, org and bucket; the only module that imports ``influxdb_client``.

No 2.x server can be installed where this project is built, so it is checked only by unit
tests of the line protocol and Flux it builds and of what it hands the client
(``tests/unit/test_line_protocol.py``, ``tests/unit/test_retention.py``), not against a
server. Treat it as untested against a live 2.x until it is.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any, Final, cast

import urllib3.exceptions
from influxdb_client.client.bucket_api import BucketsApi
from influxdb_client.client.exceptions import InfluxDBError
from influxdb_client.client.influxdb_client import InfluxDBClient
from influxdb_client.client.tasks_api import TasksApi
from influxdb_client.client.write_api import SYNCHRONOUS
from influxdb_client.domain.bucket import Bucket
from influxdb_client.domain.bucket_retention_rules import BucketRetentionRules
from influxdb_client.domain.task_create_request import TaskCreateRequest
from influxdb_client.domain.task_update_request import TaskUpdateRequest
from influxdb_client.domain.write_precision import WritePrecision

from roadside.cloud.storage.base import (
    CountBucket,
    CountQuery,
    EventQuery,
    HealthQuery,
    IngestBatch,
    SensorQuery,
    StoredEvent,
    StoredReading,
    thin_health,
)
from roadside.cloud.storage.influx.flux import (
    FluxQuery,
    count_buckets_flux,
    events_flux,
    flux_time_ns,
    health_history_flux,
    highest_seq_flux,
    latest_health_flux,
    sensor_series_flux,
    seqs_above_flux,
)
from roadside.cloud.storage.influx.line_protocol import COUNTS, WRITE_CHUNK, batch_lines, chunks
from roadside.cloud.storage.influx.rows import (
    count_bucket,
    count_order,
    rejection,
    stored_event,
    stored_reading,
    tie_break,
)
from roadside.cloud.storage.retention import (
    ROLLUP_TIERS,
    FluxTask,
    RetentionPolicy,
    RetentionReport,
    downsampling_tasks,
    merge_count_buckets,
    plan_spans,
    rollup_bucket,
)
from roadside.shared.errors import ConfigError, TransportError
from roadside.shared.schemas import Health

log = logging.getLogger(__name__)


class InfluxV2Store:
    """``TimeSeriesStore`` on InfluxDB 2.x through ``influxdb_client``: token, org and bucket.

    Writes are synchronous (``write`` returns once the server accepted them); reads are Flux.
    Checked by unit tests only: no 2.x server is available where this project is built.
    """

    def __init__(self, url: str, token: str, org: str, bucket: str, timeout_s: float = 10.0) -> None:
        if not (token and org and bucket):
            raise ConfigError("InfluxDB 2.x needs a token, an org and a bucket; one of them is empty")
        self._url = url.rstrip("/")
        self._org = org
        self._bucket = bucket
        self._client = InfluxDBClient(url=self._url, token=token, org=org, timeout=int(timeout_s * 1000))
        self._writer = self._client.write_api(write_options=SYNCHRONOUS)
        self._reader = self._client.query_api()

    @contextmanager
    def _client_errors(self, action: str) -> Iterator[None]:
        try:
            yield
        except InfluxDBError as exc:
            status = getattr(exc, "status", None) or getattr(exc.response, "status", None) or 0
            raise rejection(int(status), str(exc.message), action) from exc
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            raise TransportError(f"InfluxDB {action} at {self._url} failed: {exc!r}") from exc

    def write(self, batches: Sequence[IngestBatch]) -> None:
        """Store every point of the batches; returns once InfluxDB accepted them."""
        lines = batch_lines(batches)
        for chunk in chunks(lines, WRITE_CHUNK):
            with self._client_errors("write"):
                self._writer.write(
                    bucket=self._bucket,
                    org=self._org,
                    record=list(chunk),
                    # The constants are plain strings the client's annotations call WritePrecision.
                    write_precision=cast(WritePrecision, WritePrecision.NS),
                )
        log.debug("wrote %s points of %s envelopes to bucket %s", len(lines), len(batches), self._bucket)

    def _records(self, flux: FluxQuery) -> list[dict[str, Any]]:
        with self._client_errors("query"):
            tables = self._reader.query(flux.text, org=self._org, params=flux.params)
        return [dict(record.values) for table in tables for record in table.records]

    def count_buckets(self, query: CountQuery) -> list[CountBucket]:
        """Counts summed per bucket, ordered by bucket start then device, line, class, direction."""
        if self._retention is not None:
            return self._count_buckets_by_tier(query, self._retention)
        rows = self._records(count_buckets_flux(query, self._bucket))
        buckets = [count_bucket({**r, "count": r["_value"]}, flux_time_ns(r["_time"])) for r in rows]
        return sorted(buckets, key=count_order)

    def events(self, query: EventQuery) -> list[StoredEvent]:
        """Events in the window, oldest first, at most ``query.limit``."""
        if query.limit <= 0:
            return []
        rows = self._records(events_flux(query, self._bucket))
        rows.sort(key=lambda r: (flux_time_ns(r["_time"]), *tie_break(r)))
        return [stored_event(r, flux_time_ns(r["_time"])) for r in rows]

    def sensor_series(self, query: SensorQuery) -> list[StoredReading]:
        """Sensor readings in the window, oldest first, at most ``query.limit``."""
        if query.limit <= 0:
            return []
        rows = self._records(sensor_series_flux(query, self._bucket))
        rows.sort(key=lambda r: (flux_time_ns(r["_time"]), *tie_break(r)))
        return [stored_reading(r, flux_time_ns(r["_time"])) for r in rows]

    def latest_health(self, device_id: str) -> Health | None:
        """The device's health report with the latest ``ts``, or ``None``."""
        rows = self._records(latest_health_flux(device_id, self._bucket))
        return Health.model_validate_json(rows[0]["_value"]) if rows else None

    def health_history(self, query: HealthQuery) -> list[Health]:
        """SupportsHealthHistory: thinned by the query itself (the last report per step), newest
        ``limit`` first; put in time order and held to :func:`thin_health`'s rule here."""
        if query.limit <= 0:
            return []
        rows = self._records(health_history_flux(query, self._bucket))
        reports = sorted(
            (Health.model_validate_json(r["_value"]) for r in rows if r["_value"]), key=lambda h: h.ts
        )
        return thin_health(reports, query)

    def latest_health_many(self, device_ids: Sequence[str]) -> dict[str, Health]:
        """SupportsHealthHistory: one query per device (InfluxDB has no cheaper way to ask)."""
        found = {device_id: self.latest_health(device_id) for device_id in device_ids}
        return {device_id: health for device_id, health in found.items() if health is not None}

    def recent_sequences(self, device_id: str, window: int) -> list[int]:
        """Sequence numbers stored for the device in ``(highest - window, highest]``, ascending."""
        if window <= 0:
            return []
        top = self._records(highest_seq_flux(device_id, self._bucket))
        if not top:
            return []
        floor = int(top[0]["_value"]) - window
        rows = self._records(seqs_above_flux(device_id, floor, self._bucket))
        return sorted({int(r["_value"]) for r in rows})

    def ping(self) -> None:
        """Raise ``TransportError`` unless InfluxDB answers ``/ping``."""
        with self._client_errors("ping"):
            ok = self._client.ping()
        if not ok:
            raise TransportError(f"InfluxDB at {self._url} does not answer /ping")

    def close(self) -> None:
        # influxdb_client leaves close() unannotated.
        self._client.close()  # type: ignore[no-untyped-call]

    # -- retention (see cloud.storage.retention) --------------------------------------------

    # Set by ensure_retention; until then every read goes to the raw bucket alone.
    _retention: RetentionPolicy | None = None

    def ensure_retention(self, policy: RetentionPolicy) -> None:
        """Expire the bucket after ``raw_days``; create or update the ``<bucket>_1m`` and
        ``<bucket>_1h`` rollup buckets and the downsampling tasks that fill them. Nothing
        changes when they are in place. Unit-tested only: no 2.x server where this is built."""
        buckets = self._client.buckets_api()
        tasks = self._client.tasks_api()
        # influxdb_client leaves these lookups and model constructors unannotated.
        with self._client_errors("retention"):
            raw = buckets.find_bucket_by_name(self._bucket)  # type: ignore[no-untyped-call]
            if raw is None:
                raise ConfigError(f"InfluxDB bucket {self._bucket} does not exist; create it first")
            _expire_after(buckets, raw, policy.raw_days)
            for tier in ROLLUP_TIERS:
                name = rollup_bucket(self._bucket, tier)
                found = buckets.find_bucket_by_name(name)  # type: ignore[no-untyped-call]
                if found is None:
                    log.info("creating InfluxDB bucket %s", name)
                    buckets.create_bucket(
                        bucket_name=name, retention_rules=_expiry(policy.days(tier)), org=self._org
                    )
                else:
                    _expire_after(buckets, found, policy.days(tier))
            for task in downsampling_tasks(self._bucket, self._org):
                self._ensure_task(tasks, task)
        self._retention = policy

    def _ensure_task(self, tasks: TasksApi, task: FluxTask) -> None:
        listed = tasks.find_tasks(name=task.name, org=self._org)  # type: ignore[no-untyped-call]
        found = [t for t in listed if t.name == task.name]
        if not found:
            log.info("creating InfluxDB task %s", task.name)
            request = TaskCreateRequest(  # type: ignore[no-untyped-call]
                org=self._org, flux=task.flux, status="active", description=_TASK_NOTE
            )
            tasks.create_task(task_create_request=request)
        elif found[0].flux != task.flux:
            # Only the script: its task option carries the name, schedule and offset.
            log.info("updating InfluxDB task %s", task.name)
            change = TaskUpdateRequest(flux=task.flux, status="active")  # type: ignore[no-untyped-call]
            tasks.update_task_request(found[0].id, change)

    def apply_retention(self, policy: RetentionPolicy, now: datetime) -> RetentionReport:
        """What ``RetentionJob`` calls: InfluxDB expires data and runs the tasks itself, so this
        only makes sure the buckets and tasks are (still) in place."""
        self.ensure_retention(policy)
        return RetentionReport(policy.server_coverage(now), server_side=True)

    def _retention_now(self) -> datetime:
        return datetime.now(UTC)

    def _count_buckets_by_tier(self, query: CountQuery, policy: RetentionPolicy) -> list[CountBucket]:
        parts = []
        for span in plan_spans(query.start, query.end, policy.server_coverage(self._retention_now())):
            part = replace(query, start=span.start, end=span.end)
            if span.tier == "raw":
                flux = count_buckets_flux(part, self._bucket)
            else:
                suffix = "1m" if span.tier == "minute" else "1h"
                flux = count_buckets_flux(part, rollup_bucket(self._bucket, span.tier), f"{COUNTS}_{suffix}")
            rows = self._records(flux)
            parts.append([count_bucket({**r, "count": r["_value"]}, flux_time_ns(r["_time"])) for r in rows])
        return merge_count_buckets(parts)


# -- retention on 2.x (see cloud.storage.retention) ------------------------------------------

_TASK_NOTE: Final = "Roadside rollup; managed by the hub (InfluxV2Store.ensure_retention)"


def _expiry(days: int) -> list[BucketRetentionRules]:
    return [BucketRetentionRules(type="expire", every_seconds=int(days) * 86_400)]  # type: ignore[no-untyped-call]


def _expire_after(buckets: BucketsApi, bucket: Bucket, days: int) -> None:
    rules = bucket.retention_rules or []
    if [r.every_seconds for r in rules] != [int(days) * 86_400]:
        log.info("InfluxDB bucket %s now expires data after %s days", bucket.name, days)
        bucket.retention_rules = _expiry(days)
        buckets.update_bucket(bucket)
