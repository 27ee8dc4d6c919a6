"""One entry to the three indices, in the units agencies publish concentrations in.

Callers (the ``roadside air index`` command, the hub) give particles in µg/m³,
NO2, O3 and SO2 in ppb and CO in ppm; each standard converts to its own unit
(ppm of ozone for the EPA, µg/m³ at 20 °C for the European indices).

An averaging period applies to the pollutants the standard defines it for;
the others keep their standard's own period (NO2 has only a 1-hour index in
all three), and :attr:`IndexReport.averaging` says which period each
pollutant was read with.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, Final, Literal

from roadside.shared.air import epa, europe
from roadside.shared.air.epa import Averaging, Pollutant
from roadside.shared.air.units import ppb_to_ugm3
from roadside.shared.errors import AirIndexError

Standard = Literal["us-epa", "eu-eaqi", "eu-caqi"]
STANDARDS: Final[tuple[Standard, ...]] = ("us-epa", "eu-eaqi", "eu-caqi")

# What the caller's numbers are in.
INPUT_UNITS: Final[dict[Pollutant, str]] = {
    "pm25": "ug/m3",
    "pm10": "ug/m3",
    "o3": "ppb",
    "no2": "ppb",
    "so2": "ppb",
    "co": "ppm",
}

_DEFAULTS: Final[dict[Standard, dict[Pollutant, Averaging]]] = {
    "us-epa": dict(epa.DEFAULT_AVERAGING),
    "eu-eaqi": {"pm25": "24h", "pm10": "24h", "no2": "1h", "o3": "1h", "so2": "1h"},
    "eu-caqi": {"pm25": "1h", "pm10": "1h", "no2": "1h", "o3": "1h", "so2": "1h", "co": "8h"},
}


@dataclass(frozen=True, slots=True)
class IndexReport:
    """An index in the shape the command prints and the API serves."""

    standard: Standard
    overall: int
    category: str
    responsible: Pollutant
    by_pollutant: dict[Pollutant, int]
    averaging: dict[Pollutant, Averaging]
    beyond_index: tuple[Pollutant, ...] = ()  # US EPA: above the top of the scale, reported as 500
    missing: tuple[str, ...] = ()  # European station rules: pollutants the index should have had

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "standard": self.standard,
            "overall": self.overall,
            "category": self.category,
            "responsible": self.responsible,
            "by_pollutant": dict(self.by_pollutant),
            "averaging": dict(self.averaging),
        }
        if self.beyond_index:
            out["beyond_index"] = list(self.beyond_index)
        if self.missing:
            out["missing"] = list(self.missing)
        return out


def supported(standard: Standard) -> frozenset[Pollutant]:
    """The pollutants ``standard`` has an index for."""
    return frozenset(_DEFAULTS[standard])


def defined_periods(
    standard: Standard, station: europe.Station = "traffic"
) -> set[tuple[Pollutant, Averaging]]:
    if standard == "us-epa":
        return set(epa.TABLES)
    if standard == "eu-eaqi":
        return set(europe.EAQI_BANDS)
    return set(europe.CAQI_GRIDS[station])


def periods_for(
    standard: Standard,
    pollutants: list[Pollutant],
    averaging: Averaging | None,
    station: europe.Station = "traffic",
) -> dict[Pollutant, Averaging]:
    """The period each pollutant is read with: ``averaging`` where defined, else the standard's own."""
    defined = defined_periods(standard, station)
    out: dict[Pollutant, Averaging] = {}
    for p in pollutants:
        if p not in _DEFAULTS[standard]:
            raise AirIndexError(f"{standard} has no index for {p}")
        out[p] = averaging if averaging is not None and (p, averaging) in defined else _DEFAULTS[standard][p]
    return out


def _to_ugm3(pollutant: Pollutant, value: float) -> float:
    if pollutant == "co":
        return ppb_to_ugm3("co", value * 1000.0)
    if pollutant == "pm25" or pollutant == "pm10":  # noqa: PLR1714 (mypy narrows == chains, not `in`)
        return value
    return ppb_to_ugm3(pollutant, value)


def _epa_unit(pollutant: Pollutant, value: float) -> Decimal:
    d = Decimal(repr(float(value)))
    return d / 1000 if pollutant == "o3" else d  # the EPA's ozone table is in ppm


def compute(
    standard: Standard,
    concentrations: Mapping[Pollutant, float],
    averaging: Averaging | None = None,
    station: europe.Station = "traffic",
) -> IndexReport:
    """The index of ``concentrations`` (units: :data:`INPUT_UNITS`) under ``standard``."""
    if not concentrations:
        raise AirIndexError("give at least one concentration")
    periods = periods_for(standard, list(concentrations), averaging, station)
    if standard == "us-epa":
        result = epa.aqi({(p, periods[p]): _epa_unit(p, v) for p, v in concentrations.items()})
        return IndexReport(
            standard,
            result.overall,
            result.category.name,
            result.responsible,
            {p: s.value for p, s in result.by_pollutant.items()},
            {p: s.averaging for p, s in result.by_pollutant.items()},
            beyond_index=tuple(p for p, s in result.by_pollutant.items() if s.beyond_index),
        )
    masses = {(p, periods[p]): _to_ugm3(p, v) for p, v in concentrations.items()}
    band = europe.eaqi(masses, station) if standard == "eu-eaqi" else europe.caqi(masses, station)
    return IndexReport(
        standard,
        band.overall,
        band.category,
        band.responsible,
        band.by_pollutant,
        band.averaging,
        missing=band.missing,
    )
