"""Turning movements from imperfect tracks: a track broken in the junction box, jitter at an approach's outer end."""

from __future__ import annotations

from roadside.edge.analytics.detectors import ApproachConfig, Occupant
from roadside.edge.analytics.geometry import convex_hull, point_in_polygon
from roadside.edge.analytics.movements import MovementCounter
from roadside.shared.schemas import TurningMovement
from roadside.vision.calibration import Camera, PoseCalibration

T0 = 1_779_999_300.0  # on a 15-minute boundary
STEP_S = 0.2  # 5 fps, as the junction camera runs

# A camera high south of a four-leg junction at the road origin; legs 6-16 m out, 8 m wide.
POSE = PoseCalibration(x=0, y=-30, height=20, heading=0, tilt=45, hfov=90, width=640, height_px=480)
LEGS = [
    ApproachConfig(name="north", space="road", polygon=[(-4, 6), (4, 6), (4, 16), (-4, 16)]),
    ApproachConfig(name="south", space="road", polygon=[(-4, -16), (4, -16), (4, -6), (-4, -6)]),
    ApproachConfig(name="east", space="road", polygon=[(6, -4), (16, -4), (16, 4), (6, 4)]),
    ApproachConfig(name="west", space="road", polygon=[(-16, -4), (-6, -4), (-6, 4), (-16, 4)]),
]

RoadPath = list[tuple[float, float]]


def southbound(y0: float, y1: float, x: float = -2.0) -> RoadPath:
    """A car heading south at 10 m/s (2 m a frame) from ``y0`` to ``y1``."""
    n = round(abs(y0 - y1) / 2.0) + 1
    return [(x, y0 + (y1 - y0) * k / (n - 1)) for k in range(n)]


def drive(counter: MovementCounter, pieces: list[tuple[int, int, RoadPath]]) -> list[TurningMovement]:
    """Each piece: track id, the frame it starts at, its road positions (one a frame); then flush."""
    camera = Camera.from_calibration(POSE)
    out: list[TurningMovement] = []
    frames = max(start + len(path) for _, start, path in pieces)
    for i in range(frames):
        occupants = []
        for track_id, start, path in pieces:
            if start <= i < start + len(path):
                u, v = camera.road_to_image([list(path[i - start])])[0]
                occupants.append(Occupant(track_id, "car", (float(u), float(v))))
        out += counter.update(T0 + i * STEP_S, occupants)
    return out + counter.flush()


def counts(records: list[TurningMovement]) -> dict[tuple[str, str], int]:
    got: dict[tuple[str, str], int] = {}
    for r in records:
        got[(r.entry, r.exit)] = got.get((r.entry, r.exit), 0) + r.count
    return got


def counter(**kwargs: float) -> MovementCounter:
    return MovementCounter("junction", LEGS, 900, Camera.from_calibration(POSE), **kwargs)


def test_a_track_broken_in_the_junction_box_is_counted_once() -> None:
    # Lost for three frames in the box (0 m to -6 m), then found again as a new track.
    entrance, exit_ = southbound(14, 0), southbound(-6, -14)
    records = drive(counter(), [(1, 0, entrance), (2, len(entrance) + 2, exit_)])
    assert counts(records) == {("north", "south"): 1}


def test_without_joining_the_broken_pieces_count_nothing() -> None:
    entrance, exit_ = southbound(14, 0), southbound(-6, -14)
    records = drive(counter(join_reach_m=0), [(1, 0, entrance), (2, len(entrance) + 2, exit_)])
    assert counts(records) == {}


def test_the_reach_grows_with_the_time_unseen() -> None:
    # Lost for 1.2 s while it turns west: found 8 m from where its straight line puts it, too
    # far for a track lost a moment ago, within reach (4 m + 4 m/s x 1.2 s) for one unseen that long.
    entrance = southbound(14, 2)
    turned = [(-6.0 - 2.0 * k, -3.0) for k in range(6)]
    pieces = [(1, 0, entrance), (2, len(entrance) + 5, turned)]
    assert counts(drive(counter(join_spread_ms=0), pieces)) == {}
    assert counts(drive(counter(), pieces)) == {("north", "west"): 1}


def test_a_new_track_back_in_the_approach_left_is_another_vehicle() -> None:
    # A southbound car is lost in the box; a car then appears at the north stop line, within
    # reach of where the lost one was: the lost one did not turn round, so no U-turn is made up.
    entrance = [(-2.0, 14.0 - k) for k in range(13)]  # 5 m/s, to (-2, 2)
    queued = [(-2.0, 6.5)] * 8
    records = drive(counter(join_spread_ms=8), [(1, 0, entrance), (2, len(entrance) + 1, queued)])
    assert counts(records) == {}


def test_a_new_track_out_of_reach_is_another_vehicle() -> None:
    # A car appears on the west leg while a southbound one is lost in the box: not its continuation.
    entrance = southbound(14, 0)
    westbound = [(-6.0 - 2.0 * k, 2.0) for k in range(6)]
    records = drive(counter(), [(1, 0, entrance), (2, len(entrance) + 2, westbound)])
    assert counts(records) == {}


def test_a_second_box_on_a_tracked_vehicle_takes_nothing_from_it() -> None:
    # A duplicate box starts track 2 just beside track 1 for a few frames in the box; track 1 is
    # still seen in those frames (listed after it), so it keeps its entrance.
    whole = southbound(14, -14)
    duplicate = [(-1.5, 1.0), (-1.5, -1.0), (-1.5, -3.0)]
    records = drive(counter(), [(2, 6, duplicate), (1, 0, whole)])
    assert counts(records) == {("north", "south"): 1}


def test_a_finished_track_is_not_continued() -> None:
    # Two cars one after the other, each seen from entrance to exit: two movements, never joined.
    whole = southbound(14, -14)
    records = drive(counter(), [(1, 0, whole), (2, len(whole) + 1, whole)])
    assert counts(records) == {("north", "south"): 2}


def test_jitter_beyond_an_approachs_outer_end_is_not_a_uturn() -> None:
    # Queued at the far end of the north leg, its anchor steps out past the polygon's end for
    # 1.4 s (longer than uturn_gap_s) and back, then its track is lost: away from the junction,
    # so no U-turn, and a track seen in one approach only counts nothing.
    queued = [(-2.0, 15.6)] * 5 + [(-2.0, 16.4)] * 7 + [(-2.0, 15.6)] * 5
    records = drive(counter(), [(1, 0, queued)])
    assert counts(records) == {}


def test_a_uturn_through_the_junction_is_still_counted() -> None:
    there = southbound(14, 0)
    back = [(2.0, 2.0 * k) for k in range(8)]  # turns round in the box, leaves north
    records = drive(counter(), [(1, 0, there + back)])
    assert counts(records) == {("north", "north"): 1}


def test_convex_hull_of_squares() -> None:
    squares = [(0.0, 0.0), (1.0, 0.0), (1.0, 1.0), (0.0, 1.0), (3.0, 3.0), (4.0, 3.0), (4.0, 4.0), (3.0, 4.0)]
    hull = convex_hull(squares)
    assert set(hull) == {(0.0, 0.0), (1.0, 0.0), (4.0, 3.0), (4.0, 4.0), (3.0, 4.0), (0.0, 1.0)}
    assert point_in_polygon((2.0, 2.0), hull)
    assert not point_in_polygon((3.0, 0.5), hull)
    assert convex_hull([(1.0, 1.0), (1.0, 1.0)]) == [(1.0, 1.0)]
