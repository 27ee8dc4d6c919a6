"""Virtual detector zones, camera health and turning-movement counts (issue 11, item 2): pure cores."""

from __future__ import annotations

from datetime import UTC, datetime

import numpy as np
import numpy.typing as npt
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from roadside.edge.analytics.camera_health import CameraHealth, frame_stats
from roadside.edge.analytics.detectors import (
    ApproachConfig,
    CameraDetectors,
    CameraHealthConfig,
    DetectorZoneConfig,
    Occupant,
    ZoneBank,
)
from roadside.edge.analytics.movements import MovementCounter, ZoneStatistics
from roadside.edge.analytics.signals import CameraSignals
from roadside.edge.analytics.tracker import Track
from roadside.shared.schemas import DetectorMessage, TurningMovement, encode
from roadside.vision.calibration import PoseCalibration

STOP = DetectorZoneConfig(name="nb-stop-1", polygon=[(100, 300), (200, 300), (200, 400), (100, 400)])
PED = DetectorZoneConfig(
    name="ped-ne", kind="pedestrian", polygon=[(300, 300), (360, 300), (360, 360), (300, 360)]
)
T0 = 1_779_999_300.0  # an epoch second on a 15-minute boundary (divisible by 900)


def bank(*zones: DetectorZoneConfig) -> ZoneBank:
    return ZoneBank(CameraDetectors(zones=list(zones)))


def car(track_id: int, x: float, y: float, cls: str = "car") -> Occupant:
    return Occupant(track_id, cls, (x, y))


def test_zone_turns_on_in_the_frame_the_first_car_enters_and_off_when_the_last_leaves() -> None:
    b = bank(STOP)
    # A recorded pair of tracks: car 1 drives through, car 2 follows and stops inside.
    frames = [
        [car(1, 150, 250)],
        [car(1, 150, 310)],  # enters
        [car(1, 150, 380), car(2, 150, 260)],
        [car(1, 150, 420), car(2, 150, 320)],  # 1 leaves while 2 is in: stays on
        [car(2, 150, 330)],
        [car(2, 150, 450)],  # last leaves
        [],
    ]
    seen = [[(c.state, c.occupants) for c in b.update(T0 + i / 10, f)] for i, f in enumerate(frames)]
    assert seen == [[], [("on", 1)], [], [], [], [("off", 0)], []]


def test_only_the_zone_classes_call() -> None:
    b = bank(STOP, PED)
    assert b.update(T0, [car(1, 150, 350, "person"), car(2, 330, 330, "car")]) == []
    changes = b.update(T0 + 0.1, [car(3, 330, 330, "person")])
    assert [(c.zone, c.kind, c.state) for c in changes] == [("ped-ne", "pedestrian", "on")]


def test_off_delay_holds_the_call_like_a_loop_cards_extension() -> None:
    zone = STOP.model_copy(update={"off_delay_s": 0.5})
    b = bank(zone)
    assert [c.state for c in b.update(T0, [car(1, 150, 350)])] == ["on"]
    assert b.update(T0 + 0.1, []) == []
    assert b.update(T0 + 0.4, []) == []
    assert b.update(T0 + 0.45, [car(2, 150, 350)]) == []  # back before the delay ran out: no flicker
    assert b.update(T0 + 0.5, []) == []
    assert [c.state for c in b.update(T0 + 1.0, [])] == ["off"]


def test_fault_holds_a_constant_call_and_restoration_reports_the_true_state() -> None:
    b = bank(STOP, PED)
    b.update(T0, [car(1, 150, 350)])
    faults = b.fail(T0 + 1, "dark")
    assert [(c.zone, c.state, c.reason) for c in faults] == [
        ("nb-stop-1", "fault", "dark"),
        ("ped-ne", "fault", "dark"),
    ]
    assert b.state() == {"nb-stop-1": True, "ped-ne": True}  # fail safe: every zone calls
    assert b.fail(T0 + 2, "frozen") == []  # one fault at a time
    assert b.update(T0 + 3, []) == []  # changes while failed are not reported
    restored = b.restore(T0 + 4)
    assert [(c.zone, c.state) for c in restored] == [
        ("nb-stop-1", "restored"),
        ("nb-stop-1", "off"),
        ("ped-ne", "restored"),
        ("ped-ne", "off"),
    ]
    assert b.state() == {"nb-stop-1": False, "ped-ne": False}


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.lists(st.tuples(st.integers(0, 5), st.floats(0, 400), st.floats(200, 500)), max_size=6),
        max_size=40,
    )
)
def test_zone_events_alternate_and_follow_occupancy(frames: list[list[tuple[int, float, float]]]) -> None:
    b = bank(STOP)
    state = False
    for i, frame in enumerate(frames):
        unique = {tid: (x, y) for tid, x, y in frame}
        occupants = [car(tid, x, y) for tid, (x, y) in unique.items()]
        for change in b.update(T0 + i * 0.1, occupants):
            assert change.state == ("off" if state else "on")  # on and off alternate, never repeat
            state = not state
        inside = any(100 <= x < 200 and 300 <= y < 400 for x, y in unique.values())
        assert state == inside  # the output is the occupancy in the very same frame


