"""A candidate's held-out scores are taken from the card beside it only when the card scored that very file."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from roadside.cloud.release.publishing import card_summary
from roadside.models.evaluate import CONDITIONS


def _card(folder: Path, model: bytes, frames: int, conditions: list[str]) -> Path:
    path = folder / "detector.onnx"
    path.write_bytes(model)
    evaluation = {
        "frames_per_condition": frames,
        "conditions": {c: {"map50": 0.5, "count_mae": 1.0} for c in conditions},
    }
    variant = {"kind": "fp32", "sha256": hashlib.sha256(model).hexdigest(), "evaluation": evaluation}
    (folder / "card.json").write_text(json.dumps({"variants": [variant]}))
    return path


def test_scores_of_the_same_file_and_frames_are_reused(tmp_path: Path) -> None:
    path = _card(tmp_path, b"model bytes", 160, [*CONDITIONS, "sumo-day"])
    synthetic = card_summary(path, 160, None)
    assert synthetic is not None
    assert set(synthetic["conditions"]) == set(CONDITIONS)  # only what was asked for
    both = card_summary(path, 160, [*CONDITIONS, "sumo-day"])
    assert both is not None
    assert set(both["conditions"]) == {*CONDITIONS, "sumo-day"}


def test_other_frames_conditions_files_or_a_broken_card_are_scored_afresh(tmp_path: Path) -> None:
    path = _card(tmp_path, b"model bytes", 160, list(CONDITIONS))
    assert card_summary(path, 96, None) is None  # other frames per condition
    assert card_summary(path, 160, ["day", "sumo-night"]) is None  # a condition the card lacks
    path.write_bytes(b"another model")
    assert card_summary(path, 160, None) is None  # the card scored another file
    (tmp_path / "card.json").write_text("{not json")
    assert card_summary(path, 160, None) is None
    (tmp_path / "card.json").unlink()
    assert card_summary(path, 160, None) is None
