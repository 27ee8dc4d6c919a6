"""The shipped detector on SUMO-rendered frames: recall and precision against the renderer's truth.

    python -m bench.sumo_detector [--scenario intersection] [--conditions day,dusk,night,rain,fog]
                                  [--frames-per-camera 15] [--model models/detector.onnx]

Generates the scenario into a temporary folder (seed 42), runs SUMO for a
minute of warm-up, then renders every camera (one per approach) every two
simulated seconds under each condition and scores the ONNX detector at IoU 0.5
(:mod:`roadside.sim.sumo.evaluate`). "near" counts only road users whose box
is at least 24 px tall. The last line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from roadside.sim.sumo.evaluate import render_scenario, score_detector
from roadside.sim.sumo.render import CONDITIONS, Conditions
from roadside.sim.sumo.scenarios import SCENARIO_NAMES, build_scenario

_MODEL = Path(__file__).resolve().parent.parent / "models" / "detector.onnx"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scenario", choices=SCENARIO_NAMES, default="intersection")
    parser.add_argument("--conditions", default="day,night")
    parser.add_argument("--frames-per-camera", type=int, default=15)
    parser.add_argument("--model", type=Path, default=_MODEL)
    args = parser.parse_args(argv)
    conditions: list[Conditions] = []
    for name in args.conditions.split(","):
        if name not in CONDITIONS:
            parser.error(f"unknown condition {name!r}: choose from {', '.join(CONDITIONS)}")
        conditions.append(name)
    per_condition: dict[str, dict[str, object]] = {}
    with tempfile.TemporaryDirectory(prefix="roadside-sumo-") as tmp:
        scenario = build_scenario(args.scenario, Path(tmp), seed=42, duration_s=900)
        for condition in conditions:
            started = time.perf_counter()
            frames = render_scenario(scenario, condition, frames_per_camera=args.frames_per_camera)
            render_s = time.perf_counter() - started
            score = score_detector(args.model, frames)
            entry = {
                "frames": len(frames),
                "objects": score.all.objects,
                "objects_near": score.near.objects,
                "recall": _rounded(score.all.recall),
                "precision": _rounded(score.all.precision),
                "map50": round(score.all.map50, 4),
                "recall_near": _rounded(score.near.recall),
                "map50_near": round(score.near.map50, 4),
                "sumo_and_render_ms_per_frame": round(1000 * render_s / max(1, len(frames)), 1),
            }
            print(f"{condition}: {json.dumps(entry)}", flush=True)
            per_condition[condition] = entry
    print(json.dumps({"scenario": args.scenario, "model": str(args.model), "conditions": per_condition}))


def _rounded(values: dict[str, float]) -> dict[str, float]:
    return {k: round(v, 4) for k, v in values.items()}


if __name__ == "__main__":
    main()
