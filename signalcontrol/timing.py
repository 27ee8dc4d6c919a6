"""The timing plan: phases, their rings and barriers, and each phase's intervals.

Times are given in seconds (as a traffic engineer writes them) and held in
integer ticks of 0.1 s, the ATSPM log's resolution and SUMO's step, so that
no decision depends on float rounding.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from enum import Enum
from typing import Final

from roadside.shared.errors import ConfigError

TICKS_PER_S: Final = 10
MAX_PHASE: Final = 16


def ticks(seconds: float) -> int:
    """Seconds to whole ticks of 0.1 s (rounded: 3.5 s is 35 ticks)."""
    return round(seconds * TICKS_PER_S)


class Recall(Enum):
    """What a phase does without a call: nothing, come up for its minimum, or run to its maximum."""

    NONE = "none"
    MIN = "min"
    MAX = "max"


@dataclass(frozen=True)
class PhaseTiming:
    """One NEMA phase's intervals, in seconds (defaults: a through phase on a 50 km/h approach).

    ``passage`` is the gap (vehicle extension): green ends when no call has
    been seen for this long after min green. ``max_green`` counts from the
    first conflicting call. ``walk`` and ``ped_clear`` (flashing don't walk)
    are served inside the green when the phase has a pedestrian call.
    """

    min_green: float = 7.0
    passage: float = 2.5
    max_green: float = 40.0
    yellow: float = 3.5
    red_clear: float = 1.5
    walk: float = 7.0
    ped_clear: float = 12.0
    recall: Recall = Recall.NONE
    ped_recall: bool = False
    locking: bool = True  # a call seen in yellow or red is held until the phase is served

    def check(self, phase: int) -> None:
        """:class:`ConfigError` if the intervals cannot be run safely."""
        problems = []
        if self.min_green < 1.0:
            problems.append("min_green below 1 s")
        if self.max_green < self.min_green:
            problems.append("max_green below min_green")
        if self.yellow < 3.0:
            problems.append("yellow below 3 s (MUTCD 4D.26)")
        if self.red_clear < 0.0 or self.passage < 0.0 or self.walk < 0.0 or self.ped_clear < 0.0:
            problems.append("a negative interval")
        if self.passage > self.max_green:
            problems.append("passage above max_green")
        if problems:
            raise ConfigError(
                f"phase {phase}: {', '.join(problems)}; fix its timing in the controller settings"
            )


@dataclass(frozen=True)
class TickTiming:
    """A :class:`PhaseTiming` in ticks, as the controller and the monitor use it."""

    min_green: int
    passage: int
    max_green: int
    yellow: int
    red_clear: int
    walk: int
    ped_clear: int
    recall: Recall
    ped_recall: bool
    locking: bool

    @classmethod
    def of(cls, timing: PhaseTiming) -> TickTiming:
        return cls(
            min_green=ticks(timing.min_green),
            passage=ticks(timing.passage),
            max_green=ticks(timing.max_green),
            yellow=ticks(timing.yellow),
            red_clear=ticks(timing.red_clear),
            walk=ticks(timing.walk),
            ped_clear=ticks(timing.ped_clear),
            recall=timing.recall,
            ped_recall=timing.ped_recall,
            locking=timing.locking,
        )


# The standard eight-phase dual ring: ring 1 serves 1 2 | 3 4, ring 2 serves 5 6 | 7 8;
# the bar between 2/6 and 3/7 is the barrier. 2 and 6 are the main street's throughs.
STANDARD_RINGS: Final = (((1, 2), (3, 4)), ((5, 6), (7, 8)))


@dataclass(frozen=True)
class RingBarrier:
    """Which phases run in which ring, in which order, between which barriers.

    ``rings[r][g]`` is the ordered phases of ring ``r`` in barrier group
    ``g``. Two phases may be green together only if they are in different
    rings and the same barrier group; that is the whole conflict rule.
    """

    rings: tuple[tuple[tuple[int, ...], ...], ...] = STANDARD_RINGS

    def __post_init__(self) -> None:
        if not 1 <= len(self.rings) <= 4:
            raise ConfigError("a controller has one to four rings")
        groups = {len(ring) for ring in self.rings}
        if len(groups) != 1 or groups == {0}:
            raise ConfigError("every ring needs the same number (at least one) of barrier groups")
        seen: list[int] = [p for ring in self.rings for group in ring for p in group]
        if len(seen) != len(set(seen)):
            raise ConfigError("a phase appears twice in the ring structure")
        if any(not 1 <= p <= MAX_PHASE for p in seen):
            raise ConfigError(f"phases are numbered 1 to {MAX_PHASE}")

    @property
    def phases(self) -> tuple[int, ...]:
        return tuple(sorted(p for ring in self.rings for group in ring for p in group))

    @property
    def group_count(self) -> int:
        return len(self.rings[0])

    def ring_of(self, phase: int) -> int:
        return self._where(phase)[0]

    def group_of(self, phase: int) -> int:
        return self._where(phase)[1]

    def conflicts(self, a: int, b: int) -> bool:
        """Whether phases ``a`` and ``b`` must never show green (or yellow) together."""
        if a == b:
            return False
        ring_a, group_a = self._where(a)
        ring_b, group_b = self._where(b)
        return ring_a == ring_b or group_a != group_b

    def _where(self, phase: int) -> tuple[int, int]:
        for r, ring in enumerate(self.rings):
            for g, group in enumerate(ring):
                if phase in group:
                    return r, g
        raise ConfigError(f"phase {phase} is not in the ring structure {self.rings}")


@dataclass(frozen=True)
class TimingPlan:
    """The ring structure and every phase's timing; validated once when built."""

    structure: RingBarrier = field(default_factory=RingBarrier)
    phases: Mapping[int, PhaseTiming] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for phase in self.structure.phases:
            self.timing(phase).check(phase)
        extra = set(self.phases) - set(self.structure.phases)
        if extra:
            raise ConfigError(f"timing for phases {sorted(extra)} that are not in the ring structure")

    def timing(self, phase: int) -> PhaseTiming:
        return self.phases.get(phase, PhaseTiming())

    def ticks(self, phase: int) -> TickTiming:
        return TickTiming.of(self.timing(phase))

    @classmethod
    def standard(
        cls, used: Iterable[int] | None = None, overrides: Mapping[int, PhaseTiming] | None = None
    ) -> TimingPlan:
        """The eight-phase dual ring, keeping only the ``used`` phases (a group needs one phase a ring
        at least; an empty ring group keeps its place and simply has nothing to serve)."""
        keep = set(used) if used is not None else {p for ring in STANDARD_RINGS for g in ring for p in g}
        rings = tuple(
            tuple(tuple(p for p in group if p in keep) for group in ring) for ring in STANDARD_RINGS
        )
        return cls(RingBarrier(rings), dict(overrides or {}))
