"""The conflict monitor: the safety invariants, checked on every display. Pure.

Written apart from the controller on purpose (ADR 0014): it knows only the
timing plan's conflicts and intervals and what the heads show tick by tick,
as a cabinet's malfunction management unit watches the load switches. It
refuses:

- two conflicting phases showing green or yellow in the same tick;
- a green that ends before its ``min_green``, or goes straight to red;
- a yellow shorter than ``yellow``, or a yellow that turns green again;
- a green while this phase, or any phase conflicting with it, has not been
  red for its full red clearance;
- a walk or flashing don't walk without the phase's green, a walk cut short,
  or a flashing don't walk cut short;
- a display that skips or repeats a tick.

A violation raises :class:`~roadside.shared.errors.SignalSafetyError`; the
monitor is then latched (every later check raises too) until a new monitor
is built, as an MMU stays in flash until someone resets it.
"""

from __future__ import annotations

from dataclasses import dataclass

from roadside.shared.errors import SignalSafetyError
from roadside.signalcontrol.core import Display, Ped, Vehicle
from roadside.signalcontrol.timing import TickTiming, TimingPlan

_NEVER = -(10**9)  # "red since long before the start": a controller starts from all red


@dataclass
class _Head:
    vehicle: Vehicle = Vehicle.RED
    since: int = _NEVER
    ped: Ped = Ped.DONT_WALK
    ped_since: int = _NEVER


class ConflictMonitor:
    """Checks each :class:`Display` against the plan; raises on the first unsafe one."""

    def __init__(self, plan: TimingPlan) -> None:
        self.plan = plan
        self._timing: dict[int, TickTiming] = {p: plan.ticks(p) for p in plan.structure.phases}
        self._heads = {p: _Head() for p in self._timing}
        self._last_tick: int | None = None
        self.tripped: str | None = None
        self.checked = 0

    def check(self, display: Display) -> None:
        """Accept ``display`` as the next tick, or raise :class:`SignalSafetyError` (and stay tripped)."""
        if self.tripped is not None:
            raise SignalSafetyError(f"conflict monitor tripped earlier: {self.tripped}")
        problem = self._problem(display)
        if problem is not None:
            self.tripped = f"tick {display.tick}: {problem}"
            raise SignalSafetyError(f"conflict monitor: {self.tripped}")
        self._accept(display)
        self.checked += 1

    def _problem(self, display: Display) -> str | None:
        if self._last_tick is not None and display.tick != self._last_tick + 1:
            return f"display for tick {display.tick} follows tick {self._last_tick}"
        if set(display.vehicle) != set(self._timing) or set(display.ped) != set(self._timing):
            return "a display that does not cover exactly the plan's phases"
        showing = sorted(display.showing())
        for i, a in enumerate(showing):
            for b in showing[i + 1 :]:
                if self.plan.structure.conflicts(a, b):
                    return f"conflicting phases {a} and {b} both showing"
        for phase in self._timing:
            problem = self._vehicle_change(phase, display) or self._ped_change(phase, display)
            if problem is not None:
                return problem
        return None

    def _vehicle_change(self, phase: int, display: Display) -> str | None:
        head, now, timing = self._heads[phase], display.vehicle[phase], self._timing[phase]
        if now is head.vehicle:
            return None
        if head.vehicle is Vehicle.RED and now is Vehicle.GREEN:
            return self._cleared(phase, display.tick)
        held = display.tick - head.since
        # (from, to) -> (the shortest time in "from", or None where the change is never allowed)
        rules: dict[tuple[Vehicle, Vehicle], int | None] = {
            (Vehicle.GREEN, Vehicle.YELLOW): timing.min_green,
            (Vehicle.YELLOW, Vehicle.RED): timing.yellow,
        }
        shortest = rules.get((head.vehicle, now))
        if shortest is None:
            return f"phase {phase} went from {head.vehicle.name} to {now.name}"
        if held < shortest:
            return f"phase {phase} {head.vehicle.name} for {held} ticks, under its minimum {shortest}"
        return None

    def _cleared(self, phase: int, tick: int) -> str | None:
        for other, head in self._heads.items():
            if other != phase and not self.plan.structure.conflicts(phase, other):
                continue
            if head.vehicle is not Vehicle.RED:
                return f"phase {phase} green while conflicting phase {other} is not red"
            red_for = tick - head.since
            if red_for < self._timing[other].red_clear:
                return f"phase {phase} green {red_for} ticks after phase {other}'s yellow, under its red clearance"
        return None

    def _ped_change(self, phase: int, display: Display) -> str | None:
        head, now, timing = self._heads[phase], display.ped[phase], self._timing[phase]
        if now is not Ped.DONT_WALK and display.vehicle[phase] is not Vehicle.GREEN:
            return f"pedestrian {phase} shows {now.name} without its green"
        if now is head.ped:
            return None
        held = display.tick - head.ped_since
        rules: dict[tuple[Ped, Ped], int] = {
            (Ped.DONT_WALK, Ped.WALK): 0,
            (Ped.WALK, Ped.CLEAR): timing.walk,
            (Ped.CLEAR, Ped.DONT_WALK): timing.ped_clear,
        }
        shortest = rules.get((head.ped, now))
        if shortest is None:
            return f"pedestrian {phase} went from {head.ped.name} to {now.name}"
        if held < shortest:
            return f"pedestrian {phase} {head.ped.name} for {held} ticks, under its minimum {shortest}"
        return None

    def _accept(self, display: Display) -> None:
        for phase, head in self._heads.items():
            if display.vehicle[phase] is not head.vehicle:
                head.vehicle, head.since = display.vehicle[phase], display.tick
            if display.ped[phase] is not head.ped:
                head.ped, head.ped_since = display.ped[phase], display.tick
        self._last_tick = display.tick
