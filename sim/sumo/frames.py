"""Frames with truth from a scenario's cameras: what the detector's evaluation and training draw on.

Free of the agent (``roadside.edge``): the ML package's held-out SUMO sets
(:mod:`roadside.models.evaluate`) render through here, and the hub reaches
those through the publish gate, so nothing here may import the agent.
"""

from __future__ import annotations

from roadside.sim.sumo.poses import load_pose_file
from roadside.sim.sumo.render import Conditions, RenderedFrame, Renderer, RoadGeometry
from roadside.sim.sumo.scenarios import Scenario
from roadside.sim.sumo.world import SumoWorld
from roadside.vision.calibration import Camera

__all__ = ["render_scenario"]


def render_scenario(
    scenario: Scenario,
    conditions: Conditions,
    *,
    frames_per_camera: int,
    every_s: float = 2.0,
    warmup_s: float = 60.0,
    junction: bool = False,
) -> list[RenderedFrame]:
    """Frames from every camera of ``scenario``, one each ``every_s`` simulated seconds after a warm-up.

    ``junction`` adds the scenario's junction camera (the high one over the whole
    junction, for turning movements) to its approach cameras.
    """
    road = RoadGeometry.from_net(scenario.net)
    pose_files = [scenario.poses, scenario.junction_poses] if junction else [scenario.poses]
    cameras = [Camera.from_calibration(c.calibration) for f in pose_files for c in load_pose_file(f).cameras]
    renderers = [Renderer(cam, road, conditions, seed=k) for k, cam in enumerate(cameras)]
    every = max(1, round(every_s / 0.1))
    frames: list[RenderedFrame] = []
    with SumoWorld.start(scenario.sumocfg, seed=scenario.seed) as world:
        for _ in range(round(warmup_s / 0.1)):
            world.step()
        for _ in range(frames_per_camera):
            for _ in range(every - 1):
                world.step()
            state = world.step()
            frames.extend(r.render(state) for r in renderers)
    return frames
