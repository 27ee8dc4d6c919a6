"""The air-quality indices against numbers worked by hand from the published tables.

US EPA: Technical Assistance Document for the Reporting of Daily Air Quality
(EPA-454/B-24-002, May 2024), Table 6; NowCast: AirNow's PM and ozone
descriptions; EAQI: the EEA's six bands; CAQI: Citeair's grids
(docs/air-quality.md). The expected values below are typed from those
documents, not read from the code's tables.
"""

from __future__ import annotations

import json
from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st
from typer.testing import CliRunner

from roadside.shared.air import epa, europe, nowcast, standards, units
from roadside.shared.air.cli import air_app
from roadside.shared.errors import AirIndexError, RoadsideError

# (pollutant, averaging, concentration in the table's unit, AQI) at both edges of every row.
EPA_EDGES = [
    ("o3", "8h", "0.000", 0), ("o3", "8h", "0.054", 50), ("o3", "8h", "0.055", 51),
    ("o3", "8h", "0.070", 100), ("o3", "8h", "0.071", 101), ("o3", "8h", "0.085", 150),
    ("o3", "8h", "0.086", 151), ("o3", "8h", "0.105", 200), ("o3", "8h", "0.106", 201),
    ("o3", "8h", "0.200", 300),
    ("o3", "1h", "0.125", 101), ("o3", "1h", "0.164", 150), ("o3", "1h", "0.165", 151),
    ("o3", "1h", "0.204", 200), ("o3", "1h", "0.205", 201), ("o3", "1h", "0.404", 300),
    ("o3", "1h", "0.405", 301), ("o3", "1h", "0.604", 500),
    ("pm25", "24h", "0.0", 0), ("pm25", "24h", "9.0", 50), ("pm25", "24h", "9.1", 51),
    ("pm25", "24h", "35.4", 100), ("pm25", "24h", "35.5", 101), ("pm25", "24h", "55.4", 150),
    ("pm25", "24h", "55.5", 151), ("pm25", "24h", "125.4", 200), ("pm25", "24h", "125.5", 201),
    ("pm25", "24h", "225.4", 300), ("pm25", "24h", "225.5", 301), ("pm25", "24h", "325.4", 500),
    ("pm10", "24h", "0", 0), ("pm10", "24h", "54", 50), ("pm10", "24h", "55", 51),
    ("pm10", "24h", "154", 100), ("pm10", "24h", "155", 101), ("pm10", "24h", "254", 150),
    ("pm10", "24h", "255", 151), ("pm10", "24h", "354", 200), ("pm10", "24h", "355", 201),
    ("pm10", "24h", "424", 300), ("pm10", "24h", "425", 301), ("pm10", "24h", "604", 500),
    ("co", "8h", "0.0", 0), ("co", "8h", "4.4", 50), ("co", "8h", "4.5", 51),
    ("co", "8h", "9.4", 100), ("co", "8h", "9.5", 101), ("co", "8h", "12.4", 150),
    ("co", "8h", "12.5", 151), ("co", "8h", "15.4", 200), ("co", "8h", "15.5", 201),
    ("co", "8h", "30.4", 300), ("co", "8h", "30.5", 301), ("co", "8h", "50.4", 500),
    ("so2", "1h", "0", 0), ("so2", "1h", "35", 50), ("so2", "1h", "36", 51),
    ("so2", "1h", "75", 100), ("so2", "1h", "76", 101), ("so2", "1h", "185", 150),
    ("so2", "1h", "186", 151), ("so2", "1h", "304", 200),
    ("so2", "24h", "305", 201), ("so2", "24h", "604", 300), ("so2", "24h", "605", 301),
    ("so2", "24h", "1004", 500),
    ("no2", "1h", "0", 0), ("no2", "1h", "53", 50), ("no2", "1h", "54", 51),
    ("no2", "1h", "100", 100), ("no2", "1h", "101", 101), ("no2", "1h", "360", 150),
    ("no2", "1h", "361", 151), ("no2", "1h", "649", 200), ("no2", "1h", "650", 201),
    ("no2", "1h", "1249", 300), ("no2", "1h", "1250", 301), ("no2", "1h", "2049", 500),
]  # fmt: skip


@pytest.mark.parametrize(("pollutant", "averaging", "concentration", "expected"), EPA_EDGES)
def test_every_breakpoint_edge_of_the_2024_table(
    pollutant: epa.Pollutant, averaging: epa.Averaging, concentration: str, expected: int
) -> None:
    assert epa.sub_index(pollutant, averaging, Decimal(concentration)).value == expected
    assert epa.sub_index(pollutant, averaging, float(concentration)).value == expected


