"""YOLOv8-layout pre- and post-processing (vision.yolo)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

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


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return float(inter / union) if union > 0 else 0.0


def _output(rows: Sequence[tuple[float, float, float, float, int, float]], nc: int) -> np.ndarray:
    """A [4+nc, N] output from (cx, cy, w, h, class, score) candidates."""
    out = np.zeros((4 + nc, len(rows)), dtype=np.float32)
    for i, (cx, cy, w, h, cls, score) in enumerate(rows):
        out[:4, i] = (cx, cy, w, h)
        out[4 + cls, i] = score
    return out


# -- letterbox -----------------------------------------------------------------


def test_letterbox_4_3_frame_pads_top_and_bottom() -> None:
    image = np.zeros((480, 640, 3), dtype=np.uint8)
    image[..., 0] = 255  # pure blue in BGR
    blob, info = letterbox(image, (320, 320))
    assert blob.shape == (3, 320, 320)
    assert blob.dtype == np.float32
    assert info == LetterboxInfo(scale=0.5, pad_x=0, pad_y=40, orig_shape=(480, 640), input_shape=(320, 320))
    assert np.allclose(blob[:, :40], PAD_VALUE / 255)
    assert np.allclose(blob[:, 280:], PAD_VALUE / 255)
    # Channels come out RGB: blue is the last plane.
    assert np.allclose(blob[2, 40:280], 1.0)
    assert np.allclose(blob[0, 40:280], 0.0)


def test_letterbox_portrait_frame_pads_left_and_right() -> None:
    blob, info = letterbox(np.full((720, 360, 3), 7, dtype=np.uint8), (320, 320))
    assert info.scale == pytest.approx(320 / 720)
    assert (info.pad_x, info.pad_y) == (80, 0)
    assert np.allclose(blob[:, :, :80], PAD_VALUE / 255)
    assert np.allclose(blob[:, :, 80:240], 7 / 255)


def test_letterbox_rejects_non_bgr_images() -> None:
    with pytest.raises(ValueError, match="HxWx3"):
        letterbox(np.zeros((10, 10), dtype=np.uint8), (32, 32))
    with pytest.raises(ValueError, match="HxWx3"):
        letterbox(np.zeros((10, 10, 3), dtype=np.float32), (32, 32))


@given(
    h=st.integers(16, 2000),
    w=st.integers(16, 2000),
    size=st.sampled_from([(320, 320), (640, 640), (384, 640)]),
    frac=hnp.arrays(np.float64, (5, 4), elements=st.floats(0, 1)),
)
def test_letterbox_box_mapping_round_trips(h: int, w: int, size: tuple[int, int], frac: np.ndarray) -> None:
    info = LetterboxInfo(
        scale=min(size[0] / h, size[1] / w),
        pad_x=3,
        pad_y=5,
        orig_shape=(h, w),
        input_shape=size,
    )
    boxes = (frac * np.array([w, h, w, h])).astype(np.float32)
    back = info.to_original(info.to_input(boxes))
    assert np.allclose(back, boxes, atol=1e-3 * max(h, w))


def test_letterbox_info_maps_picture_corners_to_content_corners() -> None:
    _, info = letterbox(np.zeros((720, 1280, 3), dtype=np.uint8), (320, 320))
    assert (info.scale, info.pad_x, info.pad_y) == (0.25, 0, 70)
    corners = np.array([[0, 0, 1280, 720]], dtype=np.float32)
    assert np.allclose(info.to_input(corners), [[0, 70, 320, 250]])


def test_letterbox_batch_matches_single_images() -> None:
    rng = np.random.default_rng(0)
    images = [
        rng.integers(0, 256, (480, 640, 3), dtype=np.uint8),
        rng.integers(0, 256, (360, 640, 3), dtype=np.uint8),
    ]
    batch, infos = letterbox_batch(images, (320, 320))
    assert batch.shape == (2, 3, 320, 320)
    for i, image in enumerate(images):
        single, info = letterbox(image, (320, 320))
        assert np.array_equal(batch[i], single)
        assert infos[i] == info


# -- decode ----------------------------------------------------------------------


def test_decode_maps_boxes_back_to_original_pixels() -> None:
    _, info = letterbox(np.zeros((480, 640, 3), dtype=np.uint8), (320, 320))
    out = _output(
        [
            (100, 100, 40, 20, 0, 0.9),  # a car
            (200, 150, 10, 30, 2, 0.8),  # a pedestrian
            (50, 60, 10, 10, 1, 0.1),  # below the threshold
        ],
        nc=4,
    )
    det = decode_yolo(out, conf_threshold=0.25, iou_threshold=0.5, info=info, num_classes=4)
    assert len(det) == 2
    # x: (x_in - 0) / 0.5, y: (y_in - 40) / 0.5
    assert np.allclose(det.boxes[0], [160, 100, 240, 140])
    assert np.allclose(det.boxes[1], [390, 190, 410, 250])
    assert det.class_ids.tolist() == [0, 2]
    assert np.allclose(det.scores, [0.9, 0.8])
    assert det.boxes.dtype == np.float32
    assert det.class_ids.dtype == np.int64


def test_decode_without_info_stays_in_input_pixels() -> None:
    det = decode_yolo(_output([(100, 100, 40, 20, 1, 0.7)], nc=2), num_classes=2)
    assert np.allclose(det.boxes, [[80, 90, 120, 110]])


def test_decode_clips_boxes_to_the_original_image() -> None:
    _, info = letterbox(np.zeros((480, 640, 3), dtype=np.uint8), (320, 320))
    det = decode_yolo(_output([(5, 45, 20, 20, 0, 0.9)], nc=1), info=info, num_classes=1)
    assert np.allclose(det.boxes, [[0, 0, 30, 30]])


def test_decode_takes_best_class_per_candidate() -> None:
    out = _output([(100, 100, 40, 20, 0, 0.4)], nc=3)
    out[5, 0] = 0.7
    det = decode_yolo(out, num_classes=3)
    assert det.class_ids.tolist() == [1]
    assert det.scores.tolist() == pytest.approx([0.7])


def test_decode_accepts_transposed_and_batched_layouts() -> None:
    rows = [(100, 100, 40, 20, 0, 0.9), (104, 100, 40, 20, 0, 0.6), (200, 50, 8, 8, 3, 0.5)]
    out = _output(rows, nc=4)
    ref = decode_yolo(out, num_classes=4)
    for variant in (out.T, out[None], out.T[None]):
        det = decode_yolo(variant, num_classes=4)
        assert np.array_equal(det.boxes, ref.boxes)
        assert np.array_equal(det.class_ids, ref.class_ids)
    # With many anchors the layout is clear without a hint, as with real models.
    wide = np.concatenate([out, np.zeros((8, 50), dtype=np.float32)], axis=1)
    assert np.array_equal(decode_yolo(wide.T).boxes, ref.boxes)


def test_decode_rejects_a_layout_that_does_not_fit_the_classes() -> None:
    with pytest.raises(ValueError, match="4 \\+ 3"):
        decode_yolo(np.zeros((8, 20), dtype=np.float32), num_classes=3)


def test_decode_empty_outputs() -> None:
    assert len(decode_yolo(np.zeros((8, 0), dtype=np.float32), num_classes=4)) == 0
    assert len(decode_yolo(np.zeros((8, 100), dtype=np.float32), num_classes=4)) == 0
    nan = np.full((8, 10), np.nan, dtype=np.float32)
    assert len(decode_yolo(nan, num_classes=4)) == 0
    empty = Detections.empty()
    assert empty.boxes.shape == (0, 4)
    assert len(empty) == 0


def test_decode_caps_detections() -> None:
    rows = [(10 + 20 * i, 10, 10, 10, 0, 0.5 + i / 100) for i in range(15)]
    det = decode_yolo(_output(rows, nc=1), max_detections=5, num_classes=1)
    assert len(det) == 5
    assert np.allclose(det.scores, [0.64, 0.63, 0.62, 0.61, 0.60])


def test_decode_batch_decodes_each_image() -> None:
    out = _output([(100, 100, 40, 20, 0, 0.9)], nc=2)
    batch = np.stack([out, np.zeros_like(out)])
    dets = decode_yolo_batch(batch, [None, None], num_classes=2)
    assert [len(d) for d in dets] == [1, 0]


# -- NMS ---------------------------------------------------------------------------


def test_nms_suppresses_overlaps_and_keeps_separate_boxes() -> None:
    boxes = np.array([[0, 0, 10, 10], [1, 1, 11, 11], [20, 20, 30, 30]], dtype=np.float32)
    scores = np.array([0.8, 0.9, 0.7], dtype=np.float32)
    assert nms(boxes, scores, 0.5).tolist() == [1, 2]


def test_nms_keeps_overlapping_boxes_of_different_classes() -> None:
    boxes = np.array([[0, 0, 10, 10], [1, 1, 11, 11]], dtype=np.float32)
    scores = np.array([0.9, 0.8], dtype=np.float32)
    assert nms(boxes, scores, 0.5, class_ids=[0, 1]).tolist() == [0, 1]
    assert nms(boxes, scores, 0.5, class_ids=[1, 1]).tolist() == [0]
    out = _output([(5, 5, 10, 10, 0, 0.9), (6, 6, 10, 10, 1, 0.8)], nc=2)
    assert len(decode_yolo(out, num_classes=2)) == 2
    assert len(decode_yolo(out, num_classes=2, class_agnostic=True)) == 1


def test_nms_edge_cases() -> None:
    assert nms(np.zeros((0, 4)), np.zeros(0), 0.5).tolist() == []
    # Degenerate (zero-area) boxes neither crash nor suppress anything.
    assert nms(np.zeros((2, 4)), np.array([0.5, 0.4]), 0.5).tolist() == [0, 1]
    with pytest.raises(ValueError, match="scores"):
        nms(np.zeros((2, 4)), np.zeros(3), 0.5)


candidate = st.tuples(
    st.floats(-50, 370),  # cx, partly outside the input on purpose
    st.floats(-50, 370),  # cy
    st.floats(0, 200),  # w
    st.floats(0, 200),  # h
    st.integers(0, 2),  # class
    st.floats(0, 1),  # score
)


@settings(max_examples=150, deadline=None)
@given(
    rows=st.lists(candidate, max_size=60),
    conf=st.floats(0.0, 0.9),
    iou=st.floats(0.1, 0.9),
    orig=st.sampled_from([(480, 640), (720, 1280), (1080, 720)]),
    transposed=st.booleans(),
)
def test_decode_properties(
    rows: list[tuple[float, float, float, float, int, float]],
    conf: float,
    iou: float,
    orig: tuple[int, int],
    transposed: bool,
) -> None:
    _, info = letterbox(np.zeros((*orig, 3), dtype=np.uint8), (320, 320))
    out = _output(rows, nc=3)
    det = decode_yolo(out.T if transposed else out, conf, iou, info, max_detections=40, num_classes=3)
    h, w = orig
    assert len(det) <= 40
    assert det.boxes.shape == (len(det), 4)
    assert np.all(det.boxes >= 0)
    assert np.all(det.boxes[:, [0, 2]] <= w)
    assert np.all(det.boxes[:, [1, 3]] <= h)
    assert np.all(det.scores > conf)
    assert np.all(np.diff(det.scores) <= 0)
    for i in range(len(det)):
        for j in range(i + 1, len(det)):
            if det.class_ids[i] == det.class_ids[j]:
                assert _iou(det.boxes[i], det.boxes[j]) <= iou + 1e-6


# -- metadata ----------------------------------------------------------------------


def test_parse_class_names() -> None:
    assert parse_class_names("{0: 'car', 1: 'truck'}") == {0: "car", 1: "truck"}
    assert parse_class_names("['a', 'b']") == {0: "a", 1: "b"}
    with pytest.raises(ValueError, match="dict literal"):
        parse_class_names("{0: car}")
    with pytest.raises(ValueError, match="int to str"):
        parse_class_names("{'a': 1}")


def test_boxes_without_area_are_not_detections() -> None:
    # Found by Hypothesis: two identical boxes 4e-45 px tall both survived NMS.
    rows = [(0.0, 0.0, 107.0, 2.1375665919760215e-45, 1, 1.0)] * 2 + [(160.0, 160.0, 40.0, 30.0, 0, 0.9)]
    _, info = letterbox(np.zeros((1080, 720, 3), dtype=np.uint8), (320, 320))
    det = decode_yolo(_output(rows, nc=3), 0.0, 0.5, info, max_detections=40, num_classes=3)
    assert len(det) == 1
    assert det.class_ids.tolist() == [0]


@pytest.mark.filterwarnings("error")
@pytest.mark.parametrize("letterboxed", [False, True])
def test_non_finite_and_overflowing_boxes_are_dropped_quietly(letterboxed: bool) -> None:
    # Found by the fuzz target: 3e38 widths overflowed float32 and numpy warned on every frame.
    rows = [
        (np.inf, 10.0, 20.0, 20.0, 0, 0.9),
        (10.0, np.nan, 20.0, 20.0, 0, 0.9),
        (3e38, 3e38, 3e38, 3e38, 1, 0.9),
        (-3e38, 0.0, 3e38, 3e38, 1, 0.9),
        (100.0, 100.0, 40.0, 30.0, 0, 0.8),
    ]
    info = letterbox(np.zeros((480, 640, 3), dtype=np.uint8), (320, 320))[1] if letterboxed else None
    det = decode_yolo(_output(rows, nc=2), 0.25, 0.5, info, num_classes=2)
    assert len(det) == 1
    assert np.isfinite(det.boxes).all()
    assert det.scores.tolist() == pytest.approx([0.8])
