"""A synthetic roadside camera: a street seen from the side, with ground truth.

The scene is the training and test ground for our detectors (``models/``)
and, through :mod:`roadside.sim.camera`, a camera of the edge agent, so it imports
numpy and OpenCV only (no torch) and nothing of Roadside's.

Layout, top to bottom: building facades, the far sidewalk, a westbound bike
lane, four road lanes (0 and 1 head west, right→left; 2 and 3 head east,
left→right), an eastbound bike lane, the near sidewalk and a grass verge. A
zebra crosswalk joins the sidewalks left of centre. Cars and trucks keep to
their lanes and follow one another; cyclists ride the bike lanes;
pedestrians walk the sidewalks and some cross on the crosswalk. Farther
objects are drawn smaller. Everything enters and leaves through the frame
edges.

Determinism: the simulation draws from one generator seeded by
``SceneConfig.seed``; per-frame rendering noise from a generator seeded by
``(seed, frame index)``, so :meth:`RoadScene.advance` (which skips rendering)
leaves later frames byte-identical to stepping through every frame.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import cv2
import numpy as np
import numpy.typing as npt

__all__ = [
    "CLASSES",
    "LANE_NAMES",
    "RoadScene",
    "SceneConfig",
    "SceneFrame",
    "SceneObject",
    "render_dataset",
]

CLASSES: tuple[str, ...] = ("car", "truck", "pedestrian", "cyclist")
CAR, TRUCK, PEDESTRIAN, CYCLIST = range(4)

# SceneObject.lane values, by index.
LANE_NAMES: tuple[str, ...] = (
    "road_west_0",  # top road lane, farthest from the camera
    "road_west_1",
    "road_east_2",
    "road_east_3",  # bottom road lane, nearest
    "bike_west",
    "bike_east",
    "crosswalk",
    "sidewalk_far",
    "sidewalk_near",
)
_BIKE_WEST, _BIKE_EAST, _CROSSWALK, _SIDEWALK_FAR, _SIDEWALK_NEAR = 4, 5, 6, 7, 8

# Share of new objects per class (car, truck, pedestrian, cyclist).
_CLASS_MIX = np.array([0.5, 0.15, 0.2, 0.15])
# An object is in the ground truth while at least this share of it is in frame.
_MIN_VISIBLE = 0.3
_WARMUP_S = 6.0

Color = tuple[int, int, int]
Box = tuple[float, float, float, float]
ImageU8 = npt.NDArray[np.uint8]


@dataclass(frozen=True)
class SceneObject:
    """One object's ground truth in one frame."""

    track_id: int
    cls: int
    box: tuple[float, float, float, float]  # x1,y1,x2,y2 pixels, clipped to the frame
    lane: int  # index into LANE_NAMES
    velocity: tuple[float, float]  # px/s


@dataclass(frozen=True)
class SceneFrame:
    """A rendered frame and the objects visible in it."""

    index: int
    t: float  # seconds since start
    image: npt.NDArray[np.uint8]  # HxWx3 uint8 BGR
    objects: tuple[SceneObject, ...]


@dataclass(frozen=True)
class SceneConfig:
    """Settings of one synthetic camera."""

    width: int = 640
    height: int = 480
    fps: float = 10.0
    light: float = 1.0  # 1 day, ~0.5 dusk, ~0.25 night
    rain: float = 0.0  # 0..1 streaks/blur
    fog: float = 0.0  # 0..1 haze toward a grey sky, denser farther away
    spawn_rate: float = 0.6  # new objects per second
    seed: int = 0

    def __post_init__(self) -> None:
        if self.width < 64 or self.height < 64:
            raise ValueError(f"frame must be at least 64x64, got {self.width}x{self.height}")
        if self.fps <= 0:
            raise ValueError(f"fps must be positive, got {self.fps}")
        if not 0.05 <= self.light <= 1.5:
            raise ValueError(f"light must be in [0.05, 1.5], got {self.light}")
        if not 0.0 <= self.rain <= 1.0:
            raise ValueError(f"rain must be in [0, 1], got {self.rain}")
        if not 0.0 <= self.fog <= 1.0:
            raise ValueError(f"fog must be in [0, 1], got {self.fog}")
        if self.spawn_rate < 0:
            raise ValueError(f"spawn_rate must be >= 0, got {self.spawn_rate}")
        if self.seed < 0:
            raise ValueError(f"seed must be >= 0, got {self.seed}")


