"""Fine-tune a published detector on frames from a new condition (the drift loop).

A published model exists only as its ONNX file, and export folds batch norm
into the convolutions, so :func:`load_onnx_detector` maps every ``Conv``
node back to the ``RoadsideDetector`` module named in the node's scope
(``/stem/stem.0/stem.0.0/Conv`` is ``stem.0.0``) and sets the batch norm
after it to the identity with the folded bias as its shift. Fine-tuning then
keeps batch norm in inference mode (frozen statistics; scale and shift still
learn), the usual choice for a short fine-tune on small batches, so the
model starts exactly where the parent was.

Each batch mixes the new frames (augmented as in training) with a large share
of fresh frames from the ordinary synthetic scene (replay, :class:`ReplaySampler`:
day, dusk, night and heavy rain in turn), so the model learns the new
condition without forgetting the others, rain streaks above all; the heads
learn at a tenth of the backbone's rate, so the parent's scores hold.
:func:`samples_from_manifest` turns a dataset version (``roadside.shared.dataset``)
into training frames.
"""

from __future__ import annotations

import logging
import math
import time
from collections import Counter, deque
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import numpy.typing as npt
import onnx
import torch
from onnx import numpy_helper
from torch import nn

from roadside.shared.dataset import DatasetManifest
from roadside.shared.errors import ConfigError
from roadside.sim.synthetic import CLASSES, RoadScene, SceneConfig, render_dataset

from .detector import DetectionLoss, RoadsideDetector
from .evaluate import TRAIN_SEED_LIMIT
from .train import ModelEma, SceneSampler, augment, collate

__all__ = [
    "FinetuneConfig",
    "LabelledFrame",
    "ReplaySampler",
    "finetune",
    "load_onnx_detector",
    "rendered_frames",
    "repeat_factors",
    "samples_from_manifest",
]

logger = logging.getLogger(__name__)

ImageU8 = npt.NDArray[np.uint8]


@dataclass(frozen=True)
class LabelledFrame:
    """One training image (BGR, any size) and its boxes (x1, y1, x2, y2 pixels) and class ids."""

    image: ImageU8
    boxes: npt.NDArray[np.float32]  # [M, 4]
    classes: npt.NDArray[np.int64]  # [M]

    def __post_init__(self) -> None:
        if self.image.ndim != 3 or self.image.shape[2] != 3:
            raise ConfigError(f"a training image must be HxWx3, got shape {self.image.shape}")
        if self.boxes.shape != (self.classes.shape[0], 4):
            raise ConfigError(f"boxes {self.boxes.shape} do not match {self.classes.shape[0]} classes")


@dataclass(frozen=True)
class FinetuneConfig:
    """Settings of one fine-tune; the defaults are the measured drift recipe (docs/releases.md)."""

    steps: int | None = 100  # fixed schedule; None: plan steps from ``seconds``
    seconds: float = 45.0
    batch_size: int = 12
    lr: float = 1e-3  # lower (5e-4) left more false positives: replay had less time to undo them
    weight_decay: float = 5e-4
    warmup_steps: int = 10
    # Share of each batch replayed from the ordinary scene (ReplaySampler). The new
    # condition is learnt from a couple of frames per batch (fog mAP ~0.97 from 0.3 to
    # 0.85 alike), while each step of replay pushes down the false positives that
    # fitting fog raises elsewhere (day and rain count MAE fell steadily with it).
    replay_share: float = 0.85
    # Heaviest rain in the replay's rainy scenes: the held-out rain is 0.9, and replay
    # up to 0.8 still left rain streaks read as cars.
    replay_rain: float = 1.0
    # Stem and stages learn at the full lr: fog is a low-level change (a veil), best
    # undone early. A frozen backbone, head-only fine-tune was far worse (count MAE
    # doubled on every condition).
    backbone_lr_scale: float = 1.0
    # Fuse and heads at a tenth: the parent's decision boundaries stay put, so fewer
    # background cells cross 0.25 on day (count MAE 1.35 -> 0.91 at replay 0.75).
    head_lr_scale: float = 0.1
    # Repeat-factor sampling of the new frames (LVIS, Gupta et al. 2019), off at 0: a class
    # in a share f of the frames below this threshold repeats its frames sqrt(t / f) times.
    # SUMO's frames are nearly all cars; a head-on cyclist was learnt as a car (docs/sumo.md, 0.4.0).
    repeat_threshold: float = 0.0
    seed: int = 0
    threads: int = 2

    def __post_init__(self) -> None:
        if self.steps is not None and self.steps < 1:
            raise ConfigError(f"steps must be >= 1, got {self.steps}")
        if self.steps is None and self.seconds <= 0:
            raise ConfigError(f"seconds must be positive, got {self.seconds}")
        if not 0.0 <= self.replay_share < 1.0:
            raise ConfigError(f"replay_share must be in [0, 1), got {self.replay_share}")
        if not 0.0 <= self.replay_rain <= 1.0:
            raise ConfigError(f"replay_rain must be in [0, 1], got {self.replay_rain}")
        if not 0.0 <= self.repeat_threshold <= 1.0:
            raise ConfigError(f"repeat_threshold must be in [0, 1], got {self.repeat_threshold}")
        if self.backbone_lr_scale < 0 or self.head_lr_scale < 0:
            raise ConfigError("backbone_lr_scale and head_lr_scale must be >= 0")
        if self.backbone_lr_scale == self.head_lr_scale == 0:
            raise ConfigError("backbone_lr_scale and head_lr_scale cannot both be 0: nothing would train")
        if self.batch_size < 1 or self.lr <= 0 or self.threads < 1:
            raise ConfigError("batch_size and threads must be >= 1 and lr positive")


