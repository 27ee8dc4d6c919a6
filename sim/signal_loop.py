"""The ``roadside`` way of the signal benchmark: the controller fed through the whole loop.

::

    SUMO (one run, N cameras + 1 controller as TraCI clients, stepping together)
      ─► agent process: a ``sumo`` source per camera ─► detector zones ─► sealed MQTT
      ─► broker ─► hub: ingest ─► channel map ─► call stream (SSE)
      ─► controller (this process, :func:`roadside.signalcontrol.service.run_on_sumo`) ─► TraCI

Nothing of SUMO's state reaches the controller except through the cameras.
Zones are drawn in road metres from the network: a stop-bar presence zone
over the last 30 m of every approach lane (the same stretch as the
benchmark's E2 detectors, so the two can be compared) and a pedestrian
waiting zone on each walking area at either end of every signalised
crossing. Each zone goes to the camera that sees most of it; the channel
map ties it to the phase :func:`~roadside.signalcontrol.sumo.derive_phase_map`
gives its lane or crossing.

With a junction camera (``junction_pose``: one high camera over the whole
junction, :func:`roadside.sim.sumo.poses.junction_camera`), the agent also
counts turning movements: the camera gets one movement approach per junction
leg (:func:`roadside.sim.sumo.poses.junction_legs`) and a short count zone on
every approach lane (channels without a phase: they call nobody, they put the
camera in the channel map, whose streams the hub's ``/movements`` reads).

Measured here, besides SUMO's tripinfo: the call latency from frame capture
to the call reaching the controller (wall clock), zone presence
agreement: every controller tick, SUMO's E2 state of each stop-bar lane
against the zone's state from the ATSPM log (82/81 with their frame
timestamps), and, with a junction camera, the turning-movement counts the
hub serves against SUMO's (vehicles seen on an entry edge and later on an
exit edge of the junction, read over TraCI every tick).
"""

from __future__ import annotations

import bisect
import concurrent.futures
import contextlib
import io
import itertools
import json
import logging
import math
import sqlite3
import subprocess
import sys
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx

from roadside.cloud.broker.mosquitto import MosquittoBroker
from roadside.cloud.home import HubHome, acl_devices, enroll_device, init_home
from roadside.cloud.hub import Hub
from roadside.cloud.registry import Registry
from roadside.cloud.settings import HubSettings
from roadside.cloud.signals.channel_map import Channel, ChannelMap
from roadside.edge.outbox.sqlite import Outbox
from roadside.shared.bundle import BrokerAddress
from roadside.shared.errors import ConfigError, RoadsideError
from roadside.signalcontrol.links import PhaseMap
from roadside.signalcontrol.service import ControllerSettings, TimingFile, run_on_sumo
from roadside.signalcontrol.sumo import (
    STOPBAR_ZONE_M,
    SumoDetectors,
    TraciConnection,
    derive_phase_map,
    write_stopbar_detectors,
)
from roadside.sim.signal_ways import BENCH_TIMING, Network, WayResult, read_tripinfo, sumo_outputs
from roadside.sim.sumo.poses import CameraPose, JunctionLeg, junction_legs, load_pose_file, write_pose_file
from roadside.sim.sumo.tmc import MIN_VEHICLES, MovementFigure
from roadside.sim.sumo.world import SumoWorld, free_port
from roadside.vision.calibration import Camera

log = logging.getLogger(__name__)

SIGNAL_ID = "bench-signal"
DEVICE_ID = "sig-cams"
_AGENT_READY_S = 120.0
JUNCTION_CAMERA = "junction"
_COUNT_ZONE_M = 10.0  # the junction camera's count zones: the last metres of each approach lane
# Presence zones go off one frame after their last occupant left (a loop card's delay timer set to
# one frame): a vehicle the detector misses in a single frame does not drop and re-place its call.
PRESENCE_OFF_DELAY_S = 0.1
LOW_SCORE = 0.2  # the weakest box the agent keeps: it may carry on a track, never start one


