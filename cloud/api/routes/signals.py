"""``/v1/signals``: channel maps, the ATSPM event log, turning movements, zone statistics, live calls.

See ``docs/signals.md`` for what each resource means to a traffic engineer.
Reading needs ``read:telemetry``; changing a channel map or posting a
controller's events needs ``write:signals``.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import logging
from collections.abc import AsyncIterator
from datetime import datetime, timedelta
from typing import Annotated, Any, Final, Literal, cast

from fastapi import APIRouter, Depends, Path, Query, Request, Response, Security
from fastapi.responses import StreamingResponse
from pydantic import AliasChoices, AwareDatetime, BaseModel, ConfigDict, Field, JsonValue, field_validator
from starlette.background import BackgroundTask

from roadside.cloud.api import export, problems
from roadside.cloud.api.deps import (
    ApiResources,
    RegistryDep,
    SettingsDep,
    StoreDep,
    TelemetryReader,
    actor,
    authorize,
    get_resources,
)
from roadside.cloud.api.schemas import WindowParams
from roadside.cloud.registry import ApiClient, Registry, SignalRecord
from roadside.cloud.signals import atspm
from roadside.cloud.signals.calls import CallDispatcher, CallSubscription, FeedFullError
from roadside.cloud.signals.channel_map import Channel, ChannelMap
from roadside.cloud.signals.movements import MovementCount, rebin, wide_rows
from roadside.cloud.storage.base import TimeSeriesStore, from_epoch_us
from roadside.cloud.storage.signals import (
    MAX_SIGNAL_ROWS,
    ControllerEvent,
    DetectorQuery,
    IntervalQuery,
    SupportsSignals,
)
from roadside.shared.errors import ConfigError
from roadside.shared.limits import to_epoch_us
from roadside.shared.signals import DETECTOR_CODES

logger = logging.getLogger(__name__)

WRITE_SIGNALS: Final = "write:signals"
MAX_EVENTS_PAGE: Final = 10_000
MAX_POSTED_EVENTS: Final = 1000
EVENT_STREAM: Final = "text/event-stream"

SignalWriter = Annotated[ApiClient, Security(authorize, scopes=[WRITE_SIGNALS])]
SignalId = Annotated[
    str, Path(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_-]+$", description="The signal's id.")
]

router = APIRouter(
    prefix="/v1/signals",
    tags=["signals"],
    responses={**problems.AUTH_RESPONSES, **problems.VALIDATION_RESPONSES},
)


NOT_KEPT: Final[dict[int | str, dict[str, Any]]] = {
    501: {"model": problems.Problem, "description": "This hub's telemetry store keeps no signal data."}
}

# Examples: the signal at Main St & 5th Ave (docs/signals.md), its northbound stop-bar zones on
# detector channels 5 and 6 calling phase 2, and a pedestrian push-button zone calling phase 4.
_CHANNELS_EXAMPLE: Final[list[dict[str, Any]]] = [
    {"channel": 5, "kind": "vehicle", "device": "cam-0042", "stream": "cam-north", "zone": "nb-stop-1",
     "phase": 2, "approach": "south", "lane": 1},
    {"channel": 6, "kind": "vehicle", "device": "cam-0042", "stream": "cam-north", "zone": "nb-stop-2",
     "phase": 2, "approach": "south", "lane": 2},
    {"channel": 2, "kind": "pedestrian", "device": "cam-0042", "stream": "cam-north", "zone": "ped-ne",
     "phase": 4, "approach": None, "lane": None},
]  # fmt: skip
_MAP_EXAMPLE: Final[dict[str, Any]] = {
    "signal": "main-5th",
    "name": "Main St & 5th Ave",
    "version": 3,
    "updated_at": "2026-11-30T14:02:11Z",
    "channels": _CHANNELS_EXAMPLE,
}


def _answer(example: dict[str, Any], csv_example: str | None = None) -> dict[int | str, dict[str, Any]]:
    content: dict[str, Any] = {"application/json": {"example": example}}
    if csv_example is not None:
        content.update(export.csv_content(csv_example))
    return {200: {"content": content}}


def get_calls(resources: Annotated[ApiResources, Depends(get_resources)]) -> CallDispatcher:
    if resources.signal_calls is None:
        raise problems.not_configured("The detector-call stream is not configured on this hub.")
    return resources.signal_calls


CallsDep = Annotated[CallDispatcher, Depends(get_calls)]


def _signal(registry: Registry, signal_id: str) -> SignalRecord:
    record = registry.signals.get(signal_id)
    if record is None:
        raise problems.not_found("signal", signal_id)
    return record


def _signals_store(store: TimeSeriesStore) -> SupportsSignals:
    if not isinstance(store, SupportsSignals):
        raise problems.not_configured("This hub's telemetry store does not keep signal data.")
    return store


# Channel maps -----------------------------------------------------------------------


class SignalSummary(BaseModel):
    signal: str
    name: str
    version: int
    channels: int
    updated_at: datetime


class SignalList(BaseModel):
    signals: list[SignalSummary]


class ChannelMapDocument(BaseModel):
    signal: str
    name: str
    version: int = Field(
        description="Counts the changes; send it back as `expect_version` to refuse a lost update."
    )
    updated_at: datetime
    channels: list[Channel]

    @classmethod
    def of(cls, record: SignalRecord) -> ChannelMapDocument:
        return cls(
            signal=record.signal_id,
            name=record.name,
            version=record.version,
            updated_at=record.updated_at,
            channels=record.channel_map.channels,
        )


class ChannelMapBody(ChannelMap):
    """A whole channel map; replaces the signal's map (creates the signal if new)."""

    model_config = ConfigDict(
        extra="forbid",
        frozen=True,
        json_schema_extra={
            # JSON data typed loosely (Any) for the response examples; pydantic's JsonValue here.
            "examples": [
                {
                    "name": "Main St & 5th Ave",
                    "expect_version": 3,
                    "channels": cast("list[JsonValue]", _CHANNELS_EXAMPLE),
                }
            ]
        },
    )

    name: str | None = Field(default=None, min_length=1, max_length=128, pattern=r"^[^\x00-\x1f\x7f]*$")
    expect_version: int | None = Field(
        default=None, ge=0, description="Refuse if the map is no longer at this version."
    )


