"""What the API accepts (query parameter models, request bodies) and returns (response models).

Query models validate everything a route needs before it runs: names,
time windows (timezone required, ``to`` after ``from``, at most
:data:`MAX_WINDOW`), bucket sizes, limits and cursors. A failure becomes a
422 problem that names the parameter. Response models are plain data built
from the store's and the registry's records.
"""

from __future__ import annotations

import math
import re
import uuid
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, Final, Literal, Self, cast

from pydantic import (
    AfterValidator,
    AliasChoices,
    AwareDatetime,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationInfo,
    WithJsonSchema,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from roadside.cloud.api import cursor, webhooks
from roadside.cloud.api.cursor import EventCursor
from roadside.cloud.api.export import ExportFormat
from roadside.cloud.api.problems import PARAMETER_CONTEXT
from roadside.cloud.api.webhooks import WebhookRecord
from roadside.cloud.fleet.live import EventFilter, LiveEvent
from roadside.cloud.registry import DeviceRecord
from roadside.cloud.storage.base import (
    MAX_SPEED_SAMPLES,
    CountBucket,
    CountQuery,
    EventKey,
    EventQuery,
    HealthQuery,
    LatestSensorQuery,
    SensorQuery,
    SpeedBucket,
    SpeedQuery,
    StoredEvent,
    StoredReading,
)
from roadside.shared.errors import ConfigError
from roadside.shared.keys import unb64
from roadside.shared.limits import to_epoch_us
from roadside.shared.schemas import EventType, Health, Name

DEFAULT_WINDOW: Final = timedelta(hours=24)
MAX_WINDOW: Final = timedelta(days=31)
MIN_BUCKET_S: Final = 1
MAX_BUCKET_S: Final = 86_400
# Bounds the rows a counts query can return per series (7 days of 1-minute buckets fit).
MAX_BUCKETS: Final = 20_000
MAX_EVENTS: Final = 1000
MAX_READINGS: Final = 10_000
MAX_DEVICES: Final = 10_000
MAX_HEALTH_REPORTS: Final = 10_000
HEALTH_STEPS: Final = 1000  # a longer window than an hour is thinned to about this many reports

# ASCII digits only (``\d`` would take any script's), as many as BUCKET_PATTERN says.
_DURATION = re.compile(r"^\s*([0-9]{1,9})\s*([smhd]?)\s*$", re.IGNORECASE)
BUCKET_PATTERN: Final = r"^\s*[0-9]{1,9}\s*[smhdSMHD]?\s*$"
_UNIT_S: Final = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86_400}
# A `+hh:mm` offset sent unencoded in a query string arrives as ` hh:mm`.
_SPACED_OFFSET = re.compile(r"^(.+T[0-9:.]+) ([0-9]{2}(?::?[0-9]{2})?)$")

DeviceName = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_-]+$")]


def parse_bucket(value: object) -> int:
    """Seconds from ``60``, ``"60"``, ``"60s"``, ``"15m"``, ``"1h"`` or ``"1d"``, within 1 s..1 d."""
    if isinstance(value, bool):
        raise ValueError("bucket must be seconds or a duration such as 60s, 15m, 1h, 1d")
    if isinstance(value, int):
        seconds = value
    else:
        match = _DURATION.match(str(value))
        if match is None:
            raise ValueError("bucket must be seconds or a duration such as 60s, 15m, 1h, 1d")
        seconds = int(match.group(1)) * _UNIT_S[match.group(2).lower()]
    if not MIN_BUCKET_S <= seconds <= MAX_BUCKET_S:
        raise ValueError(f"bucket must be between 1s and 1d ({MAX_BUCKET_S} s), not {seconds} s")
    return seconds


def _restore_plus(value: object) -> object:
    if isinstance(value, str) and (match := _SPACED_OFFSET.match(value)):
        return f"{match.group(1)}+{match.group(2)}"
    # pydantic would read a bare number as Unix time; the API promises ISO 8601 only.
    if isinstance(value, str) and not _ISO_DATE.match(value):
        raise ValueError("must be an ISO 8601 date-time with a timezone, e.g. 2026-11-23T08:00:00Z")
    return value