@dataclass(frozen=True)
class _Layout:
    """Band positions in pixels, derived from the frame size."""

    width: int
    height: int
    sidewalk_far: tuple[float, float]
    bike_west: tuple[float, float]
    road: tuple[float, float]
    bike_east: tuple[float, float]
    sidewalk_near: tuple[float, float]
    crosswalk: tuple[float, float]  # x range

    @classmethod
    def for_size(cls, width: int, height: int) -> _Layout:
        def band(a: float, b: float) -> tuple[float, float]:
            return (a * height, b * height)

        return cls(
            width=width,
            height=height,
            sidewalk_far=band(0.20, 0.27),
            bike_west=band(0.27, 0.33),
            road=band(0.33, 0.71),
            bike_east=band(0.71, 0.77),
            sidewalk_near=band(0.77, 0.85),
            crosswalk=(0.22 * width, 0.30 * width),
        )

    def lane_band(self, lane: int) -> tuple[float, float]:
        """Vertical extent of a road or bike lane."""
        if lane < 4:
            top, bottom = self.road
            step = (bottom - top) / 4
            return (top + lane * step, top + (lane + 1) * step)
        return self.bike_west if lane == _BIKE_WEST else self.bike_east

    def baseline(self, lane: int) -> float:
        """Where wheels touch the ground in a lane (a little above its lower edge)."""
        top, bottom = self.lane_band(lane)
        return bottom - 0.2 * (bottom - top)

    def sidewalk_baseline(self, lane: int) -> float:
        top, bottom = self.sidewalk_far if lane == _SIDEWALK_FAR else self.sidewalk_near
        return top + 0.65 * (bottom - top)

    def perspective(self, y_bottom: float) -> float:
        """Drawing scale at a ground line: farther (higher) is smaller."""
        v = (y_bottom / self.height - 0.25) / 0.6
        return 0.78 + 0.32 * min(max(v, 0.0), 1.0)


@dataclass(frozen=True)
class _Style:
    """Per-object colours and proportions, drawn once at spawn."""

    body: Color
    accent: Color
    skin: Color
    detail: float  # 0..1 picks small shape variants


@dataclass
class _Agent:
    """Mutable simulation state of one object."""

    track_id: int
    cls: int
    lane: int
    x: float  # centre x
    y: float  # ground line (bottom of the box)
    length: float  # box width at perspective 1
    height: float  # box height at perspective 1
    speed: float  # desired speed, px/s
    heading: int  # +1 east (right), -1 west (left); for a crossing walker, its walking side
    style: _Style
    waypoints: list[tuple[float, float, int]] = field(default_factory=list)  # x, y, lane
    vx: float = 0.0
    vy: float = 0.0
    phase: float = 0.0

    def size(self, layout: _Layout) -> tuple[float, float]:
        s = layout.perspective(self.y)
        return self.length * s, self.height * s

    def box(self, layout: _Layout) -> Box:
        w, h = self.size(layout)
        return (self.x - w / 2, self.y - h, self.x + w / 2, self.y)


_CAR_COLORS: tuple[Color, ...] = (
    (40, 40, 200), (200, 90, 30), (230, 230, 230), (170, 170, 175), (35, 35, 35),
    (30, 200, 230), (60, 120, 40), (110, 40, 110), (140, 100, 60), (50, 50, 120),
)  # fmt: skip
_TRUCK_COLORS: tuple[Color, ...] = (
    (235, 235, 235),
    (30, 120, 230),
    (180, 130, 40),
    (40, 160, 60),
    (200, 200, 210),
)
_SHIRT_COLORS: tuple[Color, ...] = (
    (40, 40, 190), (190, 120, 30), (30, 180, 220), (60, 60, 60), (200, 200, 200),
    (40, 140, 40), (150, 50, 150), (20, 90, 200),
)  # fmt: skip
_SKIN_COLORS: tuple[Color, ...] = ((150, 180, 225), (110, 140, 190), (70, 95, 140), (45, 60, 95))


def _u8(image: npt.NDArray[np.generic]) -> ImageU8:
    """OpenCV results are typed loosely; ours are always uint8 images."""
    return np.asarray(image, dtype=np.uint8)


def _jitter(rng: np.random.Generator, color: Color, amount: int = 25) -> Color:
    d = rng.integers(-amount, amount + 1, size=3)
    return (
        int(np.clip(color[0] + d[0], 0, 255)),
        int(np.clip(color[1] + d[1], 0, 255)),
        int(np.clip(color[2] + d[2], 0, 255)),
    )


