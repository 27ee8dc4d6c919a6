"""Polygons, anchor points and crossing times."""

from __future__ import annotations

import itertools
import math

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from roadside.edge.analytics.geometry import anchor_point, crossing_fraction, point_in_polygon
from roadside.edge.analytics.lines import crossing_direction

coord = st.floats(min_value=-1000, max_value=1000, allow_nan=False)
point = st.tuples(coord, coord)


def rect(x1: float, y1: float, x2: float, y2: float) -> list[tuple[float, float]]:
    return [(x1, y1), (x2, y1), (x2, y2), (x1, y2)]


@given(point, point, point)
def test_point_in_rectangle_agrees_with_the_bounds(
    p: tuple[float, float], a: tuple[float, float], b: tuple[float, float]
) -> None:
    x1, x2 = sorted((a[0], b[0]))
    y1, y2 = sorted((a[1], b[1]))
    # Points on the border are left out: which side they fall is a convention, tested below.
    assume((x1 < p[0] < x2 and y1 < p[1] < y2) or not (x1 <= p[0] <= x2 and y1 <= p[1] <= y2))
    assert point_in_polygon(p, rect(x1, y1, x2, y2)) == (x1 < p[0] < x2 and y1 < p[1] < y2)


@given(st.floats(min_value=0, max_value=100), st.floats(min_value=0, max_value=100))
def test_two_lanes_sharing_an_edge_split_the_plane_between_them(x: float, y: float) -> None:
    upper, lower = rect(0, 0, 100, 50), rect(0, 50, 100, 100)
    assume(0 < x < 100 and 0 < y < 100)
    assert point_in_polygon((x, y), upper) + point_in_polygon((x, y), lower) == 1


def test_concave_polygon() -> None:
    ell = [(0.0, 0.0), (10.0, 0.0), (10.0, 2.0), (2.0, 2.0), (2.0, 10.0), (0.0, 10.0)]
    assert point_in_polygon((1.0, 9.0), ell)
    assert point_in_polygon((9.0, 1.0), ell)
    assert not point_in_polygon((5.0, 5.0), ell)


def test_anchor_points() -> None:
    box = (10.0, 20.0, 30.0, 60.0)
    assert anchor_point(box, "centroid") == (20.0, 40.0)
    assert anchor_point(box, "bottom_center") == (20.0, 60.0)


@given(point, point, point, point)
def test_reversing_a_step_reverses_the_crossing(
    a: tuple[float, float], b: tuple[float, float], p: tuple[float, float], q: tuple[float, float]
) -> None:
    there = crossing_direction(a, b, p, q)
    back = crossing_direction(a, b, q, p)
    assert (there is None) == (back is None)
    if there is not None:
        assert {there, back} == {"in", "out"}


@given(
    point,
    point,
    point,
    st.floats(min_value=0.01, max_value=0.99),
    st.floats(min_value=0.05, max_value=20),
)
def test_the_crossing_fraction_finds_where_the_step_meets_the_line(
    a: tuple[float, float], b: tuple[float, float], p: tuple[float, float], t: float, s: float
) -> None:
    # A step from p through the point m on the segment, on for s times as far again.
    m = (a[0] + t * (b[0] - a[0]), a[1] + t * (b[1] - a[1]))
    q = (m[0] + s * (m[0] - p[0]), m[1] + s * (m[1] - p[1]))
    assume(math.dist(a, b) > 1 and math.dist(p, m) > 1)
    cross = (b[0] - a[0]) * (p[1] - a[1]) - (b[1] - a[1]) * (p[0] - a[0])
    assume(abs(cross) / math.dist(a, b) > 1)  # p is off the line, so the step does cross it
    assert crossing_fraction(a, b, p, q) == pytest.approx(1 / (1 + s), rel=1e-6, abs=1e-9)


def test_crossing_fraction_of_a_plain_step() -> None:
    assert crossing_fraction((100.0, 0.0), (100.0, 50.0), (90.0, 10.0), (130.0, 10.0)) == pytest.approx(0.25)


@given(st.lists(st.sampled_from([90.0, 95.0, 100.0, 100.0, 105.0, 110.0]), min_size=1, max_size=12))
def test_a_path_that_only_moves_forward_counts_exactly_once(middle: list[float]) -> None:
    line = ((100.0, 0.0), (100.0, 200.0))
    xs = [80.0, *sorted(middle), 120.0]  # may stop on the line, even twice
    hits = [crossing_direction(*line, (a, 50.0), (b, 50.0)) for a, b in itertools.pairwise(xs)]
    assert [h for h in hits if h is not None] == ["in"]
    back = [crossing_direction(*line, (a, 50.0), (b, 50.0)) for a, b in itertools.pairwise(xs[::-1])]
    assert [h for h in back if h is not None] == ["out"]
