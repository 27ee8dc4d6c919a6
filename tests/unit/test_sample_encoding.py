"""A hard example's JPEG always fits its message: quality first, then size; boxes follow the pixels."""

from __future__ import annotations

import base64

import cv2
import numpy as np
import pytest

from roadside.edge.samples.uploader import EncodedImage, SampleTooLargeError, encode_capped, scaled_boxes
from roadside.edge.settings import load_agent_settings
from roadside.shared.errors import ConfigError
from roadside.shared.schemas import MAX_SAMPLE_JPEG_B64


def noise(h: int, w: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def test_a_plain_frame_keeps_its_size_and_first_quality() -> None:
    image = np.full((480, 640, 3), 120, np.uint8)
    cv2.rectangle(image, (100, 100), (300, 200), (20, 40, 200), -1)
    encoded = encode_capped(image, quality=85, floor=50)
    assert (encoded.width, encoded.height, encoded.quality) == (640, 480, 85)
    assert (encoded.scale_x, encoded.scale_y) == (1.0, 1.0)
    assert base64.b64decode(encoded.b64) == encoded.jpeg
    decoded = cv2.imdecode(np.frombuffer(encoded.jpeg, np.uint8), cv2.IMREAD_COLOR)
    assert decoded is not None
    assert decoded.shape == (480, 640, 3)


def test_quality_steps_down_before_the_image_shrinks() -> None:
    image = noise(240, 320)
    full = encode_capped(image, quality=95, floor=10, cap_b64=10**9)
    assert full.quality == 95
    cap = len(full.b64) - 1  # just too big at 95
    stepped = encode_capped(image, quality=95, floor=10, cap_b64=cap)
    assert stepped.quality < 95
    assert (stepped.width, stepped.height) == (320, 240)
    assert len(stepped.b64) <= cap


def test_noise_at_full_hd_is_downscaled_under_the_real_cap() -> None:
    image = noise(1080, 1920)
    encoded = encode_capped(image, quality=85, floor=50)
    assert len(encoded.b64) <= MAX_SAMPLE_JPEG_B64
    # Even the floor quality did not fit at full size, so it shrank (and tried the qualities again).
    floor_at_full = encode_capped(image, quality=50, floor=50, cap_b64=10**9)
    assert len(floor_at_full.b64) > MAX_SAMPLE_JPEG_B64
    assert encoded.width < 1920
    assert 50 <= encoded.quality <= 85
    assert encoded.width / encoded.height == pytest.approx(1920 / 1080, rel=0.01)


def test_an_impossible_cap_is_a_clear_error() -> None:
    with pytest.raises(SampleTooLargeError, match="does not fit 100 base64"):
        encode_capped(noise(200, 200), quality=85, floor=50, cap_b64=100)


def test_boxes_are_scaled_to_the_encoded_pixels_and_clipped() -> None:
    image = EncodedImage(b"", "", 320, 240, 0.5, 0.5, 50)
    boxes = scaled_boxes(
        [
            ("car", (100.0, 50.0, 300.0, 150.0), 0.7),
            ("truck", (600.0, 400.0, 700.0, 520.0), None),  # overhangs the 640x480 frame
            ("cyclist", (700.0, 10.0, 720.0, 30.0), None),  # wholly outside: dropped
        ],
        image,
    )
    assert [(b.cls, b.box, b.conf) for b in boxes] == [
        ("car", (50.0, 25.0, 150.0, 75.0), 0.7),
        ("truck", (300.0, 200.0, 320.0, 240.0), None),
    ]


def test_samples_settings_are_validated(tmp_path: object) -> None:
    with pytest.raises(ConfigError, match="images_leave_device"):
        load_agent_settings(None, samples={"enabled": True})
    with pytest.raises(ConfigError, match="jpeg_quality_floor"):
        load_agent_settings(None, samples={"jpeg_quality": 60, "jpeg_quality_floor": 70})
    with pytest.raises(ConfigError, match="confidence_band"):
        load_agent_settings(None, samples={"confidence_band": (0.7, 0.5)})
    with pytest.raises(ConfigError, match=r"below model\.conf_threshold"):
        load_agent_settings(
            None,
            samples={
                "enabled": True,
                "confidence_band": (0.1, 0.3),
                "privacy": {"images_leave_device": True},
            },
        )
    settings = load_agent_settings(None, samples={"enabled": True, "privacy": {"images_leave_device": True}})
    assert settings.samples.enabled
    assert not load_agent_settings(None).samples.enabled  # off by default
