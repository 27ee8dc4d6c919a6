"""Item 19: the held-out set the publish gate scores on is out of every device's reach.

Verified, not assumed: it is rendered from fixed seeds in code (no file is read, so
nothing a device uploads can change it), the seeds are outside the range training
draws from, and no module on the gate's path imports the dataset store or ingest.
"""

from __future__ import annotations

import ast
import builtins
import io
import os
from pathlib import Path

import numpy as np
import pytest

from roadside.models.evaluate import CONDITIONS, TRAIN_SEED_LIMIT, heldout_frames

ROOT = Path(__file__).resolve().parents[2]
GATE_PATH = [
    "models/evaluate.py",
    "sim/synthetic.py",
    "vision/yolo.py",
    "cloud/release/gate.py",
    "cloud/release/publishing.py",
]
DEVICE_REACHABLE = ("roadside.cloud.dataset", "roadside.cloud.ingest", "roadside.shared.dataset", "edge")


def _imports(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


@pytest.mark.parametrize("module", GATE_PATH)
def test_nothing_on_the_gates_path_reads_what_devices_send(module: str) -> None:
    imported = _imports(ROOT / module)
    reachable = sorted(n for n in imported if n.startswith(DEVICE_REACHABLE))
    assert reachable == [], f"{module} imports {reachable}"


def test_heldout_seeds_are_outside_the_training_range() -> None:
    for name, condition in CONDITIONS.items():
        assert condition.seed * 1000 >= TRAIN_SEED_LIMIT, name  # scene seeds are seed * 1000 + k


def test_heldout_frames_are_rendered_without_reading_any_file(monkeypatch: pytest.MonkeyPatch) -> None:
    expected = heldout_frames("fog", 3)

    def refuse(*args: object, **kwargs: object) -> object:
        raise AssertionError(f"the held-out set read a file: {args[:1]}")

    with monkeypatch.context() as patched:
        for target, name in ((builtins, "open"), (io, "open"), (os, "open")):
            patched.setattr(target, name, refuse)
        again = heldout_frames("fog", 3)
    assert len(again) == len(expected) == 3
    for a, b in zip(again, expected, strict=True):
        assert np.array_equal(a.image, b.image)