@pytest.mark.parametrize(
    ("pollutant", "averaging", "concentration", "expected"),
    [
        ("pm25", "24h", 9.09, 50),  # truncated to 9.0, not rounded to 9.1
        ("pm25", "24h", 35.49, 100),
        ("pm25", "24h", 35.9, 102),  # 35.9 is 35.8999... as a float: decimal truncation keeps 35.9
        ("pm25", "24h", 12.0, 56),  # the old Good edge: 49 / 26.3 × 2.9 + 51 = 56.40
        ("pm25", "24h", 150.0, 225),  # 99 / 99.9 × 24.5 + 201 = 225.28
        ("pm25", "24h", 250.0, 350),  # 199 / 99.9 × 24.5 + 301 = 349.80
        ("pm10", "24h", 54.9, 50),  # PM10 is truncated to an integer
        ("pm10", "24h", 100, 73),  # 49 / 99 × 45 + 51 = 73.27
        ("o3", "8h", 0.0789, 126),  # truncated to 0.078
        ("o3", "8h", 0.072, 105),  # 49 / 0.014 × 0.001 + 101 = 104.5: half up, not to even
        ("co", "8h", 4.49, 50),
        ("no2", "1h", 120, 105),  # 49 / 259 × 19 + 101 = 104.59
        ("no2", "1h", 53.99, 50),
    ],
)
def test_truncation_and_hand_computed_values(
    pollutant: epa.Pollutant, averaging: epa.Averaging, concentration: float, expected: int
) -> None:
    assert epa.sub_index(pollutant, averaging, concentration).value == expected


def test_the_tads_worked_example() -> None:
    """TAD, "Calculating the AQI": 8-hour ozone 0.07853 ppm, PM2.5 35.9 µg/m³, CO 8.4 ppm → 126, ozone."""
    result = epa.aqi({("o3", "8h"): 0.07853, ("pm25", "24h"): 35.9, ("co", "8h"): 8.4})
    assert {p: s.value for p, s in result.by_pollutant.items()} == {"pm25": 102, "o3": 126, "co": 90}
    assert (result.overall, result.responsible) == (126, "o3")
    assert result.category.name == "Unhealthy for Sensitive Groups"
    assert result.category.color == "orange"


@pytest.mark.parametrize(
    ("index", "name"),
    [(0, "Good"), (50, "Good"), (51, "Moderate"), (100, "Moderate"), (101, "Unhealthy for Sensitive Groups"),
     (150, "Unhealthy for Sensitive Groups"), (151, "Unhealthy"), (200, "Unhealthy"), (201, "Very Unhealthy"),
     (300, "Very Unhealthy"), (301, "Hazardous"), (500, "Hazardous")],
)  # fmt: skip
def test_category_edges(index: int, name: str) -> None:
    assert epa.category(index).name == name


def test_above_the_scale_is_500_and_says_so() -> None:
    sub = epa.sub_index("pm25", "24h", 325.5)
    assert (sub.value, sub.beyond_index) == (500, True)
    assert epa.sub_index("pm25", "24h", 325.4).beyond_index is False
    report = standards.compute("us-epa", {"pm25": 900.0})
    assert report.to_json()["beyond_index"] == ["pm25"]


@pytest.mark.parametrize(
    ("pollutant", "averaging", "concentration", "says"),
    [
        ("o3", "8h", 0.201, "use the 1h value"),
        ("o3", "1h", 0.124, "starts at 101"),
        ("so2", "1h", 305, "use the 24h value"),
        ("so2", "24h", 304, "starts at 201"),
        ("no2", "24h", 40, "defined for ['1h']"),
        ("pm25", "1h", 10, "defined for ['24h']"),
    ],
)
def test_periods_that_define_no_index_say_which_to_use(
    pollutant: epa.Pollutant, averaging: epa.Averaging, concentration: float, says: str
) -> None:
    with pytest.raises(epa.UndefinedIndexError, match=r".*") as caught:
        epa.sub_index(pollutant, averaging, concentration)
    assert says in str(caught.value)
    assert isinstance(caught.value, RoadsideError)


