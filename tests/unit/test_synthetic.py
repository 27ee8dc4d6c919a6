"""The synthetic road scene (sim.synthetic)."""

from __future__ import annotations

import itertools
import subprocess
import sys
import time
from collections import defaultdict

import numpy as np
import pytest

from roadside.sim.synthetic import (
    CLASSES,
    LANE_NAMES,
    RoadScene,
    SceneConfig,
    SceneFrame,
    render_dataset,
)


def _frames(config: SceneConfig, n: int) -> list[SceneFrame]:
    scene = RoadScene(config)
    return [scene.step() for _ in range(n)]


def test_same_seed_gives_identical_frames() -> None:
    config = SceneConfig(seed=11, spawn_rate=1.5, rain=0.4, light=0.5)
    a, b = _frames(config, 6), _frames(config, 6)
    for fa, fb in zip(a, b, strict=True):
        assert np.array_equal(fa.image, fb.image)
        assert fa.objects == fb.objects


def test_other_seed_gives_another_scene() -> None:
    a = _frames(SceneConfig(seed=1), 3)[-1]
    b = _frames(SceneConfig(seed=2), 3)[-1]
    assert not np.array_equal(a.image, b.image)


def test_advance_skips_rendering_but_not_time() -> None:
    config = SceneConfig(seed=3, spawn_rate=1.5)
    stepped = _frames(config, 5)[-1]
    scene = RoadScene(config)
    scene.advance(4)
    skipped = scene.step()
    assert skipped.index == stepped.index == 4
    assert skipped.t == pytest.approx(0.4)
    assert np.array_equal(skipped.image, stepped.image)
    assert skipped.objects == stepped.objects


def test_frames_have_the_configured_shape_and_clock() -> None:
    frames = _frames(SceneConfig(width=320, height=240, fps=25.0), 3)
    assert [f.index for f in frames] == [0, 1, 2]
    assert [f.t for f in frames] == pytest.approx([0.0, 0.04, 0.08])
    assert all(f.image.shape == (240, 320, 3) and f.image.dtype == np.uint8 for f in frames)


def test_boxes_are_valid_and_inside_the_frame() -> None:
    config = SceneConfig(seed=4, spawn_rate=2.0)
    seen_classes = set()
    for frame in _frames(config, 150):
        ids = [o.track_id for o in frame.objects]
        assert len(ids) == len(set(ids))
        for o in frame.objects:
            x1, y1, x2, y2 = o.box
            assert 0 <= x1 < x2 <= config.width
            assert 0 <= y1 < y2 <= config.height
            assert 0 <= o.cls < len(CLASSES)
            assert 0 <= o.lane < len(LANE_NAMES)
            seen_classes.add(o.cls)
    assert seen_classes == set(range(len(CLASSES)))


def test_objects_enter_cross_and_leave() -> None:
    config = SceneConfig(seed=5, spawn_rate=1.0)
    scene = RoadScene(config)
    tracks: dict[int, list[tuple[int, float, int]]] = defaultdict(list)
    n = 400
    for frame in (scene.step() for _ in range(n)):
        for o in frame.objects:
            tracks[o.track_id].append((frame.index, (o.box[0] + o.box[2]) / 2, o.cls))
    (line_x, _), (line_x2, _) = scene.count_line()
    assert line_x == line_x2 == config.width / 2
    finished = {k: v for k, v in tracks.items() if v[0][0] > 0 and v[-1][0] < n - 1}
    vehicles = {k: v for k, v in finished.items() if v[0][2] in (0, 1)}
    assert len(vehicles) >= 5
    for history in vehicles.values():
        xs = [x for _, x, _ in history]
        assert min(xs) < line_x < max(xs), "every vehicle crosses the counting line"
        frames = [i for i, _, _ in history]
        assert frames == list(range(frames[0], frames[-1] + 1)), "no gaps while in view"


def test_vehicle_directions_follow_the_lanes() -> None:
    for frame in _frames(SceneConfig(seed=6, spawn_rate=2.0), 80):
        for o in frame.objects:
            if o.cls in (0, 1):
                assert o.lane in (0, 1, 2, 3)
                assert (o.velocity[0] < 0) == (o.lane < 2)
                assert o.velocity[1] == 0


def test_night_is_darker_than_day() -> None:
    day = _frames(SceneConfig(seed=7, light=1.0), 1)[0].image
    night = _frames(SceneConfig(seed=7, light=0.25), 1)[0].image
    assert night.mean() < 0.5 * day.mean()


def test_count_line_spans_the_road() -> None:
    (x1, y1), (x2, y2) = RoadScene(SceneConfig()).count_line()
    assert x1 == x2 == 320
    assert 0 < y1 < y2 < 480


@pytest.mark.parametrize(
    "bad",
    [{"width": 10}, {"fps": 0}, {"light": 0.0}, {"rain": 2.0}, {"spawn_rate": -1}, {"seed": -1}],
)
def test_config_validation(bad: dict[str, float]) -> None:
    with pytest.raises(ValueError, match="must"):
        SceneConfig(**bad)  # type: ignore[arg-type]


def test_render_dataset_varies_scenes_and_light() -> None:
    frames = render_dataset(10, SceneConfig(seed=1), stride=2, scenes=4, lights=(1.0, 0.25))
    assert len(frames) == 10
    means = [f.image.mean() for f in frames]
    assert max(means) > 1.6 * min(means)  # both day and night cameras
    assert [f.index for f in frames[:3]] == [0, 2, 4]


def test_render_is_fast() -> None:
    scene = RoadScene(SceneConfig(seed=8, spawn_rate=1.5, rain=0.3, light=0.3))
    times = []
    for _ in range(30):
        start = time.perf_counter()
        scene.step()
        times.append(time.perf_counter() - start)
    # ~1 ms on a laptop core; the bound leaves room for a busy CI machine.
    assert float(np.median(times)) < 0.010


def test_module_does_not_import_torch() -> None:
    code = "import sys, roadside.sim.synthetic; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_the_synthetic_camera_drifts_to_other_weather_part_way() -> None:
    from roadside.edge.settings import SceneDrift, SyntheticSource
    from roadside.sim.camera import SyntheticFrameSource

    config = SyntheticSource(
        seed=4, realtime=False, max_frames=12, drift=SceneDrift(after_frames=6, light=0.25, rain=0.9)
    )
    frames = list(SyntheticFrameSource(config).frames())
    assert [f.index for f in frames] == list(range(12))
    assert all(b.ts > a.ts for a, b in itertools.pairwise(frames))
    before = np.mean([f.image.mean() for f in frames[:6]])
    after = np.mean([f.image.mean() for f in frames[6:]])
    assert after < 0.75 * before  # night: darker, whatever the rain adds
