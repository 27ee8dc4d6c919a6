"""``/v1/events``: detection events (wrong-way, stopped vehicle, ...), oldest first."""

from __future__ import annotations

from typing import Annotated, Any, Final

from fastapi import APIRouter, Query

from cloud.api import problems
from cloud.api.deps import StoreDep, TelemetryReader
from cloud.api.models import Event, EventList, EventsParams

router = APIRouter(
    prefix="/v1/events",
    tags=["events"],
    responses={**problems.AUTH_RESPONSES, **problems.VALIDATION_RESPONSES, **problems.STORE_RESPONSES},
)

_EXAMPLE: Final[dict[str, Any]] = {
    "from": "2025-05-01T08:00:00Z",
    "to": "2025-05-01T09:00:00Z",
    "limit": 100,
    "truncated": False,
    "events": [
        {
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
    ],
}


@router.get(
    "",
    summary="Detection events",
    description="Events in the window `[from, to)` (the last 24 hours by default, at most 31 days), "
    "oldest first, at most `limit` (1 to 1000). `truncated` says more matched.",
    response_model=EventList,
    responses={200: {"content": {"application/json": {"example": _EXAMPLE}}}},
)
def list_events(
    _client: TelemetryReader,
    store: StoreDep,
    params: Annotated[EventsParams, Query()],
) -> EventList:
    start, end = params.window
    # One more than asked tells whether the page is complete.
    stored = store.events(params.to_query(lookahead=1))
    return EventList(
        start=start,
        end=end,
        limit=params.limit,
        truncated=len(stored) > params.limit,
        events=[Event.from_stored(s) for s in stored[: params.limit]],
    )
