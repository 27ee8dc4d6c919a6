"""Synthetic roadside sensors: air quality, loop occupancy and noise with rush hours and faults.

:class:`SensorSimulator` is the pure core: given timestamps it returns
samples, each with the ground truth of the fault injected into it, so the
quality checks can be scored against it. :class:`SyntheticSensorSource`
drives it on the wall clock or on a simulated one.

Each series is the daily (and optionally weekly) profile of its quantity
plus AR(1) noise, because pollution and traffic drift rather than jump,
rounded to the sensor's resolution and clipped to what it can report.
"""

from __future__ import annotations

import enum
import math
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Final, Literal

import numpy as np

from roadside.edge.sensors.base import SensorSample
from roadside.edge.sensors.config import FaultConfig, SyntheticSensorConfig

FaultKind = Literal["ok", "spike", "stuck", "dropout", "out_of_range"]

# A fault starts only after this many clean samples, so faults never overlap
# and each sample carries exactly one ground-truth label.
_MIN_CLEAN: Final = 3
_DAY_S: Final = 86400.0


@dataclass(frozen=True, slots=True)
class QuantityProfile:
    """How one quantity moves over a day, roughly as a city centre street sees it."""

    quantity: str
    unit: str
    night: float  # the level at 3 am
    rush: float  # added at the morning and evening peaks
    daytime: float  # added across the working day
    weekend: float  # factor on the traffic-driven terms on Saturday and Sunday
    noise_sd: float
    ar: float  # AR(1) coefficient of the noise
    resolution: float
    low: float  # what the hardware reports at most and least
    high: float


PROFILES: Final[dict[str, QuantityProfile]] = {
    p.quantity: p
    for p in (
        QuantityProfile("pm25", "ug/m3", 8.0, 14.0, 5.0, 0.6, 2.0, 0.9, 0.1, 0.0, 1000.0),
        QuantityProfile("no2", "ug/m3", 15.0, 45.0, 15.0, 0.6, 4.0, 0.85, 0.1, 0.0, 1000.0),
        QuantityProfile("occupancy", "%", 0.5, 30.0, 12.0, 0.5, 1.5, 0.5, 0.1, 0.0, 100.0),
        QuantityProfile("noise", "dB(A)", 48.0, 20.0, 14.0, 0.8, 1.5, 0.6, 0.1, 30.0, 130.0),
    )
}
_CANONICAL: Final = tuple(PROFILES)


def _bump(hour: float, centre: float, width: float) -> float:
    return math.exp(-0.5 * ((hour - centre) / width) ** 2)