def _conv_modules(model: nn.Module) -> dict[str, nn.Conv2d]:
    return {name: m for name, m in model.named_modules() if isinstance(m, nn.Conv2d)}


def module_path(node_name: str) -> str:
    """The module a TorchScript-exported node came from: ``/stage8/stage8.1/body/body.0/Conv`` → ``stage8.1.body.0``.

    Each scope segment is a child's name, prefixed by its parent's segment
    when the parent is a container that names children ``<parent>.<i>``.
    """
    prefix, last = "", ""
    for segment in node_name.strip("/").split("/")[:-1]:
        if last and segment.startswith(last + "."):
            last = segment
        else:
            prefix, last = (f"{prefix}.{last}" if prefix else last), segment
    return f"{prefix}.{last}" if prefix else last


def load_onnx_detector(path: Path, num_classes: int = len(CLASSES)) -> RoadsideDetector:
    """Rebuild a ``RoadsideDetector`` from its exported ONNX file (batch norm folded)."""
    try:
        proto = onnx.load(str(path))
    except OSError as exc:
        raise ConfigError(f"cannot read the parent model {path}: {exc.strerror}") from exc
    except Exception as exc:  # protobuf's DecodeError and others, for a file that is not a model
        raise ConfigError(f"{path} is not an ONNX model: {exc}") from exc
    weights = {t.name: numpy_helper.to_array(t) for t in proto.graph.initializer}
    model = RoadsideDetector(num_classes=num_classes)
    convs = _conv_modules(model)
    modules = dict(model.named_modules())
    seen: set[str] = set()
    for node in proto.graph.node:
        if node.op_type != "Conv":
            continue
        scope = module_path(node.name)
        conv = convs.get(scope)
        if conv is None or len(node.input) < 2 or node.input[1] not in weights:
            raise ConfigError(f"{path} is not a RoadsideDetector export: unexpected Conv node {node.name!r}")
        kernel = torch.from_numpy(weights[node.input[1]].copy())
        if kernel.shape != conv.weight.shape:
            raise ConfigError(
                f"{path}: {scope} has shape {tuple(kernel.shape)}, expected {tuple(conv.weight.shape)}"
            )
        bias = (
            torch.from_numpy(weights[node.input[2]].copy())
            if len(node.input) > 2
            else torch.zeros(kernel.shape[0])
        )
        with torch.no_grad():
            conv.weight.copy_(kernel)
            if conv.bias is not None:
                conv.bias.copy_(bias)
            else:
                _set_identity_bn(modules, scope, bias)
        seen.add(scope)
    missing = sorted(set(convs) - seen)
    if missing:
        raise ConfigError(f"{path} is not a RoadsideDetector export: no weights for {', '.join(missing)}")
    return model.eval()


