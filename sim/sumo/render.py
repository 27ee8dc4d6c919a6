"""The SUMO world drawn through a calibrated camera, with ground truth beside each frame.

Our own renderer (OpenCV and numpy), not ``sumo-gui`` screenshots: the GUI
needs a display and a bird's-eye view, and gives no ground truth
(``docs/adr/0017-sumo-cameras-own-renderer.md``). What is drawn:

- sky above the horizon and ground below it, with the network's road surface
  (lanes, junctions, sidewalks, walking areas) from its geometry (sumolib),
  zebra crossings, dashed lane lines, kerb and centre lines and stop bars at
  signalised junctions; this background is drawn once per camera;
- every road user in front of the camera as upright prisms shaped by its
  SUMO vehicle class (car, truck, bus, motorcycle, bicycle, person), faces
  shaded by their orientation, painted far to near so near ones occlude;
- conditions: ``day``, ``dusk``, ``night`` (headlights, tail lights, sensor
  noise), ``rain`` (streaks, haze, a softer image) and ``fog`` (contrast
  fading with distance).

Ground truth per frame (:class:`TruthObject`: image box, SUMO id, vClass, the
detector class it counts as, and how much of it is visible) is for evaluation
only; the agent's pipeline never sees it (:class:`roadside.edge.sources.base.Frame`
carries only class and box, as the synthetic camera's does).
"""

from __future__ import annotations

import itertools
import math
import zlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final, Literal

import cv2
import numpy as np
import numpy.typing as npt

from roadside.sim.sumo.world import RoadUser, WorldState
from roadside.vision.calibration import Box, Camera

__all__ = [
    "CONDITIONS",
    "DETECTOR_CLASSES",
    "MIN_BOX_PX",
    "MIN_VISIBLE",
    "SHAPE_OF_VCLASS",
    "Conditions",
    "RenderedFrame",
    "Renderer",
    "RoadGeometry",
    "TruthObject",
    "detector_class",
    "findable",
    "shape_of",
]

Conditions = Literal["day", "dusk", "night", "rain", "fog"]
CONDITIONS: Final[tuple[Conditions, ...]] = ("day", "dusk", "night", "rain", "fog")
Shape = Literal["car", "truck", "bus", "motorcycle", "bicycle", "person"]
ImageU8 = npt.NDArray[np.uint8]
FloatArray = npt.NDArray[np.float64]
Color = tuple[float, float, float]  # BGR

# The shipped detector's classes (models/MODEL_CARD.md): 0 car, 1 truck, 2 pedestrian, 3 cyclist.
DETECTOR_CLASSES: Final = ("car", "truck", "pedestrian", "cyclist")

# SUMO vClass → the shape drawn. Classes not listed are drawn as cars.
SHAPE_OF_VCLASS: Final[dict[str, Shape]] = {
    "passenger": "car",
    "private": "car",
    "taxi": "car",
    "emergency": "car",
    "authority": "car",
    "army": "car",
    "vip": "car",
    "evehicle": "car",
    "delivery": "car",
    "custom1": "car",
    "custom2": "car",
    "truck": "truck",
    "trailer": "truck",
    "bus": "bus",
    "coach": "bus",
    "tram": "bus",
    "rail_urban": "bus",
    "motorcycle": "motorcycle",
    "moped": "motorcycle",
    "bicycle": "bicycle",
    "scooter": "bicycle",
    "pedestrian": "person",
}

# Drawn shape → the detector class it is truth for. The detector has no bus or motorcycle class:
# a bus is a large vehicle (truck), a motorcycle a rider on two wheels (cyclist). Trams and
# trains are drawn (as buses) but are truth for no class.
_DETECTOR_CLASS_OF_SHAPE: Final[dict[Shape, str]] = {
    "car": "car",
    "truck": "truck",
    "bus": "truck",
    "motorcycle": "cyclist",
    "bicycle": "cyclist",
    "person": "pedestrian",
}
_NO_DETECTOR_CLASS: Final = frozenset({"tram", "rail_urban", "rail", "rail_electric", "ship", "aircraft"})

_NEAR_M: Final = 1.0  # geometry closer than this to the image plane is clipped away
_DRAW_DISTANCE_M: Final = 400.0  # road users and road further than this are not drawn
_SEGMENT_M: Final = 8.0  # long lanes are drawn as quads this long (perspective stays exact)
_SHIFT: Final = 3  # fixed-point bits for OpenCV's sub-pixel polygon filling
_ONE: Final = 1 << _SHIFT


