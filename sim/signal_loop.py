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

Measured here, besides SUMO's tripinfo: the call latency from frame capture
to the call reaching the controller (wall clock), and zone presence
agreement: every controller tick, SUMO's E2 state of each stop-bar lane
against the zone's state from the ATSPM log (82/81 with their frame
timestamps).
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
from roadside.sim.sumo.poses import CameraPose, load_pose_file
from roadside.sim.sumo.world import SumoWorld, free_port
from roadside.vision.calibration import Camera

log = logging.getLogger(__name__)

SIGNAL_ID = "bench-signal"
DEVICE_ID = "sig-cams"
_AGENT_READY_S = 120.0


@dataclass(frozen=True)
class Zone:
    camera: str
    name: str
    kind: str  # presence | pedestrian
    polygon: list[tuple[float, float]]
    channel: int
    phase: int
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
) -> dict[str, Any]:
    """Run the whole loop for ``duration_s`` simulated seconds; the way's figures and the loop's own.

    ``realtime``: cameras pace SUMO on the wall clock (the call latency means something); without it
    SUMO runs as fast as the cameras draw (tests). ``fps``: frames per simulated second per camera."""
    if network.camera_pose is None:
        raise ConfigError("the roadside way needs --camera-pose (the cameras that watch the junction)")
    began = time.monotonic()
    folder = network.workdir / "roadside"
    folder.mkdir(parents=True, exist_ok=True)
    phase_map = derive_phase_map(network.net, network.tls)
    channels = write_stopbar_detectors(network.net, phase_map, folder / "stopbar.add.xml", folder / "e2.xml")
    poses = load_pose_file(network.camera_pose).cameras
    zones = plan_zones(network.net, phase_map, poses)
    with _Stack(folder, realtime) as stack:
        token = stack.start_hub(zones, site)
        port = free_port()
        stack.start_agent(network, poses, zones, port, fps, frames=round(duration_s * fps) + 20)
        world = stack.start_sumo(network, seed, port, clients=len(poses) + 1, order=len(poses) + 1)
        link = TraciConnection(world.traci)
        world.step()  # SUMO takes no other command until every client (the cameras) has set its order
        detectors = SumoDetectors(link, phase_map, channels)
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
        summary = run_on_sumo(
            settings, link=link, observer=lambda _t: e2.append((time.time(), detectors.occupied()))
        )
        world.close()
        agreement = presence_agreement(e2, stack.detector_events(started), zones)
    result = WayResult("roadside", wall_s=round(time.monotonic() - began, 1))
    read_tripinfo(folder / "tripinfo.xml", duration_s, result)
    result.conflicting_greens = summary.conflicting_greens
    result.events = {int(k): v for k, v in summary.events.items()}
    return {
        "way": result,
        "presence_agreement": agreement,
        "call_latency_p50_ms": _round(summary.latency_p50_ms),
        "call_latency_p95_ms": _round(summary.latency_p95_ms),
        "tmc_error_max": None,
        "roadside_loop": {
            "calls": dict(summary.calls),
            "events_posted": dict(summary.posted),
            "feed_lost_ticks": summary.feed_lost_ticks,
            "longest_call_wait_s": summary.longest_wait_s,
            "hub_leg_p50_ms": _round(summary.hub_leg_p50_ms),
            "hub_leg_p95_ms": _round(summary.hub_leg_p95_ms),
            "ticks": summary.ticks,
            "ended_by": summary.ended_by,
            "tripped": summary.tripped,
            "zones": len(zones),
        },
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


def presence_agreement(
    e2: list[tuple[float, dict[int, bool]]], events: list[tuple[float, int, int]], zones: list[Zone]
) -> float | None:
    """Share of (tick, stop-bar lane) samples where the zone's on/off (from the ATSPM log) matches SUMO's
    E2 detector on the same stretch. ``events``: (unix time, code, channel) rows, 81/82 only."""
    vehicle = [z.channel for z in zones if z.kind == "presence"]
    timeline: dict[int, list[tuple[float, bool]]] = {c: [] for c in vehicle}
    for ts, code, channel in sorted(events):
        if channel in timeline and code in (81, 82):
            timeline[channel].append((ts, code == 82))
    agree = total = 0
    for ts, occupied in e2:
        for channel in vehicle:
            states = timeline[channel]
            i = bisect.bisect_right(states, (ts, True)) - 1
            zone_on = states[i][1] if i >= 0 else False
            agree += int(zone_on == occupied.get(channel, False))
            total += 1
    return round(agree / total, 4) if total else None


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
        self, network: Network, poses: list[CameraPose], zones: list[Zone], port: int, fps: float, frames: int
    ) -> None:
        assert self._bundle is not None
        assert network.camera_pose is not None
        config = {
            "sources": [
                {
                    "type": "sumo",
                    "name": pose.name,
                    "sumocfg": str(network.sumocfg),
                    "pose_file": str(network.camera_pose),
                    "pose_name": pose.name,
                    "fps": fps,
                    "realtime": self.realtime,
                    # A bounded run: the source then asks SUMO nothing before its first step (SUMO
                    # refuses any command but a step until every client has set its order).
                    "max_frames": frames,
                    "attach": {"host": "127.0.0.1", "port": port, "order": order},
                }
                for order, pose in enumerate(poses, start=1)
            ],
            "signals": {
                "interval_s": 60,
                "cameras": {
                    pose.name: {
                        "calibration": pose.calibration.model_dump(mode="json"),
                        # SUMO steps only as fast as its slowest client: on a loaded machine a camera's
                        # frames come further apart than a real camera's, which is not a lost camera.
                        "health": {"lost_s": 5.0},
                        "zones": [
                            {"name": z.name, "kind": z.kind, "polygon": z.polygon, "space": "road"}
                            for z in zones
                            if z.camera == pose.name
                        ],
                    }
                    for pose in poses
                },
            },
            "interval_s": 60,
            "heartbeat_s": 5,
            "frame_queue": 4,
            "outbox": {"path": str(self.folder / "agent" / "outbox.db")},
        }
        path = self.folder / "agent" / "agent.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(config, indent=2))
        log_file = (self.folder / "agent" / "agent.log").open("wb")
        command = [sys.executable, "-c", "from roadside.cli import main; main()", "agent", "run"]
        command += ["--bundle", str(self._bundle), "--config", str(path)]
        agent = subprocess.Popen(command, stdout=log_file, stderr=subprocess.STDOUT, start_new_session=True)
        self._stack.callback(_stop_process, agent, log_file)

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


__all__ = ["Zone", "plan_zones", "presence_agreement", "run_loop"]
