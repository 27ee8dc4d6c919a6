"""The same SUMO demand run three (or four) ways, judged by SUMO's own outputs.

- ``fixed``: the traffic light's own fixed-time program from the network.
- ``sumo_actuated``: SUMO's actuated control of the same phases (``type="actuated"``:
  gap-based, with the induction loops SUMO places itself: perfect detectors).
- ``roadside_direct``: Roadside's NEMA controller (:mod:`roadside.signalcontrol`)
  fed by SUMO's own stop-bar E2 detectors and waiting pedestrians: the
  controller alone, with perfect detection (the stepping stone).
- ``roadside``: the controller fed through the whole loop (SUMO virtual camera →
  agent → sealed MQTT → hub → call stream → controller), in
  :mod:`roadside.sim.signal_loop`.

Every way gets the same network, routes and seed, and writes SUMO's
``tripinfo`` (unfinished trips included) and ``summary``; the figures come
from those files, not from memory. ``bench.signal`` and
``roadside demo --scenario intersection`` print them.
"""

from __future__ import annotations

import logging
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final
from xml.etree import ElementTree as ET

from roadside.shared.errors import ConfigError
from roadside.signalcontrol.links import PhaseMap
from roadside.signalcontrol.runner import ControllerRunner
from roadside.signalcontrol.sumo import (
    StopBarChannel,
    SumoDetectors,
    SumoHeads,
    TraciConnection,
    derive_phase_map,
    write_stopbar_detectors,
)
from roadside.signalcontrol.timing import PhaseTiming, TimingPlan
from roadside.sim.sumo.world import SumoWorld

log = logging.getLogger(__name__)

WAYS: Final = ("fixed", "sumo_actuated", "roadside_direct", "roadside")
STEP_S: Final = 0.1
# The controller's timing and SUMO's actuated program use the same min and max green, yellow and red,
# so the comparison is between the ways of deciding. Passage differs on purpose: SUMO's loops measure
# gaps at a point upstream (max-gap 2 s), Roadside's zones are 30 m of stop-bar presence, where a
# vehicle holds the call while it crosses the zone and a short passage (1 s) follows (a sweep over
# 0.5-2 s and 15-30 m zones on the intersection scenario: docs/signals.md).
BENCH_TIMING: Final = PhaseTiming(
    min_green=5.0, passage=1.0, max_green=30.0, yellow=3.0, red_clear=1.0, walk=5.0, ped_clear=8.0
)
SUMO_MAX_GAP_S: Final = 2.0


@dataclass(frozen=True)
class Network:
    """The files of one run: a sumocfg (its net read from it), the traffic light, the cameras."""

    sumocfg: Path
    net: Path
    tls: str
    camera_pose: Path | None
    workdir: Path

    @classmethod
    def of(cls, sumocfg: Path, tls: str | None, camera_pose: Path | None, workdir: Path) -> Network:
        net = _net_of(sumocfg)
        return cls(sumocfg, net, tls or _only_tls(net), camera_pose, workdir)


@dataclass
class WayResult:
    """SUMO's figures for one way (per vehicle means over every trip, finished or not)."""

    way: str
    vehicles: int = 0
    arrived: int = 0
    time_loss_s: float = 0.0
    waiting_s: float = 0.0
    stops: float = 0.0
    throughput_vph: float = 0.0
    persons: int = 0
    ped_time_loss_s: float | None = None
    ped_arrived: int = 0
    conflicting_greens: int = 0
    wall_s: float = 0.0
    events: dict[int, int] = field(default_factory=dict)

    def as_json(self) -> dict[str, Any]:
        return {k: (round(v, 3) if isinstance(v, float) else v) for k, v in self.__dict__.items()}


def timing_plan(phase_map: PhaseMap, timing: PhaseTiming = BENCH_TIMING) -> TimingPlan:
    return TimingPlan.standard(sorted(phase_map.phases), dict.fromkeys(phase_map.phases, timing))


def run_way(
    way: str, network: Network, duration_s: float, seed: int, *, until_empty_s: float = 0.0
) -> WayResult:
    """Run SUMO ``duration_s`` one way (then up to ``until_empty_s`` more while anyone is still on the
    road or yet to depart); the figures from its tripinfo."""
    if way not in WAYS[:3]:
        raise ConfigError(f"unknown way {way!r}: {', '.join(WAYS[:3])} run here (roadside needs the loop)")
    folder = network.workdir / way
    folder.mkdir(parents=True, exist_ok=True)
    phase_map = derive_phase_map(network.net, network.tls)
    channels = write_stopbar_detectors(network.net, phase_map, folder / "stopbar.add.xml", folder / "e2.xml")
    extra = sumo_outputs(folder, folder / "stopbar.add.xml")
    if way == "sumo_actuated":
        write_actuated_program(network.net, network.tls, folder / "actuated.add.xml")
        extra[extra.index("-a") + 1] += f",{folder / 'actuated.add.xml'}"
    started = time.monotonic()
    result = WayResult(way)
    with SumoWorld.start(network.sumocfg, seed=seed, extra_args=extra) as world:
        link = TraciConnection(world.traci)
        if way == "sumo_actuated":
            link.call(link.raw.trafficlight.setProgram, network.tls, "actuated")
        drive = _direct_controller(link, phase_map, channels, result) if way == "roadside_direct" else None
        steps, more = round(duration_s / STEP_S), round(until_empty_s / STEP_S)
        while steps > 0 or (more > 0 and link.remaining() > 0):
            link.step()
            if drive is not None:
                drive()
            if steps > 0:
                steps -= 1
            else:
                more -= 1
    result.wall_s = time.monotonic() - started
    read_tripinfo(folder / "tripinfo.xml", duration_s, result)
    return result


