"""The ``TimeSeriesStore`` interface and the rows that cross it.

Adapters: :mod:`roadside.cloud.storage.sqlite` (embedded default) and
:mod:`roadside.cloud.storage.influx` (InfluxDB, v1 HTTP API or the 2.x client).
Every write is idempotent on (device id, envelope sequence number, record
index): a message delivered twice is stored once.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Final, Protocol, runtime_checkable

from roadside.shared.compact import NO_COUNTS, CountColumns
from roadside.shared.limits import to_epoch_us
from roadside.shared.schemas import (
    CountRecord,
    DetectionEvent,
    DetectorChange,
    Health,
    SensorReading,
    TurningMovement,
    ZoneStat,
)


@dataclass(frozen=True, slots=True)
class Origin:
    """Where a record came from, taken from the authenticated envelope and the registry."""

    device_id: str
    site: str
    seq: int


@dataclass(frozen=True, slots=True)
class IngestBatch:
    """The records of one accepted envelope, ready to store."""

    origin: Origin
    # Count records as columns (``shared.compact``): the compact encoding decodes to them and
    # the stores build rows from them with ``zip``. Records given instead are converted.
    counts: CountColumns = NO_COUNTS
    events: Sequence[DetectionEvent] = ()
    sensors: Sequence[SensorReading] = ()
    health: Health | None = None
    # Detection for signals (docs/signals.md): stored by stores that support it (SupportsSignals).
    detector: Sequence[DetectorChange] = ()
    movements: Sequence[TurningMovement] = ()
    zone_stats: Sequence[ZoneStat] = ()

    def __post_init__(self) -> None:
        if not isinstance(self.counts, CountColumns):
            records: Sequence[CountRecord] = self.counts
            object.__setattr__(self, "counts", CountColumns.of(records))


# ``CountBucket.device_id`` of a bucket summed over every device of its site (``per_device=False``).
ALL_DEVICES: Final = ""


@dataclass(frozen=True, slots=True)
class CountBucket:
    """Counts summed over one time bucket for one (device, line, class, direction), or for one
    (site, line, class, direction) with ``device_id == ALL_DEVICES`` when the query was not per device."""

    bucket_start: datetime
    device_id: str
    site: str
    line: str
    cls: str
    direction: str
    count: int


@dataclass(frozen=True, slots=True)
class StoredEvent:
    device_id: str
    site: str
    event: DetectionEvent


@dataclass(frozen=True, slots=True)
class StoredReading:
    device_id: str
    site: str
    reading: SensorReading


@dataclass(frozen=True, slots=True)
class CountQuery:
    """Counts whose ``interval_start`` falls in ``[start, end)``, summed per UTC bucket of ``bucket_s``.

    Buckets are aligned to the Unix epoch: ``floor(epoch / bucket_s) * bucket_s``.

    ``per_device=False`` sums the devices of each site together: one bucket per (bucket, site,
    line, class, direction), its ``device_id`` ``ALL_DEVICES``. A caller that only wants totals
    (the console's traffic page) gets as many times fewer rows as a site has devices.
    """

    start: datetime
    end: datetime
    bucket_s: int = 3600
    device_id: str | None = None
    site: str | None = None
    line: str | None = None
    cls: str | None = None
    direction: str | None = None
    per_device: bool = True


@dataclass(frozen=True, slots=True)
class EventQuery:
    """Events whose ``ts`` falls in ``[start, end)``."""

    start: datetime
    end: datetime
    device_id: str | None = None
    site: str | None = None
    type: str | None = None
    limit: int = 100


@dataclass(frozen=True, slots=True)
class SensorQuery:
    """Sensor readings whose ``ts`` falls in ``[start, end)``."""

    start: datetime
    end: datetime
    device_id: str | None = None
    site: str | None = None
    sensor: str | None = None
    quantity: str | None = None
    limit: int = 1000


EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)


def from_epoch_us(epoch_us: int) -> datetime:
    """The aware UTC datetime of microseconds since the Unix epoch."""
    return EPOCH + timedelta(microseconds=epoch_us)


class TimeSeriesStore(Protocol):
    """Where telemetry lives. Implementations translate their errors to ``TransportError``."""

    def write(self, batches: Sequence[IngestBatch]) -> None:
        """Store the batches durably; return only once they would survive a crash."""

    def count_buckets(self, query: CountQuery) -> list[CountBucket]:
        """Counts summed per bucket, ordered by bucket start then device, line, class, direction
        (then site, which only separates the sites' buckets when ``query.per_device`` is false)."""

    def events(self, query: EventQuery) -> list[StoredEvent]:
        """Events in the window, oldest first, at most ``query.limit``."""

    def sensor_series(self, query: SensorQuery) -> list[StoredReading]:
        """Sensor readings in the window, oldest first, at most ``query.limit``."""

    def latest_health(self, device_id: str) -> Health | None: ...

    def recent_sequences(self, device_id: str, window: int) -> list[int]:
        """Sequence numbers stored for the device within ``window`` of its highest, to rebuild replay state."""

    def ping(self) -> None:
        """Raise ``TransportError`` if the store cannot be reached."""

    def close(self) -> None: ...


# --- API queries beyond the core protocol ------------------------------------------------------
#
# The API also asks for speed statistics, events paged by a stable key and the latest reading of
# each sensor. An adapter that answers one natively implements its ``Supports...`` protocol; for
# any other store the functions below answer from the core methods: correct, slower, bounded.

SPEED_PERCENTILE: Final = 0.85
MAX_SPEED_SAMPLES: Final = 200_000
_FALLBACK_PAGE: Final = 10_000
_FALLBACK_PAGES: Final = 50


@dataclass(frozen=True, slots=True, order=True)
class EventKey:
    """Where a page of events ends. Pages are ordered by ``(ts, event_id)``, a total order, so
    paging is stable: an event is on exactly one page, whatever arrives meanwhile."""

    ts_us: int
    event_id: str


def event_key(stored: StoredEvent) -> EventKey:
    return EventKey(to_epoch_us(stored.event.ts), str(stored.event.event_id))


@dataclass(frozen=True, slots=True)
class SpeedQuery:
    """Events carrying ``speed_kmh`` whose ``ts`` falls in ``[start, end)``, per UTC bucket."""

    start: datetime
    end: datetime
    bucket_s: int = 3600
    device_id: str | None = None
    site: str | None = None
    line: str | None = None
    cls: str | None = None
    direction: str | None = None
    type: str | None = None
    max_samples: int = MAX_SPEED_SAMPLES


@dataclass(frozen=True, slots=True)
class SpeedSample:
    bucket_start: datetime
    device_id: str
    site: str
    line: str | None
    cls: str | None
    speed_kmh: float


@dataclass(frozen=True, slots=True)
class SpeedBucket:
    """Speed statistics over one bucket for one (device, line, class)."""

    bucket_start: datetime
    device_id: str
    site: str
    line: str | None
    cls: str | None
    count: int
    mean_kmh: float
    p85_kmh: float


@dataclass(frozen=True, slots=True)
class SpeedStatistics:
    buckets: list[SpeedBucket]
    complete: bool  # False: more than ``max_samples`` events matched and nothing was computed


@dataclass(frozen=True, slots=True)
class LatestSensorQuery:
    """The newest reading of each (device, sensor, quantity) with ``ts`` in ``[start, end)``."""

    start: datetime
    end: datetime
    device_id: str | None = None
    site: str | None = None
    sensor: str | None = None
    quantity: str | None = None
    limit: int = 1000


@runtime_checkable
class SupportsSpeedSamples(Protocol):
    def speed_samples(self, query: SpeedQuery) -> list[SpeedSample]:
        """Matching samples with their bucket, at most ``query.max_samples + 1``, in any order."""


@runtime_checkable
class SupportsEventKeyset(Protocol):
    def events_after(self, query: EventQuery, after: EventKey | None) -> list[StoredEvent]:
        """Events in the window after ``after``, ordered by ``(ts, event_id)``, at most ``query.limit``."""


@runtime_checkable
class SupportsLatestSensors(Protocol):
    def latest_sensors(self, query: LatestSensorQuery) -> list[StoredReading]:
        """The newest reading per (device, sensor, quantity), ordered by device, sensor, quantity."""


@dataclass(frozen=True, slots=True)
class HealthQuery:
    """One device's health reports with ``ts`` in ``[start, end)``, oldest first.

    ``step_s`` thins them: at most one report per step (the latest of each, steps aligned to the
    epoch as count buckets are); 0 keeps every report. When more than ``limit`` remain, the newest
    ``limit`` are returned (a chart of a window ending now needs its end).
    """

    device_id: str
    start: datetime
    end: datetime
    step_s: int = 0
    limit: int = 2000


@runtime_checkable
class SupportsHealthHistory(Protocol):
    def health_history(self, query: HealthQuery) -> list[Health]:
        """The device's reports in the window, thinned and bounded as ``query`` says, oldest first."""

    def latest_health_many(self, device_ids: Sequence[str]) -> dict[str, Health]:
        """The latest report of each device that sent one (one round trip where the store can)."""


def latest_health_many(store: TimeSeriesStore, device_ids: Sequence[str]) -> dict[str, Health]:
    """The latest health of each device, natively when the store can, else one query per device."""
    if isinstance(store, SupportsHealthHistory):
        return store.latest_health_many(device_ids)
    found = {device_id: store.latest_health(device_id) for device_id in device_ids}
    return {device_id: health for device_id, health in found.items() if health is not None}


def health_history(store: TimeSeriesStore, query: HealthQuery) -> list[Health]:
    """The device's health history, natively when the store keeps one, else its latest report
    when that falls in the window (all a store with only ``latest_health`` can say)."""
    if isinstance(store, SupportsHealthHistory):
        return store.health_history(query)
    latest = store.latest_health(query.device_id)
    return thin_health([latest] if latest is not None else [], query)


def thin_health(reports: Sequence[Health], query: HealthQuery) -> list[Health]:
    """``query``'s rule applied to reports in time order: the latest per step, the newest ``limit``.
    (Stores that cannot thin in their query language call this; the contract tests hold every store to it.)"""
    kept: dict[int, Health] = {}
    for report in reports:
        us = to_epoch_us(report.ts)
        if not to_epoch_us(query.start) <= us < to_epoch_us(query.end):
            continue
        key = us // (query.step_s * 1_000_000) if query.step_s > 0 else len(kept)
        kept[key] = report
    ordered = list(kept.values())
    return ordered[-query.limit :] if query.limit > 0 else []


def bucket_start(when: datetime, bucket_s: int) -> datetime:
    """``when`` floored to a whole multiple of ``bucket_s`` since the Unix epoch (UTC)."""
    bucket_us = bucket_s * 1_000_000
    return from_epoch_us(to_epoch_us(when) // bucket_us * bucket_us)


def nearest_rank(ordered: Sequence[float], fraction: float) -> float:
    """The nearest-rank percentile of sorted values: the smallest value with at least
    ``fraction`` of the values at or below it (the 85th percentile speed of traffic engineering)."""
    if not ordered:
        raise ValueError("no values")
    rank = max(1, math.ceil(fraction * len(ordered)))
    return ordered[rank - 1]


def aggregate_speeds(samples: Iterable[SpeedSample]) -> list[SpeedBucket]:
    """Count, mean and 85th percentile per (bucket, device, line, class), ordered by those."""
    groups: dict[tuple[datetime, str, str, str | None, str | None], list[float]] = defaultdict(list)
    for s in samples:
        groups[(s.bucket_start, s.device_id, s.site, s.line, s.cls)].append(s.speed_kmh)
    buckets = [
        SpeedBucket(start, device, site, line, cls, len(speeds), round(math.fsum(speeds) / len(speeds), 2),
                    nearest_rank(sorted(speeds), SPEED_PERCENTILE))
        for (start, device, site, line, cls), speeds in groups.items()
    ]  # fmt: skip
    return sorted(buckets, key=lambda b: (b.bucket_start, b.device_id, b.line or "", b.cls or "", b.site))


def speed_samples(store: TimeSeriesStore, query: SpeedQuery) -> list[SpeedSample] | None:
    """The measured speeds of the window from the store's own sampler, or from its events;
    ``None`` when more than ``query.max_samples`` match."""
    if isinstance(store, SupportsSpeedSamples):
        samples: list[SpeedSample] | None = store.speed_samples(query)
    else:
        samples = _speed_samples_from_events(store, query)
    return None if samples is None or len(samples) > query.max_samples else samples


def speed_statistics(store: TimeSeriesStore, query: SpeedQuery) -> SpeedStatistics:
    """Speed statistics from the store's own sampler, or from its events."""
    samples = speed_samples(store, query)
    if samples is None:
        return SpeedStatistics([], complete=False)
    return SpeedStatistics(aggregate_speeds(samples), complete=True)


def _speed_samples_from_events(store: TimeSeriesStore, query: SpeedQuery) -> list[SpeedSample] | None:
    """Samples from the events in the window; ``None`` when more than ``max_samples`` events match
    (events without a speed count too, so this refuses a little early)."""
    found = store.events(
        EventQuery(query.start, query.end, query.device_id, query.site, query.type, query.max_samples + 1)
    )
    if len(found) > query.max_samples:
        return None
    wanted = {"line": query.line, "cls": query.cls, "direction": query.direction}
    return [
        SpeedSample(bucket_start(e.event.ts, query.bucket_s), e.device_id, e.site, e.event.line,
                    e.event.cls, e.event.speed_kmh)
        for e in found
        if e.event.speed_kmh is not None
        and all(v is None or getattr(e.event, k) == v for k, v in wanted.items())
    ]  # fmt: skip


def events_page(store: TimeSeriesStore, query: EventQuery, after: EventKey | None) -> list[StoredEvent]:
    """Up to ``query.limit`` events after ``after``, ordered by ``(ts, event_id)``."""
    if isinstance(store, SupportsEventKeyset):
        return store.events_after(query, after)
    # ``events`` orders ties of ``ts`` its own way and cuts at ``limit``: the events at the last
    # ``ts`` of a full answer may be incomplete, so only earlier ones are taken, asking for more
    # until a page is filled.
    start = max(query.start, from_epoch_us(after.ts_us)) if after is not None else query.start
    fetch = query.limit + 1
    while True:
        found = store.events(replace(query, start=start, limit=fetch))
        fresh = sorted((e for e in found if after is None or event_key(e) > after), key=event_key)
        if len(found) < fetch or fetch >= _FALLBACK_PAGE * _FALLBACK_PAGES:
            return fresh[: query.limit]
        last_ts = found[-1].event.ts
        complete = [e for e in fresh if e.event.ts < last_ts]
        if len(complete) >= query.limit:
            return complete[: query.limit]
        fetch *= 2


def latest_sensor_readings(store: TimeSeriesStore, query: LatestSensorQuery) -> list[StoredReading]:
    """The newest reading per (device, sensor, quantity), from the store or from its series."""
    if isinstance(store, SupportsLatestSensors):
        return store.latest_sensors(query)
    latest: dict[tuple[str, str, str], StoredReading] = {}
    start = query.start
    for _ in range(_FALLBACK_PAGES):  # oldest first, a page at a time; later readings win
        page = store.sensor_series(
            SensorQuery(start, query.end, query.device_id, query.site, query.sensor, query.quantity,
                        limit=_FALLBACK_PAGE)
        )  # fmt: skip
        for r in page:
            latest[(r.device_id, r.reading.sensor, r.reading.quantity)] = r
        if len(page) < _FALLBACK_PAGE or page[-1].reading.ts == start:
            break
        start = page[-1].reading.ts
    return [latest[key] for key in sorted(latest)][: query.limit]
