"""Which detector each of ``bench.signal``'s cameras runs (issue 11).

The junction camera counts turning movements with the detector fine-tuned on
its mast's view (``models/detector_sumo_junction.onnx``); the approach cameras
keep ``models/detector_sumo.onnx``, on which stop-bar presence was judged.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from bench import signal
from roadside.edge.inference.engine import OnnxSession


def _args(model: str | None = None, junction_model: str | None = None) -> argparse.Namespace:
    return argparse.Namespace(
        model=None if model is None else Path(model),
        junction_model=None if junction_model is None else Path(junction_model),
    )


def test_the_junction_camera_runs_its_own_detector_by_default() -> None:
    assert signal.JUNCTION_MODEL.name == "detector_sumo_junction.onnx"
    assert signal.JUNCTION_MODEL.is_file()
    assert signal.junction_model_of(_args()) == signal.JUNCTION_MODEL
    assert signal.DEFAULT_MODEL == signal.SUMO_MODEL  # the approach cameras' detector is unchanged


def test_an_explicit_model_is_the_junction_camera_s_too_unless_it_has_its_own() -> None:
    assert signal.junction_model_of(_args(model="a.onnx")) == Path("a.onnx")
    assert signal.junction_model_of(_args(model="a.onnx", junction_model="j.onnx")) == Path("j.onnx")
    assert signal.junction_model_of(_args(junction_model="j.onnx")) == Path("j.onnx")


def test_the_junction_detector_loads_with_the_approach_detector_s_input() -> None:
    junction = OnnxSession(signal.JUNCTION_MODEL, ["CPUExecutionProvider"], intra_op_threads=1)
    approach = OnnxSession(signal.SUMO_MODEL, ["CPUExecutionProvider"], intra_op_threads=1)
    assert junction.input_shape[1:] == [3, 320, 320]
    assert junction.input_shape[1:] == approach.input_shape[1:]