def test_zones_in_road_metres_need_a_calibration_and_project_through_it() -> None:
    road = DetectorZoneConfig(name="r", space="road", polygon=[(-2, 5), (2, 5), (2, 10), (-2, 10)])
    with pytest.raises(ValidationError, match="no calibration"):
        CameraDetectors(zones=[road])
    pose = PoseCalibration(x=0, y=-10, height=8, heading=0, tilt=25, hfov=70, width=640, height_px=480)
    config = CameraDetectors(zones=[road], calibration=pose)
    b = ZoneBank(config)
    camera = config.camera()
    assert camera is not None
    inside = camera.road_to_image([[0.0, 7.0]])[0]
    outside = camera.road_to_image([[0.0, 14.0]])[0]
    assert [c.state for c in b.update(T0, [car(1, float(inside[0]), float(inside[1]))])] == ["on"]
    assert [c.state for c in b.update(T0 + 0.1, [car(1, float(outside[0]), float(outside[1]))])] == ["off"]


def test_zone_names_unique_and_one_approach_refused() -> None:
    with pytest.raises(ValidationError, match="repeated: nb-stop-1"):
        CameraDetectors(zones=[STOP, STOP])
    with pytest.raises(ValidationError, match="at least two approaches"):
        CameraDetectors(approaches=[ApproachConfig(name="north", polygon=[(0, 0), (1, 0), (1, 1)])])


# Camera health ----------------------------------------------------------------------

HEALTH = CameraHealthConfig(lost_s=1.0, frozen_s=2.0, bad_s=1.0, restore_s=1.0)


def scene(rng: np.random.Generator) -> npt.NDArray[np.uint8]:
    return rng.integers(40, 200, size=(120, 160, 3), dtype=np.uint8)


def test_frozen_dark_obscured_and_lost_cameras_fail_and_restore() -> None:
    rng = np.random.default_rng(1)
    frozen = scene(rng)  # the frame a frozen camera repeats
    bad_pictures: list[tuple[npt.NDArray[np.uint8], str]] = [
        (frozen, "frozen"),
        (np.zeros((120, 160, 3), np.uint8), "dark"),
        (np.full((120, 160, 3), 128, np.uint8), "obscured"),
    ]
    for bad, reason in bad_pictures:
        h = CameraHealth(HEALTH)
        t = T0
        for _ in range(10):
            assert h.frame(t, frame_stats(scene(rng))) is None
            t += 0.1
        changes = []
        for _ in range(30):  # 3 s of the bad picture
            changes.append(h.frame(t, frame_stats(bad)))
            t += 0.1
        failed = [c for c in changes if c is not None]
        assert [c.reason for c in failed] == [reason], reason
        changes = []
        for _ in range(20):  # 2 s of a good picture again
            changes.append(h.frame(t, frame_stats(scene(rng))))
            t += 0.1
        restored = [c for c in changes if c is not None]
        assert [c.reason for c in restored] == [None], reason
        assert restored[0].ts - failed[0].ts >= HEALTH.restore_s
    h = CameraHealth(HEALTH)
    h.frame(T0, frame_stats(scene(rng)))
    assert h.tick(T0 + 0.5) is None
    lost = h.tick(T0 + 1.2)
    assert lost is not None
    assert lost.reason == "lost"
    assert h.tick(T0 + 5) is None  # reported once


def test_lost_is_judged_by_when_frames_arrive_not_by_their_timestamps() -> None:
    # A simulation slower than real time: its frames say 0.1 s apart but arrive 0.5 s apart.
    rng = np.random.default_rng(3)
    h = CameraHealth(HEALTH)
    for i in range(10):
        assert h.frame(T0 + i * 0.1, frame_stats(scene(rng)), arrived=5000.0 + i * 0.5) is None
        assert h.tick(5000.0 + i * 0.5 + 0.4) is None  # never lost while frames keep coming
    lost = h.tick(5004.5 + 1.5)
    assert lost is not None
    assert lost.reason == "lost"
    assert lost.ts == pytest.approx(T0 + 0.9 + 1.5)  # dated on the frames' clock


