"""``/v1/sensors``: environmental and occupancy readings, as series and as latest values."""

from __future__ import annotations

from typing import Annotated, Any, Final

from fastapi import APIRouter, Query, Request, Response

from roadside.cloud.api import export, problems
from roadside.cloud.api.deps import StoreDep, TelemetryReader
from roadside.cloud.api.schemas import (
    LatestSensors,
    LatestSensorsParams,
    SensorSeries,
    SensorsParams,
    SensorValue,
)
from roadside.cloud.storage.base import latest_sensor_readings

router = APIRouter(
    prefix="/v1/sensors",
    tags=["sensors"],
    responses={**problems.AUTH_RESPONSES, **problems.VALIDATION_RESPONSES, **problems.STORE_RESPONSES},
)

_READING: Final[dict[str, Any]] = {
    "ts": "2025-05-01T08:15:00Z",
    "device": "cam-0042",
    "site": "main-st-5th-ave",
    "sensor": "air-1",
    "quantity": "pm25",
    "value": 12.4,
    "unit": "ug/m3",
    "quality": "ok",
}
_WINDOW: Final[dict[str, Any]] = {"from": "2025-05-01T08:00:00Z", "to": "2025-05-01T09:00:00Z"}
_CSV_EXAMPLE: Final = (
    "ts,device,site,sensor,quantity,value,unit,quality\r\n"
    "2025-05-01T08:15:00Z,cam-0042,main-st-5th-ave,air-1,pm25,12.4,ug/m3,ok\r\n"
)
_COLUMNS: Final = list(SensorValue.model_fields)


def _csv(readings: list[SensorValue], filename: str) -> Response:
    return export.csv_response(_COLUMNS, (r.model_dump() for r in readings), filename)


@router.get(
    "",
    summary="Sensor series",
    description="Sensor readings in `[from, to)` (the last 24 hours by default, at most 31 days), oldest "
    "first, at most `limit` (1 to 10 000); `truncated` says more matched. `quality` flags readings the "
    "device judged out of range, stuck, missing or spiking. `format=csv` or `Accept: text/csv` gives CSV.",
    response_model=SensorSeries,
    responses={
        200: {
            "content": {
                "application/json": {
                    "example": {**_WINDOW, "limit": 1000, "truncated": False, "readings": [_READING]}
                },
                **export.csv_content(_CSV_EXAMPLE),
            }
        }
    },
)
def get_sensor_series(
    _client: TelemetryReader,
    store: StoreDep,
    params: Annotated[SensorsParams, Query()],
    request: Request,
) -> SensorSeries | Response:
    start, end = params.window
    stored = store.sensor_series(params.to_query(lookahead=1))
    readings = [SensorValue.from_stored(r) for r in stored[: params.limit]]
    if export.wants_csv(request.headers.get("accept"), params.format):
        return _csv(readings, "sensors.csv")
    return SensorSeries(
        start=start, end=end, limit=params.limit, truncated=len(stored) > params.limit, readings=readings
    )


@router.get(
    "/latest",
    summary="Latest sensor values",
    description="The newest reading of each (device, sensor, quantity) within `[from, to)` (the last 24 "
    "hours by default): what a dashboard shows now. A sensor silent for the whole window is absent. "
    "`format=csv` or `Accept: text/csv` gives CSV.",
    response_model=LatestSensors,
    responses={
        200: {
            "content": {
                "application/json": {"example": {**_WINDOW, "truncated": False, "readings": [_READING]}},
                **export.csv_content(_CSV_EXAMPLE),
            }
        }
    },
)
def get_latest_sensors(
    _client: TelemetryReader,
    store: StoreDep,
    params: Annotated[LatestSensorsParams, Query()],
    request: Request,
) -> LatestSensors | Response:
    start, end = params.window
    stored = latest_sensor_readings(store, params.to_query(lookahead=1))
    readings = [SensorValue.from_stored(r) for r in stored[: params.limit]]
    if export.wants_csv(request.headers.get("accept"), params.format):
        return _csv(readings, "sensors-latest.csv")
    return LatestSensors(start=start, end=end, truncated=len(stored) > params.limit, readings=readings)
