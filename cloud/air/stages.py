"""The three stages of an air measurement, pure: raw → cleaned → calibrated.

**raw** is what the sensor reported, with the flag the agent's quality check
gave it. **cleaned** is the same value with every flag that applies:

=========================  =====================================================  ============
flag                       when                                                   invalidates
=========================  =====================================================  ============
``out_of_range``           outside what the hardware can report (agent's check)   yes
``stuck``                  the same value too many times in a row (agent)         yes
``spike``                  a short robust-z excursion (agent)                     yes
``dropout``                the first reading after a gap (agent)                  no
``negative``               below zero (a sensor's noise around zero)              no
``rh_high``                a particle reading while the RH is above ``rh_max``    yes
                           (hygroscopic growth inflates it): the sensor's own RH,
                           else the nearest RH at the location
``channel_disagreement``   two sensors paired at a location differ by at least   yes
                           ``abs_tolerance`` *and* ``rel_tolerance`` (Barkjohn
                           et al. 2021's A/B channel rule: 5 µg/m³ and 70 %)
``rh_missing``             a calibration needs RH and none was reported           yes
=========================  =====================================================  ============

A flagged value is kept and served with its flags; an *invalidating* flag
keeps it out of means and indices. **calibrated** applies the calibration
version in effect at the reading's time and records its label with the
value; a quantity without a calibration passes through with ``calibration``
``None`` (stated, not hidden).
"""

from __future__ import annotations

import bisect
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from typing import Final, Literal

from roadside.shared.air.calibration import CalibrationBook, CalibrationError, apply

Stage = Literal["raw", "cleaned", "calibrated"]
STAGES: Final[tuple[Stage, ...]] = ("raw", "cleaned", "calibrated")
FLAGS: Final = (
    "out_of_range", "stuck", "spike", "dropout", "negative", "rh_high", "channel_disagreement", "rh_missing",
)  # fmt: skip
INVALIDATING: Final = frozenset(
    {"out_of_range", "stuck", "spike", "rh_high", "channel_disagreement", "rh_missing"}
)
_EDGE_FLAGS: Final = frozenset({"out_of_range", "stuck", "spike", "dropout"})
RH: Final = "rh"


@dataclass(frozen=True, slots=True)
class Measurement:
    """One value at one stage, with its flags and (calibrated stage) the calibration that made it."""

    ts: float  # epoch seconds
    sensor: str
    parameter: str
    value: float
    unit: str
    stage: Stage = "raw"
    flags: frozenset[str] = frozenset()
    calibration: str | None = None

    @property
    def valid(self) -> bool:
        return not (self.flags & INVALIDATING)


def raw(ts: float, sensor: str, parameter: str, value: float, unit: str, edge_quality: str) -> Measurement:
    """A raw measurement from a stored reading; the agent's quality label becomes its flag."""
    flags = frozenset({edge_quality}) if edge_quality in _EDGE_FLAGS else frozenset()
    return Measurement(ts, sensor, parameter, value, unit, "raw", flags)


@dataclass(frozen=True, slots=True)
class ChannelPair:
    """Two sensors of one parameter at one location that should agree."""

    a: str
    b: str
    parameter: str


@dataclass(frozen=True, slots=True)
class CleaningRules:
    rh_max: float = 95.0  # %; above it particle readings are flagged rh_high
    rh_sensitive: frozenset[str] = frozenset({"pm1", "pm25", "pm10", "pm25_cf1", "pm4"})
    match_s: float = 90.0  # readings this close in time are "at the same time" (RH, channel pairs)
    pairs: tuple[ChannelPair, ...] = ()
    abs_tolerance: float = 5.0  # µg/m³
    rel_tolerance: float = 0.7  # |a − b| / mean(a, b)


@dataclass
class _Series:
    """One sensor's values of one parameter, in time order, for nearest-in-time lookups."""

    ts: list[float] = field(default_factory=list)
    values: list[float] = field(default_factory=list)

    def near(self, ts: float, within: float) -> float | None:
        i = bisect.bisect_left(self.ts, ts)
        best: tuple[float, float] | None = None
        for j in (i - 1, i):
            if 0 <= j < len(self.ts) and abs(self.ts[j] - ts) <= within:
                gap = abs(self.ts[j] - ts)
                if best is None or gap < best[0]:
                    best = (gap, self.values[j])
        return None if best is None else best[1]


