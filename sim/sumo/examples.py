"""SUMO-rendered frames as hard examples for the retraining loop: the dataset a SUMO-aware detector learns from.

    python -m roadside.sim.sumo.examples --home HUB_HOME [--seed 7] [--frames-per-camera 8]
                                         [--junction-frames 24] [--parent models/detector.onnx]

Builds both scenarios at a *training* seed (7 by default: other traffic than
the held-out seed 42, the same roads), runs SUMO, renders every approach
camera and the junction camera under all five conditions, and keeps each
frame the parent detector gets wrong (a missed or a spurious object at
confidence 0.25) as a :class:`~roadside.shared.schemas.HardExample`, the record
an agent uploads, with the renderer's truth as its labels (as the synthetic
camera's uploader does). They enter the hub's dataset inbox through
:class:`roadside.cloud.dataset.store.DatasetStore`, the way ingest stores a
device's samples, from the device ``sumo-render``, which is marked trusted
(the human step of docs/retraining-trust.md: an operator vouches for the
simulator's labels), and are committed as a new dataset version. From there
the ordinary loop takes over: ``roadside model train`` → ``roadside model
publish`` (docs/sumo.md, "A detector for SUMO's cameras").

Frames are stored at half size (320×240): the detector letterboxes 640×480 to
320×240 anyway, so nothing it could see is lost, and the JPEGs stay far under
the sample cap.
"""

from __future__ import annotations

import argparse
import base64
import dataclasses
import json
import logging
import tempfile
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Final

import cv2
import numpy as np
import numpy.typing as npt

from roadside.shared.errors import ConfigError
from roadside.shared.schemas import HardExample, LabeledBox
from roadside.sim.sumo.render import CONDITIONS, DETECTOR_CLASSES, Conditions, RenderedFrame
from roadside.sim.sumo.scenarios import SCENARIO_NAMES, build_scenario
from roadside.sim.sumo.source import frame_truth

__all__ = ["DEVICE_ID", "TRAIN_SEED", "half_size", "hard_examples", "main"]

log = logging.getLogger(__name__)

DEVICE_ID: Final = "sumo-render"
TRAIN_SEED: Final = 7  # the held-out frames (models.evaluate's sumo-* conditions) use seed 42
SCALE: Final = 0.5
OPERATING_CONF: Final = 0.25
_REPO_ROOT: Final = Path(__file__).resolve().parents[2]


def half_size(frame: RenderedFrame) -> tuple[npt.NDArray[np.uint8], list[LabeledBox]]:
    """The frame at half size and its truth boxes (detector classes) scaled with it."""
    image = np.asarray(
        cv2.resize(frame.image, None, fx=SCALE, fy=SCALE, interpolation=cv2.INTER_AREA), np.uint8
    )
    h, w = image.shape[:2]
    labels = []
    for label, (x1, y1, x2, y2) in frame_truth(frame.truth):
        box = (
            min(max(x1 * SCALE, 0.0), w),
            min(max(y1 * SCALE, 0.0), h),
            min(max(x2 * SCALE, 0.0), w),
            min(max(y2 * SCALE, 0.0), h),
        )
        if box[2] - box[0] >= 1.0 and box[3] - box[1] >= 1.0:
            labels.append(LabeledBox(cls=label, box=box))
    return image, labels


def _misses(labels: Sequence[LabeledBox], found: Sequence[LabeledBox]) -> tuple[int, int]:
    """(truth objects no detection of its class overlaps at IoU 0.5, detections that match no truth)."""
    taken = [False] * len(found)
    missed = 0
    for t in labels:
        best, best_iou = -1, 0.5
        for k, d in enumerate(found):
            if taken[k] or d.cls != t.cls:
                continue
            iou = _iou(t.box, d.box)
            if iou >= best_iou:
                best, best_iou = k, iou
        if best < 0:
            missed += 1
        else:
            taken[best] = True
    return missed, taken.count(False)