def seasonal_mean(
    profile: QuantityProfile, ts: float, utc_offset_h: float = 0.0, weekly: bool = True
) -> float:
    """The expected value at ``ts``: night level, two rush-hour peaks, a daytime plateau."""
    local = ts + utc_offset_h * 3600.0
    hour = (local % _DAY_S) / 3600.0
    # 1970-01-01 was a Thursday: day 0 → weekday 3 (Monday = 0).
    weekday = (int(local // _DAY_S) + 3) % 7
    peaks = _bump(hour, 8.0, 1.2) + 0.9 * _bump(hour, 17.5, 1.5)
    plateau = 1.0 / (1.0 + math.exp(-(hour - 6.5) * 1.5)) / (1.0 + math.exp((hour - 21.0) * 1.5))
    traffic = profile.rush * peaks + profile.daytime * plateau
    if weekly and weekday >= 5:
        traffic *= profile.weekend
    return profile.night + traffic


class _Gap(enum.Enum):
    GAP = "gap"


_GAP: Final = _Gap.GAP


@dataclass(frozen=True, slots=True)
class SimulatedSample:
    """A generated sample and the fault the generator put in it (``ok``: none).

    ``dropout`` marks the first sample after a gap: the gap itself has no sample.
    """

    sample: SensorSample
    fault: FaultKind


@dataclass
class _Series:
    profile: QuantityProfile
    rng: np.random.Generator
    noise: float = 0.0
    mode: Literal["normal", "stuck", "dropout"] = "normal"
    remaining: int = 0
    clean: int = 0  # clean samples since the last fault
    last_value: float | None = None
    after_gap: bool = False


class SensorSimulator:
    """Deterministic per seed: the same timestamps give the same samples and faults."""

    def __init__(
        self,
        name: str,
        quantities: Sequence[str],
        seed: int = 0,
        faults: FaultConfig | None = None,
        utc_offset_h: float = 0.0,
        weekly: bool = True,
    ) -> None:
        self.name = name
        self.faults = faults or FaultConfig()
        self.utc_offset_h = utc_offset_h
        self.weekly = weekly
        # One generator per quantity, keyed by its fixed index, so adding a
        # quantity to a device does not change the series of the others.
        self._series = [
            _Series(PROFILES[q], np.random.default_rng([seed, _CANONICAL.index(q)])) for q in quantities
        ]

    def step(self, ts: float) -> list[SimulatedSample]:
        """The samples of one tick at ``ts``; a quantity in a dropout has none."""
        out = []
        for series in self._series:
            made = self._next(series, ts)
            if made is not None:
                out.append(made)
        return out

    def run(self, start_ts: float, period_s: float, ticks: int) -> list[SimulatedSample]:
        return [s for i in range(ticks) for s in self.step(start_ts + i * period_s)]

    def _clean_value(self, series: _Series, ts: float) -> float:
        p = series.profile
        innovation = series.rng.normal(0.0, p.noise_sd * math.sqrt(1.0 - p.ar * p.ar))
        series.noise = p.ar * series.noise + innovation
        value = seasonal_mean(p, ts, self.utc_offset_h, self.weekly) + series.noise
        return self._report(p, value)

    @staticmethod
    def _report(p: QuantityProfile, value: float) -> float:
        quantised = round(round(value / p.resolution) * p.resolution, 6)
        return min(max(quantised, p.low), p.high)

    def _next(self, series: _Series, ts: float) -> SimulatedSample | None:
        # The underlying process moves on during every fault, as the air does.
        value = self._clean_value(series, ts)
        if series.mode == "dropout":
            series.remaining -= 1
            if series.remaining > 0:
                return None
            series.mode, series.after_gap = "normal", True
        if series.mode == "stuck" and series.last_value is not None:
            series.remaining -= 1
            if series.remaining <= 0:
                series.mode = "normal"
            return self._emit(series, ts, series.last_value, "stuck")
        if series.after_gap:
            series.after_gap = False
            return self._emit(series, ts, value, "dropout")
        if series.clean >= _MIN_CLEAN and series.last_value is not None:
            started = self._start_fault(series, ts, value, series.last_value)
            if started is not None:
                return None if started is _GAP else started
        return self._emit(series, ts, value, "ok")

    def _start_fault(
        self, series: _Series, ts: float, value: float, last: float
    ) -> SimulatedSample | _Gap | None:
        """The sample of a fault that starts now (``_GAP``: a dropout), or None for no fault."""
        f, rng = self.faults, series.rng
        draw = float(rng.random())
        if draw < f.dropout_prob:
            series.mode = "dropout"
            series.remaining = int(rng.integers(f.dropout_len[0], f.dropout_len[1] + 1))
            series.clean = 0
            return _GAP
        draw -= f.dropout_prob
        if draw < f.stuck_prob:
            series.mode = "stuck"
            series.remaining = int(rng.integers(f.stuck_len[0], f.stuck_len[1] + 1)) - 1
            if series.remaining <= 0:
                series.mode = "normal"
            return self._emit(series, ts, last, "stuck")
        draw -= f.stuck_prob
        if draw < f.spike_prob:
            size = float(rng.uniform(*f.spike_magnitude)) * series.profile.noise_sd
            return self._emit(series, ts, self._report(series.profile, value + size), "spike")
        draw -= f.spike_prob
        if draw < f.out_of_range_prob:
            return self._emit(series, ts, f.sentinel, "out_of_range")
        return None

    def _emit(self, series: _Series, ts: float, value: float, fault: FaultKind) -> SimulatedSample:
        series.clean = series.clean + 1 if fault == "ok" else 0
        if fault in ("ok", "dropout"):
            # A stuck sensor freezes at the last good value, not at a glitch.
            series.last_value = value
        p = series.profile
        return SimulatedSample(SensorSample(ts, self.name, p.quantity, value, p.unit), fault)


class SyntheticSensorSource:
    """A :class:`SensorSimulator` on the wall clock (paced) or on a simulated clock (unpaced)."""

    def __init__(self, config: SyntheticSensorConfig, clock: Callable[[], float] = time.time) -> None:
        self.name = config.name
        self.config = config
        self._clock = clock
        self.simulator = SensorSimulator(
            config.name, config.quantities, config.seed, config.faults, config.utc_offset_h, config.weekly
        )
        # The faults injected lately (not the clean samples), for tests and the demo to score against.
        self.injected: deque[SimulatedSample] = deque(maxlen=10_000)
        self._stop = threading.Event()

    def samples(self) -> Iterator[SensorSample]:
        config = self.config
        start = config.start_ts(self._clock())
        next_due = time.monotonic()
        tick = 0
        while not self._stop.is_set() and (config.max_ticks is None or tick < config.max_ticks):
            ts = self._clock() if config.realtime else start + tick * config.period_s
            for made in self.simulator.step(ts):
                if made.fault != "ok":
                    self.injected.append(made)
                yield made.sample
            tick += 1
            if config.realtime:
                next_due += config.period_s
                if self._stop.wait(max(0.0, next_due - time.monotonic())):
                    return

    def close(self) -> None:
        self._stop.set()