@router.get(
    "",
    summary="Signals and their channel maps' versions",
    description="Every signal the hub has a channel map for, ordered by id: its name, the map's `version` "
    "(send it back as `expect_version` when replacing the map) and how many channels it has.",
    response_model=SignalList,
    responses=_answer(
        {"signals": [{"signal": "main-5th", "name": "Main St & 5th Ave", "version": 3, "channels": 3,
                      "updated_at": "2026-11-30T14:02:11Z"}]}
    ),
)  # fmt: skip
def list_signals(_client: TelemetryReader, registry: RegistryDep) -> SignalList:
    return SignalList(
        signals=[
            SignalSummary(signal=r.signal_id, name=r.name, version=r.version, channels=len(r.channel_map.channels),
                          updated_at=r.updated_at)
            for r in registry.signals.list()
        ]
    )  # fmt: skip


@router.get(
    "/{signal}/channel-map",
    summary="A signal's channel map",
    description="The signal's detector channels, each tied to the camera zone that drives it (device, "
    "stream, zone) and, where set, the phase it calls and its approach and lane. `version` counts the "
    "changes.",
    response_model=ChannelMapDocument,
    responses={**_answer(_MAP_EXAMPLE), 404: {"model": problems.Problem, "description": "No such signal."}},
)
def get_channel_map(_client: TelemetryReader, registry: RegistryDep, signal: SignalId) -> ChannelMapDocument:
    return ChannelMapDocument.of(_signal(registry, signal))


