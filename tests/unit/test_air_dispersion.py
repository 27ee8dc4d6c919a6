"""The near-road dispersion model's properties, and the pure parts of the SUMO air run."""

from __future__ import annotations

import itertools
import math
from pathlib import Path

import numpy as np
import pytest

from roadside.cloud.air.config import AirConfig
from roadside.cloud.air.factors import DEFAULT_EMISSION_FACTORS
from roadside.shared.errors import ConfigError
from roadside.sim.dispersion import PointSource, Weather, concentration, no2_from_nox, sigmas
from roadside.sim.sumo.air import TripTotals, factors_from_trips, read_emission_output

# Wind from the west (270°): it blows towards +x, so "downwind" is +x and "across" is y.
WEST = Weather(wind_speed_ms=3.0, wind_from_deg=270.0, mixing_height_m=1000.0, stability="D")


def _flux(weather: Weather, x: float, q: float = 1.0, top: float | None = None) -> float:
    """u × ∫∫ C dy dz over the plane x metres downwind (midpoint rule)."""
    sy, sz = (float(s[0]) for s in sigmas(np.array([x]), weather))
    top = top if top is not None else min(weather.mixing_height_m, 8 * sz)
    ys = np.linspace(-7 * sy, 7 * sy, 141)
    zs = np.linspace(0.0, top, 201)
    dy, dz = ys[1] - ys[0], zs[1] - zs[0]
    zs = zs[:-1] + dz / 2
    src = [PointSource(0.0, 0.0, q)]
    # C is separable in y and z: integrate each axis once at the other's centre, then scale.
    cy = np.array([concentration(src, (x, float(y), 1.0), weather) for y in ys])
    cz = np.array([concentration(src, (x, 0.0, float(z)), weather) for z in zs])
    centre = concentration(src, (x, 0.0, 1.0), weather)
    return weather.wind_speed_ms * float(np.trapezoid(cy, dx=dy)) * float(np.sum(cz) * dz) / centre


@pytest.mark.parametrize("x", [20.0, 100.0, 400.0])
def test_mass_balance_the_flux_through_a_downwind_plane_is_the_emission_rate(x: float) -> None:
    assert _flux(WEST, x, q=2.5) == pytest.approx(2.5, rel=0.01)


def test_mass_balance_under_a_low_lid_and_when_mixed_through_it() -> None:
    low = Weather(wind_speed_ms=2.0, wind_from_deg=270.0, mixing_height_m=60.0, stability="C")
    # σz ≈ 0.2 x: reflected between ground and lid at 200 m, evenly mixed beyond 300 m.
    assert _flux(low, 200.0, top=60.0) == pytest.approx(1.0, rel=0.01)
    assert _flux(low, 1000.0, top=60.0) == pytest.approx(1.0, rel=0.01)


@pytest.mark.parametrize("stability", ["C", "D", "E"])
@pytest.mark.parametrize("height", [0.0, 1.5, 3.0])
def test_concentration_falls_with_distance_downwind(stability: str, height: float) -> None:
    # At heights up to the initial spread σz0 (3 m); higher up the plume first has to reach the receptor.
    weather = Weather(wind_from_deg=270.0, stability=stability)  # type: ignore[arg-type]
    src = [PointSource(0.0, 0.0, 1.0)]
    values = [concentration(src, (x, 0.0, height), weather) for x in (2, 5, 10, 20, 50, 100, 300, 1000)]
    assert all(a > b for a, b in itertools.pairwise(values))


def test_a_line_of_sources_falls_off_away_from_the_road() -> None:
    road = [PointSource(0.0, float(y), 0.01) for y in range(-300, 301, 5)]  # a north-south road
    values = [concentration(road, (x, 0.0, 3.0), WEST) for x in (3, 10, 30, 100)]
    assert all(a > b for a, b in itertools.pairwise(values))


def test_zero_emissions_give_the_background() -> None:
    silent = [PointSource(float(x), 0.0, 0.0) for x in range(0, 50, 5)]
    assert concentration(silent, (60.0, 0.0, 3.0), WEST, background=20.0) == 20.0
    assert concentration([], (60.0, 0.0, 3.0), WEST, background=8.0) == 8.0


def test_a_receptor_upwind_gets_only_the_background() -> None:
    assert concentration([PointSource(0.0, 0.0, 5.0)], (-10.0, 0.0, 3.0), WEST, 12.0) == 12.0


def test_the_wind_direction_is_where_it_comes_from() -> None:
    src = [PointSource(0.0, 0.0, 1.0)]
    south_west = Weather(wind_from_deg=225.0)
    assert concentration(src, (20.0, 20.0, 1.0), south_west) > 0  # north-east of the source
    assert concentration(src, (-20.0, -20.0, 1.0), south_west) == 0


def test_refusals() -> None:
    with pytest.raises(ConfigError, match="calm"):
        Weather(wind_speed_ms=0.2)
    with pytest.raises(ConfigError, match="mixing height"):
        Weather(mixing_height_m=0.0)
    with pytest.raises(ConfigError, match="negative"):
        concentration([PointSource(0.0, 0.0, -1.0)], (5.0, 0.0, 1.0), WEST)
    with pytest.raises(ConfigError, match="background"):
        concentration([], (5.0, 0.0, 1.0), WEST, background=-1.0)
    with pytest.raises(ConfigError, match="between 0 and 1"):
        no2_from_nox(10.0, 1.5, 20.0)


