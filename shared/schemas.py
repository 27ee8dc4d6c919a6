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

from pydantic import AfterValidator, AwareDatetime, BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

from roadside.shared.errors import SchemaError
from roadside.shared.limits import EARLIEST_TIME, LATEST_TIME, MAX_WIRE_INT, check_printable

SCHEMA_VERSION: Final = 1
MAX_RECORDS: Final = 2000

Name = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.:-]+$")]
# Bounded to what every store holds (see shared.limits): a number or time past these would
# fail the write of a whole batch, not just its own message.
Count = Annotated[int, Field(ge=0, le=MAX_WIRE_INT)]
# Bounds checked by pydantic-core itself (a Python validator here cost ~40% of decoding a
# counts message); the same bounds as shared.limits.check_storable_time.
Time = Annotated[AwareDatetime, Field(ge=EARLIEST_TIME, lt=LATEST_TIME)]
Text = Annotated[str, AfterValidator(check_printable)]


class _Strict(BaseModel):
    # No NaN or infinity anywhere: InfluxDB refuses them and they poison every aggregate.
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True, allow_inf_nan=False)


def utcnow() -> datetime:
    return datetime.now(UTC)


class CountRecord(_Strict):
    """Objects of one class that crossed one line in one direction during one interval."""

    interval_start: Time
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
    "sensor_dropout",  # a sensor stopped answering (edge.sensors.air.reader)
    "air_exceedance",  # an hourly or daily mean above a configured limit (cloud.air)
    "air_category_worsened",  # the index category at a location got worse (cloud.air)
]


class DetectionEvent(_Strict):
    event_id: uuid.UUID
    ts: Time
    type: EventType
    stream: Name
    cls: Name | None = None
    track_id: int | None = Field(default=None, ge=0, le=MAX_WIRE_INT)
    line: Name | None = None
    direction: Literal["in", "out"] | None = None
    confidence: float | None = Field(default=None, ge=0.0, le=1.0)
    speed_kmh: float | None = Field(default=None, ge=0.0, le=400.0)
    model_version: Name


class SensorReading(_Strict):
    ts: Time
    sensor: Name
    quantity: Name  # pm25, no2, occupancy, noise, ...
    value: float = Field(allow_inf_nan=False)
    unit: Annotated[Text, Field(max_length=16)]
    quality: Literal["ok", "out_of_range", "stuck", "dropout", "spike"] = "ok"


StreamState = Literal["up", "reconnecting", "down"]


class StreamHealth(_Strict):
    fps: float = Field(ge=0)
    dropped_frames: Count
    # Optional (agents before them send none): up while frames come, reconnecting while the
    # reader still tries, down once it ended; the age of the last frame; camera reconnects.
    state: StreamState | None = None
    last_frame_age_s: float | None = Field(default=None, ge=0)
    reconnects: int | None = Field(default=None, ge=0, le=2**63 - 1)


class UplinkHealth(_Strict):
    """The agent's link to the broker: publishing, or refused (since when, how many, why)."""

    state: Literal["connecting", "publishing", "refused"]
    since: AwareDatetime
    refusals: int = Field(default=0, ge=0, le=2**63 - 1)  # since the broker last accepted a message
    refused_total: int = Field(default=0, ge=0, le=2**63 - 1)
    reason: str | None = Field(default=None, max_length=128, pattern=r"^[^\x00-\x1f\x7f]*$")  # the broker's


class Health(_Strict):
    ts: Time
    uptime_s: float = Field(ge=0)
    model_version: Name
    provider: Name
    streams: dict[Name, StreamHealth] = Field(default_factory=dict, max_length=64)
    inference_p50_ms: float | None = Field(default=None, ge=0)
    inference_p95_ms: float | None = Field(default=None, ge=0)
    outbox_backlog: Count
    cpu_percent: float | None = Field(default=None, ge=0)
    rss_mb: float | None = Field(default=None, ge=0)
    # Optional: absent where the device cannot read them (never invented).
    queue_depths: dict[Name, Count] | None = Field(default=None, max_length=64)
    outbox_bytes: Count | None = None
    gpu_percent: float | None = Field(default=None, ge=0, le=100)
    gpu_memory_mb: float | None = Field(default=None, ge=0)
    temperature_c: float | None = Field(default=None, ge=-60, le=150)
    uplink: UplinkHealth | None = None  # optional: agents before it send none


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
    # The device's latest OTA report, repeated at each heartbeat for a while after it was made: an
    # ``ota`` message the hub refused (stale, garbled) or never got heals at the next heartbeat
    # (ADR 0031). Optional: agents before it send none.
    ota: OtaReport | None = None


