"""InfluxDB adapters of ``TimeSeriesStore``; the only module that imports ``influxdb_client``.

* :class:`InfluxV1Store` speaks the v1 HTTP API with httpx: line protocol on
  ``POST /write``, InfluxQL on ``/query``. InfluxDB 1.x serves it natively, 2.x
  and 3.x through their v1 compatibility endpoints. Tested against a real
  ``influxd`` 1.6 in ``tests/component/test_influx_v1.py``.
* :class:`InfluxV2Store` uses ``influxdb_client`` (synchronous writes, Flux
  reads) with a token, org and bucket. No 2.x server can be installed where
  this project is built, so it is checked only by unit tests of the line
  protocol and Flux it builds (``tests/unit/test_line_protocol.py``), not
  against a server. Treat it as untested against a live 2.x until it is.

Both adapters write the same points, built by :func:`batch_points`:

======== ============================================== ================================================
measure  tags (low cardinality; they index series)      fields
======== ============================================== ================================================
counts   device site model_version line cls direction  count
         lane interval_s
events   device site model_version type slot            event_id stream cls track_id line direction
                                                        confidence speed_kmh seq
sensors  device site sensor quantity                    value unit quality seq
health   device site model_version provider            report (the JSON) uptime_s outbox_backlog ...
ingest   device site                                    seq records
======== ============================================== ================================================

Identity, hence idempotency. InfluxDB keeps one point per measurement, tag set
and timestamp; writing it again overwrites it. Every point's timestamp is the
record's own time (exact to the microsecond, as the schemas carry it) plus
``seq % 1000`` nanoseconds. The same envelope written twice therefore lands
on the same points, while two envelopes that carry records with the same time
and tags (a count interval reported in two parts, two events of one frame sent
in two messages) stay distinct unless their sequence numbers are a multiple of
1000 apart with identical microseconds: not a case that occurs. The nudge is
below a microsecond, so reads floor it away and time buckets never move.
Within one envelope, counts with the same key are summed before writing and
events get the ``slot`` tag (the record's index in its envelope, bounded by
``MAX_RECORDS`` and small in practice), so nothing inside one envelope
collides either. Two sensor readings of one sensor and quantity at the same
microsecond in one envelope are one reading to InfluxDB (the last wins).

Sequence numbers, event ids and other unbounded values are fields, never tags:
each distinct tag value makes a new series, and series count is what InfluxDB
1.x memory and 2.x/3.x pricing grow with.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Any, Final, TypeVar, cast

import httpx
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

from cloud.storage.base import (
    CountBucket,
    CountQuery,
    EventQuery,
    IngestBatch,
    Origin,
    SensorQuery,
    StoredEvent,
    StoredReading,
    from_epoch_us,
    to_epoch_us,
)
from cloud.storage.retention import (
    RAW_RP,
    ROLLUP_TIERS,
    ROLLUPS,
    FluxTask,
    RetentionPolicy,
    RetentionReport,
    Rollup,
    ShownPolicy,
    Tier,
    ceil_time,
    continuous_query_influxql,
    continuous_query_name,
    downsampling_tasks,
    drop_continuous_query_influxql,
    floor_time,
    merge_count_buckets,
    plan_spans,
    retention_policy_statements,
    rollup_bucket,
    rollup_select_influxql,
    tier_rp,
)
from shared.errors import ConfigError, RoadsideError, SchemaError, TransportError
from shared.schemas import CountRecord, DetectionEvent, Health, SensorReading

log = logging.getLogger(__name__)

COUNTS: Final = "counts"
EVENTS: Final = "events"
SENSORS: Final = "sensors"
HEALTH: Final = "health"
INGEST: Final = "ingest"

# InfluxDB's own advice is 5,000-10,000 points a request; each chunk is idempotent, so a retry
# after a failure in the middle of a write stores nothing twice.
WRITE_CHUNK: Final = 5000
# Below one microsecond: see the module docstring.
_SEQ_NUDGE: Final = 1000

FieldValue = str | int | float | bool
_T = TypeVar("_T")


# -- line protocol (pure) -----------------------------------------------------


@dataclass(frozen=True, slots=True)
class LinePoint:
    """One point: measurement, tags and fields sorted by key, time in ns since the epoch."""

    measurement: str
    tags: tuple[tuple[str, str], ...]
    fields: tuple[tuple[str, FieldValue], ...]
    time_ns: int

    def to_line(self) -> str:
        """This point in line protocol, escaped for InfluxDB 1.x, 2.x and 3.x alike."""
        if not self.fields:
            raise SchemaError(f"a {self.measurement} point needs at least one field")
        head = escape_measurement(self.measurement)
        tags = "".join(f",{escape_key(k)}={escape_key(v)}" for k, v in self.tags)
        fields = ",".join(f"{escape_key(k)}={format_field(v)}" for k, v in self.fields)
        return f"{head}{tags} {fields} {self.time_ns}"


def escape_measurement(name: str) -> str:
    """A measurement name: commas and spaces are escaped."""
    _check_unescapable(name, "measurement")
    return name.replace(",", r"\,").replace(" ", r"\ ")


def escape_key(text: str) -> str:
    """A tag key, tag value or field key: commas, equals signs and spaces are escaped.

    InfluxDB does not unescape backslashes there (``a\\b`` stays as written), so
    a backslash is kept as is; a trailing one would escape the delimiter after
    it and a newline would end the line, so both are refused, as is ``""``.
    """
    _check_unescapable(text, "tag or field key/value")
    return text.replace(",", r"\,").replace("=", r"\=").replace(" ", r"\ ")


def _check_unescapable(text: str, what: str) -> None:
    if not text or text.endswith("\\") or "\n" in text or "\r" in text:
        raise SchemaError(
            f"{what} {text!r} cannot be written in line protocol (empty, a newline or a trailing backslash)"
        )


def format_field(value: FieldValue) -> str:
    """A field value: ``1i`` for integers, ``1.5`` for floats, ``true`` for booleans, quoted strings."""
    if isinstance(value, bool):  # before int: bool is an int
        return "true" if value else "false"
    if isinstance(value, int):
        return f"{value}i"
    if isinstance(value, float):
        if not math.isfinite(value):
            raise SchemaError(f"InfluxDB cannot store the float {value!r}")
        return repr(value)
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


# -- what gets written (pure) -------------------------------------------------


def batch_points(batch: IngestBatch, now_ns: int) -> list[LinePoint]:
    """Every point of one envelope; ``now_ns`` only times the ingest mark of an empty envelope."""
    origin = batch.origin
    points = _count_points(origin, batch.counts)
    points += [_event_point(origin, idx, e) for idx, e in enumerate(batch.events)]
    points += [_sensor_point(origin, r) for r in batch.sensors]
    if batch.health is not None:
        points.append(_health_point(origin, batch.health))
    points.append(_ingest_point(origin, points, now_ns))
    return points


def _point_time_ns(when: datetime, seq: int) -> int:
    return to_epoch_us(when) * 1000 + seq % _SEQ_NUDGE


def _tags(**values: str | int | None) -> tuple[tuple[str, str], ...]:
    # Absent and empty tags are left out; InfluxDB stores no empty tag values. Sorted, as InfluxDB
    # sorts them itself: it saves the server that work.
    return tuple(sorted((k, str(v)) for k, v in values.items() if v is not None and v != ""))


def _fields(**values: FieldValue | None) -> tuple[tuple[str, FieldValue], ...]:
    return tuple(sorted((k, v) for k, v in values.items() if v is not None))


def _count_points(origin: Origin, counts: Sequence[CountRecord]) -> list[LinePoint]:
    # Same key twice in one envelope: the SQLite store keeps both rows and sums them, so sum here
    # too rather than let the second overwrite the first.
    sums: dict[tuple[datetime, int, str, str, str, int | None, str], int] = {}
    for c in counts:
        key = (c.interval_start, c.interval_s, c.line, c.cls, c.direction, c.lane, c.model_version)
        sums[key] = sums.get(key, 0) + c.count
    return [
        LinePoint(
            COUNTS,
            _tags(
                device=origin.device_id,
                site=origin.site,
                model_version=model_version,
                line=line,
                cls=cls,
                direction=direction,
                lane=lane,
                interval_s=interval_s,
            ),
            # interval_s is a tag, not also a field: InfluxQL cannot tell a tag and a field of one name apart.
            _fields(count=int(total)),
            _point_time_ns(start, origin.seq),
        )
        for (start, interval_s, line, cls, direction, lane, model_version), total in sums.items()
    ]


def _event_point(origin: Origin, idx: int, e: DetectionEvent) -> LinePoint:
    return LinePoint(
        EVENTS,
        _tags(
            device=origin.device_id, site=origin.site, model_version=e.model_version, type=e.type, slot=idx
        ),
        _fields(
            event_id=str(e.event_id),
            stream=e.stream,
            cls=e.cls,
            line=e.line,
            direction=e.direction,
            track_id=_maybe(int, e.track_id),
            confidence=_maybe(float, e.confidence),
            speed_kmh=_maybe(float, e.speed_kmh),
            seq=origin.seq,
        ),
        _point_time_ns(e.ts, origin.seq),
    )


def _sensor_point(origin: Origin, r: SensorReading) -> LinePoint:
    return LinePoint(
        SENSORS,
        _tags(device=origin.device_id, site=origin.site, sensor=r.sensor, quantity=r.quantity),
        # float(): a field keeps the type it was first written with; an int would clash later.
        _fields(value=float(r.value), unit=r.unit, quality=r.quality, seq=origin.seq),
        _point_time_ns(r.ts, origin.seq),
    )


def _health_point(origin: Origin, h: Health) -> LinePoint:
    return LinePoint(
        HEALTH,
        _tags(device=origin.device_id, site=origin.site, model_version=h.model_version, provider=h.provider),
        _fields(
            report=h.model_dump_json(),
            uptime_s=float(h.uptime_s),
            outbox_backlog=int(h.outbox_backlog),
            inference_p50_ms=_maybe(float, h.inference_p50_ms),
            inference_p95_ms=_maybe(float, h.inference_p95_ms),
            cpu_percent=_maybe(float, h.cpu_percent),
            rss_mb=_maybe(float, h.rss_mb),
            seq=origin.seq,
        ),
        _point_time_ns(h.ts, origin.seq),
    )


def _ingest_point(origin: Origin, records: Sequence[LinePoint], now_ns: int) -> LinePoint:
    # One mark per envelope answers recent_sequences. It is timed by the envelope's latest record
    # so that a redelivery overwrites it; an envelope without records (nothing to time it by)
    # gets the clock, and a redelivery a second mark with the same seq, which readers dedupe.
    clock = now_ns - now_ns % _SEQ_NUDGE + origin.seq % _SEQ_NUDGE  # nudged: one write, one clock
    latest = max((p.time_ns for p in records), default=clock)
    return LinePoint(
        INGEST,
        _tags(device=origin.device_id, site=origin.site),
        _fields(seq=origin.seq, records=len(records)),
        latest,
    )


def _maybe(convert: Callable[[Any], _T], value: object) -> _T | None:
    return None if value is None else convert(value)


# -- InfluxQL (pure) ------------------------------------------------------------


def quote_ident(name: str) -> str:
    """An InfluxQL identifier (database, measurement, tag or field name) in double quotes."""
    return '"' + name.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def quote_literal(text: str) -> str:
    """An InfluxQL string literal in single quotes."""
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'").replace("\n", "\\n") + "'"


def _where(start: datetime, end: datetime, **equal: str | None) -> str:
    # Integer times in InfluxQL are nanoseconds since the epoch.
    terms = [f"time >= {to_epoch_us(start) * 1000}", f"time < {to_epoch_us(end) * 1000}"]
    terms += [f"{quote_ident(k)} = {quote_literal(v)}" for k, v in equal.items() if v is not None]
    return " AND ".join(terms)


def _select(what: str, source: str, where: str, tail: str = "") -> str:
    # InfluxQL, not SQL: every value in ``where`` went through quote_literal, quote_ident or int().
    return f"SELECT {what} FROM {source} WHERE {where}{tail}"  # noqa: S608


_COUNT_GROUPS: Final = ("device", "site", "line", "cls", "direction")


def count_buckets_influxql(query: CountQuery, source: Callable[[str], str]) -> str:
    """Counts summed per bucket; fill(none) because InfluxDB 1.x otherwise returns a null row
    for every empty bucket of every series from ``start`` to ``end``."""
    if query.bucket_s <= 0:
        raise ValueError(f"bucket_s must be positive, not {query.bucket_s}")
    where = _where(
        query.start,
        query.end,
        device=query.device_id,
        site=query.site,
        line=query.line,
        cls=query.cls,
        direction=query.direction,
    )
    groups = ", ".join(quote_ident(g) for g in _COUNT_GROUPS)
    tail = f" GROUP BY time({int(query.bucket_s)}s), {groups} fill(none)"
    return _select('sum("count") AS "count"', source(COUNTS), where, tail)


def events_influxql(query: EventQuery, source: Callable[[str], str]) -> str:
    """Raw events, oldest first. The caller must not pass ``limit <= 0``: InfluxQL reads LIMIT 0 as none."""
    where = _where(query.start, query.end, device=query.device_id, site=query.site, type=query.type)
    return _select("*", source(EVENTS), where, f" ORDER BY time ASC LIMIT {int(query.limit)}")


def sensor_series_influxql(query: SensorQuery, source: Callable[[str], str]) -> str:
    """Raw readings, oldest first; ``limit`` must be positive as for events."""
    where = _where(
        query.start,
        query.end,
        device=query.device_id,
        site=query.site,
        sensor=query.sensor,
        quantity=query.quantity,
    )
    return _select("*", source(SENSORS), where, f" ORDER BY time ASC LIMIT {int(query.limit)}")


def latest_health_influxql(device_id: str, source: Callable[[str], str]) -> str:
    return _select('last("report")', source(HEALTH), f'"device" = {quote_literal(device_id)}')


def highest_seq_influxql(device_id: str, source: Callable[[str], str]) -> str:
    return _select('max("seq")', source(INGEST), f'"device" = {quote_literal(device_id)}')


def seqs_above_influxql(device_id: str, floor: int, source: Callable[[str], str]) -> str:
    return _select('"seq"', source(INGEST), f'"device" = {quote_literal(device_id)} AND "seq" > {int(floor)}')


# -- reading rows back (pure) ---------------------------------------------------------


def _count_bucket(row: Mapping[str, Any], bucket_ns: int) -> CountBucket:
    return CountBucket(
        from_epoch_us(bucket_ns // 1000),
        str(row["device"]),
        str(row.get("site") or ""),
        str(row["line"]),
        str(row["cls"]),
        str(row["direction"]),
        int(row["count"]),
    )


def _count_order(b: CountBucket) -> tuple[datetime, str, str, str, str, str]:
    return (b.bucket_start, b.device_id, b.line, b.cls, b.direction, b.site)


def _stored_event(row: Mapping[str, Any], time_ns: int) -> StoredEvent:
    event = DetectionEvent.model_validate(
        {
            "event_id": row["event_id"],
            "ts": from_epoch_us(time_ns // 1000),
            "type": row["type"],
            "stream": row["stream"],
            "cls": row.get("cls"),
            "track_id": row.get("track_id"),
            "line": row.get("line"),
            "direction": row.get("direction"),
            "confidence": row.get("confidence"),
            "speed_kmh": row.get("speed_kmh"),
            "model_version": row["model_version"],
        }
    )
    return StoredEvent(str(row["device"]), str(row.get("site") or ""), event)


def _stored_reading(row: Mapping[str, Any], time_ns: int) -> StoredReading:
    reading = SensorReading(
        ts=from_epoch_us(time_ns // 1000),
        sensor=row["sensor"],
        quantity=row["quantity"],
        value=row["value"],
        unit=row["unit"],
        quality=row["quality"],
    )
    return StoredReading(str(row["device"]), str(row.get("site") or ""), reading)


def _tie_break(row: Mapping[str, Any]) -> tuple[str, int, int]:
    # InfluxDB orders points of one time across series as it likes; the SQLite store orders them
    # by device, seq and index, so do the same.
    return (str(row.get("device") or ""), int(row.get("seq") or 0), int(row.get("slot") or 0))


def _chunks(items: Sequence[_T], size: int) -> Iterator[Sequence[_T]]:
    for i in range(0, len(items), size):
        yield items[i : i + size]


def _lines(batches: Iterable[IngestBatch]) -> list[str]:
    now_ns = time.time_ns()
    return [p.to_line() for b in batches for p in batch_points(b, now_ns)]


def _rejection(status: int, message: str, action: str) -> RoadsideError:
    """The error for an HTTP failure: retryable, a setting to change, or data InfluxDB refuses."""
    text = f"InfluxDB {action} failed with HTTP {status}: {message}"
    # 1.x answers a write to a missing retention policy with a 500; it is a setting, not an outage.
    if "retention policy not found" in message or status == 404:
        return ConfigError(f"{text}; check the database and retention policy exist")
    if status == 0 or status >= 500 or status in (408, 429):
        return TransportError(text)
    if status in (401, 403):
        return ConfigError(f"{text}; check the username and password (or token) and their permissions")
    if action == "write":
        # A malformed line or a field-type conflict: the same points will never be accepted.
        return SchemaError(text)
    return ConfigError(text)


# -- v1 HTTP API ---------------------------------------------------------------------


class InfluxV1Store:
    """``TimeSeriesStore`` over the InfluxDB v1 HTTP API (1.x, and 2.x/3.x v1 compatibility).

    ``url`` like ``http://influxdb:8086``. ``username``/``password`` go as HTTP basic auth
    (with 2.x/3.x: any username and a token as the password). With ``create_database`` the
    database is created when first reachable (1.x only; 2.x/3.x need a DBRP mapping or
    bucket made beforehand, so pass ``False`` there).
    """

    def __init__(
        self,
        url: str,
        database: str,
        username: str | None = None,
        password: str | None = None,
        retention_policy: str | None = None,
        timeout_s: float = 10.0,
        *,
        create_database: bool = True,
    ) -> None:
        if not database:
            raise ConfigError("InfluxDB database name is empty; set the database to write to")
        self._url = url.rstrip("/")
        self._database = database
        self._rp = retention_policy
        auth = httpx.BasicAuth(username, password or "") if username is not None else None
        self._http = httpx.Client(base_url=self._url, auth=auth, timeout=timeout_s)
        self._create_database = create_database
        # Benign race: two threads may both create the database; CREATE DATABASE is idempotent.
        self._database_ready = not create_database
        try:
            self._ensure_database()
        except TransportError as exc:
            # The hub may start before InfluxDB; writes will try again and fail until it is up.
            log.warning(
                "InfluxDB at %s not reachable yet, will create %s later: %s", self._url, database, exc
            )

    def _source(self, measurement: str) -> str:
        if self._rp is None:
            return quote_ident(measurement)
        return f"{quote_ident(self._database)}.{quote_ident(self._rp)}.{quote_ident(measurement)}"

    @contextmanager
    def _http_errors(self, action: str) -> Iterator[None]:
        try:
            yield
        except httpx.HTTPError as exc:
            raise TransportError(f"InfluxDB {action} at {self._url} failed: {exc!r}") from exc

    def _ensure_database(self) -> None:
        if self._database_ready:
            return
        with self._http_errors("create database"):
            response = self._http.post("/query", data={"q": f"CREATE DATABASE {quote_ident(self._database)}"})
        self._check(response, "create database")
        _series(_json(response, "create database"), "create database")
        self._database_ready = True

    def _check(self, response: httpx.Response, action: str) -> None:
        if response.is_success:
            return
        raise _rejection(response.status_code, _message(response), action)

    def write(self, batches: Sequence[IngestBatch]) -> None:
        """Store every point of the batches; returns once InfluxDB has them in its WAL."""
        lines = _lines(batches)
        if not lines:
            return
        self._ensure_database()
        params = {"db": self._database, "precision": "ns"}
        if self._rp is not None:
            params["rp"] = self._rp
        for chunk in _chunks(lines, WRITE_CHUNK):
            body = "\n".join(chunk).encode()
            response = self._post_write(params, body)
            if response.status_code == 404 and self._create_database:
                # The database was dropped under us: make it again and try once more.
                self._database_ready = False
                self._ensure_database()
                response = self._post_write(params, body)
            self._check(response, "write")
        log.debug("wrote %s points of %s envelopes to %s", len(lines), len(batches), self._database)

    def _post_write(self, params: dict[str, str], body: bytes) -> httpx.Response:
        with self._http_errors("write"):
            return self._http.post("/write", params=params, content=body)

    def _query(self, influxql: str) -> list[dict[str, Any]]:
        self._ensure_database()
        params = {"db": self._database, "q": influxql, "epoch": "ns"}
        with self._http_errors("query"):
            response = self._http.get("/query", params=params)
        self._check(response, "query")
        return _series(_json(response, "query"), "query")

    def count_buckets(self, query: CountQuery) -> list[CountBucket]:
        """Counts summed per bucket, ordered by bucket start then device, line, class, direction."""
        if self._retention is not None:
            return self._count_buckets_by_tier(query, self._retention)
        buckets = [
            _count_bucket(row, row["time"])
            for row in _rows(self._query(count_buckets_influxql(query, self._source)))
        ]
        return sorted(buckets, key=_count_order)

    def events(self, query: EventQuery) -> list[StoredEvent]:
        """Events in the window, oldest first, at most ``query.limit``."""
        if query.limit <= 0:
            return []
        rows = list(_rows(self._query(events_influxql(query, self._source))))
        rows.sort(key=lambda r: (r["time"], *_tie_break(r)))
        return [_stored_event(r, r["time"]) for r in rows]

    def sensor_series(self, query: SensorQuery) -> list[StoredReading]:
        """Sensor readings in the window, oldest first, at most ``query.limit``."""
        if query.limit <= 0:
            return []
        rows = list(_rows(self._query(sensor_series_influxql(query, self._source))))
        rows.sort(key=lambda r: (r["time"], *_tie_break(r)))
        return [_stored_reading(r, r["time"]) for r in rows]

    def latest_health(self, device_id: str) -> Health | None:
        """The device's health report with the latest ``ts``, or ``None``."""
        rows = list(_rows(self._query(latest_health_influxql(device_id, self._source))))
        return Health.model_validate_json(rows[0]["last"]) if rows else None

    def recent_sequences(self, device_id: str, window: int) -> list[int]:
        """Sequence numbers stored for the device in ``(highest - window, highest]``, ascending."""
        if window <= 0:
            return []
        top = list(_rows(self._query(highest_seq_influxql(device_id, self._source))))
        if not top:
            return []
        floor = int(top[0]["max"]) - window
        rows = _rows(self._query(seqs_above_influxql(device_id, floor, self._source)))
        return sorted({int(r["seq"]) for r in rows})

    def ping(self) -> None:
        """Raise ``TransportError`` unless InfluxDB answers ``/ping``."""
        with self._http_errors("ping"):
            response = self._http.get("/ping")
        if not response.is_success:
            raise TransportError(f"InfluxDB at {self._url} answered /ping with HTTP {response.status_code}")

    def close(self) -> None:
        self._http.close()

    # -- retention (see cloud.storage.retention) --------------------------------------------

    # Set by ensure_retention; until then every read goes to the raw (default) policy alone.
    _retention: RetentionPolicy | None = None

    def ensure_retention(self, policy: RetentionPolicy) -> None:
        """Create or alter the ``raw`` (default), ``minute`` and ``hour`` retention policies and
        the continuous queries that fill the rollups; nothing changes when they are in place.

        InfluxDB 1.x only: the v1 endpoints of 2.x/3.x manage neither (use InfluxV2Store's).
        Switching the default policy to ``raw`` hides data already in ``autogen`` from reads
        (docs/operations.md says how to copy it over).
        """
        self._ensure_database()
        statement = f"SHOW RETENTION POLICIES ON {quote_ident(self._database)}"
        shown = [
            ShownPolicy(str(row["name"]), str(row["duration"]), bool(row["default"]))
            for row in _rows(self._command(statement, "retention policy"))
        ]
        for change in retention_policy_statements(self._database, policy, shown, self._raw_rp):
            log.info("InfluxDB database %s: %s", self._database, change)
            self._command(change, "retention policy")
        for r in ROLLUPS:
            self._ensure_continuous_query(r)
        self._retention = policy

    def _ensure_continuous_query(self, r: Rollup) -> None:
        create = continuous_query_influxql(r, self._database, self._raw_rp)
        try:
            self._command(create, "continuous query")
        except ConfigError as exc:
            if "already exists" not in str(exc):
                raise
            # Same name, other text: written by an older release. Replace it.
            log.info("replacing continuous query %s on %s", continuous_query_name(r), self._database)
            self._command(drop_continuous_query_influxql(r, self._database), "continuous query")
            self._command(create, "continuous query")

    def apply_retention(self, policy: RetentionPolicy, now: datetime) -> RetentionReport:
        """What ``RetentionJob`` calls: InfluxDB expires data and runs the rollups itself, so
        this only makes sure its policies and continuous queries are (still) in place."""
        self.ensure_retention(policy)
        return RetentionReport(policy.server_coverage(now), server_side=True)

    def backfill_rollups(self, start: datetime, end: datetime) -> int:
        """Recompute every rollup bucket that meets ``[start, end)`` from raw data; the number of
        rollup points written. For records that arrived later than the continuous queries look
        back (``CQ_RESAMPLE``); rerunning it overwrites the same points with the same values."""
        written = 0
        for r in ROLLUPS:
            span_start, span_end = floor_time(start, r.width), ceil_time(end, r.width)
            if self._retention is not None:
                # Points older than their policy's duration would be refused as a partial write.
                oldest = self._retention_now() - timedelta(days=self._retention.days(r.tier))
                span_start = max(span_start, ceil_time(oldest, r.width))
            if span_start >= span_end:
                continue
            statement = rollup_select_influxql(r, self._database, self._raw_rp, span_start, span_end)
            written += sum(
                int(row.get("written") or 0) for row in _rows(self._command(statement, "backfill"))
            )
        return written

    @property
    def _raw_rp(self) -> str:
        return self._rp or RAW_RP

    def _retention_now(self) -> datetime:
        return datetime.now(UTC)

    def _command(self, statement: str, action: str) -> list[dict[str, Any]]:
        # POST: InfluxDB 1.x refuses statements that change anything (and SELECT ... INTO) on GET.
        with self._http_errors(action):
            response = self._http.post("/query", params={"db": self._database}, data={"q": statement})
        self._check(response, action)
        return _series(_json(response, action), action)

    def _count_buckets_by_tier(self, query: CountQuery, policy: RetentionPolicy) -> list[CountBucket]:
        parts = []
        for span in plan_spans(query.start, query.end, policy.server_coverage(self._retention_now())):
            part = replace(query, start=span.start, end=span.end)
            source = self._source if span.tier == "raw" else self._rollup_source(span.tier)
            rows = _rows(self._query(count_buckets_influxql(part, source)))
            parts.append([_count_bucket(row, row["time"]) for row in rows])
        return merge_count_buckets(parts)

    def _rollup_source(self, tier: Tier) -> Callable[[str], str]:
        def source(measurement: str) -> str:
            name = f"{measurement}_{'1m' if tier == 'minute' else '1h'}"
            return f"{quote_ident(self._database)}.{quote_ident(tier_rp(tier))}.{quote_ident(name)}"

        return source