def test_a_camera_fault_reaches_the_wire_with_a_constant_call_and_restoration() -> None:
    rng = np.random.default_rng(2)
    signals = CameraSignals("cam-north", CameraDetectors(zones=[STOP], health=HEALTH), 60)
    inside = Track(track_id=7, cls=0, box=(140.0, 300.0, 160.0, 350.0), score=0.9)
    t = T0
    out = signals.frame(t, scene(rng), [inside], ["car"])
    assert [(c.zone, c.state) for c in out.changes] == [("nb-stop-1", "on")]
    black = np.zeros((120, 160, 3), np.uint8)
    states: list[tuple[str, str | None]] = []
    while t < T0 + 2.0:
        t += 0.1
        states += [(c.state, c.reason) for c in signals.frame(t, black, [], ["car"]).changes]
    # The car vanishes with the picture at once; the fault needs bad_s of darkness.
    assert states == [("off", None), ("fault", "dark")]
    assert signals.zones.state() == {"nb-stop-1": True}
    while t < T0 + 4.0:
        t += 0.1
        states += [(c.state, c.reason) for c in signals.frame(t, scene(rng), [], ["car"]).changes]
    assert states[2:] == [("restored", None), ("off", None)]
    lost = signals.tick(t + 1.5)
    assert [(c.state, c.reason) for c in lost.changes] == [("fault", "lost")]
    message = DetectorMessage(records=lost.changes)
    assert len(encode(message)) < 200  # a small message, as a loop card's would be


# Turning movements --------------------------------------------------------------------

NORTH = ApproachConfig(name="north", polygon=[(200, 0), (300, 0), (300, 100), (200, 100)])
SOUTH = ApproachConfig(name="south", polygon=[(200, 400), (300, 400), (300, 500), (200, 500)])
EAST = ApproachConfig(name="east", polygon=[(400, 200), (500, 200), (500, 300), (400, 300)])
WEST = ApproachConfig(name="west", polygon=[(0, 200), (100, 200), (100, 300), (0, 300)])


Path = list[tuple[float, float]]


def drive(counter: MovementCounter, tracks: dict[int, tuple[str, Path]], t0: float) -> list[TurningMovement]:
    out: list[TurningMovement] = []
    steps = max((len(p) for _, p in tracks.values()), default=0)
    for i in range(steps):
        occ = [Occupant(tid, cls, p[i]) for tid, (cls, p) in tracks.items() if i < len(p)]
        out += counter.update(t0 + i * 0.5, occ)
    return out


def line(a: tuple[float, float], b: tuple[float, float], n: int = 12) -> Path:
    return [(a[0] + (b[0] - a[0]) * k / (n - 1), a[1] + (b[1] - a[1]) * k / (n - 1)) for k in range(n)]


def test_turning_movements_from_known_tracks() -> None:
    counter = MovementCounter("cam", [NORTH, SOUTH, EAST, WEST], 60, classes=["car", "truck"])
    tracks: dict[int, tuple[str, Path]] = {
        1: ("car", line((250, 50), (250, 450))),  # north → south: through
        2: ("car", line((250, 50), (250, 250)) + line((250, 250), (450, 250))),  # north → east
        3: ("truck", line((450, 250), (50, 250))),  # east → west
        4: ("car", line((250, 50), (250, 250)) + line((250, 250), (250, 50))),  # a U-turn back north
        5: ("car", [(250, 50)] * 10),  # queued in the north approach, never leaves it: not counted
        6: ("car", [(250, 50), (250, 105), (250, 95), (250, 50)]),  # jitter at the edge: not a U-turn
        7: ("person", line((50, 250), (450, 250))),  # not a vehicle class
    }
    records = drive(counter, tracks, T0)
    records += counter.update(T0 + 120, [])  # later: every track forgotten, the interval closed
    got = {(r.entry, r.exit, r.cls): r.count for r in records}
    assert got == {
        ("north", "south", "car"): 1,
        ("north", "east", "car"): 1,
        ("east", "west", "truck"): 1,
        ("north", "north", "car"): 1,
    }
    assert {r.interval_start for r in records} == {datetime.fromtimestamp(T0, UTC)}
    assert {r.interval_s for r in records} == {60}


