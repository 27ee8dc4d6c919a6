"""The embedded store: telemetry in one SQLite file, the zero-set-up default.

Durability: WAL journal with ``synchronous=FULL``, so a ``write`` that returned
survives power loss, not only a crash of the hub. Each ``write`` call is one
``BEGIN IMMEDIATE`` transaction: all of its envelopes are stored, or none.

Idempotency: ``ingested(device_id, seq)`` records every envelope stored. An
envelope already there is skipped whole (it was committed whole), and every
record table also has the primary key ``(device_id, seq, idx)`` written with
``INSERT OR IGNORE``, so a message delivered twice is stored once either way.

Times are integers: microseconds since the Unix epoch, UTC, the resolution of
the wire schemas, so nothing is rounded. They come back as aware UTC datetimes.

One connection guarded by one lock serves every thread; reads wait for writes.
That is plenty for one hub; past it, use InfluxDB.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from itertools import repeat
from pathlib import Path
from typing import Any, Final

from roadside.cloud.storage import signals_sqlite
from roadside.cloud.storage.base import (
    ALL_DEVICES,
    CountBucket,
    CountQuery,
    EventKey,
    EventQuery,
    HealthQuery,
    IngestBatch,
    LatestSensorQuery,
    SensorQuery,
    SpeedQuery,
    SpeedSample,
    StoredEvent,
    StoredReading,
    from_epoch_us,
)
from roadside.cloud.storage.retention import Coverage, RetentionPolicy, RetentionReport, Tier, plan_spans
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
from roadside.shared.schemas import DetectionEvent, Health, SensorReading

log = logging.getLogger(__name__)

SCHEMA_VERSION: Final = 1
# How long a writer waits for another process holding the file (a second hub on the same disk).
_BUSY_TIMEOUT_MS: Final = 5000

_SCHEMA = """
CREATE TABLE IF NOT EXISTS ingested (
    device_id TEXT NOT NULL,
    seq INTEGER NOT NULL,
    site TEXT NOT NULL,
    stored_us INTEGER NOT NULL,
    PRIMARY KEY (device_id, seq)
) WITHOUT ROWID;

CREATE TABLE IF NOT EXISTS counts (
    device_id TEXT NOT NULL,
    seq INTEGER NOT NULL,
    idx INTEGER NOT NULL,
    site TEXT NOT NULL,
    model_version TEXT NOT NULL,
    interval_start_us INTEGER NOT NULL,
    interval_s INTEGER NOT NULL,
    line TEXT NOT NULL,
    cls TEXT NOT NULL,
    direction TEXT NOT NULL,
    lane INTEGER,
    count INTEGER NOT NULL,
    PRIMARY KEY (device_id, seq, idx)
);
CREATE INDEX IF NOT EXISTS counts_by_time ON counts (interval_start_us);

CREATE TABLE IF NOT EXISTS events (
    device_id TEXT NOT NULL,
    seq INTEGER NOT NULL,
    idx INTEGER NOT NULL,
    site TEXT NOT NULL,
    model_version TEXT NOT NULL,
    ts_us INTEGER NOT NULL,
    event_id TEXT NOT NULL,
    type TEXT NOT NULL,
    stream TEXT NOT NULL,
    cls TEXT,
    track_id INTEGER,
    line TEXT,
    direction TEXT,
    confidence REAL,
    speed_kmh REAL,
    PRIMARY KEY (device_id, seq, idx)
);
CREATE INDEX IF NOT EXISTS events_by_time ON events (ts_us);

-- A sensor reading is not produced by a model, so it has no model_version.
CREATE TABLE IF NOT EXISTS sensors (
    device_id TEXT NOT NULL,
    seq INTEGER NOT NULL,
    idx INTEGER NOT NULL,
    site TEXT NOT NULL,
    ts_us INTEGER NOT NULL,
    sensor TEXT NOT NULL,
    quantity TEXT NOT NULL,
    value REAL NOT NULL,
    unit TEXT NOT NULL,
    quality TEXT NOT NULL,
    PRIMARY KEY (device_id, seq, idx)
);
CREATE INDEX IF NOT EXISTS sensors_by_time ON sensors (ts_us);

-- The whole report is kept as JSON (streams are a map); the columns are for queries.
CREATE TABLE IF NOT EXISTS health (
    device_id TEXT NOT NULL,
    seq INTEGER NOT NULL,
    site TEXT NOT NULL,
    model_version TEXT NOT NULL,
    ts_us INTEGER NOT NULL,
    provider TEXT NOT NULL,
    report TEXT NOT NULL,
    PRIMARY KEY (device_id, seq)
);
CREATE INDEX IF NOT EXISTS health_latest ON health (device_id, ts_us);
"""


# Optional filters are ``(:x IS NULL OR column = :x)``: the SQL stays a constant, nothing is spliced in.
# The bucket is a floor division that also holds before 1970 (SQLite's % keeps the dividend's sign).
# Two constants: per device, and summed over each site's devices (``CountQuery.per_device``).
_COUNT_BUCKETS_SQL = """
SELECT interval_start_us - ((interval_start_us % :bucket) + :bucket) % :bucket AS bucket_us,
       {device} AS device, site, line, cls, direction, SUM(count)
FROM counts
WHERE interval_start_us >= :start AND interval_start_us < :end
  AND (:device_id IS NULL OR device_id = :device_id)
  AND (:site IS NULL OR site = :site)
  AND (:line IS NULL OR line = :line)
  AND (:cls IS NULL OR cls = :cls)
  AND (:direction IS NULL OR direction = :direction)
