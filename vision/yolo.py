"""Pre- and post-processing for detectors in the YOLOv8/YOLO11 output layout.

Pure array code (numpy, and OpenCV only to resize): no inference runtime is
imported here, so it is tested without a model and shared by every engine, and by
the evaluation in ``models/``.

The layout: one image's output is ``[4 + nc, N]``; rows 0..3 are box centre
x, centre y, width and height in network-input pixels, rows ``4..`` are
per-class scores already passed through a sigmoid. There is no objectness
row (that was YOLOv5). Some exporters transpose it to ``[N, 4 + nc]``;
:func:`decode_yolo` accepts both.
"""

from __future__ import annotations

import ast
from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np
import numpy.typing as npt

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

PAD_VALUE = 114  # grey border, as Ultralytics pads

FloatArray = npt.NDArray[np.float32]
IntArray = npt.NDArray[np.int64]


@dataclass(frozen=True)
class LetterboxInfo:
    """How an image was fitted into the network input, to map boxes back."""

    scale: float  # network pixels per original pixel
    pad_x: int  # columns of padding on the left
    pad_y: int  # rows of padding on top
    orig_shape: tuple[int, int]  # original (height, width)
    input_shape: tuple[int, int]  # network input (height, width)

    def to_original(self, boxes_xyxy: FloatArray) -> FloatArray:
        """Map xyxy boxes from network-input pixels to original pixels, clipped."""
        out = np.empty_like(boxes_xyxy, dtype=np.float32)
        xs, ys = out[:, 0::2], out[:, 1::2]  # views, so the clips below write through
        xs[...] = (boxes_xyxy[:, 0::2] - self.pad_x) / self.scale
        ys[...] = (boxes_xyxy[:, 1::2] - self.pad_y) / self.scale
        h, w = self.orig_shape
        np.clip(xs, 0.0, float(w), out=xs)
        np.clip(ys, 0.0, float(h), out=ys)
        return out

    def to_input(self, boxes_xyxy: FloatArray) -> FloatArray:
        """Map xyxy boxes from original pixels to network-input pixels."""
        out = np.empty_like(boxes_xyxy, dtype=np.float32)
        out[:, 0::2] = boxes_xyxy[:, 0::2] * self.scale + self.pad_x
        out[:, 1::2] = boxes_xyxy[:, 1::2] * self.scale + self.pad_y
        return out


@dataclass(frozen=True)
class Detections:
    """Detections of one image, best first, in original image pixels."""

    boxes: FloatArray  # (N, 4) x1, y1, x2, y2
    scores: FloatArray  # (N,)
    class_ids: IntArray  # (N,)

    def __len__(self) -> int:
        return int(self.scores.shape[0])

    @classmethod
    def empty(cls) -> Detections:
        """No detections."""
        return cls(
            boxes=np.zeros((0, 4), dtype=np.float32),
            scores=np.zeros((0,), dtype=np.float32),
            class_ids=np.zeros((0,), dtype=np.int64),
        )


def _fit(orig_shape: tuple[int, int], size: tuple[int, int]) -> LetterboxInfo:
    h, w = orig_shape
    th, tw = size
    scale = min(th / h, tw / w)
    new_w, new_h = round(w * scale), round(h * scale)
    # Same rounding as Ultralytics, so our boxes and theirs agree to the pixel.
    pad_x = round((tw - new_w) / 2 - 0.1)
    pad_y = round((th - new_h) / 2 - 0.1)
    return LetterboxInfo(scale=scale, pad_x=pad_x, pad_y=pad_y, orig_shape=(h, w), input_shape=(th, tw))


def _letterbox_into(image_bgr: npt.NDArray[np.uint8], out: FloatArray, info: LetterboxInfo) -> None:
    h, w = info.orig_shape
    new_w, new_h = round(w * info.scale), round(h * info.scale)
    resized = image_bgr
    if (new_h, new_w) != (h, w):
        resized = np.asarray(
            cv2.resize(image_bgr, (new_w, new_h), interpolation=cv2.INTER_LINEAR), dtype=np.uint8
        )
    out[...] = PAD_VALUE / 255.0
    y0, x0 = info.pad_y, info.pad_x
    # BGR HWC uint8 -> RGB CHW float 0..1, written straight into the output slice.
    out[:, y0 : y0 + new_h, x0 : x0 + new_w] = resized[:, :, ::-1].transpose(2, 0, 1)
    out[:, y0 : y0 + new_h, x0 : x0 + new_w] *= np.float32(1.0 / 255.0)


