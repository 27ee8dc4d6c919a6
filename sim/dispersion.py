"""Near-road dispersion, pure: what a pole's sensor reads from the traffic around it.

A steady-state **Gaussian plume** from each of many small ground-level
sources (the road cut into cells, each emitting what SUMO says its vehicles
emitted there, averaged over the window), summed at a receptor, plus a
background. For one source of ``q`` g/s, wind ``u`` m/s, a receptor ``x``
metres downwind and ``y`` across the wind at height ``z``::

    C = q / (2π u σy σz) · exp(−y² / 2σy²) · Σₙ [exp(−(z − H + 2nh)² / 2σz²) + exp(−(z + H + 2nh)² / 2σz²)]

with the ground (``z = 0``) and the top of the mixed layer (``h``) as
reflecting surfaces (image sources, ``n = −3..3``; once ``σz > h`` the plume
is mixed evenly through the layer: ``C = q / (√(2π) u σy h) · exp(−y² / 2σy²)``).
``σy, σz`` are Briggs's urban curves (Briggs 1973, as tabulated in Hanna,
Briggs and Hosker, *Handbook on Atmospheric Diffusion*, DOE/TIC-11223, 1982,
Table 4.5) for the chosen stability class, widened in quadrature by an
initial spread ``σy0, σz0`` for the vehicles' own wake turbulence (the idea
of CALINE's mixing zone; the values here are assumptions, see
``docs/air-quality.md``).

Assumptions and limits: steady wind and a flat, open street (no street
canyon, no buildings, no recirculation), a receptor upwind of a source gets
nothing from it, no chemistry (NOx is carried as emitted; the NO2 share is a
stated fraction, see :func:`no2_from_nox`), and no calm: below
``MIN_WIND_MS`` the plume model does not apply and is refused.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final, Literal

import numpy as np

from roadside.shared.errors import ConfigError

__all__ = [
    "MIN_WIND_MS",
    "NO2_PPB_PER_UG_M3",
    "PointSource",
    "Stability",
    "Weather",
    "concentration",
    "no2_from_nox",
    "sigmas",
]

Stability = Literal["C", "D", "E"]  # slightly unstable, neutral, stable (E stands for E-F)
MIN_WIND_MS: Final = 0.5
_IMAGES: Final = 3
# µg/m³ → ppb for NO2 at 20 °C and 101.325 kPa: 24.055 L/mol / 46.005 g/mol (docs/air-quality.md, Units).
NO2_PPB_PER_UG_M3: Final = 24.055 / 46.005

# Briggs (1973) urban σ(x) in metres, x in metres: (a_y, b_y) for σy = a_y x (1 + b_y x)^-½,
# and σz = a_z x (1 + b_z x)^p_z.
_BRIGGS_URBAN: Final[dict[str, tuple[float, float, float, float, float]]] = {
    "C": (0.22, 0.0004, 0.20, 0.0, 0.0),
    "D": (0.16, 0.0004, 0.14, 0.0003, -0.5),
    "E": (0.11, 0.0004, 0.08, 0.0015, -0.5),
}


@dataclass(frozen=True, slots=True)
class Weather:
    """The air the plume travels in."""

    wind_speed_ms: float = 2.0
    wind_from_deg: float = 225.0  # compass: where the wind comes from (225: south-west)
    mixing_height_m: float = 800.0
    stability: Stability = "D"
    sigma_y0_m: float = 3.0  # initial spread by the vehicles' wake (assumed)
    sigma_z0_m: float = 3.0

    def __post_init__(self) -> None:
        if not self.wind_speed_ms >= MIN_WIND_MS:
            raise ConfigError(
                f"wind {self.wind_speed_ms} m/s: a Gaussian plume needs at least {MIN_WIND_MS} m/s "
                "(calm conditions need another model)"
            )
        if not self.mixing_height_m > 0 or self.sigma_y0_m < 0 or self.sigma_z0_m < 0:
            raise ConfigError("mixing height must be positive and the initial spreads non-negative")
        if self.stability not in _BRIGGS_URBAN:
            raise ConfigError(f"stability {self.stability!r}: choose one of {', '.join(_BRIGGS_URBAN)}")


@dataclass(frozen=True, slots=True)
class PointSource:
    x: float  # metres (the network's coordinates)
    y: float
    rate_g_s: float
    height_m: float = 0.3  # exhaust height


def sigmas(downwind_m: np.ndarray, weather: Weather) -> tuple[np.ndarray, np.ndarray]:
    """σy, σz (metres) at ``downwind_m`` (> 0), with the initial spread added in quadrature."""
    ay, by, az, bz, pz = _BRIGGS_URBAN[weather.stability]
    x = np.asarray(downwind_m, dtype=np.float64)
    sy = ay * x / np.sqrt(1.0 + by * x)
    sz = az * x * (1.0 + bz * x) ** pz
    return np.hypot(sy, weather.sigma_y0_m), np.hypot(sz, weather.sigma_z0_m)


def concentration(
    sources: Sequence[PointSource],
    receptor: tuple[float, float, float],
    weather: Weather,
    background: float = 0.0,
) -> float:
    """Mean concentration at ``receptor`` (x, y, z metres): ``background`` plus every source's plume.

    In the sources' mass unit per m³ (g/s in → g/m³ out; pass µg/s for µg/m³).
    """
    if background < 0:
        raise ConfigError("a background concentration cannot be negative")
    if not sources:
        return background
    rx, ry, rz = receptor
    xs = np.array([s.x for s in sources])
    ys = np.array([s.y for s in sources])
    hs = np.array([s.height_m for s in sources])
    qs = np.array([s.rate_g_s for s in sources])
    if np.any(qs < 0):
        raise ConfigError("an emission rate cannot be negative")
    # Unit vector the wind blows towards (compass: from 225° → towards 45°, north-east).
    to = math.radians((weather.wind_from_deg + 180.0) % 360.0)
    wx, wy = math.sin(to), math.cos(to)
    dx, dy = rx - xs, ry - ys
    down = dx * wx + dy * wy
    cross = -dx * wy + dy * wx
    ahead = down > 0.0
    if not np.any(ahead):
        return background
    down, cross, hs, qs = down[ahead], cross[ahead], hs[ahead], qs[ahead]
    sy, sz = sigmas(down, weather)
    u, h = weather.wind_speed_ms, weather.mixing_height_m
    lateral = np.exp(-(cross**2) / (2.0 * sy**2))
    vertical = np.zeros_like(sz)
    for n in range(-_IMAGES, _IMAGES + 1):
        vertical += np.exp(-((rz - hs + 2 * n * h) ** 2) / (2.0 * sz**2))
        vertical += np.exp(-((rz + hs + 2 * n * h) ** 2) / (2.0 * sz**2))
    plume = qs / (2.0 * math.pi * u * sy * sz) * lateral * vertical
    mixed = qs / (math.sqrt(2.0 * math.pi) * u * sy * h) * lateral
    return background + float(np.sum(np.where(sz > h, mixed, plume)))


def no2_from_nox(nox_increment: float, primary_fraction: float, background_no2: float) -> float:
    """NO2 at the kerb: the background plus the share of the traffic's NOx emitted as NO2.

    No chemistry: the NO the traffic emits turns into NO2 with ozone over
    minutes, longer than the seconds the air takes from the road to a pole, so
    this is the near-road value and a lower bound further away.
    """
    if not 0.0 <= primary_fraction <= 1.0:
        raise ConfigError(f"primary NO2 fraction {primary_fraction}: must be between 0 and 1")
    return background_no2 + primary_fraction * nox_increment
