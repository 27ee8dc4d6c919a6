"""EPA's NowCast: an hourly stand-in for the 24-hour PM and 8-hour ozone averages.

Sources: AirNow, "How is the NowCast algorithm used to report current air
quality?" and EPA's PM NowCast fact sheet (2013 revision for PM2.5, 2014 for
PM10); AirNow-Tech, "Updates to ozone real-time reporting" (21 April 2016)
for ozone.

With ``c1`` the most recent hourly mean and ``c_i`` the one ``i - 1`` hours
before it:

* PM2.5 and PM10 use the last 12 hours, ozone the last 8;
* the weight factor is ``w = 1 - (c_max - c_min) / c_max = c_min / c_max``
  over the valid hours of the window; for PM it is raised to at least 0.5
  (which approximates a 3-hour mean), for ozone there is no minimum;
* ``NowCast = Σ w^(i-1) c_i / Σ w^(i-1)``, both sums over valid hours only;
* at least 2 of the 3 most recent hours must be valid, else there is no
  NowCast.

The result is truncated like the AQI's input (PM2.5 to 0.1 µg/m³, PM10 to
1 µg/m³, ozone to 1 ppb) and is then read against the 24-hour PM or 8-hour
ozone breakpoints.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from decimal import ROUND_DOWN, Decimal
from typing import Final, Literal

from roadside.shared.errors import AirIndexError

NowcastPollutant = Literal["pm25", "pm10", "o3"]


@dataclass(frozen=True, slots=True)
class NowcastRule:
    hours: int
    min_weight: float  # 0: no minimum
    places: int  # truncation of the result, in the input unit


RULES: Final[dict[NowcastPollutant, NowcastRule]] = {
    "pm25": NowcastRule(hours=12, min_weight=0.5, places=1),  # µg/m³
    "pm10": NowcastRule(hours=12, min_weight=0.5, places=0),  # µg/m³
    "o3": NowcastRule(hours=8, min_weight=0.0, places=0),  # ppb
}


class InsufficientDataError(AirIndexError):
    """Fewer than 2 of the 3 most recent hours are valid: no NowCast this hour."""

    reason = "insufficient_data"


@dataclass(frozen=True, slots=True)
class Nowcast:
    value: Decimal  # truncated, in the unit of the hourly means
    weight: float  # the weight factor used
    hours_used: int


def weight_factor(values: Sequence[float], min_weight: float) -> float:
    """``c_min / c_max`` over ``values`` (1 when all are 0), raised to ``min_weight``."""
    high, low = max(values), min(values)
    w = 1.0 if high <= 0 else low / high
    return min(1.0, max(w, min_weight))


def nowcast(pollutant: NowcastPollutant, hourly: Sequence[float | None]) -> Nowcast:
    """The NowCast from hourly means, most recent first; ``None`` marks a missing hour.

    Only the first 12 (PM) or 8 (ozone) hours are read. Negative means (an
    instrument's noise around zero) are refused: clean them first.
    """
    rule = RULES[pollutant]
    window = list(hourly[: rule.hours])
    window += [None] * (rule.hours - len(window))
    for hour in window:
        if hour is not None and not (math.isfinite(hour) and hour >= 0):
            raise AirIndexError(f"{pollutant}: hourly mean {hour!r} is not a concentration")
    recent_valid = sum(v is not None for v in window[:3])
    if recent_valid < 2:
        raise InsufficientDataError(
            f"{pollutant}: {recent_valid} of the 3 most recent hours valid, the NowCast needs 2"
        )
    valid = [(age, v) for age, v in enumerate(window) if v is not None]
    w = weight_factor([v for _, v in valid], rule.min_weight)
    numerator = sum(w**age * v for age, v in valid)
    denominator = sum(w**age for age, _ in valid)
    value = Decimal(repr(numerator / denominator)).quantize(
        Decimal(1).scaleb(-rule.places), rounding=ROUND_DOWN
    )
    return Nowcast(value, w, len(valid))
