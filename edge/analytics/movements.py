"""Turning-movement counts and per-zone volume, occupancy and speed, over wall-aligned intervals.

Pure: occupants and timestamps in, wire records out.

:class:`MovementCounter` follows each vehicle track through the camera's
approach polygons. The first approach a track is seen in is its entrance,
the last its exit; when the tracker gives the track up (no sighting for
``forget_s``) the pair is counted, per class, in the interval in which the
track was last seen. A track seen in one approach only (queued, parked,
or lost at the edge) is not counted. Coming back into the approach it was
last in is a U-turn only after ``uturn_gap_s`` out of every approach and
inside the junction between them (the approaches' convex hull): a shorter
excursion, or one beyond an approach's outer end (a queued car at the far
edge of its polygon), is jitter at the polygon's edge.

A detector that misses a vehicle for a few frames in the junction box (where
it turns, is small or hidden by others) breaks its track in two: an entrance
piece and an exit piece, neither counted. With a camera calibration the
counter joins them: a track seen for the first time continues a track that
has visited one approach at most and is not seen now (not yet forgotten), if its
road position is within reach of where that one was heading (its last
position moved on at its last road speed): ``join_reach_m`` plus
``join_spread_ms`` for every second it went unseen, since a vehicle brakes,
pulls away or turns meanwhile. A track that appears back in the approach
the broken one had left into the junction is another vehicle.

:class:`ZoneStatistics` accumulates, per detector zone and interval, the
volume (tracks that entered), the occupancy (share of the interval the
zone's output was on, integrated over frame gaps of at most ``max_gap_s``)
and the mean speed of the tracks that crossed it (road distance between
where a track was first and last seen in the zone over the time between,
with a camera calibration; without one, no speed).
"""

from __future__ import annotations

import math
from collections import Counter, deque
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

from roadside.edge.analytics.aggregate import interval_start
from roadside.edge.analytics.detectors import ApproachConfig, Occupant, image_polygon
from roadside.edge.analytics.geometry import convex_hull, point_in_polygon
from roadside.edge.analytics.lines import Point
from roadside.shared.schemas import MovementInterval, TurningMovement, ZoneStat
from roadside.vision.calibration import Camera

__all__ = ["MovementCounter", "ZoneStatistics"]

MAX_WIRE_KMH = 400.0


def _utc(ts: float) -> datetime:
    return datetime.fromtimestamp(ts, UTC)


# Road positions kept per track for its speed: about a second at 5-10 fps.
_TRAIL = 8


@dataclass(slots=True)
class _Path:
    cls: str
    seen: float
    visits: list[str] = field(default_factory=list)
    last_in: str | None = None  # the approach it is in now (None: in none)
    left_at: float | None = None  # when it left its last approach
    crossed: bool = False  # seen in the junction between approaches since it left its last one
    trail: deque[tuple[float, float, float]] = field(default_factory=lambda: deque(maxlen=_TRAIL))

    def returns_to(self, approach: str | None) -> bool:
        """Whether ``approach`` is the one it left into the junction (a new track there is another vehicle)."""
        return (
            approach is not None and self.last_in is None and self.crossed and self.visits[-1:] == [approach]
        )

    def heading_to(self, ts: float) -> tuple[float, float] | None:
        """Where its road trail, moved on at its last speed, puts it at ``ts`` (None: no trail)."""
        if not self.trail:
            return None
        t1, x1, y1 = self.trail[-1]
        t0, x0, y0 = self.trail[0]
        if t1 - t0 <= 0:
            return (x1, y1)
        k = (ts - t1) / (t1 - t0)
        return (x1 + (x1 - x0) * k, y1 + (y1 - y0) * k)


