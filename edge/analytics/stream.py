"""The analytics of one camera stream: tracks → line counts, lanes, zones, speeds, events, intervals.

:class:`StreamAnalytics` is pure (numpy and dataclasses, no I/O, no clock
of its own): the agent hands it each frame's timestamp and detections and
ships what comes back. Per frame it

1. tracks the detections (:class:`~roadside.edge.analytics.tracker.Tracker`);
2. places each track by its anchor point (``AnalyticsConfig.anchor``) in
   a lane and in zones;
3. counts line crossings per class, direction and lane;
4. times speed traps (crossing times interpolated between frames);
5. keeps zone occupancy and dwell times;
6. runs the event rules (wrong way, stopped vehicle, pedestrian in the
   roadway);
7. closes the wall-aligned interval when a frame falls past its end.
"""

from __future__ import annotations

import math
import uuid
from collections import Counter, deque
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Literal

from roadside.edge.analytics.aggregate import (
    CountAggregator,
    SpeedAggregator,
    SpeedMeasurement,
    SpeedRecord,
    ZoneAggregator,
    ZoneRecord,
    ZoneVisit,
    interval_start,
)
from roadside.edge.analytics.config import AnalyticsConfig, LaneConfig, SpeedTrapConfig, ZoneConfig
from roadside.edge.analytics.geometry import anchor_point, crossing_fraction, point_in_polygon
from roadside.edge.analytics.lines import Direction, LineCrossing, Point, crossing_direction
from roadside.edge.analytics.rules import PedestrianInRoadwayRule, Sighting, StoppedVehicleRule, WrongWayRule
from roadside.edge.analytics.tracker import Track, Tracker
from roadside.shared.schemas import CountRecord, DetectionEvent
from roadside.vision.yolo import Detections

__all__ = ["AnalyticsEvent", "AnalyticsOutput", "StreamAnalytics", "VisionEventType"]

VisionEventType = Literal["line_crossing", "wrong_way", "stopped_vehicle", "pedestrian_in_roadway"]
MAX_WIRE_KMH = 400.0  # DetectionEvent.speed_kmh's bound


@dataclass(frozen=True, slots=True)
class AnalyticsEvent:
    """Something worth telling the city about, as seen in one frame.

    ``lane`` and ``zone`` say where; the wire's ``DetectionEvent`` has no
    place for them yet, so :meth:`to_detection_event` leaves them behind.
    """

    ts: float
    type: VisionEventType
    track_id: int
    cls: str
    confidence: float
    line: str | None = None
    direction: Direction | None = None
    lane: int | None = None
    zone: str | None = None
    speed_kmh: float | None = None

    def to_detection_event(self, stream: str, model_version: str, event_id: uuid.UUID) -> DetectionEvent:
        speed = self.speed_kmh if self.speed_kmh is not None and self.speed_kmh <= MAX_WIRE_KMH else None
        return DetectionEvent(
            event_id=event_id,
            ts=datetime.fromtimestamp(self.ts, UTC),
            type=self.type,
            stream=stream,
            cls=self.cls,
            track_id=self.track_id,
            line=self.line,
            direction=self.direction,
            confidence=min(max(self.confidence, 0.0), 1.0),
            speed_kmh=None if speed is None else round(speed, 1),
            model_version=model_version,
        )


@dataclass(frozen=True, slots=True)
class AnalyticsOutput:
    """What one frame produced; the ``closed_*`` lists are non-empty when an interval closed."""

    events: list[AnalyticsEvent] = field(default_factory=list)
    closed_counts: list[CountRecord] = field(default_factory=list)
    speeds: list[SpeedMeasurement] = field(default_factory=list)  # traps completed in this frame
    visits: list[ZoneVisit] = field(default_factory=list)  # zone stays that ended in this frame
    closed_speeds: list[SpeedRecord] = field(default_factory=list)
    closed_zones: list[ZoneRecord] = field(default_factory=list)
    tracks: list[Track] = field(default_factory=list)  # seen in this frame, for overlays


