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


def _cross(o: Point, a: Point, b: Point) -> float:
    return (a[0] - o[0]) * (b[1] - o[1]) - (a[1] - o[1]) * (b[0] - o[0])


def crossing_direction(start: Point, end: Point, prev: Point, curr: Point) -> Direction | None:
    """How the step ``prev → curr`` crosses the segment ``start → end``, if it does.

    ``in`` means from the line's left side (positive cross product, image
    coordinates with y down) to its right side. Touching an end point counts;
    a step that merely ends on the line does not, so one pass is one crossing.
    """
    side_prev = _cross(start, end, prev)
    side_curr = _cross(start, end, curr)
    if side_prev == 0 or (side_prev > 0) == (side_curr > 0) or side_curr == 0:
        return None
    s1 = _cross(prev, curr, start)
    s2 = _cross(prev, curr, end)
    if s1 != 0 and s2 != 0 and (s1 > 0) == (s2 > 0):
        return None  # the step crosses the infinite line outside the segment
    return "in" if side_prev > 0 else "out"


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
