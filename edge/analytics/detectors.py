"""Virtual detector zones for signal control: on/off as a loop card's output, fail safe on a bad camera.

Pure: tracks and timestamps in, :class:`ZoneChange` out, no clock or I/O
of its own (``docs/signals.md`` describes the behaviour for a traffic
engineer).

- :class:`ZoneBank` keeps which tracks stand in which zone and reports a
  zone ``on`` in the frame its first occupant's anchor enters and ``off``
  in the frame its last one leaves (after ``off_delay_s``, a loop card's
  delay/extension timer).
- While the camera is failed (:meth:`ZoneBank.fail`) every zone reports
  ``fault`` once and is then held as a constant call; :meth:`ZoneBank.restore`
  reports ``restored`` and the zone's true state right after it.

Zones are drawn in image pixels, or in road metres when the camera has a
calibration (:mod:`roadside.vision.calibration`); road polygons are projected
into the image once, when the bank is built.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from roadside.edge.analytics.geometry import Anchor, point_in_polygon
from roadside.edge.analytics.lines import Point
from roadside.shared.errors import ConfigError
from roadside.shared.schemas import DetectorFault, DetectorState, DetectorZoneKind
from roadside.vision.calibration import Camera, CameraCalibration

__all__ = [
    "ApproachConfig",
    "CameraDetectors",
    "CameraHealthConfig",
    "DetectorZoneConfig",
    "Occupant",
    "SignalDetectionConfig",
    "ZoneBank",
    "ZoneChange",
]

Name = Annotated[str, Field(min_length=1, max_length=48, pattern=r"^[A-Za-z0-9_.:-]+$")]
Ring = Annotated[list[Point], Field(min_length=3, max_length=64)]
Space = Literal["image", "road"]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class DetectorZoneConfig(_Section):
    """A virtual loop: stop-bar presence (``presence``), advance/count (``count``) or pedestrian waiting area."""

    name: Name
    kind: DetectorZoneKind = "presence"
    polygon: Ring
    space: Space = "image"  # "road": metres on the calibrated road plane
    classes: list[str] | None = None  # None: the camera's vehicle (or pedestrian) classes
    off_delay_s: float = Field(default=0.0, ge=0.0, le=30.0)


class ApproachConfig(_Section):
    """One leg of the junction as the camera sees it; a track's first and last leg give its movement."""

    name: Name  # north, east, south, west or any name the channel map uses
    polygon: Ring
    space: Space = "image"


class CameraHealthConfig(_Section):
    """When a camera's picture is no good for detection (see :mod:`roadside.edge.analytics.camera_health`)."""

    lost_s: float = Field(default=1.0, gt=0.0, le=60.0)  # no frame for this long
    frozen_s: float = Field(default=3.0, gt=0.0, le=600.0)  # the picture has not changed for this long
    frozen_level: float = Field(default=0.5, ge=0.0, le=255.0)  # largest mean abs change still "the same"
    dark_level: float = Field(default=16.0, ge=0.0, le=255.0)  # mean luma below this is dark
    obscured_level: float = Field(default=1.5, ge=0.0, le=255.0)  # mean gradient below this: no detail
    bad_s: float = Field(default=2.0, ge=0.0, le=600.0)  # dark or obscured for this long
    restore_s: float = Field(default=2.0, ge=0.0, le=600.0)  # good again for this long


class CameraDetectors(_Section):
    """Zones, approaches and health checks of one camera (keyed by stream name)."""

    calibration: CameraCalibration | None = None
    zones: list[DetectorZoneConfig] = Field(default_factory=list, max_length=64)
    approaches: list[ApproachConfig] = Field(default_factory=list, max_length=16)
    anchor: Anchor = "bottom_center"
    vehicle_classes: list[str] = Field(
        default_factory=lambda: ["car", "truck", "bus", "motorcycle", "van", "bicycle", "cyclist"]
    )
    pedestrian_classes: list[str] = Field(default_factory=lambda: ["person", "pedestrian"])
    health: CameraHealthConfig = Field(default_factory=CameraHealthConfig)

    @model_validator(mode="after")
    def _check(self) -> CameraDetectors:
        for what, names in (
            ("zone", [z.name for z in self.zones]),
            ("approach", [a.name for a in self.approaches]),
        ):
            dupes = sorted({n for n in names if names.count(n) > 1})
            if dupes:
                raise ValueError(f"{what} names must be unique, repeated: {', '.join(dupes)}")
        road = [z.name for z in self.zones if z.space == "road"]
        road += [a.name for a in self.approaches if a.space == "road"]
        if road and self.calibration is None:
            raise ValueError(f"{', '.join(road)} drawn in road metres, but the camera has no calibration")
        if len(self.approaches) == 1:
            raise ValueError("turning movements need at least two approaches (or none)")
        return self

    def camera(self) -> Camera | None:
        return None if self.calibration is None else Camera.from_calibration(self.calibration)

    def classes_of(self, zone: DetectorZoneConfig) -> frozenset[str]:
        if zone.classes is not None:
            return frozenset(zone.classes)
        return frozenset(self.pedestrian_classes if zone.kind == "pedestrian" else self.vehicle_classes)