@settings(max_examples=40, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from(["north", "south", "east", "west"]),
            st.sampled_from(["north", "south", "east", "west"]),
        ),
        max_size=12,
    )
)
def test_every_crossing_vehicle_is_counted_once(pairs: list[tuple[str, str]]) -> None:
    centre = {"north": (250, 50), "south": (250, 450), "east": (450, 250), "west": (50, 250)}
    counter = MovementCounter("cam", [NORTH, SOUTH, EAST, WEST], 900)
    tracks = {
        i: ("car", line(centre[a], (250, 250), 6) + line((250, 250), centre[b], 6))
        for i, (a, b) in enumerate(pairs)
    }
    records = drive(counter, tracks, T0) + counter.flush()
    assert sum(r.count for r in records) == len(pairs)
    for a, b in set(pairs):
        assert sum(r.count for r in records if (r.entry, r.exit) == (a, b)) == pairs.count((a, b))


def test_zone_statistics_volume_occupancy_and_speed() -> None:
    pose = PoseCalibration(x=0, y=-10, height=8, heading=0, tilt=25, hfov=70, width=640, height_px=480)
    config = CameraDetectors(
        calibration=pose,
        zones=[DetectorZoneConfig(name="adv", space="road", polygon=[(-2, 0), (2, 0), (2, 20), (-2, 20)])],
    )
    camera = config.camera()
    assert camera is not None
    stats = ZoneStatistics("cam", ["adv"], 60, camera)
    out = []
    # One car at 10 m/s through the 20 m zone (2 s inside of a 60 s interval), sampled at 10 fps.
    for i in range(60):
        t = T0 + i * 0.1
        y = -5 + 10 * i * 0.1
        uv = camera.road_to_image([[0.0, y]])[0]
        inside = 0 <= y < 20
        out += stats.update(t, {"adv": inside}, {"adv": {1: (float(uv[0]), float(uv[1]))} if inside else {}})
    out += stats.update(T0 + 61, {"adv": False}, {"adv": {}})
    [record] = out
    assert record.volume == 1
    assert record.occupancy == pytest.approx(2.0 / 60, abs=0.1 / 60 + 1e-9)
    assert record.mean_speed_kmh == pytest.approx(36.0, rel=0.06)


# The call topic on the broker ----------------------------------------------------------------


def test_only_hubs_write_signal_calls_and_controllers_read_only_their_own() -> None:
    from paho.mqtt.client import topic_matches_sub

    from roadside.cloud.broker.mosquitto import AclDevice, render_acl
    from roadside.shared.errors import ConfigError
    from roadside.shared.topics import parse_uplink, signal_calls

    acl = render_acl([AclDevice("signals", "hub")], ["hub"], {"ctl-main": ["main-5th"]})
    rules: dict[str, list[tuple[str, str]]] = {}
    user = ""
    for line in acl.splitlines():
        if line.startswith("user "):
            user = line.split()[1]
        elif line.startswith("topic "):
            _, access, pattern = line.split()
            rules.setdefault(user, []).append((access, pattern))
        elif line.startswith("pattern "):  # every certificate name's own device topics
            _, access, pattern = line.split()
            rules.setdefault("%u", []).append((access, pattern))

    def may(who: str, access: str, topic: str) -> bool:
        own = [(a, p) for a, p in rules.get(who, [])]
        mine = [(a, p.replace("%u", who)) for a, p in rules.get("%u", [])]
        for found in (own, mine):  # a user's rules first, then the patterns; deny before grants
            for a, p in sorted(found, key=lambda rule: rule[0] != "deny"):
                if topic_matches_sub(p, topic) and a in ("deny", access):
                    return a == access
        return False

    topic = signal_calls("main-5th")
    assert topic == "roadside/signals/v1/main-5th/calls"
    assert parse_uplink(topic) is None  # never read as a device's uplink
    assert may("hub", "write", topic)
    assert not may(
        "signals", "write", topic
    )  # a device enrolled as "signals" at site "hub" cannot forge calls
    assert may("ctl-main", "read", topic)
    assert not may("ctl-main", "read", signal_calls("other"))
    assert not may("ctl-main", "write", topic)
    assert not may("ctl-main", "write", "roadside/v1/hub/ctl-main/counts")  # no device rights either
    with pytest.raises(ConfigError, match="share a name"):
        render_acl([AclDevice("signals", "hub")], ["hub"], {"signals": ["main-5th"]})