def _set_identity_bn(modules: dict[str, nn.Module], conv_name: str, shift: torch.Tensor) -> None:
    # ConvBnAct is Sequential(conv, bn, act): the conv is "<block>.0", its batch norm "<block>.1".
    block, _, index = conv_name.rpartition(".")
    bn = modules.get(f"{block}.{int(index) + 1}")
    if not isinstance(bn, nn.BatchNorm2d):
        raise ConfigError(f"{conv_name} has no bias and no batch norm after it")
    assert bn.running_mean is not None
    assert bn.running_var is not None
    bn.running_mean.zero_()
    bn.running_var.fill_(1.0 - bn.eps)  # so (x - 0) / sqrt(var + eps) is x exactly
    bn.weight.data.fill_(1.0)
    bn.bias.data.copy_(shift)


def _decode_image(path: Path) -> ImageU8:
    try:
        data = np.fromfile(path, dtype=np.uint8)
    except OSError as exc:
        raise ConfigError(f"{path} is not a readable image: {exc.strerror}") from exc
    image = cv2.imdecode(data, cv2.IMREAD_COLOR) if data.size else None
    if image is None:
        raise ConfigError(f"{path} is not a readable image")
    return np.asarray(image, dtype=np.uint8)


def samples_from_manifest(
    folder: Path, manifest: DatasetManifest, class_names: Sequence[str] = CLASSES
) -> list[LabelledFrame]:
    """The labelled samples of a dataset version as training frames (unlabelled ones are skipped)."""
    index = {name: i for i, name in enumerate(class_names)}
    unknown = sorted({b.cls for s in manifest.labelled() for b in s.labels or () if b.cls not in index})
    if unknown:
        raise ConfigError(
            f"dataset {manifest.name} v{manifest.version} has classes the model does not: {', '.join(unknown)}"
        )
    frames = []
    for sample in manifest.labelled():
        image = _decode_image(folder / sample.file)
        if image.shape[:2] != (sample.height, sample.width):
            raise ConfigError(
                f"{sample.file} is {image.shape[1]}x{image.shape[0]}, manifest says {sample.width}x{sample.height}"
            )
        labels = sample.labels or ()
        boxes = np.array([b.box for b in labels], dtype=np.float32).reshape(-1, 4)
        classes = np.array([index[b.cls] for b in labels], dtype=np.int64)
        frames.append(LabelledFrame(image=image, boxes=boxes, classes=classes))
    if not frames:
        raise ConfigError(f"dataset {manifest.name} v{manifest.version} has no labelled samples")
    return frames


def rendered_frames(n: int, config: SceneConfig, stride: int = 5, scenes: int = 8) -> list[LabelledFrame]:
    """``n`` labelled frames of the synthetic scene (a stand-in for collected hard examples)."""
    if config.seed * 1000 + scenes > TRAIN_SEED_LIMIT:
        raise ConfigError(f"seed {config.seed} would render held-out scenes; use a seed below 1000")
    return [
        LabelledFrame(
            image=f.image,
            boxes=np.array([o.box for o in f.objects], dtype=np.float32).reshape(-1, 4),
            classes=np.array([o.cls for o in f.objects], dtype=np.int64),
        )
        for f in render_dataset(n, config, stride=stride, scenes=scenes)
    ]


# Replay scenes take these conditions in turn (light range, rainy?), so each is a quarter of the pool.
REPLAY_CONDITIONS: tuple[tuple[str, float, float, bool], ...] = (
    ("day", 0.85, 1.15, False),
    ("dusk", 0.4, 0.8, False),
    ("night", 0.18, 0.35, False),
    ("rain", 0.6, 1.0, True),
)


class ReplaySampler(SceneSampler):
    """The ordinary scene for replay: day, dusk, night and rain in turn, never fog.

    :class:`SceneSampler` draws rain on 15 % of scenes and only light rain
    (0.1..0.5), so a small replay pool rarely holds any; a fine-tune on new
    frames then forgets that rain streaks are not objects. Here every fourth
    scene is rainy, with rain from 0.3 up to ``max_rain``.
    """

    def __init__(self, seed: int, pool: int = 8, max_rain: float = 1.0, frames_per_scene: int = 60) -> None:
        self.max_rain = max_rain
        self.drawn: list[SceneConfig] = []  # every scene's settings, in order (tests read them)
        super().__init__(seed, pool=pool, frames_per_scene=frames_per_scene)

    def _new_scene(self) -> tuple[RoadScene, list[int]]:
        rng = self._rng
        _, low, high, rainy = REPLAY_CONDITIONS[len(self.drawn) % len(REPLAY_CONDITIONS)]
        wide = rng.random() < 0.2
        config = SceneConfig(
            width=640,
            height=360 if wide else 480,
            light=float(rng.uniform(low, high)),
            rain=float(rng.uniform(min(0.3, self.max_rain), self.max_rain)) if rainy else 0.0,
            spawn_rate=float(rng.uniform(0.8, 2.5)),
            seed=int(rng.integers(TRAIN_SEED_LIMIT)),
        )
        self.drawn.append(config)
        scene = RoadScene(config)
        scene.advance(int(rng.integers(0, 50)))
        return scene, [self._frames_per_scene]


