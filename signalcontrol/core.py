"""The actuated controller: ring-and-barrier sequencing with NEMA interval timing. Pure.

Each tick of 0.1 s the runner hands :meth:`ActuatedController.step` the
phases with a vehicle call (a detector occupied, or failed: a constant call)
and the phases with a pedestrian call; it returns what every head shows and
the ATSPM events of that tick. How a ring moves:

- **green**: at least ``min_green``; then it ends when another phase needs
  the ring (or the barrier) and either no call has come for ``passage``
  (gap-out, code 4) or ``max_green`` has run since the first conflicting
  call (max-out, code 5). With no conflicting demand it rests in green.
  A pedestrian call served in this green holds it through walk and
  flashing don't walk.
- **yellow** then **red clearance**, always in full.
- then the next phase of the ring in the same barrier group with a call;
  with none left the ring waits at the barrier, and the barrier is crossed
  only when every ring waits there. So two phases are green together only
  if they are in different rings of one group: compatible by construction.
  :mod:`roadside.signalcontrol.safety` checks that independently.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from enum import Enum

from roadside.shared.signals import EventCode
from roadside.signalcontrol.timing import Recall, TickTiming, TimingPlan


class Vehicle(Enum):
    GREEN = "G"
    YELLOW = "Y"
    RED = "R"


class Ped(Enum):
    WALK = "W"
    CLEAR = "F"  # flashing don't walk
    DONT_WALK = "D"


@dataclass(frozen=True)
class PhaseEvent:
    """One row of the controller's ATSPM log: tick, Indiana event code, parameter (phase)."""

    tick: int
    code: int
    param: int


@dataclass(frozen=True)
class Display:
    """What every phase's vehicle and pedestrian heads show during one tick."""

    tick: int
    vehicle: dict[int, Vehicle]
    ped: dict[int, Ped]

    def green(self) -> frozenset[int]:
        return frozenset(p for p, v in self.vehicle.items() if v is Vehicle.GREEN)

    def showing(self) -> frozenset[int]:
        """Phases not red (green or yellow): those that must not conflict."""
        return frozenset(p for p, v in self.vehicle.items() if v is not Vehicle.RED)


@dataclass(frozen=True)
class Step:
    display: Display
    events: tuple[PhaseEvent, ...]


class _Interval(Enum):
    GREEN = "green"
    YELLOW = "yellow"
    RED_CLEAR = "red_clear"
    IDLE = "idle"  # red, between phases or at the barrier


@dataclass
class _Ring:
    index: int
    phase: int | None = None
    interval: _Interval = _Interval.IDLE
    elapsed: int = 0  # ticks in the current interval
    since_call: int = 0  # ticks since this green's phase last had a call (the passage timer)
    max_run: int | None = None  # ticks since the first conflicting call of this green
    ped: Ped = Ped.DONT_WALK
    ped_elapsed: int = 0
    position: int = 0  # index in the current group's order from which phases may still run
    min_done: bool = False
    ready: EventCode | None = None  # set once the green may end: gapped or maxed out


@dataclass
class _Demand:
    vehicle: set[int] = field(default_factory=set)
    ped: set[int] = field(default_factory=set)


