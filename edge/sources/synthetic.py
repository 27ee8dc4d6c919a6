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
        self.scene = RoadScene(
            SceneConfig(
                width=config.width,
                height=config.height,
                fps=config.fps,
                light=config.light,
                rain=config.rain,
                seed=config.seed,
            )
        )
        self._stop = threading.Event()

    def frames(self) -> Iterator[Frame]:
        started = time.time()
        period = 1.0 / self.config.fps
        next_due = time.monotonic()
        limit = self.config.max_frames
        produced = 0
        while not self._stop.is_set() and (limit is None or produced < limit):
            frame = self.scene.step()
            produced += 1
            if self.config.realtime:
                next_due += period
                delay = next_due - time.monotonic()
                if delay > 0 and self._stop.wait(delay):
                    return
                ts = time.time()
            else:
                ts = started + frame.t
            truth = tuple((CLASSES[o.cls], o.box) for o in frame.objects)
            yield Frame(self.name, frame.index, ts, frame.image, truth)

    def close(self) -> None:
        self._stop.set()