def tracker_settings(conf_threshold: float) -> dict[str, float]:
    """The agent's tracker for a detector used at ``conf_threshold``: tracks start there, live on lower."""
    return {
        "high_score": conf_threshold,
        "new_track_score": conf_threshold,
        "low_score": min(LOW_SCORE, conf_threshold),
    }


@dataclass(frozen=True)
class Zone:
    camera: str
    name: str
    kind: str  # presence | pedestrian | count
    polygon: list[tuple[float, float]]
    channel: int
    phase: int | None  # None: a count zone, which calls no phase
    lane: str | None


@dataclass(frozen=True)
class HubSite:
    """A hub home and its running broker that the caller owns (a test's rig); the loop makes its own
    otherwise."""

    home: HubHome
    broker: MosquittoBroker


def run_loop(
    network: Network,
    duration_s: float,
    seed: int,
    *,
    realtime: bool = True,
    fps: float = 10.0,
    site: HubSite | None = None,
    model: Path | None = None,
    conf_threshold: float | None = None,
    junction_pose: Path | None = None,
    junction_fps: float = 5.0,
    frame_queue: int = 1,
) -> dict[str, Any]:
    """Run the whole loop for ``duration_s`` simulated seconds; the way's figures and the loop's own.

    ``realtime``: cameras pace SUMO on the wall clock (the call latency means something); without it
    SUMO runs as fast as the cameras draw (tests). ``fps``: frames per simulated second per camera.
    ``model``: the agent's detector (its own default when None) and ``conf_threshold`` its confidence.
    ``junction_pose``: a pose file whose first camera sees the whole junction; it joins the loop at
    ``junction_fps`` and its turning movements are judged against SUMO's. ``frame_queue``: the agent's
    frames waiting per camera (its ``frame_queue`` setting; the oldest go first when it is full): 1, a
    camera that feeds a controller wants its newest frame, not a queue of older ones
    (``docs/signals.md``, "Call latency and the frame queue")."""
    if network.camera_pose is None:
        raise ConfigError("the roadside way needs --camera-pose (the cameras that watch the junction)")
    began = time.monotonic()
    folder = network.workdir / "roadside"
    folder.mkdir(parents=True, exist_ok=True)
    phase_map = derive_phase_map(network.net, network.tls)
    channels = write_stopbar_detectors(network.net, phase_map, folder / "stopbar.add.xml", folder / "e2.xml")
    poses = load_pose_file(network.camera_pose).cameras
    zones = plan_zones(network.net, phase_map, poses)
    junction: _JunctionCamera | None = None
    if junction_pose is not None:
        junction = _junction_camera(network, phase_map, junction_pose, zones, junction_fps)
        zones += junction.zones
    cameras = [*poses, junction.pose] if junction is not None else poses
    with _Stack(folder, realtime) as stack:
        token = stack.start_hub(zones, site)
        port = free_port()
        stack.start_agent(
            network, cameras, zones, port, fps, duration_s,
            model=model, conf_threshold=conf_threshold, junction=junction, frame_queue=frame_queue,
        )  # fmt: skip
        world = stack.start_sumo(network, seed, port, clients=len(cameras) + 1, order=len(cameras) + 1)
        link = TraciConnection(world.traci)
        world.step()  # SUMO takes no other command until every client (the cameras) has set its order
        detectors = SumoDetectors(link, phase_map, channels)
        truth = _EdgeTruth(world.traci, junction.legs) if junction is not None else None
        e2: list[tuple[float, dict[int, bool]]] = []
        settings = ControllerSettings(
            signal=SIGNAL_ID,
            hub_url=stack.api_url,
            token=token,
            net=network.net,
            tls=network.tls,
            sumo_port=port,
            timing=TimingFile(default=_timing_dict()),
            max_ticks=round(duration_s * 10),
        )
        started = datetime.now(UTC)

        def observe(_tick: int) -> None:
            e2.append((time.time(), detectors.occupied()))
            if truth is not None:
                truth.observe()

        summary = run_on_sumo(settings, link=link, observer=observe)
        world.close()
        detector_rows = stack.detector_events(started)
        presence = presence_figures(e2, detector_rows, zones)
        _write_timeline(folder / "presence.json", e2, detector_rows, zones)
        tmc = None
        if truth is not None:
            time.sleep(2.0)  # the agent closes its last movement interval when its frames end
            tmc = movement_figures(stack.movements(started), truth.counted)
        agent_leg = stack.agent_leg_ms()
    result = WayResult("roadside", wall_s=round(time.monotonic() - began, 1))
    read_tripinfo(folder / "tripinfo.xml", duration_s, result)
    result.conflicting_greens = summary.conflicting_greens
    result.events = {int(k): v for k, v in summary.events.items()}
    return {
        "way": result,
        "presence_agreement": presence.agreement,
        "call_latency_p50_ms": _round(summary.latency_p50_ms),
        "call_latency_p95_ms": _round(summary.latency_p95_ms),
        "tmc_error_max": tmc_error_max(tmc) if tmc is not None else None,
        "roadside_loop": {
            "calls": dict(summary.calls),
            "events_posted": dict(summary.posted),
            "feed_lost_ticks": summary.feed_lost_ticks,
            "longest_call_wait_s": summary.longest_wait_s,
            "hub_leg_p50_ms": _round(summary.hub_leg_p50_ms),
            "hub_leg_p95_ms": _round(summary.hub_leg_p95_ms),
            # capture → the agent's outbox (detection, tracking, zones, the durable put): the rest of
            # the hub leg is the uplink, the broker and the hub's ingest and store
            "agent_leg_p50_ms": agent_leg[0],
            "agent_leg_p95_ms": agent_leg[1],
            "ticks": summary.ticks,
            "ended_by": summary.ended_by,
            "tripped": summary.tripped,
            "zones": len(zones),
            "presence": presence.as_dict(),
            "tmc": None
            if tmc is None
            else {
                "truth_total": sum(m.truth for m in tmc),
                "counted_total": sum(m.counted for m in tmc),
                "min_vehicles": MIN_VEHICLES,
                "movements": [m.as_dict() for m in tmc],
            },
        },
    }