def test_ozone_counts_with_the_higher_of_its_8_hour_and_1_hour_indices() -> None:
    both = epa.aqi({("o3", "8h"): 0.080, ("o3", "1h"): 0.170})  # 8-hour 133, 1-hour 157
    assert both.by_pollutant["o3"].value == 157
    assert both.by_pollutant["o3"].averaging == "1h"
    # 1-hour ozone below 0.125 ppm defines nothing, and the 8-hour value carries the index.
    assert epa.aqi({("o3", "8h"): 0.060, ("o3", "1h"): 0.100}).overall == 67  # 49 / 0.015 × 0.005 + 51 = 67.3
    # 8-hour ozone above 0.200 ppm defines nothing: the 1-hour value carries it.
    assert epa.aqi({("o3", "8h"): 0.250, ("o3", "1h"): 0.450}).overall == 346  # 199 / 0.199 × 0.045 + 301
    with pytest.raises(epa.UndefinedIndexError):
        epa.aqi({("o3", "8h"): 0.250})


@pytest.mark.parametrize("bad", [-0.1, float("nan"), float("inf")])
def test_what_is_not_a_concentration_is_refused(bad: float) -> None:
    with pytest.raises(AirIndexError):
        epa.sub_index("pm25", "24h", bad)
    with pytest.raises(AirIndexError):
        europe.caqi_value("no2", "1h", bad)


@given(st.sampled_from(sorted(epa.TABLES)), st.floats(0, 2100), st.floats(0, 2100))
def test_the_index_never_falls_as_the_concentration_rises(
    key: tuple[epa.Pollutant, epa.Averaging], a: float, b: float
) -> None:
    low, high = sorted((a, b))
    try:
        first = epa.sub_index(*key, low)
        second = epa.sub_index(*key, high)
    except epa.UndefinedIndexError:
        return
    assert 0 <= first.value <= second.value <= 500


# NowCast


def test_nowcast_of_a_steady_series_is_its_mean() -> None:
    result = nowcast.nowcast("pm25", [10.0] * 12)
    assert (result.value, result.weight, result.hours_used) == (Decimal("10.0"), 1.0, 12)


def test_pm_weight_factor_has_a_floor_of_one_half() -> None:
    # c_min / c_max = 0.1, raised to 0.5. Σ 0.5^k for k = 1..11 is 1 - 0.5^11.
    result = nowcast.nowcast("pm25", [100.0] + [10.0] * 11)
    numerator = 100 + 10 * (1 - 0.5**11)
    denominator = 1 + (1 - 0.5**11)
    assert result.weight == 0.5
    assert numerator / denominator == pytest.approx(55.011, abs=1e-3)
    assert result.value == Decimal("55.0")  # truncated to 0.1 µg/m³


def test_pm_weight_factor_above_the_floor() -> None:
    # 12 hours from 20 down to 14.5: w = 14.5 / 20 = 0.725.
    hours = [20.0 - 0.5 * i for i in range(12)]
    w = 14.5 / 20
    expected = sum(w**i * c for i, c in enumerate(hours)) / sum(w**i for i in range(12))
    result = nowcast.nowcast("pm25", hours)
    assert result.weight == pytest.approx(0.725)
    assert result.value == Decimal(str(int(expected * 10) / 10))


def test_ozone_nowcast_airnow_example_with_a_missing_hour() -> None:
    """AirNow-Tech's ozone example: 8 hours, no weight floor, the missing hour left out of both sums."""
    hours = [63, 69, 80, 74, 60, None, 35, 22]
    w = 22 / 80  # (80 - 22) / 80 = 0.725 scaled rate, so w = 0.275
    numerator = 63 + 69 * w + 80 * w**2 + 74 * w**3 + 60 * w**4 + 35 * w**6 + 22 * w**7
    denominator = 1 + w + w**2 + w**3 + w**4 + w**6 + w**7
    assert numerator == pytest.approx(89.925, abs=1e-3)  # the example's step 4
    result = nowcast.nowcast("o3", hours)
    assert result.weight == pytest.approx(0.275)
    assert result.hours_used == 7
    assert numerator / denominator == pytest.approx(65.27, abs=0.01)
    assert result.value == Decimal(65)  # ppb, truncated


def test_ozone_reads_only_8_hours_and_pm_12() -> None:
    assert nowcast.nowcast("o3", [40.0] * 8 + [400.0] * 4).value == Decimal(40)
    assert nowcast.nowcast("pm10", [40.0] * 12 + [400.0] * 4).value == Decimal(40)


@pytest.mark.parametrize(
    ("hours", "ok"),
    [
        ([None, None, 5.0] + [5.0] * 9, False),
        ([5.0, None, None] + [5.0] * 9, False),
        ([None, 5.0, None] + [5.0] * 9, False),
        ([None, 5.0, 5.0], True),
        ([5.0, None, 5.0], True),
        ([5.0, 5.0], True),  # a short history: the hours not given are missing
        ([5.0], False),
        ([], False),
    ],
)
def test_two_of_the_three_most_recent_hours_are_required(hours: list[float | None], ok: bool) -> None:
    if ok:
        assert nowcast.nowcast("pm25", hours).value == Decimal("5.0")
    else:
        with pytest.raises(nowcast.InsufficientDataError):
            nowcast.nowcast("pm25", hours)