@router.put(
    "/{signal}/channel-map",
    summary="Replace a signal's channel map",
    description="The whole map, validated whole: channels unique per kind (vehicle 1–128, pedestrian 1–32), "
    "one channel per camera zone, phases 1–16. Audited. A malformed map is refused with 422 and the reason.",
    response_model=ChannelMapDocument,
    responses={
        **_answer({**_MAP_EXAMPLE, "version": 4, "updated_at": "2026-12-05T07:12:40Z"}),
        **problems.BODY_RESPONSES,
        409: {"model": problems.Problem, "description": "`expect_version` is stale."},
    },
)
def put_channel_map(
    client: SignalWriter, registry: RegistryDep, calls: CallsDep, signal: SignalId, body: ChannelMapBody
) -> ChannelMapDocument:
    try:
        record = registry.signals.set_map(
            signal, ChannelMap(channels=body.channels), name=body.name, expect_version=body.expect_version,
            actor=actor(client),
        )  # fmt: skip
    except ConfigError as exc:
        raise problems.conflict(str(exc)) from exc
    calls.invalidate()
    return ChannelMapDocument.of(record)


@router.delete(
    "/{signal}/channel-map/channels/{channel}",
    summary="Remove one channel from a signal's map",
    description="Removes the detector channel of this number and `kind` (vehicle unless asked) and returns "
    "the map, one version on; the call stream stops sending the channel. Audited. A channel the map "
    "lacks is refused with 404 naming the channels it has; a map changed meanwhile, with 409.",
    response_model=ChannelMapDocument,
    responses={
        **_answer({**_MAP_EXAMPLE, "version": 4, "updated_at": "2026-12-05T07:12:40Z",
                   "channels": [c for c in _CHANNELS_EXAMPLE if c["channel"] != 6]}),
        404: {"model": problems.Problem, "description": "No such signal or channel."},
        409: {"model": problems.Problem, "description": "The map changed while this request ran."},
    },
)  # fmt: skip
def delete_channel(
    client: SignalWriter,
    registry: RegistryDep,
    calls: CallsDep,
    signal: SignalId,
    channel: Annotated[int, Path(ge=1, le=128, description="The detector channel's number.")],
    kind: Annotated[
        Literal["vehicle", "pedestrian"],
        Query(description="Which numbering: vehicle or pedestrian detectors."),
    ] = "vehicle",
) -> ChannelMapDocument:
    record = _signal(registry, signal)
    try:
        smaller = record.channel_map.without(channel, kind)
    except ConfigError as exc:
        raise problems.ProblemError(404, "not-found", "Not found", str(exc)) from exc
    try:
        updated = registry.signals.set_map(
            signal, smaller, expect_version=record.version, actor=actor(client)
        )
    except ConfigError as exc:
        raise problems.conflict(str(exc)) from exc
    calls.invalidate()
    return ChannelMapDocument.of(updated)


# The ATSPM event log ----------------------------------------------------------------------


def _encode_cursor(row: atspm.AtspmRow, start: datetime, end: datetime) -> str:
    raw = json.dumps([1, row.ts_us, row.code, row.param, to_epoch_us(start), to_epoch_us(end)]).encode()
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


class EventCursorValue(BaseModel):
    after: atspm.AtspmRow
    start: datetime
    end: datetime


def _decode_cursor(text: str) -> EventCursorValue:
    if len(text) > 256:
        raise ValueError("not a cursor this API issued")
    try:
        values = json.loads(base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)))
        version, ts_us, code, param, start_us, end_us = values
        ints = (ts_us, code, param, start_us, end_us)
        if version != 1 or not all(isinstance(v, int) and not isinstance(v, bool) for v in ints):
            raise ValueError("not a cursor this API issued")
        return EventCursorValue(after=atspm.AtspmRow(ts_us, code, param), start=from_epoch_us(start_us),
                                end=from_epoch_us(end_us))  # fmt: skip
    except (binascii.Error, ValueError, TypeError, OverflowError) as exc:
        raise ValueError("not a cursor this API issued") from exc


