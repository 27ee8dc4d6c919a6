"""SQLite tables and statements for signal control (used by :class:`roadside.cloud.storage.sqlite.SqliteStore`).

Pure SQL and row conversion over a connection the store owns (its lock,
its transaction); kept apart from the store's own tables so each reads alone.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from typing import Any, Final

from roadside.cloud.storage.base import IngestBatch, from_epoch_us
from roadside.cloud.storage.signals import (
    ControllerEvent,
    DetectorQuery,
    IntervalQuery,
    StoredDetectorChange,
    StoredMovement,
    StoredZoneStat,
)
from roadside.shared.limits import to_epoch_us
from roadside.shared.schemas import DetectorChange, TurningMovement, ZoneStat

SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS detector_changes (
    device_id TEXT NOT NULL, seq INTEGER NOT NULL, idx INTEGER NOT NULL, site TEXT NOT NULL,
    ts_us INTEGER NOT NULL, stream TEXT NOT NULL, zone TEXT NOT NULL, zone_kind TEXT NOT NULL,
    state TEXT NOT NULL, reason TEXT, occupants INTEGER,
    PRIMARY KEY (device_id, seq, idx)
);
CREATE INDEX IF NOT EXISTS detector_changes_ts ON detector_changes (ts_us, device_id);
CREATE TABLE IF NOT EXISTS movements (
    device_id TEXT NOT NULL, seq INTEGER NOT NULL, idx INTEGER NOT NULL, site TEXT NOT NULL,
    interval_start_us INTEGER NOT NULL, interval_s INTEGER NOT NULL, stream TEXT NOT NULL,
    entry TEXT NOT NULL, exit TEXT NOT NULL, cls TEXT NOT NULL, count INTEGER NOT NULL,
    PRIMARY KEY (device_id, seq, idx)
);
CREATE INDEX IF NOT EXISTS movements_start ON movements (interval_start_us, device_id);
CREATE TABLE IF NOT EXISTS zone_stats (
    device_id TEXT NOT NULL, seq INTEGER NOT NULL, idx INTEGER NOT NULL, site TEXT NOT NULL,
    interval_start_us INTEGER NOT NULL, interval_s INTEGER NOT NULL, stream TEXT NOT NULL,
    zone TEXT NOT NULL, volume INTEGER NOT NULL, occupancy REAL NOT NULL, mean_speed_kmh REAL,
    PRIMARY KEY (device_id, seq, idx)
);
CREATE INDEX IF NOT EXISTS zone_stats_start ON zone_stats (interval_start_us, device_id);
CREATE TABLE IF NOT EXISTS controller_events (
    signal_id TEXT NOT NULL, ts_us INTEGER NOT NULL, code INTEGER NOT NULL, param INTEGER NOT NULL,
    PRIMARY KEY (signal_id, ts_us, code, param)
) WITHOUT ROWID;
"""

_INSERT_DETECTOR: Final = "INSERT OR IGNORE INTO detector_changes VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
_INSERT_MOVEMENTS: Final = "INSERT OR IGNORE INTO movements VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
_INSERT_ZONES: Final = "INSERT OR IGNORE INTO zone_stats VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"


def insert(db: sqlite3.Connection, batches: Sequence[IngestBatch]) -> None:
    """Insert the signal records of fresh envelopes (the caller skipped redelivered ones)."""
    detector: list[tuple[object, ...]] = []
    movements: list[tuple[object, ...]] = []
    zones: list[tuple[object, ...]] = []
    for b in batches:
        key = (b.origin.device_id, b.origin.seq)
        site = b.origin.site
        detector += [
            (*key, i, site, to_epoch_us(c.ts), c.stream, c.zone, c.zone_kind, c.state, c.reason, c.occupants)
            for i, c in enumerate(b.detector)
        ]
        movements += [
            (
                *key,
                i,
                site,
                to_epoch_us(m.interval_start),
                m.interval_s,
                m.stream,
                m.entry,
                m.exit,
                m.cls,
                m.count,
            )
            for i, m in enumerate(b.movements)
        ]
        zones += [
            (*key, i, site, to_epoch_us(z.interval_start), z.interval_s, z.stream, z.zone, z.volume, z.occupancy,
             z.mean_speed_kmh)
            for i, z in enumerate(b.zone_stats)
        ]  # fmt: skip
    for sql, rows in ((_INSERT_DETECTOR, detector), (_INSERT_MOVEMENTS, movements), (_INSERT_ZONES, zones)):
        if rows:
            db.executemany(sql, rows)


def _devices(devices: Sequence[str]) -> tuple[str, list[str]]:
    return ", ".join("?" * len(devices)), list(devices)