def test_nowcast_of_zeros_and_of_bad_hours() -> None:
    assert nowcast.nowcast("pm25", [0.0] * 12).value == Decimal("0.0")
    with pytest.raises(AirIndexError):
        nowcast.nowcast("pm25", [5.0, -1.0, 5.0])


@given(st.lists(st.one_of(st.none(), st.floats(0, 1000)), min_size=3, max_size=12))
def test_nowcast_lies_between_the_hours_it_weighs(hours: list[float | None]) -> None:
    try:
        result = nowcast.nowcast("pm25", hours)
    except nowcast.InsufficientDataError:
        return
    valid = [h for h in hours if h is not None]
    assert Decimal(repr(min(valid))) - Decimal("0.1") <= result.value <= Decimal(repr(max(valid)))
    assert 0.5 <= result.weight <= 1.0


# European indices

EAQI_PUBLISHED = {  # µg/m³: upper edges of Good, Fair, Moderate, Poor, Very poor
    ("pm25", "24h"): (10, 20, 25, 50, 75),
    ("pm10", "24h"): (20, 40, 50, 100, 150),
    ("no2", "1h"): (40, 90, 120, 230, 340),
    ("o3", "1h"): (50, 100, 130, 240, 380),
    ("so2", "1h"): (100, 200, 350, 500, 750),
}


@pytest.mark.parametrize("key", sorted(EAQI_PUBLISHED))
def test_eaqi_band_edges(key: tuple[epa.Pollutant, epa.Averaging]) -> None:
    for level, edge in enumerate(EAQI_PUBLISHED[key], 1):
        assert europe.eaqi_level(*key, edge) == level  # an upper edge belongs to its band
        assert europe.eaqi_level(*key, edge + 0.01) == level + 1
    assert europe.eaqi_level(*key, 0) == 1
    assert europe.eaqi_level(*key, 5000) == 6


def test_eaqi_is_the_worst_band_and_names_what_a_station_lacks() -> None:
    result = europe.eaqi({("pm25", "24h"): 22.0, ("no2", "1h"): 95.0}, station="traffic")
    assert (result.overall, result.category, result.responsible) == (3, "Moderate", "pm25")
    assert result.missing == ()
    assert europe.eaqi({("no2", "1h"): 10.0}, station="background").missing == ("o3", "pm25 or pm10")


@pytest.mark.parametrize(
    ("station", "pollutant", "averaging", "ugm3", "expected"),
    [
        ("traffic", "no2", "1h", 75, 38),  # 25 + 25 × 25 / 50 = 37.5, half up
        ("traffic", "no2", "1h", 400, 100),
        ("traffic", "no2", "1h", 500, 113),  # beyond the grid: 100 + 25 × 100 / 200 = 112.5
        ("traffic", "pm10", "24h", 15, 25),
        ("traffic", "pm10", "24h", 16, 27),  # 25 + 25 × 1 / 15 = 26.67
        ("traffic", "pm10", "1h", 90, 75),
        ("traffic", "pm25", "1h", 55, 75),
        ("traffic", "pm25", "24h", 60, 100),
        ("traffic", "co", "8h", 7500, 50),
        ("background", "o3", "1h", 180, 75),
        ("background", "so2", "1h", 350, 75),
        ("background", "so2", "1h", 0, 0),
    ],
)
def test_caqi_grid_points_and_interpolation(
    station: europe.Station, pollutant: epa.Pollutant, averaging: epa.Averaging, ugm3: float, expected: int
) -> None:
    assert europe.caqi_value(pollutant, averaging, ugm3, station) == expected


@pytest.mark.parametrize(
    ("value", "name"),
    [(0, "Very low"), (25, "Very low"), (26, "Low"), (50, "Low"), (51, "Medium"), (75, "Medium"),
     (76, "High"), (100, "High"), (101, "Very high"), (250, "Very high")],
)  # fmt: skip
def test_caqi_classes(value: int, name: str) -> None:
    assert europe.caqi_class(value) == name


def test_the_traffic_grid_has_no_ozone_and_the_background_grid_needs_it() -> None:
    with pytest.raises(AirIndexError, match="traffic"):
        europe.caqi({("o3", "1h"): 50.0}, station="traffic")
    result = europe.caqi({("no2", "1h"): 50.0, ("pm10", "1h"): 10.0}, station="background")
    assert result.missing == ("o3",)
    both = europe.caqi({("pm10", "1h"): 50.0, ("pm10", "24h"): 50.0, ("no2", "1h"): 1.0})
    assert (both.by_pollutant["pm10"], both.averaging["pm10"]) == (75, "24h")