GROUP BY bucket_us, device, site, line, cls, direction
ORDER BY bucket_us, device, line, cls, direction, site
"""
_COUNT_BUCKETS: Final = {
    True: _COUNT_BUCKETS_SQL.format(device="device_id"),
    False: _COUNT_BUCKETS_SQL.format(device=f"'{ALL_DEVICES}'"),
}

_EVENTS = """
SELECT device_id, site, model_version, ts_us, event_id, type, stream, cls, track_id, line, direction,
       confidence, speed_kmh
FROM events
WHERE ts_us >= :start AND ts_us < :end
  AND (:device_id IS NULL OR device_id = :device_id)
  AND (:site IS NULL OR site = :site)
  AND (:type IS NULL OR type = :type)
ORDER BY ts_us, device_id, seq, idx
LIMIT :limit
"""

_SENSOR_SERIES = """
SELECT device_id, site, ts_us, sensor, quantity, value, unit, quality
FROM sensors
WHERE ts_us >= :start AND ts_us < :end
  AND (:device_id IS NULL OR device_id = :device_id)
  AND (:site IS NULL OR site = :site)
  AND (:sensor IS NULL OR sensor = :sensor)
  AND (:quantity IS NULL OR quantity = :quantity)
ORDER BY ts_us, device_id, seq, idx
LIMIT :limit
"""


# -- API queries: speeds, event pages, latest sensor values (see cloud.storage.base) -----------

_SPEED_SAMPLES = """
SELECT ts_us - ((ts_us % :bucket) + :bucket) % :bucket AS bucket_us, device_id, site, line, cls, speed_kmh
FROM events
WHERE ts_us >= :start AND ts_us < :end AND speed_kmh IS NOT NULL
  AND (:device_id IS NULL OR device_id = :device_id)
  AND (:site IS NULL OR site = :site)
  AND (:line IS NULL OR line = :line)
  AND (:cls IS NULL OR cls = :cls)
  AND (:direction IS NULL OR direction = :direction)
  AND (:type IS NULL OR type = :type)
LIMIT :limit
"""

# Keyset paging on (ts_us, event_id): :start is already raised to the cursor's ts, so the OR only
# separates the events that share that ts.
_EVENTS_AFTER = """
SELECT device_id, site, model_version, ts_us, event_id, type, stream, cls, track_id, line, direction,
       confidence, speed_kmh
FROM events
WHERE ts_us >= :start AND ts_us < :end
  AND (:after_ts IS NULL OR ts_us > :after_ts OR event_id > :after_id)
  AND (:device_id IS NULL OR device_id = :device_id)
  AND (:site IS NULL OR site = :site)
  AND (:type IS NULL OR type = :type)