# Hard examples --------------------------------------------------------------------

SampleReason = Literal["low_confidence", "disagreement", "rare_class"]
MAX_SAMPLE_JPEG_B64: Final = 160_000  # base64 characters: a sample message stays under the hub's 256 KiB cap
MAX_SAMPLES_PER_MESSAGE: Final = 1


class LabeledBox(_Strict):
    """A box in the image's pixels (x1, y1, x2, y2) with its class; ``conf`` for a model's detection."""

    cls: Name
    box: tuple[float, float, float, float]
    conf: float | None = Field(default=None, ge=0.0, le=1.0)


class HardExample(_Strict):
    """A frame the device thinks is worth learning from, redacted (faces, plates) before it left."""

    sample_id: uuid.UUID
    ts: Time
    stream: Name
    model_version: Name
    reasons: list[SampleReason] = Field(min_length=1, max_length=3)
    score: float = Field(ge=0.0, le=1.0)  # how hard: higher is more worth labelling
    width: int = Field(gt=0, le=8192)
    height: int = Field(gt=0, le=8192)
    image_jpeg_b64: str = Field(min_length=4, max_length=MAX_SAMPLE_JPEG_B64)
    redacted: bool
    detections: list[LabeledBox] = Field(default_factory=list, max_length=300)
    # Ground truth where the source has it (the synthetic scene); None for a real camera.
    labels: list[LabeledBox] | None = Field(default=None, max_length=300)


class SamplesMessage(_Strict):
    schema_version: Literal[1] = Field(default=1, alias="schema")
    kind: Literal["samples"] = "samples"
    records: list[HardExample] = Field(min_length=1, max_length=MAX_SAMPLES_PER_MESSAGE)


# Model updates ----------------------------------------------------------------------

Version = Annotated[str, Field(min_length=1, max_length=32, pattern=r"^[0-9A-Za-z.+_-]+$")]
OtaState = Literal["staging", "shadow", "active", "refused", "failed", "rolled_back"]
CONFIDENCE_BINS: Final = 10


class ShadowStats(_Strict):
    """The candidate model beside the running one on the same live frames."""

    frames: Count
    # Share of the running model's detections the candidate also finds (IoU >= 0.5, same class):
    # a retrained model that finds more still agrees; a broken one does not.
    agreement: float = Field(ge=0.0, le=1.0)
    # Share of the candidate's detections the running model lacks (new finds, or false alarms).
    novel: float = Field(ge=0.0, le=1.0)
    latency_p95_ms_running: float = Field(ge=0.0)
    latency_p95_ms_candidate: float = Field(ge=0.0)
    # Normalised histograms of detection confidence over [0, 1] in CONFIDENCE_BINS bins.
    confidence_running: list[float] = Field(min_length=CONFIDENCE_BINS, max_length=CONFIDENCE_BINS)
    confidence_candidate: list[float] = Field(min_length=CONFIDENCE_BINS, max_length=CONFIDENCE_BINS)


class OtaReport(_Strict):
    """Where one device stands with one model update."""

    rollout_id: int | None = Field(default=None, ge=0, le=MAX_WIRE_INT)
    name: Name
    version: Version
    state: OtaState
    running_version: Version | None = None
    detail: Annotated[Text, Field(max_length=1024)] = ""
    shadow: ShadowStats | None = None


class OtaMessage(_Strict):
    schema_version: Literal[1] = Field(default=1, alias="schema")
    kind: Literal["ota"] = "ota"
    report: OtaReport


class OtaCommandArgs(_Strict):
    """``args`` of an ``ota`` command.

    ``install``: fetch ``name`` ``version`` through TUF, run it in shadow beside
    the running model for ``shadow_s`` seconds (and at least ``min_frames``
    frames), report, then switch. ``rollback``: switch back to the previous
    model (kept loaded, so it is instant).
    """

    action: Literal["install", "rollback"]
    rollout_id: int | None = Field(default=None, ge=0, le=MAX_WIRE_INT)
    name: Name | None = None
    version: Version | None = None
    shadow_s: float = Field(default=600.0, ge=0.0, le=86_400.0)
    min_frames: int = Field(default=20, ge=0, le=100_000)


