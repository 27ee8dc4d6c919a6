"""The ByteTrack-style tracker: ids kept through fast motion, gaps, low scores and class flicker."""

from __future__ import annotations

import numpy as np
import pytest

from roadside.edge.analytics.bytetrack import ByteTracker
from roadside.edge.analytics.tracker import Track, Tracker
from roadside.vision.yolo import Detections

Det = tuple[float, float, float, float, float, int]


def dets(*objects: Det) -> Detections:
    """Detections from (x1, y1, x2, y2, score, class) tuples."""
    if not objects:
        return Detections.empty()
    arr = np.array(objects, dtype=np.float64)
    return Detections(
        boxes=arr[:, :4].astype(np.float32),
        scores=arr[:, 4].astype(np.float32),
        class_ids=arr[:, 5].astype(np.int64),
    )


def car_at(x: float, score: float = 0.9, cls: int = 0, y: float = 100.0) -> Det:
    return (x, y, x + 60.0, y + 30.0, score, cls)


def ids(tracks: list[Track]) -> list[int]:
    return sorted(t.track_id for t in tracks)


def test_it_is_a_tracker() -> None:
    tracker: Tracker = ByteTracker()
    assert tracker.update(Detections.empty(), 0.0) == []


def test_a_track_is_reported_from_its_second_sighting_with_both_points_in_its_history() -> None:
    tracker = ByteTracker(min_hits=2)
    assert tracker.update(dets(car_at(0)), 0.0) == []
    (track,) = tracker.update(dets(car_at(10)), 0.1)
    assert track.history == [(30.0, 115.0), (40.0, 115.0)]
    assert track.velocity == pytest.approx((100.0, 0.0))


def test_a_fast_car_keeps_its_id_when_each_step_is_longer_than_the_car() -> None:
    # 80 px per frame with a 60 px box: consecutive boxes never overlap; only prediction links them.
    tracker = ByteTracker()
    seen: set[int] = set()
    for k in range(10):
        seen.update(ids(tracker.update(dets(car_at(80.0 * k)), 0.1 * k)))
    assert len(seen) == 1


def test_dropped_frames_are_bridged_by_timestamps() -> None:
    tracker = ByteTracker()
    seen: set[int] = set()
    for k in (0, 1, 2, 5, 6, 9, 10):  # frames 3, 4, 7 and 8 never arrived
        seen.update(ids(tracker.update(dets(car_at(20.0 * k)), 0.1 * k)))
    assert len(seen) == 1


def test_an_occluded_track_comes_back_with_its_id_and_is_forgotten_after_max_lost() -> None:
    tracker = ByteTracker(max_lost_s=1.0)
    for k in range(3):
        reported = tracker.update(dets(car_at(10.0 * k)), 0.1 * k)
    first = reported[0].track_id
    for k in range(3, 8):  # behind a truck for half a second
        assert tracker.update(Detections.empty(), 0.1 * k) == []
    (back,) = tracker.update(dets(car_at(80.0)), 0.8)
    assert back.track_id == first
    assert back.history[-2:] == [(50.0, 115.0), (110.0, 115.0)]  # the gap is one step
    for k in range(9, 21):
        tracker.update(Detections.empty(), 0.1 * k)
    assert tracker.tracks == []


def test_low_score_detections_extend_tracks_but_never_start_them() -> None:
    tracker = ByteTracker(high_score=0.5, low_score=0.1)
    tracker.update(dets(car_at(0)), 0.0)
    (track,) = tracker.update(dets(car_at(5)), 0.1)
    (dim,) = tracker.update(dets(car_at(10, score=0.2)), 0.2)  # half hidden behind a lamp post
    assert dim.track_id == track.track_id
    assert tracker.update(dets(car_at(300, score=0.3)), 0.3) == []
    assert len(tracker.tracks) == 1


def test_a_single_false_positive_never_becomes_a_track() -> None:
    tracker = ByteTracker()
    tracker.update(dets(car_at(200)), 0.0)
    tracker.update(Detections.empty(), 0.1)
    assert tracker.tracks == []


def test_class_flicker_keeps_the_id_and_the_majority_class() -> None:
    tracker = ByteTracker()
    classes = [1, 1, 0, 1, 1, 0, 1]  # a truck the detector calls a car now and then
    reported = [tracker.update(dets(car_at(8.0 * k, cls=c)), 0.1 * k) for k, c in enumerate(classes)]
    assert {t.track_id for frame in reported for t in frame} == {1}
    assert reported[-1][0].cls == 1


def test_two_cars_passing_in_opposite_directions_keep_their_ids() -> None:
    tracker = ByteTracker()
    by_direction: dict[str, set[int]] = {"east": set(), "west": set()}
    for k in range(12):
        east, west = car_at(20.0 * k, y=100), car_at(240 - 20.0 * k, y=110)
        for track in tracker.update(dets(east, west), 0.1 * k):
            by_direction["east" if track.velocity[0] > 0 else "west"].add(track.track_id)
    assert len(by_direction["east"]) == 1
    assert len(by_direction["west"]) == 1
    assert by_direction["east"] != by_direction["west"]


def test_without_timestamps_the_frame_period_is_the_clock() -> None:
    tracker = ByteTracker(frame_period_s=0.1)
    tracker.update(dets(car_at(0)))
    (track,) = tracker.update(dets(car_at(10)))
    assert track.velocity == pytest.approx((100.0, 0.0))


def test_settings_are_checked() -> None:
    with pytest.raises(ValueError, match="low_score"):
        ByteTracker(high_score=0.3, low_score=0.5)
    with pytest.raises(ValueError, match="min_hits"):
        ByteTracker(min_hits=0)
