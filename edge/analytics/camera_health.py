"""Whether a camera's picture is good enough to detect with: frozen, dark, obscured or lost.

Pure: each frame is reduced to a small grey thumbnail (:func:`frame_stats`)
and :class:`CameraHealth` decides from those and timestamps alone, so every
case is a unit test. A picture must stay bad for a while (``frozen_s``,
``bad_s``, ``lost_s``) before the camera is failed and good for
``restore_s`` before it is restored: a passing shadow or one dropped frame
must not fault a stop-bar detector.

What each check catches, and its limit: *frozen* is a stuck encoder or a
camera that repeats its last frame (a still scene with sensor noise is not
frozen; a perfectly noiseless still scene would be, hence ``frozen_s`` of
seconds, not frames); *dark* a dead sensor, a cut IR lamp at night or a
covered lens; *obscured* a lens under snow, spray or fog, which leaves
light but no edges; *lost* a camera that stopped sending (reported by
:meth:`CameraHealth.tick`, called on a clock, since no frame comes).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from roadside.edge.analytics.detectors import CameraHealthConfig
from roadside.shared.schemas import DetectorFault

__all__ = ["CameraHealth", "FrameStats", "HealthChange", "frame_stats"]

THUMB = (36, 64)  # rows, columns of the thumbnail the checks look at


@dataclass(frozen=True, slots=True)
class FrameStats:
    thumb: npt.NDArray[np.float32]  # THUMB grey levels, 0..255
    luma: float  # mean grey level
    detail: float  # mean absolute gradient of the thumbnail


def frame_stats(image: npt.NDArray[np.uint8]) -> FrameStats:
    """A frame (H×W×3 BGR/RGB or H×W grey) reduced to what the health checks need (sub-millisecond)."""
    h, w = image.shape[:2]
    rows = np.linspace(0, h - 1, min(THUMB[0], h)).astype(np.intp)
    cols = np.linspace(0, w - 1, min(THUMB[1], w)).astype(np.intp)
    sampled = image[np.ix_(rows, cols)]  # pick the pixels first: the full frame is never converted
    thumb = sampled.mean(axis=2, dtype=np.float32) if sampled.ndim == 3 else sampled.astype(np.float32)
    detail = 0.0
    if thumb.shape[0] > 1 and thumb.shape[1] > 1:
        detail = float((np.abs(np.diff(thumb, axis=0)).mean() + np.abs(np.diff(thumb, axis=1)).mean()) / 2.0)
    return FrameStats(thumb, float(thumb.mean()), detail)


@dataclass(frozen=True, slots=True)
class HealthChange:
    """The camera failed (``reason``) or was restored (``reason`` None) at ``ts``."""

    ts: float
    reason: DetectorFault | None


class CameraHealth:
    """Watches one camera; :meth:`frame` per frame, :meth:`tick` on a clock for a lost camera."""

    def __init__(self, config: CameraHealthConfig) -> None:
        self.config = config
        self.failed: DetectorFault | None = None
        self._last_frame: float | None = None
        self._last_arrival: float | None = None  # on the clock :meth:`tick` is given
        self._last_thumb: npt.NDArray[np.float32] | None = None
        self._unchanged_since: float | None = None
        self._dark_since: float | None = None
        self._obscured_since: float | None = None
        self._good_since: float | None = None

    def frame(self, ts: float, stats: FrameStats, arrived: float | None = None) -> HealthChange | None:
        """A frame taken at ``ts`` came (at ``arrived`` on :meth:`tick`'s clock; ``ts`` when left out);
        a change of health, if this frame made one."""
        c = self.config
        self._last_frame = ts
        self._last_arrival = ts if arrived is None else arrived
        same = (
            self._last_thumb is not None
            and self._last_thumb.shape == stats.thumb.shape
            and float(np.abs(stats.thumb - self._last_thumb).mean()) <= c.frozen_level
        )
        self._last_thumb = stats.thumb
        self._unchanged_since = (
            (self._unchanged_since if self._unchanged_since is not None else ts) if same else None
        )
        self._dark_since = (
            (self._dark_since if self._dark_since is not None else ts) if stats.luma < c.dark_level else None
        )
        obscured = stats.luma >= c.dark_level and stats.detail < c.obscured_level
        self._obscured_since = (
            (self._obscured_since if self._obscured_since is not None else ts) if obscured else None
        )
        reason = self._bad(ts)
        if reason is not None:
            self._good_since = None
            if self.failed is None:
                self.failed = reason
                return HealthChange(ts, reason)
            return None
        if self.failed is None:
            return None
        if self._good_since is None:
            self._good_since = ts
        if ts - self._good_since >= c.restore_s:
            self.failed, self._good_since = None, None
            return HealthChange(ts, None)
        return None

    def _bad(self, ts: float) -> DetectorFault | None:
        c = self.config
        if self._dark_since is not None and ts - self._dark_since >= c.bad_s:
            return "dark"
        if self._obscured_since is not None and ts - self._obscured_since >= c.bad_s:
            return "obscured"
        if self._unchanged_since is not None and ts - self._unchanged_since >= c.frozen_s:
            return "frozen"
        # A picture that went bad but not for long enough, while already failed, keeps the fault.
        if self.failed is not None and any(
            since is not None for since in (self._dark_since, self._obscured_since, self._unchanged_since)
        ):
            return self.failed
        return None

    def tick(self, now: float) -> HealthChange | None:
        """On the clock frames' arrivals were given on: the camera is lost once none came for ``lost_s``.

        A source whose timestamps are not the wall clock (a simulation running slower than
        real time) is judged by when its frames arrive, not by what they say; the fault is
        dated on the frames' clock, ``lost_s`` or more after the last one.
        """
        if self._last_frame is None or self._last_arrival is None or self.failed is not None:
            return None
        silent = now - self._last_arrival
        if silent >= self.config.lost_s:
            self.failed = "lost"
            self._good_since = None
            return HealthChange(self._last_frame + silent, "lost")
        return None
