"""The model kinds on real onnxruntime: classifier, sensor anomaly model, detector hand-offs."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest

from roadside.edge.inference.engine import OnnxDetector
from roadside.edge.inference.kinds import (
    DEFAULT_SENSOR_MODEL,
    OnnxClassifier,
    SensorAnomalyModel,
    open_model,
    softmax,
)
from roadside.edge.sensors.events import RobustZScorer
from roadside.edge.settings import ModelConfig
from roadside.shared.errors import ConfigError

torch = pytest.importorskip("torch")

CPU = ["CPUExecutionProvider"]
LABELS = ["car", "van", "bus"]


def export_classifier(path: Path, with_softmax: bool = False, size: int = 32) -> Any:
    """A tiny CNN classifier exported like torchvision/Ultralytics do, ``names`` in its metadata."""
    torch.manual_seed(0)
    layers: list[Any] = [
        torch.nn.Conv2d(3, 8, 3, stride=2, padding=1),
        torch.nn.ReLU(),
        torch.nn.AdaptiveAvgPool2d(1),
        torch.nn.Flatten(),
        torch.nn.Linear(8, len(LABELS)),
    ]
    if with_softmax:
        layers.append(torch.nn.Softmax(dim=1))
    model = torch.nn.Sequential(*layers).eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model,
            (torch.zeros(1, 3, size, size),),
            str(path),
            input_names=["images"],
            output_names=["logits"],
            dynamic_axes={"images": {0: "batch"}, "logits": {0: "batch"}},
            opset_version=17,
            dynamo=False,
        )
    proto = onnx.load(str(path))
    entry = proto.metadata_props.add()
    entry.key, entry.value = "names", str(dict(enumerate(LABELS)))
    onnx.save(proto, str(path))
    return model


def frames(count: int) -> list[np.ndarray]:
    rng = np.random.default_rng(1)
    shapes = [(48, 64), (64, 48), (32, 32), (100, 40)]
    return [rng.integers(0, 255, (*shapes[i % 4], 3), dtype=np.uint8) for i in range(count)]


# -- classifier ---------------------------------------------------------------------


def test_classifier_matches_pytorch_softmax_and_reads_labels(tmp_path: Path) -> None:
    model = export_classifier(tmp_path / "cls.onnx")
    classifier = OnnxClassifier(tmp_path / "cls.onnx", CPU)
    assert classifier.info.labels == LABELS
    assert classifier.info.kind == "classifier"
    assert classifier.info.active_provider == "CPUExecutionProvider"
    images = frames(4)
    results = classifier.classify(images)
    with torch.no_grad():
        expected = torch.softmax(model(torch.from_numpy(classifier.prepare(images))), dim=1).numpy()
    got = np.stack([r.probabilities for r in results])
    np.testing.assert_allclose(got, expected, atol=1e-5)
    assert [r.label for r in results] == [LABELS[i] for i in expected.argmax(axis=1)]
    assert all(abs(r.probabilities.sum() - 1.0) < 1e-5 for r in results)


def test_classifier_prepare_centre_crops_rgb_in_0_to_1(tmp_path: Path) -> None:
    export_classifier(tmp_path / "cls.onnx")
    classifier = OnnxClassifier(tmp_path / "cls.onnx", CPU)
    image = np.zeros((32, 64, 3), dtype=np.uint8)
    image[:, 16:48] = (255, 0, 0)  # blue centre, black sides: the crop keeps the centre only
    tensor = classifier.prepare([image])
    assert tensor.shape == (1, 3, 32, 32)
    np.testing.assert_allclose(tensor[0, 2], 1.0)  # blue is the last RGB plane
    np.testing.assert_allclose(tensor[0, :2], 0.0)


def test_an_export_ending_in_softmax_is_not_softmaxed_twice(tmp_path: Path) -> None:
    model = export_classifier(tmp_path / "cls.onnx", with_softmax=True)
    classifier = OnnxClassifier(tmp_path / "cls.onnx", CPU)
    images = frames(2)
    with torch.no_grad():
        expected = model(torch.from_numpy(classifier.prepare(images))).numpy()
    got = np.stack([r.probabilities for r in classifier.classify(images)])
    np.testing.assert_allclose(got, expected, atol=1e-6)


def test_classifier_refuses_a_label_count_that_does_not_match(tmp_path: Path) -> None:
    export_classifier(tmp_path / "cls.onnx")
    with pytest.raises(ConfigError, match="3 classes but 2 labels"):
        OnnxClassifier(tmp_path / "cls.onnx", CPU, labels=["a", "b"])


def test_softmax_is_stable_for_large_logits() -> None:
    out = softmax(np.array([[1000.0, 0.0, -1000.0]], dtype=np.float32))
    assert np.isfinite(out).all()
    assert out[0, 0] == pytest.approx(1.0)


# -- sensor anomaly model -------------------------------------------------------------


def test_shipped_sensor_model_is_small_and_declares_its_contract() -> None:
    assert DEFAULT_SENSOR_MODEL.stat().st_size < 200 * 1024
    model = SensorAnomalyModel()
    assert model.window == 60
    assert model.info.kind == "sensor_anomaly"
    assert model.info.version == "robust-z-onnx-1"


@pytest.mark.parametrize("min_scale", [0.1, 0.5, 1.0])
def test_sensor_model_scores_like_the_builtin_robust_z_scorer(min_scale: float) -> None:
    model = SensorAnomalyModel()
    builtin = RobustZScorer(min_scale=min_scale)
    rng = np.random.default_rng(7)
    for i in range(40):
        window = rng.normal(50, rng.uniform(0.2, 5), 60).round(1)
        if i % 3 == 0:
            window[-3:] += rng.uniform(10, 60)  # a level shift the alert should see
        if i % 7 == 0:
            window[:] = 20.0  # flat: the floor decides
        assert model.scorer(min_scale).score(window) == pytest.approx(
            builtin.score(window), rel=1e-4, abs=1e-4
        )


def test_sensor_model_window_rules() -> None:
    model = SensorAnomalyModel()
    assert model.score(np.full(10, 5.0)) == 0.0, "too little history to judge"
    long = np.concatenate([np.full(100, 1000.0), np.full(60, 5.0)])
    assert model.score(long) == 0.0, "a longer series is scored on its newest 60 values"
    model.check_window(60)
    with pytest.raises(ConfigError, match="at least 60"):
        model.check_window(30)


def test_sensor_model_rebuilds_from_its_source(tmp_path: Path) -> None:
    from roadside.models.sensor_anomaly import build

    path = build(tmp_path / "sensor.onnx", window=20)
    model = SensorAnomalyModel(path)
    assert model.window == 20
    window = np.concatenate([np.full(17, 10.0), np.full(3, 40.0)])
    assert model.score(window, min_scale=0.5) == pytest.approx(RobustZScorer(min_scale=0.5).score(window))


# -- registry and the detector's prepared-ahead path --------------------------------------


def test_open_model_picks_the_kind_from_config(tmp_path: Path) -> None:
    export_classifier(tmp_path / "cls.onnx")
    assert isinstance(open_model(ModelConfig()), OnnxDetector)
    assert isinstance(open_model(ModelConfig(kind="classifier", path=tmp_path / "cls.onnx")), OnnxClassifier)
    assert isinstance(open_model(ModelConfig(kind="sensor_anomaly", path=None)), SensorAnomalyModel)
    with pytest.raises(ConfigError, match="classifier"):
        open_model(ModelConfig(kind="classifier"))


def test_detector_uses_a_batch_prepared_ahead_and_gives_the_same_answer() -> None:
    from roadside.sim.synthetic import RoadScene, SceneConfig

    scene = RoadScene(SceneConfig(seed=3))
    images = [scene.step().image for _ in range(40)][-4:]
    detector = OnnxDetector(None, CPU, conf_threshold=0.4)
    plain = detector.detect(images)
    calls: list[int] = []
    original = detector.prepare

    def counting_prepare(batch: list[np.ndarray]) -> object:
        calls.append(len(batch))
        return original(batch)

    detector.prepare = counting_prepare  # type: ignore[method-assign,assignment]
    detector.prefetch(images)
    ahead = detector.detect(list(images))  # a new list of the same arrays, as the pipeline builds it
    assert calls == [4], "detect() reused the prepared batch instead of letterboxing again"
    for a, b in zip(plain, ahead, strict=True):
        np.testing.assert_array_equal(a.boxes, b.boxes)
    detector.detect([img.copy() for img in images])  # equal content, other arrays: prepared afresh
    assert calls == [4, 4]


def test_a_fixed_batch_export_runs_any_batch(tmp_path: Path) -> None:
    # Ultralytics exports batch 1 unless asked otherwise: the engine splits bigger batches.
    proto = onnx.load(str(Path(__file__).resolve().parents[2] / "models" / "detector.onnx"))
    for value in (proto.graph.input[0], proto.graph.output[0]):
        value.type.tensor_type.shape.dim[0].Clear()
        value.type.tensor_type.shape.dim[0].dim_value = 1
    onnx.save(proto, str(tmp_path / "b1.onnx"))
    fixed = OnnxDetector(tmp_path / "b1.onnx", CPU, conf_threshold=0.4)
    free = OnnxDetector(None, CPU, conf_threshold=0.4)
    images = frames(3)
    for a, b in zip(fixed.detect(images), free.detect(images), strict=True):
        np.testing.assert_allclose(a.boxes, b.boxes, atol=1e-3)
