"""SUMO as the intersection: the controller's heads and (for the stepping stone) its detectors, over TraCI.

The only module of the controller that imports ``traci`` and ``sumolib``.

- :func:`derive_phase_map` reads a ``.net.xml`` and gives every link of a
  traffic light a NEMA phase: opposite approaches pair up (the pair with
  more lanes is the main street, phases 2 and 6; the other 4 and 8; a lone
  approach, such as a T's stem, takes 4), through links are protected,
  turns permissive, and each crossing walks with the approach that passes
  beside it (right-hand traffic). Left turns are permissive: protected left
  phases need exclusive left lanes, which a net may not have; give a map
  by hand (``PhaseMap``) for those.
- :class:`TraciConnection` is this controller's own TraCI client: it starts
  nothing, it joins a SUMO run (``--num-clients``) in its client order, so
  SUMO steps only when the cameras and the controller have both asked.
- :class:`SumoHeads` applies a display with ``setRedYellowGreenState``.
- :func:`write_stopbar_detectors` and :class:`SumoDetectors` are the
  stepping stone and the benchmark's reference: SUMO's own lane-area (E2)
  detectors at the stop bars and the people waiting at crossings, as
  perfect detector channels.
"""

from __future__ import annotations

import contextlib
import io
import logging
import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from xml.etree import ElementTree as ET

from roadside.shared.errors import ConfigError, TransportError
from roadside.signalcontrol.calls import DetectorInput
from roadside.signalcontrol.core import Display
from roadside.signalcontrol.links import Link, LinkKind, PhaseMap

log = logging.getLogger(__name__)

_PAIR_SLOTS = ((2, 6), (4, 8))
_OPPOSITE_DEG = 150.0
STOPBAR_ZONE_M = 30.0


@dataclass(frozen=True)
class _Approach:
    edge: str
    direction: tuple[float, float]  # unit travel direction at the stop bar
    lanes: tuple[str, ...]
    length: float


def _read_net(net_file: Path) -> Any:
    import sumolib

    if not net_file.is_file():
        raise ConfigError(f"SUMO network {net_file} does not exist")
    with contextlib.redirect_stderr(io.StringIO()):  # sumolib warns about option combinations
        return sumolib.net.readNet(str(net_file), withInternal=True, withPedestrianConnections=True)


def derive_phase_map(net_file: Path, tls_id: str) -> PhaseMap:
    """Phases for every link of traffic light ``tls_id`` in ``net_file`` (see the module docstring)."""
    net = _read_net(net_file)
    try:
        tls = net.getTLS(tls_id)
    except KeyError as exc:
        raise ConfigError(f"{net_file} has no traffic light {tls_id!r}") from exc
    connections = tls.getConnections()
    approaches = _approaches(connections)
    phase_of = _assign_phases(approaches, tls_id)
    centre = _centre(approaches, net, connections)
    links: dict[int, Link] = {}
    crossings: dict[int, list[str]] = {}
    for in_lane, out_lane, index in connections:
        edge = in_lane.getEdge()
        if edge.getFunction() == "walkingarea":
            crossing = out_lane.getEdge()
            phase = _crossing_phase(crossing, approaches, phase_of, centre)
            links[index] = Link(phase, "crossing")
            crossings.setdefault(phase, []).append(crossing.getID())
            continue
        direction = next((c.getDirection() for c in in_lane.getOutgoing() if c.getToLane() == out_lane), "s")
        kind: LinkKind = "protected" if direction == "s" else "permissive"
        links[index] = Link(phase_of[edge.getID()], kind)
    count = max(links) + 1 if links else 0
    lanes = {phase_of[a.edge]: a.lanes for a in approaches}
    return PhaseMap(tls_id, count, links, lanes, {p: tuple(c) for p, c in crossings.items()})


def _approaches(connections: list[Any]) -> list[_Approach]:
    found: dict[str, _Approach] = {}
    for in_lane, _, _ in connections:
        edge = in_lane.getEdge()
        if edge.getFunction() == "walkingarea" or edge.getID() in found:
            continue
        (x0, y0), (x1, y1) = edge.getShape()[-2:]
        norm = math.hypot(x1 - x0, y1 - y0) or 1.0
        lanes = tuple(sorted({lane.getID() for lane, _, _ in connections if lane.getEdge() is edge}))
        found[edge.getID()] = _Approach(
            edge.getID(), ((x1 - x0) / norm, (y1 - y0) / norm), lanes, edge.getLength()
        )
    return sorted(found.values(), key=lambda a: a.edge)