class AtspmParams(WindowParams):
    limit: int = Field(
        default=1000, ge=1, le=MAX_EVENTS_PAGE, description="At most this many rows, oldest first."
    )
    cursor: str | None = Field(
        default=None, max_length=256, pattern=r"^[A-Za-z0-9_-]+$",
        description="Continue after the page that returned this `next_cursor` (its window applies).",
    )  # fmt: skip
    format: export.ExportFormat | None = Field(
        default=None, description="`csv` for the ATSPM CSV, else JSON."
    )

    @field_validator("cursor")
    @classmethod
    def _cursor_parses(cls, value: str | None) -> str | None:
        if value is not None:
            _decode_cursor(value)
        return value


class AtspmEvent(BaseModel):
    model_config = ConfigDict(populate_by_name=True)

    SignalID: str
    Timestamp: str = Field(description="Local-free UTC time at 0.1 s, `YYYY-MM-DD HH:MM:SS.f`.")
    EventCode: int
    EventParam: int


class AtspmPage(BaseModel):
    signal: str
    start: datetime = Field(validation_alias=AliasChoices("from", "start"), serialization_alias="from")
    end: datetime = Field(validation_alias=AliasChoices("to", "end"), serialization_alias="to")
    limit: int
    truncated: bool
    next_cursor: str | None
    events: list[AtspmEvent]


def atspm_page(
    store: SupportsSignals,
    record: SignalRecord,
    start: datetime,
    end: datetime,
    after: atspm.AtspmRow | None,
    limit: int,
) -> list[atspm.AtspmRow]:
    """Up to ``limit + 1`` rows after ``after``: detector changes through the map and controller events.

    Each source is read up to a row limit; rows past the last time a full
    source returned are not known complete, so the page stops before that
    time, and the limit doubles until the page is full or both are exhausted.
    """
    devices = tuple(sorted(record.channel_map.devices()))
    from_ts = max(start, from_epoch_us(after.ts_us)) if after is not None else start
    fetch = limit + 1
    while True:
        changes = store.detector_changes(DetectorQuery(from_ts, end, devices, fetch)) if devices else []
        posted = store.controller_events(record.signal_id, from_ts, end, fetch)
        rows = atspm.merge(
            atspm.detector_rows(changes, record.channel_map), atspm.controller_rows(posted), after=after,
            limit=MAX_SIGNAL_ROWS,
        )  # fmt: skip
        horizon: int | None = None
        if len(changes) >= fetch:
            horizon = to_epoch_us(changes[-1].change.ts)
        if len(posted) >= fetch:
            last = to_epoch_us(posted[-1].ts)
            horizon = last if horizon is None else min(horizon, last)
        if horizon is None:
            return rows[: limit + 1]
        complete = [r for r in rows if r.ts_us < horizon]
        if len(complete) > limit or fetch >= MAX_SIGNAL_ROWS:
            return complete[: limit + 1]
        fetch = min(fetch * 2, MAX_SIGNAL_ROWS)


# Phase 2 turns green (code 1, posted by the controller), then channel 5's zone is occupied (82) and
# cleared (81) by a vehicle.
_CSV_EXAMPLE: Final = (
    "SignalID,Timestamp,EventCode,EventParam\r\n"
    "main-5th,2026-12-05 07:29:45.0,1,2\r\n"
    "main-5th,2026-12-05 07:30:00.1,82,5\r\n"
    "main-5th,2026-12-05 07:30:02.4,81,5\r\n"
)
_EVENTS_EXAMPLE: Final[dict[str, Any]] = {
    "signal": "main-5th",
    "from": "2026-12-05T07:00:00Z",
    "to": "2026-12-05T08:00:00Z",
    "limit": 1000,
    "truncated": False,
    "next_cursor": None,
    "events": [
        {"SignalID": "main-5th", "Timestamp": "2026-12-05 07:29:45.0", "EventCode": 1, "EventParam": 2},
        {"SignalID": "main-5th", "Timestamp": "2026-12-05 07:30:00.1", "EventCode": 82, "EventParam": 5},
        {"SignalID": "main-5th", "Timestamp": "2026-12-05 07:30:02.4", "EventCode": 81, "EventParam": 5},
    ],
}