def _message(response: httpx.Response) -> str:
    """InfluxDB's own words: ``{"error": ...}`` (1.x), ``{"message": ...}`` (2.x/3.x) or the body."""
    try:
        body = response.json()
    except ValueError:
        return response.text[:500] or response.reason_phrase
    if isinstance(body, dict):
        for key in ("error", "message"):
            if isinstance(body.get(key), str):
                return str(body[key])
    return response.text[:500]


def _json(response: httpx.Response, action: str) -> Any:
    try:
        return response.json()
    except ValueError as exc:
        # Something other than InfluxDB answered (a proxy's error page): treat it as an outage.
        raise TransportError(f"InfluxDB {action} answered HTTP {response.status_code} without JSON") from exc


def _series(payload: Any, action: str) -> list[dict[str, Any]]:
    """The series of the first statement; errors InfluxDB reports inside a 200 are raised."""
    if not isinstance(payload, dict):
        raise TransportError(f"InfluxDB {action} answered with something that is not a JSON object")
    if "error" in payload:
        raise ConfigError(f"InfluxDB {action} failed: {payload['error']}")
    results = payload.get("results") or [{}]
    first = results[0]
    if "error" in first:
        raise ConfigError(f"InfluxDB {action} failed: {first['error']}")
    if first.get("partial"):
        # 1.x truncates a response at its max-row-limit and says so only here.
        raise ConfigError(
            f"InfluxDB {action} was truncated by the server's max-row-limit; raise it or narrow the query"
        )
    series = first.get("series") or []
    return [s for s in series if isinstance(s, dict)]


