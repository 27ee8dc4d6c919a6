"""Roadside's own SUMO scenarios, generated into a folder from a seed.

- ``intersection``: a four-leg signalised junction ``C`` at the origin, legs of
  150 m to the north, east, south and west; two vehicle lanes each way plus
  sidewalks and zebra crossings on every leg; left, through and right demand
  from every approach with a mix of cars, trucks, buses, motorcycles and
  bicycles; people walking corner to corner across the crossings.
- ``arterial``: a three-leg junction ``C`` on an east-west arterial (two lanes
  each way, 250 m legs) with a side road from the south (one lane each way),
  signalised, with sidewalks, crossings and a few pedestrians.

Both are built with ``netconvert`` from node and edge lists and routed with
``duarouter`` at a fixed seed, without coordinate normalisation, so network
metres are the coordinates written here (junction centre at 0, 0). Each
scenario also writes a camera pose file covering every approach
(:func:`roadside.sim.sumo.poses.approach_cameras`) and one holding a single
high camera over the whole junction box, every entrance and exit in view, for
turning-movement counts (:func:`roadside.sim.sumo.poses.junction_camera`). Generation takes well
under a second and the same seed gives identical files.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Final, Literal
from xml.etree import ElementTree as ET

from roadside.shared.errors import ConfigError
from roadside.sim.sumo.poses import approach_cameras, junction_camera, write_pose_file
from roadside.sim.sumo.tools import run_tool, strip_generator_comment

__all__ = [
    "SCENARIO_NAMES",
    "STEP_LENGTH_S",
    "VEHICLE_MIX",
    "Movement",
    "Scenario",
    "ScenarioName",
    "build_scenario",
    "turn_of",
]

ScenarioName = Literal["intersection", "arterial"]
SCENARIO_NAMES: Final[tuple[ScenarioName, ...]] = ("intersection", "arterial")
STEP_LENGTH_S: Final = 0.1  # one SUMO step; a 10 fps camera sees every step
_SPEED_MS: Final = 13.89  # 50 km/h, an urban limit

# Share of each SUMO vehicle class in the demand (a city arterial's mix, roughly).
VEHICLE_MIX: Final[dict[str, float]] = {
    "passenger": 0.76,
    "truck": 0.06,
    "trailer": 0.02,
    "bus": 0.04,
    "motorcycle": 0.06,
    "bicycle": 0.06,
}


@dataclass(frozen=True)
class Movement:
    """A turning movement and its demand: vehicles entering on ``entry`` and leaving on ``exit``."""

    entry: str  # SUMO edge into the junction
    exit: str  # SUMO edge out of it
    turn: str  # left, through, right (from the geometry)
    vehicles_per_hour: float


@dataclass(frozen=True)
class Scenario:
    """A generated scenario: the files SUMO runs and the cameras that watch it."""

    name: str
    folder: Path
    sumocfg: Path
    net: Path
    routes: Path
    poses: Path  # camera pose file, one camera per approach
    junction: str  # the signalised junction (and its traffic light's id)
    movements: tuple[Movement, ...]
    seed: int
    duration_s: float
    junction_poses: Path  # camera pose file, one camera over the whole junction (turning movements)


@dataclass(frozen=True)
class _Layout:
    nodes: dict[str, tuple[float, float]]
    roads: dict[str, tuple[str, int]]  # leg name → (outer node, vehicle lanes each way)
    demand: dict[tuple[str, str], float]  # (from leg, to leg) → vehicles per hour
    walks: tuple[tuple[str, str], ...]  # (from leg, to leg) pedestrian routes
    walkers_per_hour: float


_LAYOUTS: Final[dict[str, _Layout]] = {
    "intersection": _Layout(
        nodes={"n": (0.0, 150.0), "e": (150.0, 0.0), "s": (0.0, -150.0), "w": (-150.0, 0.0)},
        roads={"n": ("n", 2), "e": ("e", 2), "s": ("s", 2), "w": ("w", 2)},
        # Per approach: 270-330 through, 90 right, 90 left (the north-south road a little busier).
        demand={
            **dict.fromkeys((("n", "s"), ("s", "n")), 330.0),
            **dict.fromkeys((("e", "w"), ("w", "e")), 270.0),
            **dict.fromkeys((("n", "w"), ("e", "n"), ("s", "e"), ("w", "s")), 90.0),  # right
            **dict.fromkeys((("n", "e"), ("e", "s"), ("s", "w"), ("w", "n")), 90.0),  # left
        },
        walks=(("n", "s"), ("s", "n"), ("e", "w"), ("w", "e"), ("n", "e"), ("s", "w")),
        walkers_per_hour=40.0,
    ),
    "arterial": _Layout(
        nodes={"e": (250.0, 0.0), "s": (0.0, -150.0), "w": (-250.0, 0.0)},
        roads={"e": ("e", 2), "s": ("s", 1), "w": ("w", 2)},
        demand={
            ("w", "e"): 650.0,
            ("e", "w"): 650.0,
            ("w", "s"): 90.0,
            ("e", "s"): 110.0,
            ("s", "e"): 120.0,
            ("s", "w"): 90.0,
        },
        walks=(("w", "e"), ("e", "w"), ("s", "e")),
        walkers_per_hour=30.0,
    ),
}


def build_scenario(
    name: str,
    folder: Path,
    *,
    seed: int = 42,
    duration_s: float = 3600.0,
    demand_scale: float = 1.0,
) -> Scenario:
    """Generate scenario ``name`` into ``folder`` (created if needed) and return its files.

    ``duration_s`` is how long demand is generated for (and the sumocfg's end);
    ``demand_scale`` multiplies every flow. ``ConfigError`` for an unknown name.
    """
    layout = _LAYOUTS.get(name)
    if layout is None:
        raise ConfigError(f"unknown SUMO scenario {name!r}: choose one of {', '.join(SCENARIO_NAMES)}")
    if duration_s <= 0 or demand_scale < 0:
        raise ConfigError("a scenario needs a positive duration and a non-negative demand scale")
    folder.mkdir(parents=True, exist_ok=True)
    net = folder / f"{name}.net.xml"
    _write_plain_network(folder, name, layout)
    run_tool(
        "netconvert",
        [
            "--node-files", f"{name}.nod.xml",
            "--edge-files", f"{name}.edg.xml",
            "--output-file", net.name,
            "--sidewalks.guess", "true",
            "--crossings.guess", "true",
            "--offset.disable-normalization", "true",
            "--no-turnarounds", "true",
            "--tls.default-type", "static",
            "--seed", str(seed),
        ],
        folder,
    )  # fmt: skip
    strip_generator_comment(net)
    movements = _movements(layout, net, demand_scale)
    trips = folder / f"{name}.trips.xml"
    _write_demand(trips, layout, movements, duration_s, demand_scale)
    routes = folder / f"{name}.rou.xml"
    run_tool(
        "duarouter",
        [
            "--net-file", net.name,
            "--route-files", trips.name,
            "--output-file", routes.name,
            "--seed", str(seed),
            "--no-step-log", "true",
            "--ignore-errors", "false",
        ],
        folder,
    )  # fmt: skip
    strip_generator_comment(routes)
    for alt in folder.glob(f"{name}.rou.alt.xml"):
        alt.unlink()  # duarouter's route alternatives: only for iterative assignment
    sumocfg = folder / f"{name}.sumocfg"
    _write_sumocfg(sumocfg, net, routes, seed, duration_s)
    poses = folder / f"{name}.cameras.json"
    write_pose_file(poses, approach_cameras(net, "C"))
    junction_poses = folder / f"{name}.junction.cameras.json"
    write_pose_file(junction_poses, [junction_camera(net, "C")])
    return Scenario(
        name, folder, sumocfg, net, routes, poses, "C", tuple(movements), seed, duration_s, junction_poses
    )


def turn_of(entry_direction: tuple[float, float], exit_direction: tuple[float, float]) -> str:
    """``left``, ``through``, ``right`` or ``u-turn`` for travel turning from one direction into another."""
    ax, ay = entry_direction
    bx, by = exit_direction
    angle = math.degrees(math.atan2(ax * by - ay * bx, ax * bx + ay * by))  # + is anticlockwise
    if abs(angle) <= 35.0:
        return "through"
    if abs(angle) >= 150.0:
        return "u-turn"
    return "left" if angle > 0 else "right"


def _write_plain_network(folder: Path, name: str, layout: _Layout) -> None:
    nodes = ET.Element("nodes")
    ET.SubElement(nodes, "node", id="C", x="0", y="0", type="traffic_light")
    for node, (x, y) in layout.nodes.items():
        ET.SubElement(nodes, "node", id=node.upper(), x=str(x), y=str(y), type="priority")
    edges = ET.Element("edges")
    for leg, (node, lanes) in layout.roads.items():
        common = {"numLanes": str(lanes), "speed": str(_SPEED_MS)}
        ET.SubElement(edges, "edge", id=f"{leg}_in", attrib={"from": node.upper(), "to": "C", **common})
        ET.SubElement(edges, "edge", id=f"{leg}_out", attrib={"from": "C", "to": node.upper(), **common})
    _write_xml(folder / f"{name}.nod.xml", nodes)
    _write_xml(folder / f"{name}.edg.xml", edges)


def _movements(layout: _Layout, net_file: Path, scale: float) -> list[Movement]:
    def heading(leg: str, inbound: bool) -> tuple[float, float]:
        x, y = layout.nodes[leg]
        norm = math.hypot(x, y)
        return (-x / norm, -y / norm) if inbound else (x / norm, y / norm)

    return [
        Movement(f"{a}_in", f"{b}_out", turn_of(heading(a, True), heading(b, False)), vph * scale)
        for (a, b), vph in layout.demand.items()
    ]


def _write_demand(
    path: Path, layout: _Layout, movements: list[Movement], duration_s: float, scale: float
) -> None:
    routes = ET.Element("routes")
    mix = ET.SubElement(routes, "vTypeDistribution", id="mix")
    for vclass, share in VEHICLE_MIX.items():
        ET.SubElement(mix, "vType", id=vclass, vClass=vclass, probability=str(share))
    end = f"{duration_s:.1f}"
    for m in movements:
        if m.vehicles_per_hour <= 0:
            continue
        rate = m.vehicles_per_hour / 3600.0  # Poisson arrivals at the movement's mean rate
        ET.SubElement(
            routes,
            "flow",
            attrib={"id": f"{m.entry}-{m.exit}", "type": "mix", "from": m.entry, "to": m.exit},
            begin="0",
            end=end,
            period=f"exp({rate:.6f})",
            departLane="best",
            departSpeed="max",
        )
    walkers = layout.walkers_per_hour * scale / 3600.0
    for a, b in layout.walks if walkers > 0 else ():
        flow = ET.SubElement(routes, "personFlow", id=f"walk_{a}_{b}", begin="0", end=end)
        flow.set("period", f"exp({walkers:.6f})")
        ET.SubElement(flow, "walk", attrib={"from": f"{a}_in", "to": f"{b}_out"})
    _write_xml(path, routes)


def _write_sumocfg(path: Path, net: Path, routes: Path, seed: int, duration_s: float) -> None:
    root = ET.Element("configuration")
    inp = ET.SubElement(root, "input")
    ET.SubElement(inp, "net-file", value=net.name)
    ET.SubElement(inp, "route-files", value=routes.name)
    time = ET.SubElement(root, "time")
    ET.SubElement(time, "begin", value="0")
    ET.SubElement(time, "end", value=f"{duration_s:.1f}")
    ET.SubElement(time, "step-length", value=str(STEP_LENGTH_S))
    rnd = ET.SubElement(root, "random_number")
    ET.SubElement(rnd, "seed", value=str(seed))
    report = ET.SubElement(root, "report")
    ET.SubElement(report, "no-step-log", value="true")
    ET.SubElement(report, "no-warnings", value="true")
    _write_xml(path, root)


def _write_xml(path: Path, root: ET.Element) -> None:
    ET.indent(root)
    path.write_text(ET.tostring(root, encoding="unicode") + "\n")
