"""The YOLO-layout pre- and post-processing, under the name the agent's code imports it by.

The code lives in :mod:`roadside.vision.yolo`, which the ML package (``models/``) shares:
an evaluation must letterbox and decode exactly as the agent does, and
``models/`` may not import ``edge/`` (``docs/architecture.md``).
"""

from __future__ import annotations

from roadside.vision.yolo import (
    PAD_VALUE,
    Detections,
    LetterboxInfo,
    decode_yolo,
    decode_yolo_batch,
    letterbox,
    letterbox_batch,
    nms,
    parse_class_names,
)

__all__ = [
    "PAD_VALUE",
    "Detections",
    "LetterboxInfo",
    "decode_yolo",
    "decode_yolo_batch",
    "letterbox",
    "letterbox_batch",
    "nms",
    "parse_class_names",
]
