"""``roadside agent selftest``: each check reports on its own, and a failure exits 1."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from roadside.edge.cli import app
from roadside.edge.selftest import run_selftest
from roadside.edge.settings import ModelConfig


def test_the_shipped_detector_passes_every_check() -> None:
    report = run_selftest(ModelConfig(trt_cache_path=None), frames=1)
    assert report.ok, report.to_json()
    assert [c.name for c in report.checks] == ["model", "outbox", "envelope"]


def test_a_broken_model_fails_its_check_only_and_the_command_exits_1(tmp_path: Path) -> None:
    broken = tmp_path / "broken.onnx"
    broken.write_bytes(b"not a model")
    result = CliRunner().invoke(app, ["selftest", "--model", str(broken)])
    assert result.exit_code == 1
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["ok"] is False
    assert {c["name"]: c["ok"] for c in report["checks"]} == {
        "model": False,
        "outbox": True,
        "envelope": True,
    }
    assert "broken.onnx" in report["checks"][0]["detail"]


def test_a_provider_this_onnxruntime_lacks_is_a_failed_check_not_a_crash() -> None:
    report = run_selftest(ModelConfig(providers=["NoSuchExecutionProvider"], trt_cache_path=None), frames=1)
    assert not report.ok
    assert report.checks[0].name == "model"
    assert not report.checks[0].ok