class AckMessage(_Strict):
    schema_version: Literal[1] = Field(default=1, alias="schema")
    kind: Literal["ack"] = "ack"
    command_id: uuid.UUID
    ok: bool
    detail: Annotated[Text, Field(max_length=1024)] = ""


# Detection for signals (docs/signals.md) ----------------------------------------------

DetectorZoneKind = Literal["presence", "count", "pedestrian"]
DetectorState = Literal["on", "off", "fault", "restored"]
DetectorFault = Literal["frozen", "dark", "obscured", "lost"]
MAX_DETECTOR_CHANGES: Final = 64
MAX_MOVEMENT_RECORDS: Final = 500


class DetectorChange(_Strict):
    """A virtual detector zone changed state, as a loop card's output would.

    ``ts`` is the capture time of the frame in which the change was seen.
    ``fault`` places a constant call until ``restored``; after ``restored``
    the zone's real state (``on``/``off``) follows at once.
    """

    ts: Time
    stream: Name
    zone: Name
    zone_kind: DetectorZoneKind
    state: DetectorState
    reason: DetectorFault | None = None  # with ``fault`` only
    occupants: int | None = Field(default=None, ge=0, le=255)


class DetectorMessage(_Strict):
    schema_version: Literal[1] = Field(default=1, alias="schema")
    kind: Literal["detector"] = "detector"
    records: list[DetectorChange] = Field(min_length=1, max_length=MAX_DETECTOR_CHANGES)


MovementInterval = Literal[60, 300, 900]


class TurningMovement(_Strict):
    """Vehicles of one class that entered by one approach and left by another during one interval."""

    interval_start: Time
    interval_s: MovementInterval
    stream: Name
    entry: Name  # approach names as configured: "north", "east", ...
    exit: Name
    cls: Name
    count: int = Field(ge=0, le=1_000_000)


class ZoneStat(_Strict):
    """One detector zone over one interval: vehicles that entered, share of time occupied, mean speed."""

    interval_start: Time
    interval_s: MovementInterval
    stream: Name
    zone: Name
    volume: int = Field(ge=0, le=1_000_000)
    occupancy: float = Field(ge=0.0, le=1.0)
    mean_speed_kmh: float | None = Field(default=None, ge=0.0, le=400.0)


class MovementsMessage(_Strict):
    schema_version: Literal[1] = Field(default=1, alias="schema")
    kind: Literal["movements"] = "movements"
    movements: list[TurningMovement] = Field(default_factory=list, max_length=MAX_MOVEMENT_RECORDS)
    zones: list[ZoneStat] = Field(default_factory=list, max_length=MAX_MOVEMENT_RECORDS)


UplinkMessage = Annotated[
    CountsMessage
    | EventsMessage
    | SensorsMessage
    | HealthMessage
    | AckMessage
    | SamplesMessage
    | OtaMessage
    | DetectorMessage
    | MovementsMessage,
    Field(discriminator="kind"),
]
_UPLINK: TypeAdapter[Any] = TypeAdapter(UplinkMessage)

CommandType = Literal["reload_config", "add_stream", "remove_stream", "rotate_keys", "ping", "ota"]


class Command(_Strict):
    """A hub→device command; signed and sealed by :class:`roadside.shared.envelope.HubCommandSealer`."""

    schema_version: Literal[1] = Field(default=1, alias="schema")
    command_id: uuid.UUID = Field(default_factory=uuid.uuid4)
    type: CommandType
    issued_at: AwareDatetime = Field(default_factory=utcnow)
    args: dict[str, Any] = Field(default_factory=dict)


def encode(message: BaseModel) -> bytes:
    """Canonical JSON bytes of a wire model (aliases, no ``None`` noise)."""
    return message.model_dump_json(by_alias=True, exclude_none=True).encode()


UplinkPayload = (
    CountsMessage
    | EventsMessage
    | SensorsMessage
    | HealthMessage
    | AckMessage
    | SamplesMessage
    | OtaMessage
    | DetectorMessage
    | MovementsMessage
)


def decode_uplink(kind: str, raw: bytes) -> UplinkPayload:
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
