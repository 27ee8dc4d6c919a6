"""Model cards and lineage (models.card), and manifest → training frames (models.finetune)."""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime
from pathlib import Path

import cv2
import numpy as np
import pytest

pytest.importorskip("torch")

from roadside.models.card import (
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
from roadside.models.evaluate import EvalReport
from roadside.models.finetune import load_onnx_detector, module_path, samples_from_manifest
from roadside.shared.dataset import DatasetManifest, DatasetSample, manifest_path
from roadside.shared.errors import ConfigError
from roadside.shared.schemas import LabeledBox

REPORT = EvalReport(
    frames=160, objects=1500, map50=0.9712, ap50={"car": 1.0}, recall={"car": 0.99, "truck": 1.0},
    precision={"car": 0.95}, count_mae=0.7812, count_rel_error=0.081,
)  # fmt: skip


def _card() -> ModelCard:
    evaluation = summarise({"day": REPORT, "fog": REPORT}, 160)
    return ModelCard(
        name="detector",
        version="0.2.0",
        lineage=Lineage(
            dataset=DatasetRef("detector", 3, "ab" * 32, 240),
            parent=ParentRef(sha256="cd" * 32, name="detector", version="0.1.0"),
            code=CodeVersion(package="0.1.0", git_commit="1" * 40),
            training={"steps": 120, "lr": 0.001},
            started_at="2025-01-01T00:00:00+00:00",
            finished_at="2025-01-01T00:01:00+00:00",
        ),
        variants=(Variant("fp32", "detector.onnx", "ef" * 32, 1_676_000, evaluation, 3e-5),),
    )


def test_summary_keeps_the_gate_inputs_per_condition() -> None:
    s = summarise({"fog": REPORT}, 160)
    assert s["frames_per_condition"] == 160
    assert s["conditions"]["fog"]["map50"] == 0.9712
    assert s["conditions"]["fog"]["count_mae"] == 0.7812
    assert s["conditions"]["fog"]["recall"] == {"car": 0.99, "truck": 1.0}


def test_card_json_round_trips_and_names_the_lineage() -> None:
    body = json.loads(json.dumps(_card().as_dict()))
    assert body["format"] == 1
    assert body["lineage"]["dataset"] == {
        "name": "detector",
        "version": 3,
        "digest": "ab" * 32,
        "samples": 240,
    }
    assert body["lineage"]["parent"]["version"] == "0.1.0"
    assert body["variants"][0]["evaluation"]["conditions"]["day"]["map50"] == 0.9712


def test_markdown_card_shows_lineage_and_metrics() -> None:
    text = render_markdown(_card())
    assert text.startswith("# Model card: detector 0.2.0")
    assert "`detector` v3, 240 labelled samples" in text
    assert "detector 0.1.0, sha256 `" + "cd" * 32 in text
    assert "commit `" + "1" * 40 in text
    assert "| fp32 | fog (light 1, fog 0.6) | 0.971 | 0.990 / 1.000 | 0.78 |" in text
    assert "- `steps`: 120" in text


def test_git_commit_reads_loose_and_packed_refs(tmp_path: Path) -> None:
    assert git_commit(tmp_path) is None
    git = tmp_path / ".git"
    (git / "refs" / "heads").mkdir(parents=True)
    (git / "HEAD").write_text("ref: refs/heads/main\n")
    (git / "packed-refs").write_text("# pack-refs\n" + "a" * 40 + " refs/heads/main\n")
    assert git_commit(tmp_path) == "a" * 40
    (git / "refs" / "heads" / "main").write_text("b" * 40 + "\n")
    assert git_commit(tmp_path) == "b" * 40
    (git / "HEAD").write_text("c" * 40)
    assert git_commit(tmp_path) == "c" * 40


@pytest.mark.parametrize(
    ("node", "module"),
    [
        ("/stem/stem.0/stem.0.0/Conv", "stem.0.0"),
        ("/stage16/stage16.1/body/body.1/body.1.0/Conv", "stage16.1.body.1.0"),
        ("/cls_head/cls_head.1/Conv", "cls_head.1"),
        ("/fuse/fuse.0/Conv", "fuse.0"),
    ],
)
def test_module_path_undoes_torchscript_scopes(node: str, module: str) -> None:
    assert module_path(node) == module


def test_committed_onnx_loads_back_into_pytorch_with_parity() -> None:
    import torch

    from roadside.models.evaluate import heldout_frames
    from roadside.models.export import onnx_predictor
    from roadside.vision.yolo import letterbox

    path = Path(__file__).resolve().parents[2] / "models" / "detector.onnx"
    model = load_onnx_detector(path)
    batch = np.stack([letterbox(f.image, (320, 320))[0] for f in heldout_frames("day", 2)])
    with torch.no_grad():
        ours = model(torch.from_numpy(batch)).numpy()
    assert np.abs(ours - onnx_predictor(path)(batch)).max() < 1e-3


def test_load_onnx_detector_refuses_other_files(tmp_path: Path) -> None:
    junk = tmp_path / "x.onnx"
    junk.write_bytes(b"not a model")
    with pytest.raises(ConfigError, match="not an ONNX model"):
        load_onnx_detector(junk)
    with pytest.raises(ConfigError, match="cannot read"):
        load_onnx_detector(tmp_path / "missing.onnx")


def _dataset(folder: Path, labels: list[list[LabeledBox] | None]) -> DatasetManifest:
    (folder / "objects").mkdir(parents=True)
    samples = []
    for k, boxes in enumerate(labels):
        image = np.full((48, 64, 3), 40 * k, dtype=np.uint8)
        ok, jpeg = cv2.imencode(".jpg", image)
        assert ok
        sha = hashlib.sha256(jpeg.tobytes()).hexdigest()
        (folder / "objects" / f"{sha}.jpg").write_bytes(jpeg.tobytes())
        samples.append(
            DatasetSample(
                sha256=sha,
                file=f"objects/{sha}.jpg",
                width=64,
                height=48,
                labels=None if boxes is None else tuple(boxes),
            )
        )
    manifest = DatasetManifest(
        name="detector", version=1, created_at=datetime.now(UTC),
        classes=("car", "truck", "pedestrian", "cyclist"), samples=tuple(samples),
    )  # fmt: skip
    manifest_path(folder, 1).write_bytes(manifest.canonical())
    return manifest


def test_manifest_becomes_labelled_frames(tmp_path: Path) -> None:
    manifest = _dataset(
        tmp_path,
        [
            [LabeledBox(cls="truck", box=(1, 2, 30, 40)), LabeledBox(cls="pedestrian", box=(40, 5, 50, 30))],
            None,  # not labelled yet: skipped
            [],  # labelled, nothing there: a negative frame
        ],
    )
    frames = samples_from_manifest(tmp_path, manifest)
    assert len(frames) == 2
    assert frames[0].image.shape == (48, 64, 3)
    assert frames[0].classes.tolist() == [1, 2]
    assert frames[0].boxes.tolist() == [[1, 2, 30, 40], [40, 5, 50, 30]]
    assert frames[1].boxes.shape == (0, 4)


def test_manifest_with_unknown_class_or_missing_image_is_refused(tmp_path: Path) -> None:
    manifest = _dataset(tmp_path / "a", [[LabeledBox(cls="bus", box=(1, 2, 30, 40))]])
    with pytest.raises(ConfigError, match="classes the model does not: bus"):
        samples_from_manifest(tmp_path / "a", manifest)
    manifest = _dataset(tmp_path / "b", [[]])
    for jpg in (tmp_path / "b" / "objects").iterdir():
        jpg.unlink()
    with pytest.raises(ConfigError, match="not a readable image"):
        samples_from_manifest(tmp_path / "b", manifest)
    with pytest.raises(ConfigError, match="no labelled samples"):
        samples_from_manifest(tmp_path / "c", _dataset(tmp_path / "c", [None]))
