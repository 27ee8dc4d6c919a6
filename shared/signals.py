"""What signal control reads from the hub: detector calls and the ATSPM event codes.

A :class:`SignalCall` is one detector channel of one signal changing state,
as the hub sends it to a controller, on its MQTT topic
(:func:`roadside.shared.topics.signal_calls`) and on the SSE stream
``GET /v1/signals/{signal}/calls``. The wire format is documented for
traffic engineers in ``docs/signals.md`` and is versioned by ``schema``.

:class:`EventCode` holds the Indiana/Purdue high-resolution controller event
enumeration that the ATSPM event log uses (Sturdevant et al., *Indiana
Traffic Signal Hi Resolution Data Logger Enumerations*, 2012): the codes
Roadside writes (detector and pedestrian detector states) and the phase codes
a controller posts.
"""

from __future__ import annotations

import enum
from typing import Annotated, Final, Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, ValidationError

from roadside.shared.errors import SchemaError
from roadside.shared.schemas import DetectorFault, DetectorState, DetectorZoneKind, Name

CALL_SCHEMA: Final = 1
MAX_CHANNEL: Final = 128  # NTCIP 1202 maxVehicleDetectors is 128 (pedestrian detectors: fewer)
MAX_PHASE: Final = 16

Channel = Annotated[int, Field(ge=1, le=MAX_CHANNEL)]
Phase = Annotated[int, Field(ge=1, le=MAX_PHASE)]


class EventCode(enum.IntEnum):
    """Indiana hi-resolution event codes (the subset Roadside writes or takes from a controller)."""

    PHASE_BEGIN_GREEN = 1
    PHASE_CHECK = 2
    PHASE_MIN_COMPLETE = 3
    PHASE_GAP_OUT = 4
    PHASE_MAX_OUT = 5
    PHASE_FORCE_OFF = 6
    PHASE_GREEN_TERMINATION = 7
    PHASE_BEGIN_YELLOW_CLEARANCE = 8
    PHASE_END_YELLOW_CLEARANCE = 9
    PHASE_BEGIN_RED_CLEARANCE = 10
    PHASE_END_RED_CLEARANCE = 11
    PHASE_INACTIVE = 12
    PED_BEGIN_WALK = 21
    PED_BEGIN_CLEARANCE = 22
    PED_BEGIN_SOLID_DONT_WALK = 23
    PED_DARK = 24
    BARRIER_TERMINATION = 31
    PHASE_CALL_REGISTERED = 43
    PHASE_CALL_DROPPED = 44
    PED_CALL_REGISTERED = 45
    DETECTOR_OFF = 81
    DETECTOR_ON = 82
    DETECTOR_RESTORED = 83
    DETECTOR_FAULT_OTHER = 84
    DETECTOR_FAULT_WATCHDOG = 85
    DETECTOR_FAULT_OPEN_LOOP = 86
    DETECTOR_FAULT_SHORTED_LOOP = 87
    DETECTOR_FAULT_EXCESSIVE_CHANGE = 88
    PED_DETECTOR_OFF = 89
    PED_DETECTOR_ON = 90
    PED_DETECTOR_FAILED = 91
    PED_DETECTOR_RESTORED = 92


DETECTOR_CODES: Final = frozenset(range(81, 93))
"""Codes only Roadside's detectors write; a controller posting one of these is refused."""


def detector_event_code(
    zone_kind: DetectorZoneKind, state: DetectorState, reason: DetectorFault | None
) -> int:
    """The ATSPM code of a detector change (``docs/signals.md`` has the table).

    A camera that stopped sending frames (``lost``) is a watchdog fault (85);
    frozen, dark or obscured pictures have no loop equivalent and are 84
    (other). Pedestrian zones use the pedestrian detector codes.
    """
    if zone_kind == "pedestrian":
        return {"on": 90, "off": 89, "fault": 91, "restored": 92}[state]
    if state == "fault":
        return int(EventCode.DETECTOR_FAULT_WATCHDOG if reason == "lost" else EventCode.DETECTOR_FAULT_OTHER)
    return {"on": 82, "off": 81, "restored": 83}[state]


class SignalCall(BaseModel):
    """One detector channel of one signal changed state, as the hub tells a controller.

    ``called`` is what a controller acts on: true while the zone is occupied
    and while it is failed (fail safe: a failed detector places a constant
    call until restored). ``captured_at`` is the camera frame's capture time
    on the device, ``hub_sent_at`` when the hub sent this call; their
    difference is the latency the hub exports as
    ``roadside_signal_call_latency_seconds``. ``seq`` counts this signal's
    calls since the hub started (an SSE client sees a gap as a jump).
    """

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True, allow_inf_nan=False)

    schema_version: Literal[1] = Field(default=1, alias="schema")
    signal: Name
    channel: Channel
    phase: Phase | None = None
    state: DetectorState
    called: bool
    event_code: int = Field(ge=81, le=92)
    zone_kind: DetectorZoneKind
    reason: DetectorFault | None = None
    device: Name
    stream: Name
    zone: Name
    captured_at: AwareDatetime
    hub_sent_at: AwareDatetime
    seq: int = Field(ge=0, le=2**63 - 1)


def is_called(state: DetectorState) -> bool:
    """Whether a channel in ``state`` calls its phase: on, or failed (fail safe).

    ``restored`` drops the constant call; the agent sends the zone's true state
    (``on`` if occupied) in the same message right after it.
    """
    return state in ("on", "fault")


def decode_call(raw: bytes | str) -> SignalCall:
    """A :class:`SignalCall` from its JSON; :class:`SchemaError` if it is not one."""
    try:
        return SignalCall.model_validate_json(raw)
    except ValidationError as exc:
        raise SchemaError(
            f"not a signal call: {exc.error_count()} problem(s), first: {exc.errors()[0]['msg']}"
        ) from exc
