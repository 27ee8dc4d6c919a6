"""Camera calibration: where a camera's pixels lie on the road, and back.

One model serves both directions, so the simulator that draws a road user and
the agent that measures it agree by construction: :mod:`roadside.sim.sumo`
projects SUMO's vehicles into a virtual camera with it, and the agent's
analytics turn image points back into road positions (metres) and speeds with
the same calibration. Pure numpy; nothing of Roadside's but ``shared``.

Road coordinates are a flat ground plane in metres: ``x`` east, ``y`` north,
``z`` up (SUMO's network coordinates, or any local survey grid). Image pixels
run ``u`` right and ``v`` down from the top-left corner. A camera is given

- by its **pose** (:class:`PoseCalibration`): mounting point ``x, y`` on the
  road grid, ``height`` above the road, ``heading`` (compass degrees, 0 north,
  90 east: SUMO's and a surveyor's convention), ``tilt`` below the horizon,
  and a focal length in pixels or a horizontal field of view; or
- by **four or more image ↔ road point pairs** (:class:`PointPairCalibration`),
  as an installer marks lane corners on a frame and reads their positions off
  a map. The ground homography is then exact for those points; a full pinhole
  camera (needed to project a vehicle's height) is recovered from it assuming
  square pixels and the principal point at the image centre.

::

    cam = Camera.from_calibration(PoseCalibration(x=0, y=-30, height=8, heading=0, tilt=20,
                                                  hfov=70, width=640, height_px=480))
    uv = cam.road_to_image([[0.0, 0.0]])        # where the junction centre is in the frame
    xy = cam.image_to_road(uv)                  # and back: [[0, 0]]
    speed = cam.ground_speed(uv_then, uv_now, dt=0.1)   # m/s
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Annotated, Literal

import numpy as np
import numpy.typing as npt
from pydantic import BaseModel, ConfigDict, Field, model_validator

from roadside.shared.errors import ConfigError

__all__ = [
    "Box",
    "Camera",
    "CameraCalibration",
    "PointPairCalibration",
    "PoseCalibration",
    "homography_from_points",
]

FloatArray = npt.NDArray[np.float64]
Box = tuple[float, float, float, float]  # x1, y1, x2, y2 in pixels

# Points closer to the camera plane than this (metres along the optical axis) are treated as
# behind it: their projection would flip or blow up.
_MIN_DEPTH_M = 0.05


class _Calibration(BaseModel):
    model_config = ConfigDict(extra="forbid")

    width: int = Field(default=640, ge=16, le=8192)  # image size in pixels
    height_px: int = Field(default=480, ge=16, le=8192)


class PoseCalibration(_Calibration):
    """A camera given by where it is mounted and where it looks."""

    type: Literal["pose"] = "pose"
    x: float  # mounting point on the road grid, metres east
    y: float  # metres north
    height: float = Field(gt=0.0, le=200.0)  # lens above the road surface, metres
    heading: float  # compass degrees the camera looks towards: 0 north, 90 east
    tilt: float = Field(gt=0.0, lt=90.0)  # degrees below the horizon
    focal_px: float | None = Field(default=None, gt=0.0)
    hfov: float | None = Field(default=None, gt=1.0, lt=170.0)  # horizontal field of view, degrees

    @model_validator(mode="after")
    def _one_focal(self) -> PoseCalibration:
        if (self.focal_px is None) == (self.hfov is None):
            raise ValueError("give exactly one of focal_px (pixels) and hfov (degrees)")
        return self

    def focal(self) -> float:
        """The focal length in pixels."""
        if self.focal_px is not None:
            return self.focal_px
        assert self.hfov is not None  # the validator guarantees one of them
        return 0.5 * self.width / math.tan(math.radians(self.hfov) / 2.0)


class PointPairCalibration(_Calibration):
    """A camera given by image points and where they lie on the road (at least four, no three in line)."""

    type: Literal["points"] = "points"
    image_points: list[tuple[float, float]] = Field(min_length=4)  # u, v pixels
    road_points: list[tuple[float, float]] = Field(min_length=4)  # x, y metres

    @model_validator(mode="after")
    def _paired(self) -> PointPairCalibration:
        if len(self.image_points) != len(self.road_points):
            raise ValueError(
                f"{len(self.image_points)} image points but {len(self.road_points)} road points: "
                "give one road point per image point"
            )
        return self


CameraCalibration = Annotated[PoseCalibration | PointPairCalibration, Field(discriminator="type")]


def homography_from_points(src: Sequence[Sequence[float]], dst: Sequence[Sequence[float]]) -> FloatArray:
    """The 3×3 homography taking ``src`` points onto ``dst`` (direct linear transform, least squares).

    ``ConfigError`` when the points are degenerate (fewer than four, or three in a line).
    """
    s = np.asarray(src, dtype=np.float64)
    d = np.asarray(dst, dtype=np.float64)
    if s.shape != d.shape or s.ndim != 2 or s.shape[1] != 2 or len(s) < 4:
        raise ConfigError("a homography needs at least four matching 2-D point pairs")
    # Normalise both point sets (Hartley) so pixels and metres weigh alike in the fit.
    ts, tdst = _normaliser(s), _normaliser(d)
    sn, dn = _apply(ts, s), _apply(tdst, d)
    rows = []
    for (x, y), (u, v) in zip(sn, dn, strict=True):
        rows.append([-x, -y, -1.0, 0.0, 0.0, 0.0, u * x, u * y, u])
        rows.append([0.0, 0.0, 0.0, -x, -y, -1.0, v * x, v * y, v])
    _, sv, vt = np.linalg.svd(np.asarray(rows))
    if sv[-2] < 1e-9 * sv[0]:
        raise ConfigError("the calibration points are degenerate (three or more lie on one line)")
    h = vt[-1].reshape(3, 3)
    full = np.linalg.inv(tdst) @ h @ ts
    if abs(np.linalg.det(full)) < 1e-12 * np.abs(full).max() ** 3:
        raise ConfigError("the calibration points are degenerate (three or more lie on one line)")
    return np.asarray(full / full[2, 2] if abs(full[2, 2]) > 1e-12 else full, dtype=np.float64)


def _normaliser(p: FloatArray) -> FloatArray:
    c = p.mean(axis=0)
    spread = float(np.sqrt(((p - c) ** 2).sum(axis=1)).mean()) or 1.0
    k = math.sqrt(2.0) / spread
    return np.array([[k, 0.0, -k * c[0]], [0.0, k, -k * c[1]], [0.0, 0.0, 1.0]])


def _apply(h: FloatArray, p: FloatArray) -> FloatArray:
    q = np.column_stack([p, np.ones(len(p))]) @ h.T
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.asarray(q[:, :2] / q[:, 2:3], dtype=np.float64)


@dataclass(frozen=True)
class Camera:
    """A calibrated pinhole camera over a flat road.

    ``projection`` is the 3×4 matrix ``K [R | -R C]`` (road metres → homogeneous
    pixels); ``ground`` the 3×3 homography of the road plane ``z = 0`` into the
    image, which is exact for point-pair calibrations. Build one with
    :meth:`from_calibration`, :meth:`from_pose` or :meth:`from_point_pairs`.
    """

    width: int
    height: int
    intrinsics: FloatArray  # K, 3×3
    rotation: FloatArray  # R, 3×3, road axes → camera axes (right, down, forward)
    centre: FloatArray  # C, the lens in road metres (x, y, z)
    ground: FloatArray  # H, 3×3, road plane → image

    # -- construction ---------------------------------------------------------------------

    @classmethod
    def from_calibration(cls, calibration: PoseCalibration | PointPairCalibration) -> Camera:
        """The camera a configuration describes."""
        if isinstance(calibration, PoseCalibration):
            return cls.from_pose(calibration)
        return cls.from_point_pairs(
            calibration.image_points, calibration.road_points, calibration.width, calibration.height_px
        )

    @classmethod
    def from_pose(cls, pose: PoseCalibration) -> Camera:
        """A camera mounted at ``pose.x, pose.y`` and ``pose.height`` metres up, looking along its heading."""
        f = pose.focal()
        k = np.array([[f, 0.0, pose.width / 2.0], [0.0, f, pose.height_px / 2.0], [0.0, 0.0, 1.0]])
        h, t = math.radians(pose.heading), math.radians(pose.tilt)
        forward = np.array([math.sin(h) * math.cos(t), math.cos(h) * math.cos(t), -math.sin(t)])
        right = np.array([math.cos(h), -math.sin(h), 0.0])
        down = np.cross(forward, right)
        rotation = np.vstack([right, down, forward])
        centre = np.array([pose.x, pose.y, pose.height])
        return cls._build(pose.width, pose.height_px, k, rotation, centre, None)

    @classmethod
    def from_point_pairs(
        cls,
        image_points: Sequence[Sequence[float]],
        road_points: Sequence[Sequence[float]],
        width: int,
        height: int,
    ) -> Camera:
        """A camera from marked image points and their road positions.

        The ground homography is fitted to the pairs; the pinhole camera behind it
        is recovered assuming square pixels and the principal point at the image
        centre. ``ConfigError`` if the points are degenerate or no camera above the
        road can see them so.
        """
        ground = homography_from_points(road_points, image_points)
        k, rotation, centre = _decompose(ground, width, height)
        camera = cls._build(width, height, k, rotation, centre, ground)
        depths = camera.depth(np.column_stack([np.asarray(road_points, float), np.zeros(len(road_points))]))
        if not np.all(depths > _MIN_DEPTH_M):
            raise ConfigError(
                "the calibration points put some road points behind the camera: check the pairs"
            )
        return camera

    @classmethod
    def _build(
        cls,
        width: int,
        height: int,
        k: FloatArray,
        rotation: FloatArray,
        centre: FloatArray,
        ground: FloatArray | None,
    ) -> Camera:
        if ground is None:
            p = k @ np.column_stack([rotation, -rotation @ centre])
            ground = p[:, [0, 1, 3]]
            ground = ground / ground[2, 2] if abs(ground[2, 2]) > 1e-12 else ground
        return cls(width, height, k, rotation, centre, np.asarray(ground, dtype=np.float64))

    # -- geometry ---------------------------------------------------------------------------

    @property
    def projection(self) -> FloatArray:
        """``K [R | -R C]``: homogeneous road point (x, y, z, 1) → homogeneous pixel."""
        return np.asarray(
            self.intrinsics @ np.column_stack([self.rotation, -self.rotation @ self.centre]), dtype=np.float64
        )

    @property
    def forward(self) -> FloatArray:
        """The optical axis as a unit road vector."""
        return np.asarray(self.rotation[2], dtype=np.float64)

    def depth(self, points: Sequence[Sequence[float]] | FloatArray) -> FloatArray:
        """Distance of road points (N×3) in front of the camera along its optical axis, metres."""
        p = np.asarray(points, dtype=np.float64).reshape(-1, 3)
        return np.asarray((p - self.centre) @ self.forward, dtype=np.float64)

    def project(self, points: Sequence[Sequence[float]] | FloatArray) -> FloatArray:
        """Pixels (N×2) of road points (N×3, metres); NaN for points behind the camera."""
        p = np.asarray(points, dtype=np.float64).reshape(-1, 3)
        q = np.column_stack([p, np.ones(len(p))]) @ self.projection.T
        out = np.full((len(p), 2), np.nan)
        ok = self.depth(p) > _MIN_DEPTH_M
        out[ok] = q[ok, :2] / q[ok, 2:3]
        return out

    def road_to_image(self, points: Sequence[Sequence[float]] | FloatArray) -> FloatArray:
        """Pixels (N×2) of points on the road surface (N×2, metres); NaN behind the camera."""
        p = np.asarray(points, dtype=np.float64).reshape(-1, 2)
        q = np.column_stack([p, np.ones(len(p))]) @ self.ground.T
        out = np.full((len(p), 2), np.nan)
        ok = self.depth(np.column_stack([p, np.zeros(len(p))])) > _MIN_DEPTH_M
        out[ok] = q[ok, :2] / q[ok, 2:3]
        return out

    def image_to_road(self, pixels: Sequence[Sequence[float]] | FloatArray) -> FloatArray:
        """Road points (N×2, metres) seen at pixels (N×2); NaN at and above the horizon."""
        uv = np.asarray(pixels, dtype=np.float64).reshape(-1, 2)
        q = np.column_stack([uv, np.ones(len(uv))]) @ np.linalg.inv(self.ground).T
        out = np.full((len(uv), 2), np.nan)
        with np.errstate(divide="ignore", invalid="ignore"):
            xy = q[:, :2] / q[:, 2:3]
        finite = np.all(np.isfinite(xy), axis=1)
        ok = finite.copy()
        ok[finite] = self.depth(np.column_stack([xy[finite], np.zeros(int(finite.sum()))])) > _MIN_DEPTH_M
        out[ok] = xy[ok]
        return out

    def horizon_v(self, u: float | None = None) -> float:
        """The image row of the horizon at column ``u`` (the centre by default); may lie off the image."""
        line = np.linalg.inv(self.ground)[2]  # pixels whose road point is at infinity
        col = self.width / 2.0 if u is None else u
        if abs(line[1]) < 1e-12:
            return -math.inf
        return float(-(line[0] * col + line[2]) / line[1])

    def box_of(self, corners: Sequence[Sequence[float]] | FloatArray, top: float) -> Box | None:
        """The image box of an upright prism: a footprint (N×2 road metres) raised ``top`` metres.

        ``None`` if any of it is behind the camera or it falls wholly outside the
        image; otherwise the box, clipped to the image.
        """
        c = np.asarray(corners, dtype=np.float64).reshape(-1, 2)
        n = len(c)
        prism = np.vstack([np.column_stack([c, np.zeros(n)]), np.column_stack([c, np.full(n, top)])])
        uv = self.project(prism)
        if not np.all(np.isfinite(uv)):
            return None
        x1, y1 = uv.min(axis=0)
        x2, y2 = uv.max(axis=0)
        x1, x2 = max(0.0, float(x1)), min(float(self.width), float(x2))
        y1, y2 = max(0.0, float(y1)), min(float(self.height), float(y2))
        if x2 <= x1 or y2 <= y1:
            return None
        return (x1, y1, x2, y2)

    def ground_speed(
        self,
        then: Sequence[float] | FloatArray,
        now: Sequence[float] | FloatArray,
        dt: float,
    ) -> float:
        """Speed in m/s of a point on the road seen at pixel ``then`` and ``dt`` seconds later at ``now``."""
        if dt <= 0:
            raise ValueError("dt must be positive")
        a, b = self.image_to_road(np.array([then, now], dtype=np.float64))
        return float(np.hypot(*(b - a)) / dt)

    def metres_per_pixel(self, pixel: Sequence[float] | FloatArray) -> float:
        """The road's scale at a pixel: metres on the road per image pixel (mean of both axes)."""
        u, v = float(pixel[0]), float(pixel[1])
        p = self.image_to_road(np.array([[u, v], [u + 1.0, v], [u, v + 1.0]]))
        return float((np.hypot(*(p[1] - p[0])) + np.hypot(*(p[2] - p[0]))) / 2.0)


