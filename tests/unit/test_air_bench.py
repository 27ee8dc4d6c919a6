"""``python -m bench.air`` in a bounded form: every figure is there and the runs decode what they made."""

from __future__ import annotations

import random

from bench import air


def test_bench_air_small() -> None:
    rng = random.Random(1)
    figures = {**air.drivers(300, rng), **air.fleet(5, 20, rng)}
    assert set(figures) == {
        "pms5003_frames_per_s", "sds011_frames_per_s", "sps30_frames_per_s", "baseline_nmea_lines_per_s",
        "fleet_sensors", "fleet_readings", "stages_readings_per_s", "index_locations_per_s", "store_rows_per_s",
        "realtime_share", "realtime_share_with_store",
    }  # fmt: skip
    assert figures["fleet_readings"] == 5 * 20 * 2
    assert all(v > 0 for v in figures.values())
