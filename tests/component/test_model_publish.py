"""`roadside model repo init|publish|list|train` against a real TUF repository and registry.

The gate is exercised with a class-permuted copy of the committed detector
(cars called trucks, pedestrians called cyclists: mAP@0.5 near 0) as the
worse model and the committed detector as the better one, so no training is
needed; the train test runs a few fine-tune steps end to end.
"""

from __future__ import annotations

import hashlib
import json
import re
from datetime import UTC, datetime
from pathlib import Path

import cv2
import numpy as np
import pytest

pytest.importorskip("torch")

import onnx
from onnx import numpy_helper
from typer.testing import CliRunner

from roadside.cli import build
from roadside.cloud.home import HubHome
from roadside.cloud.registry import Registry
from roadside.shared.dataset import DatasetManifest, DatasetSample, manifest_path
from roadside.shared.schemas import LabeledBox
from roadside.sim.synthetic import CLASSES, SceneConfig

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]

DETECTOR = Path(__file__).resolve().parents[2] / "models" / "detector.onnx"
FRAMES = ["--eval-frames", "8"]


def _class_permuted(path: Path) -> Path:
    model = onnx.load(str(DETECTOR))
    for tensor in model.graph.initializer:
        if tensor.name in ("cls_head.1.weight", "cls_head.1.bias"):
            swapped = numpy_helper.to_array(tensor)[[1, 0, 3, 2]]
            tensor.CopyFrom(numpy_helper.from_array(np.ascontiguousarray(swapped), tensor.name))
    onnx.save(model, str(path))
    return path


def _audit_actions(home: Path) -> list[str]:
    registry = Registry(HubHome(home).registry_url)
    try:
        assert registry.audit.verify().ok
        return [e.action for e in registry.audit.entries(limit=None)]
    finally:
        registry.close()


def test_gate_refuses_worse_publishes_better_and_audits_force(tmp_path: Path) -> None:
    runner, app = CliRunner(), build()
    home = tmp_path / "hub"
    worse = _class_permuted(tmp_path / "permuted.onnx")

    init = runner.invoke(
        app, ["model", "repo", "init", "--home", str(home), "--keys", "3", "--threshold", "2"]
    )
    assert init.exit_code == 0, init.output
    assert "demo only" in init.output
    assert HubHome(home).has_repository()
    assert len(list((home / "release" / "DEMO-root-keys" / "root").glob("*.pem"))) == 3

    first = runner.invoke(
        app, ["model", "publish", str(worse), "--home", str(home), "--version", "1.0.0", *FRAMES]
    )
    assert first.exit_code == 0, first.output

    better = runner.invoke(
        app, ["model", "publish", str(DETECTOR), "--home", str(home), "--version", "1.1.0", "--json", *FRAMES]
    )
    assert better.exit_code == 0, better.output
    verdict = json.loads(better.output.strip().splitlines()[-1])
    assert verdict["publish"] is True
    assert verdict["mean_map_candidate"] > 0.9 > verdict["mean_map_current"]

    refused = runner.invoke(
        app, ["model", "publish", str(worse), "--home", str(home), "--version", "1.2.0", *FRAMES]
    )
    assert refused.exit_code == 1
    assert "refused: detector 1.2.0 does not beat detector 1.1.0" in refused.output
    assert "candidate: day" in refused.output
    assert re.search(r"current: +day (0\.9\d\d|1\.000) \(count MAE", refused.output)

    no_reason = runner.invoke(
        app, ["model", "publish", str(worse), "--home", str(home), "--version", "1.2.0", "--force", *FRAMES]
    )
    assert no_reason.exit_code == 2
    assert "a forced publish needs a reason" in no_reason.output

    forced = runner.invoke(
        app,
        ["model", "publish", str(worse), "--home", str(home), "--version", "1.2.0", "--force",
         "--reason", "label-order test", *FRAMES],
    )  # fmt: skip
    assert forced.exit_code == 0, forced.output

    actions = _audit_actions(home)
    assert actions.count("model.publish") == 3
    assert actions.count("model.publish.refused") == 1
    assert actions.count("model.publish.forced") == 1
    registry = Registry(HubHome(home).registry_url)
    try:
        forced_entry = next(
            e for e in registry.audit.entries(limit=None) if e.action == "model.publish.forced"
        )
        assert forced_entry.details["reason"] == "label-order test"
        assert forced_entry.details["current"]["day"] > 0.9 > forced_entry.details["candidate"]["day"]
        second = registry.models.get("detector", "1.1.0")
        assert second is not None
        assert second.parent == "1.0.0"
        assert second.metadata["evaluation"]["frames_per_condition"] == 8
        assert set(second.metadata["evaluation"]["conditions"]) == {"day", "dusk", "night", "rain", "fog"}
    finally:
        registry.close()

    listed = runner.invoke(app, ["model", "list", "--home", str(home), "--json"])
    assert listed.exit_code == 0, listed.output
    rows = json.loads(listed.output)
    assert [r["version"] for r in rows] == ["1.0.0", "1.1.0", "1.2.0"]
    assert rows[1]["map50"]["day"] > 0.9
    # Each release is also signed compressed and, past the first, as a patch from the one before
    # (ADR 0027): 1.2.0 is 1.1.0 with its class rows swapped, a patch of a few hundred bytes.
    assert verdict["transfers"] == rows[1]["transfers"]
    assert rows[0]["transfers"] == ["zstd"]
    assert rows[2]["transfers"] == ["zstd", "zstd-patch"]


