"""Camera calibration (roadside.vision.calibration): road ↔ image round trips, boxes, speeds, bad input."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from pydantic import TypeAdapter, ValidationError

from roadside.shared.errors import ConfigError
from roadside.vision.calibration import (
    Camera,
    CameraCalibration,
    PointPairCalibration,
    PoseCalibration,
    homography_from_points,
)

poses = st.builds(
    PoseCalibration,
    x=st.floats(-500, 500),
    y=st.floats(-500, 500),
    height=st.floats(3.0, 30.0),
    heading=st.floats(0.0, 360.0),
    tilt=st.floats(8.0, 80.0),
    hfov=st.floats(30.0, 110.0),
    width=st.sampled_from([320, 640, 1280]),
    height_px=st.sampled_from([240, 480, 720]),
)


def in_view(cam: Camera, n: int, seed: int) -> np.ndarray:
    """Road points seen in the lower part of the image (well below the horizon)."""
    rng = np.random.default_rng(seed)
    top = max(cam.horizon_v() + 20.0, 0.0)
    uv = np.column_stack([rng.uniform(0, cam.width, n), rng.uniform(top, cam.height, n)])
    return cam.image_to_road(uv)


@settings(max_examples=60, deadline=None)
@given(poses, st.integers(0, 2**16))
def test_road_to_image_to_road_round_trips(pose: PoseCalibration, seed: int) -> None:
    cam = Camera.from_calibration(pose)
    assume(cam.horizon_v() + 20.0 < cam.height)
    road = in_view(cam, 20, seed)
    assert np.all(np.isfinite(road))
    back = cam.image_to_road(cam.road_to_image(road))
    np.testing.assert_allclose(back, road, atol=1e-6 * (1.0 + np.abs(road).max()))


@settings(max_examples=60, deadline=None)
@given(poses, st.integers(0, 2**16))
def test_four_point_pairs_recover_the_posed_camera(pose: PoseCalibration, seed: int) -> None:
    cam = Camera.from_calibration(pose)
    assume(cam.horizon_v() + 40.0 < cam.height)
    # Four image corners of a band below the horizon, as an installer would mark lane corners.
    top = max(cam.horizon_v() + 40.0, 0.0)
    w, h = cam.width, cam.height
    pixels = np.array([[0.1 * w, top], [0.9 * w, top], [0.9 * w, 0.95 * h], [0.1 * w, 0.95 * h]])
    road = cam.image_to_road(pixels)
    calibrated = Camera.from_calibration(
        PointPairCalibration(image_points=pixels.tolist(), road_points=road.tolist(), width=w, height_px=h)
    )
    np.testing.assert_allclose(calibrated.centre, cam.centre, atol=1e-4 * (1 + np.abs(cam.centre).max()))
    np.testing.assert_allclose(calibrated.intrinsics, cam.intrinsics, rtol=1e-5, atol=1e-4)
    # The recovered camera projects raised points (a vehicle's roof) as the original does.
    probe = np.column_stack([in_view(cam, 5, seed), np.full(5, 1.5)])
    np.testing.assert_allclose(calibrated.project(probe), cam.project(probe), atol=1e-3)


def test_a_camera_looking_north_sees_the_road_ahead_centred() -> None:
    cam = Camera.from_pose(
        PoseCalibration(x=0, y=0, height=10, heading=0, tilt=45, focal_px=500, width=640, height_px=480)
    )
    # Looking due north and 45° down from 10 m: the optical axis meets the road 10 m north.
    np.testing.assert_allclose(cam.road_to_image([[0.0, 10.0]]), [[320.0, 240.0]], atol=1e-9)
    east = cam.road_to_image([[3.0, 10.0]])[0]
    assert east[0] > 320.0  # east is to the right when looking north
    assert cam.horizon_v() == pytest.approx(240.0 - 500.0)  # 45° above the centre row
    assert np.all(np.isnan(cam.road_to_image([[0.0, -15.0]])))  # behind the camera's image plane


def test_a_vehicle_box_contains_its_footprint_and_roof() -> None:
    cam = Camera.from_pose(
        PoseCalibration(x=0, y=-30, height=8, heading=0, tilt=15, hfov=60, width=640, height_px=480)
    )
    footprint = [(-1.0, 0.0), (1.0, 0.0), (1.0, 4.5), (-1.0, 4.5)]
    box = cam.box_of(footprint, 1.5)
    assert box is not None
    x1, y1, x2, y2 = box
    for u, v in cam.project([(x, y, z) for x, y in footprint for z in (0.0, 1.5)]):
        assert x1 - 1e-9 <= u <= x2 + 1e-9
        assert y1 - 1e-9 <= v <= y2 + 1e-9
    assert cam.box_of([(-1.0, -40.0), (1.0, -40.0), (1.0, -36.0), (-1.0, -36.0)], 1.5) is None  # behind


def test_speed_from_two_image_points() -> None:
    cam = Camera.from_pose(
        PoseCalibration(x=0, y=-30, height=8, heading=0, tilt=15, hfov=60, width=640, height_px=480)
    )
    a, b = cam.road_to_image([[0.0, 0.0], [0.0, 1.4]])
    assert cam.ground_speed(a, b, dt=0.1) == pytest.approx(14.0)
    near, far = cam.road_to_image([[0.0, -20.0], [0.0, 20.0]])
    assert cam.metres_per_pixel(far) > cam.metres_per_pixel(near)


def test_calibration_configs_validate_and_refuse_with_clear_errors() -> None:
    adapter: TypeAdapter[PoseCalibration | PointPairCalibration] = TypeAdapter(CameraCalibration)
    cal = adapter.validate_python(
        {"type": "pose", "x": 1, "y": 2, "height": 6, "heading": 90, "tilt": 20, "hfov": 60}
    )
    assert isinstance(cal, PoseCalibration)
    assert cal.focal() == pytest.approx(320.0 / math.tan(math.radians(30.0)))
    with pytest.raises(ValidationError, match="exactly one of focal_px"):
        PoseCalibration(x=0, y=0, height=5, heading=0, tilt=10)
    with pytest.raises(ValidationError, match="one road point per image point"):
        PointPairCalibration(image_points=[(0, 0)] * 5, road_points=[(0, 0)] * 4)
    with pytest.raises(ValidationError):
        adapter.validate_python(
            {"type": "pose", "x": 0, "y": 0, "height": 5, "heading": 0, "tilt": 95, "hfov": 60}
        )


def test_degenerate_point_pairs_are_refused() -> None:
    with pytest.raises(ConfigError, match="degenerate"):
        homography_from_points([(0, 0), (1, 1), (2, 2), (3, 3)], [(0, 0), (1, 0), (1, 1), (0, 1)])
    with pytest.raises(ConfigError, match="at least four"):
        homography_from_points([(0, 0), (1, 1), (2, 0)], [(0, 0), (1, 0), (1, 1)])
    # An affine map (parallel lines stay parallel) is a camera looking straight down: no tilt to recover.
    road = [(0.0, 0.0), (10.0, 0.0), (10.0, 10.0), (0.0, 10.0)]
    pixels = [(100.0, 400.0), (300.0, 400.0), (300.0, 200.0), (100.0, 200.0)]
    with pytest.raises(ConfigError, match="use a pose calibration"):
        Camera.from_point_pairs(pixels, road, 640, 480)