def _check_image(image_bgr: npt.NDArray[np.uint8]) -> tuple[int, int]:
    if image_bgr.ndim != 3 or image_bgr.shape[2] != 3 or image_bgr.dtype != np.uint8:
        raise ValueError(f"expected an HxWx3 uint8 BGR image, got {image_bgr.shape} {image_bgr.dtype}")
    h, w = image_bgr.shape[:2]
    if h == 0 or w == 0:
        raise ValueError("image is empty")
    return (int(h), int(w))


def letterbox(
    image_bgr: npt.NDArray[np.uint8], size: tuple[int, int] = (320, 320)
) -> tuple[FloatArray, LetterboxInfo]:
    """Fit an image into ``size`` (height, width) keeping its aspect ratio.

    Returns a CHW float32 RGB array in 0..1, padded with grey 114, and the
    scale and padding needed to map boxes back.
    """
    info = _fit(_check_image(image_bgr), size)
    out = np.empty((3, size[0], size[1]), dtype=np.float32)
    _letterbox_into(image_bgr, out, info)
    return out, info


def letterbox_batch(
    images_bgr: Sequence[npt.NDArray[np.uint8]], size: tuple[int, int] = (320, 320)
) -> tuple[FloatArray, list[LetterboxInfo]]:
    """Letterbox several frames (of any sizes) into one NCHW float32 batch."""
    batch = np.empty((len(images_bgr), 3, size[0], size[1]), dtype=np.float32)
    infos = []
    for i, image in enumerate(images_bgr):
        info = _fit(_check_image(image), size)
        _letterbox_into(image, batch[i], info)
        infos.append(info)
    return batch, infos


def _iou_one_to_many(box: npt.NDArray[np.float64], boxes: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    ix1 = np.maximum(box[0], boxes[:, 0])
    iy1 = np.maximum(box[1], boxes[:, 1])
    ix2 = np.minimum(box[2], boxes[:, 2])
    iy2 = np.minimum(box[3], boxes[:, 3])
    inter = np.clip(ix2 - ix1, 0.0, None) * np.clip(iy2 - iy1, 0.0, None)
    area = max(box[2] - box[0], 0.0) * max(box[3] - box[1], 0.0)
    areas = np.clip(boxes[:, 2] - boxes[:, 0], 0.0, None) * np.clip(boxes[:, 3] - boxes[:, 1], 0.0, None)
    union = area + areas - inter
    iou: npt.NDArray[np.float64] = np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)
    return iou


def nms(
    boxes: npt.ArrayLike,
    scores: npt.ArrayLike,
    iou_threshold: float,
    class_ids: npt.ArrayLike | None = None,
) -> IntArray:
    """Greedy non-maximum suppression; indices of kept boxes, best score first.

    A box is dropped when its IoU with a better kept box is above
    ``iou_threshold``. With ``class_ids`` boxes only suppress boxes of their
    own class: each class is shifted to its own region of the plane, so one
    class-agnostic pass does the work of one pass per class.
    """
    b = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    s = np.asarray(scores, dtype=np.float64).reshape(-1)
    if b.shape[0] != s.shape[0]:
        raise ValueError(f"{b.shape[0]} boxes but {s.shape[0]} scores")
    if b.shape[0] == 0:
        return np.zeros((0,), dtype=np.int64)
    if class_ids is not None:
        c = np.asarray(class_ids, dtype=np.float64).reshape(-1)
        span = float(b.max() - b.min()) + 1.0
        b = b + (c * span)[:, None]
    order = np.argsort(-s, kind="stable")
    keep: list[int] = []
    while order.size:
        best = int(order[0])
        keep.append(best)
        rest = order[1:]
        if not rest.size:
            break
        order = rest[_iou_one_to_many(b[best], b[rest]) <= iou_threshold]
    return np.asarray(keep, dtype=np.int64)


def _as_channels_first(output: npt.ArrayLike, num_classes: int | None) -> FloatArray:
    out = np.asarray(output, dtype=np.float32)
    if out.ndim == 3:
        if out.shape[0] != 1:
            raise ValueError(f"decode_yolo takes one image; got batch {out.shape[0]}")
        out = out[0]
    if out.ndim != 2:
        raise ValueError(f"expected a [4+nc, N] or [N, 4+nc] array, got shape {out.shape}")
    rows, cols = out.shape
    if num_classes is not None:
        channels = 4 + num_classes
        if rows == channels:
            return out
        if cols == channels:
            return out.T
        raise ValueError(f"shape {out.shape} has no axis of 4 + {num_classes} channels")
    # Without a hint, the anchor axis is the longer one (8400 vs 84 for COCO).
    return out if rows <= cols else out.T