def repeat_factors(frames: Sequence[LabelledFrame], threshold: float) -> npt.NDArray[np.float64]:
    """How often each frame is drawn relative to uniform: repeat-factor sampling (LVIS).

    A class present in a share ``f`` of the frames has the factor ``max(1, sqrt(threshold / f))``;
    a frame takes the largest factor of the classes it shows (1 for a frame with no boxes).
    ``threshold`` 0 gives every frame 1.
    """
    present = [{int(c) for c in f.classes} for f in frames]
    frames_with = Counter(c for classes in present for c in classes)
    factor = {c: max(1.0, math.sqrt(threshold * len(frames) / k)) for c, k in frames_with.items()}
    return np.array([max((factor[c] for c in classes), default=1.0) for classes in present], np.float64)


class _MixedSampler:
    """Batches of the given frames, augmented, with a share replayed from the ordinary scene."""

    def __init__(
        self,
        frames: Sequence[LabelledFrame],
        replay_share: float,
        seed: int,
        max_rain: float = 1.0,
        repeat_threshold: float = 0.0,
    ) -> None:
        self._frames = frames
        self._replay_share = replay_share
        self._rng = np.random.default_rng((seed, 7))
        self._replay = ReplaySampler(seed, pool=8, max_rain=max_rain) if replay_share > 0 else None
        self._weights: npt.NDArray[np.float64] | None = None
        if repeat_threshold > 0:
            factors = repeat_factors(frames, repeat_threshold)
            self._weights = factors / factors.sum()
            logger.info(
                "fine-tune: repeat-factor sampling at %.2f, %d of %d frames repeated, up to %.2fx",
                repeat_threshold,
                int((factors > 1.0).sum()),
                len(frames),
                float(factors.max()),
            )

    def _pick(self) -> LabelledFrame:
        if self._weights is None:  # uniform, drawn exactly as before the option existed
            return self._frames[int(self._rng.integers(len(self._frames)))]
        return self._frames[int(self._rng.choice(len(self._frames), p=self._weights))]

    def batch(self, size: int) -> tuple[torch.Tensor, torch.Tensor]:
        n_replay = round(size * self._replay_share) if self._replay is not None else 0
        samples = []
        for k in range(size):
            if k < n_replay and self._replay is not None:
                samples.append(self._replay.sample())
                continue
            f = self._pick()
            samples.append(augment(f.image, f.boxes, f.classes.astype(np.float32), self._rng))
        return collate(samples)


class _RawOutputs(nn.Module):
    """The detector with :meth:`RoadsideDetector.forward_raw` as its forward (what the loss takes)."""

    def __init__(self, detector: RoadsideDetector) -> None:
        super().__init__()
        self.detector = detector

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.detector.forward_raw(images)


def _freeze_batch_norm(model: nn.Module) -> None:
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.eval()


BACKBONE = ("stem", "stage8", "stage16")
HEAD = ("fuse", "box_head", "cls_head")


def _param_groups(model: RoadsideDetector, config: FinetuneConfig) -> list[dict[str, object]]:
    """AdamW groups: decay on kernels only; each part at its lr scale (frozen at 0)."""
    groups: list[dict[str, object]] = []
    for part_scale, names in ((config.backbone_lr_scale, BACKBONE), (config.head_lr_scale, HEAD)):
        params = [p for n in names for p in getattr(model, n).parameters()]
        if part_scale == 0:
            for p in params:
                p.requires_grad_(False)
            continue
        for decay in (True, False):
            chosen = [p for p in params if (p.ndim > 1) == decay]
            wd = config.weight_decay if decay else 0.0
            groups.append({"params": chosen, "weight_decay": wd, "lr_scale": part_scale})
    return groups


def _lr_factor(step: int, total: int, warmup: int) -> float:
    if step < warmup:
        return (step + 1) / warmup
    progress = min((step - warmup) / max(total - warmup, 1), 1.0)
    return 0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * progress))


