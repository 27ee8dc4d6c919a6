"""How well a detector sees SUMO's rendered frames: frames with truth, scored like the held-out sets.

The frames come from a scenario's cameras (every approach) under chosen
conditions; the truth is each frame's (detector class, box) pairs
(:func:`roadside.sim.sumo.source.frame_truth`: users with a detector class, at
least 30 % in sight, boxes of 4 px or more). Scoring is
:func:`roadside.models.evaluate.evaluate_detections`, the same as the
synthetic held-out sets, at IoU 0.5. ``bench/sumo_detector.py`` prints the
figures; ``docs/sumo.md`` records them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

from roadside.edge.inference.engine import OnnxSession
from roadside.models.evaluate import EVAL_CONF, EVAL_NMS_IOU, EvalReport, evaluate_detections
from roadside.sim.sumo.frames import render_scenario
from roadside.sim.sumo.render import DETECTOR_CLASSES, RenderedFrame
from roadside.sim.sumo.source import frame_truth
from roadside.vision.yolo import Detections, decode_yolo, letterbox_batch

__all__ = ["NEAR_BOX_PX", "DetectorScore", "render_scenario", "score_detector"]

NEAR_BOX_PX = 24.0  # "near" road users: boxes at least this tall (12 px once letterboxed to 320)


@dataclass(frozen=True)
class DetectorScore:
    """A detector on rendered frames: all truth, and only the road users near enough to be large."""

    all: EvalReport
    near: EvalReport  # recall is meaningful here; precision counts far detections as false


def score_detector(
    model: Path, frames: Sequence[RenderedFrame], imgsz: tuple[int, int] = (320, 320), batch: int = 8
) -> DetectorScore:
    """Score the ONNX detector ``model`` (the shipped one's four classes) on ``frames``."""
    # The agent's own onnxruntime adapter (CPU), so the model runs as it would on a pole.
    session = OnnxSession(model, ["CPUExecutionProvider"], intra_op_threads=0)
    detections: list[Detections] = []
    for start in range(0, len(frames), batch):
        chunk = frames[start : start + batch]
        inputs, infos = letterbox_batch([f.image for f in chunk], imgsz)
        outputs = session.run(inputs)
        detections.extend(
            decode_yolo(
                outputs[i],
                conf_threshold=EVAL_CONF,
                iou_threshold=EVAL_NMS_IOU,
                info=infos[i],
                num_classes=len(DETECTOR_CLASSES),
            )
            for i in range(len(chunk))
        )
    truths = [_truth(f, 0.0) for f in frames]
    near = [_truth(f, NEAR_BOX_PX) for f in frames]
    return DetectorScore(
        all=evaluate_detections(detections, truths, DETECTOR_CLASSES),
        near=evaluate_detections(detections, near, DETECTOR_CLASSES),
    )


def _truth(frame: RenderedFrame, min_height: float) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.int64]]:
    pairs = [(label, box) for label, box in frame_truth(frame.truth) if box[3] - box[1] >= min_height]
    boxes = np.array([box for _, box in pairs], dtype=np.float64).reshape(-1, 4)
    classes = np.array([DETECTOR_CLASSES.index(label) for label, _ in pairs], dtype=np.int64)
    return boxes, classes
