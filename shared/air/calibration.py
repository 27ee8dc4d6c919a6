"""Calibration of low-cost sensor values: linear, and the US EPA correction for PM2.5, versioned.

**Linear**: ``y = slope × x + intercept`` (+ ``rh_coefficient × RH`` when
given), from a co-location against a reference monitor.

**US EPA PM2.5 correction for PurpleAir-type sensors** (Plantower PMS5003
inside): the input is the sensor's *CF=1* PM2.5 in µg/m³ (averaged over its
two channels where it has two) and the relative humidity in %.

* ``us-epa-2021``: K. K. Barkjohn, B. Gantt, A. L. Clements, *Development
  and application of a United States-wide correction for PM2.5 data
  collected with the PurpleAir sensor*, Atmos. Meas. Tech. 14, 4617–4637
  (2021), eq. for 24-hour data::

      PM2.5 = 0.524 × PA_cf1 − 0.0862 × RH + 5.75

* ``us-epa-2022`` (the default): the extension for wildfire smoke, used on
  the AirNow Fire and Smoke Map since 2022 (Barkjohn et al., *Correction and
  accuracy of PurpleAir PM2.5 measurements for extreme wildfire smoke*,
  Sensors 22, 9669, 2022). Piecewise in ``x = PA_cf1``, blended linearly
  across 30–50 and 210–260 µg/m³ so it has no jumps::

      x < 30        0.524 x − 0.0862 RH + 5.75
      30 ≤ x < 50   (0.786 w + 0.524 (1 − w)) x − 0.0862 RH + 5.75,          w = x/20 − 3/2
      50 ≤ x < 210  0.786 x − 0.0862 RH + 5.75
      210 ≤ x < 260 (0.69 w + 0.786 (1 − w)) x − 0.0862 RH (1 − w)
                    + 2.966 w + 5.75 (1 − w) + 8.84·10⁻⁴ x² w,               w = x/50 − 21/5
      x ≥ 260       2.966 + 0.69 x + 8.84·10⁻⁴ x²

A calibration is a :class:`CalibrationVersion`: a method and its numbers,
for one sensor and quantity, numbered, in effect from a time. Its
``fingerprint`` hashes all of that, so a version number reused for different
numbers is refused (:class:`CalibrationBook`), and the label stored with
every calibrated value (``air-1/pm25/v3``) names exactly one set of numbers.
"""

from __future__ import annotations

import bisect
import hashlib
import json
import math
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from typing import Literal

from roadside.shared.errors import RoadsideError


class CalibrationError(RoadsideError, ValueError):
    """A calibration that cannot be applied or would rewrite history."""

    reason = "calibration"


@dataclass(frozen=True, slots=True)
class Linear:
    slope: float
    intercept: float = 0.0
    rh_coefficient: float = 0.0
    method: Literal["linear"] = "linear"

    @property
    def needs_rh(self) -> bool:
        return self.rh_coefficient != 0.0


@dataclass(frozen=True, slots=True)
class EpaPm25:
    variant: Literal["us-epa-2021", "us-epa-2022"] = "us-epa-2022"
    method: Literal["us-epa-pm25"] = "us-epa-pm25"

    @property
    def needs_rh(self) -> bool:
        return True


Method = Linear | EpaPm25


def barkjohn_2021(pa_cf1: float, rh: float) -> float:
    return 0.524 * pa_cf1 - 0.0862 * rh + 5.75


def barkjohn_2022(pa_cf1: float, rh: float) -> float:
    x = pa_cf1
    if x < 30:
        return 0.524 * x - 0.0862 * rh + 5.75
    if x < 50:
        w = x / 20 - 3 / 2
        return (0.786 * w + 0.524 * (1 - w)) * x - 0.0862 * rh + 5.75
    if x < 210:
        return 0.786 * x - 0.0862 * rh + 5.75
    if x < 260:
        w = x / 50 - 21 / 5
        return (
            (0.69 * w + 0.786 * (1 - w)) * x
            - 0.0862 * rh * (1 - w)
            + 2.966 * w
            + 5.75 * (1 - w)
            + 8.84e-4 * x * x * w
        )
    return 2.966 + 0.69 * x + 8.84e-4 * x * x


def apply(method: Method, value: float, rh: float | None = None) -> float:
    """The calibrated value; :class:`CalibrationError` if RH is needed and missing or not a percentage."""
    if not math.isfinite(value):
        raise CalibrationError(f"cannot calibrate {value!r}")
    if method.needs_rh and (rh is None or not 0.0 <= rh <= 100.0):
        raise CalibrationError(f"{method.method} needs the relative humidity beside the value, got {rh!r}")
    if isinstance(method, Linear):
        return method.slope * value + method.intercept + method.rh_coefficient * (rh or 0.0)
    assert rh is not None
    return barkjohn_2021(value, rh) if method.variant == "us-epa-2021" else barkjohn_2022(value, rh)


@dataclass(frozen=True, slots=True)
class CalibrationVersion:
    """One numbered calibration of one sensor's quantity, in effect from ``valid_from`` (epoch seconds)."""

    sensor: str
    quantity: str
    version: int
    method: Method
    valid_from: float = 0.0
    output: str | None = None  # the parameter it yields (pm25 from pm25_cf1); None: ``quantity``

    @property
    def parameter(self) -> str:
        return self.output or self.quantity

    @property
    def label(self) -> str:
        return f"{self.sensor}/{self.quantity}/v{self.version}"

    @property
    def fingerprint(self) -> str:
        body = json.dumps(
            {"sensor": self.sensor, "quantity": self.quantity, "version": self.version,
             "method": asdict(self.method), "valid_from": self.valid_from, "output": self.output},
            sort_keys=True,
        )  # fmt: skip
        return hashlib.sha256(body.encode()).hexdigest()[:16]


@dataclass
class CalibrationBook:
    """The calibrations of a deployment, per sensor and quantity, in version order."""

    _versions: dict[tuple[str, str], list[CalibrationVersion]] = field(default_factory=dict)

    @classmethod
    def of(cls, versions: Iterable[CalibrationVersion]) -> CalibrationBook:
        book = cls()
        for v in sorted(versions, key=lambda v: (v.sensor, v.quantity, v.version)):
            book.add(v)
        return book

    def add(self, version: CalibrationVersion) -> None:
        """Adds a version; the same version again is a no-op, changed numbers under its number are refused."""
        history = self._versions.setdefault((version.sensor, version.quantity), [])
        for known in history:
            if known.version == version.version:
                if known.fingerprint != version.fingerprint:
                    raise CalibrationError(
                        f"{version.label} exists with other numbers: give the new numbers a new version"
                    )
                return
        if history and version.version < history[-1].version:
            raise CalibrationError(f"{version.label} is older than {history[-1].label}")
        if history and version.valid_from < history[-1].valid_from:
            raise CalibrationError(f"{version.label} takes effect before {history[-1].label} does")
        history.append(version)

    def in_effect(self, sensor: str, quantity: str, ts: float) -> CalibrationVersion | None:
        """The latest version in effect at ``ts``; ``None`` when none is (the value stays uncalibrated)."""
        history = self._versions.get((sensor, quantity), [])
        i = bisect.bisect_right([v.valid_from for v in history], ts)
        return history[i - 1] if i else None

    def versions(self) -> list[CalibrationVersion]:
        return [v for history in self._versions.values() for v in history]