@router.get(
    "/{signal}/events",
    summary="The signal's ATSPM high-resolution event log",
    description="Rows `SignalID, Timestamp, EventCode, EventParam` (Indiana/Purdue enumeration, see "
    "docs/signals.md) in `[from, to)`, ordered by time, code and parameter; at most `limit` per page, "
    "`next_cursor` (and a `Link` header) continue. `format=csv` or `Accept: text/csv` gives the CSV that "
    "ATSPM tools load.",
    response_model=AtspmPage,
    response_model_by_alias=True,
    responses={
        **_answer(_EVENTS_EXAMPLE, _CSV_EXAMPLE),
        404: {"model": problems.Problem, "description": "No such signal."},
        **problems.STORE_RESPONSES,
        **NOT_KEPT,
    },
)
def signal_events(
    _client: TelemetryReader,
    registry: RegistryDep,
    store: StoreDep,
    signal: SignalId,
    params: Annotated[AtspmParams, Query()],
    request: Request,
    response: Response,
) -> AtspmPage | Response:
    record = _signal(registry, signal)
    signals_store = _signals_store(store)
    start, end = params.window
    after = None
    if params.cursor is not None:
        cursor = _decode_cursor(params.cursor)
        start, end, after = cursor.start, cursor.end, cursor.after
    rows = atspm_page(signals_store, record, start, end, after, params.limit)
    page, truncated = rows[: params.limit], len(rows) > params.limit
    next_cursor = _encode_cursor(page[-1], start, end) if truncated else None
    headers = {}
    if next_cursor is not None:
        headers["Link"] = f'<{request.url.include_query_params(cursor=next_cursor)}>; rel="next"'
    if export.wants_csv(request.headers.get("accept"), params.format):
        return Response(
            atspm.csv_text(signal, page),
            media_type=export.CSV_MEDIA_TYPE,
            headers={"Content-Disposition": f'attachment; filename="{signal}-events.csv"', **headers},
        )
    response.headers.update(headers)
    events = [AtspmEvent(SignalID=signal, Timestamp=atspm.timestamp_text(r), EventCode=r.code, EventParam=r.param)
              for r in page]  # fmt: skip
    return AtspmPage(
        signal=signal, start=start, end=end, limit=params.limit, truncated=truncated, next_cursor=next_cursor,
        events=events,
    )  # fmt: skip


class PostedEvent(BaseModel):
    model_config = ConfigDict(extra="forbid")

    ts: AwareDatetime
    code: int = Field(ge=0, le=255, description="Indiana event code; 81–92 are Roadside's detectors' own.")
    param: int = Field(ge=0, le=255)

    @field_validator("code")
    @classmethod
    def _not_a_detector_code(cls, code: int) -> int:
        if code in DETECTOR_CODES:
            raise ValueError(
                f"event code {code} is a detector code (81-92): Roadside's detectors write those"
            )
        return code


class PostedEvents(BaseModel):
    # Phase 2's green, yellow and red clearance as the controller logged them.
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "events": [
                        {"ts": "2026-12-05T07:29:45.000Z", "code": 1, "param": 2},
                        {"ts": "2026-12-05T07:30:21.300Z", "code": 8, "param": 2},
                        {"ts": "2026-12-05T07:30:25.300Z", "code": 10, "param": 2},
                    ]
                }
            ]
        },
    )

    events: list[PostedEvent] = Field(min_length=1, max_length=MAX_POSTED_EVENTS)


class Stored(BaseModel):
    stored: int


