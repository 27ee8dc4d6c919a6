"""Hard examples out of the agent: select on the pipeline thread, redact and encode on a worker.

The pipeline thread only asks the selector (microseconds) and, for the rare frame it
selects, hands the frame to a bounded queue. The ``samples`` worker redacts it with
:class:`roadside.edge.privacy.Redactor` (faces and plates blurred, masks filled) *before* it
is encoded, fits the JPEG under :data:`MAX_SAMPLE_JPEG_B64`, attaches the source's
ground truth where it has some, and puts the message in the outbox at
``Priority.SAMPLES``, the lowest: the outbox's budget drops samples before anything
else, and a sample is only put while the outbox is under ``_OUTBOX_SHARE`` full, so
a sample never pushes out a count or an event.

Fail closed: if the redactor cannot be built (its face model missing), nothing is sent;
each selected frame is counted as ``not_redacted`` and logged.
"""

from __future__ import annotations

import base64
import logging
import threading
import uuid
from collections import Counter, deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING

import cv2
import numpy as np
import numpy.typing as npt

from roadside.edge.outbox import Outbox, Priority
from roadside.edge.samples.selector import Decision, HardExampleSelector, SelectorPolicy
from roadside.edge.settings import SamplesConfig
from roadside.edge.sources import Frame
from roadside.shared.queues import Overflow
from roadside.shared.schemas import MAX_SAMPLE_JPEG_B64, HardExample, LabeledBox, SamplesMessage, encode
from roadside.vision.yolo import Detections

if TYPE_CHECKING:
    from roadside.edge.privacy.redact import Redactor

log = logging.getLogger(__name__)

_OUTBOX_SHARE = 0.5  # samples are put only while the outbox is less full than this
_MAX_MESSAGE_BYTES = 240 * 1024  # under the hub's and the broker's 256 KiB, with room for the envelope
_MIN_SIDE = 32  # never downscale a sample below this many pixels on its short side
_QUALITY_STEP = 10
_DOWNSCALE = 0.75
_MAX_BOXES = 300  # HardExample's limit on detections and labels


class SampleTooLargeError(ValueError):
    """No quality or size above the floor fits the cap (a pathological image)."""


@dataclass(frozen=True, slots=True)
class EncodedImage:
    jpeg: bytes
    b64: str
    width: int
    height: int
    scale_x: float  # encoded width / original width
    scale_y: float
    quality: int


