"""Air quality in the SUMO world: SUMO's emissions, dispersed to the poles, against the hub's estimate.

SUMO runs a scenario with its emission model on every vehicle (its HBEFA 4
classes by default: ``--device.emissions.probability 1``) and writes two
files: ``--emission-output`` (every vehicle's emission rates and position,
sampled every ``sample_s``) and ``--tripinfo-output`` (each trip's length and
integrated emissions). From them, over a window after a warm-up:

- **SUMO's mass** per pollutant and vehicle class (rate × sample period);
- **where it was emitted**: summed into ``cell_m`` squares, each a ground
  source for :mod:`roadside.sim.dispersion`, which gives NOx, NO2 and PM2.5
  at every pole (the camera poses' positions, ``sensor_height_m`` up);
- **the counts**: vehicles that entered one of the junction's exit edges in
  the window, by class, mapped to the detector's classes
  (:func:`roadside.sim.sumo.render.detector_class`) — SUMO's own counts, what
  a perfect counter would give; the camera path is not in this loop;
- **the hub's estimate** from those counts with the hub's per-class factors
  (:func:`roadside.cloud.air.traffic.emissions`) on the scenario's route
  length, and its relative error against SUMO's mass.

:func:`factors_from_trips` derives per-class factors (g per vehicle-km) from
finished trips: how Roadside's default factors were made (``docs/air-quality.md``).
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final
from xml.etree import ElementTree as ET

from roadside.cloud.air.traffic import TrafficHour, emissions, pearson
from roadside.shared.errors import ConfigError
from roadside.sim.dispersion import NO2_PPB_PER_UG_M3, PointSource, Weather, concentration, no2_from_nox
from roadside.sim.sumo.poses import load_pose_file
from roadside.sim.sumo.render import detector_class
from roadside.sim.sumo.scenarios import Scenario
from roadside.sim.sumo.tools import run_tool

__all__ = [
    "POLLUTANTS",
    "AirSettings",
    "SumoEmissions",
    "TripTotals",
    "air_scenario",
    "factors_from_trips",
    "pole_concentrations",
    "read_emission_output",
    "read_tripinfo",
    "road_length_km",
    "run_sumo_emissions",
    "vehicle_classes",
]

# Roadside's pollutant name → SUMO's attribute (emission-output) and tripinfo's ``<name>_abs``.
# SUMO's NOx is NO2-equivalent mass; its HBEFA 4 PMx is PM10, exhaust and non-exhaust (SUMO's docs).
POLLUTANTS: Final[dict[str, str]] = {"nox": "NOx", "pm10": "PMx", "co2": "CO2"}
_MG_PER_G: Final = 1000.0


@dataclass(frozen=True)
class AirSettings:
    """The run and the air around it (each default is an assumption stated in docs/air-quality.md)."""

    warmup_s: float = 120.0  # simulated seconds before the window: the legs fill with traffic
    window_s: float = 600.0
    sample_s: float = 1.0  # emission-output period
    slice_s: float = 60.0  # the time series' step (the plume crosses 100 m in under a minute at 2 m/s)
    cell_m: float = 5.0
    sensor_height_m: float = 3.0
    weather: Weather = field(default_factory=Weather)
    background_ug_m3: Mapping[str, float] = field(
        default_factory=lambda: {"nox": 30.0, "no2": 20.0, "pm10": 15.0, "pm25": 8.0}
    )
    no2_primary_fraction: float = 0.25  # share of NOx emitted as NO2
    pm25_share: float = 1.0  # of the traffic's PM10 that is PM2.5: 1 is an upper bound (wear is coarser)

    def __post_init__(self) -> None:
        if not 0.0 <= self.pm25_share <= 1.0:
            raise ConfigError(f"pm25_share {self.pm25_share}: a share of PM10, between 0 and 1")
        if min(self.window_s, self.sample_s, self.cell_m, self.slice_s) <= 0 or self.warmup_s < 0:
            raise ConfigError("warm-up must be ≥ 0; window, sample period, slice and cell size positive")


@dataclass(frozen=True)
class TripTotals:
    """Finished trips of one vehicle class: how many, how far, and what they emitted."""

    trips: int
    km: float
    grams: dict[str, float]


@dataclass(frozen=True)
class SumoEmissions:
    """SUMO's emissions in one window (and in its consecutive slices, for a time series)."""

    window_s: float
    mass_g: dict[str, dict[str, float]]  # pollutant → SUMO vehicle class → grams
    cells: dict[tuple[int, int], dict[str, float]]  # cell (ix, iy) → pollutant → grams
    cell_m: float
    counted: dict[str, int]  # SUMO vehicle class → vehicles that entered an exit edge
    slices: tuple[SumoEmissions, ...] = ()


