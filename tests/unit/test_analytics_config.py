"""Analytics configuration: validation, resolution per stream, and the synthetic scene's geometry (sim.camera)."""

from __future__ import annotations

from collections import Counter

import pytest
from pydantic import ValidationError

from roadside.edge.analytics.bytetrack import ByteTracker
from roadside.edge.analytics.config import (
    AnalyticsConfig,
    LaneConfig,
    LineConfig,
    TrackerConfig,
    ZoneConfig,
    resolve_stream_config,
)
from roadside.edge.analytics.geometry import anchor_point, point_in_polygon
from roadside.edge.settings import load_agent_settings
from roadside.sim.camera import SYNTHETIC_ROAD_WIDTH_M, CameraScene, synthetic_scene_analytics
from roadside.sim.synthetic import LANE_NAMES, PEDESTRIAN, RoadScene, SceneConfig

SQUARE = [(0.0, 0.0), (10.0, 0.0), (10.0, 10.0), (0.0, 10.0)]


def test_unknown_keys_and_repeated_names_are_refused() -> None:
    with pytest.raises(ValidationError, match="extra"):
        AnalyticsConfig.model_validate({"lines": [], "zone": []})
    with pytest.raises(ValidationError, match="repeated: a"):
        AnalyticsConfig(zones=[ZoneConfig(name="a", polygon=SQUARE), ZoneConfig(name="a", polygon=SQUARE)])
    with pytest.raises(ValidationError, match="lane id"):
        AnalyticsConfig(lanes=[LaneConfig(id=1, polygon=SQUARE), LaneConfig(id=1, polygon=SQUARE)])


@pytest.mark.parametrize(
    "bad",
    [
        {"lines": [{"start": [0, 0], "end": [0, 0]}]},  # no length
        {"lines": [{"name": "has space", "start": [0, 0], "end": [1, 1]}]},  # not a wire name
        {"lanes": [{"id": 0, "polygon": [[0, 0], [1, 1]]}]},  # two points are not a polygon
        {"lanes": [{"id": 0, "polygon": SQUARE, "direction": [0, 0]}]},
        {"zones": [{"name": "z", "kind": "parking", "polygon": SQUARE}]},
        {
            "speed_traps": [
                {
                    "line_a": {"start": [0, 0], "end": [0, 9]},
                    "line_b": {"start": [9, 0], "end": [9, 9]},
                    "distance_m": 0,
                }
            ]
        },
        {"tracker": {"high_score": 0.2, "low_score": 0.3}},
        {"events": {"wrong_way_angle_deg": 45}},
    ],
)
def test_bad_settings_are_refused(bad: dict[str, object]) -> None:
    with pytest.raises(ValidationError):
        AnalyticsConfig.model_validate(bad)


def test_agent_settings_carry_analytics_and_the_lines_shorthand() -> None:
    settings = load_agent_settings(
        None,
        lines=[{"name": "east", "start": [1, 2], "end": [3, 4]}],
        analytics={"zones": [{"name": "bus_stop", "polygon": SQUARE}]},
    )
    assert settings.analytics.zones[0].name == "bus_stop"
    assert settings.lines[0].name == "east"


def test_tracker_config_builds_the_tracker() -> None:
    tracker = TrackerConfig(max_lost_s=3.0).build()
    assert isinstance(tracker, ByteTracker)
    assert tracker.max_lost_s == 3.0


def test_resolution_for_a_camera() -> None:
    shorthand = [LineConfig(name="kerb", start=(0, 0), end=(0, 9))]
    assert resolve_stream_config(AnalyticsConfig(), shorthand).lines == shorthand
    own = AnalyticsConfig(lines=[LineConfig(name="mine", start=(1, 1), end=(2, 2))])
    assert resolve_stream_config(own, shorthand).lines == own.lines
    default = resolve_stream_config(AnalyticsConfig(), (), None, (640, 480))
    assert [(ln.name, ln.start, ln.end) for ln in default.lines] == [("line0", (320.0, 0.0), (320.0, 480.0))]
    assert (default.lanes, default.zones, default.speed_traps) == ([], [], [])


def test_resolution_for_a_synthetic_scene_fills_only_what_is_empty() -> None:
    scene = CameraScene(SceneConfig(seed=1))
    zones = [ZoneConfig(name="bus_stop", polygon=SQUARE)]
    resolved = resolve_stream_config(AnalyticsConfig(zones=zones), (), scene, (640, 480))
    assert resolved.zones == zones
    assert [ln.name for ln in resolved.lines] == ["line0"]
    assert len(resolved.lanes) == 6
    assert [t.name for t in resolved.speed_traps] == ["speed0"]


def test_synthetic_geometry_matches_the_scene() -> None:
    scene = RoadScene(SceneConfig(seed=2))
    config = synthetic_scene_analytics(scene)
    start, end = scene.count_line()
    assert (config.lines[0].start, config.lines[0].end) == (start, end)
    (trap,) = config.speed_traps
    ppm = scene.config.width / SYNTHETIC_ROAD_WIDTH_M
    assert trap.line_b.start[0] - trap.line_a.start[0] == pytest.approx(trap.distance_m * ppm)
    lanes = {ln.id: ln for ln in config.lanes}
    roadway = next(z for z in config.zones if z.kind == "roadway")
    crosswalk = next(z for z in config.zones if z.kind == "crosswalk")
    placed: Counter[str] = Counter()
    for _ in range(150):
        for obj in scene.step().objects:
            ground = anchor_point(obj.box, config.anchor)
            if obj.lane in lanes:  # vehicles and cyclists: in their own lane, going its way
                assert point_in_polygon(ground, lanes[obj.lane].polygon), (LANE_NAMES[obj.lane], obj.box)
                direction = lanes[obj.lane].direction
                assert direction is not None
                assert obj.velocity[0] * direction[0] >= 0
                placed["lane"] += 1
            elif obj.cls == PEDESTRIAN and LANE_NAMES[obj.lane].startswith("sidewalk"):
                assert not point_in_polygon(ground, roadway.polygon), obj.box
                placed["sidewalk"] += 1
            elif obj.lane == LANE_NAMES.index("crosswalk"):  # from the kerb, across, to the other kerb
                on_road = point_in_polygon(ground, roadway.polygon)
                assert point_in_polygon(ground, crosswalk.polygon) or not on_road, obj.box
                placed["crossing"] += on_road
    assert placed["lane"] > 100
    assert placed["sidewalk"] > 10
    assert placed["crossing"] > 5
