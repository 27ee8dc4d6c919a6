"""The onnxruntime adapter: the only module of the agent that imports ``onnxruntime``.

One session per model, an ordered provider list (TensorRT → CUDA → CPU on a
GPU box), a warm-up and self-test at load, and the provider really in use
reported, never a silent fallback.
"""

from __future__ import annotations

import ast
import dataclasses
import hashlib
import logging
import threading
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
import onnxruntime as ort

from edge.inference.yolo import Detections, decode_yolo, letterbox_batch
from shared.errors import ConfigError

log = logging.getLogger(__name__)

DEFAULT_MODEL = Path(__file__).resolve().parents[2] / "models" / "detector.onnx"


@dataclass(frozen=True, slots=True)
class ModelInfo:
    path: Path
    version: str
    labels: list[str]
    input_size: tuple[int, int]  # (height, width)
    requested_providers: list[str]
    active_provider: str


class LatencyWindow:
    """The last ``size`` inference times, for p50/p95 in health reports."""

    def __init__(self, size: int = 512) -> None:
        self._values: deque[float] = deque(maxlen=size)
        self._lock = threading.Lock()

    def add(self, ms: float) -> None:
        with self._lock:
            self._values.append(ms)

    def percentiles(self) -> tuple[float | None, float | None]:
        with self._lock:
            if not self._values:
                return None, None
            values = np.fromiter(self._values, dtype=np.float64)
        p50, p95 = np.percentile(values, [50, 95])
        return float(p50), float(p95)


def _file_version(path: Path) -> str:
    return "sha-" + hashlib.sha256(path.read_bytes()).hexdigest()[:12]


def _labels_from_metadata(meta: dict[str, str], classes: int) -> list[str] | None:
    raw = meta.get("names")
    if raw is None:
        return None
    try:
        names = ast.literal_eval(raw)  # Ultralytics writes a Python dict literal
    except (ValueError, SyntaxError):
        return None
    if isinstance(names, dict):
        return [str(names.get(i, f"class{i}")) for i in range(classes)]
    if isinstance(names, list):
        return [str(n) for n in names]
    return None


class OnnxDetector:
    """A YOLO-layout detector on onnxruntime."""

    def __init__(
        self,
        path: Path | None,
        providers: list[str],
        conf_threshold: float = 0.35,
        iou_threshold: float = 0.5,
        labels: list[str] | None = None,
        version: str | None = None,
        intra_op_threads: int = 1,
    ) -> None:
        model_path = path or DEFAULT_MODEL
        if not model_path.is_file():
            raise ConfigError(f"model file {model_path} does not exist; set model.path to an ONNX file")
        self.conf_threshold = conf_threshold
        self.iou_threshold = iou_threshold
        self.latency = LatencyWindow()
        self._session = self._open(model_path, providers, intra_op_threads)
        self._input = self._session.get_inputs()[0]
        meta = dict(self._session.get_modelmeta().custom_metadata_map)
        self.info = ModelInfo(
            path=model_path,
            version=version or meta.get("model_version") or _file_version(model_path),
            labels=[],
            input_size=self._input_size(meta),
            requested_providers=list(providers),
            active_provider=self._session.get_providers()[0],
        )
        classes = self._self_test()
        resolved = labels or _labels_from_metadata(meta, classes) or [f"class{i}" for i in range(classes)]
        if len(resolved) != classes:
            raise ConfigError(f"model has {classes} classes but {len(resolved)} labels were configured")
        self.info = dataclasses.replace(self.info, labels=resolved)
        log.info(
            "model %s loaded on %s (requested %s), input %s, %d classes",
            self.info.version,
            self.info.active_provider,
            providers,
            self.info.input_size,
            classes,
        )

    @staticmethod
    def _open(path: Path, providers: list[str], threads: int) -> ort.InferenceSession:
        available = set(ort.get_available_providers())
        usable = [p for p in providers if p in available]
        missing = [p for p in providers if p not in available]
        if missing:
            log.warning("execution providers %s are not available here (have %s)", missing, sorted(available))
        if not usable:
            raise ConfigError(
                f"none of the configured providers {providers} is available; available: {sorted(available)}"
            )
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        try:
            return ort.InferenceSession(str(path), sess_options=options, providers=usable)
        except Exception as exc:  # onnxruntime raises its own untyped errors
            raise ConfigError(f"onnxruntime cannot load {path}: {exc}") from exc

    def _input_size(self, meta: dict[str, str]) -> tuple[int, int]:
        shape = self._input.shape
        if len(shape) == 4 and isinstance(shape[2], int) and isinstance(shape[3], int):
            return shape[2], shape[3]
        try:
            size = ast.literal_eval(meta.get("imgsz", "[640, 640]"))
            return int(size[0]), int(size[1])
        except (ValueError, SyntaxError, TypeError, IndexError) as exc:
            raise ConfigError("model input size is dynamic and metadata has no usable imgsz") from exc

    def _self_test(self) -> int:
        """Warm up and check the output follows the YOLO layout; return the class count."""
        h, w = self.info.input_size
        out = self._run(np.zeros((1, 3, h, w), dtype=np.float32))
        if out.ndim != 3 or out.shape[0] != 1 or min(out.shape[1:]) <= 4:
            raise ConfigError(
                f"model output shape {out.shape} is not the YOLO layout [1, 4+classes, anchors]"
            )
        self._run(np.zeros((1, 3, h, w), dtype=np.float32))
        return int(min(out.shape[1:]) - 4)

    def _run(self, batch: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
        result = self._session.run(None, {self._input.name: batch})[0]
        return np.asarray(result, dtype=np.float32)

    def detect(self, frames: list[npt.NDArray[np.uint8]]) -> list[Detections]:
        """Detections for each BGR frame, in frame pixel coordinates."""
        batch, infos = letterbox_batch(frames, self.info.input_size)
        started = time.perf_counter()
        output = self._run(batch)
        self.latency.add((time.perf_counter() - started) * 1000.0)
        return [
            decode_yolo(output[i], self.conf_threshold, self.iou_threshold, infos[i])
            for i in range(len(frames))
        ]
