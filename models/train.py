"""Train the road-user detector on CPU from the synthetic scene, then export it.

    python -m roadside.models.train --out models/detector.onnx --minutes 5

Data is rendered on the fly (a frame costs ~1 ms against ~10 ms of training
per image), so every step sees fresh frames and there is nothing to
overfit or store. Scenes mix day, dusk and night, a little rain, and some
16:9 cameras (smaller objects after letterboxing). Training is on a
256-row crop of the 320x320 letterboxed input that always holds the whole
picture: the grey bands carry no objects, and the random crop offset shifts
the grid against the picture. The schedule is set by a time budget
(``--minutes``) or a step count (``--steps``); weights are averaged (EMA)
and the average is exported.
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import math
import os
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
import torch

from roadside.sim.synthetic import CLASSES, RoadScene, SceneConfig
from roadside.vision.yolo import letterbox

from .detector import DetectionLoss, RoadsideDetector
from .evaluate import TRAIN_SEED_LIMIT, evaluate_model, heldout_frames
from .export import export_onnx, onnx_predictor

__all__ = ["IMGSZ", "ModelEma", "SceneSampler", "TrainConfig", "augment", "collate", "train"]

logger = logging.getLogger(__name__)

IMGSZ = (320, 320)
CROP_ROWS = 256  # multiple of 16, >= the 240 rows a 4:3 picture fills


@dataclass(frozen=True)
class TrainConfig:
    """Settings of one training run."""

    minutes: float = 5.0
    steps: int | None = None  # fixes the schedule instead of the time budget
    batch_size: int = 16
    lr: float = 3e-3
    weight_decay: float = 5e-4
    warmup_steps: int = 60
    seed: int = 0
    threads: int = 2


class SceneSampler:
    """An endless supply of training frames from a rotating pool of random scenes."""

    def __init__(self, seed: int, pool: int = 24, frames_per_scene: int = 60) -> None:
        self._rng = np.random.default_rng(seed)
        self._frames_per_scene = frames_per_scene
        self._pool = [self._new_scene() for _ in range(pool)]

    def _new_scene(self) -> tuple[RoadScene, list[int]]:
        rng = self._rng
        condition = rng.random()
        if condition < 0.45:
            light = rng.uniform(0.85, 1.15)
        elif condition < 0.7:
            light = rng.uniform(0.4, 0.8)
        else:
            light = rng.uniform(0.18, 0.35)
        wide = rng.random() < 0.2
        config = SceneConfig(
            width=640,
            height=360 if wide else 480,
            light=float(light),
            rain=float(rng.uniform(0.1, 0.5)) if rng.random() < 0.15 else 0.0,
            spawn_rate=float(rng.uniform(0.8, 2.5)),
            seed=int(rng.integers(TRAIN_SEED_LIMIT)),
        )
        scene = RoadScene(config)
        scene.advance(int(rng.integers(0, 50)))
        return scene, [self._frames_per_scene]

    def sample(self) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]]:
        """One augmented training image (3 x CROP_ROWS x 320) and its targets [M, 5]."""
        rng = self._rng
        k = int(rng.integers(len(self._pool)))
        scene, left = self._pool[k]
        left[0] -= 1
        if left[0] <= 0:
            self._pool[k] = self._new_scene()
        scene.advance(int(rng.integers(1, 5)))
        frame = scene.step()
        boxes = np.array([o.box for o in frame.objects], dtype=np.float32).reshape(-1, 4)
        classes = np.array([o.cls for o in frame.objects], dtype=np.float32)
        return augment(frame.image, boxes, classes, rng)

    def batch(self, size: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Images [B, 3, CROP_ROWS, 320] and targets [B, M, 5] padded with class -1."""
        return collate([self.sample() for _ in range(size)])


