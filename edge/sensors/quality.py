"""Data-quality checks: each reading leaves with a ``quality`` flag, never silently dropped.

Pure and streaming: one sample in, one :class:`SensorReading` out, state
kept per (sensor, quantity) series. A reading gets at most one flag, the
first that applies of:

``out_of_range``  outside what the hardware can report for its quantity
                  (sentinels such as -9999, a saturated converter);
``spike``         a robust z-score against the rolling median and MAD of
                  the recent values above ``spike_z``, for at most
                  ``spike_max_run`` readings in a row: a longer excursion is
                  a level shift (a real pollution episode), which the
                  anomaly events are for;
``stuck``         the ``stuck_count``-th identical value in a row and the
                  ones after it (zero variance), except values that may
                  repeat, such as 0 % occupancy on an empty road at night;
``dropout``       the first reading after a gap longer than
                  ``dropout_factor`` × the expected period.

A stuck run is only recognisable once it is ``stuck_count`` long, so its
first ``stuck_count - 1`` readings go out unflagged: readings are not held
back to flag them later.
"""

from __future__ import annotations

import math
import statistics
from collections import Counter, deque
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Final, Literal

from roadside.edge.sensors.base import SensorSample
from roadside.edge.sensors.config import QualityConfig
from roadside.shared.schemas import SensorReading

Quality = Literal["ok", "out_of_range", "stuck", "dropout", "spike"]

# MAD × this estimates the standard deviation of normally distributed values.
_MAD_TO_SD: Final = 1.4826


@dataclass
class _Series:
    window: deque[float]
    last_ts: float | None = None
    last_value: float | None = None
    repeats: int = 0
    spike_run: int = 0
    spike_sign: int = 0


@dataclass
class QualityChecker:
    """Flags the readings of one source whose series report every ``period_s``."""

    config: QualityConfig
    period_s: float
    flagged: Counter[str] = field(default_factory=Counter)
    _series: dict[tuple[str, str], _Series] = field(default_factory=dict)

    def check(self, sample: SensorSample) -> SensorReading:
        """The reading of ``sample`` with its quality flag set."""
        quality = self.assess(sample)
        self.flagged[quality] += 1
        return SensorReading(
            ts=datetime.fromtimestamp(sample.ts, UTC),
            sensor=sample.sensor,
            quantity=sample.quantity,
            value=sample.value,
            unit=sample.unit,
            quality=quality,
        )

    def assess(self, sample: SensorSample) -> Quality:
        """The flag of ``sample``; updates the state of its series."""
        key = (sample.sensor, sample.quantity)
        series = self._series.get(key)
        if series is None:
            series = self._series[key] = _Series(deque(maxlen=self.config.spike_window))
        gap = None if series.last_ts is None else sample.ts - series.last_ts
        series.last_ts = sample.ts if gap is None or gap > 0 else series.last_ts
        if gap is not None and gap > self.config.spike_window * self.period_s:
            series.window.clear()  # the baseline is too old to judge the next value by
        value = sample.value
        if not self._in_range(sample.quantity, value):
            series.last_value, series.repeats = None, 0
            return "out_of_range"
        if self._is_stuck(series, sample.quantity, value):
            return "stuck"
        if self._is_spike(series, sample.quantity, value):
            return "spike"
        if gap is not None and gap > self.config.dropout_factor * self.period_s:
            return "dropout"
        return "ok"

    def _in_range(self, quantity: str, value: float) -> bool:
        if not math.isfinite(value):
            return False
        bounds = self.config.ranges.get(quantity)
        return bounds is None or bounds[0] <= value <= bounds[1]

    def _is_stuck(self, series: _Series, quantity: str, value: float) -> bool:
        series.repeats = series.repeats + 1 if value == series.last_value else 1
        series.last_value = value
        if series.repeats < self.config.stuck_count:
            return False
        return value not in self.config.stuck_exempt.get(quantity, ())

    def _is_spike(self, series: _Series, quantity: str, value: float) -> bool:
        window = series.window
        z = 0.0
        if len(window) >= self.config.spike_warmup:
            median = statistics.median(window)
            mad = statistics.median(abs(v - median) for v in window)
            scale = max(_MAD_TO_SD * mad, self.config.min_scale.get(quantity, self.config.default_min_scale))
            z = (value - median) / scale
        # Spikes go into the window too: median and MAD shrug off a few, and a
        # level shift must be able to become the new baseline.
        window.append(value)
        if abs(z) <= self.config.spike_z:
            series.spike_run = 0
            return False
        sign = 1 if z > 0 else -1
        series.spike_run = series.spike_run + 1 if sign == series.spike_sign else 1
        series.spike_sign = sign
        return series.spike_run <= self.config.spike_max_run
