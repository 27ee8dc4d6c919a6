"""The air demo's poles: readings flagged by the agent's own checks, NO2 that follows the counted traffic."""

from __future__ import annotations

import random
from collections import Counter
from datetime import UTC, datetime

from roadside.cloud.air.traffic import pearson
from roadside.sim.air_demo import HOURS, pole_data


def test_pole_data_carries_the_agents_flags_and_follows_traffic() -> None:
    end = datetime(2025, 5, 1, 18, tzinfo=UTC)
    readings, counts = pole_data("pole-main", 1.0, end, random.Random(1))
    assert len(readings) == HOURS * 60 * 3
    flags = Counter(r.quality for r in readings)
    assert flags["out_of_range"] == 1  # the -9999 sentinel
    assert flags["stuck"] >= 1
    assert flags["spike"] >= 1
    per_interval = Counter[datetime]()
    for c in counts:
        per_interval[c.interval_start] += c.count
    no2 = {r.ts: r.value for r in readings if r.quantity == "no2" and r.quality == "ok"}
    pairs = [(float(n), no2[t]) for t, n in per_interval.items() if t in no2]
    r = pearson(pairs)
    assert r is not None
    assert r > 0.9
