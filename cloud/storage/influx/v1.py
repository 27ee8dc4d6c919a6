"""``InfluxV1Store``: the v1 HTTP API over httpx (line protocol on ``POST /write``, InfluxQL on
``/query``). InfluxDB 1.x serves it natively, 2.x and 3.x through their v1 compatibility
endpoints. Tested against a real ``influxd`` 1.6 by the store contract suite and
``tests/component/test_influx_v1.py``."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx

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
from roadside.cloud.storage.influx import signals as influx_signals
from roadside.cloud.storage.influx.influxql import (
    count_buckets_influxql,
    events_influxql,
    health_history_influxql,
    highest_seq_influxql,
    latest_health_influxql,
    quote_ident,
    sensor_series_influxql,
    seqs_above_influxql,
)
from roadside.cloud.storage.influx.line_protocol import WRITE_CHUNK, batch_lines, chunks
from roadside.cloud.storage.influx.rows import (
    count_bucket,
    count_order,
    rejection,
    stored_event,
    stored_reading,
    tie_break,
)
from roadside.cloud.storage.retention import (
    RAW_RP,
    ROLLUPS,
    RetentionPolicy,
    RetentionReport,
    Rollup,
    ShownPolicy,
    Tier,
    ceil_time,
    continuous_query_influxql,
    continuous_query_name,
    drop_continuous_query_influxql,
    floor_time,
    merge_count_buckets,
    plan_spans,
    retention_policy_statements,
    rollup_select_influxql,
    tier_rp,
)
from roadside.cloud.storage.signals import (
    ControllerEvent,
    DetectorQuery,
    IntervalQuery,
    StoredDetectorChange,
    StoredMovement,
    StoredZoneStat,
)
from roadside.shared.errors import ConfigError, TransportError
from roadside.shared.limits import to_epoch_us
from roadside.shared.schemas import Health

log = logging.getLogger(__name__)


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
        raise rejection(response.status_code, _message(response), action)

    def write(self, batches: Sequence[IngestBatch]) -> None:
        """Store every point of the batches; returns once InfluxDB has them in its WAL."""
        lines = batch_lines(batches)
        lines += [p.to_line() for b in batches for p in influx_signals.signal_points(b)]
        self._write_lines(lines)
        log.debug("wrote %s points of %s envelopes to %s", len(lines), len(batches), self._database)

    def _write_lines(self, lines: list[str]) -> None:
        if not lines:
            return
        self._ensure_database()
        params = {"db": self._database, "precision": "ns"}
        if self._rp is not None:
            params["rp"] = self._rp
        for chunk in chunks(lines, WRITE_CHUNK):
            body = "\n".join(chunk).encode()
            response = self._post_write(params, body)
            if response.status_code == 404 and self._create_database:
                # The database was dropped under us: make it again and try once more.
                self._database_ready = False
                self._ensure_database()
                response = self._post_write(params, body)
            self._check(response, "write")

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
            count_bucket(row, row["time"])
            for row in _rows(self._query(count_buckets_influxql(query, self._source)))
        ]
        return sorted(buckets, key=count_order)

    def events(self, query: EventQuery) -> list[StoredEvent]:
        """Events in the window, oldest first, at most ``query.limit``."""
        if query.limit <= 0:
            return []
        rows = list(_rows(self._query(events_influxql(query, self._source))))
        rows.sort(key=lambda r: (r["time"], *tie_break(r)))
        return [stored_event(r, r["time"]) for r in rows]

    def sensor_series(self, query: SensorQuery) -> list[StoredReading]:
        """Sensor readings in the window, oldest first, at most ``query.limit``."""
        if query.limit <= 0:
            return []
        rows = list(_rows(self._query(sensor_series_influxql(query, self._source))))
        rows.sort(key=lambda r: (r["time"], *tie_break(r)))
        return [stored_reading(r, r["time"]) for r in rows]

    def latest_health(self, device_id: str) -> Health | None:
        """The device's health report with the latest ``ts``, or ``None``."""
        rows = list(_rows(self._query(latest_health_influxql(device_id, self._source))))
        return Health.model_validate_json(rows[0]["last"]) if rows else None

    def health_history(self, query: HealthQuery) -> list[Health]:
        """SupportsHealthHistory: thinned by the query itself (the last report per step), newest
        ``limit`` first; put in time order and held to :func:`thin_health`'s rule here."""
        if query.limit <= 0:
            return []
        rows = list(_rows(self._query(health_history_influxql(query, self._source))))
        reports = sorted(
            (Health.model_validate_json(r["report"]) for r in rows if r["report"]), key=lambda h: h.ts
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
        top = list(_rows(self._query(highest_seq_influxql(device_id, self._source))))
        if not top:
            return []
        floor = int(top[0]["max"]) - window
        rows = _rows(self._query(seqs_above_influxql(device_id, floor, self._source)))
        return sorted({int(r["seq"]) for r in rows})

    # -- signal control (SupportsSignals; roadside.cloud.storage.influx.signals) ----

    def detector_changes(self, query: DetectorQuery) -> list[StoredDetectorChange]:
        if query.limit <= 0 or not query.devices:
            return []
        rows = _rows(self._query(influx_signals.detector_influxql(query, self._source)))
        return [
            change
            for _, change in sorted((influx_signals.detector_change(r) for r in rows), key=lambda x: x[0])
        ]

    def turning_movements(self, query: IntervalQuery) -> list[StoredMovement]:
        if query.limit <= 0 or not query.devices:
            return []
        rows = _rows(
            self._query(influx_signals.interval_influxql(influx_signals.MOVEMENTS, query, self._source))
        )
        sums: dict[tuple[Any, ...], StoredMovement] = {}
        for row in rows:
            one = influx_signals.movement(row)
            m = one.movement
            key = (m.interval_start, one.device_id, m.stream, m.entry, m.exit, m.cls, m.interval_s, one.site)
            seen = sums.get(key)
            # Several envelopes counted in one interval: summed, as SQLite does.
            total = m.count + (seen.movement.count if seen is not None else 0)
            sums[key] = replace(one, movement=m.model_copy(update={"count": total}))
        return [sums[k] for k in sorted(sums, key=lambda k: (k[0], *k[1:6]))][: query.limit]

    def zone_statistics(self, query: IntervalQuery) -> list[StoredZoneStat]:
        if query.limit <= 0 or not query.devices:
            return []
        rows = _rows(
            self._query(influx_signals.interval_influxql(influx_signals.ZONE_STATS, query, self._source))
        )
        stats = [influx_signals.zone_stat(r) for r in rows]
        return sorted(stats, key=lambda s: (s.stat.interval_start, s.device_id, s.stat.stream, s.stat.zone))

    def write_controller_events(self, signal_id: str, events: Sequence[ControllerEvent]) -> None:
        self._write_lines([p.to_line() for p in influx_signals.controller_points(signal_id, events)])

    def controller_events(
        self, signal_id: str, start: datetime, end: datetime, limit: int
    ) -> list[ControllerEvent]:
        if limit <= 0:
            return []
        statement = influx_signals.controller_influxql(
            signal_id, to_epoch_us(start), to_epoch_us(end), limit, self._source
        )
        return sorted(influx_signals.controller_event(r) for r in _rows(self._query(statement)))

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
            parts.append([count_bucket(row, row["time"]) for row in rows])
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
