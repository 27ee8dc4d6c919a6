"""The agent's onnxruntime sessions share one CPU arena, which ``model.cpu_arena_max_bytes`` caps (ADR 0023).

The arena lives in onnxruntime's process-wide environment and the first
session sets its cap, so each case runs in a fresh interpreter.
"""

from __future__ import annotations

import pytest

from roadside.edge.inference.engine import provider_settings
from roadside.edge.settings import ModelConfig
from tests.support.fresh import last_json

pytestmark = pytest.mark.timeout(120)


_SCRIPT = """
import json, sys
from roadside.edge.inference.engine import OnnxDetector
from roadside.edge.settings import ModelConfig
from roadside.shared.errors import ConfigError

config = ModelConfig(cpu_arena_max_bytes=int(sys.argv[1]), trt_cache_path=None)
try:
    first = OnnxDetector.from_config(config, 2)
    second = OnnxDetector.from_config(config, 2)  # an OTA candidate, say: the same arena
    print(json.dumps({"ok": True, "versions": [first.info.version, second.info.version]}))
except ConfigError as exc:
    print(json.dumps({"ok": False, "error": str(exc)}))
"""


def _open(cap: int) -> dict[str, object]:
    result: dict[str, object] = last_json(_SCRIPT, str(cap))
    return result


def test_a_cap_the_model_fits_in_runs_two_sessions_on_the_one_arena() -> None:
    result = _open(256 * 1024 * 1024)
    assert result["ok"] is True


def test_a_cap_too_small_for_the_model_fails_at_start_and_names_the_setting() -> None:
    result = _open(2 * 1024 * 1024)
    assert result["ok"] is False
    error = result["error"]
    assert isinstance(error, str)
    assert "self-test" in error
    assert "model.cpu_arena_max_bytes" in error


def test_on_the_cpu_an_unconfigured_batch_is_warmed_up_as_single_frames() -> None:
    assert provider_settings(ModelConfig(), 4).batch_is_streams
    assert provider_settings(ModelConfig(), 4).max_batch == 4  # TensorRT's profile still covers 4
    assert not provider_settings(ModelConfig(max_batch=4), 4).batch_is_streams