def _rows(series: Iterable[Mapping[str, Any]]) -> Iterator[dict[str, Any]]:
    """Each value row as a dict of its columns and its series' tags."""
    for s in series:
        columns = s.get("columns") or []
        tags = s.get("tags") or {}
        for values in s.get("values") or []:
            row = dict(tags)
            row.update(zip(columns, values, strict=False))
            yield row


# -- Flux (pure) -----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class FluxQuery:
    """A Flux script and the values it reads as ``params.*``: values never enter the text."""

    text: str
    params: dict[str, object]


# Tag names go in brackets (``r["type"]``) so that none can clash with a Flux keyword; each value
# travels as params.tag_<name>.
def _flux_filters(params: dict[str, object], **equal: str | None) -> str:
    terms = []
    for tag, value in equal.items():
        if value is not None:
            params[f"tag_{tag}"] = value
            terms.append(f' and r["{tag}"] == params.tag_{tag}')
    return "".join(terms)


def _flux_head(bucket: str, start: datetime | None, end: datetime | None) -> tuple[str, dict[str, object]]:
    params: dict[str, object] = {"bucket": bucket}
    if start is None or end is None:
        # Latest-of queries: the whole bucket. Flux needs a start; the epoch is the earliest.
        span = "range(start: 1970-01-01T00:00:00Z)"
    else:
        # Checked here because to_epoch_us refuses naive datetimes; the client sends them as RFC3339.
        to_epoch_us(start), to_epoch_us(end)
        params.update(start=start, stop=end)
        span = "range(start: params.start, stop: params.stop)"
    return f"from(bucket: params.bucket)\n  |> {span}\n", params