def shape_of(vclass: str) -> Shape:
    """The shape a SUMO vehicle class is drawn as."""
    return SHAPE_OF_VCLASS.get(vclass, "car")


def detector_class(vclass: str) -> str | None:
    """The shipped detector's class that a SUMO vehicle class is ground truth for (``None``: no class)."""
    if vclass in _NO_DETECTOR_CLASS:
        return None
    return _DETECTOR_CLASS_OF_SHAPE[shape_of(vclass)]


@dataclass(frozen=True, slots=True)
class TruthObject:
    """One road user as the camera sees it. Evaluation only: never fed to the pipeline."""

    id: str  # SUMO vehicle or person id
    vclass: str
    shape: Shape
    label: str | None  # the detector class, see :func:`detector_class`
    box: Box  # x1, y1, x2, y2 pixels, clipped to the image
    visible: float  # share of its silhouette not hidden by nearer users (0..1), inside the image
    distance_m: float  # from the camera along its optical axis
    speed: float  # m/s
    lane: str


@dataclass(frozen=True)
class RenderedFrame:
    """A frame and what is truly in it."""

    time: float  # simulated seconds
    image: ImageU8  # H×W×3 BGR
    truth: tuple[TruthObject, ...]


# -- the road, from the network -----------------------------------------------------------------

Material = Literal["asphalt", "sidewalk", "zebra", "marking", "kerb"]


@dataclass
class RoadGeometry:
    """The road surface of a SUMO network as flat polygons in network metres, by material.

    Read once from the ``.net.xml`` with :meth:`from_net`; any network works.
    """

    polygons: list[tuple[Material, FloatArray]] = field(default_factory=list)  # each N×2
    lamps: list[tuple[float, float]] = field(default_factory=list)  # street lamp posts, metres

    @classmethod
    def from_net(cls, net_file: Path) -> RoadGeometry:
        """The drawable surface of ``net_file``: lanes, junctions, sidewalks, crossings, markings."""
        import sumolib

        net = sumolib.net.readNet(str(net_file), withInternal=True, withPedestrianConnections=True)
        road = cls()
        for node in net.getNodes():
            shape = node.getShape()
            if shape and len(shape) >= 3:
                road.add("asphalt", [p[:2] for p in shape])
        edges = list(net.getEdges(withInternal=True))
        for edge in edges:
            if edge.getFunction() in ("", "internal"):
                for lane in edge.getLanes():
                    material: Material = "sidewalk" if _is_sidewalk(lane) else "asphalt"
                    road.add_strip(material, _xy(lane.getShape()), lane.getWidth())
        for edge in edges:
            for lane in edge.getLanes():
                if edge.getFunction() == "walkingarea" and len(lane.getShape()) >= 3:
                    road.add("sidewalk", _xy(lane.getShape()))
                elif edge.getFunction() == "crossing":
                    road.add_zebra(_xy(lane.getShape()), lane.getWidth())
        for edge in edges:
            if edge.getFunction() == "":
                road.add_markings(edge)
                road.add_lamps(edge)
        return road

    def add(self, material: Material, points: Sequence[FloatArray] | FloatArray) -> None:
        self.polygons.append((material, np.asarray(points, dtype=np.float64)[:, :2]))

    def add_strip(self, material: Material, line: FloatArray, width: float) -> None:
        """A band ``width`` wide along polyline ``line``, as quads no longer than a few metres."""
        for a, b in _pieces(line, _SEGMENT_M):
            d = b - a
            n = np.array([-d[1], d[0]]) / (np.hypot(*d) or 1.0) * width / 2.0
            self.add(material, [a + n, b + n, b - n, a - n])

    def add_zebra(self, line: FloatArray, width: float) -> None:
        """Zebra bars across a crossing: 0.5 m bars every metre, as long as the crossing is wide."""
        if len(line) < 2:
            return
        self.add_strip("asphalt", line, width)
        for a, b in _dashes(line, on=0.5, off=0.5):
            d = b - a
            n = np.array([-d[1], d[0]]) / (np.hypot(*d) or 1.0) * (width / 2.0 - 0.2)
            self.add("zebra", [a + n, b + n, b - n, a - n])

    def add_lamps(self, edge: object) -> None:
        """Lamp posts every 30 m a metre beyond the right-hand side of a normal edge."""
        lanes = edge.getLanes()  # type: ignore[attr-defined]
        if not lanes or all(_is_sidewalk(lane) for lane in lanes):
            return
        outer = lanes[0]
        side = _offset(_xy(outer.getShape()), -(outer.getWidth() / 2.0 + 1.0))
        self.lamps.extend((float(x), float(y)) for x, y in _every(side, _LAMP_SPACING_M))

    def add_markings(self, edge: object) -> None:
        """Lane lines of a normal edge: dashed between its lanes, solid at its sides, stop bars."""
        lanes = edge.getLanes()  # type: ignore[attr-defined]
        to_node = edge.getToNode()  # type: ignore[attr-defined]
        signalised = to_node.getType() in ("traffic_light", "traffic_light_right_on_red", "allway_stop")
        vehicle = [lane for lane in lanes if not _is_sidewalk(lane)]
        for i, lane in enumerate(lanes):
            line, width = _xy(lane.getShape()), lane.getWidth()
            if _is_sidewalk(lane):
                self.add_strip("kerb", _offset(line, width / 2.0 - 0.1), 0.2)
                continue
            left = _offset(line, width / 2.0 - 0.08)
            if lane is vehicle[-1]:
                self.add_strip("marking", left, 0.15)  # centre line (or the edge's left side)
            for a, b in _dashes(left, on=3.0, off=6.0) if lane is not vehicle[-1] else ():
                self.add_strip("marking", np.array([a, b]), 0.12)
            if i == 0 or _is_sidewalk(lanes[i - 1]):
                self.add_strip("marking", _offset(line, -width / 2.0 + 0.15), 0.12)  # edge line
            if signalised and lane.getLength() > 6.0:
                end, before = line[-1], line[-2]
                d = (end - before) / (np.hypot(*(end - before)) or 1.0)
                bar = end - d * 0.5
                self.add_strip("marking", np.array([bar - d * 0.25, bar + d * 0.25]), width - 0.1)


