"""What the API accepts (query parameter models) and returns (response models).

Query models validate everything a route needs before it runs: names,
time windows (timezone required, ``to`` after ``from``, at most
:data:`MAX_WINDOW`), bucket sizes and limits. A failure becomes a 422
problem that names the parameter. Response models are plain data built
from the store's and the registry's records.
"""

from __future__ import annotations

import math
import re
import uuid
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, Final, Literal

from pydantic import (
    AliasChoices,
    AwareDatetime,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationInfo,
    WithJsonSchema,
    field_validator,
)

from cloud.registry import DeviceRecord
from cloud.storage.base import CountBucket, CountQuery, EventQuery, StoredEvent
from shared.schemas import EventType, Health, Name

DEFAULT_WINDOW: Final = timedelta(hours=24)
MAX_WINDOW: Final = timedelta(days=31)
MIN_BUCKET_S: Final = 1
MAX_BUCKET_S: Final = 86_400
# Bounds the rows a counts query can return per series (7 days of 1-minute buckets fit).
MAX_BUCKETS: Final = 20_000
MAX_EVENTS: Final = 1000

_DURATION = re.compile(r"^\s*(\d{1,9})\s*([smhd]?)\s*$", re.IGNORECASE)
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
    return value


def _as_utc(value: datetime | None) -> datetime | None:
    return value.astimezone(UTC) if value is not None else None


QueryTime = Annotated[AwareDatetime | None, BeforeValidator(_restore_plus)]
Bucket = Annotated[
    int,
    BeforeValidator(parse_bucket),
    WithJsonSchema(
        {
            "type": "string",
            "pattern": r"^\d+[smhdSMHD]?$",
            "examples": ["60s", "15m", "1h", "900"],
            "description": "Seconds, or a number with s, m, h or d; from 1s to 1d.",
        }
    ),
]


class _WindowParams(BaseModel):
    """A ``[from, to)`` time window; at most 31 days, 24 hours up to now by default."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    start: QueryTime = Field(
        default=None,
        alias="from",
        description="Start of the window, inclusive: ISO 8601 with a timezone (`Z`, or `+02:00` "
        "sent as `%2B02:00`). Default: 24 hours before `to`.",
    )
    end: QueryTime = Field(
        default=None,
        alias="to",
        validate_default=True,
        description="End of the window, exclusive: ISO 8601 with a timezone. Default: now.",
    )

    @field_validator("start")
    @classmethod
    def _start_in_utc(cls, start: datetime | None) -> datetime | None:
        return _as_utc(start)

    @field_validator("end")
    @classmethod
    def _end_after_start(cls, end: datetime | None, info: ValidationInfo) -> datetime:
        resolved = _as_utc(end) or datetime.now(UTC)
        start = info.data.get("start")
        if start is not None:
            if resolved <= start:
                what = "" if end is not None else " (default: now)"
                raise ValueError(f"`to`{what} must be after `from`")
            if resolved - start > MAX_WINDOW:
                raise ValueError(f"the window from `from` to `to` is longer than {MAX_WINDOW.days} days")
        return resolved

    @property
    def window(self) -> tuple[datetime, datetime]:
        """The effective ``(from, to)``, defaults filled in, in UTC."""
        assert self.end is not None  # the validator always resolves it
        return (self.start or self.end - DEFAULT_WINDOW), self.end


class CountsParams(_WindowParams):
    bucket: Bucket = Field(
        default="1h", validate_default=True, description="Bucket width: seconds, or `60s`, `15m`, `1h`, `1d`."
    )
    device: DeviceName | None = Field(default=None, description="Only this device.")
    site: DeviceName | None = Field(default=None, description="Only devices at this site.")
    line: Name | None = Field(default=None, description="Only this counting line.")
    cls: Name | None = Field(default=None, description="Only this object class (`car`, `bicycle`, ...).")
    direction: Literal["in", "out"] | None = Field(default=None, description="Only this direction.")

    @field_validator("bucket")
    @classmethod
    def _bounded_buckets(cls, bucket: int, info: ValidationInfo) -> int:
        if "start" not in info.data or info.data.get("end") is None:
            return bucket  # the window itself is invalid; that error is reported instead
        end: datetime = info.data["end"]
        start: datetime = info.data["start"] or end - DEFAULT_WINDOW
        buckets = math.ceil((end - start).total_seconds() / bucket)
        if buckets > MAX_BUCKETS:
            raise ValueError(
                f"{buckets} buckets of {bucket} s in this window; at most {MAX_BUCKETS}: "
                "widen the bucket or narrow the window"
            )
        return bucket

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


# Responses -------------------------------------------------------------------

# Responses say `from`/`to` (Python cannot); the names also work, so code builds them by name.
_FROM: Final = AliasChoices("from", "start")
_TO: Final = AliasChoices("to", "end")


def is_online(last_seen_at: datetime | None, now: datetime, online_after_s: float) -> bool:
    """A device is online if it was heard from within ``online_after_s`` seconds of ``now``."""
    return last_seen_at is not None and (now - last_seen_at).total_seconds() <= online_after_s


class Device(BaseModel):
    device_id: str
    site: str
    status: str = Field(description="`active` or `revoked`.")
    enrolled_at: datetime
    last_seen_at: datetime | None = Field(description="When the hub last accepted a message from it.")
    online: bool = Field(description="Heard from within the hub's online threshold (default 180 s).")

    @classmethod
    def from_record(cls, record: DeviceRecord, *, now: datetime, online_after_s: float) -> Device:
        return cls(
            device_id=record.device_id,
            site=record.site,
            status=record.status,
            enrolled_at=record.enrolled_at,
            last_seen_at=record.last_seen_at,
            online=is_online(record.last_seen_at, now, online_after_s),
        )


class DeviceList(BaseModel):
    devices: list[Device]


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
    def from_stored(cls, stored: StoredEvent) -> Event:
        fields: dict[str, Any] = stored.event.model_dump()
        return cls(device=stored.device_id, site=stored.site, **fields)


class EventList(BaseModel):
    start: datetime = Field(validation_alias=_FROM, serialization_alias="from")
    end: datetime = Field(validation_alias=_TO, serialization_alias="to")
    limit: int
    truncated: bool = Field(description="More events match than `limit`; ask again from the last `ts`.")
    events: list[Event] = Field(description="Oldest first.")


class HubHealth(BaseModel):
    status: Literal["ok", "degraded"]
    version: str
    checks: dict[str, Literal["ok", "unreachable"]]