class MovementCounter:
    """Entrance × exit × class per interval, for one camera's tracks."""

    def __init__(
        self,
        stream: str,
        approaches: Sequence[ApproachConfig],
        interval_s: MovementInterval,
        camera: Camera | None = None,
        classes: Iterable[str] | None = None,
        forget_s: float = 2.0,
        uturn_gap_s: float = 1.0,
        join_reach_m: float = 4.0,
        join_spread_ms: float = 4.0,
    ) -> None:
        self.stream = stream
        self.interval_s: MovementInterval = interval_s
        self._approaches = [(a.name, image_polygon(a.polygon, a.space, camera)) for a in approaches]
        self._junction = convex_hull([p for _, ring in self._approaches for p in ring])
        self._camera = camera
        self._classes = None if classes is None else frozenset(classes)
        self._forget_s = forget_s
        self._uturn_gap_s = uturn_gap_s
        self._join_reach_m = join_reach_m
        self._join_spread_ms = join_spread_ms
        self._paths: dict[int, _Path] = {}
        self._counts: dict[float, Counter[tuple[str, str, str]]] = {}

    def _approach_of(self, point: Point) -> str | None:
        return next((name for name, ring in self._approaches if point_in_polygon(point, ring)), None)

    def update(self, ts: float, occupants: Iterable[Occupant]) -> list[TurningMovement]:
        """Follow this frame's tracks; the records of intervals that closed before ``ts``."""
        if not self._approaches:
            return []
        followed = [o for o in occupants if self._classes is None or o.cls in self._classes]
        present = {o.track_id for o in followed}
        for o, road in zip(followed, self._road_points(followed), strict=True):
            path = self._paths.get(o.track_id)
            if path is None:
                fresh = self._continued(ts, road, self._approach_of(o.anchor), present)
                path = self._paths[o.track_id] = fresh or _Path(o.cls, ts)
            path.cls, path.seen = o.cls, ts
            if road is not None:
                path.trail.append((ts, *road))
            self._place(path, o.anchor, ts)
        for track_id in [t for t, p in self._paths.items() if ts - p.seen > self._forget_s]:
            self._finish(self._paths.pop(track_id))
        return self._closed_before(ts)

    def _road_points(self, occupants: Sequence[Occupant]) -> list[tuple[float, float] | None]:
        if self._camera is None or not occupants:
            return [None] * len(occupants)
        road = self._camera.image_to_road([list(o.anchor) for o in occupants])
        return [(float(x), float(y)) if math.isfinite(x) and math.isfinite(y) else None for x, y in road]

    def _continued(
        self, ts: float, road: tuple[float, float] | None, approach: str | None, present: set[int]
    ) -> _Path | None:
        """The broken-off track a new one carries on, if any: the nearest within reach (see the module).

        Never one in this frame (``present``): a second box on a vehicle still tracked is not its continuation.
        """
        if road is None or self._join_reach_m <= 0:
            return None
        best: tuple[float, int] | None = None
        for track_id, path in self._paths.items():
            if track_id in present or len(path.visits) > 1 or path.returns_to(approach):
                continue
            heading = path.heading_to(ts)
            if heading is None:
                continue
            gap = math.hypot(heading[0] - road[0], heading[1] - road[1])
            reach = self._join_reach_m + self._join_spread_ms * (ts - path.seen)
            if gap <= reach and (best is None or gap < best[0]):
                best = (gap, track_id)
        return None if best is None else self._paths.pop(best[1])

    def _place(self, path: _Path, anchor: Point, ts: float) -> None:
        approach = self._approach_of(anchor)
        if approach is None and point_in_polygon(anchor, self._junction):
            path.crossed = True
        if approach == path.last_in:
            return
        if approach is None:
            path.left_at, path.crossed = ts, point_in_polygon(anchor, self._junction)
        elif not path.visits or approach != path.visits[-1]:
            path.visits.append(approach)
        elif path.crossed and path.left_at is not None and ts - path.left_at >= self._uturn_gap_s:
            path.visits.append(approach)  # back where it was, after a real excursion: a U-turn
        path.last_in = approach

    def _finish(self, path: _Path) -> None:
        if len(path.visits) < 2:
            return
        start = interval_start(path.seen, self.interval_s)
        self._counts.setdefault(start, Counter())[(path.visits[0], path.visits[-1], path.cls)] += 1

    def _closed_before(self, ts: float) -> list[TurningMovement]:
        # An interval closes once every track that could still be counted in it is gone.
        current = interval_start(ts - self._forget_s, self.interval_s)
        return self._records([s for s in self._counts if s < current])

    def flush(self) -> list[TurningMovement]:
        """Count every track now (shutdown) and return every interval held."""
        for path in self._paths.values():
            self._finish(path)
        self._paths.clear()
        return self._records(list(self._counts))

    def _records(self, starts: list[float]) -> list[TurningMovement]:
        out: list[TurningMovement] = []
        for start in sorted(starts):
            for (entry, exit_, cls), n in sorted(self._counts.pop(start).items()):
                out.append(
                    TurningMovement(
                        interval_start=_utc(start),
                        interval_s=self.interval_s,
                        stream=self.stream,
                        entry=entry,
                        exit=exit_,
                        cls=cls,
                        count=n,
                    )
                )
        return out