ORDER BY ts_us, event_id
LIMIT :limit
"""

_LATEST_SENSORS = """
SELECT device_id, site, ts_us, sensor, quantity, value, unit, quality
FROM (
    SELECT *, ROW_NUMBER() OVER (
        PARTITION BY device_id, sensor, quantity ORDER BY ts_us DESC, seq DESC, idx DESC
    ) AS newest
    FROM sensors
    WHERE ts_us >= :start AND ts_us < :end
      AND (:device_id IS NULL OR device_id = :device_id)
      AND (:site IS NULL OR site = :site)
      AND (:sensor IS NULL OR sensor = :sensor)
      AND (:quantity IS NULL OR quantity = :quantity)
)
WHERE newest = 1
ORDER BY device_id, sensor, quantity
LIMIT :limit
"""


def _reading(row: tuple[Any, ...]) -> StoredReading:
    device_id, site, ts_us, sensor, quantity, value, unit, quality = row
    reading = SensorReading(
        ts=from_epoch_us(ts_us), sensor=sensor, quantity=quantity, value=value, unit=unit, quality=quality
    )
    return StoredReading(device_id, site, reading)


_INSERT_COUNTS = (
    "INSERT OR IGNORE INTO counts (device_id, seq, idx, site, model_version, interval_start_us,"
    " interval_s, line, cls, direction, lane, count) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)
_INSERT_EVENTS = (
    "INSERT OR IGNORE INTO events (device_id, seq, idx, site, model_version, ts_us, event_id, type,"
    " stream, cls, track_id, line, direction, confidence, speed_kmh)"
    " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)
_INSERT_SENSORS = (
    "INSERT OR IGNORE INTO sensors (device_id, seq, idx, site, ts_us, sensor, quantity, value,"
    " unit, quality) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)
_INSERT_HEALTH = (
    "INSERT OR IGNORE INTO health (device_id, seq, site, model_version, ts_us, provider, report)"
    " VALUES (?, ?, ?, ?, ?, ?, ?)"
)


_INGESTED_CHUNK: Final = 500  # rows per INSERT: 2,000 parameters, far below SQLite's limit


def _mark_ingested(
    db: sqlite3.Connection, batches: Sequence[IngestBatch], stored_us: int
) -> set[tuple[str, int]]:
    """Insert every envelope's ``(device, seq)`` mark; return the marks that were new.

    One multi-row ``INSERT OR IGNORE ... RETURNING`` per chunk instead of one statement per
    envelope: the statement overhead was a seventh of the write. ``RETURNING`` names exactly
    the rows inserted, so a redelivery (already marked) is not returned.
    """
    fresh: set[tuple[str, int]] = set()
    for start in range(0, len(batches), _INGESTED_CHUNK):
        chunk = batches[start : start + _INGESTED_CHUNK]
        values = ", ".join(["(?, ?, ?, ?)"] * len(chunk))
        params: list[object] = []
        for batch in chunk:
            origin = batch.origin
            params += (origin.device_id, origin.seq, origin.site, stored_us)
        rows = db.execute(
            f"INSERT OR IGNORE INTO ingested (device_id, seq, site, stored_us) VALUES {values}"  # noqa: S608 (placeholders only)
            " RETURNING device_id, seq",
            params,
        ).fetchall()
        fresh.update((device_id, seq) for device_id, seq in rows)
    return fresh


class SqliteStore:
    """``TimeSeriesStore`` in one SQLite file (or ``":memory:"`` for tests)."""

    def __init__(self, path: Path | str) -> None:
        self._path = str(path)
        self._lock = threading.Lock()
        self._closed = False
        try:
            if self._path != ":memory:":
                Path(self._path).parent.mkdir(parents=True, exist_ok=True)
            # Autocommit mode: transactions are opened explicitly, one per write.
            self._db = sqlite3.connect(self._path, check_same_thread=False, isolation_level=None)
        except (OSError, sqlite3.Error) as exc:
            raise self._unopenable(exc) from exc
        try:
            self._db.execute(f"PRAGMA busy_timeout={_BUSY_TIMEOUT_MS}")
            self._db.execute("PRAGMA journal_mode=WAL")
            # FULL: a write that returned survives power loss, not only a process crash.
            self._db.execute("PRAGMA synchronous=FULL")
            self._migrate()
        except (OSError, sqlite3.Error, ConfigError) as exc:
            self._db.close()
            if isinstance(exc, ConfigError):
                raise
            raise self._unopenable(exc) from exc

    def _unopenable(self, exc: Exception) -> ConfigError:
        return ConfigError(
            f"cannot open the telemetry database at {self._path}: {exc}; "
            "check the path points to a writable SQLite file"
        )

    def _migrate(self) -> None:
        version = int(self._db.execute("PRAGMA user_version").fetchone()[0])
        if version > SCHEMA_VERSION:
            raise ConfigError(
                f"{self._path} has schema version {version}, newer than this hub's {SCHEMA_VERSION}; "
                "upgrade the hub"
            )
        self._db.executescript(_SCHEMA)
        self._db.executescript(_RETENTION_SCHEMA)
        self._db.executescript(signals_sqlite.SCHEMA)
        self._db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")

    @contextmanager
    def _connection(self) -> Iterator[sqlite3.Connection]:
        """The connection under the lock, with SQLite errors translated."""
        with self._lock:
            if self._closed:
                raise TransportError(f"the telemetry database {self._path} is closed")
            try:
                yield self._db
            except sqlite3.OperationalError as exc:
                # Locked beyond busy_timeout, disk full, I/O error: the caller may retry later.
                raise TransportError(f"telemetry database {self._path}: {exc}") from exc

    # -- writes ---------------------------------------------------------------

    def write(self, batches: Sequence[IngestBatch]) -> None:
        """Store the batches in one transaction; envelopes stored before are skipped."""
        if not batches:
            return
        stored_us = time.time_ns() // 1000
        with self._connection() as db:
            db.execute("BEGIN IMMEDIATE")
            try:
                fresh = self._insert(db, batches, stored_us)
                db.execute("COMMIT")
            except BaseException:
                # SQLite may have rolled back already (a failed COMMIT); a second ROLLBACK would
                # hide the real error.
                if db.in_transaction:
                    db.execute("ROLLBACK")
                raise
        log.debug("stored %s of %s envelopes", fresh, len(batches))

    @staticmethod
    def _insert(db: sqlite3.Connection, batches: Sequence[IngestBatch], stored_us: int) -> int:
        """Insert every fresh envelope's records: one ``executemany`` per table for the whole
        write, which is most of the ingest throughput on SQLite. The minutes they fall in are
        marked for the rollups here, once per minute, not by a trigger per row."""
        counts: list[tuple[object, ...]] = []
        events: list[tuple[object, ...]] = []
        sensors: list[tuple[object, ...]] = []
        health: list[tuple[object, ...]] = []
        times: dict[str, set[int]] = {"counts": set(), "events": set(), "sensors": set()}
        fresh = 0
        fresh_batches: list[IngestBatch] = []
        unseen = _mark_ingested(db, batches, stored_us)
        for batch in batches:
            origin = batch.origin
            key = (origin.device_id, origin.seq)
            if key not in unseen:
                continue  # committed whole by an earlier write (a redelivery), or earlier in this one
            unseen.discard(key)
            fresh += 1
            site = origin.site
            if n := len(batch.counts):
                c = batch.counts
                counts += zip(
                    repeat(key[0], n), repeat(key[1], n), range(n), repeat(site, n), c.model_version,
                    c.interval_start_us, c.interval_s, c.line, c.cls, c.direction, c.lane, c.count, strict=True,
                )  # fmt: skip
                times["counts"].update(c.interval_start_us)
            if batch.events:
                event_rows = [
                    (*key, i, site, e.model_version, to_epoch_us(e.ts), str(e.event_id), e.type, e.stream, e.cls,
                     e.track_id, e.line, e.direction, e.confidence, e.speed_kmh)
                    for i, e in enumerate(batch.events)
                ]  # fmt: skip
                events += event_rows
                times["events"].update(row[5] for row in event_rows)
            if batch.sensors:
                sensor_rows = [
                    (*key, i, site, to_epoch_us(r.ts), r.sensor, r.quantity, r.value, r.unit, r.quality)
                    for i, r in enumerate(batch.sensors)
                ]
                sensors += sensor_rows
                times["sensors"].update(row[4] for row in sensor_rows)
            fresh_batches.append(batch)
            if batch.health is not None:
                h = batch.health
                health.append(
                    (*key, site, h.model_version, to_epoch_us(h.ts), h.provider, h.model_dump_json())
                )
        for sql, rows in (
            (_INSERT_COUNTS, counts), (_INSERT_EVENTS, events), (_INSERT_SENSORS, sensors), (_INSERT_HEALTH, health)
        ):  # fmt: skip
            if rows:
                db.executemany(sql, rows)
        dirty = {(kind, t - t % _MINUTE_US) for kind, ts in times.items() for t in ts}
        if dirty:
            db.executemany(_MARK_MINUTE, dirty)
        signals_sqlite.insert(db, fresh_batches)
        return fresh

    # -- reads ----------------------------------------------------------------

    def count_buckets(self, query: CountQuery) -> list[CountBucket]:
        """Counts summed per bucket, ordered by bucket start then device, line, class, direction;
        summed over each site's devices when ``query.per_device`` is false."""
        if query.bucket_s <= 0:
            raise ValueError(f"bucket_s must be positive, not {query.bucket_s}")
        params = {
            **_window(query.start, query.end),
            "bucket": query.bucket_s * 1_000_000,
            "device_id": query.device_id,
            "site": query.site,
            "line": query.line,
            "cls": query.cls,
            "direction": query.direction,
        }
        with self._connection() as db:
            rows = _count_rows(db, query, params)
        return [CountBucket(from_epoch_us(r[0]), r[1], r[2], r[3], r[4], r[5], int(r[6])) for r in rows]

    def events(self, query: EventQuery) -> list[StoredEvent]:
        """Events in the window, oldest first, at most ``query.limit``."""
        params = {
            **_window(query.start, query.end),
            "limit": max(query.limit, 0),
            "device_id": query.device_id,
            "site": query.site,
            "type": query.type,
        }
        with self._connection() as db:
            rows = db.execute(_EVENTS, params).fetchall()
        return [_stored_event(r) for r in rows]

    def sensor_series(self, query: SensorQuery) -> list[StoredReading]:
        """Sensor readings in the window, oldest first, at most ``query.limit``."""
        params = {
            **_window(query.start, query.end),
            "limit": max(query.limit, 0),
            "device_id": query.device_id,
            "site": query.site,
            "sensor": query.sensor,
            "quantity": query.quantity,
        }
        with self._connection() as db:
            rows = db.execute(_SENSOR_SERIES, params).fetchall()
        return [
            StoredReading(
                r[0],
                r[1],
                SensorReading(
                    ts=from_epoch_us(r[2]),
                    sensor=r[3],
                    quantity=r[4],
                    value=r[5],
                    unit=r[6],
                    quality=r[7],
                ),
            )
            for r in rows
        ]

    def latest_health(self, device_id: str) -> Health | None:
        """The device's health report with the latest ``ts``, or ``None`` if it never sent one."""
        with self._connection() as db:
            row = db.execute(
                "SELECT report FROM health WHERE device_id = ? ORDER BY ts_us DESC, seq DESC LIMIT 1",
                (device_id,),
            ).fetchone()
        return None if row is None else Health.model_validate_json(row[0])

    def health_history(self, query: HealthQuery) -> list[Health]:
        """SupportsHealthHistory: the latest report per step (SQLite's bare column beside MAX picks
        that row), the newest ``limit`` of them, oldest first."""
        if query.limit <= 0:
            return []
        start_us, end_us = to_epoch_us(query.start), to_epoch_us(query.end)
        if query.step_s > 0:
            step_us = query.step_s * 1_000_000
            sql = (
                "SELECT report, MAX(ts_us) FROM health"  # noqa: S608 (constants and an int)
                " WHERE device_id = ? AND ts_us >= ? AND ts_us < ?"
                f" GROUP BY {_floor_sql('ts_us', str(step_us))} ORDER BY 2 DESC LIMIT ?"
            )
        else:
            sql = (
                "SELECT report, ts_us FROM health WHERE device_id = ? AND ts_us >= ? AND ts_us < ?"
                " ORDER BY ts_us DESC, seq DESC LIMIT ?"
            )
        with self._connection() as db:
            rows = db.execute(sql, (query.device_id, start_us, end_us, query.limit)).fetchall()
        return [Health.model_validate_json(r[0]) for r in reversed(rows)]

    def latest_health_many(self, device_ids: Sequence[str]) -> dict[str, Health]:
        """SupportsHealthHistory: each device's latest report, one indexed lookup each, the lock taken
        per hundred devices (ingest writes wait at most that long, not for a whole fleet's lookups)."""
        found: dict[str, str] = {}
        for start in range(0, len(device_ids), 100):
            with self._connection() as db:
                for device_id in device_ids[start : start + 100]:
                    row = db.execute(
                        "SELECT report FROM health WHERE device_id = ? ORDER BY ts_us DESC, seq DESC LIMIT 1",
                        (device_id,),
                    ).fetchone()
                    if row is not None:
                        found[device_id] = row[0]
        return {device_id: Health.model_validate_json(report) for device_id, report in found.items()}

    # -- API queries (SupportsSpeedSamples, SupportsEventKeyset, SupportsLatestSensors) ---------

    def speed_samples(self, query: SpeedQuery) -> list[SpeedSample]:
        """Events with a speed, with their bucket, at most ``query.max_samples + 1``."""
        if query.bucket_s <= 0:
            raise ValueError(f"bucket_s must be positive, not {query.bucket_s}")
        params = {
            **_window(query.start, query.end),
            "bucket": query.bucket_s * 1_000_000,
            "limit": max(query.max_samples, 0) + 1,
            "device_id": query.device_id,
            "site": query.site,
            "line": query.line,
            "cls": query.cls,
            "direction": query.direction,
            "type": query.type,
        }
        with self._connection() as db:
            rows = db.execute(_SPEED_SAMPLES, params).fetchall()
        return [SpeedSample(from_epoch_us(r[0]), r[1], r[2], r[3], r[4], float(r[5])) for r in rows]

    def events_after(self, query: EventQuery, after: EventKey | None) -> list[StoredEvent]:
        """Events in the window after ``after``, ordered by ``(ts, event_id)``, at most ``query.limit``."""
        params: dict[str, object] = {
            **_window(query.start, query.end),
            "after_ts": None,
            "after_id": None,
            "limit": max(query.limit, 0),
            "device_id": query.device_id,
            "site": query.site,
            "type": query.type,
        }
        if after is not None:
            params["start"] = max(to_epoch_us(query.start), after.ts_us)
            params["after_ts"], params["after_id"] = after.ts_us, after.event_id
        with self._connection() as db:
            rows = db.execute(_EVENTS_AFTER, params).fetchall()
        return [_stored_event(r) for r in rows]

    def latest_sensors(self, query: LatestSensorQuery) -> list[StoredReading]:
        """The newest reading per (device, sensor, quantity) in the window."""
        params = {
            **_window(query.start, query.end),
            "limit": max(query.limit, 0),
            "device_id": query.device_id,
            "site": query.site,
            "sensor": query.sensor,
            "quantity": query.quantity,
        }
        with self._connection() as db:
            rows = db.execute(_LATEST_SENSORS, params).fetchall()
        return [_reading(r) for r in rows]

    # -- signal control (SupportsSignals; roadside.cloud.storage.signals_sqlite) ----

    def detector_changes(self, query: DetectorQuery) -> list[StoredDetectorChange]:
        with self._connection() as db:
            return signals_sqlite.detector_changes(db, query)

    def turning_movements(self, query: IntervalQuery) -> list[StoredMovement]:
        with self._connection() as db:
            return signals_sqlite.turning_movements(db, query)

    def zone_statistics(self, query: IntervalQuery) -> list[StoredZoneStat]:
        with self._connection() as db:
            return signals_sqlite.zone_statistics(db, query)

    def write_controller_events(self, signal_id: str, events: Sequence[ControllerEvent]) -> None:
        if not events:
            return
        with self._connection() as db:
            db.execute("BEGIN IMMEDIATE")
            try:
                signals_sqlite.write_controller_events(db, signal_id, events)
                db.execute("COMMIT")
            except BaseException:
                if db.in_transaction:
                    db.execute("ROLLBACK")
                raise

    def controller_events(
        self, signal_id: str, start: datetime, end: datetime, limit: int
    ) -> list[ControllerEvent]:
        with self._connection() as db:
            return signals_sqlite.controller_events(
                db, signal_id, to_epoch_us(start), to_epoch_us(end), limit
            )

    def recent_sequences(self, device_id: str, window: int) -> list[int]:
        """Sequence numbers stored for the device in ``(highest - window, highest]``, ascending."""
        if window <= 0:
            return []
        with self._connection() as db:
            rows = db.execute(
                "SELECT seq FROM ingested WHERE device_id = :d AND seq >"
                " (SELECT MAX(seq) FROM ingested WHERE device_id = :d) - :w ORDER BY seq",
                {"d": device_id, "w": window},
            ).fetchall()
        return [int(r[0]) for r in rows]

    def ping(self) -> None:
        """Raise ``TransportError`` if the database cannot be read."""
        with self._connection() as db:
            db.execute("SELECT 1 FROM ingested LIMIT 1").fetchall()

    def close(self) -> None:
        """Close the database; later calls raise ``TransportError``. Closing twice is harmless."""
        with self._lock:
            if not self._closed:
                self._closed = True
                self._db.close()

    # -- retention (see cloud.storage.retention and the end of this module) -----

    def apply_retention(self, policy: RetentionPolicy, now: datetime) -> RetentionReport:
        """Roll closed buckets up, then delete raw and rollup rows past ``policy``: one transaction.

        Safe to rerun at any time: a recomputed bucket replaces its rollup rows, and a late row
        older than the watermark is added once and deleted in the same transaction. Holds the
        store's lock while it runs; writes wait (the first run over a large database is the
        slow one).
        """
        now_us = to_epoch_us(now)
        with self._connection() as db:
            db.execute("BEGIN IMMEDIATE")
            try:
                report = self._apply_retention(db, policy, now_us)
                db.execute("COMMIT")
            except BaseException:
                if db.in_transaction:
                    db.execute("ROLLBACK")
                raise
        log.debug("retention rolled %s and deleted %s", dict(report.rolled), dict(report.deleted))
        return report

    @staticmethod
    def _apply_retention(db: sqlite3.Connection, policy: RetentionPolicy, now_us: int) -> RetentionReport:
        row = db.execute(
            "SELECT raw_from_us, minute_from_us, hour_from_us FROM retention_state WHERE id = 1"
        ).fetchone()
        if row is None:
            # The first run also marks records written before the triggers existed (an older file).
            for kind in _ROLLUP_KINDS:
                db.execute(kind.mark_all_sql())
            row = (_NO_WATERMARK, _NO_WATERMARK, _NO_WATERMARK)
        rolled = _roll_up(db, now_us, watermark_us=int(row[0]))
        now = from_epoch_us(now_us)
        # A cut never moves back (a longer policy, a clock set back): what was deleted is gone.
        raw_from, minute_from, hour_from = (
            max(int(previous), to_epoch_us(policy.cut(tier, now)))
            for previous, tier in zip(row, _TIERS, strict=True)
        )
        deleted = _expire(db, raw_from, minute_from, hour_from)
        # The signal event log is kept as long as minute rollups, its interval summaries as hourly ones.
        deleted.update(signals_sqlite.expire(db, minute_from, hour_from))
        db.execute(
            "INSERT OR REPLACE INTO retention_state (id, raw_from_us, minute_from_us, hour_from_us, run_us)"
            " VALUES (1, ?, ?, ?, ?)",
            (raw_from, minute_from, hour_from, now_us),
        )
        coverage = Coverage(from_epoch_us(raw_from), from_epoch_us(minute_from))
        return RetentionReport(coverage, rolled, deleted)


