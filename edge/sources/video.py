"""Video files, RTSP/HTTP streams and USB cameras through OpenCV's FFmpeg backend.

Two kinds of source, two policies:

* **Files** are read whole, frame by frame, never skipping one: paced by
  sleeping at the file's own frame rate (at most ``fps_cap``), or not at all
  when the config sets ``realtime = false``. Timestamps are media time from
  the start of the read, so analytics see the file's own clock whatever the
  pace. A truncated or corrupt file ends the stream at the last readable frame.
* **Live streams** (a URL with a scheme, or a camera index) are paced by the
  camera: frames arriving faster than ``fps_cap`` are dropped (fresh frames
  matter more than every frame). A read or reopen failure closes the capture,
  waits a jittered backoff and reopens; frame indices keep increasing across
  reconnects and ``reconnects`` counts them. The first open failing is a
  ``TransportError``: a wrong URL or credentials must be reported at once
  (``add_stream``, ``roadside agent doctor``), not retried silently.

The URL is never logged or put in an error as configured: its password is
masked (:mod:`roadside.edge.sources.uri`).
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Iterator

import cv2
import numpy as np
import numpy.typing as npt

from roadside.edge.settings import VideoSource
from roadside.edge.sources.base import Frame
from roadside.edge.sources.uri import mask_credentials
from roadside.shared.backoff import Backoff
from roadside.shared.errors import TransportError

log = logging.getLogger(__name__)

_OPEN_TIMEOUT_MS = 10_000  # FFmpeg's own connect timeout for live streams
_READ_TIMEOUT_MS = 5_000  # a camera silent this long is treated as disconnected
_CORRUPT_SKIP_LIMIT = 10  # undecodable frames a file may skip in a row before it is treated as ended
_RECONNECT_BASE_S = 0.5
_RECONNECT_CAP_S = 30.0


def is_live(uri: str) -> bool:
    """A camera index or a network URL (``rtsp://``, ``http://`` ...) rather than a local file."""
    if uri.isdigit():
        return True
    scheme, sep, _ = uri.partition("://")
    return bool(sep) and scheme.lower() != "file"


class VideoFrameSource:
    """One OpenCV capture: a file read whole, or a live stream that reconnects."""

    def __init__(self, config: VideoSource, backoff: Backoff | None = None) -> None:
        self.name = config.name
        self.config = config
        self.live = is_live(config.uri)
        self.shown_uri = mask_credentials(config.uri)  # what logs and errors may show
        # ``realtime`` is read leniently so the adapter works with settings that predate the option.
        self.realtime: bool = bool(getattr(config, "realtime", True))
        self.reconnects = 0
        self._backoff = backoff or Backoff(_RECONNECT_BASE_S, _RECONNECT_CAP_S)
        self._stop = threading.Event()

    def frames(self) -> Iterator[Frame]:
        """Frames until the file ends or ``close()``; ``TransportError`` if the source never opens."""
        capture = self._open()
        if self.live:
            yield from self._live_frames(capture)
        else:
            yield from self._file_frames(capture)

    def close(self) -> None:
        """Stop at the next frame, backoff wait or read timeout."""
        self._stop.set()

    # Files --------------------------------------------------------------------------

    def _file_frames(self, capture: cv2.VideoCapture) -> Iterator[Frame]:
        native = capture.get(cv2.CAP_PROP_FPS)
        fps = native if math.isfinite(native) and native > 0 else self.config.fps_cap
        period = 1.0 / min(fps, self.config.fps_cap)
        started = time.time()
        next_due = time.monotonic()
        index = 0
        try:
            while not self._stop.is_set():
                image = self._read_file_frame(capture)
                if image is None:
                    if not self.config.loop or index == 0:
                        return
                    capture.release()
                    capture = self._open()
                    continue
                if self.realtime:
                    delay = next_due - time.monotonic()
                    if delay > 0 and self._stop.wait(delay):
                        return
                    next_due = max(next_due + period, time.monotonic() - period)
                yield Frame(self.name, index, started + index / fps, image)
                index += 1
        finally:
            capture.release()

    def _read_file_frame(self, capture: cv2.VideoCapture) -> npt.NDArray[np.uint8] | None:
        """The next decodable frame; ``None`` at the end (or past a run of corrupt frames).

        FFmpeg moves past a frame it cannot decode, so reading again skips it. Past the
        last good frame of a truncated file reads fail for good: a run of
        ``_CORRUPT_SKIP_LIMIT`` failures, or the position at the end, ends the file.
        """
        total = capture.get(cv2.CAP_PROP_FRAME_COUNT)
        for attempt in range(_CORRUPT_SKIP_LIMIT):
            image = _read(capture)
            if image is not None:
                return image
            position = capture.get(cv2.CAP_PROP_POS_FRAMES)
            if not (total > 0 and position < total - 1):
                return None  # the real end
            if attempt == 0:
                log.warning("video %s: unreadable frame near %d, skipping", self.name, int(position))
        log.warning("video %s: %d unreadable frames in a row, ending", self.name, _CORRUPT_SKIP_LIMIT)
        return None

    # Live streams ------------------------------------------------------------------------

    def _live_frames(self, capture: cv2.VideoCapture | None) -> Iterator[Frame]:
        period = 1.0 / self.config.fps_cap
        next_due = time.monotonic()
        index = 0
        try:
            while not self._stop.is_set():
                if capture is None:
                    capture = self._reconnect()
                    if capture is None:
                        return  # closed while waiting
                image = _read(capture)
                if image is None:
                    log.warning("stream %s: read failed, reconnecting", self.name)
                    capture.release()
                    capture = None
                    continue
                self._backoff.reset()
                now = time.monotonic()
                if now < next_due:
                    continue  # over the frame-rate cap: decoded, dropped
                next_due = max(next_due + period, now)
                yield Frame(self.name, index, time.time(), image)
                index += 1
        finally:
            if capture is not None:
                capture.release()

    def _reconnect(self) -> cv2.VideoCapture | None:
        """Back off, then reopen until it works; ``None`` once closed."""
        while not self._stop.wait(self._backoff.next_delay()):
            try:
                capture = self._open()
            except TransportError as exc:
                log.warning("stream %s: %s; retrying", self.name, exc)
                continue
            self.reconnects += 1
            log.info("stream %s reconnected (%d so far)", self.name, self.reconnects)
            return capture
        return None

    # Opening -----------------------------------------------------------------------------

    def _open(self) -> cv2.VideoCapture:
        uri = self.config.uri
        if uri.isdigit():
            capture = cv2.VideoCapture(int(uri), cv2.CAP_ANY)
        elif self.live:
            timeouts = [cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, _OPEN_TIMEOUT_MS, cv2.CAP_PROP_READ_TIMEOUT_MSEC]
            capture = cv2.VideoCapture(uri, cv2.CAP_FFMPEG, [*timeouts, _READ_TIMEOUT_MS])
        else:
            capture = cv2.VideoCapture(uri, cv2.CAP_FFMPEG)
        if not capture.isOpened():
            capture.release()
            raise TransportError(f"cannot open video source {self.name!r} at {self.shown_uri!r}")
        return capture


def _read(capture: cv2.VideoCapture) -> npt.NDArray[np.uint8] | None:
    """One decoded frame, or ``None`` when the capture has none to give (end, error, disconnect)."""
    try:
        ok, image = capture.read()
    except cv2.error:  # a decoder error surfacing as an exception: the same as a failed read
        return None
    if not ok or image is None:
        return None
    return np.ascontiguousarray(image, dtype=np.uint8)
