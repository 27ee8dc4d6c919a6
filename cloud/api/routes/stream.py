"""``/v1/events/stream``: accepted events as they arrive, as Server-Sent Events.

Each event is one SSE message (``id`` = event id, ``data`` = the event as
JSON, the same shape as ``/v1/events``). Comments keep the connection alive
(``: heartbeat``) and say when this client fell behind and lost events
(``: dropped N``): each client has a bounded queue that drops its oldest
events when full (:mod:`roadside.cloud.fleet.live`). A stream ends after the hub's maximum
stream duration; clients reconnect (``EventSource`` does by itself), which
also re-checks their API key.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from typing import Annotated, Final

from fastapi import APIRouter, Query
from fastapi.responses import StreamingResponse
from starlette.background import BackgroundTask

from roadside.cloud.api import problems
from roadside.cloud.api.deps import LiveDep, SettingsDep, TelemetryReader
from roadside.cloud.api.schemas import Event, StreamParams
from roadside.cloud.fleet.live import FeedFullError, LiveEvent, Subscription

logger = logging.getLogger(__name__)

EVENT_STREAM: Final = "text/event-stream"
RECONNECT_MS: Final = 3000

router = APIRouter(
    prefix="/v1/events",
    tags=["events"],
    responses={**problems.AUTH_RESPONSES, **problems.VALIDATION_RESPONSES},
)

_EXAMPLE: Final = (
    "retry: 3000\n: connected\n\n"
    "id: 0b6f1c1e-2f0a-4d43-9d38-5b0c3f3f8a51\n"
    'data: {"event_id":"0b6f1c1e-2f0a-4d43-9d38-5b0c3f3f8a51","ts":"2025-05-01T08:17:42.120000Z",'
    '"type":"wrong_way","device":"cam-0042","site":"main-st-5th-ave","stream":"north","cls":"car",'
    '"track_id":8812,"line":"stopbar-north","direction":"out","confidence":0.91,"speed_kmh":23.5,'
    '"model_version":"det-2025.04.2"}\n\n'
    ": heartbeat\n\n"
    ": dropped 12\n\n"
)


@router.get(
    "/stream",
    summary="Live events (Server-Sent Events)",
    description="Events as the hub accepts them, optionally only from one device or site or of some types. "
    "One SSE message per event: `id` is the event id, `data` the event as JSON (as in `/v1/events`). "
    "A `: heartbeat` comment comes when nothing happened for a while. A client that reads too slowly "
    "loses its oldest queued events and is told with a `: dropped N` comment; fetch the gap from "
    "`/v1/events`. Streams end after the hub's maximum duration (an hour by default); reconnect.",
    response_class=StreamingResponse,
    responses={
        200: {
            "description": "An endless `text/event-stream`.",
            "content": {EVENT_STREAM: {"schema": {"type": "string"}, "example": _EXAMPLE}},
        },
        503: {"model": problems.Problem, "description": "The hub serves its maximum number of streams."},
    },
)
async def stream_events(
    _client: TelemetryReader,
    live: LiveDep,
    settings: SettingsDep,
    params: Annotated[StreamParams, Query()],
) -> StreamingResponse:
    try:
        subscription = live.subscribe(params.event_filter())
    except FeedFullError as exc:
        logger.warning("refused a live stream: %s", exc)
        raise problems.unavailable(
            "too-many-streams", "Too many streams", "The hub serves its maximum number of live streams.", 30
        ) from exc
    return StreamingResponse(
        event_messages(subscription, settings.sse_heartbeat_s, settings.sse_max_duration_s),
        media_type=EVENT_STREAM,
        headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
        # If the body never starts (the client left at once), the subscription still goes.
        background=BackgroundTask(subscription.close),
    )


def message(live: LiveEvent) -> str:
    """One SSE message for an event."""
    return f"id: {live.event.event_id}\ndata: {Event.from_stored(live).model_dump_json()}\n\n"


async def event_messages(
    subscription: Subscription, heartbeat_s: float, max_duration_s: float
) -> AsyncIterator[str]:
    """The SSE text of a live-event subscription: a heartbeat while quiet, ends after ``max_duration_s``.

    Also what the console's live page streams.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + max_duration_s
    with subscription:
        yield f"retry: {RECONNECT_MS}\n: connected\n\n"
        while (remaining := deadline - loop.time()) > 0:
            batch, dropped = await subscription.next_batch(min(heartbeat_s, remaining))
            if dropped:
                yield f": dropped {dropped}\n\n"
            if batch:
                yield "".join(message(e) for e in batch)
            elif not dropped:
                yield ": heartbeat\n\n"
        yield ": stream ends; reconnect\n\n"


_messages = event_messages  # the name callers used before it was public