_ISO_DATE: Final = re.compile(r"^\d{4}-\d{2}-\d{2}")


# `from` defaults to a day before `to`, and air quality's local hours and days reach a day past the
# window: times nearer the ends of Python's calendar (years 1 and 9999) would overflow, a 500.
EARLIEST_TIME: Final = datetime(1, 1, 3, tzinfo=UTC)
LATEST_TIME: Final = datetime(9999, 12, 29, tzinfo=UTC)


def _as_utc(value: datetime | None) -> datetime | None:
    if value is None:
        return None
    if not EARLIEST_TIME <= value <= LATEST_TIME:
        raise ValueError(f"must be between {EARLIEST_TIME.date()} and {LATEST_TIME.date()} (UTC)")
    return value.astimezone(UTC)


QueryTime = Annotated[AwareDatetime | None, BeforeValidator(_restore_plus)]
Bucket = Annotated[
    int,
    BeforeValidator(parse_bucket),
    WithJsonSchema(
        {
            "type": "string",
            "pattern": BUCKET_PATTERN,
            "examples": ["60s", "15m", "1h", "900"],
            "description": "Seconds, or a number with s, m, h or d; from 1s to 1d, and at most "
            f"{MAX_BUCKETS} buckets in the window.",
        }
    ),
]


class _WindowParams(BaseModel):
    """A ``[from, to)`` time window; at most 31 days, 24 hours up to now by default.

    The window is checked as a whole, after each time parsed, and a problem
    names the parameter the client sent: with ``to`` left to its default
    (now), a ``from`` too far back is ``from``'s problem, not ``to``'s.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    start: QueryTime = Field(
        default=None,
        alias="from",
        description="Start of the window, inclusive: ISO 8601 with a timezone (`Z`, or `+02:00` "
        f"sent as `%2B02:00`); before `to`, at most {MAX_WINDOW.days} days before it. "
        "Default: 24 hours before `to`.",
    )
    end: QueryTime = Field(
        default=None,
        alias="to",
        validate_default=True,
        description="End of the window, exclusive: ISO 8601 with a timezone; after `from`, at most "
        f"{MAX_WINDOW.days} days after it. Default: now.",
    )

    @field_validator("start")
    @classmethod
    def _start_in_utc(cls, start: datetime | None) -> datetime | None:
        return _as_utc(start)

    @field_validator("end")
    @classmethod
    def _end_in_utc(cls, end: datetime | None) -> datetime:
        return _as_utc(end) or datetime.now(UTC)

    @model_validator(mode="after")
    def _window_in_bounds(self) -> Self:
        start, end = self.requested_window
        sent = self.model_fields_set
        problem = window_problem(start, end, from_sent="start" in sent, to_sent="end" in sent)
        if problem is None:
            problem = self._problem_within(start, end)
        if problem is not None:
            parameter, message = problem
            raise PydanticCustomError("invalid_window", message, {PARAMETER_CONTEXT: parameter})
        return self

    def _problem_within(self, start: datetime, end: datetime) -> tuple[str, str] | None:
        """What a subclass refuses about its own parameters in a valid window: (parameter, why)."""
        del start, end
        return None

    @property
    def requested_window(self) -> tuple[datetime, datetime]:
        """``(from, to)`` as asked, defaults filled in, in UTC."""
        assert self.end is not None  # the validator always resolves it
        return (self.start or self.end - DEFAULT_WINDOW), self.end

    @property
    def window(self) -> tuple[datetime, datetime]:
        """The effective ``(from, to)``, defaults filled in, in UTC."""
        return self.requested_window


WindowParams = _WindowParams  # the public base of other routers' windowed parameters (signals)


def window_problem(
    start: datetime, end: datetime, *, from_sent: bool, to_sent: bool
) -> tuple[str, str] | None:
    """Why ``[start, end)`` is not a window the API serves, and which sent parameter to blame.

    ``to`` is blamed when the client sent it; when ``to`` is the default (now),
    ``from`` is, and the reason says the default took part.
    """
    if end <= start:
        if to_sent or not from_sent:
            return "to", "`to` must be after `from`"
        return "from", "`from` must be before now (`to` defaults to now)"
    if end - start > MAX_WINDOW:
        if to_sent or not from_sent:
            return "to", f"`to` is more than {MAX_WINDOW.days} days after `from`"
        return "from", f"`from` is more than {MAX_WINDOW.days} days before now (`to` defaults to now)"
    return None


_FORMAT: Final = (
    "`csv` for a CSV attachment (one row per item, same field names), `json` (the default) for JSON. "
    "`Accept: text/csv` also asks for CSV."
)


def bucket_problem(bucket: int, start: datetime, end: datetime, *, sent: bool) -> tuple[str, str] | None:
    """Why ``bucket`` seconds cut ``[start, end)`` into too many buckets; ``None`` when they do not."""
    buckets = math.ceil((end - start).total_seconds() / bucket)
    if buckets <= MAX_BUCKETS:
        return None
    default = "" if sent else " (`bucket` defaults to 1h)"
    return "bucket", (
        f"{buckets} buckets of {bucket} s in this window{default}; at most {MAX_BUCKETS}: "
        "widen the bucket or narrow the window"
    )


def _parse_cursor(value: object) -> object:
    return cursor.decode(value) if isinstance(value, str) else value


Cursor = Annotated[
    EventCursor,
    BeforeValidator(_parse_cursor),
    WithJsonSchema(
        {
            "type": "string",
            "minLength": 1,
            "maxLength": cursor.MAX_LENGTH,
            "pattern": cursor.PATTERN,
            "examples": [
                "WzEsMTc0NjA4NzQ2MjEyMDAwMCwiMGI2ZjFjMWUtMmYwYS00ZDQzLTlkMzgtNWIwYzNmM2Y4"
                "YTUxIiwxNzQ2MDg2NDAwMDAwMDAwLDE3NDYwOTAwMDAwMDAwMDAsbnVsbCxudWxsLG51bGxd"
            ],
            "description": "`next_cursor` from the previous page.",
        }
    ),
]


class CountsParams(_WindowParams):
    bucket: Bucket = Field(
        default="1h", validate_default=True, description="Bucket width: seconds, or `60s`, `15m`, `1h`, `1d`."
    )
    device: DeviceName | None = Field(default=None, description="Only this device.")
    site: DeviceName | None = Field(default=None, description="Only devices at this site.")
    line: Name | None = Field(default=None, description="Only this counting line.")
    cls: Name | None = Field(default=None, description="Only this object class (`car`, `bicycle`, ...).")
    direction: Literal["in", "out"] | None = Field(default=None, description="Only this direction.")

    format: ExportFormat | None = Field(default=None, description=_FORMAT)

    def _problem_within(self, start: datetime, end: datetime) -> tuple[str, str] | None:
        return bucket_problem(self.bucket, start, end, sent="bucket" in self.model_fields_set)

    def to_query(self) -> CountQuery:
        start, end = self.window
        return CountQuery(
            start=start,
            end=end,
            bucket_s=self.bucket,
            device_id=self.device,
            site=self.site,
            line=self.line,
            cls=self.cls,
            direction=self.direction,
        )


class EventsParams(_WindowParams):
    device: DeviceName | None = Field(default=None, description="Only this device.")
    site: DeviceName | None = Field(default=None, description="Only devices at this site.")
    type: EventType | None = Field(default=None, description="Only this event type.")
    limit: int = Field(
        default=100, ge=1, le=MAX_EVENTS, description="At most this many events, oldest first."
    )
    cursor: Cursor | None = Field(
        default=None,
        description="Continue after the page that returned this `next_cursor`. Send the same `device`, "
        "`site` and `type`; the window is the cursor's (`from` and `to` are ignored).",
    )
    format: ExportFormat | None = Field(default=None, description=_FORMAT)

    @field_validator("cursor")
    @classmethod
    def _cursor_fits(cls, value: EventCursor | None, info: ValidationInfo) -> EventCursor | None:
        if value is None:
            return None
        if not value.same_filters(info.data.get("device"), info.data.get("site"), info.data.get("type")):
            raise ValueError("this cursor was issued for other filters; send the same device, site and type")
        if not timedelta(0) < value.end - value.start <= MAX_WINDOW:
            raise ValueError("not a cursor this API issued")
        return value

    @property
    def window(self) -> tuple[datetime, datetime]:
        """The cursor's window when continuing, else the one asked for."""
        if self.cursor is not None:
            return self.cursor.start, self.cursor.end
        return self.requested_window

    def next_cursor(self, last: StoredEvent) -> str:
        start, end = self.window
        key = EventKey(to_epoch_us(last.event.ts), str(last.event.event_id))
        return EventCursor(key, start, end, self.device, self.site, self.type).encode()

    def to_query(self, *, lookahead: int = 0) -> EventQuery:
        start, end = self.window
        return EventQuery(
            start=start,
            end=end,
            device_id=self.device,
            site=self.site,
            type=self.type,
            limit=self.limit + lookahead,
        )