def _assign_phases(approaches: list[_Approach], tls_id: str) -> dict[str, int]:
    groups: list[tuple[_Approach, ...]] = []
    left = list(approaches)
    while left:
        first = left.pop(0)
        partner = min(left, key=lambda a: _dot(first.direction, a.direction), default=None)
        if (
            partner is not None
            and math.degrees(math.acos(_clamp(_dot(first.direction, partner.direction)))) >= _OPPOSITE_DEG
        ):
            left.remove(partner)
            groups.append((first, partner))
        else:
            groups.append((first,))
    if len(groups) > len(_PAIR_SLOTS):
        raise ConfigError(
            f"traffic light {tls_id} has {len(approaches)} approaches in {len(groups)} directions: "
            "more than two streets; give its phase map by hand"
        )
    groups.sort(key=lambda g: (-sum(len(a.lanes) for a in g), -len(g), -sum(a.length for a in g), g[0].edge))
    return {a.edge: slot[i] for g, slot in zip(groups, _PAIR_SLOTS, strict=False) for i, a in enumerate(g)}


def _centre(approaches: list[_Approach], net: Any, connections: list[Any]) -> tuple[float, float]:
    ends = [net.getEdge(a.edge).getShape()[-1] for a in approaches]
    return (sum(x for x, _ in ends) / len(ends), sum(y for _, y in ends) / len(ends))


def _crossing_phase(
    crossing: Any, approaches: list[_Approach], phase_of: dict[str, int], centre: tuple[float, float]
) -> int:
    crossed = {e.getID() for e in crossing.getCrossingEdges()}
    shape = crossing.getShape()
    px = sum(x for x, _ in shape) / len(shape) - centre[0]
    py = sum(y for _, y in shape) / len(shape) - centre[1]
    candidates = [a for a in approaches if a.edge not in crossed]
    if not candidates:
        raise ConfigError(f"crossing {crossing.getID()} crosses every approach: give the phase map by hand")
    # The approach whose traffic passes on the crossing's side (right-hand traffic: on its right).
    best = min(candidates, key=lambda a: a.direction[0] * py - a.direction[1] * px)
    return phase_of[best.edge]


def _dot(a: tuple[float, float], b: tuple[float, float]) -> float:
    return a[0] * b[0] + a[1] * b[1]


def _clamp(x: float) -> float:
    return max(-1.0, min(1.0, x))


# --- detectors (SUMO's own, for the stepping stone and as the benchmark's reference) --------


@dataclass(frozen=True)
class StopBarChannel:
    channel: int
    phase: int
    detector: str  # the E2 detector's id
    lane: str


def stopbar_channels(phase_map: PhaseMap) -> list[StopBarChannel]:
    """One channel per approach lane, numbered from 1 in phase then lane order."""
    rows = sorted((phase, lane) for phase, lanes in phase_map.approaches.items() for lane in lanes)
    return [StopBarChannel(i + 1, phase, f"rs_stopbar_{lane}", lane) for i, (phase, lane) in enumerate(rows)]


def write_stopbar_detectors(
    net_file: Path, phase_map: PhaseMap, path: Path, output: Path
) -> list[StopBarChannel]:
    """An additional file with an E2 detector over the last ``STOPBAR_ZONE_M`` of every approach lane."""
    net = _read_net(net_file)
    root = ET.Element("additional")
    channels = stopbar_channels(phase_map)
    for ch in channels:
        length = net.getLane(ch.lane).getLength()
        start = max(0.0, length - STOPBAR_ZONE_M)
        ET.SubElement(
            root,
            "laneAreaDetector",
            id=ch.detector,
            lane=ch.lane,
            pos=f"{start:.2f}",
            endPos=f"{length - 0.1:.2f}",
            period="60",
            file=str(output),
            friendlyPos="true",
        )
    ET.indent(root)
    path.write_text(ET.tostring(root, encoding="unicode") + "\n")
    return channels


# --- TraCI ------------------------------------------------------------------------------------