def count_buckets_flux(query: CountQuery, bucket: str, measurement: str = COUNTS) -> FluxQuery:
    """Counts summed per epoch-aligned bucket, one table per device, site, line, class, direction.

    ``measurement`` is ``counts`` or a rollup of it (``counts_1m`` in the rollup bucket)."""
    if query.bucket_s <= 0:
        raise ValueError(f"bucket_s must be positive, not {query.bucket_s}")
    head, params = _flux_head(bucket, query.start, query.end)
    filters = _flux_filters(
        params,
        device=query.device_id,
        site=query.site,
        line=query.line,
        cls=query.cls,
        direction=query.direction,
    )
    groups = ", ".join(f'"{g}"' for g in _COUNT_GROUPS)
    text = (
        head
        + f'  |> filter(fn: (r) => r._measurement == "{measurement}" and r._field == "count"{filters})\n'
        + f"  |> group(columns: [{groups}])\n"
        + f'  |> aggregateWindow(every: {int(query.bucket_s)}s, fn: sum, createEmpty: false, timeSrc: "_start")'
    )
    return FluxQuery(text, params)


def _raw_flux(measurement: str, head: str, filters: str, limit: int) -> str:
    return (
        head
        + f'  |> filter(fn: (r) => r._measurement == "{measurement}"{filters})\n'
        + '  |> pivot(rowKey: ["_time"], columnKey: ["_field"], valueColumn: "_value")\n'
        + "  |> group()\n"
        + '  |> sort(columns: ["_time"])\n'
        + f"  |> limit(n: {int(limit)})"
    )


