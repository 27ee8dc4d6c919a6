"""The ``SensorSource`` interface: what every sensor adapter yields."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Literal, Protocol


@dataclass(frozen=True, slots=True)
class SensorSample:
    """One raw value as the device reported it, before any quality check."""

    ts: float  # epoch seconds when the value was measured (or received, if the device sends no time)
    sensor: str
    quantity: str
    value: float
    unit: str


@dataclass(frozen=True, slots=True)
class SourceEvent:
    """Something about the device rather than a value: it stopped answering (``dropout``)."""

    ts: float  # when the source noticed
    sensor: str
    kind: Literal["dropout"]
    silent_s: float  # how long since its last good frame
    driver: str  # which adapter noticed (pms5003, sds011, ...)


class SensorSource(Protocol):
    name: str

    def samples(self) -> Iterator[SensorSample | SourceEvent]:
        """Samples until the source ends or :meth:`close` is called; reconnects on its own."""
        ...

    def close(self) -> None:
        """Make :meth:`samples` return soon; safe from any thread."""
        ...
