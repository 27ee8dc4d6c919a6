"""The model kinds besides the detector: an image classifier and a sensor-window anomaly model.

Each runs on one :class:`~roadside.edge.inference.engine.OnnxSession` (providers,
warm-up, self-test and the active-provider report come from there) and is
chosen by ``model.kind`` through :func:`open_model`, the one registry.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import cv2
import numpy as np
import numpy.typing as npt

from roadside.edge.inference.engine import (
    LatencyWindow,
    ModelInfo,
    OnnxDetector,
    OnnxSession,
    file_version,
    labels_from_metadata,
    provider_settings,
    resolve_image_size,
)
from roadside.edge.inference.providers import ProviderSettings
from roadside.shared.errors import ConfigError

if TYPE_CHECKING:
    from roadside.edge.settings import ModelConfig

__all__ = [
    "DEFAULT_SENSOR_MODEL",
    "Classification",
    "OnnxClassifier",
    "SensorAnomalyModel",
    "open_model",
]

log = logging.getLogger(__name__)

DEFAULT_SENSOR_MODEL = Path(__file__).resolve().parents[2] / "models" / "sensor_anomaly.onnx"
FloatArray = npt.NDArray[np.float32]


@dataclass(frozen=True, slots=True)
class Classification:
    """One image's result: the best class and every class's probability."""

    class_id: int
    label: str
    score: float
    probabilities: FloatArray


def softmax(logits: FloatArray) -> FloatArray:
    """Row-wise softmax, stable for large logits."""
    shifted = logits - logits.max(axis=1, keepdims=True)
    exp = np.exp(shifted)
    result: FloatArray = (exp / exp.sum(axis=1, keepdims=True)).astype(np.float32)
    return result


def _is_probabilities(rows: FloatArray) -> bool:
    # An export that already ends in softmax must not get a second one (it would flatten the scores).
    return bool((rows >= 0).all() and np.allclose(rows.sum(axis=1), 1.0, atol=1e-3))


class OnnxClassifier:
    """An image classifier in the usual ONNX layout: NCHW RGB in, ``[batch, classes]`` out.

    Frames are scaled so the shorter side fills the input and centre-cropped
    (as Ultralytics and torchvision classifiers are trained), RGB in 0..1,
    then ``(x - mean) / std``; the defaults (0, 1) suit Ultralytics exports,
    ImageNet-trained torchvision models want their mean and std. Labels come
    from the ``names`` metadata unless configured.
    """

    def __init__(
        self,
        path: Path,
        providers: Sequence[str],
        labels: list[str] | None = None,
        version: str | None = None,
        intra_op_threads: int = 1,
        *,
        input_size: tuple[int, int] | None = None,
        provider_settings: ProviderSettings | None = None,
        strict: bool = False,
        mean: tuple[float, float, float] = (0.0, 0.0, 0.0),
        std: tuple[float, float, float] = (1.0, 1.0, 1.0),
        runtime: Any = None,
    ) -> None:
        settings = provider_settings or ProviderSettings()
        self._session = OnnxSession(path, providers, intra_op_threads, settings, strict, input_size, runtime)
        meta = self._session.metadata
        self.latency = LatencyWindow()
        self._mean = np.asarray(mean, dtype=np.float32).reshape(1, 3, 1, 1)
        self._inv_std = (1.0 / np.asarray(std, dtype=np.float32)).reshape(1, 3, 1, 1)
        size = resolve_image_size(self._session.input_shape, meta, input_size)
        started = time.perf_counter()
        classes = self._self_test(size, max(1, settings.max_batch))
        resolved = labels or labels_from_metadata(meta, classes) or [f"class{i}" for i in range(classes)]
        if len(resolved) != classes:
            raise ConfigError(f"classifier has {classes} classes but {len(resolved)} labels were configured")
        report = self._session.report
        self.info = ModelInfo(
            path=path,
            version=version or meta.get("model_version") or file_version(path),
            labels=resolved,
            input_size=size,
            requested_providers=list(providers),
            active_provider=report.active,
            kind="classifier",
            providers=report,
            load_ms=self._session.load_ms,
            warmup_ms=(time.perf_counter() - started) * 1000.0,
        )
        log.info("classifier %s loaded on %s, %d classes", self.info.version, report.active, classes)

    def _self_test(self, size: tuple[int, int], max_batch: int) -> int:
        out = np.zeros((0, 0), dtype=np.float32)
        for batch in sorted({1, max_batch}):
            out = self._session.run(np.zeros((batch, 3, *size), dtype=self._session.input_dtype))
            if out.ndim != 2 or out.shape[0] != batch or out.shape[1] < 2:
                raise ConfigError(f"classifier output shape {out.shape} is not [batch, classes]")
            if not np.isfinite(out).all():
                raise ConfigError("classifier output holds NaN/inf on a blank image; try model.fp16 = false")
        return int(out.shape[1])

    def prepare(self, images: Sequence[npt.NDArray[np.uint8]]) -> npt.NDArray[Any]:
        """BGR frames → the normalised NCHW batch."""
        th, tw = self.info.input_size
        batch = np.empty((len(images), 3, th, tw), dtype=np.float32)
        for i, image in enumerate(images):
            h, w = image.shape[:2]
            scale = max(th / h, tw / w)
            nh, nw = max(th, round(h * scale)), max(tw, round(w * scale))
            resized = cv2.resize(image, (nw, nh), interpolation=cv2.INTER_LINEAR)
            y0, x0 = (nh - th) // 2, (nw - tw) // 2
            crop = resized[y0 : y0 + th, x0 : x0 + tw, ::-1]  # centre, BGR → RGB
            batch[i] = crop.transpose(2, 0, 1)
        batch *= np.float32(1.0 / 255.0)
        batch -= self._mean
        batch *= self._inv_std
        return batch.astype(self._session.input_dtype, copy=False)

    def classify(self, images: Sequence[npt.NDArray[np.uint8]]) -> list[Classification]:
        """The class of each BGR frame."""
        if not images:
            return []
        tensor = self.prepare(images)
        started = time.perf_counter()
        rows = self._session.run(tensor)
        self.latency.add((time.perf_counter() - started) * 1000.0)
        probabilities = rows if _is_probabilities(rows) else softmax(rows)
        best = probabilities.argmax(axis=1)
        return [
            Classification(int(c), self.info.labels[int(c)], float(p[c]), p)
            for c, p in zip(best, probabilities, strict=True)
        ]

    @classmethod
    def from_config(cls, config: ModelConfig, streams: int = 1) -> OnnxClassifier:
        if config.path is None:
            raise ConfigError(
                "model.kind is classifier but model.path is not set; no classifier ships with Roadside"
            )
        return cls(
            config.path,
            config.providers,
            config.labels,
            config.version,
            config.intra_op_threads,
            input_size=config.input_size,
            provider_settings=provider_settings(config, streams),
            strict=config.strict,
        )


@dataclass(frozen=True, slots=True)
class _BoundScorer:
    """One quantity's scorer: the shared model with that quantity's resolution floor."""

    model: SensorAnomalyModel
    min_scale: float

    def score(self, window: npt.NDArray[np.float64]) -> float:
        return self.model.score(window, self.min_scale)


class SensorAnomalyModel:
    """A window of recent sensor readings → an anomaly score, on an ONNX model.

    It follows :class:`roadside.edge.sensors.events.AnomalyScorer` (``score(window)``)
    so it drops into the sensor pipeline's anomaly events in place of the
    built-in numpy scorer; :meth:`scorer` binds a quantity's ``min_scale``.
    The model's window length is fixed (metadata ``window``): a longer
    series is scored on its newest values, a shorter one scores 0, as too
    little history to judge; :meth:`check_window` refuses such a config.
    """

    def __init__(
        self,
        path: Path | None = None,
        providers: Sequence[str] = ("CPUExecutionProvider",),
        version: str | None = None,
        intra_op_threads: int = 1,
        *,
        min_scale: float = 0.5,
        provider_settings: ProviderSettings | None = None,
        strict: bool = False,
        runtime: Any = None,
    ) -> None:
        model_path = path or DEFAULT_SENSOR_MODEL
        self._session = OnnxSession(
            model_path, providers, intra_op_threads, provider_settings, strict, runtime=runtime
        )
        meta = self._session.metadata
        self.latency = LatencyWindow()
        self.min_scale = min_scale
        self.window = self._window_length(meta)
        self._takes_scale = "min_scale" in self._session.input_names()
        started = time.perf_counter()
        self._self_test()
        report = self._session.report
        self.info = ModelInfo(
            path=model_path,
            version=version or meta.get("model_version") or file_version(model_path),
            labels=[],
            input_size=(1, self.window),
            requested_providers=list(providers),
            active_provider=report.active,
            kind="sensor_anomaly",
            providers=report,
            load_ms=self._session.load_ms,
            warmup_ms=(time.perf_counter() - started) * 1000.0,
        )

    def _window_length(self, meta: dict[str, str]) -> int:
        shape = self._session.input_shape
        if len(shape) != 2:
            raise ConfigError(f"a sensor_anomaly model takes [batch, window]; this one takes {shape}")
        if isinstance(shape[1], int):
            return shape[1]
        try:
            return int(meta["window"])
        except (KeyError, ValueError) as exc:
            raise ConfigError(
                "sensor_anomaly model has a free window length and no 'window' metadata"
            ) from exc

    def _self_test(self) -> None:
        flat = np.full((2, self.window), 10.0)
        shifted = flat.copy()
        shifted[1, -max(1, self.window // 10) :] = 1000.0
        scores = self.score_batch(np.vstack([flat[:1], shifted[1:]]), self.min_scale)
        if scores.shape != (2,) or not np.isfinite(scores).all():
            raise ConfigError(
                f"sensor_anomaly model gave {scores!r} for two windows; expected two finite scores"
            )
        if not scores[1] > scores[0]:
            # A scorer that does not rank a 100x jump above a flat line would never raise an alert.
            raise ConfigError("sensor_anomaly model scores a flat window above a jump; wrong model?")

    def check_window(self, configured: int) -> None:
        """:class:`ConfigError` if the anomaly config keeps fewer readings than the model needs."""
        if configured < self.window:
            raise ConfigError(
                f"sensor anomaly window is {configured} readings but the model needs {self.window}; "
                f"set anomaly.window to at least {self.window}"
            )

    def score_batch(self, windows: npt.ArrayLike, min_scale: float | npt.ArrayLike) -> FloatArray:
        """Scores of ``[batch, window]`` series."""
        batch = np.ascontiguousarray(windows, dtype=np.float32)
        feeds = {self._session.input_name: batch}
        if self._takes_scale:
            scales = np.broadcast_to(np.asarray(min_scale, dtype=np.float32), (len(batch),))
            feeds["min_scale"] = np.ascontiguousarray(scales)
        started = time.perf_counter()
        scores = self._session.run_all(feeds)[0].reshape(-1)
        self.latency.add((time.perf_counter() - started) * 1000.0)
        return scores

    def score(self, window: npt.NDArray[np.float64], min_scale: float | None = None) -> float:
        """One series' score, newest value last (the ``AnomalyScorer`` protocol)."""
        if len(window) < self.window:
            return 0.0
        scale = self.min_scale if min_scale is None else min_scale
        return float(self.score_batch(window[-self.window :][None, :], scale)[0])

    def scorer(self, min_scale: float) -> _BoundScorer:
        """This model as one quantity's scorer."""
        return _BoundScorer(self, min_scale)

    @classmethod
    def from_config(cls, config: ModelConfig, streams: int = 1) -> SensorAnomalyModel:
        return cls(
            config.path,
            config.providers,
            config.version,
            config.intra_op_threads,
            provider_settings=dataclasses.replace(provider_settings(config, streams), max_batch=1),
            strict=config.strict,
        )


Model = OnnxDetector | OnnxClassifier | SensorAnomalyModel

# The one registry of model kinds, keyed by ``model.kind``.
MODEL_KINDS: Final[dict[str, Callable[[ModelConfig, int], Model]]] = {
    "detector": OnnxDetector.from_config,
    "classifier": OnnxClassifier.from_config,
    "sensor_anomaly": SensorAnomalyModel.from_config,
}


def open_model(config: ModelConfig, streams: int = 1) -> Model:
    """The model ``config.kind`` names, loaded, warmed up and self-tested."""
    try:
        factory = MODEL_KINDS[config.kind]
    except KeyError as exc:
        raise ConfigError(f"unknown model.kind {config.kind!r}; one of {sorted(MODEL_KINDS)}") from exc
    return factory(config, streams)