@router.post(
    "/{signal}/events",
    summary="Post the controller's own events (phases, pedestrian intervals)",
    description="Up to 1000 Indiana-coded controller events (phase greens, yellows, reds, pedestrian "
    "intervals, calls) for the signal's ATSPM log, where `GET .../events` merges them with the rows "
    "Roadside's detectors write. Detector codes 81–92 are refused with 422: those are Roadside's own.",
    status_code=202,
    response_model=Stored,
    responses={
        202: {"content": {"application/json": {"example": {"stored": 3}}}},
        **problems.BODY_RESPONSES,
        **problems.STORE_RESPONSES,
        **NOT_KEPT,
        404: {"model": problems.Problem, "description": "No such signal."},
    },
)
def post_signal_events(
    _client: SignalWriter, registry: RegistryDep, store: StoreDep, signal: SignalId, body: PostedEvents
) -> Stored:
    _signal(registry, signal)
    events = [ControllerEvent(e.ts, e.code, e.param) for e in body.events]
    _signals_store(store).write_controller_events(signal, events)
    return Stored(stored=len(events))


# Turning movements and zone statistics --------------------------------------------------


class MovementParams(WindowParams):
    interval: Literal[60, 300, 900, 3600] = Field(default=900, description="Bin length in seconds.")
    format: export.ExportFormat | None = Field(default=None, description="`csv`: one row per interval.")

    @field_validator("interval", mode="before")
    @classmethod
    def _interval_from_query(cls, value: object) -> object:
        # A query string gives "60"; a Literal of ints takes no string, so ?interval=60 was a 422.
        return int(value) if isinstance(value, str) and value.isdigit() else value

    def _problem_within(self, start: datetime, end: datetime) -> tuple[str, str] | None:
        if end - start > timedelta(days=7):
            return "from", "turning movements are served for at most 7 days at a time"
        return None


class MovementRow(BaseModel):
    interval_start: datetime
    interval_s: int
    approach: str
    exit: str
    movement: str
    cls: str
    count: int


class MovementList(BaseModel):
    signal: str
    movements: list[MovementRow]


def _movement_counts(
    store: SupportsSignals, record: SignalRecord, params: MovementParams
) -> list[MovementCount]:
    start, end = params.window
    streams = {(c.device, c.stream) for c in record.channel_map.channels}
    devices = tuple(sorted({d for d, _ in streams}))
    stored = store.turning_movements(IntervalQuery(start, end, devices))
    return rebin(
        ((s.movement.interval_start, s.movement.interval_s, s.movement.entry, s.movement.exit, s.movement.cls,
          s.movement.count) for s in stored if (s.device_id, s.movement.stream) in streams),
        params.interval,
    )  # fmt: skip


# A quarter hour of the south approach: 152 cars and 6 trucks (left to west, through to north, right to east).
_MOVEMENTS_EXAMPLE: Final[dict[str, Any]] = {
    "signal": "main-5th",
    "movements": [
        {"interval_start": "2026-12-05T07:30:00Z", "interval_s": 900, "approach": "south", "exit": "west",
         "movement": "left", "cls": "car", "count": 23},
        {"interval_start": "2026-12-05T07:30:00Z", "interval_s": 900, "approach": "south", "exit": "north",
         "movement": "through", "cls": "car", "count": 112},
        {"interval_start": "2026-12-05T07:30:00Z", "interval_s": 900, "approach": "south", "exit": "east",
         "movement": "right", "cls": "car", "count": 17},
        {"interval_start": "2026-12-05T07:30:00Z", "interval_s": 900, "approach": "south", "exit": "north",
         "movement": "through", "cls": "truck", "count": 6},
    ],
}  # fmt: skip
_MOVEMENTS_CSV: Final = (
    "interval_start,interval_minutes,south_car_left,south_car_through,south_car_right,south_car_u_turn,"
    "south_truck_left,south_truck_through,south_truck_right,south_truck_u_turn,total\r\n"
    "2026-12-05T07:30:00Z,15,23,112,17,0,0,6,0,0,158\r\n"
)