class _Painter:
    """Draws objects under one lighting condition."""

    def __init__(self, image: ImageU8, light: float) -> None:
        self.image = image
        # Night light is bluish (red fades first); above 1 is a bright, overexposed day.
        self.gain = (min(light * 1.15, 1.0), light, light * 0.85) if light < 1 else (light,) * 3
        self.lamps = float(np.clip((0.75 - light) / 0.5, 0.0, 1.0))  # headlight strength

    def lit(self, color: Color) -> Color:
        g = self.gain
        return (
            min(int(color[0] * g[0]), 255),
            min(int(color[1] * g[1]), 255),
            min(int(color[2] * g[2]), 255),
        )

    def poly(self, points: Sequence[tuple[float, float]], color: Color) -> None:
        pts = np.array(points, dtype=np.float64).round().astype(np.int32)
        cv2.fillPoly(self.image, [pts], self.lit(color))

    def rect(self, x1: float, y1: float, x2: float, y2: float, color: Color) -> None:
        cv2.rectangle(self.image, (round(x1), round(y1)), (round(x2), round(y2)), self.lit(color), -1)

    def circle(
        self, x: float, y: float, r: float, color: Color, thickness: int = -1, *, raw: bool = False
    ) -> None:
        c = color if raw else self.lit(color)
        cv2.circle(self.image, (round(x), round(y)), max(round(r), 1), c, thickness)

    def line(self, a: tuple[float, float], b: tuple[float, float], color: Color, thickness: float) -> None:
        cv2.line(
            self.image,
            (round(a[0]), round(a[1])),
            (round(b[0]), round(b[1])),
            self.lit(color),
            max(round(thickness), 1),
        )

    def glow(self, points: Sequence[tuple[float, float]], color: Color) -> None:
        """Add light (a headlight beam) over what is already drawn."""
        pts = np.array(points, dtype=np.float64).round().astype(np.int32)
        h, w = self.image.shape[:2]
        x0, y0 = np.maximum(pts.min(axis=0), 0)
        x1, y1 = np.minimum(pts.max(axis=0) + 1, (w, h))
        if x1 <= x0 or y1 <= y0:
            return
        patch = np.zeros((int(y1 - y0), int(x1 - x0), 3), dtype=np.uint8)
        cv2.fillPoly(patch, [pts - np.array([x0, y0], dtype=np.int32)], color)
        roi = self.image[y0:y1, x0:x1]
        roi[...] = cv2.add(roi, patch)


def _along(box: Box, heading: int, u: float) -> float:
    """x at fraction u from the rear (0) to the front (1) of a side-view box."""
    x1, _, x2, _ = box
    return x1 + u * (x2 - x1) if heading > 0 else x2 - u * (x2 - x1)


def _draw_car(p: _Painter, a: _Agent, box: Box) -> None:
    x1, y1, x2, y2 = box
    h, L = y2 - y1, x2 - x1
    r = 0.2 * h

    def u(f: float) -> float:
        return _along(box, a.heading, f)

    roof = 0.02 + 0.06 * a.style.detail  # hatchbacks and saloons
    p.rect(x1 + 0.05 * L, y2 - 0.1 * h, x2 - 0.05 * L, y2, (45, 45, 45))  # shadow
    p.poly(
        [(u(0.12), y1 + 0.45 * h), (u(0.27), y1 + roof * h), (u(0.62), y1),
         (u(0.8), y1 + 0.45 * h)],
        a.style.body,
    )  # fmt: skip
    p.poly(
        [(u(0.17), y1 + 0.42 * h), (u(0.29), y1 + (roof + 0.08) * h), (u(0.6), y1 + 0.08 * h),
         (u(0.73), y1 + 0.42 * h)],
        a.style.accent,
    )  # fmt: skip
    p.line((u(0.45), y1 + 0.05 * h), (u(0.45), y1 + 0.45 * h), a.style.body, 0.06 * h)
    p.poly(
        [(u(0.0), y1 + 0.47 * h), (u(0.04), y1 + 0.41 * h), (u(0.95), y1 + 0.45 * h),
         (u(1.0), y1 + 0.58 * h), (u(1.0), y2 - 0.7 * r), (u(0.0), y2 - 0.7 * r)],
        a.style.body,
    )  # fmt: skip
    p.line((u(0.02), y1 + 0.68 * h), (u(0.98), y1 + 0.68 * h), (20, 20, 20), 0.03 * h)
    for f in (0.2, 0.8):
        p.circle(u(f), y2 - r, r, (25, 25, 25))
        p.circle(u(f), y2 - r, 0.45 * r, (150, 150, 150))
    _draw_vehicle_lights(p, a, box, front_y=y1 + 0.52 * h, rear_y=y1 + 0.5 * h)


def _draw_truck(p: _Painter, a: _Agent, box: Box) -> None:
    x1, y1, x2, y2 = box
    h, L = y2 - y1, x2 - x1
    r = 0.14 * h

    def u(f: float) -> float:
        return _along(box, a.heading, f)

    p.rect(x1 + 0.03 * L, y2 - 0.08 * h, x2 - 0.03 * L, y2, (45, 45, 45))  # shadow
    p.rect(u(0.0), y2 - 1.5 * r, u(1.0), y2 - 0.9 * r, (30, 30, 30))  # chassis
    p.rect(u(0.0), y1, u(0.72), y2 - 1.3 * r, a.style.body)  # cargo box
    for f in (0.18, 0.36, 0.54):
        p.line((u(f), y1 + 0.05 * h), (u(f), y2 - 1.4 * r), a.style.accent, 0.02 * L)
    p.poly(
        [(u(0.74), y1 + 0.26 * h), (u(0.95), y1 + 0.26 * h), (u(1.0), y1 + 0.45 * h),
         (u(1.0), y2 - 1.3 * r), (u(0.74), y2 - 1.3 * r)],
        a.style.accent,
    )  # fmt: skip
    p.poly(
        [(u(0.8), y1 + 0.31 * h), (u(0.94), y1 + 0.31 * h), (u(0.975), y1 + 0.5 * h),
         (u(0.8), y1 + 0.5 * h)],
        (70, 60, 50),
    )  # fmt: skip
    for f in (0.12, 0.27, 0.86):
        p.circle(u(f), y2 - r, r, (25, 25, 25))
        p.circle(u(f), y2 - r, 0.4 * r, (140, 140, 140))
    _draw_vehicle_lights(p, a, box, front_y=y1 + 0.7 * h, rear_y=y1 + 0.72 * h)


