"""Smaller variants of an exported detector: FP16 weights and INT8 (static, QDQ) quantisation.

Both keep float32 inputs and outputs, so the agent feeds and decodes them
exactly like the FP32 file. FP16 halves the file and suits GPUs (TensorRT,
CUDA); on a CPU onnxruntime inserts casts and it runs no faster. INT8 is
calibrated on frames of the synthetic scene at training seeds (never the
held-out ones) and suits CPUs with VNNI and TensorRT INT8. Each variant is
evaluated on the held-out set like the original before anyone ships it.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import numpy.typing as npt
import onnx

from roadside.shared.errors import ConfigError
from roadside.sim.synthetic import SceneConfig, render_dataset
from roadside.vision.yolo import letterbox_batch

__all__ = ["calibration_batches", "to_fp16", "to_int8"]

logger = logging.getLogger(__name__)

_CALIBRATION_SEED = 17  # scene seeds 17000+: training range, disjoint from held-out


def _copy_metadata(source: onnx.ModelProto, target: onnx.ModelProto, variant: str) -> None:
    del target.metadata_props[:]
    for entry in source.metadata_props:
        target.metadata_props.add(key=entry.key, value=entry.value)
    target.metadata_props.add(key="roadside_variant", value=variant)


def to_fp16(source: Path, destination: Path) -> Path:
    """Write an FP16-weight copy of ``source`` (inputs and outputs stay float32)."""
    from onnxruntime.transformers.float16 import convert_float_to_float16

    model = onnx.load(str(source))
    converted = convert_float_to_float16(model, keep_io_types=True)
    _copy_metadata(model, converted, "fp16")
    # No onnx.checker here: the converter appends its input casts after the
    # nodes that read them, which the checker rejects and onnxruntime sorts;
    # the variant is loaded and evaluated by onnxruntime before it is used.
    onnx.save(converted, str(destination))
    logger.info("wrote FP16 variant %s (%d bytes)", destination, destination.stat().st_size)
    return destination


def calibration_batches(
    frames: int = 64, imgsz: tuple[int, int] = (320, 320)
) -> list[npt.NDArray[np.float32]]:
    """Letterboxed NCHW batches of day, dusk, night and foggy frames for INT8 calibration."""
    batches = []
    per = max(frames // 4, 1)
    for k, (light, fog) in enumerate(((1.0, 0.0), (0.5, 0.0), (0.25, 0.0), (1.0, 0.6))):
        config = SceneConfig(light=light, fog=fog, spawn_rate=1.2, seed=_CALIBRATION_SEED + k)
        images = [f.image for f in render_dataset(per, config, stride=7, scenes=4)]
        for start in range(0, len(images), 8):
            batch, _ = letterbox_batch(images[start : start + 8], imgsz)
            batches.append(batch)
    return batches


def to_int8(source: Path, destination: Path, calibration: Sequence[npt.NDArray[np.float32]]) -> Path:
    """Write a statically quantised INT8 (QDQ, per-channel weights) copy of ``source``."""
    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    if not calibration:
        raise ConfigError("INT8 quantisation needs calibration frames")
    input_name = onnx.load(str(source)).graph.input[0].name

    class _Reader(CalibrationDataReader):  # type: ignore[misc]  # onnxruntime ships no type hints
        def __init__(self) -> None:
            self._batches: Iterator[npt.NDArray[np.float32]] = iter(calibration)

        def get_next(self) -> dict[str, npt.NDArray[np.float32]] | None:
            batch = next(self._batches, None)
            return None if batch is None else {input_name: batch}

    quantize_static(
        str(source),
        str(destination),
        _Reader(),
        quant_format=QuantFormat.QDQ,
        per_channel=True,
        activation_type=QuantType.QUInt8,
        weight_type=QuantType.QInt8,
        # Convolutions only: the tail concatenates box pixels (0..320) and
        # scores (0..1) into one tensor, and one INT8 scale for both would
        # round every score to a step of ~1.3.
        op_types_to_quantize=["Conv"],
    )
    model = onnx.load(str(destination))
    _copy_metadata(onnx.load(str(source)), model, "int8")
    onnx.save(model, str(destination))
    logger.info("wrote INT8 variant %s (%d bytes)", destination, destination.stat().st_size)
    return destination