class StreamParams(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    device: DeviceName | None = Field(default=None, description="Only this device.")
    site: DeviceName | None = Field(default=None, description="Only devices at this site.")
    type: list[EventType] = Field(
        default_factory=list, max_length=16, description="Only these event types (repeat the parameter)."
    )

    def event_filter(self) -> EventFilter:
        return EventFilter(self.device, self.site, frozenset(self.type))


class SpeedsParams(_WindowParams):
    bucket: Bucket = Field(
        default="1h", validate_default=True, description="Bucket width: seconds, or `60s`, `15m`, `1h`, `1d`."
    )
    device: DeviceName | None = Field(default=None, description="Only this device.")
    site: DeviceName | None = Field(default=None, description="Only devices at this site.")
    line: Name | None = Field(default=None, description="Only events at this counting line.")
    cls: Name | None = Field(default=None, description="Only this object class (`car`, `bicycle`, ...).")
    direction: Literal["in", "out"] | None = Field(default=None, description="Only this direction.")
    type: EventType | None = Field(default=None, description="Only this event type.")
    format: ExportFormat | None = Field(default=None, description=_FORMAT)

    def _problem_within(self, start: datetime, end: datetime) -> tuple[str, str] | None:
        return bucket_problem(self.bucket, start, end, sent="bucket" in self.model_fields_set)

    def to_query(self) -> SpeedQuery:
        start, end = self.window
        return SpeedQuery(
            start=start,
            end=end,
            bucket_s=self.bucket,
            device_id=self.device,
            site=self.site,
            line=self.line,
            cls=self.cls,
            direction=self.direction,
            type=self.type,
            max_samples=MAX_SPEED_SAMPLES,
        )


class SensorsParams(_WindowParams):
    device: DeviceName | None = Field(default=None, description="Only this device.")
    site: DeviceName | None = Field(default=None, description="Only devices at this site.")
    sensor: Name | None = Field(default=None, description="Only this sensor.")
    quantity: Name | None = Field(default=None, description="Only this quantity (`pm25`, `no2`, ...).")
    limit: int = Field(
        default=1000, ge=1, le=MAX_READINGS, description="At most this many readings, oldest first."
    )
    format: ExportFormat | None = Field(default=None, description=_FORMAT)

    def to_query(self, *, lookahead: int = 0) -> SensorQuery:
        start, end = self.window
        return SensorQuery(
            start, end, self.device, self.site, self.sensor, self.quantity, limit=self.limit + lookahead
        )


class LatestSensorsParams(_WindowParams):
    device: DeviceName | None = Field(default=None, description="Only this device.")
    site: DeviceName | None = Field(default=None, description="Only devices at this site.")
    sensor: Name | None = Field(default=None, description="Only this sensor.")
    quantity: Name | None = Field(default=None, description="Only this quantity (`pm25`, `no2`, ...).")
    limit: int = Field(
        default=1000, ge=1, le=MAX_READINGS, description="At most this many (device, sensor, quantity)."
    )
    format: ExportFormat | None = Field(default=None, description=_FORMAT)

    def to_query(self, *, lookahead: int = 0) -> LatestSensorQuery:
        start, end = self.window
        return LatestSensorQuery(
            start, end, self.device, self.site, self.sensor, self.quantity, limit=self.limit + lookahead
        )


# Request bodies --------------------------------------------------------------


class EnrollRequest(BaseModel):
    """A device to enroll: its id (unique in the fleet) and its site."""

    model_config = ConfigDict(
        extra="forbid", json_schema_extra={"examples": [{"device_id": "cam-0042", "site": "main-st-5th-ave"}]}
    )

    device_id: DeviceName
    site: DeviceName


def _public_key(value: str) -> str:
    # Pydantic reports only ValueError as invalid input; anything else would be a 500.
    try:
        raw = unb64(value, "public key")
    except ConfigError as exc:
        raise ValueError(str(exc)) from exc
    if len(raw) != 32:
        raise ValueError("must be a 32-byte public key, base64")
    return value


PublicKey = Annotated[
    str,
    Field(min_length=44, max_length=44, pattern=r"^[A-Za-z0-9+/]{43}=$"),
    AfterValidator(_public_key),
]


class DeviceKeysRequest(BaseModel):
    """A device's new envelope public keys, made on the device (its private keys never leave it)."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "x25519": "3p7bfXt9wbTTW2HC7OQ1Nz+DQ8hbeGdNrfx+FG+IK08=",
                    "ed25519": "GbSfbYF4zBHfOoK7gJc6nV5rDzSvdg0vNlTSc9x2V1A=",
                }
            ]
        },
    )

    x25519: PublicKey = Field(description="X25519 public key, 32 bytes, standard base64.")
    ed25519: PublicKey = Field(description="Ed25519 public key, 32 bytes, standard base64.")


def _webhook_url(value: str) -> str:
    try:
        return webhooks.check_url(value)
    except ConfigError as exc:
        raise ValueError(str(exc)) from exc


class WebhookCreate(BaseModel):
    """A URL to POST matching events to, the secret to sign them with, and which events."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "url": "https://signals.city.example/roadside/events",
                    "secret": "a-long-random-shared-secret",
                    "site": "main-st-5th-ave",
                    "types": ["wrong_way", "stopped_vehicle"],
                }
            ]
        },
    )

    url: Annotated[
        str, Field(min_length=8, max_length=webhooks.MAX_URL_LENGTH), AfterValidator(_webhook_url)
    ] = Field(
        description="Absolute `https://` (or `http://`) URL, without credentials or fragment, port 1 to 65535. "
        "Its host must be, or resolve only to, globally routable addresses (not loopback, link-local, "
        "private, multicast or reserved) unless the hub's `webhook_allow_networks` holds them."
    )
    secret: str | None = Field(
        default=None,
        min_length=webhooks.MIN_SECRET_LENGTH,
        max_length=webhooks.MAX_SECRET_LENGTH,
        description="HMAC key for `X-Roadside-Signature`; generated when left out. Returned only now.",
    )
    device: DeviceName | None = Field(default=None, description="Only events from this device.")
    site: DeviceName | None = Field(default=None, description="Only events from this site.")
    types: list[EventType] = Field(
        default_factory=list, max_length=16, description="Only these event types; empty: all."
    )

    def event_filter(self) -> EventFilter:
        return EventFilter(self.device, self.site, frozenset(self.types))


