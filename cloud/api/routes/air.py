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
LocationPath = Annotated[
    str, Path(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_-]+$", description="The location's id.")
]
SensorPath = Annotated[
    str,
    Path(min_length=1, max_length=200, pattern=r"^[A-Za-z0-9_.:-]+$",
         description="The sensor's id, `<device>.<sensor>.<parameter>`."),
]  # fmt: skip
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

# Examples: a traffic station at a New York intersection, a Plantower PM sensor (PM2.5 corrected by
# the US EPA formula, and RH) and an Alphasense NO2 board on one pole, in December (UTC-5).
_PM25: Final[dict[str, Any]] = {"name": "pm25", "units": "ug/m3", "displayName": "PM2.5"}
_PM_SENSOR: Final[dict[str, Any]] = {
    "id": "cam-0042.pm-1.pm25",
    "name": "cam-0042.pm-1 pm25",
    "parameter": _PM25,
}
_SENSORS_EXAMPLE: Final[list[dict[str, Any]]] = [
    _PM_SENSOR,
    {"id": "cam-0042.pm-1.rh", "name": "cam-0042.pm-1 rh",
     "parameter": {"name": "rh", "units": "%", "displayName": "Relative humidity"}},
    {"id": "cam-0042.gas-1.no2", "name": "cam-0042.gas-1 no2",
     "parameter": {"name": "no2", "units": "ppb", "displayName": "NO₂"}},
]  # fmt: skip


def _index_example(hour: str, overall: int, pm25: int, no2: int) -> dict[str, Any]:
    return {"standard": "us-epa", "overall": overall, "category": "Moderate" if overall > 50 else "Good",
            "responsible": "pm25" if pm25 >= no2 else "no2", "by_pollutant": {"no2": no2, "pm25": pm25},
            "averaging": {"no2": "1h", "pm25": "24h"}, "hour": hour, "beyond_index": None, "missing": None}  # fmt: skip


_LOCATION_EXAMPLE: Final[dict[str, Any]] = {
    "id": "main-5th",
    "name": "Main St & 5th Ave",
    "timezone": "America/New_York",
    "station": "traffic",
    "coordinates": {"latitude": 40.7506, "longitude": -73.9935},
    "sensors": _SENSORS_EXAMPLE,
    "index": _index_example("2026-12-05T13:00:00Z", 56, 56, 44),
}
_INDEX_HISTORY_EXAMPLE: Final[dict[str, Any]] = {
    "location": "main-5th",
    "standard": "us-epa",
    "start": "2026-12-05T11:00:00Z",
    "end": "2026-12-05T14:00:00Z",
    "results": [
        _index_example("2026-12-05T11:00:00Z", 52, 52, 38),
        _index_example("2026-12-05T12:00:00Z", 54, 54, 47),
        _index_example("2026-12-05T13:00:00Z", 56, 56, 44),
    ],
}
_TRAFFIC_EXAMPLE: Final[dict[str, Any]] = {
    "location": "main-5th",
    "start": "2026-12-05T12:00:00Z",
    "end": "2026-12-05T15:00:00Z",
    "hours": [
        {"start": "2026-12-05T07:00:00-05:00", "counts": {"bus": 14, "car": 812, "truck": 46}, "total": 872,
         "no2": 38.2, "pm25": 11.4},
        {"start": "2026-12-05T08:00:00-05:00", "counts": {"bus": 18, "car": 1045, "truck": 52}, "total": 1115,
         "no2": 47.6, "pm25": 12.2},
        {"start": "2026-12-05T09:00:00-05:00", "counts": {"bus": 16, "car": 930, "truck": 49}, "total": 995,
         "no2": 41.0, "pm25": 12.9},
    ],
    "correlation": {"no2": 0.97, "pm25": 0.54},
    "emissions_g": None,
    "road_length_km": 0.1,
}  # fmt: skip


def _measurement_example(utc: str, local: str, value: float, flags: list[str]) -> dict[str, Any]:
    when = {"utc": utc, "local": local}
    return {"value": value, "stage": "calibrated", "flags": flags, "valid": "spike" not in flags,
            "calibration": "cam-0042.pm-1/pm25_cf1/v1", "parameter": _PM25,
            "period": {"label": "calibrated", "datetimeFrom": when, "datetimeTo": when}}  # fmt: skip


_MEASUREMENTS_EXAMPLE: Final[dict[str, Any]] = {
    "sensor": _PM_SENSOR,
    "start": "2026-12-05T13:00:00Z",
    "end": "2026-12-05T14:00:00Z",
    "limit": 1000,
    "truncated": False,
    "results": [
        _measurement_example("2026-12-05T13:00:00Z", "2026-12-05T08:00:00-05:00", 12.31, []),
        _measurement_example("2026-12-05T13:01:00Z", "2026-12-05T08:01:00-05:00", 41.07, ["spike"]),
    ],
}
_MEASUREMENTS_CSV: Final = (
    "utc,local,sensor,parameter,units,stage,value,flags,calibration\r\n"
    "2026-12-05T13:00:00Z,2026-12-05T08:00:00-05:00,cam-0042.pm-1.pm25,pm25,ug/m3,calibrated,12.31,,"
    "cam-0042.pm-1/pm25_cf1/v1\r\n"
    "2026-12-05T13:01:00Z,2026-12-05T08:01:00-05:00,cam-0042.pm-1.pm25,pm25,ug/m3,calibrated,41.07,spike,"
    "cam-0042.pm-1/pm25_cf1/v1\r\n"
)


