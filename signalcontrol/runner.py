"""One controller tick: calls in, decide, check, heads out, events out.

The runner holds no clock: the caller ticks it every 0.1 s (SUMO's step in
lock step, or a wall clock beside a real cabinet). The edges are small
Protocols so that SUMO over TraCI, an NTCIP 1202 agent or contact closures
are each one adapter:

- :class:`SignalHeads`: ``apply(display)`` shows a display; ``all_red()``
  is what the heads show once the conflict monitor has tripped.
- :class:`CallSource`: ``poll()`` gives the detector channels that changed.
- :class:`EventSink`: ``publish(events)`` takes the tick's ATSPM events.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Iterable, Sequence
from typing import Protocol

from roadside.shared.errors import SignalSafetyError
from roadside.signalcontrol.calls import CallTable, DetectorInput
from roadside.signalcontrol.core import ActuatedController, Display, PhaseEvent, Step
from roadside.signalcontrol.safety import ConflictMonitor
from roadside.signalcontrol.timing import TimingPlan

log = logging.getLogger(__name__)


class SignalHeads(Protocol):
    def apply(self, display: Display) -> None: ...

    def all_red(self) -> None: ...


class CallSource(Protocol):
    def poll(self) -> Iterable[DetectorInput]: ...

    def feed_lost(self) -> bool:
        """Whether the source cannot vouch for its calls now (every phase is then called)."""
        ...


class EventSink(Protocol):
    def publish(self, events: Sequence[PhaseEvent]) -> None: ...


class ControllerRunner:
    """Runs one intersection: every :meth:`tick` is 0.1 s of the controller."""

    def __init__(
        self, plan: TimingPlan, heads: SignalHeads, source: CallSource, sink: EventSink | None = None
    ) -> None:
        self.plan = plan
        self.controller = ActuatedController(plan)
        self.monitor = ConflictMonitor(plan)
        self.calls = CallTable(frozenset(plan.structure.phases))
        self._heads = heads
        self._source = source
        self._sink = sink
        self.event_counts: Counter[int] = Counter()

    def tick(self) -> Step:
        """Read the calls, step the controller, check it, show it, report it."""
        for update in self._source.poll():
            self.calls.apply(update)
        lost = self._source.feed_lost()
        if lost != self.calls.feed_lost:
            log.warning("detector feed %s", "lost: calling every phase" if lost else "back")
            self.calls.feed_lost = lost
        step = self.controller.step(self.calls.vehicle_calls(), self.calls.ped_calls())
        try:
            self.monitor.check(step.display)
        except SignalSafetyError:
            log.critical("conflict monitor tripped: every head to red, controller stopped")
            self._heads.all_red()
            raise
        self._heads.apply(step.display)
        if step.events:
            self.event_counts.update(e.code for e in step.events)
            if self._sink is not None:
                self._sink.publish(step.events)
        return step
