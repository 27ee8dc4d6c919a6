"""The sample uploader against a real outbox and the real redactor: redacted first, lowest priority."""

from __future__ import annotations

import base64
import threading
from pathlib import Path

import cv2
import numpy as np
import pytest

from roadside.edge.outbox import Outbox, Priority
from roadside.edge.privacy import Redactor
from roadside.edge.samples.uploader import SampleUploader
from roadside.edge.settings import SamplesConfig
from roadside.edge.sources import Frame
from roadside.shared.schemas import SamplesMessage, decode_uplink
from roadside.vision.yolo import Detections

LABELS = ["car", "truck", "pedestrian", "cyclist"]
MASK = [(0.0, 0.0), (100.0, 0.0), (100.0, 80.0), (0.0, 80.0)]


def config(**kw: object) -> SamplesConfig:
    base: dict[str, object] = {
        "enabled": True,
        "min_interval_s": 0.0,
        "privacy": {"images_leave_device": True, "masks": [MASK]},
    }
    return SamplesConfig.model_validate({**base, **kw})


def frame(i: int = 0) -> Frame:
    image = np.full((240, 320, 3), 200, np.uint8)
    cv2.rectangle(image, (150, 100), (250, 160), (30, 30, 180), -1)
    truth = (("car", (150.0, 100.0, 250.0, 160.0)), ("cyclist", (10.0, 150.0, 40.0, 230.0)))
    return Frame("cam0", i, 1_700_000_000.0 + i, image, truth)


UNSURE = Detections(
    boxes=np.array([[148.0, 98.0, 252.0, 161.0]], np.float32),
    scores=np.array([0.5], np.float32),
    class_ids=np.array([0], np.int64),
)


def drain(outbox: Outbox) -> list[SamplesMessage]:
    out = []
    for item in outbox.pending(100):
        assert item.kind == "samples"
        message = decode_uplink("samples", item.payload)
        assert isinstance(message, SamplesMessage)
        out.append(message)
    return out


def test_a_selected_frame_goes_out_redacted_with_its_ground_truth(tmp_path: Path) -> None:
    outbox = Outbox(tmp_path / "outbox.db")
    uploader = SampleUploader(config(), outbox)
    uploader.start()
    try:
        decision = uploader.offer(frame(), UNSURE, LABELS, "det-1")
        assert decision.selected
    finally:
        uploader.stop()
    [message] = drain(outbox)
    example = message.records[0]
    assert example.redacted
    assert example.reasons == ["low_confidence"]
    assert example.model_version == "det-1"
    assert (example.width, example.height) == (320, 240)
    assert example.labels is not None
    assert [(b.cls, b.box) for b in example.labels] == [
        ("car", (150.0, 100.0, 250.0, 160.0)),
        ("cyclist", (10.0, 150.0, 40.0, 230.0)),
    ]
    assert example.detections[0].cls == "car"
    assert example.detections[0].conf == pytest.approx(0.5)
    image = cv2.imdecode(np.frombuffer(base64.b64decode(example.image_jpeg_b64), np.uint8), cv2.IMREAD_COLOR)
    assert image is not None
    assert image[5:75, 5:95].max() < 20  # the mask is filled before encoding
    assert image[120:140, 170:230].mean() > 40  # the rest is the picture
    assert uploader.stats["sent"] == 1


def test_no_redactor_means_no_image(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    outbox = Outbox(tmp_path / "outbox.db")

    def broken() -> Redactor:
        raise RuntimeError("CenterFace model missing")

    uploader = SampleUploader(config(), outbox, redactor_factory=broken)
    uploader.start()
    tokens_before = uploader.selector.tokens
    try:
        assert uploader.offer(frame(), UNSURE, LABELS, "det-1").selected
    finally:
        uploader.stop()
    assert outbox.backlog() == 0
    assert uploader.stats["not_redacted"] == 1
    assert uploader.selector.tokens == pytest.approx(tokens_before)  # the bytes were refunded
    assert "redaction unavailable" in caplog.text


def test_samples_are_the_first_to_go_and_never_push_out_counts(tmp_path: Path) -> None:
    outbox = Outbox(tmp_path / "outbox.db", max_bytes=1024 * 1024)
    uploader = SampleUploader(config(), outbox)
    uploader.start()
    try:
        assert uploader.offer(frame(0), UNSURE, LABELS, "det-1").selected
    finally:
        uploader.stop()
    assert outbox.backlog() == 1
    # Counts fill the outbox: the sample is dropped first, then the oldest count (1.1 MB > 1 MiB).
    for _ in range(11):
        outbox.put("counts", b"x" * 100_000, Priority.COUNTS)
    assert [item.kind for item in outbox.pending(100)] == ["counts"] * 10
    # And with the outbox that busy, a new sample is not even put.
    uploader = SampleUploader(config(), outbox)
    uploader.start()
    try:
        uploader.offer(frame(1), UNSURE, LABELS, "det-1")
    finally:
        uploader.stop()
    assert uploader.stats["outbox_busy"] == 1
    assert all(item.kind == "counts" for item in outbox.pending(100))


def test_the_queue_drops_the_oldest_selected_frame_and_refunds_it(tmp_path: Path) -> None:
    outbox = Outbox(tmp_path / "outbox.db")
    gate = threading.Event()

    def slow() -> Redactor:
        gate.wait(10)  # the worker is busy: frames wait in the queue
        return Redactor(config().privacy)

    uploader = SampleUploader(config(queue=2), outbox, redactor_factory=slow)
    uploader.start()
    try:
        for i in range(5):
            assert uploader.offer(frame(i), UNSURE, LABELS, "det-1").selected
        assert uploader.stats["dropped_queue"] == 3
    finally:
        gate.set()
        uploader.stop()
    sent = [m.records[0].ts.timestamp() for m in drain(outbox)]
    assert sent == [1_700_000_003.0, 1_700_000_004.0]  # the freshest two