# Responses -------------------------------------------------------------------

# Responses say `from`/`to` (Python cannot); the names also work, so code builds them by name.
_FROM: Final = AliasChoices("from", "start")
_TO: Final = AliasChoices("to", "end")


def is_online(last_seen_at: datetime | None, now: datetime, online_after_s: float) -> bool:
    """A device is online if it was heard from within ``online_after_s`` seconds of ``now``."""
    return last_seen_at is not None and (now - last_seen_at).total_seconds() <= online_after_s


Connection = Literal["online", "offline"]


class Device(BaseModel):
    device_id: str
    site: str
    status: str = Field(description="`active` or `revoked`.")
    enrolled_at: datetime
    last_seen_at: datetime | None = Field(description="When the hub last accepted a message from it.")
    connection: Connection | None = Field(
        default=None,
        description="What the device's retained status says: `online` while connected, `offline` once "
        "its last will fired (it lost the broker). Absent when this hub has not seen a status.",
    )
    online: bool = Field(
        description="`connection` when known; otherwise heard from within the hub's online threshold "
        "(default 180 s)."
    )

    @classmethod
    def from_record(
        cls,
        record: DeviceRecord,
        *,
        now: datetime,
        online_after_s: float,
        connection: str | None = None,
    ) -> Device:
        known = cast(Connection, connection) if connection in ("online", "offline") else None
        return cls(
            device_id=record.device_id,
            site=record.site,
            status=record.status,
            enrolled_at=record.enrolled_at,
            last_seen_at=record.last_seen_at,
            connection=known,
            online=known == "online" if known else is_online(record.last_seen_at, now, online_after_s),
        )


