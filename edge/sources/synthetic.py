"""The synthetic camera: the generated road scene of :mod:`models.synthetic`."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

from edge.settings import SyntheticSource
from edge.sources.base import Frame
from models.synthetic import CLASSES, RoadScene, SceneConfig


class SyntheticFrameSource:
    def __init__(self, config: SyntheticSource) -> None:
        self.name = config.name
        self.config = config
        self.reconnects = 0  # a generated scene never fails
        self.scene = RoadScene(self._scene_config(config.light, config.rain, config.fog))
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
                self.scene = RoadScene(self._scene_config(drift.light, drift.rain, drift.fog))
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
