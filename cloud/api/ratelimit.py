"""A token bucket per API client: short bursts are fine, a runaway poller gets ``429``.

Each client name has a bucket of ``burst`` tokens refilled at ``per_s`` a
second; a request takes one. Limits are per hub process: with several hubs
behind a load balancer, a client gets each hub's allowance.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

# Buckets of clients idle long enough to be full again are forgotten past this many.
_MAX_TRACKED: Final = 10_000


@dataclass(frozen=True, slots=True)
class RateLimit:
    """``per_s`` requests a second on average, bursts of up to ``burst``."""

    per_s: float
    burst: int

    def __post_init__(self) -> None:
        if self.per_s <= 0 or self.burst < 1:
            raise ValueError("a rate limit needs per_s > 0 and burst >= 1")


class TokenBuckets:
    """Thread-safe token buckets keyed by client name."""

    def __init__(self, limit: RateLimit, clock: Callable[[], float] = time.monotonic) -> None:
        self.limit = limit
        self._clock = clock
        self._buckets: dict[str, tuple[float, float]] = {}  # key -> (tokens, at)
        self._lock = threading.Lock()

    def take(self, key: str) -> float:
        """Take a token: ``0.0`` when granted, else the seconds until one will be there."""
        now = self._clock()
        with self._lock:
            tokens, at = self._buckets.get(key, (float(self.limit.burst), now))
            tokens = min(float(self.limit.burst), tokens + (now - at) * self.limit.per_s)
            if tokens >= 1.0:
                self._buckets[key] = (tokens - 1.0, now)
                granted = 0.0
            else:
                self._buckets[key] = (tokens, now)
                granted = (1.0 - tokens) / self.limit.per_s
            if len(self._buckets) > _MAX_TRACKED:
                self._forget_full(now)
        return granted

    def _forget_full(self, now: float) -> None:
        refill_s = self.limit.burst / self.limit.per_s
        for key in [k for k, (_, at) in self._buckets.items() if now - at >= refill_s]:
            del self._buckets[key]


def retry_after_header(wait_s: float) -> str:
    """Whole seconds for ``Retry-After``, at least 1."""
    return str(max(1, math.ceil(wait_s)))
