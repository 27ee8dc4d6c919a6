"""StreamAnalytics on hand-built track sequences: counts by lane, speeds, zones, events, intervals."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

import pytest

from roadside.edge.analytics.config import (
    AnalyticsConfig,
    EventRules,
    LaneConfig,
    LineConfig,
    SegmentConfig,
    SpeedTrapConfig,
    ZoneConfig,
)
from roadside.edge.analytics.stream import AnalyticsEvent, AnalyticsOutput, StreamAnalytics
from roadside.edge.analytics.tracker import Track
from roadside.vision.yolo import Detections

LABELS = ["car", "truck", "pedestrian", "cyclist"]
CAR, PEDESTRIAN = 0, 2
T0 = datetime(2026, 11, 23, 10, 0, tzinfo=UTC).timestamp()
Box = tuple[float, float, float, float]


def rect(x1: float, y1: float, x2: float, y2: float) -> list[tuple[float, float]]:
    return [(x1, y1), (x2, y1), (x2, y2), (x1, y2)]


# A 400x200 view: two lanes (0 westbound on top, 1 eastbound below), a crosswalk at x 100-140.
LANES = [
    LaneConfig(id=0, polygon=rect(0, 50, 400, 100), direction=(-1.0, 0.0)),
    LaneConfig(id=1, polygon=rect(0, 100, 400, 150), direction=(1.0, 0.0)),
]
ROADWAY = ZoneConfig(name="road", kind="roadway", polygon=rect(0, 50, 400, 150), pixels_per_metre=10.0)
CROSSWALK = ZoneConfig(name="zebra", kind="crosswalk", polygon=rect(100, 50, 140, 150))
LINE = LineConfig(name="mid", start=(200.0, 0.0), end=(200.0, 200.0))
TRAP = SpeedTrapConfig(
    name="trap",
    line_a=SegmentConfig(start=(150.0, 50.0), end=(150.0, 150.0)),
    line_b=SegmentConfig(start=(350.0, 50.0), end=(350.0, 150.0)),
    distance_m=20.0,
)
CONFIG = AnalyticsConfig(lines=[LINE], lanes=LANES, zones=[ROADWAY, CROSSWALK], speed_traps=[TRAP])


class ScriptedTracker:
    """Reports whatever tracks the test sets in ``next``, keeping their histories like a tracker."""

    def __init__(self) -> None:
        self.next: list[tuple[int, int, Box]] = []
        self._tracks: dict[int, Track] = {}

    def update(self, detections: Detections, ts: float | None = None) -> list[Track]:
        out = []
        for track_id, cls, box in self.next:
            track = self._tracks.setdefault(track_id, Track(track_id, cls, box, 0.9))
            track.box = box
            track.history.append(track.centroid)
            out.append(track)
        return out


def car_box(x: float, lane: int) -> Box:
    """A 40x20 car whose ground point (bottom centre) is at x, in the middle of ``lane``."""
    y = 85.0 if lane == 0 else 135.0
    return (x - 20.0, y - 20.0, x + 20.0, y)


def walker_box(x: float, y: float) -> Box:
    return (x - 4.0, y - 20.0, x + 4.0, y)


def make(config: AnalyticsConfig = CONFIG, interval_s: int = 60) -> tuple[StreamAnalytics, ScriptedTracker]:
    tracker = ScriptedTracker()
    return StreamAnalytics(config, "cam0", LABELS, "v1", interval_s, tracker), tracker


def play(
    analytics: StreamAnalytics,
    tracker: ScriptedTracker,
    frames: list[list[tuple[int, int, Box]]],
    dt: float = 0.1,
    t0: float = T0,
) -> list[AnalyticsOutput]:
    outputs = []
    for k, objects in enumerate(frames):
        tracker.next = objects
        outputs.append(analytics.update(t0 + k * dt, Detections.empty()))
    return outputs


def events(outputs: list[AnalyticsOutput], kind: str | None = None) -> list[AnalyticsEvent]:
    return [e for o in outputs for e in o.events if kind is None or e.type == kind]


def drive(
    track_id: int, lane: int, x0: float, vx: float, frames: int, dt: float = 0.1
) -> list[tuple[int, int, Box]]:
    return [(track_id, CAR, car_box(x0 + vx * dt * k, lane)) for k in range(frames)]


def test_crossings_are_counted_by_class_direction_and_lane() -> None:
    analytics, tracker = make()
    east = drive(1, 1, 100, 150, 20)
    west = drive(2, 0, 300, -150, 20)
    outputs = play(analytics, tracker, [[a, b] for a, b in zip(east, west, strict=True)])
    crossings = events(outputs, "line_crossing")
    # The line runs top to bottom, so its left side is x < 200: eastbound is "in".
    assert sorted((e.line, e.cls, e.direction, e.lane) for e in crossings) == [
        ("cam0-mid", "car", "in", 1),
        ("cam0-mid", "car", "out", 0),
    ]
    records = analytics.flush()
    assert sorted((r.line, r.cls, r.direction, r.lane, r.count) for r in records) == [
        ("cam0-mid", "car", "in", 1, 1),
        ("cam0-mid", "car", "out", 0, 1),
    ]


def test_a_line_pinned_to_a_lane_overrides_the_polygons_and_no_lanes_means_none() -> None:
    pinned = CONFIG.model_copy(update={"lines": [LINE.model_copy(update={"lane": 7})]})
    analytics, tracker = make(pinned)
    play(analytics, tracker, [[f] for f in drive(1, 1, 150, 150, 10)])
    assert [r.lane for r in analytics.flush()] == [7]
    bare, tracker = make(AnalyticsConfig(lines=[LINE]))
    play(bare, tracker, [[f] for f in drive(1, 1, 150, 150, 10)])
    assert [r.lane for r in bare.flush()] == [None]


def test_the_speed_trap_times_a_car_between_frames() -> None:
    analytics, tracker = make()
    # 13.3 m/s (133 px/s at 10 px/m) = 48 km/h; lines 200 px apart, crossed mid-step.
    outputs = play(analytics, tracker, [[f] for f in drive(1, 1, 100, 133.3, 40)])
    (measured,) = [m for o in outputs for m in o.speeds]
    assert measured.speed_kmh == pytest.approx(20.0 / (200 / 133.3) * 3.6, rel=1e-3)
    assert (measured.trap, measured.lane, measured.direction) == ("trap", 1, "a_to_b")
    (summary,) = analytics.flush_all().closed_speeds
    assert (summary.count, summary.cls) == (1, "car")
    assert summary.mean_kmh == summary.p85_kmh == pytest.approx(measured.speed_kmh)


def test_line_crossings_carry_the_zone_speed_until_the_trap_has_timed_the_car() -> None:
    analytics, tracker = make()
    outputs = play(analytics, tracker, [[f] for f in drive(1, 1, 100, 100.0, 30)])
    (crossing,) = events(outputs, "line_crossing")
    assert crossing.speed_kmh == pytest.approx(36.0, rel=1e-6)  # 100 px/s / 10 px/m = 10 m/s
    later = LINE.model_copy(update={"name": "exit", "start": (380.0, 0.0), "end": (380.0, 200.0)})
    analytics, tracker = make(CONFIG.model_copy(update={"lines": [later]}))
    outputs = play(analytics, tracker, [[f] for f in drive(1, 1, 100, 100.0, 32)])
    (crossing,) = events(outputs, "line_crossing")
    (measured,) = [m for o in outputs for m in o.speeds]
    assert crossing.speed_kmh == measured.speed_kmh


def test_a_trap_result_above_max_kmh_is_an_id_switch_and_dropped() -> None:
    analytics, tracker = make()
    jump = [
        [(1, CAR, car_box(140, 1))],
        [(1, CAR, car_box(160, 1))],
        [(1, CAR, car_box(340, 1))],
        [(1, CAR, car_box(360, 1))],
    ]
    outputs = play(analytics, tracker, jump, dt=0.01)  # 200 px in 10 ms: 7200 km/h
    assert [m for o in outputs for m in o.speeds] == []


def test_zone_occupancy_dwell_and_visits() -> None:
    analytics, tracker = make(interval_s=60)
    still = [(1, CAR, car_box(300, 0))] * 30  # parked in the road for 3 s
    walk = [(2, PEDESTRIAN, walker_box(120, 60 + 2 * k)) for k in range(30)]  # down the crosswalk
    outputs = play(analytics, tracker, [[a, b] for a, b in zip(still, walk, strict=True)])
    assert analytics.occupancy() == {"road": 2, "zebra": 1}
    assert analytics.dwell("road", T0 + 2.9) == {1: pytest.approx(2.9), 2: pytest.approx(2.9)}
    tracker.next = [(1, CAR, car_box(300, 0))]
    # The walker is gone; once the tracker would have given it up, its visits close.
    outputs += play(analytics, tracker, [[(1, CAR, car_box(300, 0))]] * 25, t0=T0 + 3.0)
    visits = sorted((v.zone, v.track_id, round(v.dwell_s, 1)) for o in outputs for v in o.visits)
    assert visits == [("road", 2, 2.9), ("zebra", 2, 2.9)]
    summaries = {(r.zone, r.cls): r for r in analytics.flush_all().closed_zones}
    assert summaries[("road", "car")].entries == 1
    assert summaries[("road", "car")].exits == 0
    assert summaries[("road", "pedestrian")].peak_occupancy == 1
    assert summaries[("road", "pedestrian")].mean_dwell_s == pytest.approx(2.9)


def test_wrong_way_event_names_its_lane_and_fires_once() -> None:
    analytics, tracker = make()
    outputs = play(
        analytics, tracker, [[f] for f in drive(5, 1, 380, -150, 25)]
    )  # west in the eastbound lane
    (event,) = events(outputs, "wrong_way")
    assert (event.track_id, event.lane, event.cls) == (5, 1, "car")
    assert event.speed_kmh == pytest.approx(54.0, rel=0.01)


def test_stopped_vehicle_and_pedestrian_in_roadway() -> None:
    rules = EventRules(stopped_s=2.0, pedestrian_s=1.0)
    analytics, tracker = make(CONFIG.model_copy(update={"events": rules}))
    stopped = [(1, CAR, car_box(300, 1))] * 40
    jaywalker = [(2, PEDESTRIAN, walker_box(250, 60 + 2 * k)) for k in range(40)]
    crossing = [(3, PEDESTRIAN, walker_box(120, 60 + 2 * k)) for k in range(40)]
    outputs = play(analytics, tracker, [list(f) for f in zip(stopped, jaywalker, crossing, strict=True)])
    found = sorted(
        (e.type, e.track_id, e.zone, round(e.ts - T0, 1))
        for e in events(outputs)
        if e.type != "line_crossing"
    )
    assert found == [("pedestrian_in_roadway", 2, "road", 1.0), ("stopped_vehicle", 1, "road", 2.0)]


def test_intervals_close_on_wall_clock_boundaries() -> None:
    analytics, tracker = make(interval_s=60)
    first = play(analytics, tracker, [[f] for f in drive(1, 1, 150, 150, 10)], t0=T0 + 50)
    assert all(not o.closed_counts for o in first)
    tracker.next = []
    closing = analytics.update(T0 + 61, Detections.empty())
    (record,) = closing.closed_counts
    assert record.interval_start == datetime.fromtimestamp(T0, UTC)
    assert record.interval_s == 60
    assert analytics.flush() == []


def test_events_become_wire_events() -> None:
    event = AnalyticsEvent(
        ts=T0, type="wrong_way", track_id=3, cls="car", confidence=1.2, lane=1, speed_kmh=512.0
    )
    wire = event.to_detection_event("cam0", "v1", uuid.UUID(int=1))
    assert (wire.type, wire.stream, wire.track_id, wire.confidence, wire.speed_kmh) == (
        "wrong_way",
        "cam0",
        3,
        1.0,
        None,
    )
    assert wire.ts == datetime.fromtimestamp(T0, UTC)
