"""Turning-movement counts against SUMO's route-based truth, on a real SUMO run (issue 11).

The counts go through the agent's own parts: frames drawn by the renderer
from one junction camera (:func:`roadside.sim.sumo.poses.junction_camera`),
the default tracker, and :class:`~roadside.edge.analytics.signals.CameraSignals`
with one movement approach per leg (:func:`roadside.sim.sumo.poses.junction_legs`,
in road metres through the camera's calibration). The detections are the
frames' **ground-truth boxes**, not the shipped detector's (its car recall
on rendered frames is about 0.13, ``docs/sumo.md``): this tests the counting,
the tracking and the geometry, not the detector. The detector-in-the-loop
figure is measured by ``python -m bench.signal --tmc-only`` and recorded in
``docs/signals.md``.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from roadside.shared.errors import ConfigError
from roadside.sim.sumo.poses import junction_camera, junction_legs, load_pose_file
from roadside.sim.sumo.scenarios import Scenario, build_scenario
from roadside.sim.sumo.tmc import count_movements
from roadside.sim.sumo.tools import run_tool
from roadside.vision.calibration import Camera

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module")
def scenario(tmp_path_factory: pytest.TempPathFactory) -> Scenario:
    return build_scenario("intersection", tmp_path_factory.mktemp("tmc"), seed=42, duration_s=120)


def test_turning_movement_counts_match_route_truth(scenario: Scenario) -> None:
    pose = load_pose_file(scenario.junction_poses).cameras[0]
    result = count_movements(
        scenario.sumocfg, scenario.net, scenario.junction, pose, duration_s=60.0, warmup_s=20.0, fps=5.0
    )
    truth = {(m.entry, m.exit): m.truth for m in result.movements}
    counted = {(m.entry, m.exit): m.counted for m in result.movements}
    total = sum(truth.values())
    assert result.frames == 300
    assert total >= 15, f"too little traffic to judge: {truth}"
    assert {a for a, _ in truth} | {b for _, b in truth} <= {"north", "east", "south", "west"}
    assert all(a != b for a, b in truth), "the scenario has no U-turns"
    # No phantom movement: every pair the camera counted was driven, never by more than one too many.
    for pair, n in counted.items():
        assert n <= truth.get(pair, 0) + 1, f"{pair}: counted {n}, truth {truth.get(pair, 0)}"
    # All 17 vehicles of this minute are counted right on the build machine; one may be hidden behind
    # a bus for its whole way through on another SUMO release's demand.
    missed = sum(abs(counted.get(p, 0) - truth.get(p, 0)) for p in set(truth) | set(counted))
    assert missed <= 1, result.as_dict()
    assert sum(result.by_class.values()) == sum(counted.values())


def test_junction_camera_sees_every_leg_of_any_network(tmp_path: Path) -> None:
    run_tool(
        "netgenerate",
        ["--grid", "--grid.number", "3", "--grid.length", "120", "--default.lanenumber", "2",
         "--tls.guess", "true", "--seed", "3", "--output-file", "grid.net.xml"],
        tmp_path,
    )  # fmt: skip
    net = tmp_path / "grid.net.xml"
    legs = junction_legs(net, "B1")
    assert sorted(leg.name for leg in legs) == ["east", "north", "south", "west"]
    assert all(len(leg.entries) == 1 and len(leg.exits) == 1 for leg in legs)
    pose = junction_camera(net, "B1")
    camera = Camera.from_calibration(pose.calibration)
    for leg in legs:
        pixels = camera.road_to_image([list(p) for p in leg.polygon])
        assert ((pixels >= 0) & (pixels <= [camera.width, camera.height])).all(), leg.name
    # A corner of the grid has two legs only, and is still seen whole.
    assert len(junction_legs(net, "A0")) == 2
    junction_camera(net, "A0")


def test_a_camera_that_misses_a_leg_or_a_junction_that_is_not_there_is_refused(scenario: Scenario) -> None:
    approach = load_pose_file(scenario.poses).cameras[0]  # sees one approach only
    with pytest.raises(ConfigError, match="not wholly in camera"):
        count_movements(scenario.sumocfg, scenario.net, scenario.junction, approach, duration_s=1.0)
    with pytest.raises(ConfigError, match="no junction"):
        junction_legs(scenario.net, "nowhere")
    with pytest.raises(ConfigError, match="fewer than two legs"):
        junction_legs(scenario.net, "N")  # the north leg's far end: a dead end