def _window(start: datetime, end: datetime) -> dict[str, int]:
    return {"start": to_epoch_us(start), "end": to_epoch_us(end)}


def _stored_event(row: tuple[Any, ...]) -> StoredEvent:
    (
        device_id,
        site,
        model_version,
        ts_us,
        event_id,
        type_,
        stream,
        cls,
        track_id,
        line,
        direction,
        confidence,
        speed_kmh,
    ) = row
    fields = {
        "event_id": event_id,
        "ts": from_epoch_us(ts_us),
        "type": type_,
        "stream": stream,
        "cls": cls,
        "track_id": track_id,
        "line": line,
        "direction": direction,
        "confidence": confidence,
        "speed_kmh": speed_kmh,
        "model_version": model_version,
    }
    return StoredEvent(device_id, site, DetectionEvent.model_validate(fields))


# -- retention and rollups (see cloud.storage.retention) -------------------------------------------
#
# Every write into counts, events or sensors marks the UTC minutes it touched in rollup_dirty, in
# the same transaction (``_insert``, once per minute: a trigger per row cost a fifth of the SQL). A
# retention run rolls the marked minutes that have closed into the 1-minute tables and marks
# their hours instead; marked hours that have closed go into the 1-hour tables. Then it deletes
# what is past retention, all in one transaction. Each bucket is recomputed once per arrival.
#
# retention_state.raw_from_us is the watermark: raw rows are complete from it on, and everything
# older lives in the rollups. A marked bucket at or after it is recomputed from raw and replaces
# its rollup rows, so a rerun never double-counts. A marked bucket before it holds only records
# that arrived after their raw neighbours were deleted: those are added to the rollup rows and
# deleted in the same transaction, so each is added once.