# --- the junction camera and its turning movements -------------------------------------------


@dataclass(frozen=True)
class _JunctionCamera:
    pose: CameraPose
    legs: list[JunctionLeg]
    zones: list[Zone]
    fps: float


def _junction_camera(
    network: Network, phase_map: PhaseMap, pose_file: Path, zones: list[Zone], fps: float
) -> _JunctionCamera:
    """The junction camera (renamed ``junction``), its legs, and a count zone per approach lane."""
    import sumolib

    pose = load_pose_file(pose_file).cameras[0].model_copy(update={"name": JUNCTION_CAMERA})
    legs = junction_legs(network.net, network.tls)
    with contextlib.redirect_stderr(io.StringIO()):
        net = sumolib.net.readNet(str(network.net), withInternal=True)
    channel = max((z.channel for z in zones if z.kind != "pedestrian"), default=0)
    counts = []
    for lane_id in sorted(lane for lanes in phase_map.approaches.values() for lane in lanes):
        channel += 1
        polygon = _lane_end(net.getLane(lane_id), _COUNT_ZONE_M)
        counts.append(Zone(JUNCTION_CAMERA, f"count-{lane_id}", "count", polygon, channel, None, lane_id))
    return _JunctionCamera(pose, legs, counts, fps)


class _EdgeTruth:
    """SUMO's turning movements: a vehicle seen on an entry edge of a leg and later on an exit edge.

    Read over the controller's TraCI connection each tick, eight small requests (one per edge)."""

    def __init__(self, traci: Any, legs: list[JunctionLeg]) -> None:
        self._traci = traci
        self._entries = {e: leg.name for leg in legs for e in leg.entries}
        self._exits = {e: leg.name for leg in legs for e in leg.exits}
        self._entered: dict[str, str] = {}  # vehicle → its entry leg
        self.counted: dict[tuple[str, str], int] = {}

    def observe(self) -> None:
        for edge, leg in self._entries.items():
            for vehicle in self._traci.edge.getLastStepVehicleIDs(edge):
                self._entered.setdefault(vehicle, leg)
        for edge, leg in self._exits.items():
            for vehicle in self._traci.edge.getLastStepVehicleIDs(edge):
                entry = self._entered.pop(vehicle, None)
                if entry is not None:
                    self.counted[(entry, leg)] = self.counted.get((entry, leg), 0) + 1


