"""Faces and plates are blurred before an image may leave; masks are filled."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import numpy.typing as npt
import pytest

from roadside.edge.privacy import PrivacyConfig, Redactor
from roadside.edge.privacy.detectors import FaceDetector, PlateDetector

skimage_data = pytest.importorskip("skimage.data", reason="scikit-image provides the real photographs")


def astronaut() -> npt.NDArray[np.uint8]:
    """A real photograph with one face (shipped inside scikit-image, no download)."""
    path = Path(skimage_data.__file__).parent / "astronaut.png"
    image = cv2.imread(str(path))
    assert image is not None
    return image


def street_with_plate() -> tuple[npt.NDArray[np.uint8], tuple[int, int, int, int]]:
    image = np.full((480, 640, 3), 90, np.uint8)
    cv2.rectangle(image, (150, 250), (490, 400), (40, 40, 160), -1)  # a car body
    x, y, w, h = 240, 330, 170, 38
    cv2.rectangle(image, (x, y), (x + w, y + h), (255, 255, 255), -1)
    cv2.rectangle(image, (x, y), (x + w, y + h), (0, 0, 0), 2)
    cv2.putText(image, "A123BC", (x + 8, y + 30), cv2.FONT_HERSHEY_SIMPLEX, 1.0, (0, 0, 0), 2)
    return image, (x, y, x + w, y + h)


def test_face_is_found_and_blurred_beyond_recognition() -> None:
    image = astronaut()
    faces, scores = FaceDetector().detect(image)
    assert len(faces) == 1
    assert scores[0] > 0.5
    redacted, report = Redactor(PrivacyConfig(blur_plates=False)).redact(image)
    assert report.faces == 1
    x1, y1, x2, y2 = faces[0].astype(int)
    before, after = image[y1:y2, x1:x2].astype(np.float32), redacted[y1:y2, x1:x2].astype(np.float32)
    assert (
        np.abs(cv2.Laplacian(after, cv2.CV_32F)).mean()
        < 0.3 * np.abs(cv2.Laplacian(before, cv2.CV_32F)).mean()
    )
    assert len(FaceDetector().detect(redacted)[0]) == 0  # not even the detector finds it any more
    assert np.array_equal(redacted[:40, -40:], image[:40, -40:])  # the rest of the picture is untouched


def test_plate_is_found_and_unreadable() -> None:
    image, (x1, y1, x2, y2) = street_with_plate()
    plates = PlateDetector().detect(image)
    assert len(plates) >= 1
    redacted, report = Redactor(PrivacyConfig(blur_faces=False)).redact(image)
    assert report.plates >= 1
    region = redacted[y1:y2, x1:x2]
    assert region.std() < 0.5 * image[y1:y2, x1:x2].std()  # the characters are gone
    assert len(PlateDetector().detect(redacted)) == 0


def test_polygon_masks_are_filled_and_the_original_is_untouched() -> None:
    image = np.full((100, 100, 3), 200, np.uint8)
    config = PrivacyConfig(
        blur_faces=False, blur_plates=False, masks=[[(10, 10), (50, 10), (50, 50), (10, 50)]]
    )
    redacted, report = Redactor(config).redact(image)
    assert report.masks == 1
    assert redacted[30, 30].tolist() == [0, 0, 0]
    assert redacted[80, 80].tolist() == [200, 200, 200]
    assert image[30, 30].tolist() == [200, 200, 200]


def test_images_stay_on_the_device_by_default() -> None:
    assert PrivacyConfig().images_leave_device is False
