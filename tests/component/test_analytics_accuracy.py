"""Stream analytics with the shipped detector against the synthetic scene's ground truth.

Counts per class, direction and lane must match the scene within the
counting test's tolerance (10 %, at least 2); trap speeds within ±15 % of
the objects' true speed (``SceneObject.velocity`` at the synthetic scale of
``SYNTHETIC_ROAD_WIDTH_M``); normal traffic raises no event. The scene never
drives the wrong way, stops in the road or jaywalks, so those cases paste a
sprite cut from another frame of the scene into the images.
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt
import pytest

from roadside.edge.analytics.aggregate import SpeedMeasurement
from roadside.edge.analytics.config import EventRules
from roadside.edge.analytics.lines import CountingLine
from roadside.edge.analytics.stream import AnalyticsEvent, StreamAnalytics
from roadside.edge.analytics.tracker import Track, iou_matrix
from roadside.edge.inference.engine import OnnxDetector
from roadside.sim.camera import SYNTHETIC_ROAD_WIDTH_M, synthetic_scene_analytics
from roadside.sim.synthetic import CAR, PEDESTRIAN, RoadScene, SceneConfig, SceneObject

pytestmark = pytest.mark.timeout(120)

T0 = 1_790_000_000.0  # an epoch second on a minute boundary
Key = tuple[str, str, int | None]  # class, direction, lane


@pytest.fixture(scope="module")
def detector() -> OnnxDetector:
    return OnnxDetector(None, ["CPUExecutionProvider"], 0.4, 0.5)


@dataclass
class SceneRun:
    truth: Counter[Key] = field(default_factory=Counter)
    counted: Counter[Key] = field(default_factory=Counter)
    speed_errors: list[float] = field(default_factory=list)  # (measured - true) / true, trap speeds
    crossing_speed_errors: list[float] = field(default_factory=list)  # the zone estimate on line_crossing
    events: list[AnalyticsEvent] = field(default_factory=list)


def centre(box: tuple[float, float, float, float]) -> tuple[float, float]:
    return ((box[0] + box[2]) / 2, (box[1] + box[3]) / 2)


def run_scene(detector: OnnxDetector, seed: int, light: float, frames: int = 400) -> SceneRun:
    scene = RoadScene(SceneConfig(seed=seed, light=light))
    config = synthetic_scene_analytics(scene)
    analytics = StreamAnalytics(config, "cam0", detector.info.labels, "test", interval_s=60)
    labels = detector.info.labels
    line = CountingLine("truth", *scene.count_line())
    kmh_per_px_s = 3.6 * SYNTHETIC_ROAD_WIDTH_M / scene.config.width
    trap = config.speed_traps[0]
    trap_x = sorted((trap.line_a.start[0], trap.line_b.start[0]))
    run = SceneRun()
    last: dict[int, tuple[float, float]] = {}
    in_trap: defaultdict[int, list[float]] = defaultdict(list)  # true km/h while between the trap's lines
    speed_now: dict[int, float] = {}
    to_truth: dict[int, int] = {}  # track id -> scene object id
    measured: list[SpeedMeasurement] = []
    for _ in range(frames):
        frame = scene.step()
        for obj in frame.objects:
            c = centre(obj.box)
            hit = (
                line.check(obj.track_id, obj.cls, 1.0, last[obj.track_id], c)
                if obj.track_id in last
                else None
            )
            if hit is not None:
                run.truth[(labels[obj.cls], hit.direction, obj.lane if obj.lane < 6 else None)] += 1
            last[obj.track_id] = c
            speed_now[obj.track_id] = math.hypot(*obj.velocity) * kmh_per_px_s
            if trap_x[0] <= c[0] <= trap_x[1]:
                in_trap[obj.track_id].append(speed_now[obj.track_id])
        out = analytics.update(T0 + frame.t, detector.detect([frame.image])[0])
        to_truth.update(match(out.tracks, frame.objects))
        for r in out.closed_counts:
            run.counted[(r.cls, r.direction, r.lane)] += r.count
        measured += out.speeds
        for event in out.events:
            run.events.append(event)
            if event.type == "line_crossing" and event.speed_kmh is not None and event.track_id in to_truth:
                true = speed_now[to_truth[event.track_id]]
                run.crossing_speed_errors.append((event.speed_kmh - true) / true)
    for r in analytics.flush():
        run.counted[(r.cls, r.direction, r.lane)] += r.count
    for m in measured:
        true_speeds = in_trap[to_truth[m.track_id]]
        true = sum(true_speeds) / len(true_speeds)
        run.speed_errors.append((m.speed_kmh - true) / true)
    return run


def match(tracks: list[Track], objects: tuple[SceneObject, ...]) -> dict[int, int]:
    """Track id -> scene object id, by best overlap (at least half)."""
    boxes = np.array([t.box for t in tracks], dtype=np.float32).reshape(-1, 4)
    iou = iou_matrix(boxes, np.array([o.box for o in objects], dtype=np.float32).reshape(-1, 4))
    pairs = {}
    for i, track in enumerate(tracks):
        if iou.shape[1] and iou[i].max() >= 0.5:
            pairs[track.track_id] = objects[int(iou[i].argmax())].track_id
    return pairs


@pytest.fixture(scope="module", params=[(3, 1.0), (11, 0.3)], ids=["day", "night"])
def scene_run(request: pytest.FixtureRequest, detector: OnnxDetector) -> SceneRun:
    seed, light = request.param
    return run_scene(detector, seed, light)


def test_counts_per_class_direction_and_lane_match_ground_truth(scene_run: SceneRun) -> None:
    truth, counted = scene_run.truth, scene_run.counted
    total = sum(truth.values())
    assert total >= 15
    assert len({lane for _, _, lane in truth}) >= 4, "the scene should use most lanes"
    error = sum(abs(counted[k] - truth[k]) for k in truth | counted)
    assert error <= max(2, 0.1 * total), (sorted(truth.items(), key=str), sorted(counted.items(), key=str))


def test_trap_speeds_are_within_15_percent(scene_run: SceneRun) -> None:
    errors = scene_run.speed_errors
    assert len(errors) >= 15
    assert max(abs(e) for e in errors) <= 0.15, errors


def test_line_crossings_carry_a_speed_estimate_mostly_within_15_percent(scene_run: SceneRun) -> None:
    errors = scene_run.crossing_speed_errors
    assert len(errors) >= 15
    assert sum(abs(e) <= 0.15 for e in errors) >= 0.9 * len(errors), errors


def test_normal_traffic_raises_no_event(scene_run: SceneRun) -> None:
    assert [e for e in scene_run.events if e.type != "line_crossing"] == []


# Injected misbehaviour -----------------------------------------------------------

ImageU8 = npt.NDArray[np.uint8]


def sprite(cls: int, lanes: tuple[int, ...], seed: int = 1) -> tuple[ImageU8, SceneObject]:
    """The pixels of an object of ``cls`` in ``lanes``, whole in frame and overlapping nothing."""
    scene = RoadScene(SceneConfig(seed=seed))
    width = scene.config.width
    for _ in range(300):
        frame = scene.step()
        for obj in frame.objects:
            x1, y1, x2, y2 = obj.box
            if obj.cls != cls or obj.lane not in lanes or x1 < 5 or x2 > width - 5:
                continue
            others = np.array([o.box for o in frame.objects if o is not obj], dtype=np.float32).reshape(-1, 4)
            if iou_matrix(np.array([obj.box], dtype=np.float32), others).max(initial=0.0) > 0.02:
                continue
            return frame.image[int(y1) : math.ceil(y2), int(x1) : math.ceil(x2)].copy(), obj
    raise AssertionError(f"no clear view of a class {cls} object in 300 frames")


def paste(image: ImageU8, patch: ImageU8, x: int, bottom: int) -> ImageU8:
    out = image.copy()
    h, w = patch.shape[:2]
    out[bottom - h : bottom, x : x + w] = patch
    return out


def test_a_car_driving_against_its_lane_raises_wrong_way(detector: OnnxDetector) -> None:
    car, source = sprite(CAR, (2, 3))  # an eastbound car...
    mirrored = car[:, ::-1]  # ...turned round, and driven west down its own lane
    scene = RoadScene(SceneConfig(seed=4))
    analytics = StreamAnalytics(synthetic_scene_analytics(scene), "cam0", detector.info.labels, "test")
    found: list[AnalyticsEvent] = []
    for k in range(25):
        frame = scene.step()
        image = paste(frame.image, mirrored, 560 - 15 * k, int(source.box[3]))  # 150 px/s = 34 km/h
        found += [
            e
            for e in analytics.update(T0 + frame.t, detector.detect([image])[0]).events
            if e.type != "line_crossing"
        ]
    assert [(e.type, e.cls, e.lane) for e in found] == [("wrong_way", "car", source.lane)]
    assert found[0].ts - T0 <= 1.5  # confirmed after 2 frames, then 5 against the lane
    assert found[0].speed_kmh == pytest.approx(34.0, rel=0.15)


def test_a_stopped_car_and_a_jaywalker_raise_their_events(detector: OnnxDetector) -> None:
    car, car_source = sprite(CAR, (2, 3))
    walker, _ = sprite(PEDESTRIAN, (7, 8))
    scene = RoadScene(SceneConfig(seed=4))
    rules = EventRules(stopped_s=3.0, pedestrian_s=2.0)
    config = synthetic_scene_analytics(scene).model_copy(update={"events": rules})
    analytics = StreamAnalytics(config, "cam0", detector.info.labels, "test")
    found: list[AnalyticsEvent] = []
    for k in range(45):
        frame = scene.step()
        image = paste(frame.image, car, 250, int(car_source.box[3]))  # stopped in its lane
        image = paste(image, walker, 420, 200 + 2 * k)  # strolling down the road, far from the zebra
        found += [
            e
            for e in analytics.update(T0 + frame.t, detector.detect([image])[0]).events
            if e.type != "line_crossing"
        ]
    kinds = sorted((e.type, e.cls, e.zone) for e in found)
    assert kinds == [
        ("pedestrian_in_roadway", "pedestrian", "roadway"),
        ("stopped_vehicle", "car", "roadway"),
    ]