def _is_sidewalk(lane: object) -> bool:
    return bool(lane.allows("pedestrian") and not lane.allows("passenger"))  # type: ignore[attr-defined]


def _xy(shape: Sequence[Sequence[float]]) -> FloatArray:
    return np.asarray([p[:2] for p in shape], dtype=np.float64)


def _pieces(line: FloatArray, step: float) -> Iterable[tuple[FloatArray, FloatArray]]:
    for a, b in itertools.pairwise(line):
        length = float(np.hypot(*(b - a)))
        count = max(1, math.ceil(length / step))
        for k in range(count):
            yield a + (b - a) * (k / count), a + (b - a) * ((k + 1) / count)


def _dashes(line: FloatArray, on: float, off: float) -> list[tuple[FloatArray, FloatArray]]:
    """Dash segments (start, end) along a polyline, ``on`` metres drawn, ``off`` skipped."""
    out = []
    phase = 0.0
    for a, b in itertools.pairwise(line):
        length = float(np.hypot(*(b - a)))
        if length == 0:
            continue
        d = (b - a) / length
        s = 0.0
        while s < length:
            period_pos = (phase + s) % (on + off)
            if period_pos < on:
                run = min(on - period_pos, length - s)
                out.append((a + d * s, a + d * (s + run)))
            else:
                run = min(on + off - period_pos, length - s)
            s += run
        phase = (phase + length) % (on + off)
    return out


def _every(line: FloatArray, spacing: float) -> list[FloatArray]:
    """Points along a polyline every ``spacing`` metres, from half a spacing in."""
    out = []
    next_at = spacing / 2.0
    walked = 0.0
    for a, b in itertools.pairwise(line):
        length = float(np.hypot(*(b - a)))
        while next_at <= walked + length and length > 0:
            out.append(a + (b - a) * ((next_at - walked) / length))
            next_at += spacing
        walked += length
    return out


def _offset(line: FloatArray, distance: float) -> FloatArray:
    """The polyline shifted ``distance`` metres to its left (negative: right)."""
    if len(line) < 2:
        return line
    seg = np.diff(line, axis=0)
    normals = np.column_stack([-seg[:, 1], seg[:, 0]])
    normals /= np.maximum(np.hypot(normals[:, 0], normals[:, 1]), 1e-9)[:, None]
    vertex = np.vstack([normals[:1], (normals[:-1] + normals[1:]) / 2.0, normals[-1:]])
    vertex /= np.maximum(np.hypot(vertex[:, 0], vertex[:, 1]), 1e-9)[:, None]
    return np.asarray(line + vertex * distance, dtype=np.float64)


# -- conditions --------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Look:
    light: float  # scales surface colours
    sky_top: Color
    sky_horizon: Color
    haze: Color  # what distance fades towards
    visibility_m: float  # distance at which contrast falls to 1/e
    noise: float  # sensor noise sigma, grey levels
    lights_on: bool
    rain: bool
    lamps: float  # street lamps: light added at the foot of a lamp post (0: off)


