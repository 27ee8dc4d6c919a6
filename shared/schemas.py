"""Versioned schemas of what crosses the wire, inside the sealed envelope.

Every uplink plaintext is one :data:`UplinkMessage`: a JSON object with a
``kind`` discriminator and ``schema`` version. The device id, site and
sequence number are not trusted from the payload: they come from the
authenticated envelope header and the registry.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Annotated, Any, Final, Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

from shared.errors import SchemaError

SCHEMA_VERSION: Final = 1
MAX_RECORDS: Final = 2000

Name = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.:-]+$")]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


def utcnow() -> datetime:
    return datetime.now(UTC)


class CountRecord(_Strict):
    """Objects of one class that crossed one line in one direction during one interval."""

    interval_start: AwareDatetime
    interval_s: int = Field(gt=0, le=86400)
    line: Name
    cls: Name
    direction: Literal["in", "out"]
    count: int = Field(ge=0, le=1_000_000)
    lane: int | None = Field(default=None, ge=0, le=64)
    model_version: Name


EventType = Literal[
    "line_crossing",
    "wrong_way",
    "stopped_vehicle",
    "pedestrian_in_roadway",
    "sensor_threshold",
    "sensor_anomaly",
]


class DetectionEvent(_Strict):
    event_id: uuid.UUID
    ts: AwareDatetime
    type: EventType
    stream: Name
    cls: Name | None = None
    track_id: int | None = Field(default=None, ge=0)
    line: Name | None = None
    direction: Literal["in", "out"] | None = None
    confidence: float | None = Field(default=None, ge=0.0, le=1.0)
    speed_kmh: float | None = Field(default=None, ge=0.0, le=400.0)
    model_version: Name


class SensorReading(_Strict):
    ts: AwareDatetime
    sensor: Name
    quantity: Name  # pm25, no2, occupancy, noise, ...
    value: float = Field(allow_inf_nan=False)
    unit: Annotated[str, Field(max_length=16)]
    quality: Literal["ok", "out_of_range", "stuck", "dropout", "spike"] = "ok"


class StreamHealth(_Strict):
    fps: float = Field(ge=0)
    dropped_frames: int = Field(ge=0)


class Health(_Strict):
    ts: AwareDatetime
    uptime_s: float = Field(ge=0)
    model_version: Name
    provider: Name
    streams: dict[Name, StreamHealth] = Field(default_factory=dict, max_length=64)
    inference_p50_ms: float | None = Field(default=None, ge=0)
    inference_p95_ms: float | None = Field(default=None, ge=0)
    outbox_backlog: int = Field(ge=0)
    cpu_percent: float | None = Field(default=None, ge=0)
    rss_mb: float | None = Field(default=None, ge=0)
    # Optional: absent where the device cannot read them (never invented).
    queue_depths: dict[Name, int] | None = Field(default=None, max_length=64)
    outbox_bytes: int | None = Field(default=None, ge=0)
    gpu_percent: float | None = Field(default=None, ge=0, le=100)
    gpu_memory_mb: float | None = Field(default=None, ge=0)
    temperature_c: float | None = Field(default=None, ge=-60, le=150)


class CountsMessage(_Strict):
    schema_version: Literal[1] = Field(default=1, alias="schema")
    kind: Literal["counts"] = "counts"
    records: list[CountRecord] = Field(min_length=1, max_length=MAX_RECORDS)


class EventsMessage(_Strict):
    schema_version: Literal[1] = Field(default=1, alias="schema")
    kind: Literal["events"] = "events"
    records: list[DetectionEvent] = Field(min_length=1, max_length=MAX_RECORDS)


class SensorsMessage(_Strict):
    schema_version: Literal[1] = Field(default=1, alias="schema")
    kind: Literal["sensors"] = "sensors"
    records: list[SensorReading] = Field(min_length=1, max_length=MAX_RECORDS)


class HealthMessage(_Strict):
    schema_version: Literal[1] = Field(default=1, alias="schema")
    kind: Literal["health"] = "health"
    health: Health


class AckMessage(_Strict):
    schema_version: Literal[1] = Field(default=1, alias="schema")
    kind: Literal["ack"] = "ack"
    command_id: uuid.UUID
    ok: bool
    detail: Annotated[str, Field(max_length=1024)] = ""


UplinkMessage = Annotated[
    CountsMessage | EventsMessage | SensorsMessage | HealthMessage | AckMessage,
    Field(discriminator="kind"),
]
_UPLINK: TypeAdapter[Any] = TypeAdapter(UplinkMessage)

CommandType = Literal["reload_config", "add_stream", "remove_stream", "rotate_keys", "ping", "ota"]


class Command(_Strict):
    """A hub→device command; signed and sealed by :class:`shared.envelope.HubCommandSealer`."""

    schema_version: Literal[1] = Field(default=1, alias="schema")
    command_id: uuid.UUID = Field(default_factory=uuid.uuid4)
    type: CommandType
    issued_at: AwareDatetime = Field(default_factory=utcnow)
    args: dict[str, Any] = Field(default_factory=dict)


def encode(message: BaseModel) -> bytes:
    """Canonical JSON bytes of a wire model (aliases, no ``None`` noise)."""
    return message.model_dump_json(by_alias=True, exclude_none=True).encode()


def decode_uplink(
    kind: str, raw: bytes
) -> CountsMessage | EventsMessage | SensorsMessage | HealthMessage | AckMessage:
    """Validate an uplink plaintext; the envelope's ``kind`` must match the payload's."""
    try:
        message = _UPLINK.validate_json(raw)
    except ValidationError as exc:
        raise SchemaError(_summarise(exc)) from exc
    if message.kind != kind:
        raise SchemaError(f"payload kind {message.kind!r} does not match envelope kind {kind!r}")
    return message  # type: ignore[no-any-return]


def decode_command(raw: bytes) -> Command:
    try:
        return Command.model_validate_json(raw)
    except ValidationError as exc:
        raise SchemaError(_summarise(exc)) from exc


def _summarise(exc: ValidationError) -> str:
    first = exc.errors()[:3]
    parts = [f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in first]
    more = f" (+{exc.error_count() - 3} more)" if exc.error_count() > 3 else ""
    return "; ".join(parts) + more
