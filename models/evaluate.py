"""Held-out evaluation of a detector on the synthetic scene.

The metrics are pure numpy over :class:`roadside.vision.yolo.Detections`:
mAP@0.5 (all-point interpolated AP per class, averaged over classes with
ground truth), per-class recall at the operating threshold, and the error
of per-frame object counts. The held-out frames come from fixed seeds that
training never draws (training seeds are below ``TRAIN_SEED_LIMIT``).
Besides day, dusk and night there are two weather conditions: heavy rain,
which the committed detector handles, and fog, which it was never trained
on and which is the drift scenario of the retraining demo.

``python -m roadside.models.evaluate --model models/detector.onnx`` logs the report
and can write it as JSON.
"""

from __future__ import annotations

import argparse
import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import cast

import numpy as np
import numpy.typing as npt

from roadside.shared.errors import ConfigError
from roadside.sim.synthetic import CLASSES, SceneConfig, SceneFrame, render_dataset
from roadside.vision.yolo import Detections, decode_yolo, letterbox_batch

__all__ = [
    "CONDITIONS",
    "SUMO_CONDITIONS",
    "TRAIN_SEED_LIMIT",
    "EvalReport",
    "HeldoutCondition",
    "average_precision",
    "evaluate_detections",
    "evaluate_images",
    "evaluate_model",
    "heldout_frames",
    "known_conditions",
    "match_detections",
    "parse_conditions",
    "sumo_heldout",
]

logger = logging.getLogger(__name__)

TRAIN_SEED_LIMIT = 1_000_000  # training scenes use seeds below; held-out scenes above


@dataclass(frozen=True)
class HeldoutCondition:
    """Scene settings of one held-out set; scene seeds are ``seed * 1000 + k``."""

    light: float
    seed: int
    rain: float = 0.0
    fog: float = 0.0


# Fixed forever: published model cards and the publish gate compare these figures.
CONDITIONS: dict[str, HeldoutCondition] = {
    "day": HeldoutCondition(light=1.0, seed=9_000),
    "dusk": HeldoutCondition(light=0.5, seed=9_001),
    "night": HeldoutCondition(light=0.25, seed=9_002),
    "rain": HeldoutCondition(light=0.8, seed=9_003, rain=0.9),
    "fog": HeldoutCondition(light=1.0, seed=9_004, fog=0.6),
}
# Fixed forever too: condition → (scenario, SUMO seed, rendering conditions). Needs the sim extra.
SUMO_CONDITIONS: dict[str, tuple[str, int, str]] = {
    "sumo-day": ("intersection", 42, "day"),
    "sumo-night": ("intersection", 42, "night"),
}
SUMO_HELDOUT_SEED = 42
OPERATING_CONF = 0.25
EVAL_CONF = 0.001  # keep low-score detections so the PR curve reaches high recall
EVAL_NMS_IOU = 0.45  # decode_yolo's default, so operating figures match a default agent

Predictor = Callable[[npt.NDArray[np.float32]], npt.NDArray[np.float32]]
FloatArray = npt.NDArray[np.float64]


@dataclass(frozen=True)
class EvalReport:
    """Detection quality on one held-out set."""

    frames: int
    objects: int
    map50: float
    ap50: dict[str, float]
    recall: dict[str, float]  # at OPERATING_CONF
    precision: dict[str, float]  # at OPERATING_CONF
    count_mae: float  # mean over frames of sum over classes |predicted - true|, at OPERATING_CONF
    count_rel_error: float  # that error summed over frames, over the number of true objects


def heldout_frames(condition: str = "day", n: int = 160) -> list[SceneFrame]:
    """The fixed held-out frames for ``condition`` (a key of :data:`CONDITIONS`)."""
    try:
        c = CONDITIONS[condition]
    except KeyError:
        raise ValueError(
            f"unknown held-out condition {condition!r}; known: {', '.join(CONDITIONS)}"
        ) from None
    config = SceneConfig(light=c.light, rain=c.rain, fog=c.fog, spawn_rate=1.2, seed=c.seed)
    return render_dataset(n, config, stride=9, scenes=8)


def known_conditions() -> tuple[str, ...]:
    """Every held-out condition a model can be scored on: the synthetic scene's, then SUMO's."""
    return (*CONDITIONS, *SUMO_CONDITIONS)


def parse_conditions(spec: str) -> tuple[str, ...]:
    """``"synthetic"``, ``"sumo"``, ``"all"`` or a comma list of condition names; unknown names refused."""
    names: list[str] = []
    for part in (p.strip() for p in spec.split(",")):
        group = {"synthetic": tuple(CONDITIONS), "sumo": tuple(SUMO_CONDITIONS), "all": known_conditions()}
        chosen = group.get(part, (part,))
        for name in chosen:
            if name not in known_conditions():
                raise ConfigError(
                    f"unknown held-out condition {name!r}; known: synthetic, sumo, all, "
                    + ", ".join(known_conditions())
                )
            if name not in names:
                names.append(name)
    return tuple(names)