_LOOKS: Final[dict[Conditions, _Look]] = {
    "day": _Look(1.0, (235, 180, 120), (240, 225, 205), (225, 215, 205), 2500.0, 2.0, False, False, 0.0),
    "dusk": _Look(0.6, (120, 70, 60), (110, 150, 230), (120, 130, 160), 900.0, 4.0, True, False, 0.3),
    "night": _Look(0.22, (40, 18, 10), (70, 45, 35), (45, 35, 30), 600.0, 7.0, True, False, 0.55),
    "rain": _Look(0.62, (150, 140, 130), (175, 170, 165), (165, 160, 155), 260.0, 4.0, True, True, 0.1),
    "fog": _Look(0.8, (200, 200, 200), (210, 210, 210), (205, 205, 205), 70.0, 3.0, True, False, 0.1),
}
_LAMP_SPACING_M: Final = 30.0
_LAMP_HEIGHT_M: Final = 8.0
_LAMP_REACH_M: Final = 9.0  # the pool of light under a lamp (Gaussian sigma)

_MATERIAL: Final[dict[Material, Color]] = {
    "asphalt": (78, 78, 80),
    "sidewalk": (150, 155, 160),
    "zebra": (225, 225, 225),
    "marking": (225, 225, 225),
    "kerb": (185, 185, 185),
}
_GROUND: Final[Color] = (70, 110, 95)  # verge and lots beyond the road: grass and gravel

_BODY_COLOURS: Final[tuple[Color, ...]] = (
    (40, 40, 200),
    (200, 200, 200),
    (30, 30, 30),
    (160, 90, 30),
    (60, 140, 60),
    (210, 210, 220),
    (120, 120, 120),
    (30, 160, 220),
    (90, 40, 120),
    (235, 235, 235),
)
_SHIRTS: Final[tuple[Color, ...]] = (
    (40, 40, 170),
    (160, 100, 40),
    (60, 130, 60),
    (200, 200, 200),
    (30, 30, 30),
)


# -- road users as prisms ----------------------------------------------------------------------


@dataclass(frozen=True)
class _Part:
    """An upright box in the road user's own frame: along (rear 0 → front L), across, and up."""

    s0: float
    s1: float
    half_width: float
    z0: float
    z1: float
    colour: Color
    lamps: bool = False  # headlights on its front face, tail lights on its back


def _parts(user: RoadUser, shape: Shape) -> list[_Part]:
    length, width, height = user.length, user.width, user.height
    tint = zlib.crc32(user.id.encode())
    body = _BODY_COLOURS[tint % len(_BODY_COLOURS)]
    glass: Color = (70, 55, 45)
    dark: Color = (25, 25, 25)
    if shape == "car":
        return [
            _Part(0.05 * length, 0.95 * length, 0.45 * width, 0.0, 0.25 * height, dark),
            _Part(0.0, length, width / 2.0, 0.2 * height, 0.58 * height, body, lamps=True),
            _Part(0.25 * length, 0.72 * length, 0.44 * width, 0.58 * height, 0.95 * height, glass),
            _Part(0.3 * length, 0.68 * length, 0.42 * width, 0.95 * height, height, body),
        ]
    if shape == "truck":
        cab = min(2.4, 0.3 * length)
        cargo: Color = (200, 200, 205) if tint % 3 else (60, 90, 150)
        return [
            _Part(0.0, length, 0.45 * width, 0.0, 0.35, dark),
            _Part(0.0, length - cab - 0.2, width / 2.0, 0.35, height, cargo, lamps=True),
            _Part(length - cab, length, width / 2.0, 0.35, 0.55 * height, body, lamps=True),
            _Part(length - cab, length - 0.3, 0.48 * width, 0.55 * height, 0.85 * height, glass),
        ]
    if shape == "bus":
        return [
            _Part(0.0, length, 0.45 * width, 0.0, 0.3, dark),
            _Part(0.0, length, width / 2.0, 0.3, height, (40, 170, 230) if tint % 2 else (60, 60, 200), True),
            _Part(0.03 * length, 0.97 * length, width / 2.0 + 0.02, 0.5 * height, 0.8 * height, glass),
        ]
    shirt = _SHIRTS[tint % len(_SHIRTS)]
    if shape == "person":
        h = height
        return [
            _Part(0.0, length, 0.35 * width, 0.0, 0.48 * h, (60, 50, 45)),
            _Part(0.0, length, 0.45 * width, 0.48 * h, 0.84 * h, shirt),
            _Part(0.15 * length, 0.85 * length, 0.22 * width, 0.86 * h, h, (120, 150, 190)),
        ]
    # Two wheels: a thin frame and a rider sitting over its middle.
    frame: Color = (40, 40, 40) if shape == "motorcycle" else (30, 80, 160)
    rider_h = max(height, 1.6)
    return [
        _Part(
            0.0,
            length,
            0.12,
            0.0,
            0.75 if shape == "motorcycle" else 0.65,
            frame,
            lamps=shape == "motorcycle",
        ),
        _Part(0.3 * length, 0.62 * length, min(0.25, width / 2.0), 0.75, 0.86 * rider_h, shirt),
        _Part(
            0.38 * length,
            0.56 * length,
            0.12,
            0.86 * rider_h,
            rider_h,
            (50, 50, 50) if shape == "motorcycle" else (120, 150, 190),
        ),
    ]


