"""The committed detector (models/detector.onnx): layout, metadata, and that it works."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from roadside.models.evaluate import heldout_frames, match_detections
from roadside.sim.synthetic import CLASSES
from roadside.vision.yolo import decode_yolo, letterbox_batch, parse_class_names

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

MODEL = Path(__file__).resolve().parents[2] / "models" / "detector.onnx"


@pytest.fixture(scope="module")
def session() -> object:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    return ort.InferenceSession(str(MODEL), options, providers=["CPUExecutionProvider"])


def test_artefact_is_small() -> None:
    assert MODEL.stat().st_size < 5 * 1024 * 1024


def test_metadata_follows_ultralytics() -> None:
    meta = {p.key: p.value for p in onnx.load(str(MODEL)).metadata_props}
    assert parse_class_names(meta["names"]) == dict(enumerate(CLASSES))
    assert meta["imgsz"] == "[320, 320]"
    assert meta["task"] == "detect"
    assert meta["stride"] == "8"
    assert meta["roadside_version"]
    assert meta["model_version"]


def test_io_has_the_yolov8_layout(session: object) -> None:
    (inp,), (out,) = session.get_inputs(), session.get_outputs()  # type: ignore[attr-defined]
    assert inp.name == "images"
    assert inp.type == "tensor(float)"
    assert inp.shape[1:] == [3, 320, 320]
    assert isinstance(inp.shape[0], str), "batch axis is dynamic"
    assert out.name == "output0"
    assert out.shape[1] == 4 + len(CLASSES)
    (result,) = session.run(None, {"images": np.zeros((2, 3, 320, 320), np.float32)})  # type: ignore[attr-defined]
    assert result.shape == (2, 4 + len(CLASSES), (320 // 8) ** 2)
    assert np.all((result[:, 4:] >= 0) & (result[:, 4:] <= 1)), "scores are sigmoid outputs"
    assert np.all(result[:, 2:4] >= 0), "widths and heights are not negative"


def test_finds_vehicles_on_daytime_frames(session: object) -> None:
    frames = heldout_frames("day", 8)
    batch, infos = letterbox_batch([f.image for f in frames], (320, 320))
    (outputs,) = session.run(None, {"images": batch})  # type: ignore[attr-defined]
    found = total = 0
    for frame, output, info in zip(frames, outputs, infos, strict=True):
        det = decode_yolo(output, 0.25, 0.5, info, num_classes=len(CLASSES))
        vehicles = [o for o in frame.objects if CLASSES[o.cls] in ("car", "truck")]
        boxes = np.array([o.box for o in vehicles], dtype=np.float64).reshape(-1, 4)
        classes = np.array([o.cls for o in vehicles], dtype=np.int64)
        found += int(match_detections(det, boxes, classes, iou=0.5).sum())
        total += len(vehicles)
    assert total >= 10
    assert found / total >= 0.6, f"found {found} of {total} vehicles"