_TIERS: Final[tuple[Tier, ...]] = ("raw", "minute", "hour")
_MINUTE_US: Final = 60_000_000
_HOUR_US: Final = 3_600_000_000
# Before any run nothing was deleted yet: raw data is complete from the beginning of time.
_NO_WATERMARK: Final = -(2**62)


def _floor_sql(column: str, width: str) -> str:
    # Floor division that also holds before 1970: SQLite's % keeps the sign of the dividend.
    return f"{column} - (({column} % {width}) + {width}) % {width}"


@dataclass(frozen=True, slots=True)
class _RollupKind:
    """How one raw table rolls up. Every name here is a constant of this module, never input."""

    raw: str
    time_col: str
    keys: tuple[str, ...]
    values: tuple[tuple[str, str], ...]  # (rollup column, aggregate over the raw rows ``r``)
    merge: tuple[str, ...]  # how late rows are added to an existing rollup row
    where: str = "1"

    def table(self, width_us: int) -> str:
        return f"{self.raw}_{'1m' if width_us == _MINUTE_US else '1h'}"

    def recompute_sql(self, width_us: int, *, late: bool) -> str:
        """Roll the marked, closed buckets of ``width_us``: at or after the watermark by
        recomputing them from raw (``late=False``), before it by adding the late rows."""
        keys = ", ".join(self.keys)
        raw_keys = ", ".join(f"r.{k}" for k in self.keys)
        columns = ", ".join(c for c, _ in self.values)
        aggregates = ", ".join(a for _, a in self.values)
        side = "d.bucket_us < :watermark" if late else "d.bucket_us >= :watermark"
        verb = "INSERT" if late else "INSERT OR REPLACE"
        upsert = f" ON CONFLICT (bucket_us, {keys}) DO UPDATE SET {', '.join(self.merge)}" if late else ""
        # The WHERE clause also keeps SQLite from reading ON CONFLICT as a join constraint.
        return (
            f"{verb} INTO {self.table(width_us)} (bucket_us, {keys}, {columns})"  # noqa: S608 (names are constants)
            f" SELECT d.bucket_us, {raw_keys}, {aggregates}"
            f" FROM (SELECT bucket_us FROM rollup_dirty"
            f" WHERE kind = '{self.raw}' AND width_us = :width AND bucket_us < :closed) d JOIN {self.raw} r"
            f" ON r.{self.time_col} >= d.bucket_us AND r.{self.time_col} < d.bucket_us + :width"
            f" WHERE {side} AND {self.where} GROUP BY d.bucket_us, {raw_keys}{upsert}"
        )

    def mark_all_sql(self) -> str:
        return (
            f"INSERT OR IGNORE INTO rollup_dirty (kind, width_us, bucket_us) SELECT DISTINCT '{self.raw}',"  # noqa: S608 (names are constants)
            f" {_MINUTE_US}, {_floor_sql(self.time_col, str(_MINUTE_US))} FROM {self.raw}"
        )

    def drop_trigger_sql(self) -> str:
        # Hubs before this release marked minutes with a trigger per inserted row (a fifth of
        # the SQL cost of a counts write); ``_insert`` marks them now, once per minute.
        return f"DROP TRIGGER IF EXISTS {self.raw}_mark_rollup;"