class TraciConnection:
    """This controller's TraCI client in a SUMO run it did not start (or did, for the benchmark)."""

    def __init__(self, conn: Any) -> None:
        self._conn = conn

    @classmethod
    def join(cls, port: int, order: int, host: str = "127.0.0.1", retries: int = 100) -> TraciConnection:
        import traci
        from traci.exceptions import FatalTraCIError, TraCIException

        try:
            with contextlib.redirect_stdout(io.StringIO()):
                conn = traci.connect(port=port, host=host, numRetries=retries, waitBetweenRetries=0.1)
            conn.setOrder(order)
        except (FatalTraCIError, TraCIException, OSError) as exc:
            raise TransportError(f"cannot join SUMO over TraCI at {host}:{port}: {exc}") from exc
        return cls(conn)

    @property
    def raw(self) -> Any:
        return self._conn

    def call(self, fn: Any, *args: Any) -> Any:
        from traci.exceptions import FatalTraCIError, TraCIException

        try:
            return fn(*args)
        except FatalTraCIError as exc:
            raise TransportError(f"SUMO closed the TraCI connection: {exc}") from exc
        except TraCIException as exc:
            raise ConfigError(f"SUMO refused a TraCI request: {exc}") from exc

    def step(self) -> float:
        """Ask for the next step (SUMO runs it once every client has asked); the new time."""
        self.call(self._conn.simulationStep)
        return float(self.call(self._conn.simulation.getTime))

    def remaining(self) -> int:
        return int(self.call(self._conn.simulation.getMinExpectedNumber))

    def close(self) -> None:
        with contextlib.suppress(Exception):  # SUMO may have ended first
            self._conn.close()


class SumoHeads:
    """The traffic light's heads in SUMO: each display becomes one ``setRedYellowGreenState``."""

    def __init__(self, link: TraciConnection, phase_map: PhaseMap) -> None:
        self._link = link
        self.phase_map = phase_map
        self._shown: str | None = None
        sumo_count = len(link.call(link.raw.trafficlight.getRedYellowGreenState, phase_map.tls))
        if sumo_count != phase_map.link_count:
            raise ConfigError(
                f"traffic light {phase_map.tls} has {sumo_count} links in SUMO, the phase map {phase_map.link_count}"
            )

    def apply(self, display: Display) -> None:
        self._set(self.phase_map.state(display))

    def all_red(self) -> None:
        self._set(self.phase_map.dark())

    def shown(self) -> str:
        """What SUMO itself says the light shows now (read back, not remembered)."""
        return str(self._link.call(self._link.raw.trafficlight.getRedYellowGreenState, self.phase_map.tls))

    def _set(self, state: str) -> None:
        if state != self._shown:
            self._link.call(self._link.raw.trafficlight.setRedYellowGreenState, self.phase_map.tls, state)
            self._shown = state


class SumoDetectors:
    """SUMO's stop-bar E2 detectors and waiting pedestrians as detector channels (changes only)."""

    def __init__(self, link: TraciConnection, phase_map: PhaseMap, channels: list[StopBarChannel]) -> None:
        import traci.constants as tc

        self._link = link
        self._channels = channels
        self._state: dict[int, bool] = {}
        self._crossing_phase = {c: p for p, cs in phase_map.crossings.items() for c in cs}
        self._ped_channel = {p: 100 + p for p in phase_map.crossings}  # pedestrian channels beside vehicles'
        self._vars = [tc.LAST_STEP_VEHICLE_NUMBER]
        for ch in channels:
            link.call(link.raw.lanearea.subscribe, ch.detector, self._vars)

    def occupied(self) -> dict[int, bool]:
        """Channel → whether its E2 detector holds a vehicle at this step."""
        import traci.constants as tc

        results = self._link.call(self._link.raw.lanearea.getAllSubscriptionResults)
        return {
            ch.channel: int(results.get(ch.detector, {}).get(tc.LAST_STEP_VEHICLE_NUMBER, 0)) > 0
            for ch in self._channels
        }

    def waiting_pedestrians(self) -> set[int]:
        """Phases with someone on a walking area whose next edge is one of the phase's crossings."""
        raw = self._link.raw
        phases = set()
        for person in self._link.call(raw.person.getIDList):
            if not str(self._link.call(raw.person.getRoadID, person)).startswith(":"):
                continue
            phase = self._crossing_phase.get(str(self._link.call(raw.person.getNextEdge, person)))
            if phase is not None:
                phases.add(phase)
        return phases

    def feed_lost(self) -> bool:
        return False  # SUMO's own detectors are read in the same step they change

    def poll(self) -> Iterator[DetectorInput]:
        """The channels that changed since the last poll."""
        current = {**self.occupied()}
        waiting = self.waiting_pedestrians()
        for phase, channel in self._ped_channel.items():
            current[channel] = phase in waiting
        phase_of = {ch.channel: ch.phase for ch in self._channels}
        for channel, called in current.items():
            if self._state.get(channel) is called:
                continue
            self._state[channel] = called
            pedestrian = channel >= 100
            phase = channel - 100 if pedestrian else phase_of[channel]
            yield DetectorInput(channel=channel, phase=phase, pedestrian=pedestrian, called=called)