def test_gas_conversions_at_the_eu_and_us_reference_temperatures() -> None:
    # Published factors: NO2 1 ppb = 1.91 µg/m³ (20 °C) and 1.88 (25 °C); O3 2.00; SO2 2.66; CO 1 ppm = 1.16 mg/m³.
    assert units.ppb_to_ugm3("no2", 1) == pytest.approx(1.9125, abs=5e-4)
    assert units.ppb_to_ugm3("no2", 1, kelvin=units.US_REFERENCE_K) == pytest.approx(1.880, abs=5e-4)
    assert units.ppb_to_ugm3("o3", 1) == pytest.approx(1.995, abs=5e-4)
    assert units.ppb_to_ugm3("so2", 1) == pytest.approx(2.663, abs=5e-4)
    assert units.ppb_to_ugm3("co", 1000) == pytest.approx(1164.4, abs=0.5)
    assert units.ugm3_to_ppb("no2", units.ppb_to_ugm3("no2", 37.0)) == pytest.approx(37.0)


# The command


def _run(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(air_app, ["index", *args])
    return result.exit_code, result.output


def test_command_us_epa() -> None:
    code, out = _run("--standard", "us-epa", "--pm25", "35.5", "--no2", "120", "--averaging", "24h")
    assert code == 0, out
    assert json.loads(out) == {
        "standard": "us-epa",
        "overall": 105,
        "category": "Unhealthy for Sensitive Groups",
        "responsible": "no2",
        "by_pollutant": {"pm25": 101, "no2": 105},
        "averaging": {"pm25": "24h", "no2": "1h"},  # NO2 has only a 1-hour index
    }


def test_command_european_indices() -> None:
    # NO2 120 ppb at 20 °C is 229.5 µg/m³: Poor (120-230] in the EAQI, 75 + 25 × 29.5 / 200 = 78.7 in CAQI.
    code, out = _run("--standard", "eu-eaqi", "--pm25", "35.5", "--no2", "120", "--averaging", "24h")
    assert code == 0, out
    eaqi = json.loads(out)
    assert (eaqi["overall"], eaqi["category"], eaqi["by_pollutant"]) == (4, "Poor", {"pm25": 4, "no2": 4})
    code, out = _run("--standard", "eu-caqi", "--pm25", "35.5", "--no2", "120", "--averaging", "24h")
    assert code == 0, out
    caqi = json.loads(out)
    assert caqi["by_pollutant"] == {"pm25": 80, "no2": 79}
    assert (caqi["overall"], caqi["category"], caqi["responsible"]) == (80, "High", "pm25")
    assert caqi["missing"] == ["pm10"]


def test_command_ozone_in_ppb_and_co_in_ppm() -> None:
    code, out = _run("--o3", "78.53", "--pm25", "35.9", "--co", "8.4")
    assert code == 0, out
    assert json.loads(out)["by_pollutant"] == {"pm25": 102, "o3": 126, "co": 90}


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["--standard", "cn-aqi", "--pm25", "5"], "--standard must be one of"),
        (["--averaging", "3h", "--pm25", "5"], "--averaging must be one of"),
        (["--standard", "us-epa"], "give at least one concentration"),
        (["--pm25", "-3"], "negative"),
        (["--o3", "250"], "use the 1h value"),
        (["--standard", "eu-eaqi", "--co", "2"], "eu-eaqi has no index for co"),
    ],
)
def test_command_refuses_with_a_message(args: list[str], says: str) -> None:
    code, out = _run(*args)
    assert code == 2
    assert says in out


def test_the_air_rules_import_only_the_standard_library_and_the_exception_tree() -> None:
    """Pure, so the agent, the hub and the command compute the same numbers anywhere (the command adds typer)."""
    import ast
    import sys
    from pathlib import Path

    folder = Path(standards.__file__).parent
    found = []
    for path in sorted(folder.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            names = (
                [node.module or ""] if isinstance(node, ast.ImportFrom) else
                [a.name for a in node.names] if isinstance(node, ast.Import) else []
            )  # fmt: skip
            for name in names:
                top = name.split(".")[0]
                ours = name.startswith("roadside.shared.air") or name == "roadside.shared.errors"
                allowed_here = path.name == "cli.py" and top == "typer"
                if not (ours or top in sys.stdlib_module_names or allowed_here):
                    found.append(f"{path.name}: {name}")
    assert found == []
