"""``/v1/speeds``: speed statistics from the events that carry a measured speed."""

from __future__ import annotations

from typing import Annotated, Any, Final

from fastapi import APIRouter, Query, Request, Response

from roadside.cloud.api import export, problems
from roadside.cloud.api.deps import StoreDep, TelemetryReader
from roadside.cloud.api.schemas import SpeedRow, SpeedSeries, SpeedsParams
from roadside.cloud.storage.base import MAX_SPEED_SAMPLES, speed_statistics

router = APIRouter(
    prefix="/v1/speeds",
    tags=["speeds"],
    responses={**problems.AUTH_RESPONSES, **problems.VALIDATION_RESPONSES, **problems.STORE_RESPONSES},
)

_EXAMPLE: Final[dict[str, Any]] = {
    "bucket_s": 900,
    "from": "2025-05-01T08:00:00Z",
    "to": "2025-05-01T09:00:00Z",
    "rows": [
        {
            "bucket_start": "2025-05-01T08:00:00Z",
            "device": "cam-0042",
            "site": "main-st-5th-ave",
            "line": "stopbar-north",
            "cls": "car",
            "count": 96,
            "mean_kmh": 41.3,
            "p85_kmh": 49.0,
        }
    ],
}
_CSV_EXAMPLE: Final = (
    "bucket_start,device,site,line,cls,count,mean_kmh,p85_kmh\r\n"
    "2025-05-01T08:00:00Z,cam-0042,main-st-5th-ave,stopbar-north,car,96,41.3,49.0\r\n"
)


@router.get(
    "",
    summary="Speeds per time bucket",
    description="For the events with a measured `speed_kmh` in `[from, to)` (the last 24 hours by default, "
    "at most 31 days): how many, their mean and their 85th percentile speed (nearest rank), per bucket "
    "and per (device, line, class). Buckets are aligned as in `/v1/counts`; empty ones are left out. "
    f"A window with more than {MAX_SPEED_SAMPLES:,} such events is refused (`too-many-results`): narrow it "
    "or filter. `format=csv` or `Accept: text/csv` gives the rows as CSV.",
    response_model=SpeedSeries,
    responses={
        200: {"content": {"application/json": {"example": _EXAMPLE}, **export.csv_content(_CSV_EXAMPLE)}}
    },
)
def get_speeds(
    _client: TelemetryReader,
    store: StoreDep,
    params: Annotated[SpeedsParams, Query()],
    request: Request,
) -> SpeedSeries | Response:
    start, end = params.window
    statistics = speed_statistics(store, params.to_query())
    if not statistics.complete:
        raise problems.too_many_results(
            f"More than {MAX_SPEED_SAMPLES} events with a speed in this window; narrow it or filter by device."
        )
    rows = [SpeedRow.from_bucket(b) for b in statistics.buckets]
    if export.wants_csv(request.headers.get("accept"), params.format):
        return export.csv_response(list(SpeedRow.model_fields), (r.model_dump() for r in rows), "speeds.csv")
    return SpeedSeries(bucket_s=params.bucket, start=start, end=end, rows=rows)
