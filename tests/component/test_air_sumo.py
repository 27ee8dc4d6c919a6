"""A short real SUMO run of the intersection with its emission model: SUMO's mass, the poles, the hub's estimate."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from roadside.cloud.air.factors import DEFAULT_EMISSION_FACTORS
from roadside.shared.errors import ConfigError
from roadside.sim.dispersion import Weather
from roadside.sim.sumo.air import AirSettings, air_scenario
from roadside.sim.sumo.scenarios import build_scenario

pytest.importorskip("sumo")


def test_a_short_run_emits_disperses_and_compares(tmp_path: Path) -> None:
    scenario = build_scenario("intersection", tmp_path / "world", seed=42, duration_s=150.0)
    settings = AirSettings(warmup_s=60.0, window_s=90.0, slice_s=30.0, weather=Weather(wind_from_deg=225.0))
    out = air_scenario(scenario, tmp_path / "run", DEFAULT_EMISSION_FACTORS, settings)

    assert out["counts_source"] == "sumo"
    for p in ("nox", "pm10", "co2"):
        assert out["sumo_total_g"][p] > 0
        assert out["sumo_g"][p]["passenger"] > 0
        assert out["hub_estimate_g"][p] > 0
        rel = out["relative_error"][p]
        assert math.isfinite(rel)
        assert rel == pytest.approx(out["hub_estimate_g"][p] / out["sumo_total_g"][p] - 1, abs=1e-3)
    assert out["sumo_g"]["nox"].get("bicycle", 0.0) == 0.0  # bicycles emit nothing in SUMO
    assert out["counts"]["car"] > 0
    assert 0.25 < out["road_length_km"] < 0.35  # two 150 m legs less the junction, plus the crossing
    bg = out["background_ug_m3"]
    assert set(out["poles"]) == {"n_in", "e_in", "s_in", "w_in"}  # the camera poses' positions
    for row in out["poles"].values():
        assert row["nox_ug_m3"] >= bg["nox"]
        assert row["pm10_ug_m3"] >= bg["pm10"]
        assert bg["pm25"] <= row["pm25_ug_m3"] <= bg["pm25"] + row["pm10_ug_m3"] - bg["pm10"] + 0.02
        assert row["no2_ppb"] == pytest.approx(row["no2_ug_m3"] * 24.055 / 46.005, abs=0.02)
    assert max(row["nox_ug_m3"] for row in out["poles"].values()) > bg["nox"] + 1.0
    series = out["series"]
    assert len(series["counts"]) == 3  # 90 s in 30 s slices
    assert sum(series["counts"]) == sum(out["counts"].values())  # each vehicle counted in one slice
    assert all(len(v) == 3 for v in series["no2_ppb"].values())
    assert set(series["counts_no2_correlation"]) == set(out["poles"])


def test_a_window_past_the_scenario_is_refused(tmp_path: Path) -> None:
    scenario = build_scenario("intersection", tmp_path / "world", seed=1, duration_s=60.0)
    with pytest.raises(ConfigError, match="longer than the scenario"):
        air_scenario(
            scenario, tmp_path / "run", DEFAULT_EMISSION_FACTORS, AirSettings(warmup_s=30, window_s=60)
        )


def test_the_benchmark_prints_one_json_line(capsys: pytest.CaptureFixture[str]) -> None:
    from bench.air_sumo import main

    main(["--warmup", "30", "--window", "60", "--wind-from", "45"])
    last = capsys.readouterr().out.strip().splitlines()[-1]
    out = json.loads(last)
    assert out["counts_source"] == "sumo"
    assert set(out["relative_error"]) == {"nox", "pm10", "co2"}
    assert out["weather"]["wind_from_deg"] == 45.0
