"""Provider selection, options and the active-provider report (edge.inference.providers).

No GPU here: the TensorRT and CUDA paths run against a fake of the part of
onnxruntime's API the engine uses (``get_available_providers``,
``InferenceSession(..., providers, provider_options)``, ``get_providers``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from roadside.edge.inference.engine import OnnxDetector, OnnxSession
from roadside.edge.inference.providers import (
    CPU,
    CUDA,
    TENSORRT,
    ProviderSettings,
    check_active,
    plan_providers,
    provider_options,
)
from roadside.shared.errors import ConfigError

GPU_BUILD = [TENSORRT, CUDA, CPU]

# -- plan --------------------------------------------------------------------------


def test_plan_keeps_the_requested_order_and_drops_what_the_build_lacks() -> None:
    plan = plan_providers([TENSORRT, CUDA, CPU], [CPU, CUDA])
    assert plan.usable == (CUDA, CPU)
    assert plan.missing == (TENSORRT,)
    assert plan.requested == (TENSORRT, CUDA, CPU)
    assert len(plan.options) == 2


def test_plan_accepts_short_names_and_ignores_duplicates() -> None:
    plan = plan_providers(["trt", "CUDA", "cpu", "cpu"], GPU_BUILD)
    assert plan.usable == (TENSORRT, CUDA, CPU)


@pytest.mark.parametrize("requested", [[TENSORRT, CUDA], [], ["OpenVINOExecutionProvider"]])
def test_plan_with_nothing_usable_is_a_config_error(requested: list[str]) -> None:
    with pytest.raises(ConfigError, match="provider"):
        plan_providers(requested, [CPU])


def test_no_silent_cpu_is_added_when_only_gpus_were_asked_for() -> None:
    plan = plan_providers([TENSORRT, CUDA], GPU_BUILD)
    assert CPU not in plan.usable


# -- options -----------------------------------------------------------------------


def test_tensorrt_options_cache_engines_and_cover_every_batch_size(tmp_path: Path) -> None:
    settings = ProviderSettings(trt_cache_path=tmp_path / "trt", trt_fp16=True, max_batch=4)
    options = provider_options(TENSORRT, settings, "images", (3, 640, 640))
    assert options["trt_engine_cache_enable"] == "True"
    assert options["trt_engine_cache_path"] == str(tmp_path / "trt")
    assert options["trt_timing_cache_enable"] == "True"
    assert options["trt_fp16_enable"] == "True"
    assert options["trt_profile_min_shapes"] == "images:1x3x640x640"
    assert options["trt_profile_opt_shapes"] == "images:4x3x640x640"
    assert options["trt_profile_max_shapes"] == "images:4x3x640x640"
    assert all(isinstance(v, str) for v in options.values())


def test_tensorrt_without_a_cache_path_or_input_has_no_cache_or_profile() -> None:
    options = provider_options(TENSORRT, ProviderSettings(trt_cache_path=None, trt_fp16=False))
    assert options["trt_fp16_enable"] == "False"
    assert not any(k.startswith(("trt_engine_cache", "trt_profile")) for k in options)


def test_cuda_options_and_cpu_has_none() -> None:
    cuda = provider_options(CUDA, ProviderSettings(device_id=1, cuda_mem_limit_bytes=2**30))
    assert cuda["device_id"] == "1"
    assert cuda["gpu_mem_limit"] == str(2**30)
    assert cuda["arena_extend_strategy"] == "kSameAsRequested"
    assert provider_options(CPU, ProviderSettings()) == {}


# -- report ------------------------------------------------------------------------


def test_report_says_requested_available_and_active() -> None:
    plan = plan_providers([TENSORRT, CUDA, CPU], GPU_BUILD)
    report = check_active(plan, [TENSORRT, CUDA, CPU], strict=True)
    assert report.active == TENSORRT
    assert not report.fallback
    assert report.as_dict() == {
        "requested": [TENSORRT, CUDA, CPU],
        "available": GPU_BUILD,
        "active": TENSORRT,
        "session": [TENSORRT, CUDA, CPU],
        "fallback": False,
    }


def test_a_session_that_dropped_tensorrt_is_reported_as_fallback() -> None:
    plan = plan_providers([TENSORRT, CUDA, CPU], GPU_BUILD)
    report = check_active(plan, [CUDA, CPU], strict=False)
    assert report.active == CUDA
    assert report.fallback


def test_strict_refuses_a_fallback_and_says_what_to_change() -> None:
    plan = plan_providers([CUDA, CPU], [CPU])
    with pytest.raises(ConfigError, match=r"strict.*CPUExecutionProvider.*not CUDAExecutionProvider"):
        check_active(plan, [CPU], strict=True)


# -- the engine against a fake onnxruntime -------------------------------------------


@dataclass
class _Input:
    name: str
    shape: list[Any]
    type: str = "tensor(float)"


@dataclass
class _Meta:
    custom_metadata_map: dict[str, str]


@dataclass
class FakeRuntime:
    """What the engine uses of onnxruntime; ``loads`` are the providers that really initialise."""

    available: list[str]
    loads: set[str]
    input_shape: list[Any] = field(default_factory=lambda: ["batch", 3, 64, 64])
    output_channels: int = 6  # 4 box rows + 2 classes
    output_value: float = 0.0
    output_fn: Callable[[int], np.ndarray] | None = None  # batch size → the model's output
    sessions: list[FakeSession] = field(default_factory=list)

    class GraphOptimizationLevel:
        ORT_DISABLE_ALL = 0
        ORT_ENABLE_ALL = 99

    class SessionOptions:
        intra_op_num_threads = 0
        inter_op_num_threads = 0
        graph_optimization_level = 0

    def get_available_providers(self) -> list[str]:
        return list(self.available)

    def InferenceSession(  # noqa: N802 - mirrors onnxruntime's class name
        self,
        path: str,
        sess_options: Any = None,
        providers: list[str] | None = None,
        provider_options: list[dict[str, str]] | None = None,
    ) -> FakeSession:
        # Like onnxruntime: a provider that fails to initialise is dropped, the rest go on.
        active = [p for p in providers or [CPU] if p in self.loads] or [CPU]
        session = FakeSession(self, list(providers or []), list(provider_options or []), active)
        self.sessions.append(session)
        return session


@dataclass
class FakeSession:
    runtime: FakeRuntime
    requested: list[str]
    options: list[dict[str, str]]
    active: list[str]

    def get_providers(self) -> list[str]:
        return self.active

    def get_inputs(self) -> list[_Input]:
        return [_Input("images", self.runtime.input_shape)]

    def get_modelmeta(self) -> _Meta:
        return _Meta({"names": "{0: 'car', 1: 'bus'}", "model_version": "fake-1"})

    def run(self, _outputs: Any, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        batch = feeds["images"].shape[0]
        if self.runtime.output_fn is not None:
            return [self.runtime.output_fn(batch)]
        return [
            np.full((batch, self.runtime.output_channels, 100), self.runtime.output_value, dtype=np.float32)
        ]


@pytest.fixture
def model_file(tmp_path: Path) -> Path:
    path = tmp_path / "model.onnx"
    path.write_bytes(b"not read by the fake")
    return path


def test_tensorrt_session_gets_cache_and_profile_from_the_probed_input(
    model_file: Path, tmp_path: Path
) -> None:
    runtime = FakeRuntime(GPU_BUILD, loads={TENSORRT, CUDA, CPU})
    cache = tmp_path / "cache" / "trt"
    settings = ProviderSettings(trt_cache_path=cache, max_batch=4)
    session = OnnxSession(model_file, ["trt", "cuda", "cpu"], 1, settings, strict=True, runtime=runtime)
    probe, real = runtime.sessions
    assert probe.requested == [CPU]
    assert real.requested == [TENSORRT, CUDA, CPU]
    trt_options = real.options[0]
    assert trt_options["trt_profile_max_shapes"] == "images:4x3x64x64"
    engines = Path(trt_options["trt_engine_cache_path"])
    assert engines.parent == cache
    assert engines.is_dir(), "the engine cache directory is made at load"
    assert engines.name.endswith("-fp16-b4")
    assert session.report.active == TENSORRT
    assert not session.report.fallback


def test_a_new_model_at_the_same_path_gets_its_own_engine_cache(model_file: Path, tmp_path: Path) -> None:
    # onnxruntime keys cached engines by graph, not weights: an OTA update must not reuse the old engine.
    settings = ProviderSettings(trt_cache_path=tmp_path / "trt")
    runtime = FakeRuntime(GPU_BUILD, loads={TENSORRT, CUDA, CPU})
    OnnxSession(model_file, [TENSORRT], settings=settings, runtime=runtime)
    model_file.write_bytes(b"retrained weights")
    OnnxSession(model_file, [TENSORRT], settings=settings, runtime=runtime)
    first, second = (Path(s.options[0]["trt_engine_cache_path"]) for s in runtime.sessions[1::2])
    assert first != second
    assert first.parent == second.parent == tmp_path / "trt"


def test_tensorrt_that_fails_to_load_is_never_a_silent_fallback(
    model_file: Path, caplog: pytest.LogCaptureFixture
) -> None:
    runtime = FakeRuntime(GPU_BUILD, loads={CUDA, CPU})  # e.g. libnvinfer missing
    session = OnnxSession(model_file, [TENSORRT, CUDA, CPU], settings=ProviderSettings(), runtime=runtime)
    assert session.report.active == CUDA
    assert session.report.fallback
    assert "not on the first choice TensorrtExecutionProvider" in caplog.text
    with pytest.raises(ConfigError, match="strict"):
        OnnxSession(model_file, [TENSORRT, CUDA, CPU], strict=True, runtime=runtime)


def test_detector_on_a_fake_gpu_reports_its_provider_and_warms_up_every_batch_size(model_file: Path) -> None:
    runtime = FakeRuntime(GPU_BUILD, loads={CUDA, CPU})
    detector = OnnxDetector(
        model_file,
        [CUDA, CPU],
        provider_settings=ProviderSettings(max_batch=3),
        runtime=runtime,
    )
    assert detector.info.active_provider == CUDA
    assert detector.info.providers is not None
    assert not detector.info.providers.fallback
    assert detector.info.labels == ["car", "bus"]
    assert detector.info.input_size == (64, 64)
    frames = [np.zeros((48, 64, 3), dtype=np.uint8)] * 3
    assert [len(d) for d in detector.detect(frames)] == [0, 0, 0]


def test_detector_refuses_an_output_with_nan(model_file: Path) -> None:
    runtime = FakeRuntime([CPU], loads={CPU}, output_value=float("nan"))  # an FP16 engine that overflowed
    with pytest.raises(ConfigError, match="NaN"):
        OnnxDetector(model_file, [CPU], runtime=runtime)


@pytest.mark.parametrize("anchors_first", [False, True])
def test_detector_decodes_either_output_layout(model_file: Path, anchors_first: bool) -> None:
    def output(batch: int) -> np.ndarray:
        out = np.zeros((batch, 6, 100), dtype=np.float32)
        out[:, :4, 7] = (32, 32, 10, 10)  # one box at the centre of the 64x64 input...
        out[:, 5, 7] = 0.9  # ...of class 1
        out[:, 4, 8] = 0.2  # and one below the threshold
        return out.transpose(0, 2, 1) if anchors_first else out

    runtime = FakeRuntime([CPU], loads={CPU}, output_fn=output)
    detector = OnnxDetector(model_file, [CPU], conf_threshold=0.5, runtime=runtime)
    found = detector.detect([np.zeros((64, 64, 3), dtype=np.uint8)] * 2)
    for one in found:
        assert one.class_ids.tolist() == [1]
        np.testing.assert_allclose(one.boxes, [[27, 27, 37, 37]])
        np.testing.assert_allclose(one.scores, [0.9])