def sumo_heldout(
    condition: str, n: int = 160
) -> tuple[list[npt.NDArray[np.uint8]], list[tuple[FloatArray, npt.NDArray[np.int64]]]]:
    """The fixed held-out SUMO frames of ``condition`` (a key of :data:`SUMO_CONDITIONS`) and their truth.

    ``n`` frames shared over the scenario's five cameras (four approaches and the
    junction), one every 2 simulated seconds after a minute of warm-up.
    """
    import tempfile

    from roadside.sim.sumo.frames import render_scenario
    from roadside.sim.sumo.render import DETECTOR_CLASSES, Conditions, findable
    from roadside.sim.sumo.scenarios import build_scenario

    try:
        scenario_name, seed, rendering = SUMO_CONDITIONS[condition]
    except KeyError:
        raise ConfigError(
            f"unknown SUMO held-out condition {condition!r}; known: {', '.join(SUMO_CONDITIONS)}"
        ) from None
    with tempfile.TemporaryDirectory(prefix="roadside-heldout-") as tmp:
        scenario = build_scenario(scenario_name, Path(tmp), seed=seed, duration_s=900)
        cameras = 5 if scenario_name == "intersection" else 4
        rendered = render_scenario(
            scenario, cast("Conditions", rendering), frames_per_camera=-(-n // cameras), junction=True
        )[:n]
    images, truths = [], []
    for frame in rendered:
        pairs = [(o.label, o.box) for o in findable(frame.truth) if o.label is not None]
        images.append(frame.image)
        truths.append((
            np.array([box for _, box in pairs], dtype=np.float64).reshape(-1, 4),
            np.array([DETECTOR_CLASSES.index(label) for label, _ in pairs], dtype=np.int64),
        ))  # fmt: skip
    return images, truths


def average_precision(recall: FloatArray, precision: FloatArray) -> float:
    """Area under the PR curve with all-point interpolation (VOC 2010+, COCO style)."""
    r = np.concatenate([[0.0], recall, [1.0]])
    p = np.concatenate([[1.0], precision, [0.0]])
    p = np.flip(np.maximum.accumulate(np.flip(p)))  # precision envelope
    steps = np.flatnonzero(r[1:] != r[:-1])
    return float(np.sum((r[steps + 1] - r[steps]) * p[steps + 1]))


def _iou_matrix(a: FloatArray, b: FloatArray) -> FloatArray:
    ix1 = np.maximum(a[:, None, 0], b[None, :, 0])
    iy1 = np.maximum(a[:, None, 1], b[None, :, 1])
    ix2 = np.minimum(a[:, None, 2], b[None, :, 2])
    iy2 = np.minimum(a[:, None, 3], b[None, :, 3])
    inter = np.clip(ix2 - ix1, 0, None) * np.clip(iy2 - iy1, 0, None)
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    union = area_a[:, None] + area_b[None, :] - inter
    result: FloatArray = np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)
    return result


def match_detections(
    det: Detections, gt_boxes: FloatArray, gt_classes: npt.NDArray[np.int64], iou: float = 0.5
) -> npt.NDArray[np.bool_]:
    """True positives among ``det`` (taken best score first), one GT per match."""
    tp = np.zeros(len(det), dtype=bool)
    if len(det) == 0 or gt_boxes.shape[0] == 0:
        return tp
    ious = _iou_matrix(det.boxes.astype(np.float64), gt_boxes)
    ious[det.class_ids[:, None] != gt_classes[None, :]] = 0.0
    taken = np.zeros(gt_boxes.shape[0], dtype=bool)
    for i in np.argsort(-det.scores, kind="stable"):
        candidates = np.where(taken, 0.0, ious[i])
        j = int(np.argmax(candidates))
        if candidates[j] >= iou:
            tp[i] = True
            taken[j] = True
    return tp


def _truth(frame: SceneFrame) -> tuple[FloatArray, npt.NDArray[np.int64]]:
    boxes = np.array([o.box for o in frame.objects], dtype=np.float64).reshape(-1, 4)
    classes = np.array([o.cls for o in frame.objects], dtype=np.int64)
    return boxes, classes


