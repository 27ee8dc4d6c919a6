"""``roadside signal run`` as a function: one intersection in SUMO, driven by the hub's calls.

:func:`run_on_sumo` joins a running SUMO as one TraCI client (the cameras are
another), reads the hub's call stream, ticks the controller once per SUMO
step, applies its display to the traffic light and posts its ATSPM events to
the hub, until SUMO ends, ``max_ticks`` pass or ``stop`` is set. The
benchmark calls it in a thread; the CLI calls it in the foreground.
"""

from __future__ import annotations

import logging
import statistics
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

from roadside.shared.errors import ConfigError, SignalSafetyError, TransportError
from roadside.signalcontrol.hub import HubCallStream, HubEventPoster, hub_clients
from roadside.signalcontrol.links import PhaseMap
from roadside.signalcontrol.runner import ControllerRunner
from roadside.signalcontrol.sumo import SumoHeads, TraciConnection, derive_phase_map
from roadside.signalcontrol.timing import PhaseTiming, TimingPlan

log = logging.getLogger(__name__)

_TIMING = TypeAdapter(PhaseTiming)


class TimingFile(BaseModel):
    """``--timing FILE``: a default for every phase and per-phase overrides (seconds)."""

    model_config = ConfigDict(extra="forbid")

    default: dict[str, Any] = Field(default_factory=dict)
    phases: dict[int, dict[str, Any]] = Field(default_factory=dict)

    def plan(self, phases: frozenset[int]) -> TimingPlan:
        try:
            base = _TIMING.validate_python(self.default)
            overrides = {p: _TIMING.validate_python({**self.default, **t}) for p, t in self.phases.items()}
        except ValidationError as exc:
            raise ConfigError(
                f"controller timing: {exc.errors()[0]['msg']} at {exc.errors()[0]['loc']}"
            ) from exc
        return TimingPlan.standard(sorted(phases), {p: overrides.get(p, base) for p in phases})

    @classmethod
    def load(cls, path: Path | None) -> TimingFile:
        if path is None:
            return cls()
        try:
            return cls.model_validate_json(path.read_bytes())
        except (OSError, ValidationError) as exc:
            raise ConfigError(f"controller timing file {path}: {exc}") from exc


@dataclass(frozen=True)
class ControllerSettings:
    """Everything ``roadside signal run`` needs, built once from the command line."""

    signal: str
    hub_url: str
    token: str
    net: Path
    tls: str
    sumo_port: int
    sumo_order: int = 2
    sumo_host: str = "127.0.0.1"
    ca_file: Path | None = None
    timing: TimingFile = field(default_factory=TimingFile)
    stale_after_s: float = 20.0  # above the hub's SSE heartbeat (15 s by default)
    max_ticks: int | None = None


@dataclass
class RunSummary:
    ticks: int = 0
    events: Mapping[int, int] = field(default_factory=dict)
    calls: Mapping[str, int] = field(default_factory=dict)
    posted: Mapping[str, int] = field(default_factory=dict)
    latency_p50_ms: float | None = None
    latency_p95_ms: float | None = None
    latencies_ms: list[float] = field(default_factory=list)
    hub_leg_p50_ms: float | None = None  # of the above, frame capture → the hub sending the call
    hub_leg_p95_ms: float | None = None
    conflicting_greens: int = 0
    tripped: str | None = None
    feed_lost_ticks: int = 0
    longest_wait_s: float = 0.0  # the longest any registered call waited for its green (or waits still)
    ended_by: str = ""


Observer = Callable[[int], None]
"""Called after every tick with the tick's number (the benchmark records SUMO's own detectors)."""


def run_on_sumo(
    settings: ControllerSettings,
    stop: threading.Event | None = None,
    *,
    link: TraciConnection | None = None,
    observer: Observer | None = None,
) -> RunSummary:
    """Drive ``settings.tls`` in a running SUMO from the hub's calls; see the module docstring.

    ``link``: a TraCI connection the caller already holds (and keeps: it is not closed here);
    without it the controller joins SUMO at ``settings.sumo_port`` as client ``sumo_order``.
    """
    stop = stop or threading.Event()
    phase_map = derive_phase_map(settings.net, settings.tls)
    plan = settings.timing.plan(phase_map.phases)

    client = hub_clients(settings.hub_url, settings.token, settings.ca_file)

    summary = RunSummary()
    owned = link is None
    link = link or TraciConnection.join(settings.sumo_port, settings.sumo_order, settings.sumo_host)
    stream = HubCallStream(client, settings.signal, stale_after_s=settings.stale_after_s).start()
    poster = HubEventPoster(client, settings.signal).start()
    try:
        # SUMO takes no command but a step until every client has set its order: step first.
        link.step()
        heads = SumoHeads(link, phase_map)
        runner = ControllerRunner(plan, heads, stream, poster)
        summary.ended_by = _loop(link, runner, heads, phase_map, settings, stop, summary, observer)
        summary.events = dict(runner.event_counts)
    finally:
        stream.stop()
        poster.stop()
        if owned:
            link.close()
    summary.calls, summary.posted = dict(stream.counts), dict(poster.counts)
    summary.latencies_ms = list(stream.latencies_ms)
    summary.latency_p50_ms, summary.latency_p95_ms = _p50_p95(summary.latencies_ms)
    summary.hub_leg_p50_ms, summary.hub_leg_p95_ms = _p50_p95(list(stream.hub_legs_ms))
    return summary


def _p50_p95(samples: list[float]) -> tuple[float | None, float | None]:
    if len(samples) < 2:
        return None, None
    return statistics.median(samples), statistics.quantiles(samples, n=20)[18]


def _loop(
    link: TraciConnection,
    runner: ControllerRunner,
    heads: SumoHeads,
    phase_map: PhaseMap,
    settings: ControllerSettings,
    stop: threading.Event,
    summary: RunSummary,
    observer: Observer | None,
) -> str:
    while not stop.is_set():
        if settings.max_ticks is not None and summary.ticks >= settings.max_ticks:
            return "max_ticks"
        try:
            link.step()
        except TransportError:
            return "sumo_ended"
        try:
            runner.tick()
        except SignalSafetyError as exc:
            summary.tripped = str(exc)
            return "conflict_monitor"
        summary.ticks += 1
        summary.feed_lost_ticks += int(runner.calls.feed_lost)
        waits = runner.controller.waiting()
        if waits:
            oldest = runner.controller.tick - min(waits.values())
            summary.longest_wait_s = max(summary.longest_wait_s, oldest / 10.0)
        if phase_map.conflicting_links(heads.shown(), runner.plan.structure):
            summary.conflicting_greens += 1  # read back from SUMO: what the road really showed
        if observer is not None:
            observer(summary.ticks)
    return "stopped"
