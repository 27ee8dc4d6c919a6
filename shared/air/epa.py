"""The US EPA Air Quality Index, from the 2024 breakpoint tables.

Source: EPA, *Technical Assistance Document for the Reporting of Daily Air
Quality – the Air Quality Index (AQI)*, EPA-454/B-24-002, May 2024, Table 6,
which carries the PM2.5 revision of the final rule of 7 February 2024
(89 FR 16202). ``docs/air-quality.md`` lists every number with its source.

How an index is computed (TAD, "Calculating the AQI"):

1. truncate the concentration to the pollutant's precision (ozone to 3
   decimal places in ppm, PM2.5 and CO to 1, PM10, SO2 and NO2 to integers);
2. find the row whose breakpoints hold it: after truncation every value falls
   in exactly one row, since the rows meet at that precision (9.0 | 9.1);
3. ``I = (I_hi - I_lo) / (BP_hi - BP_lo) × (C - BP_lo) + I_lo``, rounded to the
   nearest integer;
4. the AQI is the highest sub-index, and its pollutant is the responsible one.

Arithmetic is decimal: ``35.9`` as a float is 35.8999..., which float
truncation would put in the row below.

Some averaging periods define only part of the scale; outside it this module
raises :class:`UndefinedIndexError` instead of guessing:

* 8-hour ozone defines 0–300; above 0.200 ppm the 1-hour ozone value is used;
* 1-hour ozone defines 101–500 (0.125 ppm and up);
* 1-hour SO2 defines 0–200 (up to 304 ppb); from 305 ppb the 24-hour SO2
  value is used, which in turn defines only 201–500.

A concentration above the top breakpoint of the Hazardous row is reported as
500 with ``beyond_index`` set (AirNow shows these as "Beyond the AQI"), not
extrapolated.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from decimal import ROUND_DOWN, ROUND_HALF_UP, Decimal
from typing import Final, Literal

from roadside.shared.errors import AirIndexError

Pollutant = Literal["pm25", "pm10", "o3", "no2", "co", "so2"]
Averaging = Literal["1h", "8h", "24h"]

POLLUTANTS: Final[tuple[Pollutant, ...]] = ("pm25", "pm10", "o3", "no2", "co", "so2")


class UndefinedIndexError(AirIndexError):
    """This averaging period defines no index at this concentration (or at all)."""

    reason = "undefined"


@dataclass(frozen=True, slots=True)
class Category:
    """One of the six AQI categories, with the colour the TAD prescribes."""

    name: str
    low: int
    high: int
    color: str


CATEGORIES: Final[tuple[Category, ...]] = (
    Category("Good", 0, 50, "green"),
    Category("Moderate", 51, 100, "yellow"),
    Category("Unhealthy for Sensitive Groups", 101, 150, "orange"),
    Category("Unhealthy", 151, 200, "red"),
    Category("Very Unhealthy", 201, 300, "purple"),
    Category("Hazardous", 301, 500, "maroon"),
)
_INDEX_ROWS: Final = tuple((c.low, c.high) for c in CATEGORIES)


@dataclass(frozen=True, slots=True)
class Breakpoint:
    c_lo: Decimal
    c_hi: Decimal
    i_lo: int
    i_hi: int


@dataclass(frozen=True, slots=True)
class Table:
    """The breakpoints of one pollutant over one averaging period, in the agency's unit."""

    pollutant: Pollutant
    averaging: Averaging
    unit: str
    places: int  # decimal places kept by truncation
    rows: tuple[Breakpoint, ...]

    @property
    def step(self) -> Decimal:
        return Decimal(1).scaleb(-self.places)


def _table(
    pollutant: Pollutant,
    averaging: Averaging,
    unit: str,
    places: int,
    lows: tuple[str, ...],
    highs: tuple[str, ...],
    first_row: int = 0,
) -> Table:
    """Rows from concentration edges; ``first_row`` is the category the first edge belongs to."""
    index_rows = _INDEX_ROWS[first_row : first_row + len(lows)]
    rows = tuple(
        Breakpoint(Decimal(lo), Decimal(hi), i_lo, i_hi)
        for lo, hi, (i_lo, i_hi) in zip(lows, highs, index_rows, strict=True)
    )
    return Table(pollutant, averaging, unit, places, rows)


# TAD 2024, Table 6. Each tuple lists the rows from Good up (or from the first row
# the period defines), lower edges then upper edges.
TABLES: Final[dict[tuple[Pollutant, Averaging], Table]] = {
    ("o3", "8h"): _table(
        "o3", "8h", "ppm", 3,
        ("0.000", "0.055", "0.071", "0.086", "0.106"),
        ("0.054", "0.070", "0.085", "0.105", "0.200"),
    ),
    ("o3", "1h"): _table(
        "o3", "1h", "ppm", 3,
        ("0.125", "0.165", "0.205", "0.405"),
        ("0.164", "0.204", "0.404", "0.604"),
        first_row=2,
    ),
    ("pm25", "24h"): _table(
        "pm25", "24h", "ug/m3", 1,
        ("0.0", "9.1", "35.5", "55.5", "125.5", "225.5"),
        ("9.0", "35.4", "55.4", "125.4", "225.4", "325.4"),
    ),
    ("pm10", "24h"): _table(
        "pm10", "24h", "ug/m3", 0,
        ("0", "55", "155", "255", "355", "425"),
        ("54", "154", "254", "354", "424", "604"),
    ),
    ("co", "8h"): _table(
        "co", "8h", "ppm", 1,
        ("0.0", "4.5", "9.5", "12.5", "15.5", "30.5"),
        ("4.4", "9.4", "12.4", "15.4", "30.4", "50.4"),
    ),
    ("so2", "1h"): _table(
        "so2", "1h", "ppb", 0,
        ("0", "36", "76", "186"),
        ("35", "75", "185", "304"),
    ),
    ("so2", "24h"): _table(
        "so2", "24h", "ppb", 0,
        ("305", "605"),
        ("604", "1004"),
        first_row=4,
    ),
    ("no2", "1h"): _table(
        "no2", "1h", "ppb", 0,
        ("0", "54", "101", "361", "650", "1250"),
        ("53", "100", "360", "649", "1249", "2049"),
    ),
}  # fmt: skip