class DeviceList(BaseModel):
    devices: list[Device] = Field(description="Ordered by device id.")
    truncated: bool = Field(
        default=False, description="More devices match than `limit`; ask again with `after` = the last id."
    )


class DeviceDetail(Device):
    health: Health | None = Field(description="The latest health report the device sent, if any.")


class CountRow(BaseModel):
    bucket_start: datetime
    device: str
    site: str
    line: str
    cls: str
    direction: str = Field(description="`in` or `out`.")
    count: int

    @classmethod
    def from_bucket(cls, bucket: CountBucket) -> CountRow:
        return cls(
            bucket_start=bucket.bucket_start,
            device=bucket.device_id,
            site=bucket.site,
            line=bucket.line,
            cls=bucket.cls,
            direction=bucket.direction,
            count=bucket.count,
        )


class CountSeries(BaseModel):
    bucket_s: int
    start: datetime = Field(validation_alias=_FROM, serialization_alias="from")
    end: datetime = Field(validation_alias=_TO, serialization_alias="to")
    rows: list[CountRow] = Field(
        description="Non-empty buckets, ordered by bucket start, then device, line, class, direction."
    )


class Event(BaseModel):
    event_id: uuid.UUID
    ts: datetime
    type: EventType
    device: str
    site: str
    stream: str
    cls: str | None = None
    track_id: int | None = None
    line: str | None = None
    direction: Literal["in", "out"] | None = None
    confidence: float | None = None
    speed_kmh: float | None = None
    model_version: str

    @classmethod
    def from_stored(cls, stored: StoredEvent | LiveEvent) -> Event:
        fields: dict[str, Any] = stored.event.model_dump()
        return cls(device=stored.device_id, site=stored.site, **fields)