_ROLLUP_KINDS: Final = (
    _RollupKind(
        "counts",
        "interval_start_us",
        ("device_id", "site", "model_version", "line", "cls", "direction"),
        (("count", "SUM(r.count)"),),
        ("count = count + excluded.count",),
    ),
    _RollupKind(
        "sensors",
        "ts_us",
        ("device_id", "site", "sensor", "quantity"),
        (
            ("n", "COUNT(*)"),
            ("value_sum", "SUM(r.value)"),
            ("value_min", "MIN(r.value)"),
            ("value_max", "MAX(r.value)"),
            ("unit", "MAX(r.unit)"),
        ),
        (
            "n = n + excluded.n",
            "value_sum = value_sum + excluded.value_sum",
            "value_min = MIN(value_min, excluded.value_min)",
            "value_max = MAX(value_max, excluded.value_max)",
            "unit = excluded.unit",
        ),
        # A stuck or spiking sensor must not set an hour's maximum.
        where="r.quality = 'ok'",
    ),
    _RollupKind(
        "events",
        "ts_us",
        ("device_id", "site", "model_version", "type"),
        (("count", "COUNT(*)"),),
        ("count = count + excluded.count",),
    ),
)

_ROLLUP_TABLES = """
CREATE TABLE IF NOT EXISTS counts_{w} (
    bucket_us INTEGER NOT NULL,
    device_id TEXT NOT NULL,
    site TEXT NOT NULL,
    model_version TEXT NOT NULL,
    line TEXT NOT NULL,
    cls TEXT NOT NULL,
    direction TEXT NOT NULL,
    count INTEGER NOT NULL,
    PRIMARY KEY (bucket_us, device_id, site, model_version, line, cls, direction)
) WITHOUT ROWID;

-- Only readings of quality 'ok'; the mean is value_sum / n.
CREATE TABLE IF NOT EXISTS sensors_{w} (
    bucket_us INTEGER NOT NULL,
    device_id TEXT NOT NULL,
    site TEXT NOT NULL,
    sensor TEXT NOT NULL,
    quantity TEXT NOT NULL,
    n INTEGER NOT NULL,
    value_sum REAL NOT NULL,
    value_min REAL NOT NULL,
    value_max REAL NOT NULL,
    unit TEXT NOT NULL,
    PRIMARY KEY (bucket_us, device_id, site, sensor, quantity)
) WITHOUT ROWID;

CREATE TABLE IF NOT EXISTS events_{w} (
    bucket_us INTEGER NOT NULL,
    device_id TEXT NOT NULL,
    site TEXT NOT NULL,
    model_version TEXT NOT NULL,
    type TEXT NOT NULL,
    count INTEGER NOT NULL,
    PRIMARY KEY (bucket_us, device_id, site, model_version, type)
) WITHOUT ROWID;
"""