def movement_figures(
    counted: dict[tuple[str, str], int], truth: dict[tuple[str, str], int]
) -> list[MovementFigure]:
    """Per movement (entry leg → exit leg, all classes): SUMO's count and the hub's."""
    pairs = sorted(set(counted) | set(truth))
    return [MovementFigure(a, b, truth.get((a, b), 0), counted.get((a, b), 0)) for a, b in pairs]


def tmc_error_max(figures: list[MovementFigure]) -> float | None:
    """Largest relative error over movements with at least ``MIN_VEHICLES`` true vehicles."""
    judged = [abs(m.error) for m in figures if m.truth >= MIN_VEHICLES and m.error is not None]
    return round(max(judged), 4) if judged else None


def _movement_config(junction: _JunctionCamera) -> dict[str, Any]:
    # A high, steep camera: the box's centroid lies over the vehicle (roadside.sim.sumo.tmc).
    return {
        "anchor": "centroid",
        "approaches": [
            {"name": leg.name, "polygon": [list(p) for p in leg.polygon], "space": "road"}
            for leg in junction.legs
        ],
    }


def _timing_dict() -> dict[str, Any]:
    t = BENCH_TIMING
    return {
        "min_green": t.min_green,
        "passage": t.passage,
        "max_green": t.max_green,
        "yellow": t.yellow,
        "red_clear": t.red_clear,
        "walk": t.walk,
        "ped_clear": t.ped_clear,
    }


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 1)


# --- zones ----------------------------------------------------------------------------------


def plan_zones(net_file: Path, phase_map: PhaseMap, poses: list[CameraPose]) -> list[Zone]:
    """Stop-bar presence zones per approach lane and waiting zones per crossing end, each on the camera
    that sees most of it (``ConfigError`` if no camera sees one)."""
    import sumolib

    with contextlib.redirect_stderr(io.StringIO()):
        net = sumolib.net.readNet(str(net_file), withInternal=True, withPedestrianConnections=True)
    cameras = {p.name: Camera.from_calibration(p.calibration) for p in poses}
    zones: list[Zone] = []
    channel = 0
    for phase, lanes in sorted(phase_map.approaches.items()):
        for lane_id in sorted(lanes):
            channel += 1
            polygon = _lane_end(net.getLane(lane_id), STOPBAR_ZONE_M)
            zones.append(_placed(cameras, f"stop-{lane_id}", "presence", polygon, channel, phase, lane_id))
    ped = 0
    for phase, crossings in sorted(phase_map.crossings.items()):
        for crossing in crossings:
            for area in _walking_areas(net, crossing):
                ped += 1
                polygon = [(float(x), float(y)) for x, y in net.getEdge(area).getLanes()[0].getShape()]
                zones.append(
                    _placed(cameras, f"wait-{crossing}-{area}", "pedestrian", polygon, ped, phase, None)
                )
    return zones