def _iou(a: tuple[float, float, float, float], b: tuple[float, float, float, float]) -> float:
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def hard_examples(
    frames: Sequence[RenderedFrame],
    parent: Path,
    *,
    stream: str,
    model_version: str,
    start: datetime,
    seed: int = TRAIN_SEED,
) -> list[HardExample]:
    """The frames ``parent`` gets wrong at confidence 0.25, as hard examples labelled with the truth.

    ``seed`` is the scenario's: it is part of each sample id, so frames of another seed's
    traffic on the same stream are new samples, not duplicates of the first seed's.
    """
    from roadside.edge.inference.engine import OnnxSession
    from roadside.vision.yolo import decode_yolo, letterbox_batch

    session = OnnxSession(parent, ["CPUExecutionProvider"], intra_op_threads=0)
    examples = []
    for k, frame in enumerate(frames):
        image, labels = half_size(frame)
        batch, infos = letterbox_batch([image], (320, 320))
        det = decode_yolo(
            session.run(batch)[0],
            conf_threshold=OPERATING_CONF,
            iou_threshold=0.45,
            info=infos[0],
            num_classes=len(DETECTOR_CLASSES),
        )
        found = [
            LabeledBox(
                cls=DETECTOR_CLASSES[int(c)],
                box=(float(b[0]), float(b[1]), float(b[2]), float(b[3])),
                conf=min(1.0, float(s)),
            )
            for b, c, s in zip(det.boxes, det.class_ids, det.scores, strict=True)
        ]
        missed, spurious = _misses(labels, found)
        if missed == 0 and spurious == 0:
            continue
        ok, jpeg = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, 90])
        if not ok:
            raise ConfigError("cannot encode a rendered frame as JPEG")
        examples.append(
            HardExample(
                sample_id=uuid.uuid5(uuid.NAMESPACE_URL, f"roadside-sumo/{seed}/{stream}/{k}"),
                ts=start + timedelta(seconds=0.1 * k),
                stream=stream,
                model_version=model_version,
                reasons=["disagreement"],
                score=min(1.0, (missed + spurious) / max(1, len(labels) + spurious)),
                width=image.shape[1],
                height=image.shape[0],
                image_jpeg_b64=base64.b64encode(jpeg.tobytes()).decode("ascii"),
                redacted=True,  # rendered boxes: no faces or plates to blur
                detections=found[:300],
                labels=labels[:300],
            )
        )
    return examples


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--home", type=Path, required=True, help="the hub's home (its dataset inbox)")
    parser.add_argument("--dataset", default="detector")
    parser.add_argument("--seed", type=int, default=TRAIN_SEED)
    parser.add_argument("--frames-per-camera", type=int, default=8, help="per camera and condition")
    parser.add_argument("--junction-frames", type=int, default=24, help="junction camera, per condition")
    parser.add_argument("--parent", type=Path, default=_REPO_ROOT / "models" / "detector.onnx")
    parser.add_argument("--model-version", default="0.1.0", help="the parent's version (the samples' origin)")
    parser.add_argument("--conditions", default=",".join(CONDITIONS))
    parser.add_argument(
        "--max-device-share",
        type=float,
        default=1.0,
        help="the dataset's per-device cap; the simulator is its only labeller here (1: no cap)",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.seed == 42:
        parser.error("seed 42 renders the held-out frames; train on another seed")
    conditions: list[Conditions] = []
    for name in args.conditions.split(","):
        if name not in CONDITIONS:
            parser.error(f"unknown condition {name!r}: choose from {', '.join(CONDITIONS)}")
        conditions.append(name)
    from roadside.cloud.dataset.store import DatasetStore
    from roadside.cloud.home import HubHome
    from roadside.sim.sumo.evaluate import render_scenario

    store = DatasetStore(HubHome(args.home).datasets_dir(args.dataset), args.dataset)
    start = datetime.now(UTC)
    summary: dict[str, object] = {}
    try:
        store.set_trusted(DEVICE_ID, True, actor="sumo-examples", note="labels from SUMO's renderer")
        store.set_max_device_share(args.max_device_share)
        with tempfile.TemporaryDirectory(prefix="roadside-sumo-examples-") as tmp:
            for name in SCENARIO_NAMES:
                scenario = build_scenario(name, Path(tmp) / name, seed=args.seed, duration_s=900)
                for condition in conditions:
                    # Approach cameras every 3 s; the junction camera (one per scenario) more often,
                    # so its high, steep view is a fair share of the data.
                    approach = render_scenario(
                        scenario,
                        condition,
                        frames_per_camera=args.frames_per_camera,
                        every_s=3.0,
                        warmup_s=30.0,
                    )
                    junction = render_scenario(
                        dataclasses.replace(scenario, poses=scenario.junction_poses),
                        condition,
                        frames_per_camera=args.junction_frames,
                        every_s=2.0,
                        warmup_s=45.0,
                    )
                    for kind, frames in (("approach", approach), ("junction", junction)):
                        stream = f"{name}-{kind}-{condition}"
                        examples = hard_examples(
                            frames,
                            args.parent,
                            stream=stream,
                            model_version=args.model_version,
                            start=start,
                            seed=args.seed,
                        )
                        report = store.add_report(DEVICE_ID, examples)
                        summary[stream] = {
                            "frames": len(frames),
                            "hard": len(examples),
                            "added": report.added,
                        }
                        log.info(
                            "%s: %d frames, %d hard, %d added",
                            stream,
                            len(frames),
                            len(examples),
                            report.added,
                        )
        manifest = store.commit(
            note=f"SUMO-rendered hard examples, seed {args.seed}, {', '.join(conditions)}"
        )
    finally:
        store.close()
    print(
        json.dumps(
            {
                "dataset": manifest.name,
                "version": manifest.version,
                "samples": len(manifest.samples),
                "streams": summary,
            }
        )
    )


if __name__ == "__main__":
    main()
