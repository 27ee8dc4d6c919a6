"""The shadow comparison: agreement, novel finds, latency p95 and confidence histograms (pure)."""

from __future__ import annotations

from collections import deque

import numpy as np
import pytest

from roadside.edge.ota.shadow import ShadowComparison, count_matches, p95, pairwise_iou
from roadside.vision.yolo import Detections


def dets(*rows: tuple[float, float, float, float, float, int]) -> Detections:
    """Detections from (x1, y1, x2, y2, score, class) rows."""
    if not rows:
        return Detections.empty()
    array = np.array(rows, dtype=np.float64)
    return Detections(
        boxes=array[:, :4].astype(np.float32),
        scores=array[:, 4].astype(np.float32),
        class_ids=array[:, 5].astype(np.int64),
    )


CAR = (10, 10, 50, 50, 0.9, 0)
PERSON = (100, 100, 120, 160, 0.55, 2)
FAR_CAR = (300, 300, 340, 340, 0.7, 0)


def test_identical_detections_agree_fully_with_nothing_novel() -> None:
    shadow = ShadowComparison()
    shadow.add_batch([dets(CAR, PERSON), dets(FAR_CAR)], [dets(CAR, PERSON), dets(FAR_CAR)], 4.0, 5.0)
    stats = shadow.stats()
    assert (stats.frames, stats.agreement, stats.novel) == (2, 1.0, 0.0)
    assert stats.confidence_running == stats.confidence_candidate


def test_disjoint_detections_agree_on_nothing_and_are_all_novel() -> None:
    shadow = ShadowComparison()
    shadow.add_frame(dets(CAR, PERSON), dets(FAR_CAR))
    assert (shadow.agreement, shadow.novel) == (0.0, 1.0)


def test_a_different_class_on_the_same_box_is_no_match() -> None:
    shadow = ShadowComparison()
    shadow.add_frame(dets(CAR), dets((10, 10, 50, 50, 0.9, 1)))
    assert (shadow.agreement, shadow.novel) == (0.0, 1.0)


def test_extra_candidate_finds_keep_agreement_and_count_as_novel() -> None:
    shadow = ShadowComparison()
    shadow.add_frame(dets(CAR), dets(CAR, PERSON, FAR_CAR))
    assert shadow.agreement == 1.0
    assert shadow.novel == pytest.approx(2 / 3)


def test_a_shifted_box_matches_only_above_iou_one_half() -> None:
    near = (14, 10, 54, 50, 0.8, 0)  # IoU 36*40 / (2*1600 - 1440) = 0.818
    far = (35, 10, 75, 50, 0.8, 0)  # IoU 15*40 / (3200 - 600) = 0.23
    assert count_matches(dets(CAR), dets(near)) == 1
    assert count_matches(dets(CAR), dets(far)) == 0
    iou = pairwise_iou(dets(CAR).boxes, dets(near, far).boxes)
    assert iou[0] == pytest.approx([1440 / 1760, 600 / 2600])


def test_matching_is_one_to_one() -> None:
    # Two running cars on the same spot, one candidate car: one match, not two.
    assert count_matches(dets(CAR, CAR), dets(CAR)) == 1
    shadow = ShadowComparison()
    shadow.add_frame(dets(CAR, CAR), dets(CAR))
    assert (shadow.agreement, shadow.novel) == (0.5, 0.0)


def test_nothing_found_by_either_is_full_agreement() -> None:
    shadow = ShadowComparison()
    shadow.add_frame(dets(), dets())
    stats = shadow.stats()
    assert (stats.agreement, stats.novel) == (1.0, 0.0)
    assert stats.confidence_running == [0.0] * 10


def test_confidence_histograms_are_normalised_into_ten_bins() -> None:
    shadow = ShadowComparison()
    shadow.add_frame(dets(CAR, PERSON, FAR_CAR, (0, 0, 5, 5, 1.0, 1)), dets(CAR))
    stats = shadow.stats()
    assert sum(stats.confidence_running) == pytest.approx(1.0)
    assert stats.confidence_running[9] == pytest.approx(0.5)  # 0.9 and 1.0 (the top edge) share the last bin
    assert stats.confidence_running[5] == pytest.approx(0.25)
    assert stats.confidence_running[7] == pytest.approx(0.25)
    assert stats.confidence_candidate == [0.0] * 9 + [1.0]


def test_latency_p95_per_model() -> None:
    shadow = ShadowComparison()
    for i in range(1, 101):
        shadow.add_batch([dets()], [dets()], float(i), 2.0 * i)
    stats = shadow.stats()
    assert stats.latency_p95_ms_running == pytest.approx(95.05)
    assert stats.latency_p95_ms_candidate == pytest.approx(190.1)
    assert p95(deque()) == 0.0


def test_batches_must_pair_up() -> None:
    with pytest.raises(ValueError, match="2 running results for 1"):
        ShadowComparison().add_batch([dets(), dets()], [dets()], 1.0, 1.0)