def augment(
    image_bgr: npt.NDArray[np.uint8],
    boxes: npt.NDArray[np.float32],
    classes: npt.NDArray[np.float32],
    rng: np.random.Generator,
) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]]:
    """Letterbox, crop, flip and colour-jitter one labelled frame (boxes in its pixels).

    Returns the image (3 x CROP_ROWS x 320, RGB 0..1) and targets [M, 5]
    (class, x1, y1, x2, y2 in input pixels).
    """
    image, info = letterbox(image_bgr, IMGSZ)
    boxes = info.to_input(boxes.astype(np.float32).reshape(-1, 4))
    top, bottom = info.pad_y, IMGSZ[0] - info.pad_y
    y0 = int(rng.integers(max(0, bottom - CROP_ROWS), min(top, IMGSZ[0] - CROP_ROWS) + 1))
    image = image[:, y0 : y0 + CROP_ROWS]
    boxes[:, [1, 3]] -= y0
    if rng.random() < 0.5:
        image = image[:, :, ::-1]
        boxes[:, [0, 2]] = IMGSZ[1] - boxes[:, [2, 0]]
    # Exposure and white-balance jitter, so night is not one fixed tint.
    gain = rng.uniform(0.75, 1.25) * rng.uniform(0.9, 1.1, size=(3, 1, 1))
    image = np.clip(image * gain.astype(np.float32) + rng.uniform(-0.06, 0.06), 0.0, 1.0)
    targets = np.concatenate([classes.astype(np.float32)[:, None], boxes], axis=1)
    return np.ascontiguousarray(image, dtype=np.float32), targets


def collate(
    samples: Sequence[tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]]],
) -> tuple[torch.Tensor, torch.Tensor]:
    """Stack augmented samples: images [B, 3, H, W], targets [B, M, 5] padded with class -1."""
    m = max(1, *(t.shape[0] for _, t in samples))
    targets = np.zeros((len(samples), m, 5), dtype=np.float32)
    targets[:, :, 0] = -1
    for i, (_, t) in enumerate(samples):
        targets[i, : t.shape[0]] = t
    images = torch.from_numpy(np.stack([s for s, _ in samples]))
    return images, torch.from_numpy(targets)


class ModelEma:
    """Exponential moving average of weights and BN statistics, as YOLO trains."""

    def __init__(self, model: torch.nn.Module, decay: float = 0.998, ramp: float = 150.0) -> None:
        self.ema = copy.deepcopy(model).eval()
        self.decay, self.ramp, self.updates = decay, ramp, 0
        for p in self.ema.parameters():
            p.requires_grad_(False)

    @torch.no_grad()
    def update(self, model: torch.nn.Module) -> None:
        self.updates += 1
        d = self.decay * (1 - math.exp(-self.updates / self.ramp))  # short memory early on
        src = model.state_dict()
        for name, value in self.ema.state_dict().items():
            if value.dtype.is_floating_point:
                value.mul_(d).add_(src[name].detach(), alpha=1 - d)
            else:
                value.copy_(src[name])


def _param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict[str, object]]:
    # Weight decay on conv kernels only; decaying BN scales and biases hurts small nets.
    decay = [p for p in model.parameters() if p.ndim > 1]
    no_decay = [p for p in model.parameters() if p.ndim <= 1]
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


def _lr_factor(step: int, total: int, warmup: int) -> float:
    if step < warmup:
        return (step + 1) / warmup
    progress = min((step - warmup) / max(total - warmup, 1), 1.0)
    return 0.02 + 0.98 * 0.5 * (1 + math.cos(math.pi * progress))