def test_publish_without_repository_says_how_to_make_one(tmp_path: Path) -> None:
    result = CliRunner().invoke(
        build(), ["model", "publish", str(DETECTOR), "--home", str(tmp_path), "--version", "1.0.0"]
    )
    assert result.exit_code == 2
    assert "roadside model repo init" in result.output


def _fog_dataset(folder: Path, n: int) -> DatasetManifest:
    from roadside.models.finetune import rendered_frames

    (folder / "objects").mkdir(parents=True)
    samples = []
    for frame in rendered_frames(n, SceneConfig(fog=0.6, spawn_rate=1.5, seed=5), scenes=4):
        ok, jpeg = cv2.imencode(".jpg", frame.image, [cv2.IMWRITE_JPEG_QUALITY, 90])
        assert ok
        sha = hashlib.sha256(jpeg.tobytes()).hexdigest()
        (folder / "objects" / f"{sha}.jpg").write_bytes(jpeg.tobytes())
        labels = tuple(
            LabeledBox(cls=CLASSES[int(c)], box=tuple(float(v) for v in b))  # type: ignore[arg-type]
            for b, c in zip(frame.boxes, frame.classes, strict=True)
        )
        h, w = frame.image.shape[:2]
        samples.append(DatasetSample(sha256=sha, file=f"objects/{sha}.jpg", width=w, height=h, labels=labels))
    manifest = DatasetManifest(
        name="detector", version=1, created_at=datetime.now(UTC), classes=CLASSES, samples=tuple(samples)
    )
    manifest_path(folder, 1).write_bytes(manifest.canonical())
    return manifest


def test_train_few_steps_writes_onnx_variants_and_card(tmp_path: Path) -> None:
    manifest = _fog_dataset(tmp_path / "ds", 12)
    out = tmp_path / "out"
    result = CliRunner().invoke(
        build(),
        ["model", "train", "--home", str(tmp_path / "hub"), "--dataset", "detector:1",
         "--dataset-dir", str(tmp_path / "ds"), "--parent", str(DETECTOR), "--out", str(out),
         "--steps", "3", "--device", "cpu", "--fp16", "--int8", "--eval-frames", "8", "--json"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    card = json.loads((out / "card.json").read_text())
    assert card == json.loads(result.output.strip().splitlines()[-1])
    lineage = card["lineage"]
    assert lineage["dataset"] == {
        "name": "detector",
        "version": 1,
        "digest": manifest.digest(),
        "samples": 12,
    }
    assert lineage["parent"]["sha256"] == hashlib.sha256(DETECTOR.read_bytes()).hexdigest()
    assert lineage["training"]["steps"] == 3
    kinds = {v["kind"]: v for v in card["variants"]}
    assert set(kinds) == {"fp32", "fp16", "int8"}
    assert kinds["fp32"]["parity_max_abs_diff"] < 1e-4
    for variant in kinds.values():
        assert (out / variant["file"]).is_file()
        assert variant["sha256"] == hashlib.sha256((out / variant["file"]).read_bytes()).hexdigest()
        assert set(variant["evaluation"]["conditions"]) == {"day", "dusk", "night", "rain", "fog"}
    # Three steps from the committed model barely move it: day stays good.
    assert kinds["fp32"]["evaluation"]["conditions"]["day"]["map50"] > 0.9
    assert "# Model card: detector 0.2.0" in (out / "MODEL_CARD.md").read_text()
