"""The hub's air-quality store: measurements at three stages, calibration lineage, index history.

One SQLite file (``<home>/air.db``), WAL, one connection behind one lock,
like the embedded telemetry store. Measurements are keyed by
``(sensor_id, stage, ts)`` and written with ``INSERT OR IGNORE``: processing
the same readings again (a rescan for late data, a restart) stores nothing
twice and **never rewrites a stored value**, so a calibrated value keeps the
calibration version it was computed with after the configuration changes.
Every calibration version used is recorded once with its fingerprint and
numbers (``calibrations``), so a label read back names exactly one formula.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Final

from roadside.cloud.air.stages import Measurement, Stage
from roadside.shared.air.calibration import CalibrationVersion
from roadside.shared.air.standards import IndexReport
from roadside.shared.errors import TransportError

_SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS measurements (
    sensor_id TEXT NOT NULL,       -- device.sensor.parameter
    stage TEXT NOT NULL,
    ts_us INTEGER NOT NULL,
    location TEXT NOT NULL,
    sensor TEXT NOT NULL,
    parameter TEXT NOT NULL,
    value REAL NOT NULL,
    unit TEXT NOT NULL,
    flags TEXT NOT NULL,           -- comma-separated, sorted
    calibration TEXT,              -- the version's label, calibrated stage only
    PRIMARY KEY (sensor_id, stage, ts_us)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS measurements_location ON measurements (location, stage, ts_us);

CREATE TABLE IF NOT EXISTS calibrations (
    label TEXT PRIMARY KEY,
    fingerprint TEXT NOT NULL,
    body TEXT NOT NULL
);

CREATE TABLE IF NOT EXISTS index_history (
    location TEXT NOT NULL,
    standard TEXT NOT NULL,
    hour_us INTEGER NOT NULL,      -- the hour the index was computed in (UTC epoch)
    overall INTEGER NOT NULL,
    category TEXT NOT NULL,
    responsible TEXT NOT NULL,
    body TEXT NOT NULL,
    PRIMARY KEY (location, standard, hour_us)
) WITHOUT ROWID;

CREATE TABLE IF NOT EXISTS emitted_events (
    event_id TEXT PRIMARY KEY
) WITHOUT ROWID;

CREATE TABLE IF NOT EXISTS state (
    key TEXT PRIMARY KEY,
    value INTEGER NOT NULL
);
"""


def sensor_id(device: str, sensor: str, parameter: str) -> str:
    return f"{device}.{sensor}.{parameter}"


@dataclass(frozen=True, slots=True)
class StoredMeasurement:
    sensor_id: str
    location: str
    measurement: Measurement


@dataclass(frozen=True, slots=True)
class StoredIndex:
    location: str
    standard: str
    hour: float  # epoch seconds
    report: dict[str, Any]