class EventList(BaseModel):
    start: datetime = Field(validation_alias=_FROM, serialization_alias="from")
    end: datetime = Field(validation_alias=_TO, serialization_alias="to")
    limit: int
    truncated: bool = Field(description="More events match than `limit`: follow `next_cursor`.")
    next_cursor: str | None = Field(
        default=None,
        description="Send as `cursor` (with the same filters) for the next page; absent at the end.",
    )
    events: list[Event] = Field(description="Ordered by `ts`, then `event_id`.")


class SpeedRow(BaseModel):
    bucket_start: datetime
    device: str
    site: str
    line: str | None = Field(description="The counting line the events name, if any.")
    cls: str | None
    count: int = Field(description="Events with a measured speed.")
    mean_kmh: float
    p85_kmh: float = Field(description="85th percentile speed (nearest rank).")

    @classmethod
    def from_bucket(cls, bucket: SpeedBucket) -> SpeedRow:
        return cls(
            bucket_start=bucket.bucket_start,
            device=bucket.device_id,
            site=bucket.site,
            line=bucket.line,
            cls=bucket.cls,
            count=bucket.count,
            mean_kmh=bucket.mean_kmh,
            p85_kmh=bucket.p85_kmh,
        )


class SpeedSeries(BaseModel):
    bucket_s: int
    start: datetime = Field(validation_alias=_FROM, serialization_alias="from")
    end: datetime = Field(validation_alias=_TO, serialization_alias="to")
    rows: list[SpeedRow] = Field(
        description="Non-empty buckets, ordered by bucket start, then device, line, class."
    )


