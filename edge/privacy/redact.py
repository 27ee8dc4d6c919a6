"""Redaction: what may leave the device, and what is blurred or masked first.

Fail closed: a redactor that cannot load its detectors refuses to start, and
``Redactor.redact`` is the only way an image gets out of the agent.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import cv2
import numpy as np
import numpy.typing as npt

from roadside.edge.privacy.config import Polygon, PrivacyConfig
from roadside.edge.privacy.detectors import FaceDetector, PlateDetector

log = logging.getLogger(__name__)

__all__ = ["Polygon", "PrivacyConfig", "RedactionReport", "Redactor", "blur_boxes", "fill_polygons"]


@dataclass(frozen=True, slots=True)
class RedactionReport:
    faces: int
    plates: int
    masks: int


def blur_boxes(image: npt.NDArray[np.uint8], boxes: npt.NDArray[np.float32], margin: float) -> None:
    """Pixelate then blur each box in place: irreversible at the resolutions we send."""
    h, w = image.shape[:2]
    for x1, y1, x2, y2 in boxes:
        mx, my = (x2 - x1) * margin, (y2 - y1) * margin
        a, b = max(0, int(x1 - mx)), max(0, int(y1 - my))
        c, d = min(w, int(x2 + mx) + 1), min(h, int(y2 + my) + 1)
        if c - a < 2 or d - b < 2:
            continue
        region = image[b:d, a:c]
        small = cv2.resize(
            region, (max(1, (c - a) // 12), max(1, (d - b) // 12)), interpolation=cv2.INTER_AREA
        )
        coarse = cv2.resize(small, (c - a, d - b), interpolation=cv2.INTER_NEAREST)
        image[b:d, a:c] = cv2.GaussianBlur(coarse, (0, 0), sigmaX=max(2.0, (c - a) / 8))


def fill_polygons(image: npt.NDArray[np.uint8], polygons: list[Polygon]) -> None:
    for polygon in polygons:
        points = np.round(np.asarray(polygon, dtype=np.float32)).astype(np.int32)
        cv2.fillPoly(image, [points], color=(0, 0, 0))


class Redactor:
    def __init__(self, config: PrivacyConfig) -> None:
        self.config = config
        self._faces = FaceDetector(config.face_threshold) if config.blur_faces else None
        self._plates = PlateDetector() if config.blur_plates else None

    def redact(self, image_bgr: npt.NDArray[np.uint8]) -> tuple[npt.NDArray[np.uint8], RedactionReport]:
        """A redacted copy of ``image_bgr``; the original is not touched."""
        out = image_bgr.copy()
        faces = self._faces.detect(image_bgr)[0] if self._faces else np.zeros((0, 4), np.float32)
        plates = self._plates.detect(image_bgr) if self._plates else np.zeros((0, 4), np.float32)
        blur_boxes(out, faces, self.config.margin)
        blur_boxes(out, plates, self.config.margin)
        fill_polygons(out, self.config.masks)
        report = RedactionReport(len(faces), len(plates), len(self.config.masks))
        log.debug("redacted %s faces, %s plates, %s masks", report.faces, report.plates, report.masks)
        return out, report