@dataclass(slots=True)
class _Bin:
    volume: int = 0
    on_s: float = 0.0
    speeds: list[float] = field(default_factory=list)


@dataclass(slots=True)
class _Crossing:
    first: tuple[float, Point]
    last: tuple[float, Point]


class ZoneStatistics:
    """Volume, occupancy and mean speed of each detector zone per interval."""

    def __init__(
        self,
        stream: str,
        zones: Sequence[str],
        interval_s: MovementInterval,
        camera: Camera | None = None,
        max_gap_s: float = 1.0,
        min_span_s: float = 0.3,
    ) -> None:
        self.stream = stream
        self.interval_s: MovementInterval = interval_s
        self._zones = list(zones)
        self._camera = camera
        self._max_gap_s = max_gap_s
        self._min_span_s = min_span_s
        self._start: float | None = None
        self._bins: dict[str, _Bin] = {z: _Bin() for z in self._zones}
        self._last: tuple[float, dict[str, bool]] | None = None
        self._inside: dict[str, dict[int, _Crossing]] = {z: {} for z in self._zones}

    def update(
        self, ts: float, output: Mapping[str, bool], inside: Mapping[str, Mapping[int, Point]]
    ) -> list[ZoneStat]:
        """One frame: each zone's output and the anchors of the tracks in it; closed intervals' records."""
        closed: list[ZoneStat] = []
        if self._start is None:
            self._start = interval_start(ts, self.interval_s)
        if self._last is not None:
            prev_ts, prev_out = self._last
            closed = self._accumulate(prev_ts, ts, prev_out)
        self._last = (ts, dict(output))
        for zone in self._zones:
            now = inside.get(zone, {})
            held = self._inside[zone]
            for track_id, anchor in now.items():
                crossing = held.get(track_id)
                if crossing is None:
                    held[track_id] = _Crossing((ts, anchor), (ts, anchor))
                    self._bins[zone].volume += 1
                else:
                    crossing.last = (ts, anchor)
            for track_id in [t for t in held if t not in now]:
                self._speed(zone, held.pop(track_id))
        return closed

    def _accumulate(self, prev_ts: float, ts: float, prev_out: Mapping[str, bool]) -> list[ZoneStat]:
        """Occupancy between two frames, split at interval ends; the intervals that closed."""
        assert self._start is not None
        closed: list[ZoneStat] = []
        t = prev_ts
        gap_end = min(ts, prev_ts + self._max_gap_s)
        while True:
            end = self._start + self.interval_s
            upto = min(gap_end, end)
            if upto > t:
                for zone, on in prev_out.items():
                    if on and zone in self._bins:
                        self._bins[zone].on_s += upto - t
                t = upto
            if ts < end:
                return closed
            closed.extend(self._close())
            self._start = interval_start(ts, self.interval_s) if ts >= end + self.interval_s else end
            t = max(t, self._start)

    def _speed(self, zone: str, crossing: _Crossing) -> None:
        (t0, p0), (t1, p1) = crossing.first, crossing.last
        if self._camera is None or t1 - t0 < self._min_span_s:
            return
        a, b = self._camera.image_to_road([list(p0), list(p1)])
        metres = float(math.hypot(b[0] - a[0], b[1] - a[1]))
        if math.isfinite(metres):
            kmh = metres / (t1 - t0) * 3.6
            if kmh <= MAX_WIRE_KMH:
                self._bins[zone].speeds.append(kmh)

    def _close(self) -> list[ZoneStat]:
        assert self._start is not None
        out = []
        for zone in self._zones:
            b = self._bins[zone]
            out.append(
                ZoneStat(
                    interval_start=_utc(self._start),
                    interval_s=self.interval_s,
                    stream=self.stream,
                    zone=zone,
                    volume=b.volume,
                    occupancy=min(1.0, b.on_s / self.interval_s),
                    mean_speed_kmh=round(sum(b.speeds) / len(b.speeds), 1) if b.speeds else None,
                )
            )
        self._bins = {z: _Bin() for z in self._zones}
        return out

    def flush(self) -> list[ZoneStat]:
        """Close the open interval now (shutdown)."""
        if self._start is None:
            return []
        for zone in self._zones:
            for crossing in self._inside[zone].values():
                self._speed(zone, crossing)
            self._inside[zone].clear()
        out = self._close()
        self._start, self._last = None, None
        return out