_RETENTION_SCHEMA = (
    """
-- Buckets of kind ('counts', 'sensors', 'events') to roll up: minutes written to since they
-- were rolled (width_us 60000000), and hours whose minutes were rolled (3600000000).
CREATE TABLE IF NOT EXISTS rollup_dirty (
    kind TEXT NOT NULL,
    width_us INTEGER NOT NULL,
    bucket_us INTEGER NOT NULL,
    PRIMARY KEY (kind, width_us, bucket_us)
) WITHOUT ROWID;

-- One row once retention has run: where each tier is complete from.
CREATE TABLE IF NOT EXISTS retention_state (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    raw_from_us INTEGER NOT NULL,
    minute_from_us INTEGER NOT NULL,
    hour_from_us INTEGER NOT NULL,
    run_us INTEGER NOT NULL
);
"""
    + _ROLLUP_TABLES.format(w="1m")
    + _ROLLUP_TABLES.format(w="1h")
    + "\n".join(kind.drop_trigger_sql() for kind in _ROLLUP_KINDS)
)

# A minute written to (``_insert``): marked once per write, however many rows fall in it.
_MARK_MINUTE = f"INSERT OR IGNORE INTO rollup_dirty (kind, width_us, bucket_us) VALUES (?, {_MINUTE_US}, ?)"  # noqa: S608 (a constant)

# A rolled minute's hour is rolled when the hour closes (in this run already, for a late record).
_MARK_HOURS_OF_ROLLED_MINUTES = (
    f"INSERT OR IGNORE INTO rollup_dirty (kind, width_us, bucket_us) SELECT DISTINCT kind, {_HOUR_US},"  # noqa: S608 (constants)
    f" {_floor_sql('bucket_us', str(_HOUR_US))} FROM rollup_dirty WHERE width_us = :width AND bucket_us < :closed"
)

