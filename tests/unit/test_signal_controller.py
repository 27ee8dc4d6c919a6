"""The actuated controller and its conflict monitor: NEMA timing by example, safety by Hypothesis."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import replace

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from roadside.shared.errors import ConfigError, SignalSafetyError
from roadside.shared.signals import EventCode
from roadside.signalcontrol.calls import CallTable, DetectorInput
from roadside.signalcontrol.core import ActuatedController, Display, Ped, Step, Vehicle
from roadside.signalcontrol.safety import ConflictMonitor
from roadside.signalcontrol.timing import PhaseTiming, Recall, RingBarrier, TimingPlan

SHORT = PhaseTiming(min_green=5, passage=2, max_green=20, yellow=3, red_clear=1, walk=4, ped_clear=6)


def plan_of(timing: PhaseTiming = SHORT, used: tuple[int, ...] = (1, 2, 3, 4, 5, 6, 7, 8)) -> TimingPlan:
    return TimingPlan.standard(used, dict.fromkeys(used, timing))


def run(
    controller: ActuatedController,
    monitor: ConflictMonitor,
    ticks: int,
    calls: Iterable[int] = (),
    peds: Iterable[int] = (),
) -> list[Step]:
    steps = []
    for _ in range(ticks):
        step = controller.step(calls, peds)
        monitor.check(step.display)
        steps.append(step)
    return steps


def codes(steps: list[Step], code: int) -> list[tuple[int, int]]:
    return [(e.tick, e.param) for s in steps for e in s.events if e.code == code]


def test_a_lone_call_gets_min_green_then_the_ring_rests_in_it() -> None:
    plan = plan_of()
    controller, monitor = ActuatedController(plan), ConflictMonitor(plan)
    steps = run(controller, monitor, 5, calls={4})
    assert codes(steps, EventCode.PHASE_BEGIN_GREEN) == [(0, 4)]
    steps = run(controller, monitor, 300)  # no other call: phase 4 rests in green
    assert steps[-1].display.green() == {4}


def test_gap_out_after_passage_once_min_green_is_served() -> None:
    plan = plan_of()
    controller, monitor = ActuatedController(plan), ConflictMonitor(plan)
    run(controller, monitor, 1, calls={2, 6})
    run(controller, monitor, 30, calls={2, 6, 4})  # vehicles keep coming on 2/6 for 3 s, 4 waits
    steps = run(controller, monitor, 200, calls={4})
    gap_outs = codes(steps, EventCode.PHASE_GAP_OUT)
    assert {p for _, p in gap_outs} == {2, 6}
    first = gap_outs[0][0]
    assert first == 31 + 20 - 1  # the last call at tick 30, then 2.0 s passage
    assert (first + 30 + 10, 4) in codes(steps, EventCode.PHASE_BEGIN_GREEN)  # after 3 s yellow, 1 s red


def test_a_failed_detector_places_a_constant_call_and_the_phase_maxes_out() -> None:
    plan = plan_of()
    table = CallTable(frozenset(plan.structure.phases))
    table.apply(DetectorInput(channel=2, phase=2, pedestrian=False, called=False, failed=True))
    table.apply(DetectorInput(channel=8, phase=8, pedestrian=False, called=True))
    controller, monitor = ActuatedController(plan), ConflictMonitor(plan)
    steps = run(controller, monitor, 600, calls=table.vehicle_calls())
    assert codes(steps, EventCode.PHASE_MAX_OUT)[0][1] == 2
    assert codes(steps, EventCode.PHASE_MAX_OUT)[0][0] == 200  # max green counts from the conflicting call
    assert 8 in {p for _, p in codes(steps, EventCode.PHASE_BEGIN_GREEN)}


def test_pedestrian_walk_and_flashing_dont_walk_hold_the_green() -> None:
    plan = plan_of()
    controller, monitor = ActuatedController(plan), ConflictMonitor(plan)
    steps = run(controller, monitor, 2, calls={2}, peds={2})
    steps += run(controller, monitor, 300, calls={4})
    assert codes(steps, EventCode.PED_BEGIN_WALK) == [(0, 2)]
    assert codes(steps, EventCode.PED_BEGIN_CLEARANCE) == [(40, 2)]
    assert codes(steps, EventCode.PED_BEGIN_SOLID_DONT_WALK) == [(100, 2)]
    yellow = [t for t, p in codes(steps, EventCode.PHASE_BEGIN_YELLOW_CLEARANCE) if p == 2]
    assert yellow == [100]  # vehicles gapped out long before; the crossing held the green


def test_the_feed_lost_calls_every_phase() -> None:
    table = CallTable(frozenset({2, 4, 6, 8}))
    table.apply(DetectorInput(channel=20, phase=4, pedestrian=True, called=False))
    table.feed_lost = True
    assert table.vehicle_calls() == {2, 4, 6, 8}
    assert table.ped_calls() == {4}


def test_unknown_phases_and_out_of_order_inputs_are_refused_and_counted() -> None:
    table = CallTable(frozenset({2, 6}))
    assert not table.apply(DetectorInput(channel=1, phase=3, pedestrian=False, called=True))
    assert table.apply(DetectorInput(channel=1, phase=2, pedestrian=False, called=True, seq=5))
    assert not table.apply(DetectorInput(channel=1, phase=2, pedestrian=False, called=False, seq=4))
    assert table.vehicle_calls() == {2}
    assert table.refused == {"unknown_phase": 1, "out_of_order": 1}


@pytest.mark.parametrize(
    ("timing", "message"),
    [
        (replace(SHORT, yellow=2.0), "yellow below 3 s"),
        (replace(SHORT, max_green=4.0), "max_green below min_green"),
        (replace(SHORT, red_clear=-1.0), "negative"),
    ],
)
def test_unsafe_timing_is_refused_at_start(timing: PhaseTiming, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        plan_of(timing)


def test_a_phase_twice_in_the_rings_is_refused() -> None:
    with pytest.raises(ConfigError, match="twice"):
        RingBarrier((((1, 2), (3, 4)), ((5, 2), (7, 8))))


def _display(tick: int, green: dict[int, Vehicle], ped: dict[int, Ped] | None = None) -> Display:
    phases = (1, 2, 3, 4, 5, 6, 7, 8)
    return Display(
        tick,
        {p: green.get(p, Vehicle.RED) for p in phases},
        {p: (ped or {}).get(p, Ped.DONT_WALK) for p in phases},
    )


@pytest.mark.parametrize(
    ("script", "message"),
    [
        ([{2: Vehicle.GREEN, 4: Vehicle.GREEN}], "conflicting phases 2 and 4"),
        ([{2: Vehicle.GREEN, 1: Vehicle.GREEN}], "conflicting phases 1 and 2"),
        ([{2: Vehicle.GREEN}] * 50 + [{}], "from GREEN to RED"),
        ([{2: Vehicle.GREEN}] * 10 + [{2: Vehicle.YELLOW}], "GREEN for 10 ticks, under its minimum"),
        ([{2: Vehicle.GREEN}] * 50 + [{2: Vehicle.YELLOW}] * 10 + [{}], "YELLOW for 10 ticks"),
        ([{2: Vehicle.GREEN}] * 50 + [{2: Vehicle.YELLOW}] * 30 + [{4: Vehicle.GREEN}], "2 is not red"),
        (
            [{2: Vehicle.GREEN}] * 50 + [{2: Vehicle.YELLOW}] * 30 + [{}] * 5 + [{4: Vehicle.GREEN}],
            "red clearance",
        ),
        ([{2: Vehicle.YELLOW}], "from RED to YELLOW"),
    ],
)
def test_the_monitor_trips_on_unsafe_displays_and_stays_tripped(
    script: list[dict[int, Vehicle]], message: str
) -> None:
    monitor = ConflictMonitor(plan_of())
    for tick, green in enumerate(script[:-1]):
        monitor.check(_display(tick, green))
    with pytest.raises(SignalSafetyError, match=message):
        monitor.check(_display(len(script) - 1, script[-1]))
    with pytest.raises(SignalSafetyError, match="tripped earlier"):
        monitor.check(_display(len(script), {}))


def test_the_monitor_trips_on_a_walk_without_green_and_on_skipped_ticks() -> None:
    monitor = ConflictMonitor(plan_of())
    with pytest.raises(SignalSafetyError, match="without its green"):
        monitor.check(_display(0, {}, {2: Ped.WALK}))
    monitor = ConflictMonitor(plan_of())
    monitor.check(_display(0, {}))
    with pytest.raises(SignalSafetyError, match="follows tick 0"):
        monitor.check(_display(2, {}))


# --- whatever the calls do ----------------------------------------------------------------

timings = st.builds(
    PhaseTiming,
    min_green=st.integers(10, 80).map(lambda t: t / 10),
    passage=st.integers(0, 40).map(lambda t: t / 10),
    max_green=st.integers(80, 300).map(lambda t: t / 10),
    yellow=st.integers(30, 50).map(lambda t: t / 10),
    red_clear=st.integers(0, 30).map(lambda t: t / 10),
    walk=st.integers(0, 70).map(lambda t: t / 10),
    ped_clear=st.integers(0, 150).map(lambda t: t / 10),
    recall=st.sampled_from(Recall),
    ped_recall=st.booleans(),
    locking=st.booleans(),
)
phase_sets = st.frozensets(st.integers(1, 8))
# (how many ticks, vehicle calls, pedestrian calls, failed detectors) held for that long
segments = st.lists(st.tuples(st.integers(1, 120), phase_sets, phase_sets, phase_sets), max_size=40)


@st.composite
def plans(draw: st.DrawFn) -> TimingPlan:
    used = draw(st.frozensets(st.integers(1, 8), min_size=1))
    return TimingPlan.standard(sorted(used), {p: draw(timings) for p in used})


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(plan=plans(), script=segments)
def test_no_call_sequence_makes_the_controller_unsafe_or_strand_a_call(
    plan: TimingPlan, script: list[tuple[int, frozenset[int], frozenset[int], frozenset[int]]]
) -> None:
    controller, monitor = ActuatedController(plan), ConflictMonitor(plan)
    structure = plan.structure
    waiting: dict[int, int] = {}  # phase -> tick its oldest unserved call began
    bound = (
        sum(
            t.max_green + t.walk + t.ped_clear + t.yellow + t.red_clear + t.min_green + 2
            for t in map(plan.ticks, structure.phases)
        )
        * 2
    )
    script = [*script, (bound + 10, frozenset(), frozenset(), frozenset())]  # then quiet: all must drain
    for length, calls, peds, failed in script:
        for _ in range(length):
            step = controller.step(calls | failed, peds)
            monitor.check(step.display)
            showing = step.display.showing()
            assert not any(structure.conflicts(a, b) for a in showing for b in showing)
            for e in step.events:
                if e.code == EventCode.PHASE_BEGIN_GREEN:
                    waiting.pop(e.param, None)
            for p in (calls | failed) & set(structure.phases):
                if p not in step.display.green():
                    waiting.setdefault(p, step.display.tick)
            for p in [p for p in waiting if p not in calls | failed and not plan.timing(p).locking]:
                del waiting[p]  # non-locking memory: a call that went away is not owed a green
            late = {p: t for p, t in waiting.items() if step.display.tick - t > bound}
            assert not late, f"calls stranded past {bound} ticks: {late}"
    assert not waiting or all(plan.ticks(p).recall is not Recall.NONE for p in waiting), (
        f"calls never served: {waiting}"
    )
    stale = {p: t for p, t in controller.waiting().items() if controller.tick - t > bound}
    assert not stale, f"the controller holds calls older than {bound} ticks: {stale}"