def test_no2_is_the_background_plus_the_primary_share() -> None:
    assert no2_from_nox(40.0, 0.25, 20.0) == pytest.approx(30.0)


def test_factors_are_mass_over_distance_by_detector_class() -> None:
    trips = {
        "passenger": TripTotals(10, 3.0, {"nox": 0.3, "pm10": 0.06, "co2": 900.0}),
        "truck": TripTotals(1, 0.3, {"nox": 0.15, "pm10": 0.03, "co2": 300.0}),
        "bus": TripTotals(1, 0.3, {"nox": 0.45, "pm10": 0.09, "co2": 600.0}),
        "bicycle": TripTotals(2, 0.6, {"nox": 0.0, "pm10": 0.0, "co2": 0.0}),
        "motorcycle": TripTotals(2, 0.6, {"nox": 0.12, "pm10": 0.0, "co2": 60.0}),
    }
    f = factors_from_trips(trips)
    assert f["nox"] == pytest.approx({"car": 0.1, "truck": 1.0, "cyclist": 0.1})  # (0.15+0.45)/0.6
    assert f["co2"]["truck"] == pytest.approx(1500.0)


def test_the_hub_ships_its_default_factors_and_can_turn_them_off() -> None:
    assert AirConfig().emission_factors == DEFAULT_EMISSION_FACTORS
    assert AirConfig().emission_factors is not DEFAULT_EMISSION_FACTORS  # a copy per config
    assert AirConfig(emission_factors={}).emission_factors == {}
    assert {"car", "truck", "cyclist"} <= set(DEFAULT_EMISSION_FACTORS["nox"])


EMISSIONS = """<?xml version="1.0" encoding="UTF-8"?>
<emission-export>
    <timestep time="9.00">
        <vehicle id="a" type="car1" NOx="1000.0" PMx="100.0" CO2="5000.0" lane="n_in_0" x="1.0" y="40.0"/>
    </timestep>
    <timestep time="10.00">
        <vehicle id="a" type="car1" NOx="2000.0" PMx="200.0" CO2="6000.0" lane="s_out_0" x="1.0" y="-12.0"/>
        <vehicle id="b" type="lorry" NOx="4000.0" PMx="300.0" CO2="9000.0" lane=":C_3_0" x="2.0" y="3.0"/>
    </timestep>
    <timestep time="11.00">
        <vehicle id="a" type="car1" NOx="2000.0" PMx="200.0" CO2="6000.0" lane="s_out_1" x="1.0" y="-20.0"/>
        <vehicle id="b" type="lorry" NOx="4000.0" PMx="300.0" CO2="9000.0" lane="e_out_0" x="12.0" y="3.0"/>
    </timestep>
    <timestep time="12.00">
        <vehicle id="b" type="lorry" NOx="4000.0" PMx="300.0" CO2="9000.0" lane="e_out_0" x="20.0" y="3.0"/>
    </timestep>
</emission-export>
"""


def test_the_emission_output_gives_mass_cells_and_exit_counts_in_the_window(tmp_path: Path) -> None:
    path = tmp_path / "emissions.xml"
    path.write_text(EMISSIONS)
    got = read_emission_output(
        path,
        {"car1": "passenger", "lorry": "truck"},
        frozenset({"s_out", "e_out"}),
        start_s=10.0,
        end_s=12.0,
        sample_s=1.0,
        cell_m=5.0,
    )
    assert got.window_s == 2.0
    assert got.mass_g["nox"] == pytest.approx({"passenger": 4.0, "truck": 8.0})  # mg/s × 1 s, in g
    assert got.counted == {"passenger": 1, "truck": 1}  # each once, on its first exit-edge sample
    assert sum(c["pm10"] for c in got.cells.values()) == pytest.approx(1.0)
    assert got.cells[(0, -3)]["nox"] == pytest.approx(2.0)  # x 1, y -12 → cell (0, -3)
    assert math.isclose(sum(c["co2"] for c in got.cells.values()), 30.0)


def test_a_vehicle_that_exited_before_the_window_is_not_counted_and_slices_add_up(tmp_path: Path) -> None:
    path = tmp_path / "emissions.xml"
    path.write_text(EMISSIONS)
    got = read_emission_output(
        path,
        {"car1": "passenger", "lorry": "truck"},
        frozenset({"s_out", "e_out"}),
        start_s=11.0,
        end_s=13.0,
        sample_s=1.0,
        cell_m=5.0,
        slice_s=1.0,
    )
    assert got.counted == {"truck": 1}  # "a" reached s_out at 10 s, before the window
    assert [s.counted for s in got.slices] == [{"truck": 1}, {}]
    assert [s.window_s for s in got.slices] == [1.0, 1.0]
    assert sum(s.mass_g["nox"]["truck"] for s in got.slices) == pytest.approx(got.mass_g["nox"]["truck"])