class SignalDetectionConfig(_Section):
    """``AgentSettings.signals``: detector zones per camera, and the movement-count interval."""

    cameras: dict[Name, CameraDetectors] = Field(default_factory=dict, max_length=64)
    interval_s: Literal[60, 300, 900] = 900


def image_polygon(polygon: Sequence[Point], space: Space, camera: Camera | None) -> list[Point]:
    """A zone's ring in image pixels; a road ring is projected through the camera."""
    if space == "image":
        return [(float(x), float(y)) for x, y in polygon]
    if camera is None:
        raise ConfigError("a zone in road metres needs a camera calibration")
    pixels = camera.road_to_image([list(p) for p in polygon])
    if not bool((abs(pixels) < 1e7).all()):
        raise ConfigError("a zone in road metres lies (partly) behind the camera: it cannot be seen")
    return [(float(u), float(v)) for u, v in pixels]


@dataclass(frozen=True, slots=True)
class Occupant:
    """A tracked object in one frame: its id, class label and anchor point in pixels."""

    track_id: int
    cls: str
    anchor: Point


@dataclass(frozen=True, slots=True)
class ZoneChange:
    """A zone's output changed in the frame taken at ``ts``."""

    ts: float
    zone: str
    kind: DetectorZoneKind
    state: DetectorState
    reason: DetectorFault | None = None
    occupants: int | None = None


@dataclass(slots=True)
class _Zone:
    name: str
    kind: DetectorZoneKind
    polygon: list[Point]
    classes: frozenset[str]
    off_delay_s: float
    inside: set[int] = field(default_factory=set)
    output: bool = False  # what the zone reports (on/off), outside a fault
    empty_since: float | None = None


class ZoneBank:
    """The detector zones of one camera; feed it each frame's occupants in time order."""

    def __init__(self, config: CameraDetectors, camera: Camera | None = None) -> None:
        camera = camera if camera is not None else config.camera()
        self._zones = [
            _Zone(
                z.name, z.kind, image_polygon(z.polygon, z.space, camera), config.classes_of(z), z.off_delay_s
            )
            for z in config.zones
        ]
        self.failed: DetectorFault | None = None

    @property
    def names(self) -> list[str]:
        return [z.name for z in self._zones]

    def rings(self) -> list[list[Point]]:
        """Each zone's polygon in image pixels, in configuration order."""
        return [list(z.polygon) for z in self._zones]

    def state(self) -> dict[str, bool]:
        """Whether each zone calls now: its output, or constantly while failed (fail safe)."""
        return {z.name: self.failed is not None or z.output for z in self._zones}

    def occupied(self) -> dict[str, bool]:
        """Whether each zone's output is on, faults aside (what restoration will report)."""
        return {z.name: z.output for z in self._zones}

    def update(self, ts: float, occupants: Iterable[Occupant]) -> list[ZoneChange]:
        """Place this frame's occupants; the zones whose output changed (none while failed)."""
        present = list(occupants)
        changes: list[ZoneChange] = []
        for zone in self._zones:
            zone.inside = {
                o.track_id
                for o in present
                if o.cls in zone.classes and point_in_polygon(o.anchor, zone.polygon)
            }
            change = self._settle(zone, ts)
            if change is not None and self.failed is None:
                changes.append(change)
        return changes

    def _settle(self, zone: _Zone, ts: float) -> ZoneChange | None:
        if zone.inside:
            zone.empty_since = None
            if zone.output:
                return None
            zone.output = True
            return ZoneChange(ts, zone.name, zone.kind, "on", occupants=len(zone.inside))
        if not zone.output:
            return None
        if zone.empty_since is None:
            zone.empty_since = ts
        if ts - zone.empty_since < zone.off_delay_s:
            return None
        zone.output, zone.empty_since = False, None
        return ZoneChange(ts, zone.name, zone.kind, "off", occupants=0)

    def fail(self, ts: float, reason: DetectorFault) -> list[ZoneChange]:
        """The camera went bad: every zone reports ``fault`` and holds a constant call."""
        if self.failed is not None:
            return []
        self.failed = reason
        return [ZoneChange(ts, z.name, z.kind, "fault", reason=reason) for z in self._zones]

    def restore(self, ts: float) -> list[ZoneChange]:
        """The camera is good again: ``restored`` and then each zone's true state."""
        if self.failed is None:
            return []
        self.failed = None
        out: list[ZoneChange] = []
        for z in self._zones:
            out.append(ZoneChange(ts, z.name, z.kind, "restored"))
            out.append(ZoneChange(ts, z.name, z.kind, "on" if z.output else "off", occupants=len(z.inside)))
        return out
