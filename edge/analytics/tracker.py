"""What a tracker is, and the first one: greedy IoU matching of detections to live tracks.

:class:`Tracker` is the interface the stream analytics use; the agent's
tracker is :class:`roadside.edge.analytics.bytetrack.ByteTracker` (see
``docs/adr/0003-tracker.md``). :class:`IouTracker` stays as the simplest
baseline. Pure numpy, no I/O.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

import numpy as np
import numpy.typing as npt

if TYPE_CHECKING:
    from roadside.vision.yolo import Detections

Boxes = npt.NDArray[np.float32]


@dataclass(slots=True)
class Track:
    track_id: int
    cls: int
    box: tuple[float, float, float, float]
    score: float
    hits: int = 1
    missed: int = 0
    history: list[tuple[float, float]] = field(default_factory=list)  # centroids, oldest first
    velocity: tuple[float, float] = (0.0, 0.0)  # centroid px/s, smoothed (0 where a tracker has no model)

    @property
    def centroid(self) -> tuple[float, float]:
        x1, y1, x2, y2 = self.box
        return ((x1 + x2) / 2.0, (y1 + y2) / 2.0)


class Tracker(Protocol):
    """Gives detections of one stream stable ids across frames."""

    def update(self, detections: Detections, ts: float | None = None) -> list[Track]:
        """Advance to the frame at epoch seconds ``ts``; return the tracks seen in it."""
        ...


def iou_matrix(a: Boxes, b: Boxes) -> npt.NDArray[np.float32]:
    """Pairwise IoU of two sets of xyxy boxes."""
    if len(a) == 0 or len(b) == 0:
        return np.zeros((len(a), len(b)), dtype=np.float32)
    x1 = np.maximum(a[:, None, 0], b[None, :, 0])
    y1 = np.maximum(a[:, None, 1], b[None, :, 1])
    x2 = np.minimum(a[:, None, 2], b[None, :, 2])
    y2 = np.minimum(a[:, None, 3], b[None, :, 3])
    inter = np.clip(x2 - x1, 0, None) * np.clip(y2 - y1, 0, None)
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    union = area_a[:, None] + area_b[None, :] - inter
    result: npt.NDArray[np.float32] = (inter / np.maximum(union, 1e-6)).astype(np.float32)
    return result


class IouTracker:
    """Assign stable ids to detections across frames of one stream."""

    def __init__(self, iou_threshold: float = 0.3, max_missed: int = 5, history: int = 8) -> None:
        self.iou_threshold = iou_threshold
        self.max_missed = max_missed
        self.history = history
        self.tracks: list[Track] = []
        self._next_id = 1

    def update(
        self, boxes: Boxes, scores: npt.NDArray[np.float32], classes: npt.NDArray[np.int64]
    ) -> list[Track]:
        """Advance one frame; return the tracks seen in this frame."""
        live = np.array([t.box for t in self.tracks], dtype=np.float32).reshape(-1, 4)
        iou = iou_matrix(live, boxes.astype(np.float32).reshape(-1, 4))
        same_class = np.array([[t.cls == c for c in classes] for t in self.tracks], dtype=bool).reshape(
            iou.shape
        )
        iou = np.where(same_class, iou, 0.0)
        matched_tracks: set[int] = set()
        matched_dets: set[int] = set()
        # Greedy by descending IoU: good enough when objects are few and well separated.
        for flat in np.argsort(-iou, axis=None):
            ti, di = divmod(int(flat), iou.shape[1])
            if iou[ti, di] < self.iou_threshold:
                break
            if ti in matched_tracks or di in matched_dets:
                continue
            matched_tracks.add(ti)
            matched_dets.add(di)
            self._refresh(self.tracks[ti], boxes[di], float(scores[di]))
        seen = [self.tracks[i] for i in sorted(matched_tracks)]
        for i, track in enumerate(self.tracks):
            if i not in matched_tracks:
                track.missed += 1
        for di in range(len(boxes)):
            if di not in matched_dets:
                seen.append(self._start(boxes[di], float(scores[di]), int(classes[di])))
        self.tracks = [t for t in self.tracks if t.missed <= self.max_missed]
        return seen

    def _refresh(self, track: Track, box: npt.NDArray[np.float32], score: float) -> None:
        track.box = (float(box[0]), float(box[1]), float(box[2]), float(box[3]))
        track.score = score
        track.hits += 1
        track.missed = 0
        track.history.append(track.centroid)
        del track.history[: -self.history]

    def _start(self, box: npt.NDArray[np.float32], score: float, cls: int) -> Track:
        track = Track(self._next_id, cls, (float(box[0]), float(box[1]), float(box[2]), float(box[3])), score)
        track.history.append(track.centroid)
        self._next_id += 1
        self.tracks.append(track)
        return track