# The period each pollutant's daily index is reported on when the caller names none.
DEFAULT_AVERAGING: Final[dict[Pollutant, Averaging]] = {
    "pm25": "24h",
    "pm10": "24h",
    "o3": "8h",
    "co": "8h",
    "so2": "1h",
    "no2": "1h",
}


@dataclass(frozen=True, slots=True)
class SubIndex:
    """The index of one pollutant over one averaging period."""

    pollutant: Pollutant
    averaging: Averaging
    concentration: Decimal  # after truncation, in the table's unit
    value: int
    beyond_index: bool = False  # above the top of the scale: reported as 500


def category(index: int) -> Category:
    """The category an index value falls in (Hazardous for 500 and above)."""
    if index < 0:
        raise AirIndexError(f"an AQI is never negative, got {index}")
    for c in CATEGORIES:
        if index <= c.high:
            return c
    return CATEGORIES[-1]


def truncate(table: Table, concentration: float | Decimal) -> Decimal:
    """The concentration cut (not rounded) to the table's precision, as the TAD says."""
    value = concentration if isinstance(concentration, Decimal) else Decimal(repr(float(concentration)))
    if not value.is_finite():
        raise AirIndexError(f"{table.pollutant}: {concentration!r} is not a concentration")
    if value < 0:
        raise AirIndexError(f"{table.pollutant}: negative concentration {concentration!r}")
    return value.quantize(table.step, rounding=ROUND_DOWN)


def linear(row: Breakpoint, c: Decimal) -> int:
    """The TAD's equation 1, rounded half up to an integer."""
    raw = Decimal(row.i_hi - row.i_lo) / (row.c_hi - row.c_lo) * (c - row.c_lo) + row.i_lo
    return int(raw.quantize(Decimal(1), rounding=ROUND_HALF_UP))


def sub_index(pollutant: Pollutant, averaging: Averaging, concentration: float | Decimal) -> SubIndex:
    """The AQI of one concentration, in the table's unit (ppm for O3 and CO, ppb for SO2 and NO2)."""
    table = TABLES.get((pollutant, averaging))
    if table is None:
        periods = sorted(a for p, a in TABLES if p == pollutant)
        raise UndefinedIndexError(f"{pollutant} has no {averaging} AQI; it is defined for {periods}")
    c = truncate(table, concentration)
    if c < table.rows[0].c_lo:
        raise UndefinedIndexError(
            f"{averaging} {pollutant} below {table.rows[0].c_lo} {table.unit} defines no AQI"
            f" (it starts at {table.rows[0].i_lo}); use the {DEFAULT_AVERAGING[pollutant]} value"
        )
    for row in table.rows:
        if c <= row.c_hi:
            return SubIndex(pollutant, averaging, c, linear(row, c))
    top = table.rows[-1]
    if top.i_hi < 500:  # 8-hour ozone above 0.200 ppm, 1-hour SO2 above 304 ppb
        other = "1h" if pollutant == "o3" else "24h"
        raise UndefinedIndexError(
            f"{averaging} {pollutant} above {top.c_hi} {table.unit} defines no AQI: use the {other} value"
        )
    return SubIndex(pollutant, averaging, c, 500, beyond_index=True)


@dataclass(frozen=True, slots=True)
class AqiResult:
    """The AQI of a set of concentrations: the highest sub-index and who set it."""

    overall: int
    category: Category
    responsible: Pollutant
    by_pollutant: dict[Pollutant, SubIndex]


def aqi(concentrations: Mapping[tuple[Pollutant, Averaging], float | Decimal]) -> AqiResult:
    """The AQI of concentrations keyed by (pollutant, averaging period).

    A pollutant given for two periods (8-hour and 1-hour ozone, 1-hour and
    24-hour SO2) counts with the higher of the sub-indices they define; a
    period that defines none at its value is skipped when the other does.
    Ties go to the pollutant listed first in :data:`POLLUTANTS`.
    """
    if not concentrations:
        raise AirIndexError("no concentrations to compute an AQI from")
    best: dict[Pollutant, SubIndex] = {}
    undefined: dict[Pollutant, UndefinedIndexError] = {}
    for (pollutant, averaging), value in concentrations.items():
        try:
            sub = sub_index(pollutant, averaging, value)
        except UndefinedIndexError as exc:
            undefined.setdefault(pollutant, exc)
            continue
        if pollutant not in best or sub.value > best[pollutant].value:
            best[pollutant] = sub
    missing = [p for p in undefined if p not in best]
    if missing:
        raise undefined[missing[0]]
    ordered = {p: best[p] for p in POLLUTANTS if p in best}
    responsible = max(ordered, key=lambda p: ordered[p].value)  # max keeps the first of equals
    overall = ordered[responsible].value
    return AqiResult(overall, category(overall), responsible, ordered)
