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
approach from its stop line. :func:`junction_camera` writes one high camera
on a corner that sees the whole junction box with a stretch of every leg,
entrance and exit, as a turning-movement count needs; :func:`junction_legs`
gives those legs as road polygons (the camera's movement approaches).
"""

from __future__ import annotations

import contextlib
import io
import itertools
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import numpy as np
import numpy.typing as npt
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from roadside.shared.config import describe, read_config_file
from roadside.shared.errors import ConfigError
from roadside.vision.calibration import Camera, CameraCalibration, PoseCalibration

__all__ = [
    "ApproachGeometry",
    "CameraPose",
    "CameraPoseFile",
    "JunctionLeg",
    "approach_cameras",
    "junction_approaches",
    "junction_camera",
    "junction_legs",
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


# -- a camera over the whole junction, and the legs it counts movements between ---------------

_VEHICLE_TOP_M: Final = 4.0
_SETBACKS_M: Final = (4.0, 10.0, 20.0, 30.0, 45.0, 60.0)  # mast positions tried beyond the outline
_COMPASS: Final = ("north", "northeast", "east", "southeast", "south", "southwest", "west", "northwest")


@dataclass(frozen=True)
class JunctionLeg:
    """One leg of a junction: the roads into and out of it towards one neighbour, and a stretch of them.

    ``polygon`` (road metres, convex) covers the vehicle lanes of ``entries`` over their last
    ``depth`` metres before the junction and of ``exits`` over their first ``depth`` metres after
    it, ``inset`` metres beyond their ends into the junction and ``side`` metres beyond the outer
    lanes' edges (kerb and verge): a vehicle whose anchor is in it is on that leg (or at its stop
    line), not crossing the junction box. The margins are there because a camera's anchor (the
    bottom middle of a vehicle's box) falls beside the vehicle's footprint, towards the camera; with
    ``inset + side`` at most the gap between two legs' lanes at a corner, legs do not overlap. ``name`` is the
    compass direction the leg lies in from the junction's centre (``north`` is the leg vehicles
    arrive from when heading south), with the neighbour's id after it where two legs share one.
    """

    name: str
    entries: tuple[str, ...]  # SUMO edges into the junction
    exits: tuple[str, ...]  # SUMO edges out of it
    polygon: tuple[tuple[float, float], ...]


def junction_legs(
    net_file: Path, junction: str, *, depth: float = 20.0, inset: float = 2.0, side: float = 2.0
) -> list[JunctionLeg]:
    """The legs of ``junction`` in any network: its vehicle roads grouped by the neighbour they lead to/from.

    ``ConfigError`` for an unknown junction or one with fewer than two legs.
    """
    import sumolib

    with contextlib.redirect_stderr(io.StringIO()):
        net = sumolib.net.readNet(str(net_file))
    if not net.hasNode(junction):
        raise ConfigError(f"network {net_file} has no junction {junction!r}")
    node = net.getNode(junction)
    cx, cy = node.getCoord()[:2]
    groups: dict[str, tuple[list[str], list[str], list[tuple[float, float]]]] = {}
    for edge, inbound in [(e, True) for e in node.getIncoming()] + [(e, False) for e in node.getOutgoing()]:
        lanes = [lane for lane in edge.getLanes() if lane.allows("passenger")]
        if edge.getFunction() or not lanes:
            continue
        neighbour = (edge.getFromNode() if inbound else edge.getToNode()).getID()
        entries, exits, points = groups.setdefault(neighbour, ([], [], []))
        (entries if inbound else exits).append(edge.getID())
        for lane in lanes:
            width = lane.getWidth() + 2.0 * side  # the hull reaches ``side`` beyond the outer lanes
            points.extend(_stretch(lane.getShape(), depth, width, at_end=inbound, inset=inset))
    if len(groups) < 2:
        raise ConfigError(f"junction {junction!r} of {net_file} has fewer than two legs that cars drive on")
    legs = []
    for neighbour, (entries, exits, points) in groups.items():
        hull = _convex_hull(points)
        mx = sum(x for x, _ in hull) / len(hull) - cx
        my = sum(y for _, y in hull) / len(hull) - cy
        compass = _COMPASS[round(math.degrees(math.atan2(mx, my)) % 360.0 / 45.0) % 8]
        legs.append((compass, neighbour, tuple(sorted(entries)), tuple(sorted(exits)), hull))
    names = [leg[0] for leg in legs]
    return [
        JunctionLeg(
            name=compass if names.count(compass) == 1 else f"{compass}-{neighbour}"[:48],
            entries=entries,
            exits=exits,
            polygon=tuple((round(x, 2), round(y, 2)) for x, y in hull),
        )
        for compass, neighbour, entries, exits, hull in legs
    ]


def junction_camera(
    net_file: Path,
    junction: str,
    *,
    name: str = "junction",
    mount_height: float = 15.0,
    width: int = 640,
    height: int = 480,
    depth: float = 20.0,
    inset: float = 2.0,
    side: float = 2.0,
    margin: float = 0.04,
) -> CameraPose:
    """One high camera on a corner of ``junction`` that sees the junction box and every leg, for any network.

    It stands ``mount_height`` metres up on a corner between two neighbouring legs, 4 to 60 m
    beyond the junction's outline (the corner and distance that give the most pixels per metre at
    the junction's centre), and looks at the junction. Heading, tilt and field of view are chosen so that every leg's polygon
    (:func:`junction_legs`, ``depth`` metres of each road), and a 4 m tall vehicle standing on it,
    lies inside the frame with ``margin`` of its size to spare, with the longest focal length (most pixels per metre) that allows it.
    ``ConfigError`` if no corner can see it all (a leg behind the camera, or wider than 150°).
    """
    import sumolib

    legs = junction_legs(net_file, junction, depth=depth, inset=inset, side=side)
    with contextlib.redirect_stderr(io.StringIO()):
        node = sumolib.net.readNet(str(net_file)).getNode(junction)
    cx, cy = node.getCoord()[:2]
    outline = node.getShape() or [(cx, cy)]
    radius = max(math.hypot(x - cx, y - cy) for x, y, *_ in outline)
    targets = np.array([p for leg in legs for p in leg.polygon], dtype=np.float64)
    bearings = sorted(
        math.atan2(
            sum(x for x, _ in leg.polygon) / len(leg.polygon) - cx,
            sum(y for _, y in leg.polygon) / len(leg.polygon) - cy,
        )
        for leg in legs
    )
    best: tuple[float, PoseCalibration] | None = None
    for a, b in zip(bearings, [*bearings[1:], bearings[0] + 2 * math.pi], strict=True):
        corner = (a + b) / 2.0  # between two neighbouring legs, where a mast stands off the road
        for setback in _SETBACKS_M:
            px = cx + math.sin(corner) * (radius + setback)
            py = cy + math.cos(corner) * (radius + setback)
            found = _widest_view(targets, px, py, mount_height, width, height, margin)
            if found is None:
                continue
            # Pixels per metre of road at the junction's centre, along the line of sight (foreshortened
            # by the angle it is seen at: a low view hides the far legs behind near vehicles).
            detail = found[0] * mount_height / math.dist((px, py, mount_height), (cx, cy, 0.0)) ** 2
            if best is None or detail > best[0]:
                best = (detail, found[1])
    if best is None:
        raise ConfigError(f"no corner of junction {junction!r} sees all its legs: place the camera by hand")
    return CameraPose(name=name, junction=junction, calibration=best[1])


def _widest_view(
    targets: npt.NDArray[np.float64],
    px: float,
    py: float,
    mount: float,
    width: int,
    height: int,
    margin: float,
) -> tuple[float, PoseCalibration] | None:
    """The pose at ``px, py`` whose frame holds every target with the longest focal length, and that length."""
    centroid = targets.mean(axis=0)
    heading = math.degrees(math.atan2(centroid[0] - px, centroid[1] - py)) % 360.0
    # Each corner on the road and 4 m above it: a truck standing on a leg is wholly in the frame
    # (a box cut by the frame's edge moves its anchor off the road).
    ground = np.vstack([np.column_stack([targets, np.full(len(targets), z)]) for z in (0.0, _VEHICLE_TOP_M)])
    best: tuple[float, PoseCalibration] | None = None
    for tilt in np.arange(5.0, 86.0, 0.5):
        pose = PoseCalibration(
            x=px,
            y=py,
            height=mount,
            heading=heading,
            tilt=float(tilt),
            focal_px=1.0,
            width=width,
            height_px=height,
        )
        cam = Camera.from_pose(pose)
        local = (ground - cam.centre) @ cam.rotation.T  # right, down, forward
        if not bool((local[:, 2] > 1.0).all()):
            continue
        sideways = np.abs(local[:, 0] / local[:, 2]).max()
        updown = np.abs(local[:, 1] / local[:, 2]).max()
        half_w, half_h = width / 2.0 * (1.0 - margin), height / 2.0 * (1.0 - margin)
        focal = min(half_w / max(sideways, 1e-9), half_h / max(updown, 1e-9))
        hfov = math.degrees(2.0 * math.atan(width / 2.0 / focal))
        if hfov >= 150.0 or (best is not None and focal <= best[0]):
            continue
        best = (
            focal,
            PoseCalibration(
                x=round(px, 2),
                y=round(py, 2),
                height=mount,
                heading=round(heading, 2),
                tilt=float(tilt),
                hfov=math.floor(hfov * 10.0 + 1.0) / 10.0,  # rounded wider, never narrower
                width=width,
                height_px=height,
            ),
        )
    return best


def _stretch(
    shape: list[tuple[float, ...]], length: float, width: float, *, at_end: bool, inset: float
) -> list[tuple[float, float]]:
    """Corners of a lane's last (``at_end``) or first ``length`` metres, ``width`` wide, and ``inset`` more."""
    line = [(float(p[0]), float(p[1])) for p in shape]
    if at_end:
        line.reverse()
    (ax, ay), (bx, by) = line[0], line[1]
    norm = math.hypot(bx - ax, by - ay) or 1.0
    # Reach ``inset`` metres into the junction: a vehicle waiting at the stop line is still on its leg
    # even where the camera's anchor (its box's bottom edge) falls a little past the line.
    points = [(ax - (bx - ax) / norm * inset, ay - (by - ay) / norm * inset), line[0]]
    run = 0.0
    for a, b in itertools.pairwise(line):
        seg = math.dist(a, b)
        if run + seg >= length:
            t = (length - run) / seg if seg else 0.0
            points.append((a[0] + (b[0] - a[0]) * t, a[1] + (b[1] - a[1]) * t))
            break
        points.append(b)
        run += seg
    half = width / 2.0
    out = []
    for a, b in itertools.pairwise(points):
        norm = math.dist(a, b) or 1.0
        nx, ny = -(b[1] - a[1]) / norm * half, (b[0] - a[0]) / norm * half
        out += [
            (a[0] + nx, a[1] + ny),
            (a[0] - nx, a[1] - ny),
            (b[0] + nx, b[1] + ny),
            (b[0] - nx, b[1] - ny),
        ]
    return out


def _convex_hull(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """The convex hull, anticlockwise (Andrew's monotone chain)."""
    pts = sorted(set(points))
    if len(pts) < 3:
        raise ConfigError("a junction leg has no area: its lanes have no length")

    def cross(o: tuple[float, float], a: tuple[float, float], b: tuple[float, float]) -> float:
        return (a[0] - o[0]) * (b[1] - o[1]) - (a[1] - o[1]) * (b[0] - o[0])

    lower: list[tuple[float, float]] = []
    upper: list[tuple[float, float]] = []
    for p in pts:
        while len(lower) >= 2 and cross(lower[-2], lower[-1], p) <= 0:
            lower.pop()
        lower.append(p)
    for p in reversed(pts):
        while len(upper) >= 2 and cross(upper[-2], upper[-1], p) <= 0:
            upper.pop()
        upper.append(p)
    return lower[:-1] + upper[:-1]
