"""``/v1/events``: detection events (wrong-way, stopped vehicle, ...), in pages of a stable order."""

from __future__ import annotations

from typing import Annotated, Any, Final

from fastapi import APIRouter, Query, Request, Response

from roadside.cloud.api import export, problems
from roadside.cloud.api.deps import StoreDep, TelemetryReader
from roadside.cloud.api.schemas import Event, EventList, EventsParams
from roadside.cloud.storage.base import events_page

router = APIRouter(
    prefix="/v1/events",
    tags=["events"],
    responses={**problems.AUTH_RESPONSES, **problems.VALIDATION_RESPONSES, **problems.STORE_RESPONSES},
)

EVENT_EXAMPLE: Final[dict[str, Any]] = {
    "event_id": "0b6f1c1e-2f0a-4d43-9d38-5b0c3f3f8a51",
    "ts": "2025-05-01T08:17:42.120000Z",
    "type": "wrong_way",
    "device": "cam-0042",
    "site": "main-st-5th-ave",
    "stream": "north",
    "cls": "car",
    "track_id": 8812,
    "line": "stopbar-north",
    "direction": "out",
    "confidence": 0.91,
    "speed_kmh": 23.5,
    "model_version": "det-2025.04.2",
}
_EXAMPLE: Final[dict[str, Any]] = {
    "from": "2025-05-01T08:00:00Z",
    "to": "2025-05-01T09:00:00Z",
    "limit": 1,
    "truncated": True,
    "next_cursor": (
        "WzEsMTc0NjA4NzQ2MjEyMDAwMCwiMGI2ZjFjMWUtMmYwYS00ZDQzLTlkMzgtNWIwYzNmM2Y4"
        "YTUxIiwxNzQ2MDg2NDAwMDAwMDAwLDE3NDYwOTAwMDAwMDAwMDAsbnVsbCxudWxsLG51bGxd"
    ),
    "events": [EVENT_EXAMPLE],
}
_CSV_EXAMPLE: Final = (
    "event_id,ts,type,device,site,stream,cls,track_id,line,direction,confidence,speed_kmh,model_version\r\n"
    "0b6f1c1e-2f0a-4d43-9d38-5b0c3f3f8a51,2025-05-01T08:17:42.120000Z,wrong_way,cam-0042,"
    "main-st-5th-ave,north,car,8812,stopbar-north,out,0.91,23.5,det-2025.04.2\r\n"
)


@router.get(
    "",
    summary="Detection events",
    description="Events in the window `[from, to)` (the last 24 hours by default, at most 31 days), "
    "ordered by `ts` then `event_id`, at most `limit` (1 to 1000) per page. When more match, "
    '`truncated` is true and `next_cursor` continues after this page (also in a `Link: rel="next"` '
    "header): paging is stable, each event appears on exactly one page even while new ones arrive. "
    "`format=csv` or `Accept: text/csv` gives the page as CSV.",
    response_model=EventList,
    responses={
        200: {
            "content": {"application/json": {"example": _EXAMPLE}, **export.csv_content(_CSV_EXAMPLE)},
            "headers": {
                "Link": {
                    "description": '`<…?cursor=…>; rel="next"` while more match.',
                    "schema": {"type": "string"},
                }
            },
        }
    },
)
def list_events(
    _client: TelemetryReader,
    store: StoreDep,
    params: Annotated[EventsParams, Query()],
    request: Request,
    response: Response,
) -> EventList | Response:
    start, end = params.window
    after = params.cursor.after if params.cursor is not None else None
    # One more than asked tells whether the page is complete.
    stored = events_page(store, params.to_query(lookahead=1), after)
    page = stored[: params.limit]
    truncated = len(stored) > params.limit
    next_cursor = params.next_cursor(page[-1]) if truncated else None
    headers = {}
    if next_cursor is not None:
        headers["Link"] = f'<{request.url.include_query_params(cursor=next_cursor)}>; rel="next"'
    events = [Event.from_stored(s) for s in page]
    if export.wants_csv(request.headers.get("accept"), params.format):
        return export.csv_response(
            list(Event.model_fields), (e.model_dump() for e in events), "events.csv", headers
        )
    response.headers.update(headers)
    return EventList(
        start=start, end=end, limit=params.limit, truncated=truncated, next_cursor=next_cursor, events=events
    )