class _Tally:
    def __init__(self) -> None:
        self.mass: dict[str, dict[str, float]] = {p: defaultdict(float) for p in POLLUTANTS}
        self.cells: dict[tuple[int, int], dict[str, float]] = defaultdict(
            lambda: dict.fromkeys(POLLUTANTS, 0.0)
        )
        self.counted: dict[str, int] = defaultdict(int)

    def done(self, window_s: float, cell_m: float, slices: tuple[SumoEmissions, ...] = ()) -> SumoEmissions:
        mass = {p: dict(by) for p, by in self.mass.items()}
        return SumoEmissions(window_s, mass, dict(self.cells), cell_m, dict(self.counted), slices)


def run_sumo_emissions(scenario: Scenario, workdir: Path, settings: AirSettings) -> tuple[Path, Path]:
    """Run ``scenario`` in SUMO to the end of the window; the emission-output and tripinfo files."""
    workdir.mkdir(parents=True, exist_ok=True)
    emission, trips = workdir / "emissions.xml", workdir / "tripinfo.xml"
    end = settings.warmup_s + settings.window_s
    if end > scenario.duration_s:
        raise ConfigError(
            f"warm-up + window ({end:.0f} s) is longer than the scenario ({scenario.duration_s:.0f} s)"
        )
    run_tool(
        "sumo",
        [
            "--configuration-file", str(scenario.sumocfg),
            "--end", f"{end:.1f}",
            "--device.emissions.probability", "1",
            "--device.emissions.period", f"{settings.sample_s:g}",
            "--emission-output", str(emission),
            "--tripinfo-output", str(trips),
            "--tripinfo-output.write-unfinished", "true",
            "--no-step-log", "true",
        ],
        workdir,
    )  # fmt: skip
    return emission, trips


def vehicle_classes(routes: Path) -> dict[str, str]:
    """vType id → vClass, from the routes file (a type without a vClass is a passenger car, as in SUMO)."""
    out = {}
    for _, el in ET.iterparse(routes):  # noqa: S314 - our scenario's own file
        if el.tag == "vType":
            out[el.get("id", "")] = el.get("vClass", "passenger")
    return out


