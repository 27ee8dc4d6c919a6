"""The vision event rules on hand-built sightings."""

from __future__ import annotations

from dataclasses import replace

from roadside.edge.analytics.config import EventRules, LaneConfig
from roadside.edge.analytics.rules import PedestrianInRoadwayRule, Sighting, StoppedVehicleRule, WrongWayRule

EAST = LaneConfig(id=2, polygon=[(0, 0), (640, 0), (640, 40), (0, 40)], direction=(1.0, 0.0))
RULES = EventRules(wrong_way_frames=3, stopped_s=5.0, pedestrian_s=2.0, cooldown_s=60.0)


def car(ts: float, x: float, vx: float | None, track_id: int = 1, **kw: object) -> Sighting:
    base = Sighting(
        ts=ts,
        track_id=track_id,
        cls="car",
        anchor=(x, 30.0),
        size=30.0,
        velocity=None if vx is None else (vx, 0.0),
        lane=EAST,
        roadway="roadway",
        in_crosswalk=False,
    )
    return replace(base, **kw)  # type: ignore[arg-type]


def run(
    rule: WrongWayRule | StoppedVehicleRule | PedestrianInRoadwayRule, sightings: list[Sighting]
) -> list[float]:
    return [s.ts for s in sightings if rule.check(s)]


def test_wrong_way_fires_once_after_n_frames_against_the_lane() -> None:
    rule = WrongWayRule(RULES)
    frames = [car(0.1 * k, 600 - 15 * k, -150.0) for k in range(20)]
    assert run(rule, frames) == [0.2]  # the third frame against the lane


def test_wrong_way_needs_consecutive_frames() -> None:
    rule = WrongWayRule(RULES)
    speeds = [-150.0, -150.0, 150.0, -150.0, -150.0, None, -150.0]
    assert run(rule, [car(0.1 * k, 300, v) for k, v in enumerate(speeds)]) == []


def test_wrong_way_ignores_legal_traffic_jitter_crossing_and_pedestrians() -> None:
    rule = WrongWayRule(RULES)
    legal = [car(0.1 * k, 15 * k, 150.0) for k in range(10)]
    jitter = [car(0.1 * k, 300, -5.0, track_id=2) for k in range(10)]  # < 0.5 box heights/s
    across = [car(0.1 * k, 300, None, track_id=3, velocity=(-10.0, 150.0)) for k in range(10)]
    walker = [car(0.1 * k, 300, -150.0, track_id=4, cls="pedestrian") for k in range(10)]
    no_direction = [
        car(0.1 * k, 300, -150.0, track_id=5, lane=EAST.model_copy(update={"direction": None}))
        for k in range(10)
    ]
    for frames in (legal, jitter, across, walker, no_direction):
        assert run(rule, frames) == []


def test_wrong_way_cools_down_then_reminds() -> None:
    rule = WrongWayRule(RULES)
    frames = [car(float(k), 600 - k, -150.0) for k in range(130)]  # one frame a second, for 130 s
    assert run(rule, frames) == [2.0, 62.0, 122.0]


def test_stopped_vehicle_after_t_seconds_within_the_drift_radius() -> None:
    rule = StoppedVehicleRule(RULES)
    frames = [car(0.5 * k, 300 + (k % 3), 0.0) for k in range(20)]  # box jitter of 2 px
    assert run(rule, frames) == [5.0]


def test_a_slow_queue_or_a_car_outside_the_roadway_is_not_stopped() -> None:
    rule = StoppedVehicleRule(RULES)
    creeping = [car(0.5 * k, 300 + 5 * k, 10.0) for k in range(40)]  # 10 px/s: a radius every 1 s
    parked = [car(0.5 * k, 300, 0.0, track_id=2, roadway=None) for k in range(40)]
    walker = [car(0.5 * k, 300, 0.0, track_id=3, cls="pedestrian") for k in range(40)]
    for frames in (creeping, parked, walker):
        assert run(rule, frames) == []


def test_stopped_clock_restarts_when_the_vehicle_moves_on() -> None:
    rule = StoppedVehicleRule(RULES)
    xs = [300.0] * 8 + [340.0] + [340.0] * 12  # stops 4 s, moves 40 px, stops again
    assert run(rule, [car(0.5 * k, x, 0.0) for k, x in enumerate(xs)]) == [9.0]


def walker(ts: float, track_id: int = 1, **kw: object) -> Sighting:
    return car(ts, 300, 0.0, track_id=track_id, cls="pedestrian", **kw)


def test_pedestrian_in_roadway_after_t_seconds() -> None:
    rule = PedestrianInRoadwayRule(RULES)
    assert run(rule, [walker(0.5 * k) for k in range(10)]) == [2.0]


def test_pedestrian_on_a_crosswalk_or_sidewalk_is_fine() -> None:
    rule = PedestrianInRoadwayRule(RULES)
    on_crosswalk = [walker(0.5 * k, in_crosswalk=True) for k in range(10)]
    on_sidewalk = [walker(0.5 * k, track_id=2, roadway=None) for k in range(10)]
    assert run(rule, on_crosswalk + on_sidewalk) == []


def test_a_pedestrian_stepping_off_the_crosswalk_starts_the_clock_there() -> None:
    rule = PedestrianInRoadwayRule(RULES)
    frames = [walker(0.5 * k, in_crosswalk=k < 4) for k in range(12)]
    assert run(rule, frames) == [4.0]


def test_forgetting_a_track_clears_its_cool_down() -> None:
    rule = PedestrianInRoadwayRule(RULES.model_copy(update={"pedestrian_s": 0.0}))
    assert rule.check(walker(0.0))
    assert not rule.check(walker(1.0))
    rule.forget(1)
    assert rule.check(walker(2.0))
