"""``/v1/air``: air-quality locations, sensors, measurements by stage, means with coverage, the index.

OpenAQ-shaped (``docs/air-quality.md``); read with ``read:telemetry``. Answers
501 on a hub without an ``air`` section in its settings.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Final

from fastapi import APIRouter, Path, Query, Request, Response

from roadside.cloud.air import traffic
from roadside.cloud.air.config import AirLocation
from roadside.cloud.air.queries import AirQueries, SensorInfo
from roadside.cloud.api import air_schemas as s
from roadside.cloud.api import export, problems
from roadside.cloud.api.deps import AirDep, TelemetryReader

router = APIRouter(
    prefix="/v1/air",
    tags=["air"],
    responses={
        **problems.AUTH_RESPONSES,
        **problems.VALIDATION_RESPONSES,
        **problems.STORE_RESPONSES,
        501: {"model": problems.Problem, "description": "Air quality is not configured on this hub."},
    },
)
_NOT_FOUND: Final[dict[int | str, dict[str, Any]]] = {
    404: {"model": problems.Problem, "description": "No such location or sensor."}
}
LocationPath = Annotated[str, Path(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_-]+$")]
SensorPath = Annotated[str, Path(min_length=1, max_length=200, pattern=r"^[A-Za-z0-9_.:-]+$")]
_MEASUREMENT_COLUMNS: Final = [
    "utc",
    "local",
    "sensor",
    "parameter",
    "units",
    "stage",
    "value",
    "flags",
    "calibration",
]
_MEAN_COLUMNS: Final = ["from_utc", "to_utc", "from_local", "sensor", "parameter", "units", "value", "valid",
                        "min", "max", "expected", "observed", "percent_complete"]  # fmt: skip


def _location(air: AirQueries, location_id: str) -> AirLocation:
    location = air.location(location_id)
    if location is None:
        raise problems.not_found("air location", location_id)
    return location


def _sensor(air: AirQueries, sensor_id: str) -> SensorInfo:
    sensor = air.sensor(sensor_id)
    if sensor is None:
        raise problems.not_found("air sensor", sensor_id)
    return sensor


def _location_out(air: AirQueries, location: AirLocation) -> s.Location:
    latest = air.current_index(location)
    coordinates = (
        s.Coordinates(latitude=location.latitude, longitude=location.longitude)
        if location.latitude is not None and location.longitude is not None
        else None
    )
    return s.Location(
        id=location.id,
        name=location.name,
        timezone=location.timezone,
        station=location.station,
        coordinates=coordinates,
        sensors=[s.Sensor.of(info) for info in air.sensors_at(location)],
        index=s.Index.of(latest) if latest is not None else None,
    )


@router.get("/locations", summary="Air-quality locations", response_model=s.Locations)
def list_locations(_client: TelemetryReader, air: AirDep) -> s.Locations:
    """Every location with its sensors (one per parameter, with units) and its latest index."""
    return s.Locations(results=[_location_out(air, loc) for loc in air.locations()])


@router.get(
    "/locations/{location_id}",
    summary="One air-quality location",
    response_model=s.Location,
    responses=_NOT_FOUND,
)
def get_location(_client: TelemetryReader, air: AirDep, location_id: LocationPath) -> s.Location:
    return _location_out(air, _location(air, location_id))


@router.get(
    "/locations/{location_id}/index",
    summary="A location's index history",
    description="The index computed each hour in `[from, to)` under the hub's standard, oldest first. "
    "Hours where the data rules gave no index are absent.",
    response_model=s.IndexHistory,
    responses=_NOT_FOUND,
)
def get_index_history(
    _client: TelemetryReader,
    air: AirDep,
    location_id: LocationPath,
    params: Annotated[s.HistoryParams, Query()],
) -> s.IndexHistory:
    location = _location(air, location_id)
    start, end = params.window
    history = air.index_history(location, start, end)
    return s.IndexHistory(
        location=location.id,
        standard=air.standard,
        start=start,
        end=end,
        results=[s.Index.of(i) for i in history],
    )


@router.get(
    "/locations/{location_id}/traffic",
    summary="Traffic and air together",
    description="Per local hour in `[from, to)`: the vehicles counted at the location's site by class "
    "beside its NO2 and PM2.5 hourly means; Pearson's r between the totals and each pollutant; and an "
    "emission estimate from the counts where per-class emission factors are configured.",
    response_model=s.TrafficAndAir,
    responses=_NOT_FOUND,
)
def get_traffic(
    _client: TelemetryReader,
    air: AirDep,
    location_id: LocationPath,
    params: Annotated[s.HistoryParams, Query()],
) -> s.TrafficAndAir:
    location = _location(air, location_id)
    start, end = params.window
    hours = air.traffic(location, start, end)
    factors = air.config.emission_factors
    return s.TrafficAndAir(
        location=location.id,
        start=start,
        end=end,
        hours=[
            s.TrafficHourOut(start=h.start, counts=h.counts, total=h.total, no2=h.pollutants.get("no2"),
                             pm25=h.pollutants.get("pm25"))
            for h in hours
        ],
        correlation=traffic.correlations(hours),
        emissions_g=traffic.emissions(hours, factors, location.road_length_km) if factors else None,
        road_length_km=location.road_length_km,
    )  # fmt: skip


@router.get(
    "/sensors/{sensor_id}/measurements",
    summary="A sensor's measurements",
    description="Values in `[from, to)` at one stage (`raw` as reported, `cleaned` with every flag, "
    "`calibrated` with the calibration label), oldest first, at most `limit`. `format=csv` gives CSV.",
    response_model=s.Measurements,
    responses={**_NOT_FOUND, 200: {"content": export.csv_content("utc,local,sensor,...\r\n")}},
)
def get_measurements(
    _client: TelemetryReader,
    air: AirDep,
    sensor_id: SensorPath,
    params: Annotated[s.MeasurementParams, Query()],
    request: Request,
) -> s.Measurements | Response:
    sensor = _sensor(air, sensor_id)
    start, end = params.window
    stored = air.measurements(sensor, params.stage, start, end, params.limit + 1)
    results = [s.measurement(sensor, m) for m in stored[: params.limit]]
    if export.wants_csv(request.headers.get("accept"), params.format):
        rows = (
            {"utc": r.period.datetimeFrom.utc, "local": r.period.datetimeFrom.local.isoformat(), "sensor": sensor.id,
             "parameter": sensor.parameter, "units": sensor.units, "stage": r.stage, "value": r.value,
             "flags": " ".join(r.flags), "calibration": r.calibration}
            for r in results
        )  # fmt: skip
        return export.csv_response(_MEASUREMENT_COLUMNS, rows, f"{sensor.id}-{params.stage}.csv")
    return s.Measurements(
        sensor=s.Sensor.of(sensor), start=start, end=end, limit=params.limit,
        truncated=len(stored) > params.limit, results=results,
    )  # fmt: skip


def _means(
    sensor: SensorInfo, means: list[s.Mean], start: datetime, end: datetime, csv: bool, name: str
) -> s.Means | Response:
    if csv:
        rows = (
            {"from_utc": m.period.datetimeFrom.utc, "to_utc": m.period.datetimeTo.utc,
             "from_local": m.period.datetimeFrom.local.isoformat(), "sensor": sensor.id,
             "parameter": sensor.parameter, "units": sensor.units, "value": m.value, "valid": m.valid,
             "min": m.summary.min, "max": m.summary.max, "expected": m.coverage.expectedCount,
             "observed": m.coverage.observedCount, "percent_complete": m.coverage.percentComplete}
            for m in means
        )  # fmt: skip
        return export.csv_response(_MEAN_COLUMNS, rows, name)
    return s.Means(sensor=s.Sensor.of(sensor), start=start, end=end, results=means)


@router.get(
    "/sensors/{sensor_id}/hours",
    summary="A sensor's hourly means",
    description="Means of the valid calibrated values per local hour in `[from, to)`, with coverage "
    "(expected and observed readings); `valid` when at least 75 % were there.",
    response_model=s.Means,
    responses={**_NOT_FOUND, 200: {"content": export.csv_content("from_utc,to_utc,...\r\n")}},
)
def get_hours(
    _client: TelemetryReader,
    air: AirDep,
    sensor_id: SensorPath,
    params: Annotated[s.MeansParams, Query()],
    request: Request,
) -> s.Means | Response:
    sensor = _sensor(air, sensor_id)
    start, end = params.window
    means = [s.mean(sensor, h) for h in air.hours(sensor, start, end)]
    csv = export.wants_csv(request.headers.get("accept"), params.format)
    return _means(sensor, means, start, end, csv, f"{sensor.id}-hours.csv")


@router.get(
    "/sensors/{sensor_id}/days",
    summary="A sensor's daily means",
    description="Means of the valid hourly means per local day (the location's time zone) touching "
    "`[from, to)`, with coverage in hours; `valid` when at least 75 % of the day's hours were.",
    response_model=s.Means,
    responses={**_NOT_FOUND, 200: {"content": export.csv_content("from_utc,to_utc,...\r\n")}},
)
def get_days(
    _client: TelemetryReader,
    air: AirDep,
    sensor_id: SensorPath,
    params: Annotated[s.MeansParams, Query()],
    request: Request,
) -> s.Means | Response:
    sensor = _sensor(air, sensor_id)
    start, end = params.window
    means = [s.mean(sensor, d) for d in air.days(sensor, start, end)]
    csv = export.wants_csv(request.headers.get("accept"), params.format)
    return _means(sensor, means, start, end, csv, f"{sensor.id}-days.csv")
