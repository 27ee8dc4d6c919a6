"""A small ByteTrack-style tracker: two-stage association with constant-velocity prediction.

ByteTrack (Zhang et al., 2022) matches confident detections first, then
offers the leftover tracks the low-score detections a detector would
otherwise throw away (a car half hidden behind a lamp post). On top of that,
each track predicts where it will be from its smoothed velocity, so a fast
car at 10 fps, or one whose frame was dropped, still overlaps its
prediction. Why not the ``supervision``/``trackers`` implementation:
``docs/adr/0003-tracker.md``.

Pure numpy, no I/O: the clock is the ``ts`` handed to :meth:`ByteTracker.update`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt

from roadside.edge.analytics.tracker import Track, iou_matrix

if TYPE_CHECKING:  # only its fields are read; settings import this module and need no OpenCV
    from roadside.vision.yolo import Detections

__all__ = ["ByteTracker"]

FloatArray = npt.NDArray[np.float32]


@dataclass(slots=True)
class _State:
    """What the tracker keeps beside the public :class:`Track`."""

    track: Track
    seen_ts: float  # when it last matched a detection
    votes: dict[int, float] = field(default_factory=dict)  # class id -> summed score
    confirmed: bool = False

    def predicted_box(self, now: float, buffer: float) -> tuple[float, float, float, float]:
        """Where the box should be at ``now``, widened by ``buffer`` box sizes per second unseen.

        The widening (C-BIoU's buffered IoU) lets a track hidden for a while,
        that may have turned or slowed, still overlap its object.
        """
        dt = now - self.seen_ts
        vx, vy = self.track.velocity
        x1, y1, x2, y2 = self.track.box
        grow = buffer * max(dt - 0.15, 0.0) / 2  # the first frame or so of a gap needs no widening
        bw, bh = (x2 - x1) * grow, (y2 - y1) * grow
        return (x1 + vx * dt - bw, y1 + vy * dt - bh, x2 + vx * dt + bw, y2 + vy * dt + bh)


def _greedy_match(score: FloatArray, threshold: float) -> list[tuple[int, int]]:
    """Pairs (row, col) by descending score, each row and column used once.

    Greedy rather than Hungarian: a roadside frame holds tens of objects,
    never the crowds where the optimal assignment differs, and it keeps
    scipy off the edge box.
    """
    pairs: list[tuple[int, int]] = []
    if score.size == 0:
        return pairs
    rows: set[int] = set()
    cols: set[int] = set()
    for flat in np.argsort(-score, axis=None, kind="stable"):
        r, c = divmod(int(flat), score.shape[1])
        if score[r, c] < threshold:
            break
        if r in rows or c in cols:
            continue
        rows.add(r)
        cols.add(c)
        pairs.append((r, c))
    return pairs


class ByteTracker:
    """Stable ids for the detections of one stream (implements :class:`~roadside.edge.analytics.tracker.Tracker`).

    ``high_score``: detections at or above it are matched first and may start
    tracks (at or above ``new_track_score``); those between ``low_score`` and
    ``high_score`` only extend tracks seen in the previous frame. A track is
    reported once it has ``min_hits`` matches and is dropped after
    ``max_lost_s`` without one. ``frame_period_s`` is the clock step when
    :meth:`update` gets no timestamp.
    """

    def __init__(
        self,
        high_score: float = 0.5,
        low_score: float = 0.1,
        new_track_score: float = 0.5,
        match_iou: float = 0.2,
        low_match_iou: float = 0.5,
        min_hits: int = 2,
        max_lost_s: float = 2.0,
        lost_buffer: float = 0.5,
        new_track_reach: float = 1.5,
        history: int = 16,
        velocity_smoothing: float = 0.5,
        class_mismatch_penalty: float = 0.5,
        frame_period_s: float = 0.1,
    ) -> None:
        if not 0.0 <= low_score <= high_score <= 1.0:
            raise ValueError(f"need 0 <= low_score <= high_score <= 1, got {low_score}, {high_score}")
        if min_hits < 1 or history < 2 or max_lost_s < 0 or frame_period_s <= 0:
            raise ValueError("need min_hits >= 1, history >= 2, max_lost_s >= 0 and frame_period_s > 0")
        self.high_score = high_score
        self.low_score = low_score
        self.new_track_score = new_track_score
        self.match_iou = match_iou
        self.low_match_iou = low_match_iou
        self.min_hits = min_hits
        self.max_lost_s = max_lost_s
        self.lost_buffer = lost_buffer
        self.new_track_reach = new_track_reach
        self.history = history
        self.velocity_smoothing = velocity_smoothing
        self.class_mismatch_penalty = class_mismatch_penalty
        self.frame_period_s = frame_period_s
        self._states: list[_State] = []
        self._next_id = 1
        self._now: float | None = None

    @property
    def tracks(self) -> list[Track]:
        """Every live track, reported or not (lost ones included)."""
        return [s.track for s in self._states]

    def update(self, detections: Detections, ts: float | None = None) -> list[Track]:
        """Advance one frame; return the confirmed tracks matched in it."""
        now = ts if ts is not None else (self._now or 0.0) + self.frame_period_s
        self._now = now
        self._states = [s for s in self._states if now - s.seen_ts <= self.max_lost_s]
        boxes = detections.boxes.astype(np.float32).reshape(-1, 4)
        scores, classes = detections.scores, detections.class_ids
        high = np.flatnonzero(scores >= self.high_score)
        low = np.flatnonzero((scores >= self.low_score) & (scores < self.high_score))

        states = list(self._states)
        # Stage 1: confident detections against every live track, lost ones included.
        matched, states, high_left = self._associate(states, boxes, classes, high, now, self.match_iou)
        # Stage 2: low-score detections only extend tracks that were there a frame ago;
        # letting them revive lost tracks would stitch noise onto old ids.
        recent = [s for s in states if s.track.missed == 0]
        older = [s for s in states if s.track.missed != 0]
        more, recent, _ = self._associate(recent, boxes, classes, low, now, self.low_match_iou)
        matched += more
        # Stage 3: a track seen once has no velocity to predict with; at a low frame
        # rate a fast car has moved off its first box, so match by nearness and shape.
        left = recent + older
        fresh = [s for s in left if s.track.hits == 1]
        if fresh and high_left and self.new_track_reach > 0:
            pairs = _greedy_match(self._nearness(fresh, boxes[high_left], classes[high_left]), 1e-6)
            matched += [(fresh[r], high_left[c]) for r, c in pairs]
            left = [s for s in left if all(s is not fresh[r] for r, _ in pairs)]
            taken = {high_left[c] for _, c in pairs}
            high_left = [d for d in high_left if d not in taken]
        for state, di in matched:
            self._refresh(state, boxes[di], float(scores[di]), int(classes[di]), now)
        for state in left:
            state.track.missed += 1
        # A tentative track that misses once was most likely a false positive.
        self._states = [s for s in self._states if s.confirmed or s.track.missed == 0]
        for di in high_left:
            if scores[di] >= self.new_track_score:
                self._start(boxes[di], float(scores[di]), int(classes[di]), now)
        return [s.track for s in self._states if s.confirmed and s.track.missed == 0]

    def _associate(
        self,
        states: list[_State],
        boxes: FloatArray,
        classes: npt.NDArray[np.int64],
        candidates: npt.NDArray[np.intp],
        now: float,
        threshold: float,
    ) -> tuple[list[tuple[_State, int]], list[_State], list[int]]:
        """Match ``candidates`` (detection indices) to ``states``; return matches and leftovers."""
        predicted = np.array(
            [s.predicted_box(now, self.lost_buffer) for s in states], dtype=np.float32
        ).reshape(-1, 4)
        score = iou_matrix(predicted, boxes[candidates])
        if score.size:
            # The detector flips car/truck now and then; a class change costs, but does not forbid.
            same = np.array([[s.track.cls == int(classes[d]) for d in candidates] for s in states])
            score = np.where(same, score, score * self.class_mismatch_penalty).astype(np.float32)
        pairs = _greedy_match(score, threshold)
        used_rows = {r for r, _ in pairs}
        used_cols = {c for _, c in pairs}
        matched = [(states[r], int(candidates[c])) for r, c in pairs]
        left_states = [s for i, s in enumerate(states) if i not in used_rows]
        left_dets = [int(d) for i, d in enumerate(candidates) if i not in used_cols]
        return matched, left_states, left_dets

    def _nearness(
        self, states: list[_State], boxes: FloatArray, classes: npt.NDArray[np.int64]
    ) -> FloatArray:
        """Shape IoU (boxes centred on each other) fading to 0 at ``new_track_reach`` box sizes away."""
        own = np.array([s.track.box for s in states], dtype=np.float32).reshape(-1, 4)
        ow, oh = own[:, 2] - own[:, 0], own[:, 3] - own[:, 1]
        dw, dh = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
        inter = np.minimum(ow[:, None], dw[None, :]) * np.minimum(oh[:, None], dh[None, :])
        shape = inter / np.maximum(ow[:, None] * oh[:, None] + dw[None, :] * dh[None, :] - inter, 1e-6)
        ocx, ocy = (own[:, 0] + own[:, 2]) / 2, (own[:, 1] + own[:, 3]) / 2
        dcx, dcy = (boxes[:, 0] + boxes[:, 2]) / 2, (boxes[:, 1] + boxes[:, 3]) / 2
        dist = np.hypot(ocx[:, None] - dcx[None, :], ocy[:, None] - dcy[None, :])
        reach = self.new_track_reach * np.maximum(ow, oh)[:, None]
        score = np.where(shape >= 0.5, shape * np.clip(1.0 - dist / np.maximum(reach, 1e-6), 0.0, 1.0), 0.0)
        same = np.array([[s.track.cls == int(c) for c in classes] for s in states]).reshape(score.shape)
        return np.where(same, score, 0.0).astype(np.float32)

    def _refresh(self, state: _State, box: FloatArray, score: float, cls: int, now: float) -> None:
        track = state.track
        old_cx, old_cy = track.centroid
        dt = now - state.seen_ts
        track.box = (float(box[0]), float(box[1]), float(box[2]), float(box[3]))
        new_cx, new_cy = track.centroid
        if dt > 0:
            measured = ((new_cx - old_cx) / dt, (new_cy - old_cy) / dt)
            # The first step sets the velocity; later ones are smoothed against box jitter.
            a = 1.0 if track.hits == 1 else self.velocity_smoothing
            vx, vy = track.velocity
            track.velocity = (vx + a * (measured[0] - vx), vy + a * (measured[1] - vy))
        state.votes[cls] = state.votes.get(cls, 0.0) + score
        track.cls = max(state.votes, key=lambda c: state.votes[c])
        track.score = score
        track.hits += 1
        track.missed = 0
        state.seen_ts = now
        state.confirmed = state.confirmed or track.hits >= self.min_hits
        track.history.append((new_cx, new_cy))
        del track.history[: -self.history]

    def _start(self, box: FloatArray, score: float, cls: int, now: float) -> None:
        track = Track(self._next_id, cls, (float(box[0]), float(box[1]), float(box[2]), float(box[3])), score)
        track.history.append(track.centroid)
        self._next_id += 1
        self._states.append(_State(track, now, {cls: score}, confirmed=self.min_hits <= 1))
