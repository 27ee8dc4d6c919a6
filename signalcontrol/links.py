"""Which signal-head link each phase drives, and the state string a SUMO-like TLS shows. Pure.

A traffic light in SUMO (and the load switches of a cabinet) has one signal
per *link*: an incoming lane to an outgoing lane, or a pedestrian crossing.
A :class:`PhaseMap` says for every link which phase drives it and how:

- ``protected``: ``G`` in the phase's green (through movements);
- ``permissive``: ``g`` (green, must yield: right turns across a crossing,
  left turns across the opposing through);
- ``crossing``: ``G`` only during the phase's walk; flashing and solid
  don't walk are red (walkers on the crossing finish; no new one starts).

A link no phase drives stays red.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

from roadside.shared.errors import ConfigError
from roadside.signalcontrol.core import Display, Ped, Vehicle
from roadside.signalcontrol.timing import RingBarrier

LinkKind = Literal["protected", "permissive", "crossing"]


@dataclass(frozen=True)
class Link:
    phase: int
    kind: LinkKind


@dataclass(frozen=True)
class PhaseMap:
    """The links of one traffic light (index → phase and kind) and its link count."""

    tls: str
    link_count: int
    links: Mapping[int, Link]
    approaches: Mapping[int, tuple[str, ...]]  # phase → incoming lanes (for stop-bar detectors)
    crossings: Mapping[int, tuple[str, ...]]  # phase → crossing edges it serves

    def __post_init__(self) -> None:
        bad = [i for i in self.links if not 0 <= i < self.link_count]
        if bad:
            raise ConfigError(
                f"traffic light {self.tls}: link indices {bad} outside 0..{self.link_count - 1}"
            )

    @property
    def phases(self) -> frozenset[int]:
        return frozenset(link.phase for link in self.links.values())

    def state(self, display: Display) -> str:
        """The SUMO ``setRedYellowGreenState`` string for what ``display`` shows."""
        out = ["r"] * self.link_count
        for index, link in self.links.items():
            out[index] = _signal(link, display)
        return "".join(out)

    def dark(self) -> str:
        """Every link red: what the heads show when the conflict monitor has tripped."""
        return "r" * self.link_count

    def conflicting_links(self, state: str, structure: RingBarrier) -> list[tuple[int, int]]:
        """Pairs of phases whose links both show green or yellow in a SUMO ``state`` (should be none)."""
        showing = sorted(
            {link.phase for i, link in self.links.items() if i < len(state) and state[i] in "GgyYuo"}
        )
        return [(a, b) for n, a in enumerate(showing) for b in showing[n + 1 :] if structure.conflicts(a, b)]


def _signal(link: Link, display: Display) -> str:
    vehicle = display.vehicle.get(link.phase, Vehicle.RED)
    if link.kind == "crossing":
        return "G" if display.ped.get(link.phase, Ped.DONT_WALK) is Ped.WALK else "r"
    if vehicle is Vehicle.GREEN:
        return "G" if link.kind == "protected" else "g"
    return "y" if vehicle is Vehicle.YELLOW else "r"