def sumo_outputs(folder: Path, additional: Path) -> list[str]:
    """SUMO arguments for the outputs every way writes (tripinfo with unfinished trips, summary)."""
    return [
        "-a", str(additional),
        "--tripinfo-output", str(folder / "tripinfo.xml"),
        "--tripinfo-output.write-unfinished", "true",
        "--summary-output", str(folder / "summary.xml"),
        "--time-to-teleport", "-1",
    ]  # fmt: skip


def _direct_controller(
    link: TraciConnection, phase_map: PhaseMap, channels: list[StopBarChannel], result: WayResult
) -> Callable[[], None]:
    plan = timing_plan(phase_map)
    heads = SumoHeads(link, phase_map)
    runner = ControllerRunner(plan, heads, SumoDetectors(link, phase_map, channels))

    def tick() -> None:
        runner.tick()
        if phase_map.conflicting_links(heads.shown(), plan.structure):
            result.conflicting_greens += 1
        result.events = dict(runner.event_counts)

    return tick


def write_actuated_program(net: Path, tls: str, path: Path) -> None:
    """SUMO's actuated version of the net's own program: every long green phase gap-timed between the
    bench's min and max green (``max-gap`` 2 s); short and yellow phases keep their times."""
    root = ET.parse(net).getroot()  # noqa: S314 - SUMO's own output, written by this run
    logic = next((t for t in root.iter("tlLogic") if t.get("id") == tls), None)
    if logic is None:
        raise ConfigError(f"{net} has no program for traffic light {tls!r}")
    out = ET.Element("additional")
    actuated = ET.SubElement(out, "tlLogic", id=tls, type="actuated", programID="actuated", offset="0")
    ET.SubElement(actuated, "param", key="max-gap", value=str(SUMO_MAX_GAP_S))
    ET.SubElement(actuated, "param", key="detector-gap", value="2.0")
    for phase in logic.iter("phase"):
        state, duration = phase.get("state", ""), float(phase.get("duration", "0"))
        attrs = {"duration": f"{duration:g}", "state": state}
        if duration > 10.0 and "y" not in state:
            attrs |= {"minDur": f"{BENCH_TIMING.min_green:g}", "maxDur": f"{BENCH_TIMING.max_green:g}"}
        ET.SubElement(actuated, "phase", attrib=attrs)
    ET.indent(out)
    path.write_text(ET.tostring(out, encoding="unicode") + "\n")


def read_tripinfo(path: Path, duration_s: float, result: WayResult) -> None:
    """Per-vehicle means from SUMO's tripinfo (unfinished trips count with their loss so far)."""
    root = ET.parse(path).getroot()  # noqa: S314 - SUMO's own output, written by this run
    trips = list(root.iter("tripinfo"))
    result.vehicles = len(trips)
    result.arrived = sum(1 for t in trips if float(t.get("arrival", "-1")) >= 0)
    if trips:
        result.time_loss_s = statistics.fmean(float(t.get("timeLoss", "0")) for t in trips)
        result.waiting_s = statistics.fmean(float(t.get("waitingTime", "0")) for t in trips)
        result.stops = statistics.fmean(float(t.get("waitingCount", "0")) for t in trips)
    result.throughput_vph = result.arrived * 3600.0 / duration_s
    persons = list(root.iter("personinfo"))
    result.persons = len(persons)
    losses = [sum(float(w.get("timeLoss", "0")) for w in p.iter("walk")) for p in persons]
    result.ped_time_loss_s = statistics.fmean(losses) if losses else None
    result.ped_arrived = sum(
        1 for p in persons if all(float(w.get("arrival", "-1")) >= 0 for w in p.iter("walk"))
    )


def _net_of(sumocfg: Path) -> Path:
    if not sumocfg.is_file():
        raise ConfigError(f"SUMO configuration {sumocfg} does not exist")
    node = ET.parse(sumocfg).getroot().find("input/net-file")  # noqa: S314 - the operator's own file
    if node is None or not node.get("value"):
        raise ConfigError(f"{sumocfg} names no net-file")
    return (sumocfg.parent / str(node.get("value"))).resolve()