def _decompose(ground: FloatArray, width: int, height: int) -> tuple[FloatArray, FloatArray, FloatArray]:
    """Intrinsics, rotation and lens position behind a road→image homography.

    With ``K = [[f, 0, cx], [0, f, cy], [0, 0, 1]]`` and ``H ∝ K [r1 r2 t]``, the
    columns of ``K⁻¹ H`` are orthogonal and of equal length: two equations in
    ``1/f²``, solved together by least squares.
    """
    cx, cy = width / 2.0, height / 2.0
    shift = np.array([[1.0, 0.0, -cx], [0.0, 1.0, -cy], [0.0, 0.0, 1.0]])
    a = shift @ ground
    a1, a2 = a[:, 0], a[:, 1]
    # Coefficients of w = 1/f² and constants of the two equations b·w + c = 0.
    b = np.array([a1[0] * a2[0] + a1[1] * a2[1], a1[0] ** 2 + a1[1] ** 2 - a2[0] ** 2 - a2[1] ** 2])
    c = np.array([a1[2] * a2[2], a1[2] ** 2 - a2[2] ** 2])
    denom = float(b @ b)
    w = -float(b @ c) / denom if denom > 0 else 0.0
    # A focal length past 100 image widths (a field of view under about 0.6°) is what a camera
    # looking straight down, whose homography is affine, yields through rounding.
    if not w * (100.0 * max(width, height)) ** 2 > 1.0:
        raise ConfigError(
            "the calibration points fit no camera looking down at the road (a camera looking straight "
            "down, or points that do not lie on one flat road): use a pose calibration instead"
        )
    f = 1.0 / math.sqrt(w)
    k = np.array([[f, 0.0, cx], [0.0, f, cy], [0.0, 0.0, 1.0]])
    m = np.linalg.inv(k) @ ground
    scale = 2.0 / (np.linalg.norm(m[:, 0]) + np.linalg.norm(m[:, 1]))
    r1, r2, t = (m * scale).T
    r3 = np.cross(r1, r2)
    u, _, vt = np.linalg.svd(np.column_stack([r1, r2, r3]))
    rotation = u @ vt  # the nearest true rotation
    centre = -rotation.T @ t
    if centre[2] < 0:  # the sign of the homography's scale is free: pick the camera above the road
        rotation = rotation @ np.diag([-1.0, -1.0, 1.0])
        centre = -rotation.T @ (-t)
    return k, np.asarray(rotation, dtype=np.float64), np.asarray(centre, dtype=np.float64)