# The health report of each device's latest ts is kept past retention: "last heard from" stays answerable.
_DELETE_OLD_HEALTH = (
    "DELETE FROM health WHERE ts_us < :cut"
    " AND ts_us < (SELECT MAX(h.ts_us) FROM health h WHERE h.device_id = health.device_id)"
)

_COUNT_FILTERS = """(:device_id IS NULL OR device_id = :device_id)
    AND (:site IS NULL OR site = :site)
    AND (:line IS NULL OR line = :line)
    AND (:cls IS NULL OR cls = :cls)
    AND (:direction IS NULL OR direction = :direction)"""

# count_buckets once retention has run: each tier over its own part of the window, summed per
# bucket (a query bucket may straddle a tier boundary). An empty part has start = end.
_TIERED_COUNT_BUCKETS_SQL = f"""
SELECT bucket_us, device, site, line, cls, direction, SUM(n) FROM (
  SELECT {_floor_sql("interval_start_us", ":bucket")} AS bucket_us, {{device}} AS device, site, line, cls,
         direction, count AS n
  FROM counts WHERE interval_start_us >= :raw_start AND interval_start_us < :raw_end AND {_COUNT_FILTERS}
  UNION ALL
  SELECT {_floor_sql("bucket_us", ":bucket")}, {{device}}, site, line, cls, direction, count
  FROM counts_1m WHERE bucket_us >= :minute_start AND bucket_us < :minute_end AND {_COUNT_FILTERS}
  UNION ALL
  SELECT {_floor_sql("bucket_us", ":bucket")}, {{device}}, site, line, cls, direction, count
  FROM counts_1h WHERE bucket_us >= :hour_start AND bucket_us < :hour_end AND {_COUNT_FILTERS}
)
GROUP BY bucket_us, device, site, line, cls, direction
ORDER BY bucket_us, device, line, cls, direction, site
"""  # noqa: S608 (constants only; values are bound parameters)
_TIERED_COUNT_BUCKETS: Final = {
    True: _TIERED_COUNT_BUCKETS_SQL.format(device="device_id"),
    False: _TIERED_COUNT_BUCKETS_SQL.format(device=f"'{ALL_DEVICES}'"),
}


def _coverage(db: sqlite3.Connection) -> Coverage | None:
    row = db.execute("SELECT raw_from_us, minute_from_us FROM retention_state WHERE id = 1").fetchone()
    return None if row is None else Coverage(from_epoch_us(row[0]), from_epoch_us(row[1]))


def _count_rows(db: sqlite3.Connection, query: CountQuery, params: dict[str, Any]) -> list[Any]:
    """Raw rows while the window lies inside the raw tier; else each tier's part of it."""
    coverage = _coverage(db)
    if coverage is None or query.start >= coverage.raw_from:
        return db.execute(_COUNT_BUCKETS[query.per_device], params).fetchall()
    parts = dict.fromkeys(("raw", "minute", "hour"), (0, 0))
    for span in plan_spans(query.start, query.end, coverage):
        parts[span.tier] = (to_epoch_us(span.start), to_epoch_us(span.end))
    # Raw rows older than the raw tier exist only when they arrived late and the job has not
    # rolled them up yet (rolled rows are deleted in the same transaction): read raw over the
    # whole window, or late data would be invisible until the next retention run.
    parts["raw"] = (to_epoch_us(query.start), to_epoch_us(query.end))
    for tier, (start, end) in parts.items():
        params[f"{tier}_start"], params[f"{tier}_end"] = start, end
    return db.execute(_TIERED_COUNT_BUCKETS[query.per_device], params).fetchall()


def _roll_up(db: sqlite3.Connection, now_us: int, watermark_us: int) -> dict[str, int]:
    """Roll every marked minute and then every marked hour that has closed, and unmark them."""
    rolled: dict[str, int] = {}
    for width in (_MINUTE_US, _HOUR_US):
        params = {"width": width, "closed": now_us - now_us % width, "watermark": watermark_us}
        for kind in _ROLLUP_KINDS:
            n = sum(
                db.execute(kind.recompute_sql(width, late=late), params).rowcount for late in (False, True)
            )
            rolled[kind.table(width)] = n
        if width == _MINUTE_US:
            db.execute(_MARK_HOURS_OF_ROLLED_MINUTES, params)
        db.execute("DELETE FROM rollup_dirty WHERE width_us = :width AND bucket_us < :closed", params)
    return rolled


def _expire(db: sqlite3.Connection, raw_from: int, minute_from: int, hour_from: int) -> dict[str, int]:
    deleted = {
        "counts": db.execute("DELETE FROM counts WHERE interval_start_us < ?", (raw_from,)).rowcount,
        "events": db.execute("DELETE FROM events WHERE ts_us < ?", (raw_from,)).rowcount,
        "sensors": db.execute("DELETE FROM sensors WHERE ts_us < ?", (raw_from,)).rowcount,
        "health": db.execute(_DELETE_OLD_HEALTH, {"cut": raw_from}).rowcount,
    }
    for kind in _ROLLUP_KINDS:
        for width, cut in ((_MINUTE_US, minute_from), (_HOUR_US, hour_from)):
            table = kind.table(width)
            deleted[table] = db.execute(f"DELETE FROM {table} WHERE bucket_us < ?", (cut,)).rowcount  # noqa: S608
    return deleted