def _only_tls(net: Path) -> str:
    tree = ET.parse(net)  # noqa: S314 - the operator's own network
    ids = sorted({str(t.get("id")) for t in tree.getroot().iter("tlLogic")})
    if len(ids) != 1:
        raise ConfigError(f"{net} has traffic lights {ids}: say which with --tls")
    return ids[0]


def compare(
    network: Network,
    duration_s: float,
    seed: int,
    ways: tuple[str, ...],
    loop: Callable[[Network, float, int], dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """Run ``ways`` on the same network and demand; the summary the benchmark and the demo print.

    ``loop`` runs the ``roadside`` way (the whole camera → hub → controller loop) and returns its
    figures (a ``"way"`` :class:`WayResult` plus the loop's own measures); without it that way is
    left out and its keys are ``null``.
    """
    results: dict[str, WayResult] = {}
    loop_figures: dict[str, Any] = {}
    for way in ways:
        if way == "roadside":
            if loop is None:
                continue
            loop_figures = loop(network, duration_s, seed)
            results[way] = loop_figures.pop("way")
        else:
            results[way] = run_way(way, network, duration_s, seed)
    return summarise(results, loop_figures, network, duration_s, seed)


def summarise(
    results: dict[str, WayResult],
    loop_figures: dict[str, Any],
    network: Network,
    duration_s: float,
    seed: int,
) -> dict[str, Any]:
    def per_way(attribute: str) -> dict[str, float | None]:
        return {
            name: (round(getattr(results[way], attribute), 3) if way in results else None)
            for name, way in (
                ("fixed", "fixed"),
                ("sumo_actuated", "sumo_actuated"),
                ("roadside_direct", "roadside_direct"),
                ("roadside", "roadside"),
            )
        }

    time_loss = per_way("time_loss_s")
    controlled = [r for w, r in results.items() if w in ("roadside_direct", "roadside")]
    return {
        "bench": "signal",
        "sumocfg": str(network.sumocfg),
        "tls": network.tls,
        "duration_s": duration_s,
        "seed": seed,
        "time_loss_s": time_loss,
        "waiting_s": per_way("waiting_s"),
        "stops": per_way("stops"),
        "throughput_vph": per_way("throughput_vph"),
        "ped_time_loss_s": per_way("ped_time_loss_s"),
        "vs_fixed": _ratio(time_loss, "fixed"),
        "vs_sumo_actuated": _ratio(time_loss, "sumo_actuated"),
        "tmc_error_max": loop_figures.get("tmc_error_max"),
        "presence_agreement": loop_figures.get("presence_agreement"),
        "call_latency_p50_ms": loop_figures.get("call_latency_p50_ms"),
        "call_latency_p95_ms": loop_figures.get("call_latency_p95_ms"),
        "conflicting_greens": sum(r.conflicting_greens for r in controlled),
        "ways": {w: r.as_json() for w, r in results.items()},
        **{k: v for k, v in loop_figures.items() if k not in _LOOP_KEYS},
    }


_LOOP_KEYS = frozenset({"tmc_error_max", "presence_agreement", "call_latency_p50_ms", "call_latency_p95_ms"})


def _ratio(time_loss: dict[str, float | None], base: str) -> dict[str, float | None]:
    """Each controller's time loss relative to ``base`` (-0.3: 30 % less)."""
    reference = time_loss.get(base)
    return {
        way: (round(value / reference - 1.0, 3) if value is not None and reference else None)
        for way, value in time_loss.items()
        if way.startswith("roadside")
    }


def demo_intersection(
    duration_s: float | None, home: Path | None, sumocfg: Path | None, camera_pose: Path | None, console: Any
) -> None:
    """``roadside demo --scenario intersection``: the comparison, a table on stderr, JSON on stdout."""
    import json
    import tempfile

    from roadside.sim.sumo.scenarios import build_scenario

    duration = duration_s or 900.0
    workdir = home or Path(tempfile.mkdtemp(prefix="roadside-demo-intersection-"))
    if sumocfg is not None:
        network = Network.of(sumocfg, None, camera_pose, workdir)
    else:
        scenario = build_scenario("intersection", workdir / "scenario", seed=42, duration_s=duration)
        network = Network(scenario.sumocfg, scenario.net, scenario.junction, scenario.poses, workdir)
    loop = None
    try:
        from roadside.sim.signal_loop import run_loop

        loop = run_loop
    except ImportError as exc:
        console.print(f"the whole-loop way is not available here ({exc}); running the other three")
    summary = compare(network, duration, 42, WAYS, loop)
    for way, figures in summary["ways"].items():
        console.print(
            f"{way:16s} time loss {figures['time_loss_s']:6.1f} s/veh  waiting {figures['waiting_s']:6.1f} s  "
            f"stops {figures['stops']:.2f}  conflicting greens {figures['conflicting_greens']}"
        )
    console.print(f"SUMO's outputs are in {workdir}")
    print(json.dumps(summary))