def train(config: TrainConfig) -> tuple[RoadsideDetector, dict[str, float]]:
    """Train a detector; returns the EMA model (eval mode) and run statistics."""
    torch.manual_seed(config.seed)
    torch.set_num_threads(config.threads)
    sampler = SceneSampler(config.seed)
    model = RoadsideDetector(num_classes=len(CLASSES))
    # Channels-last convolutions run ~1.5x faster on CPU; the stubs omit the argument.
    model = model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
    loss_fn = DetectionLoss(len(CLASSES))
    optimiser = torch.optim.AdamW(_param_groups(model, config.weight_decay), lr=config.lr)
    ema = ModelEma(model)
    budget_s = config.minutes * 60.0
    total = config.steps or 10**9  # re-estimated from the measured pace below
    start = time.monotonic()
    step = 0
    running: dict[str, float] = {}
    while step < total:
        for group in optimiser.param_groups:
            group["lr"] = config.lr * _lr_factor(step, total, config.warmup_steps)
        images, targets = sampler.batch(config.batch_size)
        distances, logits = model.forward_raw(images.to(memory_format=torch.channels_last))
        loss, parts = loss_fn(distances, logits, targets)
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 10.0)
        optimiser.step()
        ema.update(model)
        step += 1
        for key, value in parts.items():
            running[key] = 0.95 * running.get(key, value) + 0.05 * value
        if config.steps is None and step % 100 == 20:
            # Re-plan from the pace so far: the machine may be shared and busy.
            elapsed = time.monotonic() - start
            pace = elapsed / step
            total = max(step + int((budget_s - elapsed) / pace), config.warmup_steps + 1)
            logger.info("%.2f s/step, planning %d steps for %.1f min", pace, total, config.minutes)
        if step % 50 == 0:
            logger.info(
                "step %d/%d loss cls %.3f box %.3f l1 %.3f pos/img %.1f (%.0f s)",
                step, total, running["cls"], running["box"], running["l1"], running["pos"],
                time.monotonic() - start,
            )  # fmt: skip
    elapsed = time.monotonic() - start
    model_out = ema.ema
    assert isinstance(model_out, RoadsideDetector)
    stats = {"steps": float(step), "train_seconds": elapsed, **running}
    return model_out.eval(), stats


def _parity_batch() -> npt.NDArray[np.float32]:
    frames = heldout_frames("day", 2)
    return np.stack([letterbox(f.image, IMGSZ)[0] for f in frames])


def _time_inference(path: Path, runs: int = 30) -> float:
    predict = onnx_predictor(path, threads=1)
    batch = _parity_batch()[:1]
    predict(batch)
    start = time.perf_counter()
    for _ in range(runs):
        predict(batch)
    return (time.perf_counter() - start) / runs * 1000.0


def main(argv: Sequence[str] | None = None) -> None:
    """CLI: train, export to ONNX with a parity check, evaluate on held-out sets."""
    parser = argparse.ArgumentParser(description="Train the Roadside road-user detector (CPU).")
    parser.add_argument("--out", type=Path, default=Path("models/detector.onnx"))
    parser.add_argument("--minutes", type=float, default=5.0, help="training time budget")
    parser.add_argument("--steps", type=int, help="fixed step count instead of a time budget")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=min(os.cpu_count() or 1, 4))
    parser.add_argument("--model-version", default="0.1.0")
    parser.add_argument("--eval-frames", type=int, default=160, help="held-out frames per condition")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")

    config = TrainConfig(
        minutes=args.minutes,
        steps=args.steps,
        batch_size=args.batch_size,
        lr=args.lr,
        seed=args.seed,
        threads=args.threads,
    )
    model, stats = train(config)
    report = export_onnx(model, args.out, model_version=args.model_version, parity_inputs=_parity_batch())
    predict = onnx_predictor(args.out)
    results: dict[str, object] = {
        "params": sum(p.numel() for p in model.parameters()),
        "onnx_bytes": report.size_bytes,
        "parity_max_abs_diff": report.max_abs_diff,
        "cpu_ms_per_image": _time_inference(args.out),
        **stats,
    }
    for condition in ("day", "dusk", "night"):
        results[condition] = asdict(evaluate_model(predict, heldout_frames(condition, args.eval_frames)))
    print(json.dumps(results, indent=2))  # the CLI's result


if __name__ == "__main__":
    main()