def _draw_vehicle_lights(p: _Painter, a: _Agent, box: Box, front_y: float, rear_y: float) -> None:
    h = box[3] - box[1]
    front, rear = _along(box, a.heading, 0.985), _along(box, a.heading, 0.015)
    if p.lamps <= 0:
        p.circle(front, front_y, 0.06 * h, (200, 230, 240))
        p.circle(rear, rear_y, 0.05 * h, (30, 30, 190))
        return
    reach = front + a.heading * 2.2 * h
    k = p.lamps
    p.glow(
        [(front, front_y - 0.05 * h), (reach, front_y - 0.25 * h), (reach, box[3] + 0.15 * h),
         (front, front_y + 0.1 * h)],
        (int(50 * k), int(70 * k), int(80 * k)),
    )  # fmt: skip
    p.circle(front, front_y, 0.09 * h, (225, 250, 255), raw=True)
    p.circle(rear, rear_y, 0.07 * h, (40, 40, 255), raw=True)


def _draw_pedestrian(p: _Painter, a: _Agent, box: Box) -> None:
    x1, y1, x2, y2 = box
    h, w = y2 - y1, x2 - x1
    cx = (x1 + x2) / 2
    swing = math.sin(a.phase)
    side_view = a.vy == 0.0
    leg = max(0.22 * w, 1.5)
    hip_y, shoulder_y = y1 + 0.55 * h, y1 + 0.22 * h
    if side_view:
        feet = ((cx - 0.32 * w * swing, y2), (cx + 0.32 * w * swing, y2))
    else:
        feet = ((cx - 0.2 * w, y2 - 0.04 * h * max(swing, 0)), (cx + 0.2 * w, y2 + 0.04 * h * min(swing, 0)))
    pants = a.style.accent
    p.line((cx - 0.1 * w, hip_y), feet[0], pants, leg)
    p.line((cx + 0.1 * w, hip_y), feet[1], pants, leg)
    p.rect(cx - 0.3 * w, shoulder_y, cx + 0.3 * w, hip_y + 0.03 * h, a.style.body)
    arm = 0.3 * w * swing if side_view else 0.0
    p.line((cx, shoulder_y + 0.03 * h), (cx + arm, y1 + 0.55 * h), a.style.body, 0.16 * w)
    p.circle(cx, y1 + 0.11 * h, 0.1 * h, a.style.skin)
    if a.style.detail > 0.6:  # a hat or dark hair
        p.rect(cx - 0.09 * h, y1, cx + 0.09 * h, y1 + 0.05 * h, (40, 40, 50))


def _draw_cyclist(p: _Painter, a: _Agent, box: Box) -> None:
    x1, y1, x2, y2 = box
    h, L = y2 - y1, x2 - x1

    def u(f: float) -> float:
        return _along(box, a.heading, f)

    r = 0.24 * h
    t = max(0.05 * h, 1.5)
    rear, front = (u(0.2), y2 - r), (u(0.8), y2 - r)
    crank, seat, bar = (u(0.47), y2 - r), (u(0.38), y2 - 2.1 * r), (u(0.72), y2 - 2.3 * r)
    for c in (rear, front):
        p.circle(c[0], c[1], r, (20, 20, 20), max(round(t), 1))
    frame = a.style.accent
    for s, e in ((rear, crank), (rear, seat), (seat, crank), (crank, bar), (seat, bar), (bar, front)):
        p.line(s, e, frame, t)
    shoulder = (u(0.6), y1 + 0.3 * h)
    pedal = (crank[0] + 0.1 * L * math.cos(a.phase), crank[1] + 0.1 * L * math.sin(a.phase))
    knee = ((seat[0] + pedal[0]) / 2 + a.heading * 0.08 * L, (seat[1] + pedal[1]) / 2 - 0.05 * h)
    p.line(seat, knee, (50, 50, 50), 1.4 * t)
    p.line(knee, pedal, (50, 50, 50), 1.2 * t)
    p.line(seat, shoulder, a.style.body, 2.2 * t)
    p.line(shoulder, bar, a.style.body, t)
    p.circle(u(0.67), y1 + 0.13 * h, 0.11 * h, a.style.skin)
    p.circle(u(0.66), y1 + 0.1 * h, 0.09 * h, a.style.body)  # helmet
    if p.lamps > 0:
        p.circle(u(0.98), y2 - 2.0 * r, 0.05 * h + 1, (220, 250, 255), raw=True)


_DRAWERS = {CAR: _draw_car, TRUCK: _draw_truck, PEDESTRIAN: _draw_pedestrian, CYCLIST: _draw_cyclist}