# A time budget's step plan is redrawn after every step from the pace of the latest PLAN_WINDOW
# steps. Planned once at step 5, a 1,500 s budget ran 513 steps in 508 s: the first steps were
# three times slower than the rest (warm-up, and a box whose load fell meanwhile).
PLAN_WINDOW = 5


def _agreed_total(
    step: int, elapsed: float, window_s: float, window_steps: int, budget_s: float, warmup: int
) -> int:
    """Steps that fit the budget at the latest pace; under DDP, every rank plans from the slowest.

    ``elapsed`` is the time since the start, ``window_s`` what the latest ``window_steps`` took.
    """
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        t = torch.tensor([elapsed, window_s], dtype=torch.float64)
        if torch.distributed.get_backend() == "nccl":
            t = t.cuda()
        torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.MAX)
        elapsed, window_s = float(t[0].item()), float(t[1].item())
    pace = window_s / window_steps
    return max(step + int((budget_s - elapsed) / pace), warmup + 1)


def finetune(
    parent: Path | RoadsideDetector,
    frames: Sequence[LabelledFrame],
    config: FinetuneConfig = FinetuneConfig(),
    device: torch.device | None = None,
) -> tuple[RoadsideDetector, dict[str, float]]:
    """Fine-tune ``parent`` (an ONNX file or a model) on ``frames``; returns the EMA model and stats.

    Under ``torch.distributed`` (``torchrun``, initialised by the caller) the
    model is wrapped in DistributedDataParallel; each rank draws its own
    batches (seeded by rank) and ``batch_size`` is per rank.
    """
    if not frames:
        raise ConfigError("fine-tuning needs at least one labelled frame")
    device = device or torch.device("cpu")
    torch.manual_seed(config.seed)
    if device.type == "cpu":
        torch.set_num_threads(config.threads)
    distributed = torch.distributed.is_available() and torch.distributed.is_initialized()
    rank = torch.distributed.get_rank() if distributed else 0
    model = load_onnx_detector(parent) if isinstance(parent, Path) else parent
    model = model.to(device).train()
    _freeze_batch_norm(model)
    groups = _param_groups(model, config)  # before DDP: it must see which parameters are frozen
    trained: nn.Module = _RawOutputs(model)
    if distributed:
        # DDP synchronises gradients only through its own forward(), hence the wrapper.
        ids = [device.index] if device.type == "cuda" else None
        trained = nn.parallel.DistributedDataParallel(trained, device_ids=ids)
    sampler = _MixedSampler(
        frames, config.replay_share, config.seed + 1000 * rank, config.replay_rain, config.repeat_threshold
    )
    loss_fn = DetectionLoss(model.num_classes)
    optimiser = torch.optim.AdamW(groups, lr=config.lr)
    ema = ModelEma(model, decay=0.99, ramp=20.0)  # short run: a short memory
    total = config.steps or 10**9
    start = time.monotonic()
    marks = deque([start], maxlen=PLAN_WINDOW + 1)  # when the latest steps ended
    step = 0
    running: dict[str, float] = {}
    while step < total:
        for group in optimiser.param_groups:
            group["lr"] = config.lr * group["lr_scale"] * _lr_factor(step, total, config.warmup_steps)
        images, targets = sampler.batch(config.batch_size)
        distances, logits = trained(images.to(device))
        loss, parts = loss_fn(distances, logits, targets.to(device))
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 10.0)
        optimiser.step()
        ema.update(model)
        step += 1
        for key, value in parts.items():
            running[key] = 0.9 * running.get(key, value) + 0.1 * value
        marks.append(time.monotonic())
        if config.steps is None and step >= PLAN_WINDOW:
            total = _agreed_total(
                step,
                marks[-1] - start,
                marks[-1] - marks[0],
                len(marks) - 1,
                config.seconds,
                config.warmup_steps,
            )
            if step == PLAN_WINDOW:
                logger.info("fine-tune: planning %d steps for %.0f s", total, config.seconds)
        if step % 20 == 0:
            logger.info("fine-tune step %d/%d cls %.3f box %.3f", step, total, running["cls"], running["box"])
    out = ema.ema
    assert isinstance(out, RoadsideDetector)
    stats = {"steps": float(step), "train_seconds": time.monotonic() - start, **running}
    return out.cpu().eval(), stats
