"""The two European indices: the EEA's European Air Quality Index and Citeair's CAQI.

Both take mass concentrations in µg/m³ (gases at 293.15 K and 101.325 kPa,
:mod:`roadside.shared.air.units`).

**EAQI** (European Environment Agency, European Air Quality Index, the
six-level bands the EEA and CAMS published from 2021 until the 2024–2025
revision; ``docs/air-quality.md`` says why that revision is not here). Each
pollutant falls in one of six bands, Good to Extremely poor; the station's
index is the worst band. Nitrogen dioxide, ozone and sulphur dioxide are
hourly values, PM2.5 and PM10 24-hour running means. A band's upper edge
belongs to it (10 µg/m³ of PM2.5 is Good, 10.01 is Fair). The EEA computes
the index for traffic stations that measure NO2 and PM, and for other
stations that measure at least NO2, O3 and PM; :attr:`BandIndex.missing`
names what a set of concentrations lacks for that rule.

**CAQI** (Citeair, Common Air Quality Index, with the PM2.5 grid of the
2012 update: van den Elshout, Léger and Heich, *Sci. Total Environ.* 488–489,
2014). Each pollutant's sub-index is interpolated linearly on its grid
(0–25 very low, 25–50 low, 50–75 medium, 75–100 high, above 100 very high);
above the grid's last point the 75–100 slope goes on. The traffic grid needs
NO2 and PM10 (PM2.5 and CO are auxiliary), the background grid NO2, PM10
and O3 (PM2.5, CO and SO2 auxiliary). PM has an hourly and a 24-hour grid;
CO is an 8-hour running mean.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from decimal import ROUND_HALF_UP, Decimal
from typing import Final, Literal

from roadside.shared.air.epa import Averaging, Pollutant
from roadside.shared.errors import AirIndexError

Station = Literal["traffic", "background"]

EAQI_LEVELS: Final = ("Good", "Fair", "Moderate", "Poor", "Very poor", "Extremely poor")

# Upper edges of the first five bands, µg/m³; the sixth is open above.
EAQI_BANDS: Final[dict[tuple[Pollutant, Averaging], tuple[float, ...]]] = {
    ("pm25", "24h"): (10, 20, 25, 50, 75),
    ("pm10", "24h"): (20, 40, 50, 100, 150),
    ("no2", "1h"): (40, 90, 120, 230, 340),
    ("o3", "1h"): (50, 100, 130, 240, 380),
    ("so2", "1h"): (100, 200, 350, 500, 750),
}
EAQI_REQUIRED: Final[dict[Station, tuple[tuple[Pollutant, ...], ...]]] = {
    # each inner tuple: at least one of these
    "traffic": (("no2",), ("pm25", "pm10")),
    "background": (("no2",), ("o3",), ("pm25", "pm10")),
}

CAQI_CLASSES: Final = ("Very low", "Low", "Medium", "High", "Very high")

# Concentrations (µg/m³) at index 25, 50, 75 and 100; index 0 is at 0.
_CAQI_COMMON: Final[dict[tuple[Pollutant, Averaging], tuple[float, float, float, float]]] = {
    ("no2", "1h"): (50, 100, 200, 400),
    ("pm10", "1h"): (25, 50, 90, 180),
    ("pm10", "24h"): (15, 30, 50, 100),
    ("pm25", "1h"): (15, 30, 55, 110),
    ("pm25", "24h"): (10, 20, 30, 60),
    ("co", "8h"): (5000, 7500, 10000, 20000),
}
CAQI_GRIDS: Final[dict[Station, dict[tuple[Pollutant, Averaging], tuple[float, float, float, float]]]] = {
    "traffic": dict(_CAQI_COMMON),
    "background": {**_CAQI_COMMON, ("o3", "1h"): (60, 120, 180, 240), ("so2", "1h"): (50, 100, 350, 500)},
}
CAQI_REQUIRED: Final[dict[Station, tuple[tuple[Pollutant, ...], ...]]] = {
    "traffic": (("no2",), ("pm10",)),
    "background": (("no2",), ("pm10",), ("o3",)),
}


@dataclass(frozen=True, slots=True)
class BandIndex:
    """A European index: per-pollutant values, the overall value and its class."""

    overall: int  # EAQI: level 1-6; CAQI: the index value
    category: str
    responsible: Pollutant
    by_pollutant: dict[Pollutant, int]
    averaging: dict[Pollutant, Averaging]
    missing: tuple[str, ...]  # pollutant groups the station rule needs but were not given


def _check(pollutant: str, value: float) -> None:
    if not value >= 0 or value == float("inf"):
        raise AirIndexError(f"{pollutant}: {value!r} is not a concentration")


def _missing(given: set[Pollutant], required: tuple[tuple[Pollutant, ...], ...]) -> tuple[str, ...]:
    return tuple(" or ".join(group) for group in required if not given.intersection(group))


def _pick(
    concentrations: Mapping[tuple[Pollutant, Averaging], float],
    defined: Mapping[tuple[Pollutant, Averaging], object],
    standard: str,
) -> None:
    for key in concentrations:
        if key not in defined:
            periods = sorted(a for p, a in defined if p == key[0])
            raise AirIndexError(
                f"{standard} has no {key[1]} {key[0]} index"
                + (f"; it is defined for {periods}" if periods else "")
            )


def _worst(by_pollutant: dict[Pollutant, int]) -> Pollutant:
    return max(by_pollutant, key=lambda p: by_pollutant[p])  # first of equals, in input order


def eaqi_level(pollutant: Pollutant, averaging: Averaging, ugm3: float) -> int:
    """The EAQI level (1 Good … 6 Extremely poor) of one concentration."""
    _pick({(pollutant, averaging): ugm3}, EAQI_BANDS, "eu-eaqi")
    _check(pollutant, ugm3)
    edges = EAQI_BANDS[(pollutant, averaging)]
    return next((level for level, edge in enumerate(edges, 1) if ugm3 <= edge), len(edges) + 1)


def eaqi(
    concentrations: Mapping[tuple[Pollutant, Averaging], float], station: Station = "background"
) -> BandIndex:
    """The European Air Quality Index of a station's concentrations (µg/m³)."""
    if not concentrations:
        raise AirIndexError("no concentrations to compute an index from")
    by = {p: eaqi_level(p, a, v) for (p, a), v in concentrations.items()}
    worst = _worst(by)
    return BandIndex(
        by[worst],
        EAQI_LEVELS[by[worst] - 1],
        worst,
        by,
        dict(iter(concentrations)),  # keys are (pollutant, averaging) pairs
        _missing(set(by), EAQI_REQUIRED[station]),
    )


