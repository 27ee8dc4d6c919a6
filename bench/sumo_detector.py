"""The shipped detector on SUMO-rendered frames: recall and precision against the renderer's truth.

    python -m bench.sumo_detector [--scenario intersection] [--conditions day,dusk,night,rain,fog]
                                  [--frames-per-camera 15] [--model models/detector.onnx]
                                  [--finetune-steps 0]

Generates the scenario into a temporary folder (seed 42), runs SUMO for a
minute of warm-up, then renders every camera (one per approach) every two
simulated seconds under each condition and scores the ONNX detector at IoU 0.5
(:mod:`roadside.sim.sumo.evaluate`). "near" counts only road users whose box
is at least 24 px tall. The last line is one JSON object.

``--finetune-steps N`` also answers "does retraining on SUMO frames help?":
it renders training frames from both scenarios at another seed (7: other
traffic, the same roads) under all five conditions, fine-tunes the model on
them with the existing recipe (``roadside.models.finetune``, half of each batch
replayed from the synthetic scene so it keeps what it knew), exports it and
scores it on the same held-out frames as the shipped model ("finetuned" in the
JSON). A short CPU run, not a release: the published model is unchanged.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING

from roadside.sim.sumo.evaluate import DetectorScore, render_scenario, score_detector
from roadside.sim.sumo.render import CONDITIONS, DETECTOR_CLASSES, Conditions
from roadside.sim.sumo.scenarios import SCENARIO_NAMES, build_scenario
from roadside.sim.sumo.source import frame_truth

if TYPE_CHECKING:
    from roadside.models.finetune import LabelledFrame
    from roadside.sim.sumo.render import RenderedFrame

_MODEL = Path(__file__).resolve().parent.parent / "models" / "detector.onnx"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scenario", choices=SCENARIO_NAMES, default="intersection")
    parser.add_argument("--conditions", default="day,night")
    parser.add_argument("--frames-per-camera", type=int, default=15)
    parser.add_argument("--model", type=Path, default=_MODEL)
    parser.add_argument("--finetune-steps", type=int, default=0)
    args = parser.parse_args(argv)
    conditions: list[Conditions] = []
    for name in args.conditions.split(","):
        if name not in CONDITIONS:
            parser.error(f"unknown condition {name!r}: choose from {', '.join(CONDITIONS)}")
        conditions.append(name)
    per_condition: dict[str, dict[str, object]] = {}
    tuned: dict[str, dict[str, object]] = {}
    with tempfile.TemporaryDirectory(prefix="roadside-sumo-") as tmp:
        scenario = build_scenario(args.scenario, Path(tmp) / "eval", seed=42, duration_s=900)
        heldout = {}
        for condition in conditions:
            started = time.perf_counter()
            frames = render_scenario(scenario, condition, frames_per_camera=args.frames_per_camera)
            render_s = time.perf_counter() - started
            heldout[condition] = frames
            entry = _entry(score_detector(args.model, frames), len(frames))
            entry["sumo_and_render_ms_per_frame"] = round(1000 * render_s / max(1, len(frames)), 1)
            print(f"{condition}: {json.dumps(entry)}", flush=True)
            per_condition[condition] = entry
        if args.finetune_steps > 0:
            model, train_stats = _finetuned(Path(tmp), args.model, args.finetune_steps)
            print(f"fine-tuned: {json.dumps(train_stats)}", flush=True)
            for condition, frames in heldout.items():
                tuned[condition] = _entry(score_detector(model, frames), len(frames))
                print(f"{condition} (fine-tuned): {json.dumps(tuned[condition])}", flush=True)
    result: dict[str, object] = {
        "scenario": args.scenario,
        "model": str(args.model),
        "conditions": per_condition,
    }
    if tuned:
        result["finetuned"] = {"steps": args.finetune_steps, "conditions": tuned}
    print(json.dumps(result))


def _entry(score: DetectorScore, frames: int) -> dict[str, object]:
    return {
        "frames": frames,
        "objects": score.all.objects,
        "objects_near": score.near.objects,
        "recall": _rounded(score.all.recall),
        "precision": _rounded(score.all.precision),
        "map50": round(score.all.map50, 4),
        "recall_near": _rounded(score.near.recall),
        "map50_near": round(score.near.map50, 4),
    }


def _finetuned(tmp: Path, parent: Path, steps: int) -> tuple[Path, dict[str, float]]:
    from roadside.models.export import export_onnx
    from roadside.models.finetune import FinetuneConfig, finetune

    training: list[LabelledFrame] = []
    for name in SCENARIO_NAMES:
        scenario = build_scenario(name, tmp / f"train-{name}", seed=7, duration_s=900)
        for condition in CONDITIONS:
            frames = render_scenario(scenario, condition, frames_per_camera=8, every_s=3.0, warmup_s=30.0)
            training.extend(_labelled(frame) for frame in frames)
    model, stats = finetune(parent, training, FinetuneConfig(steps=steps, replay_share=0.5, warmup_steps=20))
    path = tmp / "finetuned.onnx"
    export_onnx(model, path, names=DETECTOR_CLASSES)
    return path, {"training_frames": float(len(training)), **stats}


def _labelled(frame: RenderedFrame) -> LabelledFrame:
    import cv2
    import numpy as np

    from roadside.models.finetune import LabelledFrame

    truth = frame_truth(frame.truth)
    # Half size: the detector letterboxes 640×480 to 320×240 anyway, and memory stays small.
    return LabelledFrame(
        image=np.asarray(
            cv2.resize(frame.image, None, fx=0.5, fy=0.5, interpolation=cv2.INTER_AREA), np.uint8
        ),
        boxes=np.array([box for _, box in truth], dtype=np.float32).reshape(-1, 4) * 0.5,
        classes=np.array([DETECTOR_CLASSES.index(label) for label, _ in truth], dtype=np.int64),
    )


def _rounded(values: dict[str, float]) -> dict[str, float]:
    return {k: round(v, 4) for k, v in values.items()}


if __name__ == "__main__":
    main()
