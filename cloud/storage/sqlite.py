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
from datetime import datetime
from pathlib import Path
from typing import Any, Final

from cloud.storage.base import (
    CountBucket,
    CountQuery,
    EventQuery,
    IngestBatch,
    SensorQuery,
    StoredEvent,
    StoredReading,
    from_epoch_us,
    to_epoch_us,
)
from shared.errors import ConfigError, TransportError
from shared.schemas import DetectionEvent, Health, SensorReading

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
_COUNT_BUCKETS = """
SELECT interval_start_us - ((interval_start_us % :bucket) + :bucket) % :bucket AS bucket_us,
       device_id, site, line, cls, direction, SUM(count)
FROM counts
WHERE interval_start_us >= :start AND interval_start_us < :end
  AND (:device_id IS NULL OR device_id = :device_id)
  AND (:site IS NULL OR site = :site)
  AND (:line IS NULL OR line = :line)
  AND (:cls IS NULL OR cls = :cls)
  AND (:direction IS NULL OR direction = :direction)
GROUP BY bucket_us, device_id, site, line, cls, direction
ORDER BY bucket_us, device_id, line, cls, direction, site
"""

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
        write, which is most of the ingest throughput on SQLite."""
        counts: list[tuple[object, ...]] = []
        events: list[tuple[object, ...]] = []
        sensors: list[tuple[object, ...]] = []
        health: list[tuple[object, ...]] = []
        fresh = 0
        for batch in batches:
            origin = batch.origin
            key = (origin.device_id, origin.seq)
            cursor = db.execute(
                "INSERT OR IGNORE INTO ingested (device_id, seq, site, stored_us) VALUES (?, ?, ?, ?)",
                (*key, origin.site, stored_us),
            )
            if cursor.rowcount == 0:
                continue  # already committed whole by an earlier write: a redelivery
            fresh += 1
            site = origin.site
            counts += [
                (*key, i, site, c.model_version, to_epoch_us(c.interval_start), c.interval_s, c.line, c.cls,
                 c.direction, c.lane, c.count)
                for i, c in enumerate(batch.counts)
            ]  # fmt: skip
            events += [
                (*key, i, site, e.model_version, to_epoch_us(e.ts), str(e.event_id), e.type, e.stream, e.cls,
                 e.track_id, e.line, e.direction, e.confidence, e.speed_kmh)
                for i, e in enumerate(batch.events)
            ]  # fmt: skip
            sensors += [
                (*key, i, site, to_epoch_us(r.ts), r.sensor, r.quantity, r.value, r.unit, r.quality)
                for i, r in enumerate(batch.sensors)
            ]
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
        return fresh

    # -- reads ----------------------------------------------------------------

    def count_buckets(self, query: CountQuery) -> list[CountBucket]:
        """Counts summed per bucket, ordered by bucket start then device, line, class, direction."""
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
            rows = db.execute(_COUNT_BUCKETS, params).fetchall()
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