class HealthHistoryParams(_WindowParams):
    step: int | None = Field(
        default=None,
        ge=0,
        le=MAX_BUCKET_S,
        description="Keep at most one report per this many seconds (the latest of each step, steps "
        "aligned to the epoch); 0 keeps every report. Default: 0 for a window of an hour or less, else "
        f"the window divided into {HEALTH_STEPS} steps (rounded up to a whole second).",
    )
    limit: int = Field(
        default=2000,
        ge=1,
        le=MAX_HEALTH_REPORTS,
        description="At most this many reports: the newest of the window.",
    )

    @property
    def step_s(self) -> int:
        if self.step is not None:
            return self.step
        start, end = self.window
        seconds = (end - start).total_seconds()
        return 0 if seconds <= 3600 else -(-int(seconds) // HEALTH_STEPS)

    def to_query(self, device_id: str) -> HealthQuery:
        start, end = self.window
        return HealthQuery(device_id, start, end, step_s=self.step_s, limit=self.limit)


class HealthHistory(BaseModel):
    device: str
    start: datetime = Field(validation_alias=_FROM, serialization_alias="from")
    end: datetime = Field(validation_alias=_TO, serialization_alias="to")
    step_s: int = Field(description="The step the reports were thinned to; 0: every report.")
    reports: list[Health] = Field(description="The device's health reports in the window, oldest first.")


class SensorValue(BaseModel):
    ts: datetime
    device: str
    site: str
    sensor: str
    quantity: str
    value: float
    unit: str
    quality: Literal["ok", "out_of_range", "stuck", "dropout", "spike"]

    @classmethod
    def from_stored(cls, stored: StoredReading) -> SensorValue:
        return cls(device=stored.device_id, site=stored.site, **stored.reading.model_dump())


class SensorSeries(BaseModel):
    start: datetime = Field(validation_alias=_FROM, serialization_alias="from")
    end: datetime = Field(validation_alias=_TO, serialization_alias="to")
    limit: int
    truncated: bool = Field(description="More readings match than `limit`; narrow the window or filter.")
    readings: list[SensorValue] = Field(description="Oldest first.")


class LatestSensors(BaseModel):
    start: datetime = Field(validation_alias=_FROM, serialization_alias="from")
    end: datetime = Field(validation_alias=_TO, serialization_alias="to")
    truncated: bool = Field(description="More (device, sensor, quantity) than `limit`.")
    readings: list[SensorValue] = Field(
        description="The newest reading of each (device, sensor, quantity) in the window, ordered by those."
    )


class FleetCounts(BaseModel):
    total: int
    active: int
    revoked: int
    online: int = Field(description="Active devices that are online.")
    offline: int = Field(description="Active devices that are not.")


class SiteFleet(FleetCounts):
    site: str


class FleetSummary(BaseModel):
    devices: FleetCounts
    sites: list[SiteFleet] = Field(description="Per site, ordered by site.")
    last_ingest_at: datetime | None = Field(
        description="When the newest message the hub accepted from any device was sealed."
    )
    generated_at: datetime


class DeviceKeyAdded(BaseModel):
    device_id: str
    kid: str = Field(description="The new key's id; the device seals with it from now on.")
    active_keys: int = Field(description="How many keys the hub now accepts from the device.")


class Webhook(BaseModel):
    id: str
    url: str
    device: str | None
    site: str | None
    types: list[EventType]
    created_at: datetime
    created_by: str
    delivered: int = Field(description="Deliveries answered with a 2xx.")
    failed: int = Field(description="Attempts that got no 2xx (each retry counts).")
    last_attempt_at: datetime | None
    last_status: int | None = Field(description="HTTP status of the last attempt; absent if none answered.")
    last_error: str | None = Field(description="Why the last attempt got no answer (timeout, refused).")

    @classmethod
    def from_record(cls, record: WebhookRecord) -> Webhook:
        return cls(
            id=record.id,
            url=record.url,
            device=record.filter.device_id,
            site=record.filter.site,
            types=[cast(EventType, t) for t in sorted(record.filter.types)],  # stored from EventType values
            created_at=record.created_at,
            created_by=record.created_by,
            delivered=record.delivered,
            failed=record.failed,
            last_attempt_at=record.last_attempt_at,
            last_status=record.last_status,
            last_error=record.last_error,
        )


class WebhookCreated(Webhook):
    secret: str = Field(description="The signing secret; shown only in this answer.")


class WebhookList(BaseModel):
    webhooks: list[Webhook]


class HubHealth(BaseModel):
    status: Literal["ok", "degraded"]
    version: str
    checks: dict[str, Literal["ok", "unreachable"]]
