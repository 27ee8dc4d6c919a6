"""Calibration (linear, US EPA PM2.5), the raw → cleaned → calibrated stages, means with coverage
in local time, and the index of a location by the data rules."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given
from hypothesis import strategies as st

from roadside.cloud.air import aggregate, indexing, stages
from roadside.cloud.air.stages import ChannelPair, CleaningRules, Measurement
from roadside.cloud.air.traffic import TrafficHour, emissions, pearson
from roadside.shared.air.calibration import (
    CalibrationBook,
    CalibrationError,
    CalibrationVersion,
    EpaPm25,
    Linear,
    apply,
    barkjohn_2021,
    barkjohn_2022,
)
from roadside.shared.air.standards import IndexReport

# -- calibration ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("pa", "rh", "expected"),
    [
        (20.0, 60.0, 0.524 * 20 - 0.0862 * 60 + 5.75),  # 11.058
        (100.0, 60.0, 0.786 * 100 - 0.0862 * 60 + 5.75),  # 79.178
        (300.0, 60.0, 2.966 + 0.69 * 300 + 8.84e-4 * 300**2),  # 289.526, no RH term
        (40.0, 50.0, (0.786 * 0.5 + 0.524 * 0.5) * 40 - 0.0862 * 50 + 5.75),  # halfway across 30-50
    ],
)
def test_epa_2022_correction_by_hand(pa: float, rh: float, expected: float) -> None:
    assert barkjohn_2022(pa, rh) == pytest.approx(expected)


def test_epa_2021_is_the_linear_form_and_2022_agrees_with_it_below_30() -> None:
    assert barkjohn_2021(20.0, 60.0) == pytest.approx(11.058)
    assert barkjohn_2022(29.9, 40.0) == pytest.approx(barkjohn_2021(29.9, 40.0))
    assert barkjohn_2021(300.0, 60.0) == pytest.approx(0.524 * 300 - 0.0862 * 60 + 5.75)


@pytest.mark.parametrize("edge", [30.0, 50.0, 210.0, 260.0])
def test_epa_2022_has_no_jump_at_its_seams(edge: float) -> None:
    assert barkjohn_2022(edge - 1e-9, 55.0) == pytest.approx(barkjohn_2022(edge, 55.0), abs=1e-6)


@given(st.floats(0, 1000), st.floats(0, 100))
def test_epa_2022_rises_with_the_sensor(pa: float, rh: float) -> None:
    assert barkjohn_2022(pa + 1.0, rh) > barkjohn_2022(pa, rh)


def test_apply_needs_rh_where_the_method_does() -> None:
    assert apply(Linear(slope=0.5, intercept=2.0), 10.0) == 7.0
    assert apply(Linear(slope=1.0, rh_coefficient=-0.1), 10.0, rh=50.0) == pytest.approx(5.0)
    with pytest.raises(CalibrationError, match="relative humidity"):
        apply(EpaPm25(), 10.0)
    with pytest.raises(CalibrationError):
        apply(EpaPm25(), 10.0, rh=140.0)


def _version(version: int, method: Linear | EpaPm25, valid_from: float = 0.0) -> CalibrationVersion:
    return CalibrationVersion("air-1", "pm25_cf1", version, method, valid_from)


def test_the_calibration_book_keeps_history_and_refuses_rewriting_it() -> None:
    v1, v2 = _version(1, Linear(0.5)), _version(2, EpaPm25(), valid_from=1000.0)
    book = CalibrationBook.of([v2, v1])
    assert book.in_effect("air-1", "pm25_cf1", 999.0) == v1
    assert book.in_effect("air-1", "pm25_cf1", 1000.0) == v2
    assert book.in_effect("air-2", "pm25_cf1", 1000.0) is None
    book.add(_version(1, Linear(0.5)))  # the same again: nothing changes
    with pytest.raises(CalibrationError, match="new version"):
        book.add(_version(1, Linear(0.6)))
    with pytest.raises(CalibrationError, match="older"):
        book.add(_version(0, Linear(1.0)))
    with pytest.raises(CalibrationError, match="takes effect before"):
        book.add(_version(3, Linear(1.0), valid_from=500.0))
    assert v1.label == "air-1/pm25_cf1/v1"
    assert v1.fingerprint != _version(1, Linear(0.6)).fingerprint


# -- stages -------------------------------------------------------------------------------------


def m(ts: float, sensor: str, parameter: str, value: float, quality: str = "ok") -> Measurement:
    unit = "%" if parameter == "rh" else "ug/m3"
    return stages.raw(ts, sensor, parameter, value, unit, quality)


def test_cleaning_flags_each_rule() -> None:
    rules = CleaningRules(pairs=(ChannelPair("pa-a", "pa-b", "pm25"),))
    batch = [
        m(0, "pa-a", "pm25", 10.0), m(0, "pa-b", "pm25", 40.0),  # 30 apart and 120 %: disagree
        m(60, "pa-a", "pm25", 10.0), m(60, "pa-b", "pm25", 14.0),  # 4 apart: agree
        m(0, "pa-a", "rh", 97.0), m(60, "pa-a", "rh", 80.0),
        # Beyond 90 s of the partner's readings, so no pair to compare with:
        m(400, "pa-a", "pm25", -0.4), m(460, "pa-a", "pm25", 9999.0, "out_of_range"),
        m(520, "pa-a", "pm25", 11.0, "dropout"),
    ]  # fmt: skip
    cleaned = stages.clean(batch, rules)
    flags = [sorted(c.flags) for c in cleaned]
    assert flags[0] == ["channel_disagreement", "rh_high"]
    assert flags[1] == ["channel_disagreement", "rh_high"]  # pa-b has no RH of its own: pa-a's counts
    assert flags[2] == flags[3] == []
    assert flags[6] == ["negative"]
    assert flags[7] == ["out_of_range"]  # not also "negative" or anything else
    assert flags[8] == ["dropout"]
    assert [c.valid for c in cleaned[6:]] == [True, False, True]  # negative and dropout keep a value valid
    assert {c.stage for c in cleaned} == {"cleaned"}
    assert [c.value for c in cleaned] == [b.value for b in batch]  # cleaning never changes a value


def test_calibration_keeps_its_label_and_flags_missing_rh() -> None:
    book = CalibrationBook.of([CalibrationVersion("pa-a", "pm25_cf1", 3, EpaPm25(), 0.0)])
    cleaned = stages.clean(
        [m(0, "pa-a", "pm25_cf1", 20.0), m(0, "pa-a", "rh", 60.0), m(600, "pa-a", "pm25_cf1", 20.0),
         m(0, "other", "pm25", 5.0)],
        CleaningRules(),
    )  # fmt: skip
    calibrated = stages.calibrate(cleaned, book)
    assert calibrated[0].value == pytest.approx(11.058)
    assert calibrated[0].calibration == "pa-a/pm25_cf1/v3"
    assert "rh_missing" in calibrated[2].flags  # no RH within 90 s of it
    assert not calibrated[2].valid
    assert (calibrated[3].value, calibrated[3].calibration) == (5.0, None)  # uncalibrated, said so


# -- aggregates -----------------------------------------------------------------------------------

BERLIN = ZoneInfo("Europe/Berlin")
KOLKATA = ZoneInfo("Asia/Kolkata")


def _minutes(start: datetime, n: int, value: float = 10.0, parameter: str = "pm25") -> list[Measurement]:
    base = start.timestamp()
    return [stages.raw(base + 60 * i, "s1", parameter, value, "ug/m3", "ok") for i in range(n)]


def test_hourly_coverage_and_the_75_percent_rule() -> None:
    start = datetime(2024, 6, 3, 8, tzinfo=UTC)
    hours = aggregate.hourly(_minutes(start, 45) + _minutes(start + timedelta(hours=1), 44), BERLIN, 60)
    assert [(h.observed, h.expected, h.counts) for h in hours] == [(45, 60, True), (44, 60, False)]
    assert hours[0].percent == 75.0
    assert hours[0].start == datetime(2024, 6, 3, 10, tzinfo=BERLIN)  # local hours


def test_invalid_values_do_not_count() -> None:
    start = datetime(2024, 6, 3, 8, tzinfo=UTC)
    batch = _minutes(start, 60)
    batch[:20] = [stages.raw(x.ts, "s1", "pm25", 999.0, "ug/m3", "spike") for x in batch[:20]]
    (hour,) = aggregate.hourly(batch, BERLIN, 60)
    assert (hour.observed, hour.mean, hour.counts) == (40, 10.0, False)


def test_half_hour_zones_have_half_hour_hours() -> None:
    start = datetime(2024, 6, 3, 8, 30, tzinfo=UTC)  # 14:00 in Kolkata (+05:30)
    (hour,) = aggregate.hourly(_minutes(start, 60), KOLKATA, 60)
    assert hour.start == datetime(2024, 6, 3, 14, tzinfo=KOLKATA)


def test_days_are_local_and_a_daylight_saving_day_has_23_hours() -> None:
    # 31 March 2024: Berlin springs forward; the local day has 23 hours.
    day_start = datetime(2024, 3, 31, tzinfo=BERLIN)
    readings = []
    for h in range(23):
        readings += _minutes(datetime.fromtimestamp(day_start.timestamp() + 3600 * h, UTC), 60, float(h))
    hours = aggregate.hourly(readings, BERLIN, 60)
    (day,) = aggregate.daily(hours, BERLIN)
    assert (day.expected, day.observed, day.counts) == (23, 23, True)
    assert day.start == day_start
    assert day.mean == pytest.approx(sum(range(23)) / 23)
    (short,) = aggregate.daily(hours[:17], BERLIN)
    assert (short.observed, short.counts) == (17, False)  # 17 of 23 is below 75 %


def test_rolling_eight_hour_mean_needs_six_hours() -> None:
    assert aggregate.rolling_mean([1.0, 2.0, 3.0, 4.0, 5.0, 6.0, None, None]) == 3.5
    assert aggregate.rolling_mean([1.0, 2.0, 3.0, 4.0, 5.0, None, None, None]) is None


# -- the index of a location ----------------------------------------------------------------------

NOW = datetime(2024, 6, 3, 12, 20, tzinfo=UTC)


def _hours(parameter: str, values: list[float | None], unit: str = "ug/m3") -> list[aggregate.Aggregate]:
    """Counting hourly means, values[0] the last whole hour before NOW."""
    last = datetime(2024, 6, 3, 11, tzinfo=UTC)
    out = []
    for age, v in enumerate(values):
        start = (last - timedelta(hours=age)).astimezone(UTC)
        if v is not None:
            out.append(aggregate.Aggregate("s1", parameter, unit, "1h", start, start + timedelta(hours=1),
                                           v, v, v, 60, 60))  # fmt: skip
    return out


def test_current_epa_index_uses_the_nowcast_and_the_last_hour() -> None:
    hours = _hours("pm25", [36.0] * 12) + _hours("no2", [120.0, 10.0])
    report = indexing.current_index("us-epa", hours, NOW, ZoneInfo("UTC"))
    assert isinstance(report, IndexReport)
    assert report.by_pollutant == {"pm25": 102, "no2": 105}  # NowCast 36.0 → 102; NO2 120 ppb → 105
    assert report.responsible == "no2"


def test_no_nowcast_without_two_of_the_three_last_hours_and_no_index_without_anything() -> None:
    hours = _hours("pm25", [None, None, 20.0, 20.0])
    report = indexing.current_index("us-epa", hours, NOW, ZoneInfo("UTC"))
    assert isinstance(report, indexing.NoIndex)
    eu = indexing.current_index("eu-eaqi", _hours("no2", [30.0]), NOW, ZoneInfo("UTC"))
    assert isinstance(eu, indexing.NoIndex)
    assert "pm25 or pm10" in eu.reason  # a traffic station's EAQI needs PM as well


def test_daily_index_from_daily_pm_and_the_highest_hour() -> None:
    day = datetime(2024, 6, 3, tzinfo=UTC)
    hours = [
        aggregate.Aggregate("s1", "no2", "ppb", "1h", day + timedelta(hours=h), day + timedelta(hours=h + 1),
                            40.0 + h, 40.0, 40.0, 60, 60)
        for h in range(20)
    ]  # fmt: skip
    pm_day = aggregate.Aggregate(
        "s1", "pm25", "ug/m3", "1d", day, day + timedelta(days=1), 12.0, 1, 1, 20, 24
    )
    report = indexing.daily_index("us-epa", hours, [pm_day], "traffic")
    assert isinstance(report, IndexReport)
    # PM2.5 12.0 → 49 / 26.3 × 2.9 + 51 = 56.4; NO2's highest hour 59 ppb → 49 / 46 × 5 + 51 = 56.3.
    assert report.by_pollutant == {"pm25": 56, "no2": 56}
    short = indexing.daily_index("us-epa", hours[:17], [], "traffic")  # 17 hours: no daily maximum
    assert isinstance(short, indexing.NoIndex)


def test_category_worsening() -> None:
    assert indexing.worsened("us-epa", "Good", "Moderate")
    assert not indexing.worsened("us-epa", "Moderate", "Good")
    assert not indexing.worsened("us-epa", None, "Hazardous")  # a first index
    assert indexing.worsened("eu-caqi", "Low", "High")


# -- traffic and air --------------------------------------------------------------------------------


def test_pearson_by_hand() -> None:
    assert pearson([(1.0, 2.0), (2.0, 4.0), (3.0, 6.0)]) == pytest.approx(1.0)
    assert pearson([(1.0, 3.0), (2.0, 2.0), (3.0, 1.0)]) == pytest.approx(-1.0)
    # x = 1, 2, 3, 4; y = 1, 3, 2, 4: sxy = 4, sxx = syy = 5 → r = 0.8.
    assert pearson([(1.0, 1.0), (2.0, 3.0), (3.0, 2.0), (4.0, 4.0)]) == pytest.approx(0.8)
    assert pearson([(1.0, 5.0), (2.0, 5.0), (3.0, 5.0)]) is None  # a constant series
    assert pearson([(1.0, 1.0), (2.0, 2.0)]) is None


def test_emission_estimate_by_hand() -> None:
    t = datetime(2025, 5, 1, 8, tzinfo=UTC)
    hours = [TrafficHour(t, {"car": 100, "truck": 10}, {}), TrafficHour(t, {"car": 50, "bus": 2}, {})]
    factors = {"nox": {"car": 0.3, "truck": 4.0}}  # g/vehicle-km; buses have none here
    assert emissions(hours, factors, 0.2) == {"nox": pytest.approx((150 * 0.3 + 10 * 4.0) * 0.2)}


def test_rh_from_another_sensor_at_the_location_when_the_sensor_has_none() -> None:
    book = CalibrationBook.of([CalibrationVersion("pm", "pm25_cf1", 1, EpaPm25(), 0.0)])
    batch = [m(0, "pm", "pm25_cf1", 20.0), m(30, "board", "rh", 97.0), m(300, "board", "rh", 60.0),
             m(290, "pm", "pm25_cf1", 20.0)]  # fmt: skip
    cleaned = stages.clean(batch, CleaningRules())
    assert "rh_high" in cleaned[0].flags  # the board's 97 % thirty seconds later
    calibrated = stages.calibrate(cleaned, book)
    assert calibrated[0].value == pytest.approx(barkjohn_2022(20.0, 97.0))
    assert calibrated[3].value == pytest.approx(barkjohn_2022(20.0, 60.0))  # the nearer board reading


def test_an_undefined_or_unsupported_pollutant_leaves_the_others_index() -> None:
    zone = ZoneInfo("UTC")
    hours = _hours("pm25", [36.0] * 12) + _hours("so2", [400.0, 400.0]) + _hours("co", [1.0] * 8)
    epa_now = indexing.current_index("us-epa", hours, NOW, zone)
    assert isinstance(epa_now, IndexReport)
    assert set(epa_now.by_pollutant) == {"pm25", "co"}  # 1-hour SO2 above 304 ppb defines no AQI
    eu = indexing.current_index(
        "eu-eaqi", _hours("pm25", [20.0] * 24) + _hours("no2", [30.0]) + _hours("co", [1.0] * 8), NOW, zone
    )
    assert isinstance(eu, IndexReport)
    assert set(eu.by_pollutant) == {"pm25", "no2"}  # the EAQI has no CO