def events_flux(query: EventQuery, bucket: str) -> FluxQuery:
    """Events with their fields as columns, oldest first, at most ``query.limit``."""
    head, params = _flux_head(bucket, query.start, query.end)
    filters = _flux_filters(params, device=query.device_id, site=query.site, type=query.type)
    return FluxQuery(_raw_flux(EVENTS, head, filters, query.limit), params)


def sensor_series_flux(query: SensorQuery, bucket: str) -> FluxQuery:
    """Sensor readings with their fields as columns, oldest first, at most ``query.limit``."""
    head, params = _flux_head(bucket, query.start, query.end)
    filters = _flux_filters(
        params, device=query.device_id, site=query.site, sensor=query.sensor, quantity=query.quantity
    )
    return FluxQuery(_raw_flux(SENSORS, head, filters, query.limit), params)


def latest_health_flux(device_id: str, bucket: str) -> FluxQuery:
    head, params = _flux_head(bucket, None, None)
    filters = _flux_filters(params, device=device_id)
    text = (
        head
        + f'  |> filter(fn: (r) => r._measurement == "{HEALTH}" and r._field == "report"{filters})\n'
        + "  |> group()\n"
        + '  |> sort(columns: ["_time"], desc: true)\n'
        + "  |> limit(n: 1)"
    )
    return FluxQuery(text, params)