@dataclass(slots=True)
class _TrackState:
    """What the analytics remember about one track between frames."""

    track_id: int
    cls: str
    seen_ts: float
    anchor: Point
    lane: int | None = None  # the last lane the anchor was in; sticks through gaps between polygons
    motion: deque[tuple[float, Point]] = field(default_factory=deque)
    zones: dict[str, float] = field(default_factory=dict)  # zone -> when it entered
    trap_times: dict[tuple[str, str], float] = field(default_factory=dict)  # (trap, "a"/"b") -> when
    trap_kmh: float | None = None  # the last speed-trap result

    def velocity(self, window_s: float) -> Point | None:
        """Anchor velocity over about ``window_s``; None while less than half of it is known."""
        (t0, p0), (t1, p1) = self.motion[0], self.motion[-1]
        dt = t1 - t0
        if dt < window_s / 2:
            return None
        return ((p1[0] - p0[0]) / dt, (p1[1] - p0[1]) / dt)


class StreamAnalytics:
    """Counts, speeds, zones and events of one stream; feed it frames in time order.

    Line names in count records and events are prefixed with the stream's
    name (``cam0-line0``): the hub keys counts by device and line, and a
    device may have several cameras.
    """

    def __init__(
        self,
        config: AnalyticsConfig,
        stream: str,
        labels: list[str],
        model_version: str,
        interval_s: int = 60,
        tracker: Tracker | None = None,
    ) -> None:
        self.config = config
        self.stream = stream
        self.labels = labels
        self.interval_s = interval_s
        self.tracker: Tracker = tracker if tracker is not None else config.tracker.build()
        self._forget_s = config.tracker.max_lost_s
        self._counts = CountAggregator(interval_s, labels, model_version)
        self._speeds = SpeedAggregator()
        self._zones = ZoneAggregator()
        self._start: float | None = None
        self._states: dict[int, _TrackState] = {}
        self._roadways = [z for z in config.zones if z.kind == "roadway"]
        self._crosswalks = [z for z in config.zones if z.kind == "crosswalk"]
        self._wrong_way = WrongWayRule(config.events)
        self._stopped = StoppedVehicleRule(config.events)
        self._pedestrian = PedestrianInRoadwayRule(config.events)

    # Public -------------------------------------------------------------------

    def update(self, ts: float, detections: Detections) -> AnalyticsOutput:
        """Process the frame taken at epoch seconds ``ts``."""
        closed = self._roll(ts)
        out = AnalyticsOutput(closed_counts=closed[0], closed_speeds=closed[1], closed_zones=closed[2])
        crossings: list[LineCrossing] = []
        for track in self.tracker.update(detections, ts):
            out.tracks.append(track)
            self._observe(ts, track, out, crossings)
        self._counts.add(ts, crossings)
        for gone in [s for s in self._states.values() if ts - s.seen_ts > self._forget_s]:
            self._forget(gone, out)
        for (zone, cls), n in self.occupancy_by_class().items():
            self._zones.occupancy(zone, cls, n)
        return out

    def flush(self) -> list[CountRecord]:
        """Close the open interval now (on shutdown); its count records."""
        return self.flush_all().closed_counts

    def flush_all(self) -> AnalyticsOutput:
        """Close the open interval now: counts, speed and zone summaries."""
        counts, speeds, zones = self._close()
        return AnalyticsOutput(closed_counts=counts, closed_speeds=speeds, closed_zones=zones)

    def occupancy(self) -> dict[str, int]:
        """Objects in each zone now (a briefly hidden one still counts)."""
        now: Counter[str] = Counter({z.name: 0 for z in self.config.zones})
        for state in self._states.values():
            now.update(state.zones.keys())
        return dict(now)

    def occupancy_by_class(self) -> Counter[tuple[str, str]]:
        """Objects in each zone now, by (zone, class)."""
        now: Counter[tuple[str, str]] = Counter()
        for state in self._states.values():
            now.update((zone, state.cls) for zone in state.zones)
        return now

    def dwell(self, zone: str, ts: float) -> dict[int, float]:
        """Seconds each track now in ``zone`` has been in it, at ``ts``."""
        return {s.track_id: ts - s.zones[zone] for s in self._states.values() if zone in s.zones}

    # Intervals ----------------------------------------------------------------

    def _roll(self, ts: float) -> tuple[list[CountRecord], list[SpeedRecord], list[ZoneRecord]]:
        closed: tuple[list[CountRecord], list[SpeedRecord], list[ZoneRecord]] = ([], [], [])
        if self._start is not None and ts >= self._start + self.interval_s:
            closed = self._close()
        if self._start is None:
            self._start = interval_start(ts, self.interval_s)
        return closed

    def _close(self) -> tuple[list[CountRecord], list[SpeedRecord], list[ZoneRecord]]:
        if self._start is None:
            return [], [], []
        start, self._start = self._start, None
        return (
            self._counts.flush(),
            self._speeds.close(start, self.interval_s),
            self._zones.close(start, self.interval_s, self.occupancy_by_class()),
        )

    # Per track ----------------------------------------------------------------

    def _label(self, cls: int) -> str:
        return self.labels[cls] if 0 <= cls < len(self.labels) else f"class{cls}"

    def _observe(self, ts: float, track: Track, out: AnalyticsOutput, crossings: list[LineCrossing]) -> None:
        anchor = anchor_point(track.box, self.config.anchor)
        state = self._states.get(track.track_id)
        if state is None:
            state = self._start_state(ts, track, anchor)
        prev, prev_ts = state.anchor, state.seen_ts
        state.cls = self._label(track.cls)
        state.anchor, state.seen_ts = anchor, ts
        state.motion.append((ts, anchor))
        window = self.config.events.motion_window_s
        while len(state.motion) > 2 and ts - state.motion[1][0] >= window:
            state.motion.popleft()
        lane = self._lane_of(anchor)
        if lane is not None:
            state.lane = lane.id
        inside = [z for z in self.config.zones if point_in_polygon(anchor, z.polygon)]
        velocity = state.velocity(window)
        self._time_traps(state, prev, prev_ts, out)
        self._cross_lines(state, track, prev, out, crossings, self._zone_kmh(inside, velocity))
        self._track_zones(state, inside, prev_ts, out)
        sighting = Sighting(
            ts=ts,
            track_id=track.track_id,
            cls=state.cls,
            anchor=anchor,
            size=track.box[3] - track.box[1],
            velocity=velocity,
            lane=lane,
            roadway=next((z.name for z in inside if z.kind == "roadway"), None),
            in_crosswalk=any(z.kind == "crosswalk" for z in inside),
        )
        self._apply_rules(sighting, track, state, out, self._zone_kmh(inside, velocity))

    def _start_state(self, ts: float, track: Track, anchor: Point) -> _TrackState:
        # A tracker reports a track only once confirmed, by when it has a step behind it:
        # start from that step, shifted from the centroid to the anchor, so no crossing is lost.
        prev = anchor
        if len(track.history) >= 2:
            cx, cy = track.centroid
            hx, hy = track.history[-2]
            prev = (hx + anchor[0] - cx, hy + anchor[1] - cy)
        state = _TrackState(track.track_id, self._label(track.cls), ts, prev)
        self._states[track.track_id] = state
        return state

    def _lane_of(self, anchor: Point) -> LaneConfig | None:
        return next((ln for ln in self.config.lanes if point_in_polygon(anchor, ln.polygon)), None)

    def _cross_lines(
        self,
        state: _TrackState,
        track: Track,
        prev: Point,
        out: AnalyticsOutput,
        crossings: list[LineCrossing],
        zone_kmh: float | None,
    ) -> None:
        for line in self.config.lines:
            direction = crossing_direction(line.start, line.end, prev, state.anchor)
            if direction is None:
                continue
            name = f"{self.stream}-{line.name}"
            lane = line.lane if line.lane is not None else state.lane
            crossings.append(LineCrossing(name, track.track_id, track.cls, direction, track.score, lane))
            out.events.append(
                AnalyticsEvent(
                    ts=state.seen_ts,
                    type="line_crossing",
                    track_id=track.track_id,
                    cls=state.cls,
                    confidence=track.score,
                    line=name,
                    direction=direction,
                    lane=lane,
                    speed_kmh=state.trap_kmh if state.trap_kmh is not None else zone_kmh,
                )
            )

    def _time_traps(self, state: _TrackState, prev: Point, prev_ts: float, out: AnalyticsOutput) -> None:
        for trap in self.config.speed_traps:
            for which, seg in (("a", trap.line_a), ("b", trap.line_b)):
                if crossing_direction(seg.start, seg.end, prev, state.anchor) is None:
                    continue
                frac = crossing_fraction(seg.start, seg.end, prev, state.anchor)
                state.trap_times[(trap.name, which)] = prev_ts + frac * (state.seen_ts - prev_ts)
            measured = self._trap_speed(trap, state)
            if measured is not None:
                out.speeds.append(measured)
                self._speeds.add(measured)

    def _trap_speed(self, trap: SpeedTrapConfig, state: _TrackState) -> SpeedMeasurement | None:
        ta = state.trap_times.get((trap.name, "a"))
        tb = state.trap_times.get((trap.name, "b"))
        if ta is None or tb is None:
            return None
        del state.trap_times[(trap.name, "a")], state.trap_times[(trap.name, "b")]
        if ta == tb:
            return None
        kmh = trap.distance_m / abs(tb - ta) * 3.6
        if kmh > trap.max_kmh:
            return None  # two objects stitched together by an id switch, not a real speed
        state.trap_kmh = kmh
        return SpeedMeasurement(
            ts=max(ta, tb),
            trap=trap.name,
            track_id=state.track_id,
            cls=state.cls,
            lane=state.lane,
            direction="a_to_b" if ta < tb else "b_to_a",
            speed_kmh=kmh,
        )

    @staticmethod
    def _zone_kmh(inside: list[ZoneConfig], velocity: Point | None) -> float | None:
        """The homography-free estimate: pixel speed over the first calibrated zone's scale."""
        if velocity is None:
            return None
        ppm = next((z.pixels_per_metre for z in inside if z.pixels_per_metre is not None), None)
        return None if ppm is None else math.hypot(*velocity) / ppm * 3.6

    def _track_zones(
        self, state: _TrackState, inside: list[ZoneConfig], prev_ts: float, out: AnalyticsOutput
    ) -> None:
        names = {z.name for z in inside}
        for zone in names - state.zones.keys():
            state.zones[zone] = state.seen_ts
            self._zones.entered(zone, state.cls)
        for zone in state.zones.keys() - names:
            self._leave(state, zone, prev_ts, out)

    def _leave(self, state: _TrackState, zone: str, left_ts: float, out: AnalyticsOutput) -> None:
        visit = ZoneVisit(zone, state.track_id, state.cls, state.zones.pop(zone), left_ts)
        out.visits.append(visit)
        self._zones.left(visit)

    def _apply_rules(
        self, s: Sighting, track: Track, state: _TrackState, out: AnalyticsOutput, zone_kmh: float | None
    ) -> None:
        fired: list[tuple[VisionEventType, str | None]] = []
        if self._wrong_way.check(s):
            fired.append(("wrong_way", None))
        if self._stopped.check(s):
            fired.append(("stopped_vehicle", s.roadway))
        if self._pedestrian.check(s):
            fired.append(("pedestrian_in_roadway", s.roadway))
        for kind, zone in fired:
            out.events.append(
                AnalyticsEvent(
                    ts=s.ts,
                    type=kind,
                    track_id=s.track_id,
                    cls=s.cls,
                    confidence=track.score,
                    lane=state.lane,
                    zone=zone,
                    speed_kmh=zone_kmh,
                )
            )

    def _forget(self, state: _TrackState, out: AnalyticsOutput) -> None:
        """The tracker has given the track up: close its zone stays at its last sighting."""
        for zone in list(state.zones):
            self._leave(state, zone, state.seen_ts, out)
        for rule in (self._wrong_way, self._stopped, self._pedestrian):
            rule.forget(state.track_id)
        del self._states[state.track_id]
