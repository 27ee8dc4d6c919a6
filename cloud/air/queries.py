"""What the API asks of air quality: locations, sensors, measurements, means, the index (read-only)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from roadside.cloud.air import aggregate, traffic
from roadside.cloud.air.config import PARAMETERS, AirConfig, AirLocation, AirSensor
from roadside.cloud.air.stages import Stage
from roadside.cloud.air.store import AirStore, StoredIndex, StoredMeasurement, sensor_id
from roadside.cloud.storage.base import CountQuery, TimeSeriesStore


@dataclass(frozen=True, slots=True)
class SensorInfo:
    """One sensor per parameter, as OpenAQ models it."""

    id: str
    location: AirLocation
    sensor: AirSensor
    parameter: str
    units: str
    display_name: str


class AirQueries:
    def __init__(self, config: AirConfig, store: AirStore, telemetry: TimeSeriesStore | None = None) -> None:
        self.config = config
        self.store = store
        self.telemetry = telemetry  # counts for the traffic link
        self._locations = {loc.id: loc for loc in config.locations}
        self._sensors: dict[str, SensorInfo] = {}
        for loc in config.locations:
            for s in loc.sensors:
                for p in sorted(config.served(s)):
                    display, units = PARAMETERS.get(p, (p, ""))
                    sid = sensor_id(s.device, s.sensor, p)
                    self._sensors[sid] = SensorInfo(sid, loc, s, p, units, display)

    @property
    def standard(self) -> str:
        return self.config.standard

    def locations(self) -> list[AirLocation]:
        return list(self.config.locations)

    def location(self, location_id: str) -> AirLocation | None:
        return self._locations.get(location_id)

    def sensors_at(self, location: AirLocation) -> list[SensorInfo]:
        return [s for s in self._sensors.values() if s.location.id == location.id]

    def sensor(self, sid: str) -> SensorInfo | None:
        return self._sensors.get(sid)

    def measurements(
        self, sensor: SensorInfo, stage: Stage, start: datetime, end: datetime, limit: int
    ) -> list[StoredMeasurement]:
        return self.store.measurements(
            stage=stage, start=start.timestamp(), end=end.timestamp(), sensor_ids=[sensor.id], limit=limit
        )

    def hours(self, sensor: SensorInfo, start: datetime, end: datetime) -> list[aggregate.Aggregate]:
        stored = self.store.measurements(
            stage="calibrated", start=start.timestamp(), end=end.timestamp(), sensor_ids=[sensor.id]
        )
        return aggregate.hourly([s.measurement for s in stored], sensor.location.zone, sensor.sensor.period_s)

    def days(self, sensor: SensorInfo, start: datetime, end: datetime) -> list[aggregate.Aggregate]:
        zone = sensor.location.zone
        first, _ = aggregate.local_day(start, zone)
        _, last = aggregate.local_day(end, zone)
        return aggregate.daily(self.hours(sensor, first, last), zone)

    def current_index(self, location: AirLocation) -> StoredIndex | None:
        return self.store.latest_index(location.id, self.config.standard)

    def index_history(self, location: AirLocation, start: datetime, end: datetime) -> list[StoredIndex]:
        return self.store.index_history(location.id, self.config.standard, start.timestamp(), end.timestamp())

    def traffic(self, location: AirLocation, start: datetime, end: datetime) -> list[traffic.TrafficHour]:
        """Hourly counts by class at the location's site beside its hourly NO2 and PM2.5 means."""
        zone = location.zone
        first = aggregate.local_hour(start.timestamp(), zone)
        starts = []
        at = first
        while at < end:
            starts.append(at)
            at = datetime.fromtimestamp(at.timestamp() + 3600, zone)
        counts: list[tuple[datetime, str, int]] = []
        if self.telemetry is not None:
            query = CountQuery(first, end, bucket_s=3600, site=location.site)
            for b in self.telemetry.count_buckets(query):
                counts.append((aggregate.local_hour(b.bucket_start.timestamp(), zone), b.cls, b.count))
        means: dict[str, dict[datetime, float]] = {}
        for parameter in ("no2", "pm25"):
            ids = [
                sensor_id(s.device, s.sensor, parameter)
                for s in location.sensors
                if parameter in s.parameters
            ]
            if not ids:
                continue
            stored = self.store.measurements(
                stage="calibrated", start=first.timestamp(), end=end.timestamp(), sensor_ids=ids
            )
            by_start: dict[datetime, list[float]] = {}
            periods = {s.key: s.period_s for s in location.sensors}
            ms = [x.measurement for x in stored]
            for sensor in {m.sensor for m in ms}:
                own = [m for m in ms if m.sensor == sensor]
                for h in aggregate.hourly(own, zone, periods.get(sensor, 60.0)):
                    if h.counts and h.mean is not None:
                        by_start.setdefault(h.start, []).append(h.mean)
            means[parameter] = {k: sum(v) / len(v) for k, v in by_start.items()}
        return traffic.hours_together(counts, means, starts)