def highest_seq_flux(device_id: str, bucket: str) -> FluxQuery:
    head, params = _flux_head(bucket, None, None)
    filters = _flux_filters(params, device=device_id)
    text = (
        head
        + f'  |> filter(fn: (r) => r._measurement == "{INGEST}" and r._field == "seq"{filters})\n'
        + "  |> group()\n"
        + "  |> max()"
    )
    return FluxQuery(text, params)


def seqs_above_flux(device_id: str, floor: int, bucket: str) -> FluxQuery:
    head, params = _flux_head(bucket, None, None)
    filters = _flux_filters(params, device=device_id)
    params["floor"] = int(floor)
    text = (
        head
        + f'  |> filter(fn: (r) => r._measurement == "{INGEST}" and r._field == "seq"{filters}'
        + " and r._value > params.floor)\n"
        + "  |> group()\n"
        + '  |> keep(columns: ["_value"])'
    )
    return FluxQuery(text, params)


def _flux_time_ns(value: Any) -> int:
    # The client parses Flux times into datetimes, cut to the microsecond: the nudge is gone already.
    if not isinstance(value, datetime):
        raise TransportError(f"InfluxDB returned a time that is not a time: {value!r}")
    return to_epoch_us(value) * 1000


# -- 2.x client ------------------------------------------------------------------------


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
            raise _rejection(int(status), str(exc.message), action) from exc
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            raise TransportError(f"InfluxDB {action} at {self._url} failed: {exc!r}") from exc

    def write(self, batches: Sequence[IngestBatch]) -> None:
        """Store every point of the batches; returns once InfluxDB accepted them."""
        lines = _lines(batches)
        for chunk in _chunks(lines, WRITE_CHUNK):
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
        buckets = [_count_bucket({**r, "count": r["_value"]}, _flux_time_ns(r["_time"])) for r in rows]
        return sorted(buckets, key=_count_order)

    def events(self, query: EventQuery) -> list[StoredEvent]:
        """Events in the window, oldest first, at most ``query.limit``."""
        if query.limit <= 0:
            return []
        rows = self._records(events_flux(query, self._bucket))
        rows.sort(key=lambda r: (_flux_time_ns(r["_time"]), *_tie_break(r)))
        return [_stored_event(r, _flux_time_ns(r["_time"])) for r in rows]

    def sensor_series(self, query: SensorQuery) -> list[StoredReading]:
        """Sensor readings in the window, oldest first, at most ``query.limit``."""
        if query.limit <= 0:
            return []
        rows = self._records(sensor_series_flux(query, self._bucket))
        rows.sort(key=lambda r: (_flux_time_ns(r["_time"]), *_tie_break(r)))
        return [_stored_reading(r, _flux_time_ns(r["_time"])) for r in rows]

    def latest_health(self, device_id: str) -> Health | None:
        """The device's health report with the latest ``ts``, or ``None``."""
        rows = self._records(latest_health_flux(device_id, self._bucket))
        return Health.model_validate_json(rows[0]["_value"]) if rows else None

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
            parts.append(
                [_count_bucket({**r, "count": r["_value"]}, _flux_time_ns(r["_time"])) for r in rows]
            )
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


__all__ = [
    "FluxQuery",
    "InfluxV1Store",
    "InfluxV2Store",
    "LinePoint",
    "batch_points",
    "escape_key",
    "escape_measurement",
    "format_field",
    "quote_ident",
    "quote_literal",
]
