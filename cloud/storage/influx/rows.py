"""What both InfluxDB adapters read back, as records, and how they name a refusal (pure)."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

from roadside.cloud.storage.base import (
    ALL_DEVICES,
    CountBucket,
    CountQuery,
    StoredEvent,
    StoredReading,
    from_epoch_us,
)
from roadside.cloud.storage.influx.line_protocol import COUNT_GROUPS
from roadside.shared.errors import ConfigError, RoadsideError, SchemaError, TransportError
from roadside.shared.schemas import DetectionEvent, SensorReading


def count_groups(query: CountQuery) -> tuple[str, ...]:
    """The tags a count query groups by: without the device when the query sums devices together."""
    return COUNT_GROUPS if query.per_device else tuple(g for g in COUNT_GROUPS if g != "device")


def count_bucket(row: Mapping[str, Any], bucket_ns: int) -> CountBucket:
    """A bucket from a row grouped by :func:`count_groups` (no ``device`` when summed over devices)."""
    return CountBucket(
        from_epoch_us(bucket_ns // 1000),
        str(row["device"]) if "device" in row else ALL_DEVICES,
        str(row.get("site") or ""),
        str(row["line"]),
        str(row["cls"]),
        str(row["direction"]),
        int(row["count"]),
    )


def count_order(b: CountBucket) -> tuple[datetime, str, str, str, str, str]:
    return (b.bucket_start, b.device_id, b.line, b.cls, b.direction, b.site)


def stored_event(row: Mapping[str, Any], time_ns: int) -> StoredEvent:
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


def stored_reading(row: Mapping[str, Any], time_ns: int) -> StoredReading:
    reading = SensorReading(
        ts=from_epoch_us(time_ns // 1000),
        sensor=row["sensor"],
        quantity=row["quantity"],
        value=row["value"],
        unit=row["unit"],
        quality=row["quality"],
    )
    return StoredReading(str(row["device"]), str(row.get("site") or ""), reading)


def tie_break(row: Mapping[str, Any]) -> tuple[str, int, int]:
    # InfluxDB orders points of one time across series as it likes; the SQLite store orders them
    # by device, seq and index, so do the same.
    return (str(row.get("device") or ""), int(row.get("seq") or 0), int(row.get("slot") or 0))


def rejection(status: int, message: str, action: str) -> RoadsideError:
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
