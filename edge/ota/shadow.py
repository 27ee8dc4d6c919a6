"""The shadow comparison: a candidate model beside the running one on the same frames (pure, numpy).

Matching is one-to-one and greedy by IoU within a class: each running
detection pairs with at most one candidate detection (IoU >= 0.5, same
class), best overlaps first. From the pairs:

- ``agreement`` = matched / running detections: how much of what the running
  model sees the candidate still sees. A candidate that finds more agrees
  fully; one that misses things does not. With no running detections at all
  there is nothing to disagree with: 1.0.
- ``novel`` = unmatched candidate detections / candidate detections: new
  finds or false alarms (0.0 when the candidate found nothing).

Latencies are kept for the last ``LATENCY_WINDOW`` shadowed batches (p95 of
those); confidences go into ``CONFIDENCE_BINS`` fixed bins over [0, 1],
normalised to sum to 1 (all zeros when a model found nothing).
"""

from __future__ import annotations

from collections import deque
from typing import Final, Protocol

import numpy as np
import numpy.typing as npt

from roadside.shared.schemas import CONFIDENCE_BINS, ShadowStats

IOU_MATCH: Final = 0.5
LATENCY_WINDOW: Final = 4096


class FrameDetections(Protocol):
    """One frame's detections (``roadside.vision.yolo.Detections``)."""

    @property
    def boxes(self) -> npt.NDArray[np.float32]: ...  # (N, 4) x1, y1, x2, y2

    @property
    def scores(self) -> npt.NDArray[np.float32]: ...  # (N,)

    @property
    def class_ids(self) -> npt.NDArray[np.int64]: ...  # (N,)


def pairwise_iou(a: npt.NDArray[np.floating], b: npt.NDArray[np.floating]) -> npt.NDArray[np.float64]:
    """IoU of every box in ``a`` (N, 4) with every box in ``b`` (M, 4): an (N, M) matrix."""
    a64, b64 = a.astype(np.float64).reshape(-1, 4), b.astype(np.float64).reshape(-1, 4)
    x1 = np.maximum(a64[:, None, 0], b64[None, :, 0])
    y1 = np.maximum(a64[:, None, 1], b64[None, :, 1])
    x2 = np.minimum(a64[:, None, 2], b64[None, :, 2])
    y2 = np.minimum(a64[:, None, 3], b64[None, :, 3])
    inter = np.clip(x2 - x1, 0, None) * np.clip(y2 - y1, 0, None)
    area_a = (a64[:, 2] - a64[:, 0]) * (a64[:, 3] - a64[:, 1])
    area_b = (b64[:, 2] - b64[:, 0]) * (b64[:, 3] - b64[:, 1])
    union = area_a[:, None] + area_b[None, :] - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1.0), 0.0)


def count_matches(running: FrameDetections, candidate: FrameDetections, threshold: float = IOU_MATCH) -> int:
    """How many one-to-one (same class, IoU >= ``threshold``) pairs the two frames' detections form."""
    if len(running.scores) == 0 or len(candidate.scores) == 0:
        return 0
    iou = pairwise_iou(running.boxes, candidate.boxes)
    iou[running.class_ids[:, None] != candidate.class_ids[None, :]] = -1.0
    rows, cols = np.nonzero(iou >= threshold)
    order = np.argsort(-iou[rows, cols], kind="stable")
    used_running: set[int] = set()
    used_candidate: set[int] = set()
    for r, c in zip(rows[order].tolist(), cols[order].tolist(), strict=True):
        if r not in used_running and c not in used_candidate:
            used_running.add(r)
            used_candidate.add(c)
    return len(used_running)


def confidence_histogram(scores: npt.NDArray[np.floating]) -> npt.NDArray[np.int64]:
    """Counts of ``scores`` in ``CONFIDENCE_BINS`` equal bins over [0, 1] (1.0 falls in the last)."""
    counts, _edges = np.histogram(np.clip(scores, 0.0, 1.0), bins=CONFIDENCE_BINS, range=(0.0, 1.0))
    return counts.astype(np.int64)


def p95(values: deque[float]) -> float:
    return float(np.percentile(np.fromiter(values, dtype=np.float64), 95)) if values else 0.0


def normalised(counts: npt.NDArray[np.int64]) -> list[float]:
    total = int(counts.sum())
    return [float(c) / total for c in counts] if total else [0.0] * CONFIDENCE_BINS


class ShadowComparison:
    """Accumulates how a candidate model compares with the running one; :meth:`stats` summarises."""

    def __init__(self) -> None:
        self.frames = 0
        self.running_found = 0
        self.candidate_found = 0
        self.matched = 0
        self._latency_running: deque[float] = deque(maxlen=LATENCY_WINDOW)
        self._latency_candidate: deque[float] = deque(maxlen=LATENCY_WINDOW)
        self._conf_running = np.zeros(CONFIDENCE_BINS, dtype=np.int64)
        self._conf_candidate = np.zeros(CONFIDENCE_BINS, dtype=np.int64)

    def add_frame(self, running: FrameDetections, candidate: FrameDetections) -> None:
        """One frame seen by both models."""
        self.frames += 1
        self.running_found += len(running.scores)
        self.candidate_found += len(candidate.scores)
        self.matched += count_matches(running, candidate)
        self._conf_running += confidence_histogram(running.scores)
        self._conf_candidate += confidence_histogram(candidate.scores)

    def add_batch(
        self,
        running: list[FrameDetections],
        candidate: list[FrameDetections],
        running_ms: float,
        candidate_ms: float,
    ) -> None:
        """One batch through both models, with the time each took for it."""
        if len(running) != len(candidate):
            raise ValueError(f"{len(running)} running results for {len(candidate)} candidate results")
        for r, c in zip(running, candidate, strict=True):
            self.add_frame(r, c)
        self._latency_running.append(running_ms)
        self._latency_candidate.append(candidate_ms)

    @property
    def agreement(self) -> float:
        return self.matched / self.running_found if self.running_found else 1.0

    @property
    def novel(self) -> float:
        return (self.candidate_found - self.matched) / self.candidate_found if self.candidate_found else 0.0

    def stats(self) -> ShadowStats:
        return ShadowStats(
            frames=self.frames,
            agreement=self.agreement,
            novel=self.novel,
            latency_p95_ms_running=p95(self._latency_running),
            latency_p95_ms_candidate=p95(self._latency_candidate),
            confidence_running=normalised(self._conf_running),
            confidence_candidate=normalised(self._conf_candidate),
        )
