"""The shipped sensor-window anomaly model: a robust z-score as an ONNX graph.

    python -m roadside.models.sensor_anomaly [--out models/sensor_anomaly.onnx] [--window 60]

Contract of every ``sensor_anomaly`` model, this one and any learned
successor delivered by OTA: input ``window`` float32 ``[batch, W]`` (a
series' last ``W`` ok readings, oldest first) and, if the model declares
it, ``min_scale`` float32 ``[batch]`` (the sensor's resolution floor);
output ``score`` float32 ``[batch]``, higher is more anomalous. Metadata
carries ``kind=sensor_anomaly``, ``window`` and ``score_units``.

This one computes exactly what :class:`roadside.edge.sensors.events.RobustZScorer`
computes in numpy: the median of the last ``recent`` values against the
median and MAD (scaled to a standard deviation) of the values before, in
robust standard deviations. Shipping it as a model first means the
agent's ONNX path for sensors is exercised from day one with a score whose
units the alert thresholds already use; a learned model can replace the
file without touching the agent.
"""

from __future__ import annotations

import argparse
import logging
import warnings
from pathlib import Path

import numpy as np
import numpy.typing as npt
import onnx
import torch
from torch import Tensor, nn

from roadside.models.export import DEFAULT_OPSET, roadside_version

__all__ = ["DEFAULT_PATH", "MODEL_VERSION", "RobustZScore", "build", "reference_score"]

log = logging.getLogger(__name__)

DEFAULT_PATH = Path(__file__).resolve().parent / "sensor_anomaly.onnx"
MODEL_VERSION = "robust-z-onnx-1"
_MAD_TO_SD = 1.4826


def _median(x: Tensor) -> Tensor:
    """numpy's median along the last axis: the mean of the two middle values when the count is even."""
    n = x.shape[-1]
    ordered, _ = torch.sort(x, dim=-1)
    return (ordered[..., (n - 1) // 2] + ordered[..., n // 2]) / 2


class RobustZScore(nn.Module):
    """``|median(latest) - median(baseline)| / max(1.4826 * MAD(baseline), min_scale)``."""

    def __init__(self, window: int = 60, recent: int = 3) -> None:
        super().__init__()
        if not window > recent + 2:
            raise ValueError(f"window {window} must exceed recent {recent} by more than 2")
        self.window = window
        self.recent = recent

    def forward(self, window: Tensor, min_scale: Tensor) -> Tensor:
        baseline, latest = window[:, : -self.recent], window[:, -self.recent :]
        centre = _median(baseline)
        mad = _median((baseline - centre.unsqueeze(-1)).abs())
        scale = torch.maximum(mad * _MAD_TO_SD, min_scale)
        return (_median(latest) - centre).abs() / scale


def reference_score(window: npt.NDArray[np.float64], min_scale: float, recent: int = 3) -> float:
    """The same score in numpy, for the parity check."""
    baseline, latest = window[:-recent], window[-recent:]
    centre = float(np.median(baseline))
    scale = max(_MAD_TO_SD * float(np.median(np.abs(baseline - centre))), min_scale)
    return abs(float(np.median(latest)) - centre) / scale


def _parity_windows(window: int, count: int = 64) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]]:
    rng = np.random.default_rng(0)
    level = rng.uniform(0, 200, size=(count, 1))
    series = level + rng.normal(0, rng.uniform(0.1, 10, size=(count, 1)), size=(count, window))
    series[::4, -3:] += rng.uniform(5, 80, size=(len(series[::4]), 1))  # level shifts at the end
    series[1::4] = np.round(series[1::4])  # quantised, with ties
    series[2::8] = 12.0  # flat: MAD 0, the floor decides
    return series.astype(np.float32), rng.uniform(0.1, 2.0, size=count).astype(np.float32)


def build(out: Path = DEFAULT_PATH, window: int = 60, recent: int = 3, atol: float = 1e-3) -> Path:
    """Export the model to ``out`` with its metadata and check it against :func:`reference_score`."""
    import onnxruntime as ort  # export-time check only

    model = RobustZScore(window, recent).eval()
    windows, scales = _parity_windows(window)
    out.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notice
        torch.onnx.export(
            model,
            (torch.from_numpy(windows[:2]), torch.from_numpy(scales[:2])),
            str(out),
            input_names=["window", "min_scale"],
            output_names=["score"],
            opset_version=DEFAULT_OPSET,
            dynamic_axes={"window": {0: "batch"}, "min_scale": {0: "batch"}, "score": {0: "batch"}},
            dynamo=False,
        )
    proto = onnx.load(str(out))
    metadata = {
        "kind": "sensor_anomaly",
        "window": str(window),
        "recent": str(recent),
        "score_units": "robust standard deviations",
        "model_version": MODEL_VERSION,
        "roadside_version": roadside_version(),
        "description": "Robust z-score of a sensor window's newest values against the rest",
        "license": "Apache-2.0",
    }
    for key, value in metadata.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    proto.producer_name = "roadside"
    onnx.checker.check_model(proto)
    onnx.save(proto, str(out))

    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    (got,) = session.run(None, {"window": windows, "min_scale": scales})
    expected = np.array(
        [
            reference_score(w.astype(np.float64), float(s), recent)
            for w, s in zip(windows, scales, strict=True)
        ]
    )
    diff = float(np.max(np.abs(got - expected) / np.maximum(1.0, np.abs(expected))))
    if not diff <= atol:
        raise RuntimeError(f"ONNX anomaly model differs from the numpy reference by {diff:.3g} (> {atol:g})")
    log.info("wrote %s (%d bytes), parity %.2g", out, out.stat().st_size, diff)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", type=Path, default=DEFAULT_PATH)
    parser.add_argument("--window", type=int, default=60)
    parser.add_argument("--recent", type=int, default=3)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
    build(args.out, args.window, args.recent)


if __name__ == "__main__":
    main()
