"""Signal-control records in InfluxDB (pure): their points, the InfluxQL that reads them, the rows back.

Measurements (tags / fields):

- ``detector``: device, site, stream, zone, slot / zone_kind, state, reason, occupants, seq
- ``movements``: device, site, stream, entry, exit, cls, interval_s, slot / count, seq
- ``zone_stats``: device, site, stream, zone, interval_s, slot / volume, occupancy, mean_speed_kmh, seq
- ``controller_events``: signal, code, param / n

Times are the record's own (nudged by the envelope's sequence number below a
microsecond, as every other point), so a redelivered envelope overwrites its
points and a controller event posted twice is one point.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, Final

from roadside.cloud.storage.base import IngestBatch, from_epoch_us
from roadside.cloud.storage.influx.influxql import quote_ident, quote_literal
from roadside.cloud.storage.influx.line_protocol import LinePoint
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

DETECTOR: Final = "detector"
MOVEMENTS: Final = "movements"
ZONE_STATS: Final = "zone_stats"
CONTROLLER_EVENTS: Final = "controller_events"
_NUDGE: Final = 1000  # as line_protocol: below a microsecond


def _time(when_us: int, seq: int) -> int:
    return when_us * 1000 + seq % _NUDGE


def _tags(**values: str | int | None) -> tuple[tuple[str, str], ...]:
    return tuple(sorted((k, str(v)) for k, v in values.items() if v is not None and v != ""))


def _fields(**values: str | int | float | None) -> tuple[tuple[str, str | int | float], ...]:
    return tuple(sorted((k, v) for k, v in values.items() if v is not None))


def signal_points(batch: IngestBatch) -> list[LinePoint]:
    """The points of one envelope's detector changes, movements and zone statistics."""
    o = batch.origin
    points = [
        LinePoint(
            DETECTOR,
            _tags(device=o.device_id, site=o.site, stream=c.stream, zone=c.zone, slot=i),
            _fields(zone_kind=c.zone_kind, state=c.state, reason=c.reason, occupants=c.occupants, seq=o.seq),
            _time(to_epoch_us(c.ts), o.seq),
        )
        for i, c in enumerate(batch.detector)
    ]
    points += [
        LinePoint(
            MOVEMENTS,
            _tags(
                device=o.device_id,
                site=o.site,
                stream=m.stream,
                entry=m.entry,
                exit=m.exit,
                cls=m.cls,
                interval_s=m.interval_s,
                slot=i,
            ),
            _fields(count=m.count, seq=o.seq),
            _time(to_epoch_us(m.interval_start), o.seq),
        )
        for i, m in enumerate(batch.movements)
    ]
    points += [
        LinePoint(
            ZONE_STATS,
            _tags(
                device=o.device_id, site=o.site, stream=z.stream, zone=z.zone, interval_s=z.interval_s, slot=i
            ),
            _fields(
                volume=z.volume,
                occupancy=float(z.occupancy),
                mean_speed_kmh=None if z.mean_speed_kmh is None else float(z.mean_speed_kmh),
                seq=o.seq,
            ),
            _time(to_epoch_us(z.interval_start), o.seq),
        )
        for i, z in enumerate(batch.zone_stats)
    ]
    return points


def controller_points(signal_id: str, events: Sequence[ControllerEvent]) -> list[LinePoint]:
    return [
        LinePoint(
            CONTROLLER_EVENTS,
            _tags(signal=signal_id, code=e.code, param=e.param),
            _fields(n=1),
            to_epoch_us(e.ts) * 1000,
        )
        for e in events
    ]


def _window(start_us: int, end_us: int) -> str:
    return f"time >= {start_us * 1000} AND time < {end_us * 1000}"


def _any_device(devices: Sequence[str]) -> str:
    return "(" + " OR ".join(f'"device" = {quote_literal(d)}' for d in devices) + ")"


def _select(source: str, where: str, limit: int) -> str:
    # InfluxQL: every value in ``where`` went through quote_literal or int().
    return f"SELECT * FROM {source} WHERE {where} ORDER BY time ASC LIMIT {int(limit)}"  # noqa: S608


def detector_influxql(query: DetectorQuery, source: Callable[[str], str]) -> str:
    where = f"{_window(to_epoch_us(query.start), to_epoch_us(query.end))} AND {_any_device(query.devices)}"
    return _select(source(DETECTOR), where, query.limit)


def interval_influxql(measurement: str, query: IntervalQuery, source: Callable[[str], str]) -> str:
    where = f"{_window(to_epoch_us(query.start), to_epoch_us(query.end))} AND {_any_device(query.devices)}"
    return _select(source(measurement), where, query.limit)


def controller_influxql(
    signal_id: str, start_us: int, end_us: int, limit: int, source: Callable[[str], str]
) -> str:
    where = f"{_window(start_us, end_us)} AND {quote_ident('signal')} = {quote_literal(signal_id)}"
    return _select(source(CONTROLLER_EVENTS), where, limit)


def detector_change(row: Mapping[str, Any]) -> tuple[tuple[int, str, int, int], StoredDetectorChange]:
    """A stored change and its order key (time, device, seq, slot)."""
    change = DetectorChange(
        ts=from_epoch_us(int(row["time"]) // 1000), stream=row["stream"], zone=row["zone"],
        zone_kind=row["zone_kind"], state=row["state"], reason=row.get("reason"),
        occupants=None if row.get("occupants") is None else int(row["occupants"]),
    )  # fmt: skip
    key = (int(row["time"]) // 1000, row["device"], int(row["seq"]), int(row["slot"]))
    return key, StoredDetectorChange(row["device"], row["site"], change)


def movement(row: Mapping[str, Any]) -> StoredMovement:
    record = TurningMovement(
        interval_start=from_epoch_us(int(row["time"]) // 1000), interval_s=int(row["interval_s"]),  # type: ignore[arg-type]
        stream=row["stream"], entry=row["entry"], exit=row["exit"], cls=row["cls"], count=int(row["count"]),
    )  # fmt: skip
    return StoredMovement(row["device"], row["site"], record)


def zone_stat(row: Mapping[str, Any]) -> StoredZoneStat:
    speed = row.get("mean_speed_kmh")
    record = ZoneStat(
        interval_start=from_epoch_us(int(row["time"]) // 1000), interval_s=int(row["interval_s"]),  # type: ignore[arg-type]
        stream=row["stream"], zone=row["zone"], volume=int(row["volume"]), occupancy=float(row["occupancy"]),
        mean_speed_kmh=None if speed is None else float(speed),
    )  # fmt: skip
    return StoredZoneStat(row["device"], row["site"], record)


def controller_event(row: Mapping[str, Any]) -> ControllerEvent:
    return ControllerEvent(from_epoch_us(int(row["time"]) // 1000), int(row["code"]), int(row["param"]))
