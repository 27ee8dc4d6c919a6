"""``/v1/counts``: line-crossing counts summed into time buckets."""

from __future__ import annotations

from typing import Annotated, Any, Final

from fastapi import APIRouter, Query, Request, Response

from roadside.cloud.api import export, problems
from roadside.cloud.api.deps import StoreDep, TelemetryReader
from roadside.cloud.api.schemas import CountRow, CountSeries, CountsParams

router = APIRouter(
    prefix="/v1/counts",
    tags=["counts"],
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
            "direction": "in",
            "count": 117,
        }
    ],
}
_CSV_EXAMPLE: Final = (
    "bucket_start,device,site,line,cls,direction,count\r\n"
    "2025-05-01T08:00:00Z,cam-0042,main-st-5th-ave,stopbar-north,car,in,117\r\n"
)


@router.get(
    "",
    summary="Counts per time bucket",
    description="Objects that crossed counting lines, summed per bucket and per (device, line, class, "
    "direction). The window is `[from, to)`, the last 24 hours by default and at most 31 days; "
    "buckets are 1 s to 1 d wide, at most 20 000 per window. A record counts when its interval "
    "starts inside the window; `bucket_start` is aligned to whole multiples of the bucket since the Unix "
    "epoch (UTC), so the first bucket may start before `from`. Empty buckets are left out. "
    "`format=csv` or `Accept: text/csv` gives the rows as CSV.",
    response_model=CountSeries,
    responses={
        200: {
            "content": {
                "application/json": {"example": _EXAMPLE},
                **export.csv_content(_CSV_EXAMPLE),
            }
        }
    },
)
def get_counts(
    _client: TelemetryReader,
    store: StoreDep,
    params: Annotated[CountsParams, Query()],
    request: Request,
) -> CountSeries | Response:
    start, end = params.window
    rows = [CountRow.from_bucket(b) for b in store.count_buckets(params.to_query())]
    if export.wants_csv(request.headers.get("accept"), params.format):
        return export.csv_response(list(CountRow.model_fields), (r.model_dump() for r in rows), "counts.csv")
    return CountSeries(bucket_s=params.bucket, start=start, end=end, rows=rows)