def read_emission_output(
    path: Path,
    vclasses: Mapping[str, str],
    exits: frozenset[str],
    *,
    start_s: float,
    end_s: float,
    sample_s: float,
    cell_m: float,
    slice_s: float | None = None,
) -> SumoEmissions:
    """Mass by class and by cell, and exit-edge entries by class, for samples in ``[start_s, end_s)``.

    A vehicle counts where its first sample on an exit edge falls (one that
    entered before the window is not counted in it). With ``slice_s``, the
    same again for each consecutive ``slice_s`` of the window.
    """
    whole = _Tally()
    n_slices = math.ceil((end_s - start_s) / slice_s - 1e-9) if slice_s else 0
    parts = [_Tally() for _ in range(n_slices)]
    exited: set[str] = set()
    time = -math.inf
    for event, el in ET.iterparse(path, events=("start", "end")):  # noqa: S314 - SUMO's output of this run
        if event == "end":
            if el.tag == "timestep":
                el.clear()  # one step at a time in memory
            continue
        if el.tag == "timestep":
            time = float(el.get("time", "0"))
            continue
        if el.tag != "vehicle" or time >= end_s:
            continue
        vid = el.get("id", "")
        entered = el.get("lane", "").rpartition("_")[0] in exits and vid not in exited
        if entered:
            exited.add(vid)
        if time < start_s:
            continue
        tallies = [whole]
        if slice_s:
            tallies.append(parts[min(int((time - start_s) // slice_s), n_slices - 1)])
        vclass = vclasses.get(el.get("type", ""), "passenger")
        cell = (math.floor(float(el.get("x", "0")) / cell_m), math.floor(float(el.get("y", "0")) / cell_m))
        grams = {
            ours: float(el.get(theirs, "0")) * sample_s / _MG_PER_G for ours, theirs in POLLUTANTS.items()
        }
        for tally in tallies:
            if entered:
                tally.counted[vclass] += 1
            for p, g in grams.items():  # mg/s × s, in g
                tally.mass[p][vclass] += g
                tally.cells[cell][p] += g
    last = end_s - start_s - (n_slices - 1) * slice_s if slice_s else 0.0
    slices = tuple(
        part.done(slice_s if i < n_slices - 1 else last, cell_m) for i, part in enumerate(parts) if slice_s
    )
    return whole.done(end_s - start_s, cell_m, slices)


def read_tripinfo(path: Path, vclasses: Mapping[str, str]) -> dict[str, TripTotals]:
    """Finished trips (``arrival`` set) by class: count, km and integrated emissions in grams."""
    trips: dict[str, int] = defaultdict(int)
    km: dict[str, float] = defaultdict(float)
    grams: dict[str, dict[str, float]] = defaultdict(lambda: dict.fromkeys(POLLUTANTS, 0.0))
    for _, el in ET.iterparse(path):  # noqa: S314 - SUMO's output of this run
        if el.tag != "tripinfo" or float(el.get("arrival", "-1")) < 0:
            continue
        vclass = vclasses.get(el.get("vType", ""), "passenger")
        trips[vclass] += 1
        km[vclass] += float(el.get("routeLength", "0")) / 1000.0
        em = el.find("emissions")
        for ours, theirs in POLLUTANTS.items():
            if em is not None:
                grams[vclass][ours] += float(em.get(f"{theirs}_abs", "0")) / _MG_PER_G
    return {c: TripTotals(trips[c], km[c], dict(grams[c])) for c in trips}


def factors_from_trips(trips: Mapping[str, TripTotals]) -> dict[str, dict[str, float]]:
    """g per vehicle-km by pollutant and **detector** class: the classes' mass over their distance.

    A detector class stands for several SUMO classes (truck: trucks, trailers
    and buses), so its factor is weighted by the distance each drove.
    """
    km: dict[str, float] = defaultdict(float)
    grams: dict[str, dict[str, float]] = defaultdict(lambda: dict.fromkeys(POLLUTANTS, 0.0))
    for vclass, t in trips.items():
        cls = detector_class(vclass)
        if cls is None or cls == "pedestrian":
            continue
        km[cls] += t.km
        for p, g in t.grams.items():
            grams[cls][p] += g
    return {p: {cls: grams[cls][p] / km[cls] for cls in sorted(km) if km[cls] > 0} for p in POLLUTANTS}


def road_length_km(scenario: Scenario) -> float:
    """The road a counted vehicle drives here: its entry and exit legs and the junction, demand-weighted."""
    import sumolib

    net = sumolib.net.readNet(str(scenario.net))
    total = weight = 0.0
    for m in scenario.movements:
        a, b = net.getEdge(m.entry), net.getEdge(m.exit)
        end = a.getLanes()[0].getShape()[-1]
        start = b.getLanes()[0].getShape()[0]
        across = math.hypot(end[0] - start[0], end[1] - start[1])  # the chord through the junction
        total += m.vehicles_per_hour * (a.getLength() + b.getLength() + across)
        weight += m.vehicles_per_hour
    if weight <= 0:
        raise ConfigError(f"scenario {scenario.name} has no vehicle demand")
    return total / weight / 1000.0


def pole_concentrations(
    sumo: SumoEmissions, poles: Mapping[str, tuple[float, float]], settings: AirSettings
) -> dict[str, dict[str, float]]:
    """Window-mean NOx, NO2 (µg/m³ and ppb), PM10 and PM2.5 (µg/m³) at each pole, background included.

    NOx and PM10 (SUMO's PMx) are dispersed; NO2 is the background plus the
    primary share of the NOx increment, PM2.5 the background plus
    ``pm25_share`` of the PM10 increment.
    """
    half = sumo.cell_m / 2.0
    bg = settings.background_ug_m3
    added: dict[str, dict[str, float]] = {name: {} for name in poles}
    for pollutant in ("nox", "pm10"):
        sources = [
            PointSource(ix * sumo.cell_m + half, iy * sumo.cell_m + half, g[pollutant] * 1e6 / sumo.window_s)
            for (ix, iy), g in sumo.cells.items()
            if g[pollutant] > 0
        ]  # µg/s, so concentrations come out in µg/m³
        for name, (x, y) in poles.items():
            added[name][pollutant] = concentration(
                sources, (x, y, settings.sensor_height_m), settings.weather
            )
    out: dict[str, dict[str, float]] = {}
    for name, inc in added.items():
        no2 = no2_from_nox(inc["nox"], settings.no2_primary_fraction, bg.get("no2", 0.0))
        out[name] = {
            "nox_ug_m3": round(bg.get("nox", 0.0) + inc["nox"], 2),
            "no2_ug_m3": round(no2, 2),
            "no2_ppb": round(no2 * NO2_PPB_PER_UG_M3, 2),
            "pm10_ug_m3": round(bg.get("pm10", 0.0) + inc["pm10"], 2),
            "pm25_ug_m3": round(bg.get("pm25", 0.0) + settings.pm25_share * inc["pm10"], 2),
        }
    return out


def _by_detector_class(counted: Mapping[str, int]) -> dict[str, int]:
    counts: dict[str, int] = defaultdict(int)
    for vclass, n in counted.items():
        cls = detector_class(vclass)
        if cls is not None:
            counts[cls] += n
    return dict(counts)


def _series(
    sumo: SumoEmissions, poles: Mapping[str, tuple[float, float]], settings: AirSettings
) -> dict[str, Any]:
    """Per slice: vehicles counted and each pole's NO2 and PM2.5; Pearson's r of counts with NO2."""
    totals = [sum(_by_detector_class(s.counted).values()) for s in sumo.slices]
    at = [pole_concentrations(s, poles, settings) for s in sumo.slices]
    no2 = {name: [row[name]["no2_ppb"] for row in at] for name in poles}
    return {
        "slice_s": settings.slice_s,
        "counts": totals,
        "no2_ppb": no2,
        "pm25_ug_m3": {name: [row[name]["pm25_ug_m3"] for row in at] for name in poles},
        "counts_no2_correlation": {
            name: None
            if (r := pearson(list(zip(map(float, totals), v, strict=True)))) is None
            else round(r, 3)
            for name, v in no2.items()
        },
    }


def _poles(scenario: Scenario) -> dict[str, tuple[float, float]]:
    poles = {}
    for cam in load_pose_file(scenario.poses).cameras:
        cal = cam.calibration
        x, y = getattr(cal, "x", None), getattr(cal, "y", None)
        if x is None or y is None:
            raise ConfigError(f"camera {cam.name}: a pole's position needs a pose calibration (x, y)")
        poles[cam.name] = (float(x), float(y))
    return poles


def air_scenario(
    scenario: Scenario,
    workdir: Path,
    factors: Mapping[str, Mapping[str, float]],
    settings: AirSettings | None = None,
) -> dict[str, Any]:
    """Run ``scenario`` with emissions and compare; one JSON-ready dict (``bench.air_sumo`` prints it)."""
    settings = settings or AirSettings()
    emission_file, trip_file = run_sumo_emissions(scenario, workdir, settings)
    vclasses = vehicle_classes(scenario.routes)
    exits = frozenset(m.exit for m in scenario.movements)
    sumo = read_emission_output(
        emission_file,
        vclasses,
        exits,
        start_s=settings.warmup_s,
        end_s=settings.warmup_s + settings.window_s,
        sample_s=settings.sample_s,
        cell_m=settings.cell_m,
        slice_s=settings.slice_s,
    )
    counts = _by_detector_class(sumo.counted)
    poles = _poles(scenario)
    length = road_length_km(scenario)
    hour = TrafficHour(datetime.fromtimestamp(0, UTC), dict(counts), {})
    estimate = emissions([hour], factors, length)
    sumo_total = {p: sum(sumo.mass_g[p].values()) for p in POLLUTANTS}
    relative = {
        p: round((estimate[p] - sumo_total[p]) / sumo_total[p], 4)
        for p in POLLUTANTS
        if p in estimate and sumo_total[p] > 0
    }
    return {
        "scenario": scenario.name,
        "seed": scenario.seed,
        "window_s": settings.window_s,
        "warmup_s": settings.warmup_s,
        "counts_source": "sumo",  # SUMO's own exit-edge entries by class, not the camera path
        "counts": dict(sorted(counts.items())),
        "counted_by_sumo_class": dict(sorted(sumo.counted.items())),
        "road_length_km": round(length, 4),
        "sumo_g": {p: {c: round(g, 3) for c, g in sorted(by.items())} for p, by in sumo.mass_g.items()},
        "sumo_total_g": {p: round(g, 3) for p, g in sumo_total.items()},
        "hub_estimate_g": {p: round(g, 3) for p, g in estimate.items()},
        "relative_error": relative,
        "weather": {
            "wind_speed_ms": settings.weather.wind_speed_ms,
            "wind_from_deg": settings.weather.wind_from_deg,
            "stability": settings.weather.stability,
            "mixing_height_m": settings.weather.mixing_height_m,
        },
        "background_ug_m3": dict(settings.background_ug_m3),
        "poles": pole_concentrations(sumo, poles, settings),
        "series": _series(sumo, poles, settings),
        "trips": {
            c: {"trips": t.trips, "km": round(t.km, 3)}
            for c, t in sorted(read_tripinfo(trip_file, vclasses).items())
        },
    }
