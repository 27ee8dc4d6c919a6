"""Export a trained detector to ONNX in the YOLOv8 layout, and check parity.

The file carries Ultralytics-style ``metadata_props`` (``names``, ``imgsz``,
``stride``, ``task``...) so tools that read YOLO exports read ours, plus
``roadside_version`` and ``model_version``. After export the same inputs
run through PyTorch and onnxruntime; a difference above the tolerance
raises :class:`ExportParityError` rather than shipping a model that
behaves differently on the device.
"""

from __future__ import annotations

import datetime as dt
import logging
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

import numpy as np
import numpy.typing as npt
import onnx
import torch

from roadside.shared.errors import RoadsideError
from roadside.sim.synthetic import CLASSES

__all__ = [
    "DEFAULT_OPSET",
    "ExportParityError",
    "ExportReport",
    "check_parity",
    "export_onnx",
    "onnx_predictor",
    "roadside_version",
]

logger = logging.getLogger(__name__)

DEFAULT_OPSET = 17
PARITY_ATOL = 1e-4

Predictor = Callable[[npt.NDArray[np.float32]], npt.NDArray[np.float32]]


class ExportParityError(RoadsideError):
    """The exported ONNX model does not compute what the PyTorch model computes."""


@dataclass(frozen=True)
class ExportReport:
    """What was written and how closely it matches PyTorch."""

    path: Path
    size_bytes: int
    max_abs_diff: float
    opset: int
    metadata: dict[str, str]


def roadside_version() -> str:
    """The installed Roadside version, or ``0+unknown`` outside an install."""
    try:
        return metadata.version("roadside")
    except metadata.PackageNotFoundError:
        return "0+unknown"


def _metadata(
    names: Sequence[str], imgsz: tuple[int, int], stride: int, model_version: str
) -> dict[str, str]:
    # Same keys and value formats as an Ultralytics export, so their readers work.
    return {
        "description": "Roadside road-user detector (YOLOv8 output layout)",
        "author": "Roadside",
        "date": dt.datetime.now(dt.UTC).date().isoformat(),
        "version": model_version,
        "license": "Apache-2.0",
        "task": "detect",
        "stride": str(stride),
        "batch": "1",
        "imgsz": str(list(imgsz)),
        "channels": "3",
        "names": str(dict(enumerate(names))),
        "roadside_version": roadside_version(),
        "model_version": model_version,
    }


def onnx_predictor(path: str | Path, threads: int = 0) -> Predictor:
    """A function running an ONNX detector on an NCHW float32 batch (CPU)."""
    import onnxruntime as ort  # only export-time tools need it

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.log_severity_level = 3
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    input_name = session.get_inputs()[0].name

    def predict(batch: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
        (out,) = session.run(None, {input_name: np.ascontiguousarray(batch, dtype=np.float32)})
        return np.asarray(out, dtype=np.float32)

    return predict


def check_parity(
    model: torch.nn.Module,
    onnx_path: str | Path,
    inputs: npt.NDArray[np.float32],
    atol: float = PARITY_ATOL,
) -> float:
    """Largest absolute difference between PyTorch and onnxruntime outputs.

    Raises :class:`ExportParityError` when it is above ``atol``.
    """
    model.eval()
    with torch.no_grad():
        expected = model(torch.from_numpy(inputs)).numpy()
    got = onnx_predictor(onnx_path)(inputs)
    if got.shape != expected.shape:
        raise ExportParityError(f"ONNX output shape {got.shape} differs from PyTorch {expected.shape}")
    diff = float(np.max(np.abs(got - expected))) if got.size else 0.0
    if not diff <= atol:  # also catches NaN
        raise ExportParityError(
            f"ONNX and PyTorch outputs differ by {diff:.3g} (> {atol:g}); "
            "check for ops the exporter approximates or an opset mismatch"
        )
    return diff


def export_onnx(
    model: torch.nn.Module,
    path: str | Path,
    *,
    imgsz: tuple[int, int] = (320, 320),
    names: Sequence[str] = CLASSES,
    stride: int = 8,
    model_version: str = "0.1.0",
    opset: int = DEFAULT_OPSET,
    parity_inputs: npt.NDArray[np.float32] | None = None,
) -> ExportReport:
    """Export ``model`` to ``path`` with a dynamic batch axis, then check parity.

    ``parity_inputs`` (NCHW float32, at least two images so the dynamic batch
    is exercised) default to random images.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    model = model.eval().to(memory_format=torch.contiguous_format)  # type: ignore[call-overload]
    dummy = torch.zeros(1, 3, *imgsz)
    with warnings.catch_warnings():
        # The TorchScript exporter warns that it is deprecated; it is still the
        # one that folds batch norm and keeps the graph this simple.
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model,
            (dummy,),
            str(path),
            input_names=["images"],
            output_names=["output0"],
            opset_version=opset,
            dynamic_axes={"images": {0: "batch"}, "output0": {0: "batch"}},
            do_constant_folding=True,
            dynamo=False,
        )
    proto = onnx.load(str(path))
    with torch.no_grad():
        out_shape = model(dummy).shape
    # State the output's fixed dims, [batch, 4 + nc, N], as YOLO exports do.
    for dim, value in zip(proto.graph.output[0].type.tensor_type.shape.dim[1:], out_shape[1:], strict=True):
        dim.Clear()
        dim.dim_value = int(value)
    meta = _metadata(names, imgsz, stride, model_version)
    del proto.metadata_props[:]
    for key, value in meta.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    proto.producer_name = "roadside"
    proto.producer_version = meta["roadside_version"]
    onnx.checker.check_model(proto)
    onnx.save(proto, str(path))

    if parity_inputs is None:
        rng = np.random.default_rng(0)
        parity_inputs = rng.random((2, 3, *imgsz), dtype=np.float32)
    diff = check_parity(model, path, parity_inputs)
    size = path.stat().st_size
    logger.info("exported %s (%d bytes, opset %d), parity max abs diff %.3g", path, size, opset, diff)
    return ExportReport(path=path, size_bytes=size, max_abs_diff=diff, opset=opset, metadata=meta)