def _lane_end(lane: Any, length: float) -> list[tuple[float, float]]:
    """The last ``length`` metres of a lane as a ring (left edge forward, right edge back)."""
    shape = [(float(x), float(y)) for x, y in lane.getShape()]
    total = sum(math.dist(a, b) for a, b in itertools.pairwise(shape))
    start = max(0.0, total - length)
    points: list[tuple[float, float]] = []
    run = 0.0
    for a, b in itertools.pairwise(shape):
        seg = math.dist(a, b)
        if run + seg >= start:
            t = max(0.0, (start - run) / seg) if seg else 0.0
            if not points:
                points.append((a[0] + (b[0] - a[0]) * t, a[1] + (b[1] - a[1]) * t))
            points.append(b)
        run += seg
    (x0, y0), (x1, y1) = points[0], points[-1]
    norm = math.hypot(x1 - x0, y1 - y0) or 1.0
    half = lane.getWidth() / 2.0
    nx, ny = -(y1 - y0) / norm * half, (x1 - x0) / norm * half
    return [(x0 + nx, y0 + ny), (x1 + nx, y1 + ny), (x1 - nx, y1 - ny), (x0 - nx, y0 - ny)]


def _walking_areas(net: Any, crossing: str) -> list[str]:
    edge = net.getEdge(crossing)
    ends = [*edge.getIncoming(), *edge.getOutgoing()]
    return sorted({e.getID() for e in ends if e.getFunction() == "walkingarea"})


def _placed(
    cameras: dict[str, Camera],
    name: str,
    kind: str,
    polygon: list[tuple[float, float]],
    channel: int,
    phase: int,
    lane: str | None,
) -> Zone:
    best, seen = None, 0.0
    for cam_name, camera in cameras.items():
        share = _in_view(camera, polygon)
        if share > seen:
            best, seen = cam_name, share
    if best is None or seen < 1.0:
        raise ConfigError(
            f"zone {name} is not fully in any camera's view (best {seen:.0%}); add or aim a camera"
        )
    return Zone(best, name.replace(":", "."), kind, polygon, channel, phase, lane)


def _in_view(camera: Camera, polygon: list[tuple[float, float]]) -> float:
    pixels = camera.road_to_image([list(p) for p in polygon])
    inside = [0 <= u <= camera.width and 0 <= v <= camera.height and abs(u) < 1e7 for u, v in pixels.tolist()]
    return float(sum(inside)) / len(inside)


# --- agreement ------------------------------------------------------------------------------


@dataclass(frozen=True)
class PresenceFigures:
    """Stop-bar samples (tick × lane) by how the zone's on/off compared with SUMO's E2 detector.

    ``missed``: E2 occupied, the zone off; ``extra``: the zone on, E2 empty. Per lane as well, so a
    traffic engineer sees which approach the camera serves worst."""

    agree: int
    missed: int
    extra: int
    per_channel: dict[int, tuple[int, int, int]]  # channel -> (agree, missed, extra)

    @property
    def agreement(self) -> float | None:
        total = self.agree + self.missed + self.extra
        return round(self.agree / total, 4) if total else None

    def as_dict(self) -> dict[str, Any]:
        total = self.agree + self.missed + self.extra
        return {
            "samples": total,
            "missed_share": round(self.missed / total, 4) if total else None,
            "extra_share": round(self.extra / total, 4) if total else None,
            "per_channel": {
                str(c): {"agree": a, "missed": m, "extra": x}
                for c, (a, m, x) in sorted(self.per_channel.items())
            },
        }


def presence_figures(
    e2: list[tuple[float, dict[int, bool]]], events: list[tuple[float, int, int]], zones: list[Zone]
) -> PresenceFigures:
    """Each (tick, stop-bar lane) sample: the zone's on/off (from the ATSPM log) against SUMO's E2
    detector on the same stretch. ``events``: (unix time, code, channel) rows, 81/82 only."""
    vehicle = [z.channel for z in zones if z.kind == "presence"]
    timeline: dict[int, list[tuple[float, bool]]] = {c: [] for c in vehicle}
    for ts, code, channel in sorted(events):
        if channel in timeline and code in (81, 82):
            timeline[channel].append((ts, code == 82))
    tally = {c: [0, 0, 0] for c in vehicle}
    for ts, occupied in e2:
        for channel in vehicle:
            states = timeline[channel]
            i = bisect.bisect_right(states, (ts, True)) - 1
            zone_on = states[i][1] if i >= 0 else False
            truth = occupied.get(channel, False)
            tally[channel][0 if zone_on == truth else 1 if truth else 2] += 1
    return PresenceFigures(
        agree=sum(t[0] for t in tally.values()),
        missed=sum(t[1] for t in tally.values()),
        extra=sum(t[2] for t in tally.values()),
        per_channel={c: (t[0], t[1], t[2]) for c, t in tally.items()},
    )


