"""What the stream analytics are told about a camera's view: lines, lanes, zones, speed traps, rules.

All geometry is in the camera's image pixels (x right, y down), drawn by the
installer on a still frame. ``AgentSettings.analytics`` holds one of these;
:func:`resolve_stream_config` fills what it leaves empty for one stream
(from ``AgentSettings.lines``, from a generated scene's own geometry, or a
vertical line down the middle). A source that draws its own road (``sim``'s
synthetic camera) says where its lanes and lines are through
:class:`DescribedScene`; the agent never imports the simulator.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Annotated, Literal, Protocol

from pydantic import BaseModel, ConfigDict, Field, model_validator

from roadside.edge.analytics.bytetrack import ByteTracker
from roadside.edge.analytics.geometry import Anchor

__all__ = [
    "AnalyticsConfig",
    "DescribedScene",
    "EventRules",
    "LaneConfig",
    "LineConfig",
    "SegmentConfig",
    "SpeedTrapConfig",
    "TrackerConfig",
    "ZoneConfig",
    "resolve_stream_config",
]

Point = tuple[float, float]
# Names end up in wire records (``CountRecord.line``), so they follow the wire's rules.
Name = Annotated[str, Field(min_length=1, max_length=48, pattern=r"^[A-Za-z0-9_.:-]+$")]
LaneId = Annotated[int, Field(ge=0, le=64)]
Ring = Annotated[list[Point], Field(min_length=3)]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SegmentConfig(_Section):
    start: Point
    end: Point

    @model_validator(mode="after")
    def _has_length(self) -> SegmentConfig:
        if self.start == self.end:
            raise ValueError(f"a line needs two different end points, got {self.start} twice")
        return self


class LineConfig(SegmentConfig):
    """A counting line; crossing it from its left side to its right side (seen from start to end) is ``in``.

    ``lane`` pins every crossing to that lane (a line drawn across one lane
    only); without it, a crossing takes the lane polygon the object is in.
    """

    name: Name = "line0"
    lane: LaneId | None = None


class LaneConfig(_Section):
    """A traffic lane: where it is, and which way traffic on it should move (for wrong-way)."""

    id: LaneId
    name: Name | None = None
    polygon: Ring
    direction: Point | None = None  # image-space vector of legal travel; None: no wrong-way check

    @model_validator(mode="after")
    def _direction_not_zero(self) -> LaneConfig:
        if self.direction is not None and math.hypot(*self.direction) == 0:
            raise ValueError(f"lane {self.id}: direction must be a non-zero vector, or left out")
        return self


class ZoneConfig(_Section):
    """An area watched for occupancy and dwell time; ``kind`` says which event rules look at it.

    ``pixels_per_metre`` (optional, homography-free) turns pixel speeds inside
    the zone into km/h; fair where the zone is roughly parallel to the
    image plane and shallow in depth.
    """

    name: Name
    kind: Literal["roadway", "crosswalk", "generic"] = "generic"
    polygon: Ring
    pixels_per_metre: float | None = Field(default=None, gt=0)


class SpeedTrapConfig(_Section):
    """Two lines a known distance apart along the road: speed = distance / time between them."""

    name: Name = "speed0"
    line_a: SegmentConfig
    line_b: SegmentConfig
    distance_m: float = Field(gt=0, le=1000)
    max_kmh: float = Field(default=250.0, gt=0, le=400)  # faster is an id switch, not a car


class EventRules(_Section):
    """Thresholds of the vision events. Speeds are in box heights per second, so no calibration is needed."""

    vehicle_classes: list[str] = Field(default_factory=lambda: ["car", "truck", "bus", "motorcycle", "van"])
    cyclist_classes: list[str] = Field(default_factory=lambda: ["cyclist", "bicycle"])
    pedestrian_classes: list[str] = Field(default_factory=lambda: ["pedestrian", "person"])
    wrong_way_frames: int = Field(default=5, ge=1)  # consecutive frames against the lane's direction
    wrong_way_angle_deg: float = Field(default=120.0, gt=90, le=180)  # how far off the direction counts
    wrong_way_min_speed: float = Field(default=0.5, gt=0)  # box heights/s; slower is jitter, not driving
    stopped_s: float = Field(default=15.0, gt=0)
    stopped_radius: float = Field(default=0.3, gt=0)  # how far (box heights) a stopped vehicle may drift
    pedestrian_s: float = Field(default=2.0, ge=0)
    cooldown_s: float = Field(default=300.0, ge=0)  # least time between two events of one kind per track
    motion_window_s: float = Field(default=0.5, gt=0)  # velocity = displacement over this long


class TrackerConfig(_Section):
    """Settings of :class:`roadside.edge.analytics.bytetrack.ByteTracker` (``docs/adr/0003-tracker.md``)."""

    high_score: float = Field(default=0.5, ge=0, le=1)
    low_score: float = Field(default=0.1, ge=0, le=1)
    new_track_score: float = Field(default=0.5, ge=0, le=1)
    match_iou: float = Field(default=0.2, gt=0, le=1)
    low_match_iou: float = Field(default=0.5, gt=0, le=1)
    min_hits: int = Field(default=2, ge=1, le=10)
    max_lost_s: float = Field(default=2.0, ge=0, le=30)
    lost_buffer: float = Field(default=0.5, ge=0, le=5)
    new_track_reach: float = Field(default=1.5, ge=0, le=10)

    @model_validator(mode="after")
    def _ordered(self) -> TrackerConfig:
        if self.low_score > self.high_score:
            raise ValueError(f"low_score {self.low_score} must not exceed high_score {self.high_score}")
        return self

    def build(self) -> ByteTracker:
        return ByteTracker(**self.model_dump())


class AnalyticsConfig(_Section):
    """Everything the analytics of one camera view need; every list may be empty."""

    anchor: Anchor = "bottom_center"
    lines: list[LineConfig] = Field(default_factory=list)
    lanes: list[LaneConfig] = Field(default_factory=list)
    zones: list[ZoneConfig] = Field(default_factory=list)
    speed_traps: list[SpeedTrapConfig] = Field(default_factory=list)
    events: EventRules = Field(default_factory=EventRules)
    tracker: TrackerConfig = Field(default_factory=TrackerConfig)

    @model_validator(mode="after")
    def _unique(self) -> AnalyticsConfig:
        named: tuple[tuple[str, list[str]], ...] = (
            ("line", [x.name for x in self.lines]),
            ("lane id", [str(x.id) for x in self.lanes]),
            ("zone", [x.name for x in self.zones]),
            ("speed trap", [x.name for x in self.speed_traps]),
        )
        for what, names in named:
            dupes = sorted({n for n in names if names.count(n) > 1})
            if dupes:
                raise ValueError(f"{what} names must be unique, repeated: {', '.join(dupes)}")
        return self


class DescribedScene(Protocol):
    """A generated scene that knows its own road: the source's ``scene`` (``roadside.sim.camera``)."""

    def analytics_config(self) -> AnalyticsConfig:
        """Lines, lanes, zones and speed traps that match what the scene draws."""
        ...


def resolve_stream_config(
    base: AnalyticsConfig,
    shorthand_lines: Sequence[LineConfig] = (),
    scene: DescribedScene | None = None,
    frame_size: tuple[int, int] | None = None,
) -> AnalyticsConfig:
    """The configuration one stream runs with.

    ``shorthand_lines`` (``AgentSettings.lines``) stand in when ``base`` has
    no lines; for a generated ``scene``, each geometry list still empty is
    taken from the scene; a stream left with no line at all gets a vertical
    one down the middle of its ``frame_size`` (width, height), so it counts
    something out of the box.
    """
    update: dict[str, object] = {}
    if not base.lines and shorthand_lines:
        update["lines"] = list(shorthand_lines)
    if scene is not None:
        own = scene.analytics_config()
        for key in ("lines", "lanes", "zones", "speed_traps"):
            if not getattr(base, key) and key not in update:
                update[key] = getattr(own, key)
    if not base.lines and "lines" not in update and frame_size is not None:
        w, h = frame_size
        update["lines"] = [LineConfig(name="line0", start=(w / 2, 0.0), end=(w / 2, float(h)))]
    return base.model_copy(update=update)
