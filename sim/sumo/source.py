"""The ``sumo`` camera of the edge agent: frames drawn from a SUMO simulation.

Registered as the ``sumo`` entry of the ``roadside.sources`` entry-point group
(``docs/adr/0010-sources-register-through-entry-points.md``), so the agent opens
it by config (:class:`roadside.edge.settings.SumoSource`) without importing the
simulator. The source starts SUMO (or joins one over TraCI), steps it, and
every ``1 / (fps × step)`` steps draws what its camera sees. Ground truth goes
to :attr:`SumoFrameSource.last_truth` and, when configured, a JSON-lines file;
the frame itself carries only (class, box) pairs, as the synthetic camera's do,
which the pipeline ignores.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO
from xml.etree import ElementTree as ET

from roadside.edge.settings import SumoSource
from roadside.edge.sources.base import Frame, TruthBox
from roadside.shared.errors import ConfigError
from roadside.sim.sumo.poses import load_pose_file
from roadside.sim.sumo.render import MIN_VISIBLE, RenderedFrame, Renderer, RoadGeometry, TruthObject, findable
from roadside.sim.sumo.world import SumoWorld, TraciEndpoint
from roadside.vision.calibration import Camera, PointPairCalibration, PoseCalibration

__all__ = ["MIN_VISIBLE", "SumoFrameSource", "frame_truth", "net_of_sumocfg"]

log = logging.getLogger(__name__)


class SumoFrameSource:
    """A ``FrameSource`` over a SUMO simulation seen through one calibrated camera."""

    def __init__(self, config: SumoSource) -> None:
        self.name = config.name
        self.config = config
        self.reconnects = 0  # a simulation is not reopened: if SUMO dies, the stream ends with an error
        self.camera = Camera.from_calibration(_calibration(config))
        self.net = config.net if config.net is not None else net_of_sumocfg(_required(config.sumocfg))
        self.last_truth: tuple[TruthObject, ...] = ()
        self._stop = threading.Event()

    def frames(self) -> Iterator[Frame]:
        cfg = self.config
        renderer = Renderer(self.camera, RoadGeometry.from_net(self.net), cfg.conditions, seed=cfg.seed)
        every = max(1, round(1.0 / (cfg.fps * cfg.step_s)))
        truth_out = cfg.truth_file.open("a") if cfg.truth_file is not None else None
        world = self._open_world()
        try:
            yield from self._run(world, renderer, every, truth_out)
        finally:
            world.close()
            if truth_out is not None:
                truth_out.close()

    def _open_world(self) -> SumoWorld:
        cfg = self.config
        if cfg.attach is not None:
            a = cfg.attach
            return SumoWorld.attach(TraciEndpoint(a.host, a.port, a.order))
        return SumoWorld.start(
            cfg.sumocfg,
            net=cfg.net,
            routes=cfg.routes,
            seed=cfg.seed,
            step_s=cfg.step_s,
            port=cfg.port,
            clients=cfg.clients,
            order=cfg.order,
        )

    def _run(
        self, world: SumoWorld, renderer: Renderer, every: int, truth_out: IO[str] | None
    ) -> Iterator[Frame]:
        cfg = self.config
        warmup = round(cfg.warmup_s / cfg.step_s)
        for _ in range(warmup):
            if self._stop.is_set():
                return
            world.step()
        started = time.time()
        next_due = time.monotonic()
        produced = 0
        step = 0
        while not self._stop.is_set() and (cfg.max_frames is None or produced < cfg.max_frames):
            # Step before asking anything else: in a SUMO with several clients, other requests
            # may be refused until every client has joined and set its order.
            state = world.step()
            step += 1
            if cfg.max_frames is None and world.expected_remaining() == 0:
                log.info("camera %s: the SUMO demand is over", self.name)
                return
            if step % every:
                continue
            rendered = renderer.render(state)
            if cfg.realtime:
                next_due += every * cfg.step_s
                delay = next_due - time.monotonic()
                if delay > 0 and self._stop.wait(delay):
                    return
                ts = time.time()
            else:
                ts = started + produced * every * cfg.step_s
            self.last_truth = rendered.truth
            if truth_out is not None:
                _write_truth(truth_out, self.name, produced, ts, rendered)
            yield Frame(self.name, produced, ts, rendered.image, frame_truth(rendered.truth))
            produced += 1

    def close(self) -> None:
        self._stop.set()


def frame_truth(truth: tuple[TruthObject, ...]) -> tuple[TruthBox, ...]:
    """The (detector class, box) pairs of a frame: users with a detector class, in sight enough to find."""
    return tuple((o.label, o.box) for o in findable(truth) if o.label is not None)


def net_of_sumocfg(sumocfg: Path) -> Path:
    """The network file a ``.sumocfg`` names (relative to the sumocfg's folder)."""
    try:
        root = ET.parse(sumocfg).getroot()  # noqa: S314 - the operator's own file, as trusted as the agent config
    except (OSError, ET.ParseError) as exc:
        raise ConfigError(f"cannot read SUMO configuration {sumocfg}: {exc}") from exc
    node = root.find("./input/net-file")
    value = node.get("value") if node is not None else None
    if not value:
        raise ConfigError(f"SUMO configuration {sumocfg} names no net-file: give the source a net instead")
    net = (sumocfg.parent / value.split(",")[0]).resolve()
    if not net.is_file():
        raise ConfigError(f"SUMO configuration {sumocfg} names net-file {net}, which does not exist")
    return net


def _calibration(config: SumoSource) -> PoseCalibration | PointPairCalibration:
    if config.camera is not None:
        return config.camera
    poses = load_pose_file(_required(config.pose_file))
    return poses.camera(config.pose_name or config.name).calibration


def _required(path: Path | None) -> Path:
    if path is None:  # SumoSource's validator makes this unreachable
        raise ConfigError("a sumo source needs a sumocfg or a net, and a camera or a pose file")
    return path


def _write_truth(out: IO[str], stream: str, index: int, ts: float, frame: RenderedFrame) -> None:
    record = {
        "stream": stream,
        "frame": index,
        "ts": round(ts, 3),
        "sim_time": round(frame.time, 3),
        "objects": [
            {
                "id": o.id,
                "vclass": o.vclass,
                "label": o.label,
                "box": [round(v, 1) for v in o.box],
                "visible": round(o.visible, 3),
                "distance_m": round(o.distance_m, 2),
                "speed": round(o.speed, 2),
                "lane": o.lane,
            }
            for o in frame.truth
        ],
    }
    out.write(json.dumps(record) + "\n")