def decode_yolo(
    output: npt.ArrayLike,
    conf_threshold: float = 0.25,
    iou_threshold: float = 0.45,
    info: LetterboxInfo | None = None,
    max_detections: int = 300,
    class_agnostic: bool = False,
    num_classes: int | None = None,
    max_candidates: int = 30000,
) -> Detections:
    """Turn one image's raw YOLOv8-layout output into final detections.

    ``output`` is ``[4+nc, N]``, ``[1, 4+nc, N]`` or transposed ``[N, 4+nc]``;
    pass ``num_classes`` to make the layout unambiguous. Each candidate keeps
    its best class; candidates at or below ``conf_threshold`` go, the best
    ``max_candidates`` go through NMS (per class unless ``class_agnostic``),
    and at most ``max_detections`` stay. With ``info`` the boxes are mapped
    back to original image pixels and clipped to the image (before NMS);
    without, they stay in input pixels, unclipped.
    """
    out = _as_channels_first(output, num_classes)
    if out.shape[0] < 5 or out.shape[1] == 0:
        return Detections.empty()
    class_scores = out[4:]
    class_ids = class_scores.argmax(axis=0)
    scores = class_scores[class_ids, np.arange(out.shape[1])]
    candidates = np.flatnonzero(scores > conf_threshold)  # NaN scores fail this too
    if candidates.size == 0:
        return Detections.empty()
    if candidates.size > max_candidates:
        top = np.argpartition(-scores[candidates], max_candidates - 1)[:max_candidates]
        candidates = candidates[top]
    cx, cy, w, h = out[0, candidates], out[1, candidates], out[2, candidates], out[3, candidates]
    # A broken model can put inf/NaN or 1e38 in its box columns: such a box is dropped below, without
    # numpy's overflow warnings on the way (they would flood the agent's log once per frame).
    with np.errstate(over="ignore", invalid="ignore"):
        boxes = np.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], axis=1).astype(np.float32)
        cand_scores = scores[candidates].astype(np.float32)
        cand_classes = class_ids[candidates].astype(np.int64)
        if info is not None:
            # Clip before NMS, so kept boxes stay apart by the threshold as delivered.
            boxes = info.to_original(boxes)
        # A box with no area (degenerate output, or clipped to nothing at the border) is not a
        # detection, and NMS cannot compare it: two identical empty boxes would both survive.
        solid = np.flatnonzero(
            np.isfinite(boxes).all(axis=1)
            & (boxes[:, 2] - boxes[:, 0] > 1e-3)
            & (boxes[:, 3] - boxes[:, 1] > 1e-3)
        )
    if solid.size < len(boxes):
        boxes, cand_scores, cand_classes = boxes[solid], cand_scores[solid], cand_classes[solid]
    keep = nms(boxes, cand_scores, iou_threshold, None if class_agnostic else cand_classes)
    keep = keep[:max_detections]
    return Detections(boxes=boxes[keep], scores=cand_scores[keep], class_ids=cand_classes[keep])


def decode_yolo_batch(
    outputs: npt.ArrayLike,
    infos: Sequence[LetterboxInfo | None],
    conf_threshold: float = 0.25,
    iou_threshold: float = 0.45,
    max_detections: int = 300,
    class_agnostic: bool = False,
    num_classes: int | None = None,
) -> list[Detections]:
    """:func:`decode_yolo` for each image of a ``[B, 4+nc, N]`` output."""
    batch = np.asarray(outputs, dtype=np.float32)
    if batch.ndim != 3 or batch.shape[0] != len(infos):
        raise ValueError(f"expected [{len(infos)}, 4+nc, N] outputs, got {batch.shape}")
    return [
        decode_yolo(
            batch[i],
            conf_threshold=conf_threshold,
            iou_threshold=iou_threshold,
            info=infos[i],
            max_detections=max_detections,
            class_agnostic=class_agnostic,
            num_classes=num_classes,
        )
        for i in range(batch.shape[0])
    ]


def parse_class_names(names: str) -> dict[int, str]:
    """Parse the ``names`` metadata of a YOLO ONNX file: ``"{0: 'car', 1: 'truck'}"``."""
    try:
        parsed = ast.literal_eval(names)
    except (ValueError, SyntaxError) as exc:
        raise ValueError(f"class names metadata is not a dict literal: {names[:80]!r}") from exc
    if isinstance(parsed, list | tuple):
        parsed = dict(enumerate(parsed))
    if not isinstance(parsed, dict) or not all(
        isinstance(k, int) and isinstance(v, str) for k, v in parsed.items()
    ):
        raise ValueError(f"class names metadata must map int to str: {names[:80]!r}")
    return {int(k): str(v) for k, v in parsed.items()}