@router.get(
    "/{signal}/movements",
    summary="Turning-movement counts (approach × movement × class)",
    description="Counts of the cameras the channel map names, binned to `interval`. `format=csv` gives the "
    "common 15-minute layout: one row per interval, a column per approach, class and movement "
    "(`north_car_left`), and a total.",
    response_model=MovementList,
    responses={
        **_answer(_MOVEMENTS_EXAMPLE, _MOVEMENTS_CSV),
        404: {"model": problems.Problem, "description": "No such signal."},
        **problems.STORE_RESPONSES,
        **NOT_KEPT,
    },
)
def signal_movements(
    _client: TelemetryReader,
    registry: RegistryDep,
    store: StoreDep,
    signal: SignalId,
    params: Annotated[MovementParams, Query()],
    request: Request,
) -> MovementList | Response:
    counts = _movement_counts(_signals_store(store), _signal(registry, signal), params)
    if export.wants_csv(request.headers.get("accept"), params.format):
        columns, rows = wide_rows(counts)
        return export.csv_response(columns, rows, f"{signal}-tmc.csv")
    return MovementList(
        signal=signal,
        movements=[MovementRow(interval_start=c.interval_start, interval_s=c.interval_s, approach=c.approach,
                               exit=c.exit, movement=c.movement, cls=c.cls, count=c.count) for c in counts],
    )  # fmt: skip


class ZoneRow(BaseModel):
    interval_start: datetime
    interval_s: int
    channel: int
    kind: str
    phase: int | None
    device: str
    stream: str
    zone: str
    volume: int
    occupancy: float
    mean_speed_kmh: float | None


class ZoneList(BaseModel):
    signal: str
    zones: list[ZoneRow]


_ZONES_EXAMPLE: Final[dict[str, Any]] = {
    "signal": "main-5th",
    "zones": [
        {"interval_start": "2026-12-05T07:30:00Z", "interval_s": 900, "channel": 5, "kind": "vehicle", "phase": 2,
         "device": "cam-0042", "stream": "cam-north", "zone": "nb-stop-1", "volume": 118, "occupancy": 0.31,
         "mean_speed_kmh": None},
        {"interval_start": "2026-12-05T07:30:00Z", "interval_s": 900, "channel": 6, "kind": "vehicle", "phase": 2,
         "device": "cam-0042", "stream": "cam-north", "zone": "nb-stop-2", "volume": 97, "occupancy": 0.24,
         "mean_speed_kmh": None},
    ],
}  # fmt: skip
_ZONES_CSV: Final = (
    "interval_start,interval_s,channel,kind,phase,device,stream,zone,volume,occupancy,mean_speed_kmh\r\n"
    "2026-12-05T07:30:00Z,900,5,vehicle,2,cam-0042,cam-north,nb-stop-1,118,0.31,\r\n"
    "2026-12-05T07:30:00Z,900,6,vehicle,2,cam-0042,cam-north,nb-stop-2,97,0.24,\r\n"
)


