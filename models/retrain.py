"""One retraining run: fine-tune, export with the parity check, make variants, evaluate, write the card.

``roadside model train`` resolves the dataset and the parent and calls
:func:`retrain`; everything here works on paths and frames only (no hub
home, no registry), so tests and notebooks call it directly.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from roadside.vision.yolo import letterbox

from .card import (
    CodeVersion,
    DatasetRef,
    Lineage,
    ModelCard,
    ParentRef,
    Variant,
    git_commit,
    render_markdown,
    summarise,
)
from .evaluate import CONDITIONS, evaluate_onnx, heldout_frames
from .export import export_onnx, roadside_version
from .finetune import FinetuneConfig, LabelledFrame, finetune, load_onnx_detector
from .train import IMGSZ
from .variants import calibration_batches, to_fp16, to_int8

__all__ = ["RetrainRequest", "file_sha256", "retrain"]

logger = logging.getLogger(__name__)

_REPO_ROOT = Path(__file__).resolve().parent.parent


def file_sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@dataclass(frozen=True)
class RetrainRequest:
    """What to train from, where to write, which variants."""

    parent_path: Path
    parent: ParentRef
    dataset: DatasetRef
    out_dir: Path
    name: str = "detector"
    version: str = "0.2.0"
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)
    fp16: bool = False
    int8: bool = False
    eval_frames: int = 160
    conditions: Sequence[str] = tuple(CONDITIONS)


def _now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")


def _parity_inputs() -> np.ndarray[Any, np.dtype[np.float32]]:
    frames = heldout_frames("day", 1) + heldout_frames("fog", 1)
    return np.stack([letterbox(f.image, IMGSZ)[0] for f in frames])


def _variant(kind: str, path: Path, request: RetrainRequest, parity: float | None = None) -> Variant:
    reports = evaluate_onnx(path, request.conditions, request.eval_frames)
    for name, r in reports.items():
        logger.info("%s %s: mAP@0.5 %.3f, count MAE %.2f", kind, name, r.map50, r.count_mae)
    return Variant(
        kind=kind,
        file=path.name,
        sha256=file_sha256(path),
        size_bytes=path.stat().st_size,
        evaluation=summarise(reports, request.eval_frames),
        parity_max_abs_diff=parity,
    )


def export_and_card(
    model: torch.nn.Module,
    request: RetrainRequest,
    training: Mapping[str, Any],
    started_at: str,
) -> ModelCard:
    """Export ``model`` and its variants into ``request.out_dir``, evaluate them, write the card."""
    out = request.out_dir
    out.mkdir(parents=True, exist_ok=True)
    onnx_path = out / f"{request.name}.onnx"
    report = export_onnx(model, onnx_path, model_version=request.version, parity_inputs=_parity_inputs())
    variants = [_variant("fp32", onnx_path, request, report.max_abs_diff)]
    if request.fp16:
        variants.append(_variant("fp16", to_fp16(onnx_path, out / f"{request.name}.fp16.onnx"), request))
    if request.int8:
        int8_path = to_int8(onnx_path, out / f"{request.name}.int8.onnx", calibration_batches())
        variants.append(_variant("int8", int8_path, request))
    card = ModelCard(
        name=request.name,
        version=request.version,
        lineage=Lineage(
            dataset=request.dataset,
            parent=request.parent,
            code=CodeVersion(package=roadside_version(), git_commit=git_commit(_REPO_ROOT)),
            training=dict(training),
            started_at=started_at,
            finished_at=_now(),
        ),
        variants=tuple(variants),
    )
    (out / "card.json").write_text(json.dumps(card.as_dict(), indent=2) + "\n")
    (out / "MODEL_CARD.md").write_text(render_markdown(card))
    return card


def retrain(
    request: RetrainRequest,
    frames: Sequence[LabelledFrame],
    device: torch.device | None = None,
    *,
    export: bool = True,
) -> ModelCard | None:
    """Fine-tune the parent on ``frames``; on the exporting rank, write the model, variants and card.

    Under DDP only rank 0 passes ``export=True``; the others return None.
    """
    started = _now()
    parent_model = load_onnx_detector(request.parent_path)
    model, stats = finetune(parent_model, frames, request.finetune, device)
    if not export:
        return None
    training = {**asdict(request.finetune), **{k: round(v, 4) for k, v in stats.items()}}
    training["device"] = str(device or "cpu")
    return export_and_card(model, request, training, started)