class AirStore:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        try:
            self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.executescript(_SCHEMA)
        except sqlite3.Error as exc:
            raise TransportError(f"cannot open the air store {path}: {exc}") from exc

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def write(
        self, rows: Iterable[tuple[str, str, Measurement]], versions: Iterable[CalibrationVersion] = ()
    ) -> int:
        """Stores (sensor_id, location, measurement) rows not stored yet; the number new."""
        values = [
            (
                sid,
                m.stage,
                round(m.ts * 1_000_000),
                loc,
                m.sensor,
                m.parameter,
                m.value,
                m.unit,
                ",".join(sorted(m.flags)),
                m.calibration,
            )
            for sid, loc, m in rows
        ]
        lineage = [(v.label, v.fingerprint, json.dumps(_version_body(v), sort_keys=True)) for v in versions]
        with self._lock, self._transaction():
            before = self._db.total_changes
            self._db.executemany(
                "INSERT OR IGNORE INTO measurements VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", values
            )
            new = self._db.total_changes - before
            self._db.executemany("INSERT OR IGNORE INTO calibrations VALUES (?, ?, ?)", lineage)
        return new

    def _transaction(self) -> _Transaction:
        return _Transaction(self._db)

    def measurements(
        self,
        *,
        stage: Stage,
        start: float,
        end: float,
        location: str | None = None,
        sensor_ids: Sequence[str] | None = None,
        limit: int = 100_000,
    ) -> list[StoredMeasurement]:
        """Measurements at ``stage`` with ``start <= ts < end``, oldest first."""
        where = ["stage = ?", "ts_us >= ?", "ts_us < ?"]
        args: list[Any] = [stage, round(start * 1_000_000), round(end * 1_000_000)]
        if location is not None:
            where.append("location = ?")
            args.append(location)
        if sensor_ids is not None:
            where.append(f"sensor_id IN ({','.join('?' * len(sensor_ids))})")
            args += list(sensor_ids)
        columns = "sensor_id, location, sensor, parameter, ts_us, value, unit, flags, calibration"
        clause = " AND ".join(where)  # fixed column names; every value is a bound parameter
        sql = f"SELECT {columns} FROM measurements WHERE {clause} ORDER BY ts_us, sensor_id LIMIT ?"  # noqa: S608
        with self._lock:
            rows = self._db.execute(sql, [*args, limit]).fetchall()
        return [_measurement(stage, *row) for row in rows]

    def calibration(self, label: str) -> dict[str, Any] | None:
        with self._lock:
            row = self._db.execute(
                "SELECT fingerprint, body FROM calibrations WHERE label = ?", (label,)
            ).fetchone()
        if row is None:
            return None
        return {"label": label, "fingerprint": row[0], **json.loads(row[1])}

    def record_index(self, location: str, standard: str, hour: float, report: IndexReport) -> None:
        body = json.dumps(report.to_json(), sort_keys=True)
        with self._lock, self._transaction():
            self._db.execute(
                "INSERT OR REPLACE INTO index_history VALUES (?, ?, ?, ?, ?, ?, ?)",
                (
                    location,
                    standard,
                    round(hour * 1_000_000),
                    report.overall,
                    report.category,
                    report.responsible,
                    body,
                ),
            )

    def index_history(self, location: str, standard: str, start: float, end: float) -> list[StoredIndex]:
        with self._lock:
            rows = self._db.execute(
                "SELECT hour_us, body FROM index_history WHERE location = ? AND standard = ? "
                "AND hour_us >= ? AND hour_us < ? ORDER BY hour_us",
                (location, standard, round(start * 1_000_000), round(end * 1_000_000)),
            ).fetchall()
        return [StoredIndex(location, standard, r[0] / 1_000_000, json.loads(r[1])) for r in rows]

    def latest_index(self, location: str, standard: str) -> StoredIndex | None:
        with self._lock:
            row = self._db.execute(
                "SELECT hour_us, body FROM index_history WHERE location = ? AND standard = ? "
                "ORDER BY hour_us DESC LIMIT 1",
                (location, standard),
            ).fetchone()
        return (
            None if row is None else StoredIndex(location, standard, row[0] / 1_000_000, json.loads(row[1]))
        )

    def claim_events(self, event_ids: Sequence[str]) -> set[str]:
        """The ids not emitted before, now marked emitted (each event leaves once)."""
        with self._lock, self._transaction():
            new = set()
            for event_id in event_ids:
                cursor = self._db.execute("INSERT OR IGNORE INTO emitted_events VALUES (?)", (event_id,))
                if cursor.rowcount:
                    new.add(event_id)
        return new

    def next_sequence(self) -> int:
        """A counter for the origin of the events the hub raises itself (one per batch)."""
        with self._lock, self._transaction():
            self._db.execute(
                "INSERT INTO state VALUES ('event_seq', 1) ON CONFLICT(key) DO UPDATE SET value = value + 1"
            )
            (value,) = self._db.execute("SELECT value FROM state WHERE key = 'event_seq'").fetchone()
        return int(value)


class _Transaction:
    def __init__(self, db: sqlite3.Connection) -> None:
        self._db = db

    def __enter__(self) -> None:
        self._db.execute("BEGIN IMMEDIATE")

    def __exit__(self, kind: object, exc: object, tb: object) -> None:
        self._db.execute("COMMIT" if kind is None else "ROLLBACK")


def _version_body(version: CalibrationVersion) -> dict[str, Any]:
    return {
        "sensor": version.sensor,
        "quantity": version.quantity,
        "parameter": version.parameter,
        "version": version.version,
        "valid_from": version.valid_from,
        "method": asdict(version.method),
    }


def _measurement(
    stage: Stage,
    sid: str,
    location: str,
    sensor: str,
    parameter: str,
    ts_us: int,
    value: float,
    unit: str,
    flags: str,
    calibration: str | None,
) -> StoredMeasurement:
    m = Measurement(
        ts_us / 1_000_000, sensor, parameter, value, unit, stage,
        frozenset(f for f in flags.split(",") if f), calibration,
    )  # fmt: skip
    return StoredMeasurement(sid, location, m)
