"""Ingest rejections over a recent window, from the ingest's counters (for the alerts)."""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Final

from prometheus_client import CollectorRegistry

REJECTED_COUNTER: Final = "roadside_ingest_rejected"


def counter_totals(metrics: CollectorRegistry, name: str) -> dict[str, float]:
    """The ``_total`` samples of one counter in this process, keyed by their single label's value."""
    totals: dict[str, float] = {}
    for metric in metrics.collect():
        if metric.name != name:
            continue
        for sample in metric.samples:
            if sample.name.endswith("_total"):
                label = next(iter(sample.labels.values()), "")
                totals[label] = totals.get(label, 0.0) + sample.value
    return totals


class RejectionWindow:
    """Rejections per reason over about the last ``window_s``, from the counters sampled at each look.

    The first sample is taken when the app is built (the counters' state then), so a burst is
    seen from the first look on. The base of each answer is the newest sample at least
    ``window_s`` old (the first one until the app has run that long): when looks are sparse the
    answer covers a little more than the window, never less. Bounded: older samples are dropped.
    """

    def __init__(
        self, metrics: CollectorRegistry, window_s: float = 300.0, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._metrics = metrics
        self.window_s = window_s
        self._clock = clock
        self._lock = threading.Lock()
        self._samples: deque[tuple[float, dict[str, float]]] = deque(maxlen=4096)
        self._samples.append((clock(), counter_totals(metrics, REJECTED_COUNTER)))

    def recent(self) -> dict[str, float]:
        now, totals = self._clock(), counter_totals(self._metrics, REJECTED_COUNTER)
        with self._lock:
            self._samples.append((now, totals))
            while len(self._samples) > 2 and now - self._samples[1][0] >= self.window_s:
                self._samples.popleft()
            _, then = self._samples[0]
        return {
            reason: n - then.get(reason, 0.0) for reason, n in totals.items() if n - then.get(reason, 0.0) > 0
        }
