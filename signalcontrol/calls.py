"""Detector channels to phase calls: what the controller is called for, tick by tick. Pure.

A :class:`DetectorInput` is one channel's state as any call source sees it
(the hub's call stream, SUMO's own detectors, a cabinet's detector cards).
The table keeps the last state per channel and answers which phases have a
vehicle or a pedestrian call. Fail safe, as a detector card: a failed
channel calls its phase until it is restored, and when the whole feed goes
silent (the hub or the network is down) every phase is called, so the
controller falls back to running each phase to its maximum instead of
stranding anyone.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DetectorInput:
    """One detector channel's state: called (occupied, or failed) and for which phase."""

    channel: int
    phase: int
    pedestrian: bool
    called: bool
    failed: bool = False
    seq: int | None = None  # the source's sequence number, when it has one: older inputs are dropped


class CallTable:
    """The calls the controller acts on, from the last known state of each channel."""

    def __init__(self, phases: frozenset[int]) -> None:
        self.phases = phases
        self._channels: dict[int, DetectorInput] = {}
        self.feed_lost = False
        self.refused: dict[str, int] = {}

    def apply(self, update: DetectorInput) -> bool:
        """Take one channel's new state; False (counted, logged) if refused."""
        if update.phase not in self.phases:
            return self._refuse("unknown_phase", update)
        last = self._channels.get(update.channel)
        if last is not None and last.phase != update.phase:
            log.warning("channel %s moved from phase %s to %s", update.channel, last.phase, update.phase)
        if last is not None and update.seq is not None and last.seq is not None and update.seq <= last.seq:
            return self._refuse("out_of_order", update)
        self._channels[update.channel] = update
        return True

    def _refuse(self, reason: str, update: DetectorInput) -> bool:
        self.refused[reason] = self.refused.get(reason, 0) + 1
        log.warning("detector input refused (%s): channel %s phase %s", reason, update.channel, update.phase)
        return False

    def vehicle_calls(self) -> frozenset[int]:
        if self.feed_lost:
            return self.phases
        return frozenset(
            c.phase for c in self._channels.values() if not c.pedestrian and (c.called or c.failed)
        )

    def ped_calls(self) -> frozenset[int]:
        """Phases with a pedestrian call; every phase with a pedestrian detector while the feed is lost."""
        return frozenset(
            c.phase
            for c in self._channels.values()
            if c.pedestrian and (c.called or c.failed or self.feed_lost)
        )

    def failed_channels(self) -> frozenset[int]:
        return frozenset(c.channel for c in self._channels.values() if c.failed)