def caqi_value(
    pollutant: Pollutant, averaging: Averaging, ugm3: float, station: Station = "background"
) -> int:
    """The CAQI sub-index of one concentration, rounded half up."""
    grid = CAQI_GRIDS[station]
    _pick({(pollutant, averaging): ugm3}, grid, f"eu-caqi ({station})")
    _check(pollutant, ugm3)
    points = (0.0, *grid[(pollutant, averaging)])
    c = Decimal(repr(float(ugm3)))
    segment = next((i for i in range(1, len(points)) if c <= Decimal(repr(points[i]))), len(points) - 1)
    lo, hi = Decimal(repr(points[segment - 1])), Decimal(repr(points[segment]))
    value = Decimal(25) * (segment - 1) + Decimal(25) * (c - lo) / (hi - lo)
    return int(value.quantize(Decimal(1), rounding=ROUND_HALF_UP))


def caqi_class(value: int) -> str:
    """Very low (0-25), Low (26-50), Medium (51-75), High (76-100), Very high (above 100)."""
    return CAQI_CLASSES[min(4, max(0, (value - 1) // 25))]


def caqi(
    concentrations: Mapping[tuple[Pollutant, Averaging], float], station: Station = "traffic"
) -> BandIndex:
    """The Common Air Quality Index of concentrations (µg/m³) on the traffic or background grid.

    Where PM is given both hourly and as a 24-hour mean, the higher sub-index counts.
    """
    if not concentrations:
        raise AirIndexError("no concentrations to compute an index from")
    by: dict[Pollutant, int] = {}
    averaging: dict[Pollutant, Averaging] = {}
    for (p, a), v in concentrations.items():
        value = caqi_value(p, a, v, station)
        if p not in by or value > by[p]:
            by[p], averaging[p] = value, a
    worst = _worst(by)
    return BandIndex(
        by[worst], caqi_class(by[worst]), worst, by, averaging, _missing(set(by), CAQI_REQUIRED[station])
    )
