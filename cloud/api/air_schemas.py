"""The air-quality API's parameters and answers, in OpenAQ's shape (v3: locations, sensors, measurements).

A city can publish to OpenAQ without reshaping: a location has coordinates,
a time zone and one *sensor per parameter* with its units; a sensor's
measurements carry a period (``datetimeFrom``/``datetimeTo`` in UTC and local
time) and, for means, OpenAQ's ``coverage`` (expected and observed counts,
percent complete). Roadside adds the stage (raw, cleaned, calibrated), the
flags and the calibration label of each value.
"""

from __future__ import annotations

from datetime import UTC, datetime, tzinfo
from typing import Annotated, Final, Literal

from pydantic import BaseModel, ConfigDict, Field

from roadside.cloud.air.aggregate import Aggregate
from roadside.cloud.air.queries import SensorInfo
from roadside.cloud.air.store import StoredIndex, StoredMeasurement
from roadside.cloud.api.export import ExportFormat
from roadside.cloud.api.schemas import WindowParams

MAX_MEASUREMENTS: Final = 10_000
LocationId = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_-]+$")]
SensorId = Annotated[str, Field(min_length=1, max_length=200, pattern=r"^[A-Za-z0-9_.:-]+$")]


class _Out(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Coordinates(_Out):
    latitude: float
    longitude: float


class Parameter(_Out):
    name: str = Field(description="`pm25`, `pm10`, `no2`, `o3`, `so2`, `co`, `rh`, `temperature`, ...")
    units: str
    displayName: str  # noqa: N815 (OpenAQ's field name)


class Sensor(_Out):
    id: str = Field(description="`<device>.<sensor>.<parameter>`")
    name: str
    parameter: Parameter

    @classmethod
    def of(cls, info: SensorInfo) -> Sensor:
        return cls(
            id=info.id,
            name=f"{info.sensor.device}.{info.sensor.sensor} {info.parameter}",
            parameter=Parameter(name=info.parameter, units=info.units, displayName=info.display_name),
        )


class Index(_Out):
    """An index as `roadside air index` prints it, and the hour it was computed in."""

    standard: str
    overall: int
    category: str
    responsible: str
    by_pollutant: dict[str, int]
    averaging: dict[str, str]
    hour: datetime
    beyond_index: list[str] | None = None
    missing: list[str] | None = None

    @classmethod
    def of(cls, stored: StoredIndex) -> Index:
        return cls(**stored.report, hour=datetime.fromtimestamp(stored.hour, UTC))


class Location(_Out):
    id: str
    name: str
    timezone: str
    station: Literal["traffic", "background"]
    coordinates: Coordinates | None
    sensors: list[Sensor]
    index: Index | None = Field(description="The latest index; `null` where the data rules gave none.")


class Locations(_Out):
    results: list[Location]


class When(_Out):
    utc: datetime
    local: datetime


class Period(_Out):
    label: str = Field(description="`raw`, `cleaned`, `calibrated`, `1hour` or `1day`")
    datetimeFrom: When  # noqa: N815 (OpenAQ's field name)
    datetimeTo: When  # noqa: N815


class Measurement(_Out):
    value: float
    stage: Literal["raw", "cleaned", "calibrated"]
    flags: list[str] = Field(description="Data-quality flags (docs/air-quality.md); empty when none.")
    valid: bool = Field(description="False when a flag keeps the value out of means and indices.")
    calibration: str | None = Field(description="The calibration version's label (calibrated stage).")
    parameter: Parameter
    period: Period


class Measurements(_Out):
    sensor: Sensor
    start: datetime
    end: datetime
    limit: int
    truncated: bool
    results: list[Measurement]


class Summary(_Out):
    min: float | None
    max: float | None
    avg: float | None


class Coverage(_Out):
    expectedCount: int  # noqa: N815 (OpenAQ's field names)
    observedCount: int  # noqa: N815
    percentComplete: float  # noqa: N815
    datetimeFrom: When  # noqa: N815
    datetimeTo: When  # noqa: N815


class Mean(_Out):
    value: float | None = Field(description="The mean; `null` when nothing valid was measured.")
    valid: bool = Field(description="Complete enough for the data rules (75 %) to count.")
    parameter: Parameter
    period: Period
    summary: Summary
    coverage: Coverage


class Means(_Out):
    sensor: Sensor
    start: datetime
    end: datetime
    results: list[Mean]


class TrafficHourOut(_Out):
    start: datetime
    counts: dict[str, int] = Field(description="Vehicles counted by class in the hour (all lines, the site).")
    total: int
    no2: float | None = Field(description="The location's NO2 hourly mean (ppb), `null` without a valid one.")
    pm25: float | None = Field(description="The location's PM2.5 hourly mean (µg/m³), `null` without one.")


class TrafficAndAir(_Out):
    location: str
    start: datetime
    end: datetime
    hours: list[TrafficHourOut]
    correlation: dict[str, float | None] = Field(
        description="Pearson's r between the hourly total count and each pollutant (≥ 3 hours with both)."
    )
    emissions_g: dict[str, float] | None = Field(
        description="Grams emitted by the counted vehicles on `road_length_km` by the configured "
        "per-class factors; `null` where none are configured."
    )
    road_length_km: float


class IndexHistory(_Out):
    location: str
    standard: str
    start: datetime
    end: datetime
    results: list[Index]


def _when(moment: datetime, zone: tzinfo) -> When:
    # Hours and days are cut in local time: their bounds arrive with the zone's offset.
    return When(utc=moment.astimezone(UTC), local=moment.astimezone(zone))


def measurement(info: SensorInfo, stored: StoredMeasurement) -> Measurement:
    m = stored.measurement
    at = datetime.fromtimestamp(m.ts, UTC)
    when = _when(at, info.location.zone)
    return Measurement(
        value=m.value,
        stage=m.stage,
        flags=sorted(m.flags),
        valid=m.valid,
        calibration=m.calibration,
        parameter=Sensor.of(info).parameter,
        period=Period(label=m.stage, datetimeFrom=when, datetimeTo=when),
    )


def mean(info: SensorInfo, a: Aggregate) -> Mean:
    zone = info.location.zone
    start, end = _when(a.start, zone), _when(a.end, zone)
    return Mean(
        value=a.mean,
        valid=a.counts,
        parameter=Sensor.of(info).parameter,
        period=Period(label="1hour" if a.period == "1h" else "1day", datetimeFrom=start, datetimeTo=end),
        summary=Summary(min=a.minimum, max=a.maximum, avg=a.mean),
        coverage=Coverage(
            expectedCount=a.expected,
            observedCount=a.observed,
            percentComplete=round(a.percent, 2),
            datetimeFrom=start,
            datetimeTo=end,
        ),
    )


class MeasurementParams(WindowParams):
    stage: Literal["raw", "cleaned", "calibrated"] = Field(
        default="calibrated", description="Which stage: as reported, flagged, or calibrated."
    )
    limit: int = Field(
        default=1000, ge=1, le=MAX_MEASUREMENTS, description="At most this many, oldest first."
    )
    format: ExportFormat | None = Field(default=None, description="`csv` for CSV (or `Accept: text/csv`).")


class MeansParams(WindowParams):
    format: ExportFormat | None = Field(default=None, description="`csv` for CSV (or `Accept: text/csv`).")


class HistoryParams(WindowParams):
    pass
