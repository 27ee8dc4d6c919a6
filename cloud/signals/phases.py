"""Each phase's current interval from a controller's ATSPM events (Indiana codes): pure.

A controller that Roadside drives (``roadside.signalcontrol``) posts its phase
events to ``POST /v1/signals/<signal>/events``; the console's signal page shows
the newest interval of each phase from them.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Final

from roadside.cloud.storage.signals import ControllerEvent
from roadside.shared.signals import EventCode

# Which interval each phase event begins.
INTERVALS: Final[dict[int, str]] = {
    EventCode.PHASE_BEGIN_GREEN: "green",
    EventCode.PHASE_BEGIN_YELLOW_CLEARANCE: "yellow",
    EventCode.PHASE_END_YELLOW_CLEARANCE: "red clearance",
    EventCode.PHASE_BEGIN_RED_CLEARANCE: "red clearance",
    EventCode.PHASE_END_RED_CLEARANCE: "red",
    EventCode.PHASE_INACTIVE: "red",
}


@dataclass(frozen=True, slots=True)
class PhaseState:
    phase: int
    interval: str  # "green", "yellow", "red clearance" or "red"
    since: datetime
    called: bool  # a call is registered and not dropped since (codes 43 and 44)


def phase_states(events: Iterable[ControllerEvent]) -> list[PhaseState]:
    """The newest interval of every phase the events name, by phase number (events in any order)."""
    latest: dict[int, tuple[datetime, str]] = {}
    calls: dict[int, bool] = {}
    for event in sorted(events, key=lambda e: (e.ts, e.code)):
        if event.code in INTERVALS:
            latest[event.param] = (event.ts, INTERVALS[event.code])
        elif event.code == EventCode.PHASE_CALL_REGISTERED:
            calls[event.param] = True
        elif event.code == EventCode.PHASE_CALL_DROPPED:
            calls[event.param] = False
    return [
        PhaseState(p, interval, since, calls.get(p, False)) for p, (since, interval) in sorted(latest.items())
    ]
