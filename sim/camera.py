"""The synthetic road scene (:mod:`roadside.sim.synthetic`) as a camera of the edge agent.

The agent does not import this module: it is the ``synthetic`` entry of the
``roadside.sources`` entry-point group in ``pyproject.toml``, which
:func:`roadside.edge.sources.open_source` loads when a config asks for a synthetic
camera (``docs/adr/0010-sources-register-through-entry-points.md``). Besides
frames with ground truth, the camera's :class:`CameraScene` tells the agent's
analytics where the scene's lanes, zones and counting line are.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

from roadside.edge.analytics.config import (
    AnalyticsConfig,
    LaneConfig,
    LineConfig,
    SegmentConfig,
    SpeedTrapConfig,
    ZoneConfig,
)
from roadside.edge.settings import SyntheticSource
from roadside.edge.sources.base import Frame
from roadside.sim.synthetic import CLASSES, LANE_NAMES, RoadScene, SceneConfig

__all__ = ["SYNTHETIC_ROAD_WIDTH_M", "CameraScene", "SyntheticFrameSource", "synthetic_scene_analytics"]

Point = tuple[float, float]

# The synthetic scene's frame width stands for this much road: 640 px = 40 m, 16 px/m,
# so a 70 px car is 4.4 m long and the scene's 90-190 px/s cars drive at 20-43 km/h.
SYNTHETIC_ROAD_WIDTH_M = 40.0


class CameraScene(RoadScene):
    """The road scene as an agent camera sees it: it also describes itself to the analytics
    (:class:`roadside.edge.analytics.config.DescribedScene`)."""

    def analytics_config(self) -> AnalyticsConfig:
        return synthetic_scene_analytics(self)


class SyntheticFrameSource:
    """A ``FrameSource`` that renders the scene, paced at ``fps`` or as fast as it can."""

    def __init__(self, config: SyntheticSource) -> None:
        self.name = config.name
        self.config = config
        self.reconnects = 0  # a generated scene never fails
        self.scene = CameraScene(self._scene_config(config.light, config.rain, config.fog))
        self._stop = threading.Event()

    def _scene_config(self, light: float, rain: float, fog: float) -> SceneConfig:
        c = self.config
        return SceneConfig(
            width=c.width, height=c.height, fps=c.fps, light=light, rain=rain, fog=fog, seed=c.seed
        )

    def frames(self) -> Iterator[Frame]:
        started = time.time()
        period = 1.0 / self.config.fps
        next_due = time.monotonic()
        limit = self.config.max_frames
        produced = 0
        drift = self.config.drift
        while not self._stop.is_set() and (limit is None or produced < limit):
            if drift is not None and produced == drift.after_frames:
                # Weather is part of the scene's rendering, so the camera gets a new scene.
                self.scene = CameraScene(self._scene_config(drift.light, drift.rain, drift.fog))
            frame = self.scene.step()
            produced += 1
            if self.config.realtime:
                next_due += period
                delay = next_due - time.monotonic()
                if delay > 0 and self._stop.wait(delay):
                    return
                ts = time.time()
            else:
                ts = started + (produced - 1) / self.config.fps  # monotonic across a drift
            truth = tuple((CLASSES[o.cls], o.box) for o in frame.objects)
            yield Frame(self.name, produced - 1, ts, frame.image, truth)

    def close(self) -> None:
        self._stop.set()


def _rect(x1: float, y1: float, x2: float, y2: float) -> list[Point]:
    return [(x1, y1), (x2, y1), (x2, y2), (x1, y2)]


def synthetic_scene_analytics(scene: RoadScene) -> AnalyticsConfig:
    """The analytics configuration that matches a synthetic scene's drawing.

    Lanes are the painted bands, with the scene's lane indices as ids
    (``SceneObject.lane``) and their traffic direction; the roadway runs
    from the far bike lane to the near one; the crosswalk is the zebra, a
    few pixels wider for box jitter; the counting line is the scene's own.
    Scale: the frame's width is :data:`SYNTHETIC_ROAD_WIDTH_M` of road. The
    scene moves everything in screen pixels whatever the lane (its
    perspective only shrinks far objects), so one pixels-per-metre holds
    everywhere. The speed trap's lines stand half the frame apart (20 m),
    where even a long truck is fully in frame.
    """
    # The band layout is the scene's private drawing plan; reading it (rather than copying
    # its fractions here) keeps the two in step, and the component tests check the match.
    layout = scene._layout
    w = float(scene.config.width)
    lanes = []
    for lane in range(6):  # four road lanes, then the two bike lanes
        top, bottom = layout.lane_band(lane)
        westbound = LANE_NAMES[lane].split("_")[1] == "west"
        lanes.append(
            LaneConfig(
                id=lane,
                name=LANE_NAMES[lane],
                polygon=_rect(0.0, top, w, bottom),
                direction=(-1.0, 0.0) if westbound else (1.0, 0.0),
            )
        )
    top, bottom = layout.bike_west[0], layout.bike_east[1]
    cx0, cx1 = layout.crosswalk
    margin = 0.01 * w
    ppm = w / SYNTHETIC_ROAD_WIDTH_M
    start, end = scene.count_line()
    return AnalyticsConfig(
        lines=[LineConfig(name="line0", start=start, end=end)],
        lanes=lanes,
        zones=[
            ZoneConfig(
                name="roadway", kind="roadway", polygon=_rect(0.0, top, w, bottom), pixels_per_metre=ppm
            ),
            ZoneConfig(
                name="crosswalk", kind="crosswalk", polygon=_rect(cx0 - margin, top, cx1 + margin, bottom)
            ),
        ],
        speed_traps=[
            SpeedTrapConfig(
                name="speed0",
                line_a=SegmentConfig(start=(0.34 * w, top), end=(0.34 * w, bottom)),
                line_b=SegmentConfig(start=(0.84 * w, top), end=(0.84 * w, bottom)),
                distance_m=0.5 * SYNTHETIC_ROAD_WIDTH_M,
            )
        ],
    )
