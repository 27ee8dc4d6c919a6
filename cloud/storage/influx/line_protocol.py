"""What the InfluxDB adapters write, as line protocol (pure: no I/O, no vendor library).

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

import functools
import math
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final, TypeVar

from roadside.cloud.storage.base import IngestBatch, Origin
from roadside.shared.compact import CountColumns
from roadside.shared.errors import SchemaError
from roadside.shared.limits import to_epoch_us
from roadside.shared.schemas import DetectionEvent, Health, SensorReading

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

# The tags a count bucket is summed by, in the order buckets are sorted.
COUNT_GROUPS: Final = ("device", "site", "line", "cls", "direction")


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


@functools.lru_cache(maxsize=64)
def escape_measurement(name: str) -> str:
    """A measurement name: commas and spaces are escaped."""
    _check_unescapable(name, "measurement")
    return name.replace(",", r"\,").replace(" ", r"\ ")


# Tag keys and values repeat on nearly every point (device, site, line, class, model version):
# escaping them once was three quarters of building a counts envelope's lines. Bounded, so
# values sent by devices cannot grow it without end; a refused text raises and is not cached.
@functools.lru_cache(maxsize=8192)
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
    return _us_time_ns(to_epoch_us(when), seq)


def _us_time_ns(epoch_us: int, seq: int) -> int:
    return epoch_us * 1000 + seq % _SEQ_NUDGE


_CountKey = tuple[str, int, int, str, str, str, int | None]  # CountRow less the count


def _summed(counts: CountColumns) -> dict[_CountKey, int]:
    # Same key twice in one envelope: the SQLite store keeps both rows and sums them, so sum here
    # too rather than let the second overwrite the first.
    sums: dict[_CountKey, int] = {}
    for model_version, start_us, interval_s, line, cls, direction, lane, count in counts.rows():
        key = (model_version, start_us, interval_s, line, cls, direction, lane)
        sums[key] = sums.get(key, 0) + count
    return sums


def _tags(**values: str | int | None) -> tuple[tuple[str, str], ...]:
    # Absent and empty tags are left out; InfluxDB stores no empty tag values. Sorted, as InfluxDB
    # sorts them itself: it saves the server that work.
    return tuple(sorted((k, str(v)) for k, v in values.items() if v is not None and v != ""))


def _fields(**values: FieldValue | None) -> tuple[tuple[str, FieldValue], ...]:
    return tuple(sorted((k, v) for k, v in values.items() if v is not None))


def _count_points(origin: Origin, counts: CountColumns) -> list[LinePoint]:
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
            _us_time_ns(start_us, origin.seq),
        )
        for (model_version, start_us, interval_s, line, cls, direction, lane), total in _summed(
            counts
        ).items()
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


# -- writing in chunks -----------------------------------------------------------------


def chunks(items: Sequence[_T], size: int) -> Iterator[Sequence[_T]]:
    """``items`` in consecutive slices of at most ``size``."""
    for i in range(0, len(items), size):
        yield items[i : i + size]


def batch_lines(batches: Iterable[IngestBatch]) -> list[str]:
    """Every point of the batches in line protocol, in order; one clock reading for them all."""
    now_ns = time.time_ns()
    lines: list[str] = []
    for b in batches:
        if b.counts and not (b.events or b.sensors or b.health is not None):
            lines += _count_envelope_lines(b.origin, b.counts)
        else:
            lines += [p.to_line() for p in batch_points(b, now_ns)]
    return lines


def _count_envelope_lines(origin: Origin, counts: CountColumns) -> list[str]:
    """``batch_points`` of an envelope of counts only, as lines, built without a point object each.

    Counts are most of the traffic; building and sorting a :class:`LinePoint` per record was
    most of the write. The tags are those of :func:`_count_points`, in its sorted key order
    (cls, device, direction, interval_s, lane, line, model_version, site), every value
    escaped the same way; a unit test holds the two paths equal.
    """
    sums = _summed(counts)
    device, site = escape_key(origin.device_id), escape_key(origin.site)
    measurement = escape_measurement(COUNTS)
    lines = []
    latest = -1
    for (model_version, start_us, interval_s, line, cls, direction, lane), total in sums.items():
        time_ns = _us_time_ns(start_us, origin.seq)
        latest = max(latest, time_ns)
        lane_tag = "" if lane is None else f",lane={lane}"
        lines.append(
            f"{measurement},cls={escape_key(cls)},device={device},direction={escape_key(direction)}"
            f",interval_s={interval_s}{lane_tag},line={escape_key(line)}"
            f",model_version={escape_key(model_version)},site={site}"
            f" count={int(total)}i {time_ns}"
        )
    ingest = escape_measurement(INGEST)
    lines.append(f"{ingest},device={device},site={site} records={len(sums)}i,seq={origin.seq}i {latest}")
    return lines