def _part_corners(user: RoadUser, part: _Part) -> FloatArray:
    """The 8 corners (road metres) of a part: bottom four then top four, counter-clockwise from above."""
    a = math.radians(user.angle)
    fwd = np.array([math.sin(a), math.cos(a)])
    right = np.array([fwd[1], -fwd[0]])
    front = np.array([user.x, user.y])
    if user.kind == "person":
        front = front + fwd * user.length / 2.0
    rear = front - fwd * user.length
    base = [
        rear + fwd * part.s0 + right * part.half_width,
        rear + fwd * part.s1 + right * part.half_width,
        rear + fwd * part.s1 - right * part.half_width,
        rear + fwd * part.s0 - right * part.half_width,
    ]
    ground = np.asarray(base)
    return np.vstack(
        [np.column_stack([ground, np.full(4, part.z0)]), np.column_stack([ground, np.full(4, part.z1)])]
    )


# Faces of a part as corner indices (outward normal by the right-hand rule), with a shade each.
_FACES: Final[tuple[tuple[tuple[int, int, int, int], str], ...]] = (
    ((4, 5, 6, 7), "top"),
    ((0, 1, 5, 4), "side"),  # right side
    ((2, 3, 7, 6), "side"),  # left side
    ((1, 2, 6, 5), "front"),
    ((3, 0, 4, 7), "back"),
)
_FACE_INDEX: Final = np.array([face for face, _ in _FACES])
_SHADE: Final[dict[str, float]] = {"top": 1.15, "side": 0.8, "front": 0.95, "back": 0.9}


# -- the renderer ------------------------------------------------------------------------------


