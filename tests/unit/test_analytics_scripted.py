"""The real tracker and line crossing together, on scripted detections.

``ByteTracker`` feeds ``StreamAnalytics`` as in the agent; the detections are
scripted so the expected counts are exact: direction, an occlusion in the
middle of a crossing (same id, counted once), and a car that crosses, turns
round and crosses back (one ``in``, one ``out``).
"""

from __future__ import annotations

from datetime import UTC, datetime

import numpy as np

from roadside.edge.analytics.bytetrack import ByteTracker
from roadside.edge.analytics.config import AnalyticsConfig, LineConfig
from roadside.edge.analytics.stream import AnalyticsEvent, StreamAnalytics
from roadside.vision.yolo import Detections

LABELS = ["car", "truck", "pedestrian", "cyclist"]
CAR, PEDESTRIAN = 0, 2
T0 = datetime(2026, 11, 23, 10, 0, tzinfo=UTC).timestamp()
DT = 0.1
# A vertical line at x = 200, drawn top to bottom: its left side (x < 200) is "in"'s start.
CONFIG = AnalyticsConfig(lines=[LineConfig(name="mid", start=(200.0, 0.0), end=(200.0, 400.0))])


def box_at(x: float, y: float = 150.0, cls: int = CAR) -> tuple[float, float, float, float, float, int]:
    """A 40x20 box whose centre is at (x, y)."""
    return (x - 20.0, y - 10.0, x + 20.0, y + 10.0, 0.9, cls)


def detections(*objects: tuple[float, float, float, float, float, int]) -> Detections:
    if not objects:
        return Detections.empty()
    arr = np.array(objects, dtype=np.float64)
    return Detections(
        boxes=arr[:, :4].astype(np.float32),
        scores=arr[:, 4].astype(np.float32),
        class_ids=arr[:, 5].astype(np.int64),
    )


def run(frames: list[Detections]) -> tuple[list[AnalyticsEvent], dict[tuple[str, str], int], set[int]]:
    """Crossing events, closed counts by (class, direction) and every track id reported."""
    analytics = StreamAnalytics(CONFIG, "cam0", LABELS, "v1", 60, ByteTracker())
    crossings: list[AnalyticsEvent] = []
    track_ids: set[int] = set()
    for k, found in enumerate(frames):
        out = analytics.update(T0 + k * DT, found)
        crossings += [e for e in out.events if e.type == "line_crossing"]
        track_ids.update(t.track_id for t in out.tracks)
    counts: dict[tuple[str, str], int] = {}
    for record in analytics.flush():
        counts[(record.cls, record.direction)] = counts.get((record.cls, record.direction), 0) + record.count
    return crossings, counts, track_ids


def test_direction_follows_the_side_the_object_came_from() -> None:
    east = [detections(box_at(100.0 + 15 * k)) for k in range(15)]  # 100 → 310
    west = [detections(box_at(320.0 - 15 * k, y=300.0, cls=PEDESTRIAN)) for k in range(15)]
    _, counts_east, _ = run(east)
    _, counts_west, _ = run(west)
    assert counts_east == {("car", "in"): 1}
    assert counts_west == {("pedestrian", "out"): 1}


def test_an_object_hidden_mid_crossing_keeps_its_id_and_is_counted_once() -> None:
    xs = [100.0 + 15 * k for k in range(16)]  # 100 → 325, the line at 200
    hidden = {6, 7, 8}  # x 190, 205, 220: gone just as it crosses, behind a bus
    frames = [detections() if k in hidden else detections(box_at(x)) for k, x in enumerate(xs)]
    crossings, counts, track_ids = run(frames)
    assert len(track_ids) == 1
    assert [(e.cls, e.direction, e.track_id) for e in crossings] == [("car", "in", next(iter(track_ids)))]
    assert counts == {("car", "in"): 1}


def test_an_object_crossing_twice_counts_one_in_and_one_out() -> None:
    # Over the line at walking pace, slows down, stops, turns round and walks back over it.
    steps = [10.0] * 10 + [6.0, 3.0, 0.0, -3.0, -6.0] + [-10.0] * 12
    xs = [150.0]
    for step in steps:
        xs.append(xs[-1] + step)  # 150 → 250 → 130
    crossings, counts, track_ids = run([detections(box_at(x, cls=PEDESTRIAN)) for x in xs])
    assert len(track_ids) == 1
    assert [e.direction for e in crossings] == ["in", "out"]
    assert counts == {("pedestrian", "in"): 1, ("pedestrian", "out"): 1}


def test_jitter_on_the_line_does_not_count() -> None:
    xs = [150.0, 170.0, 190.0, 198.0, 199.0, 198.0, 199.0, 190.0, 170.0, 150.0]  # up to it, never over
    crossings, counts, _ = run([detections(box_at(x)) for x in xs])
    assert crossings == []
    assert counts == {}