def _mean_example(
    label: str,
    span: tuple[str, str, str, str],
    value: float,
    low: float,
    high: float,
    counts: tuple[int, int],
) -> dict[str, Any]:
    start = {"utc": span[0], "local": span[1]}
    end = {"utc": span[2], "local": span[3]}
    expected, observed = counts
    percent = round(100 * observed / expected, 2)
    return {"value": value, "valid": percent >= 75, "parameter": _PM25,
            "period": {"label": label, "datetimeFrom": start, "datetimeTo": end},
            "summary": {"min": low, "max": high, "avg": value},
            "coverage": {"expectedCount": expected, "observedCount": observed, "percentComplete": percent,
                         "datetimeFrom": start, "datetimeTo": end}}  # fmt: skip


_HOURS_EXAMPLE: Final[dict[str, Any]] = {
    "sensor": _PM_SENSOR,
    "start": "2026-12-05T12:00:00Z",
    "end": "2026-12-05T14:00:00Z",
    "results": [
        _mean_example("1hour", ("2026-12-05T12:00:00Z", "2026-12-05T07:00:00-05:00", "2026-12-05T13:00:00Z",
                                "2026-12-05T08:00:00-05:00"), 11.4, 8.92, 14.1, (60, 60)),
        _mean_example("1hour", ("2026-12-05T13:00:00Z", "2026-12-05T08:00:00-05:00", "2026-12-05T14:00:00Z",
                                "2026-12-05T09:00:00-05:00"), 12.2, 9.87, 15.64, (60, 41)),
    ],
}  # fmt: skip
_HOURS_CSV: Final = (
    "from_utc,to_utc,from_local,sensor,parameter,units,value,valid,min,max,expected,observed,percent_complete\r\n"
    "2026-12-05T12:00:00Z,2026-12-05T13:00:00Z,2026-12-05T07:00:00-05:00,cam-0042.pm-1.pm25,pm25,ug/m3,"
    "11.4,true,8.92,14.1,60,60,100.0\r\n"
    "2026-12-05T13:00:00Z,2026-12-05T14:00:00Z,2026-12-05T08:00:00-05:00,cam-0042.pm-1.pm25,pm25,ug/m3,"
    "12.2,false,9.87,15.64,60,41,68.33\r\n"
)
_DAYS_EXAMPLE: Final[dict[str, Any]] = {
    "sensor": _PM_SENSOR,
    "start": "2026-12-04T05:00:00Z",
    "end": "2026-12-05T05:00:00Z",
    "results": [
        _mean_example("1day", ("2026-12-04T05:00:00Z", "2026-12-04T00:00:00-05:00", "2026-12-05T05:00:00Z",
                               "2026-12-05T00:00:00-05:00"), 9.86, 5.12, 14.35, (24, 22)),
    ],
}  # fmt: skip
_DAYS_CSV: Final = (
    "from_utc,to_utc,from_local,sensor,parameter,units,value,valid,min,max,expected,observed,percent_complete\r\n"
    "2026-12-04T05:00:00Z,2026-12-05T05:00:00Z,2026-12-04T00:00:00-05:00,cam-0042.pm-1.pm25,pm25,ug/m3,"
    "9.86,true,5.12,14.35,24,22,91.67\r\n"
)


def _answer(example: dict[str, Any], csv_example: str | None = None) -> dict[int | str, dict[str, Any]]:
    content: dict[str, Any] = {"application/json": {"example": example}}
    if csv_example is not None:
        content.update(export.csv_content(csv_example))
    return {200: {"content": content}}


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


@router.get(
    "/locations",
    summary="Air-quality locations",
    description="Every location configured on the hub, with its coordinates, time zone, station type, "
    "sensors (one per parameter, with units) and its latest index (`null` where the data rules gave none).",
    response_model=s.Locations,
    responses=_answer({"results": [_LOCATION_EXAMPLE]}),
)
def list_locations(_client: TelemetryReader, air: AirDep) -> s.Locations:
    """Every location with its sensors (one per parameter, with units) and its latest index."""
    return s.Locations(results=[_location_out(air, loc) for loc in air.locations()])


@router.get(
    "/locations/{location_id}",
    summary="One air-quality location",
    description="The location with its sensors (one per parameter, with units) and its latest index "
    "(`null` where the data rules gave none).",
    response_model=s.Location,
    responses={**_answer(_LOCATION_EXAMPLE), **_NOT_FOUND},
)
def get_location(_client: TelemetryReader, air: AirDep, location_id: LocationPath) -> s.Location:
    return _location_out(air, _location(air, location_id))


@router.get(
    "/locations/{location_id}/index",
    summary="A location's index history",
    description="The index computed each hour in `[from, to)` under the hub's standard, oldest first. "
    "Hours where the data rules gave no index are absent.",
    response_model=s.IndexHistory,
    responses={**_answer(_INDEX_HISTORY_EXAMPLE), **_NOT_FOUND},
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
    responses={**_answer(_TRAFFIC_EXAMPLE), **_NOT_FOUND},
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
    responses={**_answer(_MEASUREMENTS_EXAMPLE, _MEASUREMENTS_CSV), **_NOT_FOUND},
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
    responses={**_answer(_HOURS_EXAMPLE, _HOURS_CSV), **_NOT_FOUND},
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
    responses={**_answer(_DAYS_EXAMPLE, _DAYS_CSV), **_NOT_FOUND},
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
