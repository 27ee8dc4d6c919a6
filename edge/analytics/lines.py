"""Directional line crossing: a track's last step intersects a counting line."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Point = tuple[float, float]
Direction = Literal["in", "out"]


@dataclass(frozen=True, slots=True)
class LineCrossing:
    line: str
    track_id: int
    cls: int
    direction: Direction
    score: float
    lane: int | None = None  # the lane the object was in, where lanes are configured


def _cross(o: Point, a: Point, b: Point) -> float:
    return (a[0] - o[0]) * (b[1] - o[1]) - (a[1] - o[1]) * (b[0] - o[0])


def crossing_direction(start: Point, end: Point, prev: Point, curr: Point) -> Direction | None:
    """How the step ``prev → curr`` crosses the segment ``start → end``, if it does.

    ``in`` means from the line's left side (positive cross product, image
    coordinates with y down) to its right side. A point exactly on the line
    belongs to the right side, so a track that lands on the line and then
    leaves it counts exactly once, whichever way it goes on. Touching an end
    point of the segment counts.
    """
    left_prev = _cross(start, end, prev) > 0
    left_curr = _cross(start, end, curr) > 0
    if left_prev == left_curr:
        return None
    # Which way round the step is does not change the answer; one fixed order keeps
    # float rounding from making a step and its reverse disagree at a touched end point.
    o, d = (prev, curr) if prev <= curr else (curr, prev)
    s1 = _cross(o, d, start)
    s2 = _cross(o, d, end)
    if s1 != 0 and s2 != 0 and (s1 > 0) == (s2 > 0):
        return None  # the step crosses the infinite line outside the segment
    return "in" if left_prev else "out"


@dataclass(frozen=True, slots=True)
class CountingLine:
    name: str
    start: Point
    end: Point

    def check(self, track_id: int, cls: int, score: float, prev: Point, curr: Point) -> LineCrossing | None:
        direction = crossing_direction(self.start, self.end, prev, curr)
        if direction is None:
            return None
        return LineCrossing(self.name, track_id, cls, direction, score)
