"""The agent's counting chain (detector → tracker → line) against the scene's ground truth."""

from __future__ import annotations

from collections import Counter

import pytest

from roadside.edge.analytics.lines import CountingLine
from roadside.edge.analytics.tracker import IouTracker
from roadside.edge.inference.engine import OnnxDetector
from roadside.sim.synthetic import RoadScene, SceneConfig


@pytest.mark.parametrize(("seed", "light"), [(3, 1.0), (11, 0.3)])
def test_line_counts_match_ground_truth(seed: int, light: float) -> None:
    scene = RoadScene(SceneConfig(seed=seed, light=light))
    line = CountingLine("l", *scene.count_line())
    detector = OnnxDetector(None, ["CPUExecutionProvider"], conf_threshold=0.4, iou_threshold=0.5)
    tracker = IouTracker()
    last: dict[int, tuple[float, float]] = {}
    truth: Counter[tuple[int, str]] = Counter()
    counted: Counter[tuple[int, str]] = Counter()
    for _ in range(400):  # 40 s of scene at 10 fps
        frame = scene.step()
        for obj in frame.objects:
            centre = ((obj.box[0] + obj.box[2]) / 2, (obj.box[1] + obj.box[3]) / 2)
            if obj.track_id in last and (
                hit := line.check(obj.track_id, obj.cls, 1.0, last[obj.track_id], centre)
            ):
                truth[(obj.cls, hit.direction)] += 1
            last[obj.track_id] = centre
        found = detector.detect([frame.image])[0]
        for track in tracker.update(found.boxes, found.scores, found.class_ids):
            if len(track.history) >= 2 and (
                hit := line.check(
                    track.track_id, track.cls, track.score, track.history[-2], track.history[-1]
                )
            ):
                counted[(track.cls, hit.direction)] += 1
    total = sum(truth.values())
    assert total >= 10
    error = sum(abs(counted[k] - truth[k]) for k in truth | counted)
    assert error <= max(2, 0.1 * total), (sorted(truth.items()), sorted(counted.items()))
