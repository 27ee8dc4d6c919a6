"""The hub's air job: new readings through the stages into the air store, the index, and the events.

Every ``every_s`` the job reads the sensor readings since its last pass
(``late_s`` more, for readings an agent's outbox delivers a little late with
their own, older timestamps) from the telemetry store, and the last
``rescan_s`` on its first pass and every ``deep_every_s`` (readings held
back longer, and those stored by other hub processes while this one was
down). It keeps the readings of configured locations, runs
raw → cleaned → calibrated, and stores all three (a value already stored is
never rewritten). Per location it then computes the hourly means of the last
day, the current index, and raises

* ``air_category_worsened`` when the index category goes up the scale from
  the last one recorded, and
* ``air_exceedance`` when a complete hourly mean is above the configured
  limit for its parameter,

each once (event ids are derived from what happened and claimed in the air
store), through ``emit``: the hub stores them as events and offers them to
SSE subscribers and webhooks like any other event.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Final

from roadside.cloud.air import aggregate, indexing, stages
from roadside.cloud.air.config import PARAMETERS, AirConfig, AirLocation
from roadside.cloud.air.stages import Measurement
from roadside.cloud.air.store import AirStore, sensor_id
from roadside.cloud.fleet.live import LiveFeed
from roadside.cloud.storage.base import IngestBatch, Origin, SensorQuery, StoredReading, TimeSeriesStore
from roadside.shared.air.standards import IndexReport
from roadside.shared.schemas import DetectionEvent, SensorReading

log = logging.getLogger(__name__)

_NAMESPACE: Final = uuid.UUID("0f6f1b7e-8a43-4f0e-b0f4-6c4c1a2e9d13")
_PAGE: Final = 10_000
Emit = Callable[[Origin, list[DetectionEvent]], None]


@dataclass
class ProcessReport:
    """What one pass did."""

    readings: int = 0
    stored: int = 0
    flags: Counter[str] = field(default_factory=Counter)
    events: list[DetectionEvent] = field(default_factory=list)
    indices: dict[str, IndexReport | indexing.NoIndex] = field(default_factory=dict)


class AirProcessor:
    def __init__(
        self,
        config: AirConfig,
        telemetry: TimeSeriesStore,
        air: AirStore,
        emit: Emit,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.config = config
        self.telemetry = telemetry
        self.air = air
        self.emit = emit
        self.book = config.book()
        self._where = config.location_of()
        # Per sensor: its parameters, what its calibrations read, and RH (the EPA correction needs it).
        self._wanted = {sensor.key: config.inputs(sensor) for _, sensor in self._where.values()}
        self._clock = clock
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.passes = 0
        self.failures = 0
        self._last_end: float | None = None
        self._last_deep: float | None = None
        self._hours: dict[str, list[aggregate.Aggregate]] = {}  # per location, the last pass's day
        self._pending_since: float | None = None  # the oldest reading ingest stored since the last pass
        self._pending_lock = threading.RLock()

    # -- one pass --------------------------------------------------------------------------------

    def note_stored(self, readings: Sequence[SensorReading]) -> None:
        """Ingest stored ``readings`` (the hub's listener): the next pass reads back to the oldest of
        them, so an agent's outbox backlog is staged at once, not at the next deep rescan."""
        if not readings:
            return
        oldest = min(r.ts.timestamp() for r in readings)
        with self._pending_lock:
            self._pending_since = oldest if self._pending_since is None else min(self._pending_since, oldest)

    def window_start(self, now: float) -> tuple[float, bool]:
        """Where a pass at ``now`` starts reading, and whether it is a deep one: ``late_s`` before the
        last pass ended (or the oldest reading stored since, when older), or ``rescan_s`` back on the
        first pass and every ``deep_every_s`` (readings stored by other hub processes)."""
        deep = self._last_deep is None or now - self._last_deep >= self.config.deep_every_s
        if deep or self._last_end is None:
            return now - self.config.rescan_s, True
        start = min(self._last_end, now) - self.config.late_s
        with self._pending_lock:
            pending = self._pending_since
        if pending is not None:
            start = max(now - self.config.rescan_s, min(start, pending))
        return start, False

    def run_once(self) -> ProcessReport:
        now = self._clock()
        report = ProcessReport()
        with self._pending_lock:
            start, deep = self.window_start(now)
            self._pending_since = None  # what was noted before now is read by this pass
        if deep:
            self._last_deep = now
        by_location = self._raw(start, now, report)
        for location in self.config.locations:
            raws = by_location.get(location.id, [])
            if raws:
                self._stage(location, raws, report)
            self._index(location, start, now, report)
        self._exceedances(start, now, report)
        self._last_end = now
        self.passes += 1
        return report

    def _raw(
        self, start: float, end: float, report: ProcessReport
    ) -> dict[str, list[tuple[str, Measurement]]]:
        out: dict[str, list[tuple[str, Measurement]]] = defaultdict(list)
        for stored in self._read(start, end):
            where = self._where.get((stored.device_id, stored.reading.sensor))
            if where is None:
                continue
            location, sensor = where
            r = stored.reading
            if r.quantity not in self._wanted[sensor.key]:
                continue
            key = sensor.key  # device.sensor: unique across the fleet
            m = stages.raw(r.ts.timestamp(), key, r.quantity, r.value, r.unit, r.quality)
            out[location.id].append((stored.device_id, m))
            report.readings += 1
        return out

    def _read(self, start: float, end: float) -> list[StoredReading]:
        readings: list[StoredReading] = []
        since = datetime.fromtimestamp(start, UTC)
        until = datetime.fromtimestamp(end, UTC)
        while True:
            page = self.telemetry.sensor_series(SensorQuery(since, until, limit=_PAGE))
            readings += page
            if len(page) < _PAGE or page[-1].reading.ts == since:
                return readings
            since = page[-1].reading.ts  # the boundary's readings come twice; stored once

    def _stage(
        self, location: AirLocation, raws: list[tuple[str, Measurement]], report: ProcessReport
    ) -> None:
        batch = [m for _, m in raws]
        cleaned = stages.clean(batch, self.config.rules(location))
        calibrated = stages.calibrate(cleaned, self.book, self.config.match_s)
        rows = [(f"{m.sensor}.{m.parameter}", location.id, m) for m in (*batch, *cleaned, *calibrated)]
        labels = {m.calibration for m in calibrated if m.calibration}
        versions = [v for v in self.book.versions() if v.label in labels]
        report.stored += self.air.write(rows, versions)
        report.flags.update(f for m in calibrated for f in m.flags)

    # -- indices and events ---------------------------------------------------------------------

    def hours(self, location: AirLocation, start: float, end: float) -> list[aggregate.Aggregate]:
        """The hourly aggregates of a location's calibrated measurements (each sensor's own period)."""
        stored = self.air.measurements(stage="calibrated", start=start, end=end, location=location.id)
        periods = {s.key: s.period_s for s in location.sensors}
        by_sensor: dict[str, list[Measurement]] = defaultdict(list)
        for s in stored:
            by_sensor[s.measurement.sensor].append(s.measurement)
        out: list[aggregate.Aggregate] = []
        for sensor, ms in by_sensor.items():
            out += aggregate.hourly(ms, location.zone, periods.get(sensor, 60.0))
        return sorted(out, key=lambda h: (h.start, h.sensor, h.parameter))

    def _index(self, location: AirLocation, start: float, now: float, report: ProcessReport) -> None:
        standard = self.config.standard
        hours = self._day_of_hours(location, start, now)
        result = indexing.current_index(
            standard, hours, datetime.fromtimestamp(now, location.zone), location.zone, location.station
        )
        report.indices[location.id] = result
        if not isinstance(result, IndexReport):
            return
        before = self.air.latest_index(location.id, standard)
        hour = now // 3600 * 3600
        self.air.record_index(location.id, standard, hour, result)
        previous = before.report["category"] if before is not None else None
        if indexing.worsened(standard, previous, result.category):
            key = f"worsened|{location.id}|{standard}|{hour}|{result.category}"
            self._raise(location, "air_category_worsened", key, result.responsible, now, report)

    def _day_of_hours(self, location: AirLocation, start: float, now: float) -> list[aggregate.Aggregate]:
        """The last 25 hours' aggregates: hours before this pass's window from the last pass, the rest
        recomputed from the store (a pass reads what it could have changed, not a day per location)."""
        since = now - 25 * 3600
        fresh_from = since
        if location.id in self._hours:
            fresh_from = max(since, aggregate.local_hour(start, location.zone).timestamp())
        kept = [h for h in self._hours.get(location.id, []) if since <= h.start.timestamp() < fresh_from]
        hours = kept + self.hours(location, fresh_from, now)
        self._hours[location.id] = hours
        return hours

    def _exceedances(self, start: float, now: float, report: ProcessReport) -> None:
        if not self.config.limits:
            return
        for location in self.config.locations:
            first = aggregate.local_hour(start, location.zone).timestamp()  # whole hours the window touches
            for h in self.hours(location, first, now):
                limit = self.config.limits.get(h.parameter)
                if limit is None or h.end.timestamp() > now or not h.counts or h.mean is None:
                    continue
                if h.mean > limit:
                    key = f"exceedance|{location.id}|{h.sensor}|{h.parameter}|{h.start.timestamp()}"
                    self._raise(location, "air_exceedance", key, h.parameter, h.end.timestamp(), report)

    def _raise(
        self, location: AirLocation, kind: str, key: str, cls: str, ts: float, report: ProcessReport
    ) -> None:
        event_id = uuid.uuid5(_NAMESPACE, key)
        if not self.air.claim_events([str(event_id)]):
            return
        event = DetectionEvent(
            event_id=event_id,
            ts=datetime.fromtimestamp(ts, UTC),
            type=kind,  # type: ignore[arg-type]  # air_category_worsened | air_exceedance
            stream=location.id,
            cls=cls,
            model_version=self.config.standard,
        )
        report.events.append(event)
        self.emit(Origin(f"air-{location.id}", location.site, self.air.next_sequence()), [event])

    # -- as a hub service -----------------------------------------------------------------------

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="air-processor", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                report = self.run_once()
                log.debug(
                    "air: %d readings, %d stored, %d events",
                    report.readings,
                    report.stored,
                    len(report.events),
                )
            except Exception:
                # A failed pass (the store away) is retried next time; rescans make up for it.
                self.failures += 1
                log.exception("air processing failed")
            self._stop.wait(self.config.every_s)

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10.0)


def locations_by_id(config: AirConfig) -> dict[str, AirLocation]:
    return {loc.id: loc for loc in config.locations}


def sensors_of(location: AirLocation) -> Sequence[tuple[str, str, str]]:
    """(sensor_id, parameter, unit) of every sensor and parameter at the location, OpenAQ's "sensors"."""
    return [
        (sensor_id(s.device, s.sensor, p), p, PARAMETERS.get(p, (p, ""))[1])
        for s in location.sensors
        for p in s.parameters
    ]


def store_and_publish(telemetry: TimeSeriesStore, live: LiveFeed) -> Emit:
    """The hub's ``emit``: events are stored like a device's, then offered to SSE and webhooks."""

    def emit(origin: Origin, events: list[DetectionEvent]) -> None:
        telemetry.write([IngestBatch(origin, events=events)])
        live.publish(origin.device_id, origin.site, events)

    return emit