def evaluate_detections(
    detections: Sequence[Detections],
    truths: Sequence[tuple[FloatArray, npt.NDArray[np.int64]]],
    class_names: Sequence[str] = CLASSES,
    iou: float = 0.5,
    operating_conf: float = OPERATING_CONF,
) -> EvalReport:
    """Score detections against ground truth (boxes, classes) frame by frame."""
    nc = len(class_names)
    scores, classes, tps = [], [], []
    count_err = np.zeros(len(truths))
    n_gt = np.zeros(nc, dtype=np.int64)
    for k, (det, (gt_boxes, gt_classes)) in enumerate(zip(detections, truths, strict=True)):
        scores.append(det.scores)
        classes.append(det.class_ids)
        tps.append(match_detections(det, gt_boxes, gt_classes, iou))
        n_gt += np.bincount(gt_classes, minlength=nc)[:nc]
        confident = det.class_ids[det.scores >= operating_conf]
        pred_counts = np.bincount(confident, minlength=nc)[:nc]
        count_err[k] = np.abs(pred_counts - np.bincount(gt_classes, minlength=nc)[:nc]).sum()
    all_scores = np.concatenate(scores) if scores else np.zeros(0)
    all_classes = np.concatenate(classes) if classes else np.zeros(0, dtype=np.int64)
    all_tp = np.concatenate(tps) if tps else np.zeros(0, dtype=bool)

    ap, recall, precision = {}, {}, {}
    for c, name in enumerate(class_names):
        mine = all_classes == c
        order = np.argsort(-all_scores[mine], kind="stable")
        tp = all_tp[mine][order]
        conf = all_scores[mine][order]
        if n_gt[c] == 0:
            continue
        cum_tp = np.cumsum(tp)
        rec = cum_tp / n_gt[c]
        prec = cum_tp / np.arange(1, tp.size + 1)
        ap[name] = average_precision(rec, prec)
        at_op = conf >= operating_conf
        n_op = int(at_op.sum())
        recall[name] = float(cum_tp[n_op - 1] / n_gt[c]) if n_op else 0.0
        precision[name] = float(cum_tp[n_op - 1] / n_op) if n_op else 0.0
    total_gt = int(n_gt.sum())
    return EvalReport(
        frames=len(truths),
        objects=total_gt,
        map50=float(np.mean(list(ap.values()))) if ap else 0.0,
        ap50=ap,
        recall=recall,
        precision=precision,
        count_mae=float(count_err.mean()) if len(truths) else 0.0,
        count_rel_error=float(count_err.sum() / total_gt) if total_gt else 0.0,
    )


def evaluate_model(
    predict: Predictor,
    frames: Sequence[SceneFrame],
    imgsz: tuple[int, int] = (320, 320),
    batch_size: int = 8,
    class_names: Sequence[str] = CLASSES,
    operating_conf: float = OPERATING_CONF,
) -> EvalReport:
    """Run ``predict`` (NCHW float32 → ``[B, 4+nc, N]``) over frames and score it."""
    truths = [_truth(f) for f in frames]
    return evaluate_images(
        predict, [f.image for f in frames], truths, imgsz, batch_size, class_names, operating_conf
    )


def evaluate_images(
    predict: Predictor,
    images: Sequence[npt.NDArray[np.uint8]],
    truths: Sequence[tuple[FloatArray, npt.NDArray[np.int64]]],
    imgsz: tuple[int, int] = (320, 320),
    batch_size: int = 8,
    class_names: Sequence[str] = CLASSES,
    operating_conf: float = OPERATING_CONF,
) -> EvalReport:
    """Run ``predict`` over BGR images and score it against their truth (boxes, class ids)."""
    detections: list[Detections] = []
    for start in range(0, len(images), batch_size):
        chunk = images[start : start + batch_size]
        batch, infos = letterbox_batch(list(chunk), imgsz)
        outputs = predict(batch)
        detections.extend(
            decode_yolo(
                outputs[i],
                conf_threshold=EVAL_CONF,
                iou_threshold=EVAL_NMS_IOU,
                info=infos[i],
                num_classes=len(class_names),
            )
            for i in range(len(chunk))
        )
    return evaluate_detections(detections, truths, class_names, operating_conf=operating_conf)


def evaluate_onnx(
    model_path: str | Path,
    conditions: Sequence[str] = ("day", "night"),
    frames: int = 160,
    operating_conf: float = OPERATING_CONF,
) -> dict[str, EvalReport]:
    """Evaluate an ONNX file on the held-out sets of ``conditions`` (synthetic or SUMO)."""
    from .export import onnx_predictor  # keeps onnxruntime out of the metrics

    predict = onnx_predictor(model_path)
    reports = {}
    for c in conditions:
        if c in SUMO_CONDITIONS:
            images, truths = sumo_heldout(c, frames)
            reports[c] = evaluate_images(predict, images, truths, operating_conf=operating_conf)
        else:
            reports[c] = evaluate_model(predict, heldout_frames(c, frames), operating_conf=operating_conf)
    return reports


def main(argv: Sequence[str] | None = None) -> None:
    """CLI: evaluate an ONNX detector on the held-out synthetic sets."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=Path("models/detector.onnx"))
    parser.add_argument("--frames", type=int, default=160, help="frames per condition")
    parser.add_argument("--conditions", nargs="+", default=list(CONDITIONS), choices=list(known_conditions()))
    parser.add_argument("--conf", type=float, default=OPERATING_CONF, help="operating threshold")
    parser.add_argument("--json", type=Path, help="also write the reports here")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    reports = evaluate_onnx(args.model, args.conditions, args.frames, args.conf)
    for name, report in reports.items():
        logger.info(
            "%s: mAP@0.5 %.3f, recall %s, count MAE %.2f/frame",
            name, report.map50, report.recall, report.count_mae,
        )  # fmt: skip
    if args.json:
        args.json.write_text(json.dumps({k: asdict(v) for k, v in reports.items()}, indent=2))


if __name__ == "__main__":
    main()
