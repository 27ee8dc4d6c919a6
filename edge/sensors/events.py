"""Sensor events: thresholds with hysteresis and cool-down, anomalies from a score.

Pure: readings in, :class:`DetectionEvent` out, state per series. Only
readings flagged ``ok`` count: a stuck sensor, a sentinel or a one-reading
spike must neither raise an alert nor clear one.

Threshold rule state machine (per sensor and rule)::

    armed ──(for_readings in a row past level)──► raised ──(past clear)──► armed
             fires unless within cooldown_s of the rule's last event

Anomaly events work the same way on a score of the series' recent ``ok``
window: raised at ``threshold``, re-armed below ``clear``.
"""

from __future__ import annotations

import hashlib
import uuid
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Final, Protocol

import numpy as np
import numpy.typing as npt

from roadside.edge.sensors.base import SourceEvent
from roadside.edge.sensors.config import AnomalyConfig, ThresholdRule
from roadside.shared.schemas import DetectionEvent, SensorReading

# Event ids are derived from what happened, so replaying a stream gives the same ids.
_EVENT_NAMESPACE: Final = uuid.UUID("5b0f4c52-6a43-4c7e-9d0e-2f1a0c3b7e11")
_MAD_TO_SD: Final = 1.4826
ROBUST_Z_VERSION: Final = "robust-z-1"


class AnomalyScorer(Protocol):
    """Scores a window of recent values, oldest first; higher is more anomalous."""

    def score(self, window: npt.NDArray[np.float64]) -> float: ...


@dataclass(frozen=True, slots=True)
class RobustZScorer:
    """How far the newest values sit from the rest of the window, in robust standard deviations.

    The median of the last ``recent`` values against the median and MAD of
    the ones before: a level that stays shifted for most of ``recent``
    readings scores high, a lone outlier does not.
    """

    recent: int = 3
    min_scale: float = 0.5  # near the sensor's resolution: a flat baseline has a MAD of 0
    version: str = ROBUST_Z_VERSION

    def score(self, window: npt.NDArray[np.float64]) -> float:
        if len(window) <= self.recent + 2:
            return 0.0
        baseline, latest = window[: -self.recent], window[-self.recent :]
        median = float(np.median(baseline))
        scale = max(_MAD_TO_SD * float(np.median(np.abs(baseline - median))), self.min_scale)
        return abs(float(np.median(latest)) - median) / scale


def rules_version(rules: Sequence[ThresholdRule]) -> str:
    """A short, stable name of a rule set: events say which rules raised them."""
    text = "\n".join(r.model_dump_json() for r in rules)
    return "rules-" + hashlib.sha256(text.encode()).hexdigest()[:12]


def _event_id(kind: str, reading: SensorReading, detail: str) -> uuid.UUID:
    return uuid.uuid5(
        _EVENT_NAMESPACE, f"{kind}/{reading.sensor}/{reading.quantity}/{reading.ts.isoformat()}/{detail}"
    )


@dataclass
class _Latch:
    """Hysteresis and cool-down of one alert."""

    cooldown_s: float
    raised: bool = False
    streak: int = 0
    last_fired: datetime | None = None

    def update(self, past_level: bool, past_clear: bool, needed: int, ts: datetime) -> bool:
        """True when this reading raises the alert and it is out of its cool-down."""
        if self.raised:
            if past_clear:
                self.raised, self.streak = False, 0
            return False
        self.streak = self.streak + 1 if past_level else 0
        if self.streak < needed:
            return False
        self.raised = True
        if self.last_fired is not None and (ts - self.last_fired).total_seconds() < self.cooldown_s:
            return False  # still raised: it must clear before it can fire again
        self.last_fired = ts
        return True


@dataclass
class ThresholdEvents:
    """``sensor_threshold`` events of one source's rules."""

    rules: Sequence[ThresholdRule]
    model_version: str
    _latches: dict[tuple[str, int], _Latch] = field(default_factory=dict)

    def update(self, reading: SensorReading) -> list[DetectionEvent]:
        if reading.quality != "ok":
            return []
        out = []
        for index, rule in enumerate(self.rules):
            if rule.quantity != reading.quantity:
                continue
            latch = self._latches.setdefault((reading.sensor, index), _Latch(rule.cooldown_s))
            above = rule.direction == "above"
            v = reading.value
            past_level = v >= rule.level if above else v <= rule.level
            past_clear = v <= rule.clear if above else v >= rule.clear
            if latch.update(past_level, past_clear, rule.for_readings, reading.ts):
                out.append(self._event(reading, f"{index}:{rule.direction}:{rule.level}"))
        return out

    def _event(self, reading: SensorReading, detail: str) -> DetectionEvent:
        return DetectionEvent(
            event_id=_event_id("sensor_threshold", reading, detail),
            ts=reading.ts,
            type="sensor_threshold",
            stream=reading.sensor,
            cls=reading.quantity,
            model_version=self.model_version,
        )


@dataclass
class _Window:
    values: deque[float]
    scorer: AnomalyScorer
    latch: _Latch


@dataclass
class AnomalyEvents:
    """``sensor_anomaly`` events from ``scorer_for(quantity)`` over each series' recent ok values."""

    config: AnomalyConfig
    scorer_for: Callable[[str], AnomalyScorer]
    model_version: str
    last_scores: dict[tuple[str, str], float] = field(default_factory=dict)
    _windows: dict[tuple[str, str], _Window] = field(default_factory=dict)

    def update(self, reading: SensorReading) -> list[DetectionEvent]:
        if not self.config.enabled or reading.quality != "ok":
            return []
        key = (reading.sensor, reading.quantity)
        window = self._windows.get(key)
        if window is None:
            window = self._windows[key] = _Window(
                deque(maxlen=self.config.window),
                self.scorer_for(reading.quantity),
                _Latch(self.config.cooldown_s),
            )
        window.values.append(reading.value)
        if len(window.values) < self.config.window:
            return []
        score = window.scorer.score(np.fromiter(window.values, dtype=np.float64))
        self.last_scores[key] = score
        fired = window.latch.update(score >= self.config.threshold, score < self.config.clear, 1, reading.ts)
        if not fired:
            return []
        return [
            DetectionEvent(
                event_id=_event_id("sensor_anomaly", reading, self.model_version),
                ts=reading.ts,
                type="sensor_anomaly",
                stream=reading.sensor,
                cls=reading.quantity,
                model_version=self.model_version,
            )
        ]


def dropout_event(event: SourceEvent) -> DetectionEvent:
    """``sensor_dropout``: the sensor stopped answering; ``model_version`` names the driver that noticed."""
    ts = datetime.fromtimestamp(event.ts, UTC)
    return DetectionEvent(
        event_id=uuid.uuid5(_EVENT_NAMESPACE, f"sensor_dropout|{event.sensor}|{ts.isoformat()}"),
        ts=ts,
        type="sensor_dropout",
        stream=event.sensor,
        model_version=f"driver-{event.driver}",
    )