def encode_capped(
    image: npt.NDArray[np.uint8], quality: int, floor: int, cap_b64: int = MAX_SAMPLE_JPEG_B64
) -> EncodedImage:
    """JPEG whose base64 fits ``cap_b64``: step the quality down to ``floor``; if even that is too
    big, downscale by a quarter and try the qualities again (a smaller image at a better quality)."""
    h, w = image.shape[:2]
    scale = 1.0
    current = image
    while True:
        for q in _qualities(quality, floor):
            ok, buffer = cv2.imencode(".jpg", current, [cv2.IMWRITE_JPEG_QUALITY, q])
            if not ok:
                raise SampleTooLargeError(f"OpenCV could not encode a {w}x{h} image as JPEG")
            if 4 * ((buffer.size + 2) // 3) <= cap_b64:  # base64 length, computed before encoding it
                jpeg = buffer.tobytes()
                ch, cw = current.shape[:2]
                return EncodedImage(jpeg, base64.b64encode(jpeg).decode(), cw, ch, cw / w, ch / h, q)
        scale *= _DOWNSCALE
        size = (round(w * scale), round(h * scale))
        if min(size) < _MIN_SIDE:
            raise SampleTooLargeError(f"a {w}x{h} image does not fit {cap_b64} base64 characters")
        current = cv2.resize(image, size, interpolation=cv2.INTER_AREA).astype(np.uint8, copy=False)


def _qualities(start: int, floor: int) -> list[int]:
    steps = list(range(start, floor, -_QUALITY_STEP))
    return [*steps, floor] if not steps or steps[-1] != floor else steps


Box = tuple[float, float, float, float]


def scaled_boxes(boxes: Sequence[tuple[str, Box, float | None]], image: EncodedImage) -> list[LabeledBox]:
    """Boxes in the encoded image's pixels, clipped to it; boxes left with no area are dropped."""
    out: list[LabeledBox] = []
    sx, sy, width, height = image.scale_x, image.scale_y, image.width, image.height
    for cls, (x1, y1, x2, y2), conf in boxes:
        a, b = min(max(x1 * sx, 0.0), width), min(max(y1 * sy, 0.0), height)
        c, d = min(max(x2 * sx, 0.0), width), min(max(y2 * sy, 0.0), height)
        if c - a > 0 and d - b > 0:
            out.append(LabeledBox(cls=cls, box=(a, b, c, d), conf=conf))
    return out


@dataclass(frozen=True, slots=True)
class _Job:
    frame: Frame
    found: Detections
    labels: tuple[str, ...]
    model_version: str
    decision: Decision


_STOP = object()


class SampleUploader:
    """The selector on the pipeline thread, redaction and encoding on the ``samples`` thread."""

    queue_policy = Overflow.DROP_OLDEST  # a fresher hard frame replaces the oldest waiting one

    def __init__(
        self,
        config: SamplesConfig,
        outbox: Outbox,
        redactor_factory: Callable[[], Redactor] | None = None,
    ) -> None:
        self.config = config
        self.outbox = outbox
        self.selector = HardExampleSelector(
            SelectorPolicy(
                budget_bytes_per_hour=config.budget_bytes_per_hour,
                min_interval_s=config.min_interval_s,
                confidence_band=config.confidence_band,
                rare_class_share=config.rare_class_share,
            )
        )
        self._redactor_factory = redactor_factory or (lambda: _load_redactor(config))
        self._lock = threading.Lock()  # the selector's bucket: decided here, settled by the worker
        self._jobs: deque[object] = deque()
        self._queued_bytes = 0  # image bytes of the jobs waiting: the queue's second bound
        self._ready = threading.Condition()
        self.stats: Counter[str] = Counter()  # selected, sent, dropped_queue, not_redacted, ...
        self._thread: threading.Thread | None = None
        # Set by the worker once it has tried to build the redactor (None: it could not).
        self.redactor: Redactor | None = None
        self.redactor_tried = threading.Event()

    # -- pipeline thread -------------------------------------------------------------

    def offer(
        self,
        frame: Frame,
        found: Detections,
        labels: Sequence[str],
        model_version: str,
        shadow: Detections | None = None,
    ) -> Decision:
        """Decide on one frame; a selected one is queued for the worker, never processed here."""
        with self._lock:
            decision = self.selector.decide(frame.stream, frame.ts, found, labels, shadow)
        if not decision.selected:
            return decision
        self.stats["selected"] += 1
        job = _Job(frame, found, tuple(labels), model_version, decision)
        size = frame.image.nbytes
        with self._ready:
            # Bounded in frames and in bytes: the oldest waiting frame makes room (counted).
            while self._jobs and (
                len(self._jobs) >= self.config.queue or self._queued_bytes + size > self.config.queue_bytes
            ):
                oldest = self._jobs[0]
                if not isinstance(oldest, _Job):
                    break  # the stop sentinel: never dropped
                self._jobs.popleft()
                self._queued_bytes -= oldest.frame.image.nbytes
                self._give_back(oldest, "dropped_queue")
            self._jobs.append(job)
            self._queued_bytes += size
            self._ready.notify()
        return decision

    @property
    def queued_bytes(self) -> int:
        """Image bytes waiting for the worker."""
        return self._queued_bytes

    # -- lifecycle -------------------------------------------------------------------

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="samples", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        """Finish the queued samples, then end the worker."""
        with self._ready:
            self._jobs.append(_STOP)
            self._ready.notify()
        if self._thread is not None:
            self._thread.join(timeout)

    # -- the samples thread ----------------------------------------------------------

    def _run(self) -> None:
        redactor = self.redactor = self._build_redactor()
        self.redactor_tried.set()
        while True:
            with self._ready:
                while not self._jobs:
                    self._ready.wait()
                job = self._jobs.popleft()
                if isinstance(job, _Job):
                    self._queued_bytes -= job.frame.image.nbytes
            if job is _STOP:
                return
            assert isinstance(job, _Job)
            try:
                self._send(job, redactor)
            except Exception:  # one bad frame must not end the worker; the log says why
                log.exception("hard example from stream %s failed", job.frame.stream)
                self._give_back(job, "failed")

    def _build_redactor(self) -> Redactor | None:
        # Here, on the worker, at its start: the face and plate models are loaded only by an
        # agent whose samples (images) may leave the device, never at import or by default.
        try:
            return self._redactor_factory()
        except Exception as exc:  # fail closed: any reason the redactor cannot run means no images
            log.error("hard examples: redaction unavailable, no image will be sent: %s", exc)
            return None

    def _send(self, job: _Job, redactor: Redactor | None) -> None:
        if redactor is None:
            log.warning("hard example from stream %s not sent: redaction unavailable", job.frame.stream)
            self._give_back(job, "not_redacted")
            return
        redacted, _report = redactor.redact(job.frame.image)
        try:
            image = encode_capped(redacted, self.config.jpeg_quality, self.config.jpeg_quality_floor)
        except SampleTooLargeError as exc:
            log.warning("hard example from stream %s not sent: %s", job.frame.stream, exc)
            self._give_back(job, "too_large")
            return
        payload = encode(SamplesMessage(records=[self._example(job, image)]))
        if len(payload) > _MAX_MESSAGE_BYTES:
            log.warning(
                "hard example from stream %s not sent: %d-byte message", job.frame.stream, len(payload)
            )
            self._give_back(job, "too_large")
            return
        if self.outbox.is_congested(_OUTBOX_SHARE):
            self._give_back(job, "outbox_busy")  # counts and events come first
            return
        self.outbox.put("samples", payload, Priority.SAMPLES)
        with self._lock:
            self.selector.settle(job.decision.reserved_bytes, len(payload))
        self.stats["sent"] += 1

    def _example(self, job: _Job, image: EncodedImage) -> HardExample:
        found, names = job.found, job.labels
        detections: list[tuple[str, Box, float | None]] = [
            (
                names[int(c)] if 0 <= int(c) < len(names) else f"class{int(c)}",
                (float(b[0]), float(b[1]), float(b[2]), float(b[3])),
                min(1.0, max(0.0, float(s))),
            )
            for b, s, c in zip(found.boxes, found.scores, found.class_ids, strict=True)
        ]
        truth = job.frame.truth
        return HardExample(
            sample_id=uuid.uuid4(),
            ts=datetime.fromtimestamp(job.frame.ts, UTC),
            stream=job.frame.stream,
            model_version=job.model_version,
            reasons=list(job.decision.reasons),
            score=job.decision.score,
            width=image.width,
            height=image.height,
            image_jpeg_b64=image.b64,
            redacted=True,
            detections=scaled_boxes(detections, image)[:_MAX_BOXES],
            labels=None
            if truth is None
            else scaled_boxes([(c, b, None) for c, b in truth], image)[:_MAX_BOXES],
        )

    def _give_back(self, job: _Job, why: str) -> None:
        self.stats[why] += 1
        with self._lock:
            self.selector.refund(job.decision.reserved_bytes)


def _load_redactor(config: SamplesConfig) -> Redactor:
    """The redactor and its models, imported on first use (they cost ``onnx`` and a session)."""
    from roadside.edge.privacy.redact import Redactor

    return Redactor(config.privacy)
