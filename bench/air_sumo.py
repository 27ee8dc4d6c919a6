"""SUMO's emissions at the intersection, dispersed to the poles, against the hub's estimate from the counts.

    python -m bench.air_sumo [--seed 42] [--warmup 120] [--window 600] [--wind-from 225] [--wind 2]
    python -m bench.air_sumo --derive-factors [--seed 7] [--window 1800]

The first form runs the intersection scenario in SUMO with its emission model
on every vehicle, turns what was emitted where into NOx, NO2 and PM2.5 at each
pole (``roadside.sim.dispersion``), and compares SUMO's mass with the hub's
estimate: SUMO's own counts by detector class (the camera path is not in this
loop) × the hub's default per-class factors × the scenario's route length.
The second derives per-class factors (g per vehicle-km) from SUMO's finished
trips: how the hub's defaults (``roadside.cloud.air.factors``) were made.
The last line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

from roadside.cloud.air.factors import DEFAULT_EMISSION_FACTORS
from roadside.sim.dispersion import Weather
from roadside.sim.sumo.air import (
    AirSettings,
    air_scenario,
    factors_from_trips,
    read_tripinfo,
    run_sumo_emissions,
    vehicle_classes,
)
from roadside.sim.sumo.scenarios import build_scenario


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    ap.add_argument("--seed", type=int, default=None, help="default 42 (compare), 7 (derive)")
    ap.add_argument("--warmup", type=float, default=120.0)
    ap.add_argument("--window", type=float, default=None, help="default 600 s (compare), 1800 s (derive)")
    ap.add_argument("--wind", type=float, default=2.0, help="wind speed, m/s")
    ap.add_argument("--wind-from", type=float, default=225.0, help="compass degrees the wind comes from")
    ap.add_argument("--stability", choices=("C", "D", "E"), default="D")
    ap.add_argument("--derive-factors", action="store_true")
    args = ap.parse_args(argv)
    derive = args.derive_factors
    seed = args.seed if args.seed is not None else (7 if derive else 42)
    window = args.window if args.window is not None else (1800.0 if derive else 600.0)
    weather = Weather(wind_speed_ms=args.wind, wind_from_deg=args.wind_from, stability=args.stability)
    settings = AirSettings(warmup_s=args.warmup, window_s=window, weather=weather)
    with tempfile.TemporaryDirectory(prefix="roadside-air-sumo-") as tmp:
        scenario = build_scenario(
            "intersection", Path(tmp) / "world", seed=seed, duration_s=args.warmup + window
        )
        if derive:
            _, trips_file = run_sumo_emissions(scenario, Path(tmp) / "run", settings)
            trips = read_tripinfo(trips_file, vehicle_classes(scenario.routes))
            factors = factors_from_trips(trips)
            out = {
                "seed": seed,
                "simulated_s": args.warmup + window,
                "trips": {c: {"trips": t.trips, "km": round(t.km, 2)} for c, t in sorted(trips.items())},
                "factors_g_per_vkm": {
                    p: {c: round(v, 4 if p != "co2" else 1) for c, v in by.items()}
                    for p, by in factors.items()
                },
            }
        else:
            out = air_scenario(scenario, Path(tmp) / "run", DEFAULT_EMISSION_FACTORS, settings)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
