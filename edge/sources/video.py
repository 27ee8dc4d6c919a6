"""Video files, RTSP/HTTP streams and USB cameras through OpenCV's FFmpeg backend."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator

import cv2
import numpy as np

from edge.settings import VideoSource
from edge.sources.base import Frame
from shared.errors import TransportError

log = logging.getLogger(__name__)


class VideoFrameSource:
    def __init__(self, config: VideoSource) -> None:
        self.name = config.name
        self.config = config
        self._stop = threading.Event()

    def _open(self) -> cv2.VideoCapture:
        uri: str | int = int(self.config.uri) if self.config.uri.isdigit() else self.config.uri
        capture = cv2.VideoCapture(uri, cv2.CAP_FFMPEG if isinstance(uri, str) else cv2.CAP_ANY)
        if not capture.isOpened():
            raise TransportError(f"cannot open video source {self.name!r} at {self.config.uri!r}")
        return capture

    def frames(self) -> Iterator[Frame]:
        capture = self._open()
        period = 1.0 / self.config.fps_cap
        next_due = time.monotonic()
        index = 0
        try:
            while not self._stop.is_set():
                ok, image = capture.read()
                if not ok:
                    if not self.config.loop:
                        return
                    capture.set(cv2.CAP_PROP_POS_FRAMES, 0)
                    continue
                now = time.monotonic()
                if now < next_due:
                    continue  # over the frame-rate cap: decode but skip
                next_due = max(next_due + period, now)
                yield Frame(self.name, index, time.time(), np.ascontiguousarray(image, dtype=np.uint8))
                index += 1
        finally:
            capture.release()

    def close(self) -> None:
        self._stop.set()