def presence_agreement(
    e2: list[tuple[float, dict[int, bool]]], events: list[tuple[float, int, int]], zones: list[Zone]
) -> float | None:
    """Share of (tick, stop-bar lane) samples where the zone agrees with SUMO's E2 detector."""
    return presence_figures(e2, events, zones).agreement


def _write_timeline(
    path: Path,
    e2: list[tuple[float, dict[int, bool]]],
    events: list[tuple[float, int, int]],
    zones: list[Zone],
) -> None:
    """What the presence figure was computed from, for a look afterwards (the bench's workdir)."""
    body = {
        "zones": [
            {"channel": z.channel, "camera": z.camera, "name": z.name, "lane": z.lane}
            for z in zones
            if z.kind == "presence"
        ],
        "e2": [[ts, sorted(c for c, on in occupied.items() if on)] for ts, occupied in e2],
        "events": [list(e) for e in events],
    }
    path.write_text(json.dumps(body))


# --- the processes --------------------------------------------------------------------------


class _Stack(contextlib.AbstractContextManager["_Stack"]):
    """Broker, hub, agent process and SUMO of one loop run; stopped in reverse on exit."""

    def __init__(self, folder: Path, realtime: bool) -> None:
        self.folder = folder
        self.realtime = realtime
        self._stack = contextlib.ExitStack()
        self.api_url = ""
        self._token = ""
        self._bundle: Path | None = None
        self._broker_port = 0

    def __exit__(self, *exc: object) -> None:
        self._stack.close()

    def start_hub(self, zones: list[Zone], site: HubSite | None) -> str:
        if site is None:
            home = init_home(self.folder / "hub", ["localhost"], ["127.0.0.1"], force=True)
            broker = MosquittoBroker(
                home.broker_dir, ca_cert_pem=home.ca_file.read_bytes(), server=home.broker_server_cert()
            )
            broker.start()
            self._stack.callback(broker.stop)
        else:
            home, broker = site.home, site.broker
        registry = Registry(home.registry_url)
        try:
            _, self._bundle = enroll_device(
                home, registry, DEVICE_ID, "bench", BrokerAddress(host="127.0.0.1", port=broker.port)
            )
            broker.reload_acl(acl_devices(registry))
            channel_map = ChannelMap(
                channels=[
                    Channel(
                        channel=z.channel,
                        kind="pedestrian" if z.kind == "pedestrian" else "vehicle",
                        device=DEVICE_ID,
                        stream=z.camera,
                        zone=z.name,
                        phase=z.phase,
                    )
                    for z in zones
                ]
            )
            registry.signals.set_map(SIGNAL_ID, channel_map, name="bench intersection")
            self._token = registry.api_clients.create("bench-controller", ["read:telemetry", "write:signals"])
        finally:
            registry.close()
        hub = Hub(HubSettings(home=home.root, broker_port=broker.port, api_port=0))
        hub.start()
        self._stack.callback(hub.stop)
        if not hub.wait_ready(30):
            raise RoadsideError(f"the hub did not connect to the broker; see {broker.log_file}")
        self.api_url = hub.api_url
        return self._token

    def start_agent(
        self,
        network: Network,
        poses: list[CameraPose],
        zones: list[Zone],
        port: int,
        fps: float,
        duration_s: float,
        *,
        model: Path | None = None,
        conf_threshold: float | None = None,
        junction: _JunctionCamera | None = None,
        frame_queue: int = 1,
    ) -> None:
        assert self._bundle is not None
        assert network.camera_pose is not None
        pose_file = self.folder / "agent" / "cameras.json"
        pose_file.parent.mkdir(parents=True, exist_ok=True)
        write_pose_file(pose_file, poses)
        legs = {} if junction is None else {junction.pose.name: junction}
        rates = {pose.name: (legs[pose.name].fps if pose.name in legs else fps) for pose in poses}
        model_config: dict[str, Any] = {}
        tracker: dict[str, Any] = {}
        if model is not None:
            model_config["path"] = str(model)
        if conf_threshold is not None:
            # The detector keeps boxes down to LOW_SCORE; a track starts at ``conf_threshold`` and the
            # weaker boxes only carry on tracks already there (ByteTrack's second association), so a
            # vehicle that scores low for a frame keeps its call. The tracker's own default (0.5)
            # would start no track from a detector whose true boxes score 0.35-0.5.
            model_config["conf_threshold"] = min(LOW_SCORE, conf_threshold)
            tracker = tracker_settings(conf_threshold)
        config = {
            "sources": [
                {
                    "type": "sumo",
                    "name": pose.name,
                    "sumocfg": str(network.sumocfg),
                    "pose_file": str(pose_file),
                    "pose_name": pose.name,
                    "fps": rates[pose.name],
                    "realtime": self.realtime,
                    # A bounded run: the source then asks SUMO nothing before its first step (SUMO
                    # refuses any command but a step until every client has set its order).
                    "max_frames": round(duration_s * rates[pose.name]) + 20,
                    "attach": {"host": "127.0.0.1", "port": port, "order": order},
                }
                for order, pose in enumerate(poses, start=1)
            ],
            **({"model": model_config} if model_config else {}),
            **({"analytics": {"tracker": tracker}} if tracker else {}),
            "signals": {
                "interval_s": 60,
                "cameras": {
                    pose.name: {
                        "calibration": pose.calibration.model_dump(mode="json"),
                        # SUMO steps only as fast as its slowest client: on a loaded machine a camera's
                        # frames come further apart than a real camera's, which is not a lost camera.
                        "health": {"lost_s": 5.0},
                        "zones": [
                            {
                                "name": z.name,
                                "kind": z.kind,
                                "polygon": z.polygon,
                                "space": "road",
                                **({"off_delay_s": PRESENCE_OFF_DELAY_S} if z.kind == "presence" else {}),
                            }
                            for z in zones
                            if z.camera == pose.name
                        ],
                        **(_movement_config(legs[pose.name]) if pose.name in legs else {}),
                    }
                    for pose in poses
                },
            },
            "interval_s": 60,
            "heartbeat_s": 5,
            "frame_queue": frame_queue,
            "outbox": {"path": str(self.folder / "agent" / "outbox.db")},
        }
        path = self.folder / "agent" / "agent.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        _instrument_outbox(self.folder / "agent" / "outbox.db")
        path.write_text(json.dumps(config, indent=2))
        log_file = (self.folder / "agent" / "agent.log").open("wb")
        command = [sys.executable, "-c", "from roadside.cli import main; main()", "agent", "run"]
        command += ["--bundle", str(self._bundle), "--config", str(path)]
        agent = subprocess.Popen(command, stdout=log_file, stderr=subprocess.STDOUT, start_new_session=True)
        self._stack.callback(_stop_process, agent, log_file)

    def agent_leg_ms(self) -> tuple[float | None, float | None]:
        """p50 and p95 of capture → outbox over the agent's detector changes (the outbox's ledger)."""
        ages = sorted(
            created_ms - _unix(record["ts"]) * 1000.0
            for created_ms, payload in _detector_ledger(self.folder / "agent" / "outbox.db")
            for record in json.loads(payload).get("records", [])
        )
        if not ages:
            return None, None
        return _round(ages[len(ages) // 2]), _round(ages[min(len(ages) - 1, int(len(ages) * 0.95))])

    def movements(self, since: datetime) -> dict[tuple[str, str], int]:
        """The turning movements the hub serves for the signal since ``since``, summed per (entry, exit)."""
        params: dict[str, str | int] = {
            "from": since.replace(second=0, microsecond=0).isoformat(),
            "to": (datetime.now(UTC) + timedelta(minutes=2)).isoformat(),
            "interval": 60,
        }
        with httpx.Client(
            base_url=self.api_url, headers={"Authorization": f"Bearer {self._token}"}, timeout=30
        ) as c:
            response = c.get(f"/v1/signals/{SIGNAL_ID}/movements", params=params)
            response.raise_for_status()
            counted: dict[tuple[str, str], int] = {}
            for row in response.json()["movements"]:
                key = (str(row["approach"]), str(row["exit"]))
                counted[key] = counted.get(key, 0) + int(row["count"])
            return counted

    def start_sumo(self, network: Network, seed: int, port: int, clients: int, order: int) -> SumoWorld:
        extra = sumo_outputs(self.folder, self.folder / "stopbar.add.xml")
        pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="sumo-start")
        future = pool.submit(
            SumoWorld.start,
            network.sumocfg,
            seed=seed,
            port=port,
            clients=clients,
            order=order,
            extra_args=extra,
        )
        try:
            world = future.result(timeout=_AGENT_READY_S)
        except concurrent.futures.TimeoutError as exc:
            raise RoadsideError(
                f"the agent's cameras did not join SUMO within {_AGENT_READY_S:.0f} s; see {self.folder / 'agent'}"
            ) from exc
        finally:
            pool.shutdown(wait=False)
        self._stack.callback(world.close)
        return world

    def detector_events(self, since: datetime) -> list[tuple[float, int, int]]:
        """The ATSPM detector rows (81/82) of the signal since ``since``, read back from the API."""
        rows: list[tuple[float, int, int]] = []
        params: dict[str, Any] = {
            "from": since.isoformat(),
            "to": (datetime.now(UTC) + timedelta(minutes=1)).isoformat(),
        }
        with httpx.Client(
            base_url=self.api_url, headers={"Authorization": f"Bearer {self._token}"}, timeout=30
        ) as c:
            while True:
                response = c.get(f"/v1/signals/{SIGNAL_ID}/events", params=params)
                response.raise_for_status()
                body = response.json()
                for row in body.get("events", body.get("rows", [])):
                    code = int(row.get("EventCode", row.get("code", 0)))
                    if code in (81, 82):
                        ts = row.get("Timestamp", row.get("ts"))
                        rows.append((_unix(ts), code, int(row.get("EventParam", row.get("param", 0)))))
                cursor = body.get("next_cursor")
                if not cursor:
                    return rows
                params["cursor"] = cursor


# The outbox forgets a message once the broker has it; this ledger keeps each detector message's
# put time and body (as bench/chaos does for its counts, ADR 0019).
_LEDGER = """
CREATE TABLE IF NOT EXISTS loop_detector (seq INTEGER PRIMARY KEY, created_ms INTEGER NOT NULL, payload BLOB);
CREATE TRIGGER IF NOT EXISTS loop_note_detector AFTER INSERT ON outbox WHEN NEW.kind = 'detector' BEGIN
  INSERT OR REPLACE INTO loop_detector (seq, created_ms, payload) VALUES (NEW.seq, NEW.created_ms, NEW.payload);
END;
"""


def _instrument_outbox(path: Path) -> None:
    Outbox(path).close()  # created as the agent creates it
    with contextlib.closing(sqlite3.connect(path)) as db:
        db.executescript(_LEDGER)


def _detector_ledger(path: Path) -> list[tuple[int, bytes]]:
    if not path.is_file():
        return []
    with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=10)) as db:
        return [(int(c), bytes(p)) for c, p in db.execute("SELECT created_ms, payload FROM loop_detector")]


def _unix(text: str) -> float:
    value = datetime.fromisoformat(str(text).replace("Z", "+00:00"))
    return (value if value.tzinfo else value.replace(tzinfo=UTC)).timestamp()


def _stop_process(process: subprocess.Popen[bytes], log_file: Any) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    log_file.close()


__all__ = ["PresenceFigures", "Zone", "plan_zones", "presence_agreement", "presence_figures", "run_loop"]