class Renderer:
    """Draws :class:`WorldState` s through one camera. The background is drawn once, here."""

    def __init__(
        self, camera: Camera, road: RoadGeometry, conditions: Conditions = "day", seed: int = 0
    ) -> None:
        self.camera = camera
        self.conditions = conditions
        self._look = _LOOKS[conditions]
        self._rng = np.random.default_rng(seed)
        self._lamp_posts = np.asarray(road.lamps, dtype=np.float64).reshape(-1, 2)
        self._background = self._draw_background(road)
        self._noise = self._make_noise()

    def render(self, state: WorldState) -> RenderedFrame:
        """The frame the camera takes at ``state``, and its ground truth."""
        cam = self.camera
        image = self._background.copy()
        owner = np.zeros((cam.height, cam.width), dtype=np.int32)  # which user each pixel shows
        drawn: list[tuple[RoadUser, float, FloatArray]] = []
        for user, depth, corners in self._in_view(state.users):
            index = len(drawn) + 1
            self._draw_user(image, owner, index, user, depth, corners)
            drawn.append((user, depth, corners))
        truth = self._truth(owner, drawn)
        return RenderedFrame(state.time, self._finish(image), truth)

    # -- background

    def _draw_background(self, road: RoadGeometry) -> ImageU8:
        cam, look = self.camera, self._look
        h, w = cam.height, cam.width
        image = np.empty((h, w, 3), dtype=np.float64)
        horizon = cam.horizon_v()
        rows = np.arange(h, dtype=np.float64)
        # Sky: a vertical gradient from the top of the frame to the horizon.
        t = np.clip(
            (rows - min(horizon - 0.6 * h, 0.0)) / max(horizon - min(horizon - 0.6 * h, 0.0), 1.0), 0, 1
        )
        sky = np.outer(1 - t, look.sky_top) + np.outer(t, look.sky_horizon)
        image[:] = sky[:, None, :]
        below = rows > horizon
        image[below] = np.array(_GROUND)
        canvas = np.ascontiguousarray(np.clip(image, 0, 255).astype(np.uint8))
        for material, polygon in road.polygons:
            self._fill_ground(canvas, polygon, _MATERIAL[material])
        lit = self._light_ground(canvas, below)
        self._draw_lamp_heads(lit)
        return self._haze_by_row(lit, below)

    def _lighting(self, points: FloatArray) -> FloatArray:
        """How lit road points (N×2 metres) are: daylight plus the pools of nearby street lamps."""
        look = self._look
        light = np.full(len(points), look.light)
        if look.lamps <= 0 or len(self._lamp_posts) == 0:
            return light
        pool = np.zeros(len(points))
        for chunk in range(0, len(self._lamp_posts), 64):  # bounded memory: points × 64 lamps at a time
            lamps = self._lamp_posts[chunk : chunk + 64]
            d2 = ((points[:, None, :] - lamps[None, :, :]) ** 2).sum(axis=2)
            pool += np.exp(-d2 / (2.0 * _LAMP_REACH_M**2)).sum(axis=1)
        return np.asarray(light + look.lamps * np.minimum(pool, 1.3), dtype=np.float64)

    def _light_ground(self, canvas: ImageU8, below: npt.NDArray[np.bool_]) -> ImageU8:
        cam = self.camera
        rows = np.flatnonzero(below)
        if len(rows) == 0:
            return canvas
        vv, uu = np.meshgrid(rows.astype(np.float64), np.arange(cam.width, dtype=np.float64), indexing="ij")
        road = cam.image_to_road(np.column_stack([uu.ravel(), vv.ravel()]))
        road = np.where(np.isfinite(road), road, 1e9)  # at the horizon: far from every lamp
        factor = self._lighting(road).reshape(len(rows), cam.width)
        out = canvas.astype(np.float64)
        out[rows] *= factor[:, :, None]
        return np.clip(out, 0, 255).astype(np.uint8)

    def _draw_lamp_heads(self, canvas: ImageU8) -> None:
        """The lamps themselves, as glowing points 8 m up, when they are on."""
        cam, look = self.camera, self._look
        if look.lamps < 0.2 or len(self._lamp_posts) == 0:
            return
        heads = np.column_stack([self._lamp_posts, np.full(len(self._lamp_posts), _LAMP_HEIGHT_M)])
        depth = cam.depth(heads)
        uv = cam.project(heads)
        focal = float(cam.intrinsics[0, 0])
        for (u, v), d in zip(uv, depth, strict=True):
            if not (
                np.isfinite(u) and d < _DRAW_DISTANCE_M and -20 < u < cam.width + 20 and -20 < v < cam.height
            ):
                continue
            radius = max(0.8, 0.2 * focal / d)
            cv2.circle(
                canvas,
                _fixed_point(np.array([u, v])),
                round(radius * _ONE),
                (200, 235, 255),
                -1,
                cv2.LINE_AA,
                _SHIFT,
            )

    def _fill_ground(self, canvas: ImageU8, polygon: FloatArray, colour: Color) -> None:
        cam = self.camera
        if np.hypot(*(polygon.mean(axis=0) - cam.centre[:2])) > _DRAW_DISTANCE_M:
            return
        clipped = _clip_near(np.column_stack([polygon, np.zeros(len(polygon))]), cam)
        if len(clipped) < 3:
            return
        pixels = cam.project(clipped)
        if not np.all(np.isfinite(pixels)):
            return
        cv2.fillPoly(canvas, [_fixed(pixels)], colour, lineType=cv2.LINE_AA, shift=_SHIFT)

    def _haze_by_row(self, canvas: ImageU8, below: npt.NDArray[np.bool_]) -> ImageU8:
        """Fade the ground towards the haze colour with the distance each row looks at."""
        cam, look = self.camera, self._look
        rows = np.arange(cam.height, dtype=np.float64)
        centre = np.column_stack([np.full(cam.height, cam.width / 2.0), rows])
        road = cam.image_to_road(centre)
        distance = np.hypot(road[:, 0] - cam.centre[0], road[:, 1] - cam.centre[1])
        distance = np.where(below & np.isfinite(distance), distance, np.inf)
        fade = 1.0 - np.exp(-distance / look.visibility_m)
        fade[~below] = 0.0
        out = (
            canvas.astype(np.float64) * (1 - fade)[:, None, None] + np.array(look.haze) * fade[:, None, None]
        )
        return np.clip(out, 0, 255).astype(np.uint8)

    # -- road users

    def _in_view(self, users: Iterable[RoadUser]) -> list[tuple[RoadUser, float, FloatArray]]:
        """Users wholly in front of the camera and near enough, far to near, with their part corners."""
        cam = self.camera
        found = []
        for user in users:
            ground = np.array([[user.x, user.y, 0.0]])
            depth = float(cam.depth(ground)[0])
            if depth < _NEAR_M + user.length or depth > _DRAW_DISTANCE_M:
                continue
            shape = shape_of(user.vclass)
            corners = np.vstack([_part_corners(user, p) for p in _parts(user, shape)])
            if float(cam.depth(corners).min()) < _NEAR_M:
                continue
            uv = cam.project(corners)
            if (
                uv[:, 0].max() < 0
                or uv[:, 0].min() > cam.width
                or uv[:, 1].max() < 0
                or uv[:, 1].min() > cam.height
            ):
                continue
            found.append((user, float(cam.depth(corners).mean()), corners))
        found.sort(key=lambda item: -item[1])
        return found

    def _draw_user(
        self,
        image: ImageU8,
        owner: npt.NDArray[np.int32],
        index: int,
        user: RoadUser,
        depth: float,
        corners: FloatArray,
    ) -> None:
        cam, look = self.camera, self._look
        fade = 1.0 - math.exp(-depth / look.visibility_m)
        haze = np.array(look.haze) * fade
        light = float(self._lighting(np.array([[user.x, user.y]]))[0])
        uv_all = cam.project(corners)
        for k, part in enumerate(_parts(user, shape_of(user.vclass))):
            pc, uv = corners[8 * k : 8 * k + 8], uv_all[8 * k : 8 * k + 8]
            quads = pc[_FACE_INDEX]  # 5 faces × 4 corners × xyz
            e1, e2 = quads[:, 1] - quads[:, 0], quads[:, 3] - quads[:, 0]
            normal = np.column_stack(
                [
                    e1[:, 1] * e2[:, 2] - e1[:, 2] * e2[:, 1],
                    e1[:, 2] * e2[:, 0] - e1[:, 0] * e2[:, 2],
                    e1[:, 0] * e2[:, 1] - e1[:, 1] * e2[:, 0],
                ]
            )
            facing = np.einsum("ij,ij->i", normal, cam.centre - quads.mean(axis=1)) > 0
            base = np.array(part.colour) * light * (1 - fade)
            for f in np.flatnonzero(facing):
                kind = _FACES[f][1]
                colour = np.clip(base * _SHADE[kind] + haze, 0, 255)
                pts = _fixed(uv[_FACE_INDEX[f]])
                cv2.fillConvexPoly(image, pts, colour.tolist(), cv2.LINE_AA, _SHIFT)
                cv2.fillConvexPoly(owner, pts, index, cv2.LINE_8, _SHIFT)
                if part.lamps and kind in ("front", "back"):
                    self._lamps(image, uv[_FACE_INDEX[f]], kind, fade)

    def _lamps(self, image: ImageU8, face: FloatArray, kind: str, fade: float) -> None:
        """Head or tail lights low on a front or back face; bright at night, faint by day."""
        bottom_left, bottom_right, top_right, top_left = face  # corners in _FACES order
        on = self._look.lights_on
        colour: Color = (230, 245, 255) if kind == "front" else (40, 40, 220)
        if not on:
            colour = (200, 210, 215) if kind == "front" else (40, 40, 150)
        for side in (0.18, 0.82):
            low = bottom_left + (bottom_right - bottom_left) * side
            high = top_left + (top_right - top_left) * side
            centre = low + (high - low) * 0.35
            radius = max(1.0, 0.07 * float(np.hypot(*(bottom_right - bottom_left))))
            glow = radius * (2.2 if on else 1.0)
            c = tuple(float(x) * (1 - 0.6 * fade) for x in colour)
            cv2.circle(image, _fixed_point(centre), int(glow * _ONE), c, -1, cv2.LINE_AA, _SHIFT)

    def _truth(
        self, owner: npt.NDArray[np.int32], drawn: list[tuple[RoadUser, float, FloatArray]]
    ) -> tuple[TruthObject, ...]:
        cam = self.camera
        counts = np.bincount(owner.ravel(), minlength=len(drawn) + 1)
        out = []
        for index, (user, depth, corners) in enumerate(drawn, start=1):
            uv = cam.project(corners)
            x1, y1 = np.clip(uv.min(axis=0), 0, [cam.width, cam.height])
            x2, y2 = np.clip(uv.max(axis=0), 0, [cam.width, cam.height])
            if x2 - x1 < 1 or y2 - y1 < 1:
                continue
            # Its whole silhouette, drawn alone in its box, against what of it is left on top.
            ox, oy = int(x1), int(y1)
            roi = np.zeros((math.ceil(y2) - oy + 1, math.ceil(x2) - ox + 1), dtype=np.uint8)
            hull = cv2.convexHull(_fixed(uv - np.array([ox, oy])))
            cv2.fillConvexPoly(roi, hull, 1, cv2.LINE_8, _SHIFT)
            total = int(cv2.countNonZero(roi))
            visible = min(1.0, counts[index] / total) if total else 0.0
            shape = shape_of(user.vclass)
            out.append(
                TruthObject(
                    id=user.id,
                    vclass=user.vclass,
                    shape=shape,
                    label=detector_class(user.vclass),
                    box=(float(x1), float(y1), float(x2), float(y2)),
                    visible=float(visible),
                    distance_m=depth,
                    speed=user.speed,
                    lane=user.lane,
                )
            )
        return tuple(out)

    # -- weather and sensor

    def _finish(self, image: ImageU8) -> ImageU8:
        out = self._rain(image) if self._look.rain else image
        # Sensor noise: one of a few noise frames made at start (drawing fresh noise per frame
        # costs more than the rest of the frame), added and subtracted with saturation.
        up, down = self._noise[int(self._rng.integers(len(self._noise)))]
        return np.asarray(cv2.subtract(cv2.add(out, up), down), dtype=np.uint8)

    def _make_noise(self, frames: int = 6) -> list[tuple[ImageU8, ImageU8]]:
        shape = (self.camera.height, self.camera.width, 3)
        out = []
        for _ in range(frames):
            n = self._rng.normal(0.0, self._look.noise, shape)
            out.append((np.clip(n, 0, 255).astype(np.uint8), np.clip(-n, 0, 255).astype(np.uint8)))
        return out

    def _rain(self, image: ImageU8) -> ImageU8:
        h, w = image.shape[:2]
        soft = cv2.GaussianBlur(image, (3, 3), 0)
        streaks = np.zeros((h, w), dtype=np.uint8)
        for _ in range(int(w * h / 900)):
            x, y = int(self._rng.integers(0, w)), int(self._rng.integers(0, h))
            length = int(self._rng.integers(8, 18))
            cv2.line(streaks, (x, y), (x - length // 4, y + length), 255, 1, cv2.LINE_AA)
        blend = soft.astype(np.float64) + streaks[:, :, None].astype(np.float64) * 0.18
        return np.clip(blend, 0, 255).astype(np.uint8)


def _clip_near(points: FloatArray, camera: Camera) -> FloatArray:
    """The part of a planar polygon (N×3) at least ``_NEAR_M`` in front of the camera (Sutherland-Hodgman)."""
    depth = camera.depth(points) - _NEAR_M
    if np.all(depth >= 0):
        return points
    out = []
    n = len(points)
    for i in range(n):
        a, b = points[i], points[(i + 1) % n]
        da, db = depth[i], depth[(i + 1) % n]
        if da >= 0:
            out.append(a)
        if (da >= 0) != (db >= 0):
            out.append(a + (b - a) * (da / (da - db)))
    return np.asarray(out, dtype=np.float64).reshape(-1, 3)


def _fixed(pixels: FloatArray) -> npt.NDArray[np.int32]:
    """Pixels as OpenCV's fixed-point polygon points, kept inside a range it can rasterise."""
    return np.clip(np.round(pixels * _ONE), -(1 << 26), 1 << 26).astype(np.int32).reshape(-1, 1, 2)


def _fixed_point(p: FloatArray) -> tuple[int, int]:
    return (round(float(p[0]) * _ONE), round(float(p[1]) * _ONE))


# A road user counts in a frame's truth when at least this share of it is in sight (a car hidden
# behind a bus is not something a detector can be blamed for missing) and its box is at least
# MIN_BOX_PX high and wide.
MIN_VISIBLE = 0.3
MIN_BOX_PX = 4.0


def findable(truth: tuple[TruthObject, ...]) -> tuple[TruthObject, ...]:
    """The road users of a frame's truth with a detector class, in sight enough to find."""
    return tuple(
        o
        for o in truth
        if o.label is not None
        and o.visible >= MIN_VISIBLE
        and o.box[2] - o.box[0] >= MIN_BOX_PX
        and o.box[3] - o.box[1] >= MIN_BOX_PX
    )