class ActuatedController:
    """A fully actuated NEMA controller for one intersection; every method is pure over its state."""

    def __init__(self, plan: TimingPlan) -> None:
        self.plan = plan
        self.structure = plan.structure
        self._timing: dict[int, TickTiming] = {p: plan.ticks(p) for p in self.structure.phases}
        self._rings = [_Ring(r) for r in range(len(self.structure.rings))]
        self._group = 0
        self._demand = _Demand()
        self._tick = -1
        self._called_at: dict[int, int] = {}

    @property
    def tick(self) -> int:
        return self._tick

    def waiting(self) -> dict[int, int]:
        """Phases with a call not yet served (vehicle or pedestrian), each with the tick its oldest
        unserved call was registered: how a runner or a test sees that nobody is stranded."""
        return {p: self._called_at.get(p, self._tick) for p in self._demand.vehicle | self._demand.ped}

    def step(self, calls: Iterable[int] = (), ped_calls: Iterable[int] = ()) -> Step:
        """Advance one tick with these phases called (vehicle, pedestrian); return the display."""
        self._tick += 1
        events: list[PhaseEvent] = []
        present = frozenset(p for p in calls if p in self._timing)
        self._register(present, frozenset(p for p in ped_calls if p in self._timing), events)
        for ring in self._rings:
            self._advance(ring, present, events)
        self._terminate(events)
        self._cross_barrier(events)
        for ring in self._rings:
            if ring.interval is _Interval.IDLE:
                self._start_next(ring, events)
        called = self._demand.vehicle | self._demand.ped
        for phase in [p for p in self._called_at if p not in called]:
            del self._called_at[phase]  # served (or a non-locking call that went away)
        return Step(self._display(), tuple(events))

    # --- calls -----------------------------------------------------------------------------

    def _register(
        self, present: frozenset[int], ped_present: frozenset[int], events: list[PhaseEvent]
    ) -> None:
        green = {r.phase for r in self._rings if r.interval is _Interval.GREEN}
        for phase, timing in self._timing.items():
            wants = phase in present or timing.recall is not Recall.NONE
            if phase not in green and wants and phase not in self._demand.vehicle:
                self._demand.vehicle.add(phase)
                self._called_at.setdefault(phase, self._tick)
                events.append(PhaseEvent(self._tick, EventCode.PHASE_CALL_REGISTERED, phase))
            elif not wants and not timing.locking and phase in self._demand.vehicle:
                self._demand.vehicle.discard(phase)  # non-locking memory: the call ends with presence
                events.append(PhaseEvent(self._tick, EventCode.PHASE_CALL_DROPPED, phase))
            walking = any(r.phase == phase and r.ped is Ped.WALK for r in self._rings)
            ped_wants = phase in ped_present or timing.ped_recall
            if ped_wants and not walking and phase not in self._demand.ped:
                self._demand.ped.add(phase)
                self._called_at.setdefault(phase, self._tick)
                events.append(PhaseEvent(self._tick, EventCode.PED_CALL_REGISTERED, phase))

    def _called(self, phase: int) -> bool:
        return phase in self._demand.vehicle or phase in self._demand.ped

    # --- one ring --------------------------------------------------------------------------

    def _advance(self, ring: _Ring, present: frozenset[int], events: list[PhaseEvent]) -> None:
        ring.elapsed += 1
        if ring.phase is None:
            return
        timing = self._timing[ring.phase]
        if ring.interval is _Interval.GREEN:
            self._green(ring, timing, present, events)
        elif ring.interval is _Interval.YELLOW and ring.elapsed >= timing.yellow:
            events.append(PhaseEvent(self._tick, EventCode.PHASE_END_YELLOW_CLEARANCE, ring.phase))
            events.append(PhaseEvent(self._tick, EventCode.PHASE_BEGIN_RED_CLEARANCE, ring.phase))
            self._enter(ring, _Interval.RED_CLEAR)
        elif ring.interval is _Interval.RED_CLEAR and ring.elapsed >= timing.red_clear:
            events.append(PhaseEvent(self._tick, EventCode.PHASE_END_RED_CLEARANCE, ring.phase))
            events.append(PhaseEvent(self._tick, EventCode.PHASE_INACTIVE, ring.phase))
            self._enter(ring, _Interval.IDLE)
            ring.phase = None

    def _green(
        self, ring: _Ring, timing: TickTiming, present: frozenset[int], events: list[PhaseEvent]
    ) -> None:
        phase = ring.phase
        assert phase is not None
        ring.ready = None
        ring.since_call = 0 if phase in present else ring.since_call + 1
        self._time_ped(ring, timing, events)
        if not ring.min_done and ring.elapsed >= timing.min_green:
            ring.min_done = True
            events.append(PhaseEvent(self._tick, EventCode.PHASE_MIN_COMPLETE, phase))
        leave = self._must_leave(ring)
        if leave and ring.max_run is None:
            ring.max_run = 1  # this tick is the first of the max timer (from green start at the earliest)
        elif ring.max_run is not None:
            ring.max_run += 1
        if not leave:
            if ring.ped is Ped.DONT_WALK and ring.ped_elapsed > 0 and phase in self._demand.ped:
                self._begin_walk(ring, phase, events)  # resting in green: serve a new pedestrian now
            return
        if not ring.min_done or ring.ped is not Ped.DONT_WALK:
            return
        maxed = ring.max_run is not None and ring.max_run >= timing.max_green
        gapped = timing.recall is not Recall.MAX and ring.since_call >= timing.passage
        if maxed:
            ring.ready = EventCode.PHASE_MAX_OUT
        elif gapped:
            ring.ready = EventCode.PHASE_GAP_OUT

    def _terminate(self, events: list[PhaseEvent]) -> None:
        """End the greens that are ready. One bound for the barrier waits until every ring can cross with
        it (simultaneous gap-out): it keeps serving its approach instead of showing red to nobody."""
        crossing = all(self._toward_barrier(r) for r in self._rings)
        for ring in self._rings:
            if ring.interval is not _Interval.GREEN or ring.ready is None or ring.phase is None:
                continue
            if not crossing and not self._has_next(ring):
                continue
            events.append(PhaseEvent(self._tick, ring.ready, ring.phase))
            events.append(PhaseEvent(self._tick, EventCode.PHASE_GREEN_TERMINATION, ring.phase))
            events.append(PhaseEvent(self._tick, EventCode.PHASE_BEGIN_YELLOW_CLEARANCE, ring.phase))
            self._enter(ring, _Interval.YELLOW)

    def _toward_barrier(self, ring: _Ring) -> bool:
        """Whether this ring has nothing more to serve in the group once its current phase (if any) ends."""
        if self._has_next(ring):
            return False
        return ring.interval is not _Interval.GREEN or ring.ready is not None

    def _time_ped(self, ring: _Ring, timing: TickTiming, events: list[PhaseEvent]) -> None:
        assert ring.phase is not None
        ring.ped_elapsed += 1
        if ring.ped is Ped.WALK and ring.ped_elapsed >= timing.walk:
            ring.ped, ring.ped_elapsed = Ped.CLEAR, 0
            events.append(PhaseEvent(self._tick, EventCode.PED_BEGIN_CLEARANCE, ring.phase))
        elif ring.ped is Ped.CLEAR and ring.ped_elapsed >= timing.ped_clear:
            ring.ped, ring.ped_elapsed = Ped.DONT_WALK, 0
            events.append(PhaseEvent(self._tick, EventCode.PED_BEGIN_SOLID_DONT_WALK, ring.phase))

    def _begin_walk(self, ring: _Ring, phase: int, events: list[PhaseEvent]) -> None:
        if self._timing[phase].walk == 0 and self._timing[phase].ped_clear == 0:
            self._demand.ped.discard(phase)
            return
        ring.ped, ring.ped_elapsed = Ped.WALK, 0
        self._demand.ped.discard(phase)
        events.append(PhaseEvent(self._tick, EventCode.PED_BEGIN_WALK, phase))

    def _must_leave(self, ring: _Ring) -> bool:
        """Whether any call needs this ring's green to end (rest in green otherwise)."""
        for phase in self._timing:
            if phase == ring.phase or not self._called(phase):
                continue
            r, g = self.structure.ring_of(phase), self.structure.group_of(phase)
            if r == ring.index or g != self._group:
                return True
            other = self._rings[r]
            if other.phase == phase and other.interval is _Interval.GREEN:
                continue
            if not self._still_ahead(other, phase):
                return True  # served in this group already: it needs a trip round the barrier
        return False

    def _still_ahead(self, ring: _Ring, phase: int) -> bool:
        order = self.structure.rings[ring.index][self._group]
        return phase in order and order.index(phase) >= ring.position and ring.phase != phase

    def _start_next(self, ring: _Ring, events: list[PhaseEvent]) -> None:
        order = self.structure.rings[ring.index][self._group]
        for index in range(ring.position, len(order)):
            phase = order[index]
            if self._called(phase):
                self._begin_green(ring, phase, index, events)
                return

    def _begin_green(self, ring: _Ring, phase: int, index: int, events: list[PhaseEvent]) -> None:
        ring.phase, ring.position = phase, index + 1
        self._enter(ring, _Interval.GREEN)
        ring.since_call, ring.max_run, ring.min_done = 0, None, False
        ring.ped, ring.ped_elapsed = Ped.DONT_WALK, 0
        self._demand.vehicle.discard(phase)
        events.append(PhaseEvent(self._tick, EventCode.PHASE_BEGIN_GREEN, phase))
        if phase in self._demand.ped:
            self._begin_walk(ring, phase, events)

    def _enter(self, ring: _Ring, interval: _Interval) -> None:
        ring.interval, ring.elapsed, ring.ready = interval, 0, None

    # --- the barrier -----------------------------------------------------------------------

    def _cross_barrier(self, events: list[PhaseEvent]) -> None:
        if any(r.interval is not _Interval.IDLE or self._has_next(r) for r in self._rings):
            return
        if not self._demand.vehicle and not self._demand.ped:
            return  # nothing to serve: every ring rests in red at the barrier
        self._group = (self._group + 1) % self.structure.group_count
        for ring in self._rings:
            ring.position = 0
        events.append(PhaseEvent(self._tick, EventCode.BARRIER_TERMINATION, self._group + 1))

    def _has_next(self, ring: _Ring) -> bool:
        order = self.structure.rings[ring.index][self._group]
        return any(self._called(p) for p in order[ring.position :])

    # --- output ----------------------------------------------------------------------------

    def _display(self) -> Display:
        vehicle = dict.fromkeys(self._timing, Vehicle.RED)
        ped = dict.fromkeys(self._timing, Ped.DONT_WALK)
        for ring in self._rings:
            if ring.phase is None:
                continue
            if ring.interval is _Interval.GREEN:
                vehicle[ring.phase] = Vehicle.GREEN
                ped[ring.phase] = ring.ped
            elif ring.interval is _Interval.YELLOW:
                vehicle[ring.phase] = Vehicle.YELLOW
        return Display(self._tick, vehicle, ped)
