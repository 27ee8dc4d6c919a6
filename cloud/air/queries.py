"""What the API asks of air quality: locations, sensors, measurements, means, the index (read-only)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from roadside.cloud.air import aggregate
from roadside.cloud.air.config import PARAMETERS, AirConfig, AirLocation, AirSensor
from roadside.cloud.air.stages import Stage
from roadside.cloud.air.store import AirStore, StoredIndex, StoredMeasurement, sensor_id


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
    def __init__(self, config: AirConfig, store: AirStore) -> None:
        self.config = config
        self.store = store
        self._locations = {loc.id: loc for loc in config.locations}
        self._sensors: dict[str, SensorInfo] = {}
        for loc in config.locations:
            for s in loc.sensors:
                for p in s.parameters:
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