def _humidity(series: dict[tuple[str, str], _Series], sensor: str, ts: float, within: float) -> float | None:
    """RH at ``ts``: the sensor's own, else the nearest of any sensor in the batch (one location's)."""
    own = series.get((sensor, RH))
    value = own.near(ts, within) if own else None
    if value is not None:
        return value
    nearest: tuple[float, float] | None = None
    for (_, parameter), other in series.items():
        if parameter != RH:
            continue
        found = other.near(ts, within)
        if found is not None:
            i = bisect.bisect_left(other.ts, ts)
            gap = min(abs(other.ts[j] - ts) for j in (i - 1, i) if 0 <= j < len(other.ts))
            if nearest is None or gap < nearest[0]:
                nearest = (gap, found)
    return None if nearest is None else nearest[1]


def _index(measurements: Iterable[Measurement]) -> dict[tuple[str, str], _Series]:
    series: dict[tuple[str, str], _Series] = defaultdict(_Series)
    for m in sorted(measurements, key=lambda m: m.ts):
        s = series[(m.sensor, m.parameter)]
        s.ts.append(m.ts)
        s.values.append(m.value)
    return series


def _disagree(a: float, b: float, rules: CleaningRules) -> bool:
    diff = abs(a - b)
    mean = (a + b) / 2
    relative = diff / mean if mean > 0 else (0.0 if diff == 0 else float("inf"))
    return diff >= rules.abs_tolerance and relative >= rules.rel_tolerance


def clean(batch: Sequence[Measurement], rules: CleaningRules) -> list[Measurement]:
    """The cleaned stage of ``batch`` (raw measurements; RH and paired channels looked up within it)."""
    series = _index(m for m in batch if m.valid)
    partners: dict[tuple[str, str], str] = {}
    for pair in rules.pairs:
        partners[(pair.a, pair.parameter)] = pair.b
        partners[(pair.b, pair.parameter)] = pair.a
    out = []
    for m in batch:
        flags = set(m.flags)
        if m.value < 0 and "out_of_range" not in flags:
            flags.add("negative")
        if m.parameter in rules.rh_sensitive:
            near = _humidity(series, m.sensor, m.ts, rules.match_s)
            if near is not None and near > rules.rh_max:
                flags.add("rh_high")
        partner = partners.get((m.sensor, m.parameter))
        if partner is not None and m.valid:
            other = series.get((partner, m.parameter))
            value = other.near(m.ts, rules.match_s) if other else None
            if value is not None and _disagree(m.value, value, rules):
                flags.add("channel_disagreement")
        out.append(replace(m, stage="cleaned", flags=frozenset(flags)))
    return out


def calibrate(
    cleaned: Sequence[Measurement], book: CalibrationBook, match_s: float = 90.0
) -> list[Measurement]:
    """The calibrated stage: each value through the version in effect at its time, its label kept."""
    rh = _index(m for m in cleaned if m.parameter == RH and m.valid)
    # A calibration that yields another parameter (pm25 from pm25_cf1) supersedes the sensor's own
    # uncalibrated value of it: one calibrated pm25 per sensor and time.
    superseded = set()
    for m in cleaned:
        version = book.in_effect(m.sensor, m.parameter, m.ts)
        if version is not None and version.parameter != m.parameter:
            superseded.add((m.sensor, version.parameter))
    out = []
    for m in cleaned:
        version = book.in_effect(m.sensor, m.parameter, m.ts)
        if version is None:
            if (m.sensor, m.parameter) not in superseded:
                out.append(replace(m, stage="calibrated"))
            continue
        humidity = _humidity(rh, m.sensor, m.ts, match_s)
        try:
            value = apply(version.method, m.value, humidity)
        except CalibrationError:
            flags = m.flags | {"rh_missing"}
            out.append(
                replace(
                    m, stage="calibrated", parameter=version.parameter, flags=flags, calibration=version.label
                )
            )
            continue
        flags = (m.flags - {"negative"}) | ({"negative"} if value < 0 else set())
        out.append(
            replace(
                m,
                stage="calibrated",
                parameter=version.parameter,
                value=value,
                flags=flags,
                calibration=version.label,
            )
        )
    return out