def _draw_background(layout: _Layout, light: float, rng: np.random.Generator) -> ImageU8:
    """The static street, already lit for the scene's light level."""
    w, h = layout.width, layout.height
    img = np.zeros((h, w, 3), dtype=np.uint8)
    p = _Painter(img, light)

    def band(y0: float, y1: float, color: Color) -> None:
        p.rect(0, y0, w, y1, color)

    _draw_buildings(p, layout, rng)
    band(*layout.sidewalk_far, (165, 170, 172))
    band(*layout.bike_west, (70, 85, 140))
    band(*layout.road, (88, 86, 84))
    band(*layout.bike_east, (70, 85, 140))
    band(*layout.sidewalk_near, (165, 170, 172))
    band(layout.sidewalk_near[1], h, (60, 125, 75))  # verge
    for y0, y1 in (layout.sidewalk_far, layout.sidewalk_near):
        for x in range(0, w, max(w // 24, 8)):
            p.line((x, y0), (x, y1), (140, 145, 148), 1)
    _draw_markings(p, layout)
    # Texture keeps the background from being trivially flat.
    noise = rng.normal(0.0, 7.0, size=img.shape).astype(np.int16)
    img = _u8(cv2.add(img, noise, dtype=cv2.CV_8U))
    far = _Painter(img, light)
    _draw_street_furniture(far, far, layout.sidewalk_far[0] + 4, layout, rng)
    return img


def _draw_buildings(p: _Painter, layout: _Layout, rng: np.random.Generator) -> None:
    w, top = layout.width, layout.sidewalk_far[0]
    p.rect(0, 0, w, top, (170, 150, 120))  # sky
    x = -float(rng.uniform(0, 60))
    palette: tuple[Color, ...] = ((60, 80, 150), (150, 170, 190), (110, 110, 115), (80, 120, 160))
    while x < w:
        bw = float(rng.uniform(0.1, 0.25)) * w
        roof = float(rng.uniform(0.0, 0.5)) * top
        p.rect(x, roof, x + bw, top, _jitter(rng, palette[int(rng.integers(len(palette)))], 20))
        cols = max(int(bw // 22), 1)
        for row_y in np.arange(roof + 6, top - 10, 16.0):
            for c in range(cols):
                wx = x + 6 + c * (bw - 12) / cols
                lit = bool(rng.random() < 0.4) and p.lamps > 0
                color: Color = (120, 210, 250) if lit else (70, 60, 55)
                cv2.rectangle(
                    p.image, (round(wx), round(row_y)), (round(wx + 8), round(row_y + 8)),
                    color if lit else p.lit(color), -1,
                )  # fmt: skip
        x += bw + float(rng.uniform(2, 20))


def _draw_markings(p: _Painter, layout: _Layout) -> None:
    w = layout.width
    top, bottom = layout.road
    lane_h = (bottom - top) / 4
    white, yellow = (235, 235, 235), (40, 200, 230)
    p.rect(0, top, w, top + 2, white)
    p.rect(0, bottom - 2, w, bottom, white)
    mid = top + 2 * lane_h
    p.rect(0, mid - 3, w, mid - 1, yellow)
    p.rect(0, mid + 1, w, mid + 3, yellow)
    dash = max(w // 20, 10)
    for y in (top + lane_h, top + 3 * lane_h):
        for x in range(0, w, 2 * dash):
            p.rect(x, y - 1, x + dash, y + 1, white)
    cx0, cx1 = layout.crosswalk
    for y in np.arange(layout.bike_west[0], layout.bike_east[1], lane_h / 2.5):
        p.rect(cx0, y, cx1, y + lane_h / 5, white)


def _draw_street_furniture(
    ground: _Painter, upright: _Painter, y_base: float, layout: _Layout, rng: np.random.Generator
) -> None:
    """Lamp posts and trees along one sidewalk: static distractors, lamp pools at night.

    Pools of light go on ``ground``; posts and trees on ``upright``.
    """
    w, k = layout.width, layout.height / 480
    x = float(rng.uniform(0.05, 0.2)) * w
    while x < w:
        if rng.random() < 0.5:
            top = y_base - 0.22 * layout.height
            upright.line((x, y_base), (x, top), (60, 60, 60), 3 * k)
            upright.rect(x - 8 * k, top - 3 * k, x + 8 * k, top, (60, 60, 60))
            if ground.lamps > 0:
                a = ground.lamps
                pool = [(x - 40 * k, y_base), (x, y_base - 10 * k), (x + 40 * k, y_base),
                        (x, y_base + 10 * k)]  # fmt: skip
                ground.glow(pool, (int(30 * a), int(60 * a), int(80 * a)))
        else:
            upright.line((x, y_base), (x, y_base - 0.1 * layout.height), (40, 60, 90), 4 * k)
            crown = _jitter(rng, (40, 110, 50), 20)
            upright.circle(x, y_base - 0.13 * layout.height, 0.045 * layout.height, crown)
        x += float(rng.uniform(0.2, 0.45)) * w


@dataclass(frozen=True)
class _Foreground:
    """Street furniture nearer than the road users, pasted over them in every frame."""

    top: int  # first image row the layer covers
    image: ImageU8
    mask: ImageU8  # (rows, W): 255 where the layer is opaque

    @classmethod
    def draw(
        cls, layout: _Layout, light: float, background: ImageU8, rng: np.random.Generator
    ) -> _Foreground:
        layer = np.zeros_like(background)
        y_base = layout.sidewalk_near[1] - 4
        _draw_street_furniture(_Painter(background, light), _Painter(layer, light), y_base, layout, rng)
        top = max(int(y_base - 0.25 * layout.height), 0)
        # Lit colours are never pure black (light >= 0.05), so black means empty.
        mask = np.where(layer[top:].max(axis=2) > 0, 255, 0).astype(np.uint8)
        return cls(top=top, image=layer[top:].copy(), mask=mask)

    def paste(self, image: ImageU8) -> None:
        # OpenCV writes into the view in place, and ~30x faster than np.copyto(where=).
        cv2.copyTo(self.image, self.mask, image[self.top :])


class RoadScene:
    """A deterministic synthetic street camera; :meth:`step` renders the next frame."""

    def __init__(self, config: SceneConfig) -> None:
        self.config = config
        self._layout = _Layout.for_size(config.width, config.height)
        self._rng = np.random.default_rng(config.seed)
        self._index = 0
        self._next_id = 1
        self._agents: list[_Agent] = []
        bg_rng = np.random.default_rng((config.seed, 1))
        self._background = _draw_background(self._layout, config.light, bg_rng)
        self._foreground = _Foreground.draw(self._layout, config.light, self._background, bg_rng)
        self._noise = self._make_noise(bg_rng)
        self._rain = self._make_rain(bg_rng) if config.rain > 0 else None
        self._fog = self._make_fog() if config.fog > 0 else None
        self.advance(round(_WARMUP_S * config.fps), _warmup=True)

    @property
    def index(self) -> int:
        """Index of the frame the next :meth:`step` returns."""
        return self._index

    def count_line(self) -> tuple[tuple[float, float], tuple[float, float]]:
        """A vertical line at x = width/2 across both bike lanes and the road."""
        x = self.config.width / 2
        return ((x, self._layout.bike_west[0]), (x, self._layout.bike_east[1]))

    def step(self) -> SceneFrame:
        """Render the current frame, then move the simulation on by one frame."""
        index = self._index
        image = self._render(index)
        objects = self._ground_truth()
        self._simulate()
        self._index += 1
        return SceneFrame(index=index, t=index / self.config.fps, image=image, objects=objects)

    def advance(self, frames: int, *, _warmup: bool = False) -> None:
        """Move the simulation on without rendering (cheap; for sampling datasets)."""
        for _ in range(frames):
            self._simulate()
            if not _warmup:
                self._index += 1

    def __iter__(self) -> Iterator[SceneFrame]:
        while True:
            yield self.step()

    # -- simulation ----------------------------------------------------------

    def _simulate(self) -> None:
        dt = 1.0 / self.config.fps
        for _ in range(int(self._rng.poisson(self.config.spawn_rate * dt))):
            self._spawn()
        self._follow()
        for a in self._agents:
            self._move(a, dt)
        self._agents = [a for a in self._agents if not self._gone(a)]

    def _spawn(self) -> None:
        cls = int(self._rng.choice(len(CLASSES), p=_CLASS_MIX))
        rng, layout = self._rng, self._layout
        kx, ky = layout.width / 640, layout.height / 480
        if cls in (CAR, TRUCK):
            lane = int(rng.integers(4))
            heading = -1 if lane < 2 else 1
            if cls == CAR:
                size, speed = (rng.uniform(62, 80), rng.uniform(26, 32)), rng.uniform(90, 190)
            else:
                size, speed = (rng.uniform(115, 160), rng.uniform(44, 54)), rng.uniform(70, 130)
            y = layout.baseline(lane)
        elif cls == CYCLIST:
            lane = _BIKE_WEST if rng.random() < 0.5 else _BIKE_EAST
            heading = -1 if lane == _BIKE_WEST else 1
            size, speed = (rng.uniform(34, 40), rng.uniform(36, 42)), rng.uniform(40, 75)
            y = layout.baseline(lane)
        else:
            lane = _SIDEWALK_FAR if rng.random() < 0.5 else _SIDEWALK_NEAR
            heading = -1 if rng.random() < 0.5 else 1
            size, speed = (rng.uniform(12, 17), rng.uniform(36, 44)), rng.uniform(25, 45)
            y = layout.sidewalk_baseline(lane)
        agent = _Agent(
            track_id=0,
            cls=cls,
            lane=lane,
            x=0.0,
            y=float(y),
            length=float(size[0]) * ky,
            height=float(size[1]) * ky,
            speed=float(speed) * kx,
            heading=heading,
            style=self._style(cls),
            phase=float(rng.uniform(0, 2 * math.pi)),
        )
        w, _ = agent.size(layout)
        agent.x = layout.width + w / 2 + 1 if heading < 0 else -w / 2 - 1
        if cls == PEDESTRIAN and rng.random() < 0.6:
            self._plan_crossing(agent)
        _, exit_y, exit_lane = agent.waypoints[-1] if agent.waypoints else (0.0, agent.y, lane)
        agent.waypoints.append((layout.width + 2 * w if heading > 0 else -2 * w, exit_y, exit_lane))
        if self._entry_clear(agent):
            agent.track_id = self._next_id
            self._next_id += 1
            self._agents.append(agent)

    def _plan_crossing(self, a: _Agent) -> None:
        """Walk to the crosswalk, cross to the other sidewalk, walk on."""
        layout = self._layout
        x = float(self._rng.uniform(*layout.crosswalk))
        other = _SIDEWALK_NEAR if a.lane == _SIDEWALK_FAR else _SIDEWALK_FAR
        a.waypoints.append((x, a.y, a.lane))
        a.waypoints.append((x, layout.sidewalk_baseline(other), other))

    def _style(self, cls: int) -> _Style:
        rng = self._rng

        def pick(colors: Sequence[Color]) -> Color:
            return colors[int(rng.integers(len(colors)))]

        if cls == CAR:
            body = _jitter(rng, pick(_CAR_COLORS))
            accent = _jitter(rng, (75, 60, 50), 15)  # windows
        elif cls == TRUCK:
            body = _jitter(rng, pick(_TRUCK_COLORS), 20)
            accent = _jitter(rng, pick(_CAR_COLORS), 20)  # cab
        else:
            body = _jitter(rng, pick(_SHIRT_COLORS))
            accent = _jitter(rng, pick(((90, 60, 40), (40, 40, 40), (130, 110, 90), (30, 30, 120))))
        return _Style(body=body, accent=accent, skin=pick(_SKIN_COLORS), detail=float(rng.random()))

    def _entry_clear(self, new: _Agent) -> bool:
        if new.cls == PEDESTRIAN:
            return True
        w, _ = new.size(self._layout)
        for a in self._agents:
            if a.lane == new.lane and abs(a.x - new.x) < (w + a.size(self._layout)[0]) / 2 + 0.5 * w:
                return False
        return True

    def _follow(self) -> None:
        """Vehicles and cyclists slow to their leader's speed rather than overlap."""
        by_lane: dict[int, list[_Agent]] = {}
        for a in self._agents:
            if a.lane < _CROSSWALK:
                by_lane.setdefault(a.lane, []).append(a)
        for lane_agents in by_lane.values():
            lane_agents.sort(key=lambda a: -a.x * a.heading)  # leader first
            leader: _Agent | None = None
            for a in lane_agents:
                a.vx = a.heading * a.speed
                if leader is not None:
                    gap = abs(leader.x - a.x) - (leader.size(self._layout)[0] + a.size(self._layout)[0]) / 2
                    if gap < 0.6 * a.size(self._layout)[0]:
                        a.vx = a.heading * min(a.speed, abs(leader.vx))
                leader = a

    def _move(self, a: _Agent, dt: float) -> None:
        if a.lane >= _CROSSWALK:  # walkers head for their next waypoint
            tx, ty, tlane = a.waypoints[0]
            dx, dy = tx - a.x, ty - a.y
            dist = math.hypot(dx, dy)
            if dist < a.speed * dt:
                a.waypoints.pop(0)
                a.lane = tlane if not a.waypoints or a.waypoints[0][1] == ty else _CROSSWALK
                a.vx = a.vy = 0.0
                a.x, a.y = tx, ty
                if not a.waypoints:
                    a.waypoints.append((a.x + a.heading, a.y, a.lane))
                a.phase += 2.5 * dt * math.tau
                return
            a.vx, a.vy = a.speed * dx / dist, a.speed * dy / dist
            a.phase += 2.5 * dt * math.tau
        else:
            a.phase += a.speed * dt / 12.0
        a.x += a.vx * dt
        a.y += a.vy * dt

    def _gone(self, a: _Agent) -> bool:
        x1, _, x2, _ = a.box(self._layout)
        return (a.heading > 0 and x1 > self._layout.width) or (a.heading < 0 and x2 < 0)

    # -- rendering -----------------------------------------------------------

    def _ground_truth(self) -> tuple[SceneObject, ...]:
        w, h = self._layout.width, self._layout.height
        out = []
        for a in sorted(self._agents, key=lambda a: a.track_id):
            x1, y1, x2, y2 = a.box(self._layout)
            cx1, cy1, cx2, cy2 = max(x1, 0.0), max(y1, 0.0), min(x2, float(w)), min(y2, float(h))
            if cx2 - cx1 < 3 or cy2 - cy1 < 3:
                continue
            if (cx2 - cx1) * (cy2 - cy1) < _MIN_VISIBLE * (x2 - x1) * (y2 - y1):
                continue
            out.append(
                SceneObject(
                    track_id=a.track_id,
                    cls=a.cls,
                    box=(cx1, cy1, cx2, cy2),
                    lane=a.lane,
                    velocity=(a.vx, a.vy),
                )
            )
        return tuple(out)

    def _render(self, index: int) -> ImageU8:
        cfg = self.config
        image = self._background.copy()
        painter = _Painter(image, cfg.light)
        for a in sorted(self._agents, key=lambda a: (a.y, a.track_id)):  # far to near
            _DRAWERS[a.cls](painter, a, a.box(self._layout))
        self._foreground.paste(image)
        rng = np.random.default_rng((cfg.seed, 2, index))
        if self._rain is not None:
            image = self._apply_rain(image, index)
        if self._fog is not None:
            veil, clear = self._fog
            image = _u8(cv2.add(cv2.multiply(image, clear, dtype=cv2.CV_8U), veil))
        dy, dx = (int(v) for v in rng.integers(0, 16, size=2))
        noise = self._noise[dy : dy + cfg.height, dx : dx + cfg.width]
        return _u8(cv2.add(image, noise, dtype=cv2.CV_8U))

    def _make_noise(self, rng: np.random.Generator) -> npt.NDArray[np.int16]:
        # Sensors are noisier in the dark (more gain).
        sigma = 2.0 + 5.0 * max(1.0 - self.config.light, 0.0)
        shape = (self.config.height + 16, self.config.width + 16, 3)
        return rng.normal(0.0, sigma, size=shape).astype(np.int16)

    def _make_rain(self, rng: np.random.Generator) -> ImageU8:
        cfg = self.config
        layer = np.zeros((2 * cfg.height, cfg.width, 3), dtype=np.uint8)
        n = int(cfg.rain * 1500 * cfg.width * cfg.height / 307200)
        xs = rng.uniform(0, cfg.width, n)
        ys = rng.uniform(0, 2 * cfg.height, n)
        lengths = rng.uniform(8, 18, n)
        values = rng.uniform(40, 110, n) * min(cfg.light + 0.3, 1.0)
        for x, y, length, v in zip(xs, ys, lengths, values, strict=True):
            c = int(v)
            cv2.line(layer, (int(x), int(y)), (int(x - 0.25 * length), int(y + length)), (c, c, c), 1)
        return layer

    def _make_fog(self) -> tuple[ImageU8, npt.NDArray[np.float32]]:
        # Fog scatters light toward the camera in proportion to distance, so
        # the far (upper) part of the street fades most; the sky colour
        # follows the light. Returned as the additive veil and the per-pixel
        # share of the scene that still shows through.
        cfg = self.config
        rows = np.linspace(0.0, 1.0, cfg.height, dtype=np.float32)[:, None, None]
        density = np.clip(cfg.fog * (0.95 - 0.35 * rows), 0.0, 1.0)
        sky = np.array([200.0, 200.0, 195.0], dtype=np.float32) * min(cfg.light + 0.15, 1.0)
        veil = np.broadcast_to(density * sky, (cfg.height, cfg.width, 3))
        clear = np.broadcast_to(1.0 - density, (cfg.height, cfg.width, 3))
        return _u8(np.rint(veil)), np.ascontiguousarray(clear, dtype=np.float32)

    def _apply_rain(self, image: ImageU8, index: int) -> ImageU8:
        assert self._rain is not None
        cfg = self.config
        offset = (index * 37) % cfg.height  # streaks fall between frames
        rain = self._rain[cfg.height - offset : 2 * cfg.height - offset]
        # Rain lowers contrast (spray, wet lens) and softens edges.
        hazy = cv2.convertScaleAbs(image, alpha=1.0 - 0.25 * cfg.rain, beta=25.0 * cfg.rain * cfg.light)
        if cfg.rain > 0.3:
            hazy = cv2.blur(hazy, (3, 3))
        return _u8(cv2.add(hazy, rain))


def render_dataset(
    n: int,
    config: SceneConfig,
    stride: int = 3,
    *,
    scenes: int = 8,
    lights: Sequence[float] | None = None,
) -> list[SceneFrame]:
    """Render ``n`` frames from ``scenes`` cameras, ``stride`` frames apart.

    Camera ``k`` uses seed ``config.seed * 1000 + k`` and, when ``lights`` is
    given, light ``lights[k % len(lights)]``; everything else comes from
    ``config``. Frames are returned camera by camera.
    """
    if n < 0 or stride < 1 or scenes < 1:
        raise ValueError("need n >= 0, stride >= 1 and scenes >= 1")
    per_scene = -(-n // scenes)
    frames: list[SceneFrame] = []
    for k in range(scenes):
        light = config.light if not lights else lights[k % len(lights)]
        cfg = SceneConfig(
            width=config.width,
            height=config.height,
            fps=config.fps,
            light=light,
            rain=config.rain,
            fog=config.fog,
            spawn_rate=config.spawn_rate,
            seed=config.seed * 1000 + k,
        )
        scene = RoadScene(cfg)
        for _ in range(min(per_scene, n - len(frames))):
            frames.append(scene.step())
            scene.advance(stride - 1)
    return frames
