"""Plane geometry in image pixels (x right, y down): polygons, anchors, crossing times."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

from roadside.edge.analytics.lines import Point

__all__ = ["Anchor", "Polygon", "anchor_point", "convex_hull", "crossing_fraction", "point_in_polygon"]

Polygon = Sequence[Point]
# Where a box "is": its centre, or the middle of its bottom edge, where the object meets the
# road. Zones and lanes are drawn on the road surface, so the ground point is the honest one
# for them; a tall truck's centre can hang over the next lane up.
Anchor = Literal["centroid", "bottom_center"]


def anchor_point(box: tuple[float, float, float, float], anchor: Anchor) -> Point:
    """The point of an xyxy box that stands for the object."""
    x1, y1, x2, y2 = box
    if anchor == "bottom_center":
        return ((x1 + x2) / 2.0, y2)
    return ((x1 + x2) / 2.0, (y1 + y2) / 2.0)


def point_in_polygon(point: Point, polygon: Polygon) -> bool:
    """Whether ``point`` is inside ``polygon`` (even-odd rule; any simple or self-touching ring).

    Half-open on edges, so a point on the border shared by two adjacent
    polygons (two lanes) is in exactly one of them.
    """
    x, y = point
    inside = False
    n = len(polygon)
    for i in range(n):
        x1, y1 = polygon[i]
        x2, y2 = polygon[(i + 1) % n]
        if (y1 > y) != (y2 > y):
            x_at = x1 + (y - y1) * (x2 - x1) / (y2 - y1)
            if x < x_at:
                inside = not inside
    return inside


def convex_hull(points: Sequence[Point]) -> list[Point]:
    """The convex hull of ``points``, counter-clockwise in x-right/y-up terms (monotone chain)."""
    unique = sorted(set(points))
    if len(unique) < 3:
        return unique

    def half(ordered: list[Point]) -> list[Point]:
        chain: list[Point] = []
        for p in ordered:
            while len(chain) >= 2 and _cross(chain[-2], chain[-1], p) <= 0:
                chain.pop()
            chain.append(p)
        return chain[:-1]

    return half(unique) + half(unique[::-1])


def _cross(o: Point, a: Point, b: Point) -> float:
    return (a[0] - o[0]) * (b[1] - o[1]) - (a[1] - o[1]) * (b[0] - o[0])


def crossing_fraction(start: Point, end: Point, prev: Point, curr: Point) -> float:
    """Where along the step ``prev → curr`` (0..1) it meets the infinite line through ``start → end``.

    With the step's timestamps this dates a crossing between two frames,
    which is what makes a speed trap accurate at 10 fps.
    """
    dx, dy = end[0] - start[0], end[1] - start[1]
    side_prev = dx * (prev[1] - start[1]) - dy * (prev[0] - start[0])
    side_curr = dx * (curr[1] - start[1]) - dy * (curr[0] - start[0])
    if side_prev == side_curr:
        return 1.0
    return min(max(side_prev / (side_prev - side_curr), 0.0), 1.0)
