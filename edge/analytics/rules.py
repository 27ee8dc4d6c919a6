"""The vision event rules: wrong-way vehicle, stopped vehicle, pedestrian in the roadway.

Each rule looks at one :class:`Sighting` of a track per frame and answers
whether its event fires now. A condition must persist (frames or seconds)
before it fires; after firing, the same track stays quiet for the
cool-down, and a condition that still holds then fires again (a vehicle
stopped for ten minutes is reported again, not forgotten). Pure: no clock
but the sightings' ``ts``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from roadside.edge.analytics.config import EventRules, LaneConfig
from roadside.edge.analytics.lines import Point

__all__ = ["PedestrianInRoadwayRule", "Sighting", "StoppedVehicleRule", "WrongWayRule"]


@dataclass(frozen=True, slots=True)
class Sighting:
    """What the rules know about one track in one frame."""

    ts: float
    track_id: int
    cls: str
    anchor: Point
    size: float  # box height in pixels: the rules' unit of distance
    velocity: Point | None  # anchor px/s over the motion window; None until the window has filled
    lane: LaneConfig | None  # the lane polygon the anchor is in now
    roadway: str | None  # the roadway zone the anchor is in now
    in_crosswalk: bool


class _Persistence:
    """Per track: since when, and for how many frames, a condition has held; and the cool-down."""

    def __init__(self, cooldown_s: float) -> None:
        self.cooldown_s = cooldown_s
        self._since: dict[int, float] = {}
        self._frames: dict[int, int] = {}
        self._fired: dict[int, float] = {}

    def observe(self, track_id: int, holds: bool, ts: float) -> tuple[float, int]:
        """Record this frame; return (seconds, frames) the condition has held, (0, 0) if it does not."""
        if not holds:
            self._since.pop(track_id, None)
            self._frames.pop(track_id, None)
            return 0.0, 0
        since = self._since.setdefault(track_id, ts)
        frames = self._frames.get(track_id, 0) + 1
        self._frames[track_id] = frames
        return ts - since, frames

    def fire(self, track_id: int, ts: float) -> bool:
        """Fire unless the track is cooling down; a firing restarts the condition's clock."""
        last = self._fired.get(track_id)
        if last is not None and ts - last < self.cooldown_s:
            return False
        self._fired[track_id] = ts
        self._since.pop(track_id, None)
        self._frames.pop(track_id, None)
        return True

    def forget(self, track_id: int) -> None:
        for store in (self._since, self._frames, self._fired):
            store.pop(track_id, None)


class WrongWayRule:
    """A vehicle or cyclist moving against its lane's direction for ``wrong_way_frames`` frames."""

    def __init__(self, rules: EventRules) -> None:
        self.classes = set(rules.vehicle_classes) | set(rules.cyclist_classes)
        self.frames = rules.wrong_way_frames
        self.max_cos = math.cos(math.radians(rules.wrong_way_angle_deg))
        self.min_speed = rules.wrong_way_min_speed
        self._state = _Persistence(rules.cooldown_s)

    def against(self, s: Sighting) -> bool:
        """Whether this sighting moves against its lane (fast enough not to be jitter)."""
        if s.cls not in self.classes or s.lane is None or s.lane.direction is None or s.velocity is None:
            return False
        speed = math.hypot(*s.velocity)
        if speed < self.min_speed * max(s.size, 1.0):
            return False
        dx, dy = s.lane.direction
        cos = (s.velocity[0] * dx + s.velocity[1] * dy) / (speed * math.hypot(dx, dy))
        return cos <= self.max_cos

    def check(self, s: Sighting) -> bool:
        _, frames = self._state.observe(s.track_id, self.against(s), s.ts)
        return frames >= self.frames and self._state.fire(s.track_id, s.ts)

    def forget(self, track_id: int) -> None:
        self._state.forget(track_id)


class StoppedVehicleRule:
    """A vehicle inside a roadway zone that has stayed within ``stopped_radius`` box heights for ``stopped_s``."""

    def __init__(self, rules: EventRules) -> None:
        self.classes = set(rules.vehicle_classes)
        self.hold_s = rules.stopped_s
        self.radius = rules.stopped_radius
        self._state = _Persistence(rules.cooldown_s)
        self._rest: dict[int, Point] = {}  # where the vehicle came to rest

    def check(self, s: Sighting) -> bool:
        if s.cls not in self.classes or s.roadway is None:
            self._rest.pop(s.track_id, None)
            self._state.observe(s.track_id, False, s.ts)
            return False
        rest = self._rest.get(s.track_id)
        if rest is None or math.dist(rest, s.anchor) > self.radius * max(s.size, 1.0):
            self._rest[s.track_id] = s.anchor  # moved on: if it stops, it stops here, from now
            self._state.observe(s.track_id, False, s.ts)
        held, _ = self._state.observe(s.track_id, True, s.ts)
        return held >= self.hold_s and self._state.fire(s.track_id, s.ts)

    def forget(self, track_id: int) -> None:
        self._state.forget(track_id)
        self._rest.pop(track_id, None)


class PedestrianInRoadwayRule:
    """A pedestrian in a roadway zone, outside every crosswalk, for ``pedestrian_s``."""

    def __init__(self, rules: EventRules) -> None:
        self.classes = set(rules.pedestrian_classes)
        self.hold_s = rules.pedestrian_s
        self._state = _Persistence(rules.cooldown_s)

    def check(self, s: Sighting) -> bool:
        exposed = s.cls in self.classes and s.roadway is not None and not s.in_crosswalk
        held, _ = self._state.observe(s.track_id, exposed, s.ts)
        return exposed and held >= self.hold_s and self._state.fire(s.track_id, s.ts)

    def forget(self, track_id: int) -> None:
        self._state.forget(track_id)
