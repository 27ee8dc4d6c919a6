"""Camera pose files, and poses that cover every approach of a junction of any SUMO network.

A pose file is JSON (or TOML) holding a list of cameras, each a name and a
calibration in the form :mod:`roadside.vision.calibration` reads (a pose, or
image ↔ road point pairs), in the network's own coordinates (metres, as
``sumo-gui`` shows them; ``netconvert`` shifts coordinates unless told
``--offset.disable-normalization``)::

    {"cameras": [
      {"name": "n_in", "junction": "C", "approach": "n_in",
       "calibration": {"type": "pose", "x": -6.2, "y": -16.37, "height": 8.0, "heading": 3.32,
                       "tilt": 8.77, "hfov": 55.0, "width": 640, "height_px": 480}}
    ]}

``junction`` and ``approach`` are optional and only describe what the camera
is for. :func:`approach_cameras` writes such poses for any junction: one
camera per incoming road, on a pole past the far kerb, looking back up the
approach from its stop line.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from roadside.shared.config import describe, read_config_file
from roadside.shared.errors import ConfigError
from roadside.vision.calibration import CameraCalibration, PoseCalibration

__all__ = [
    "ApproachGeometry",
    "CameraPose",
    "CameraPoseFile",
    "approach_cameras",
    "junction_approaches",
    "load_pose_file",
    "write_pose_file",
]


class CameraPose(BaseModel):
    """One camera of a pose file."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1)
    junction: str | None = None  # the SUMO junction it watches, for people reading the file
    approach: str | None = None  # the SUMO edge whose traffic it faces
    calibration: CameraCalibration


class CameraPoseFile(BaseModel):
    """A pose file: cameras with unique names."""

    model_config = ConfigDict(extra="forbid")

    cameras: list[CameraPose] = Field(min_length=1)

    def camera(self, name: str) -> CameraPose:
        """The camera called ``name``; ``ConfigError`` naming those there are."""
        for cam in self.cameras:
            if cam.name == name:
                return cam
        names = ", ".join(c.name for c in self.cameras)
        raise ConfigError(f"no camera {name!r} in the pose file (it has: {names})")


def load_pose_file(path: Path) -> CameraPoseFile:
    """Read and validate a pose file; ``ConfigError`` that says what to change."""
    data = read_config_file(path, "camera pose file")
    try:
        poses = CameraPoseFile.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(describe(exc, f"camera pose file {path}")) from exc
    names = [c.name for c in poses.cameras]
    if len(set(names)) != len(names):
        raise ConfigError(f"camera pose file {path}: camera names must be unique, got {names}")
    return poses


def write_pose_file(path: Path, cameras: list[CameraPose]) -> None:
    """Write ``cameras`` as a JSON pose file."""
    path.write_text(CameraPoseFile(cameras=cameras).model_dump_json(indent=2, exclude_none=True) + "\n")


@dataclass(frozen=True)
class ApproachGeometry:
    """Where an approach meets its junction: for placing and aiming a camera at it."""

    edge: str  # the incoming SUMO edge
    stop_line: tuple[float, float]  # the middle of its vehicle lanes at the junction, metres
    direction: tuple[float, float]  # unit vector of travel towards the junction
    half_width: float  # half the width of its vehicle lanes, metres


def junction_approaches(net_file: Path, junction: str) -> list[ApproachGeometry]:
    """Every road entering ``junction`` that vehicles drive on, in the order SUMO lists them."""
    import sumolib

    net = sumolib.net.readNet(str(net_file))
    if not net.hasNode(junction):
        raise ConfigError(f"network {net_file} has no junction {junction!r}")
    found = []
    for edge in net.getNode(junction).getIncoming():
        lanes = [lane for lane in edge.getLanes() if lane.allows("passenger")]
        if edge.getFunction() or not lanes:
            continue
        ends = [lane.getShape()[-1] for lane in lanes]
        befores = [lane.getShape()[-2] for lane in lanes]
        ex = sum(p[0] for p in ends) / len(ends)
        ey = sum(p[1] for p in ends) / len(ends)
        bx = sum(p[0] for p in befores) / len(befores)
        by = sum(p[1] for p in befores) / len(befores)
        norm = math.hypot(ex - bx, ey - by) or 1.0
        found.append(
            ApproachGeometry(
                edge=edge.getID(),
                stop_line=(ex, ey),
                direction=((ex - bx) / norm, (ey - by) / norm),
                half_width=sum(lane.getWidth() for lane in lanes) / 2.0,
            )
        )
    if not found:
        raise ConfigError(f"junction {junction!r} of {net_file} has no approach that cars drive on")
    return found


def approach_cameras(
    net_file: Path,
    junction: str,
    *,
    mount_height: float = 8.0,
    hfov: float = 55.0,
    width: int = 640,
    height: int = 480,
    look_ahead_m: float = 25.0,
) -> list[CameraPose]:
    """One camera per approach of ``junction``, for any network.

    Each stands on a pole past the junction, on the far kerb to the approaching
    drivers' right, ``mount_height`` metres up, and looks back up its approach
    at a point ``look_ahead_m`` upstream of the stop line, so the stop line sits
    in the lower part of the frame and the queue behind it fills the rest.
    """
    import sumolib

    net = sumolib.net.readNet(str(net_file))
    cx, cy = net.getNode(junction).getCoord()[:2]
    shape = net.getNode(junction).getShape() or [(cx, cy)]
    radius = max(math.hypot(x - cx, y - cy) for x, y, *_ in shape)
    cameras = []
    for approach in junction_approaches(net_file, junction):
        dx, dy = approach.direction
        right = (dy, -dx)  # the approaching drivers' right
        sx, sy = approach.stop_line
        # Past the junction centre by its radius plus a kerb, beside the lanes.
        px = cx + dx * (radius + 3.0) + right[0] * (approach.half_width + 3.0)
        py = cy + dy * (radius + 3.0) + right[1] * (approach.half_width + 3.0)
        tx, ty = sx - dx * look_ahead_m, sy - dy * look_ahead_m
        heading = math.degrees(math.atan2(tx - px, ty - py)) % 360.0
        tilt = math.degrees(math.atan2(mount_height, math.hypot(tx - px, ty - py)))
        cameras.append(
            CameraPose(
                name=approach.edge,
                junction=junction,
                approach=approach.edge,
                calibration=PoseCalibration(
                    x=round(px, 2),
                    y=round(py, 2),
                    height=mount_height,
                    heading=round(heading, 2),
                    tilt=round(tilt, 2),
                    hfov=hfov,
                    width=width,
                    height_px=height,
                ),
            )
        )
    return cameras
