"""What a roadside device sends, as the product's own schemas encode it, at a city's rates.

Shared by the long-running benchmarks (:mod:`bench.soak`, :mod:`bench.city`): counts every
``counts_every_s`` (a minute in a city), health every ``health_every_s`` (30 s), and events
as traffic makes them (a Poisson process, ``events_per_hour`` per device). The bodies are
real ``CountsMessage``/``HealthMessage``/``EventsMessage`` encodings: the hub validates
them exactly as it validates an agent's.
"""

from __future__ import annotations

import random
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime

from roadside.shared.schemas import (
    CountRecord,
    CountsMessage,
    DetectionEvent,
    EventsMessage,
    Health,
    HealthMessage,
    encode,
)

MODEL = "1.0.0"


def counts_body(now: datetime, interval_s: int, lines: int = 2) -> bytes:
    """One interval's counts: a car and a truck count per line, both directions."""
    records = [
        CountRecord(
            interval_start=now,
            interval_s=interval_s,
            line=f"l{line}",
            cls=cls,
            direction=direction,
            count=count,
            model_version=MODEL,
        )
        for line in range(lines)
        for cls, count in (("car", 7), ("truck", 1))
        for direction in ("in", "out")
    ]
    return encode(CountsMessage(records=records))


def health_body(now: datetime, uptime_s: float, backlog: int, model_version: str = MODEL) -> bytes:
    return encode(
        HealthMessage(
            health=Health(
                ts=now,
                uptime_s=uptime_s,
                model_version=model_version,
                provider="CPUExecutionProvider",
                outbox_backlog=backlog,
            )
        )
    )


def event_body(now: datetime, rng: random.Random) -> bytes:
    event = DetectionEvent(
        event_id=uuid.UUID(int=rng.getrandbits(128)),
        ts=now,
        type=rng.choice(["stopped_vehicle", "wrong_way", "line_crossing"]),
        stream="cam0",
        cls="car",
        model_version=MODEL,
    )
    return encode(EventsMessage(records=[event]))


@dataclass
class TrafficClock:
    """When one device next sends each kind of message (monotonic seconds)."""

    counts_every_s: float
    health_every_s: float
    events_per_hour: float
    rng: random.Random
    next_counts: float = 0.0
    next_health: float = 0.0
    next_event: float = 0.0

    def start(self, now: float) -> None:
        """Spread the first messages over one period, as devices that booted at different times."""
        self.next_counts = now + self.rng.uniform(0, self.counts_every_s)
        self.next_health = now + self.rng.uniform(0, self.health_every_s)
        self.next_event = now + self._event_gap()

    def _event_gap(self) -> float:
        if self.events_per_hour <= 0:
            return float("inf")
        return self.rng.expovariate(self.events_per_hour / 3600.0)

    def due(self, now: float) -> list[str]:
        """The kinds due at ``now``, each at most once (a late tick does not burst)."""
        kinds = []
        if now >= self.next_counts:
            kinds.append("counts")
            self.next_counts = max(self.next_counts + self.counts_every_s, now)
        if now >= self.next_health:
            kinds.append("health")
            self.next_health = max(self.next_health + self.health_every_s, now)
        if now >= self.next_event:
            kinds.append("events")
            self.next_event = now + self._event_gap()
        return kinds

    def next_due(self) -> float:
        return min(self.next_counts, self.next_health, self.next_event)


def body(
    kind: str, rng: random.Random, interval_s: int, uptime_s: float, backlog: int, model_version: str = MODEL
) -> bytes:
    now = datetime.now(UTC)
    if kind == "counts":
        return counts_body(now.replace(microsecond=0), interval_s)
    if kind == "health":
        return health_body(now, uptime_s, backlog, model_version)
    return event_body(now, rng)
