"""The shipped detector on SUMO-rendered frames, scored against the renderer's truth (a short run).

The figure itself is measured, not held to a bar here: ``python -m
bench.sumo_detector`` prints it for every condition and ``docs/sumo.md``
records it. This test checks that the scoring is sound (the truth scored as
detections is found in full) and that the shipped model runs on these frames.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from roadside.models.evaluate import evaluate_detections
from roadside.sim.sumo.evaluate import NEAR_BOX_PX, render_scenario, score_detector
from roadside.sim.sumo.render import DETECTOR_CLASSES
from roadside.sim.sumo.scenarios import build_scenario
from roadside.sim.sumo.source import frame_truth
from roadside.vision.yolo import Detections

pytestmark = pytest.mark.timeout(120)

MODEL = Path(__file__).resolve().parents[2] / "models" / "detector.onnx"


def test_shipped_detector_is_scored_on_rendered_frames(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    scenario = build_scenario("intersection", tmp_path, seed=42, duration_s=300)
    frames = render_scenario(scenario, "day", frames_per_camera=2, warmup_s=45.0)
    assert len(frames) == 8  # two frames from each of the four approach cameras
    truth = [frame_truth(f.truth) for f in frames]
    n_objects = sum(len(t) for t in truth)
    assert n_objects >= 10

    # The truth itself, as detections, is found in full: the scoring matches boxes and classes.
    perfect = [
        Detections(
            boxes=np.array([box for _, box in t], dtype=np.float32).reshape(-1, 4),
            scores=np.ones(len(t), dtype=np.float32),
            class_ids=np.array([DETECTOR_CLASSES.index(label) for label, _ in t], dtype=np.int64),
        )
        for t in truth
    ]
    truth_arrays = [(d.boxes.astype(np.float64), d.class_ids) for d in perfect]
    report = evaluate_detections(perfect, truth_arrays, DETECTOR_CLASSES)
    assert report.objects == n_objects
    assert set(report.recall.values()) == {1.0}

    score = score_detector(MODEL, frames)
    assert score.all.objects == n_objects
    assert score.near.objects == sum(1 for t in truth for _, b in t if b[3] - b[1] >= NEAR_BOX_PX)
    assert all(0.0 <= r <= 1.0 for r in score.all.recall.values())
    with capsys.disabled():
        print(f"\nshipped detector on SUMO frames (day, {len(frames)} frames): recall {score.all.recall}")