@router.get(
    "/{signal}/zones",
    summary="Volume, occupancy and mean speed per detector zone and interval",
    description="For each zone the channel map names, per `interval` in `[from, to)` (at most 7 days): "
    "the vehicles counted, the fraction of the interval the zone was occupied, and the mean speed where "
    "the camera measures it. `format=csv` or `Accept: text/csv` gives one row per zone and interval.",
    response_model=ZoneList,
    responses={
        **_answer(_ZONES_EXAMPLE, _ZONES_CSV),
        404: {"model": problems.Problem, "description": "No such signal."},
        **problems.STORE_RESPONSES,
        **NOT_KEPT,
    },
)
def signal_zones(
    _client: TelemetryReader,
    registry: RegistryDep,
    store: StoreDep,
    signal: SignalId,
    params: Annotated[MovementParams, Query()],
    request: Request,
) -> ZoneList | Response:
    record = _signal(registry, signal)
    start, end = params.window
    by_zone = {(c.device, c.stream, c.zone): c for c in record.channel_map.channels}
    devices = tuple(sorted(record.channel_map.devices()))
    rows = []
    for s in _signals_store(store).zone_statistics(IntervalQuery(start, end, devices)):
        channel = by_zone.get((s.device_id, s.stat.stream, s.stat.zone))
        if channel is None:
            continue
        rows.append(
            ZoneRow(interval_start=s.stat.interval_start, interval_s=s.stat.interval_s, channel=channel.channel,
                    kind=channel.kind, phase=channel.phase, device=s.device_id, stream=s.stat.stream,
                    zone=s.stat.zone, volume=s.stat.volume, occupancy=s.stat.occupancy,
                    mean_speed_kmh=s.stat.mean_speed_kmh)
        )  # fmt: skip
    if export.wants_csv(request.headers.get("accept"), params.format):
        return export.csv_response(
            list(ZoneRow.model_fields), (r.model_dump() for r in rows), f"{signal}-zones.csv"
        )
    return ZoneList(signal=signal, zones=rows)


# The live call stream ---------------------------------------------------------------------------

_SSE_EXAMPLE: Final = (
    "retry: 3000\n: connected\n\n"
    'id: 1841\nevent: call\ndata: {"schema":1,"signal":"main-5th","channel":5,"phase":2,"state":"on",'
    '"called":true,"event_code":82,"zone_kind":"presence","device":"cam-0042","stream":"cam-north",'
    '"zone":"nb-stop-1","captured_at":"2026-12-05T07:30:00.100000Z","hub_sent_at":"2026-12-05T07:30:00.182000Z",'
    '"seq":1841}\n\n'
)


@router.get(
    "/{signal}/calls",
    summary="Live detector calls (Server-Sent Events)",
    description="Each call of the signal's channels as the hub sends it (docs/signals.md): `id` is the call's "
    "`seq`, `event: call`, `data` the call as JSON. `: heartbeat` while quiet, `: dropped N` when this client "
    "fell behind. The same calls go out on MQTT `roadside/signals/v1/<signal>/calls`.",
    response_class=StreamingResponse,
    responses={
        200: {"description": "An endless `text/event-stream`.",
              "content": {EVENT_STREAM: {"schema": {"type": "string"}, "example": _SSE_EXAMPLE}}},
        404: {"model": problems.Problem, "description": "No such signal."},
        501: {"model": problems.Problem, "description": "The call stream is not configured on this hub."},
        503: {"model": problems.Problem, "description": "The hub serves its maximum number of streams."},
    },
)  # fmt: skip
async def signal_calls(
    _client: TelemetryReader, registry: RegistryDep, settings: SettingsDep, calls: CallsDep, signal: SignalId
) -> StreamingResponse:
    await asyncio.to_thread(_signal, registry, signal)
    try:
        subscription = calls.feed.subscribe(signal)
    except FeedFullError as exc:
        raise problems.unavailable("too-many-streams", "Too many streams", str(exc), 30) from exc
    return StreamingResponse(
        call_messages(subscription, settings.sse_heartbeat_s, settings.sse_max_duration_s),
        media_type=EVENT_STREAM,
        headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
        background=BackgroundTask(subscription.close),
    )


async def call_messages(
    subscription: CallSubscription, heartbeat_s: float, max_duration_s: float
) -> AsyncIterator[str]:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + max_duration_s
    try:
        yield "retry: 3000\n: connected\n\n"
        while (remaining := deadline - loop.time()) > 0:
            batch, dropped = await subscription.next_batch(min(heartbeat_s, remaining))
            if dropped:
                yield f": dropped {dropped}\n\n"
            if batch:
                yield "".join(
                    f"id: {c.seq}\nevent: call\ndata: {c.model_dump_json(by_alias=True)}\n\n" for c in batch
                )
            elif not dropped:
                yield ": heartbeat\n\n"
        yield ": stream ends; reconnect\n\n"
    finally:
        subscription.close()