def detector_changes(db: sqlite3.Connection, query: DetectorQuery) -> list[StoredDetectorChange]:
    if not query.devices:
        return []
    marks, names = _devices(query.devices)
    rows = db.execute(
        "SELECT device_id, site, ts_us, stream, zone, zone_kind, state, reason, occupants FROM detector_changes"  # noqa: S608 (placeholders only)
        f" WHERE ts_us >= ? AND ts_us < ? AND device_id IN ({marks})"
        " ORDER BY ts_us, device_id, seq, idx LIMIT ?",
        [to_epoch_us(query.start), to_epoch_us(query.end), *names, query.limit],
    ).fetchall()
    return [_change(r) for r in rows]


def _change(r: tuple[Any, ...]) -> StoredDetectorChange:
    device, site, ts_us, stream, zone, kind, state, reason, occupants = r
    change = DetectorChange(
        ts=from_epoch_us(ts_us), stream=stream, zone=zone, zone_kind=kind, state=state, reason=reason,
        occupants=occupants,
    )  # fmt: skip
    return StoredDetectorChange(device, site, change)


def turning_movements(db: sqlite3.Connection, query: IntervalQuery) -> list[StoredMovement]:
    if not query.devices:
        return []
    marks, names = _devices(query.devices)
    rows = db.execute(
        "SELECT device_id, site, interval_start_us, interval_s, stream, entry, exit, cls, SUM(count) FROM movements"  # noqa: S608 (placeholders only)
        f" WHERE interval_start_us >= ? AND interval_start_us < ? AND device_id IN ({marks})"
        " GROUP BY device_id, site, interval_start_us, interval_s, stream, entry, exit, cls"
        " ORDER BY interval_start_us, device_id, stream, entry, exit, cls LIMIT ?",
        [to_epoch_us(query.start), to_epoch_us(query.end), *names, query.limit],
    ).fetchall()
    return [
        StoredMovement(d, site, TurningMovement(interval_start=from_epoch_us(t), interval_s=s, stream=st, entry=en,
                                                exit=ex, cls=c, count=n))
        for d, site, t, s, st, en, ex, c, n in rows
    ]  # fmt: skip


def zone_statistics(db: sqlite3.Connection, query: IntervalQuery) -> list[StoredZoneStat]:
    if not query.devices:
        return []
    marks, names = _devices(query.devices)
    rows = db.execute(
        "SELECT device_id, site, interval_start_us, interval_s, stream, zone, volume, occupancy, mean_speed_kmh"  # noqa: S608 (placeholders only)
        f" FROM zone_stats WHERE interval_start_us >= ? AND interval_start_us < ? AND device_id IN ({marks})"
        " ORDER BY interval_start_us, device_id, stream, zone, seq, idx LIMIT ?",
        [to_epoch_us(query.start), to_epoch_us(query.end), *names, query.limit],
    ).fetchall()
    return [
        StoredZoneStat(d, site, ZoneStat(interval_start=from_epoch_us(t), interval_s=s, stream=st, zone=z, volume=v,
                                         occupancy=o, mean_speed_kmh=sp))
        for d, site, t, s, st, z, v, o, sp in rows
    ]  # fmt: skip


def write_controller_events(
    db: sqlite3.Connection, signal_id: str, events: Sequence[ControllerEvent]
) -> None:
    db.executemany(
        "INSERT OR IGNORE INTO controller_events VALUES (?, ?, ?, ?)",
        [(signal_id, to_epoch_us(e.ts), e.code, e.param) for e in events],
    )


def controller_events(
    db: sqlite3.Connection, signal_id: str, start_us: int, end_us: int, limit: int
) -> list[ControllerEvent]:
    rows = db.execute(
        "SELECT ts_us, code, param FROM controller_events WHERE signal_id = ? AND ts_us >= ? AND ts_us < ?"
        " ORDER BY ts_us, code, param LIMIT ?",
        (signal_id, start_us, end_us, limit),
    ).fetchall()
    return [ControllerEvent(from_epoch_us(t), c, p) for t, c, p in rows]


def expire(db: sqlite3.Connection, event_from_us: int, interval_from_us: int) -> dict[str, int]:
    """Delete what retention no longer keeps: the event log (detector changes, controller events)
    before ``event_from_us``, movements and zone statistics (already interval summaries) before
    ``interval_from_us``; rows deleted per table."""
    return {
        "detector_changes": db.execute(
            "DELETE FROM detector_changes WHERE ts_us < ?", (event_from_us,)
        ).rowcount,
        "controller_events": db.execute(
            "DELETE FROM controller_events WHERE ts_us < ?", (event_from_us,)
        ).rowcount,
        "movements": db.execute(
            "DELETE FROM movements WHERE interval_start_us < ?", (interval_from_us,)
        ).rowcount,
        "zone_stats": db.execute(
            "DELETE FROM zone_stats WHERE interval_start_us < ?", (interval_from_us,)
        ).rowcount,
    }
