"""Queues bounded in bytes as well as items (ADR 0023): frames, hard examples, the uplink's window."""

from __future__ import annotations

import queue
import threading
from pathlib import Path

import numpy as np
import pytest

from roadside.edge.assembly import frame_bytes
from roadside.edge.health import FrameLedger
from roadside.edge.outbox import Outbox, Priority
from roadside.edge.settings import load_agent_settings
from roadside.edge.sources import Frame
from roadside.shared.queues import BoundedQueue, Overflow

pytestmark = pytest.mark.timeout(30)

KB = 1024


def frame(stream: str, i: int, kb: int = 100) -> Frame:
    """A frame of ``kb`` KiB of pixels."""
    return Frame(stream, i, float(i), np.zeros((kb, KB // 4, 4), dtype=np.uint8)[..., :3].copy())


def test_a_frame_weighs_its_pixels() -> None:
    assert frame_bytes(frame("a", 0, kb=100)) == 100 * 768


def test_drop_oldest_drops_the_oldest_until_the_new_frame_fits_in_bytes_and_counts_them() -> None:
    q: BoundedQueue[Frame] = BoundedQueue(100, Overflow.DROP_OLDEST, max_bytes=1000 * KB, size=frame_bytes)
    for i in range(5):
        q.put(frame("a", i, kb=256))  # 192 KiB each: five fit in 1000 KiB
    assert (q.qsize(), q.dropped) == (5, 0)
    q.put(frame("b", 0, kb=1024))  # 768 KiB: 960 + 768 > 1000, so the four oldest go
    assert q.dropped == 4
    assert q.dropped_bytes == 4 * 256 * 768
    assert q.bytes == 256 * 768 + 1024 * 768
    taken = q.get_batch(10, 0, 0.1)
    assert [(f.stream, f.index) for f in taken] == [("a", 4), ("b", 0)]
    assert q.bytes == 0


def test_the_item_bound_still_applies_under_the_byte_bound() -> None:
    q: BoundedQueue[Frame] = BoundedQueue(2, Overflow.DROP_OLDEST, max_bytes=10_000 * KB, size=frame_bytes)
    for i in range(4):
        q.put(frame("a", i, kb=1))
    assert (q.qsize(), q.dropped) == (2, 2)
    assert [f.index for f in q.get_batch(5, 0, 0.1)] == [2, 3]


def test_one_frame_heavier_than_the_bound_still_passes_alone() -> None:
    q: BoundedQueue[Frame] = BoundedQueue(8, Overflow.DROP_OLDEST, max_bytes=64 * KB, size=frame_bytes)
    q.put(frame("a", 0, kb=10))
    q.put(frame("a", 1, kb=200))  # 150 KiB: the queue empties for it, the stream goes on
    assert (q.qsize(), q.dropped) == (1, 1)
    assert q.get_batch(1, 0, 0.1)[0].index == 1


def test_a_blocking_queue_waits_for_bytes_and_gives_up_after_its_timeout() -> None:
    q: BoundedQueue[Frame] = BoundedQueue(8, Overflow.BLOCK, max_bytes=200 * KB, size=frame_bytes)
    q.put(frame("a", 0, kb=200))  # 150 KiB
    with pytest.raises(queue.Full):
        q.put(frame("a", 1, kb=200), timeout=0.05)
    waiting = threading.Thread(target=q.put, args=(frame("a", 2, kb=200),), daemon=True)
    waiting.start()
    waiting.join(0.1)
    assert waiting.is_alive()
    assert [f.index for f in q.get_batch(1, 0, 0.1)] == [0]
    waiting.join(5)
    assert not waiting.is_alive()
    assert q.dropped == 0
    assert [f.index for f in q.get_batch(2, 0, 0.1)] == [2]


def test_a_byte_bound_needs_a_size_function() -> None:
    with pytest.raises(ValueError, match="size"):
        BoundedQueue(4, Overflow.DROP_OLDEST, max_bytes=1024)


def test_the_ledger_books_each_frame_dropped_for_bytes_to_its_stream() -> None:
    q: BoundedQueue[Frame] = BoundedQueue(100, Overflow.DROP_OLDEST, max_bytes=400 * KB, size=frame_bytes)
    ledger = FrameLedger(q)
    ledger.put(frame("a", 0, kb=200))
    ledger.put(frame("b", 0, kb=200))
    ledger.put(frame("c", 0, kb=400))  # 300 KiB: a0 and b0 go
    assert (ledger.dropped("a"), ledger.dropped("b"), ledger.dropped("c")) == (1, 1, 0)
    assert q.dropped == 2


def test_the_agent_frame_queue_takes_its_byte_bound_from_the_settings(tmp_path: Path) -> None:
    settings = load_agent_settings(None, bundle=tmp_path / "b.json", frame_queue_bytes=2 * 1024 * 1024)
    assert settings.frame_queue_bytes == 2 * 1024 * 1024
    with pytest.raises(Exception, match="frame_queue_bytes"):
        load_agent_settings(None, bundle=tmp_path / "b.json", frame_queue_bytes=10)


# The uplink's in-flight window reads the outbox up to a byte budget --------------------------


def test_pending_stops_before_the_message_that_would_pass_the_byte_budget(tmp_path: Path) -> None:
    outbox = Outbox(tmp_path / "o.db")
    kinds = [
        ("counts", 10, Priority.COUNTS),
        ("samples", 200, Priority.SAMPLES),
        ("events", 10, Priority.EVENTS),
    ]
    for kind, kb, priority in kinds:
        outbox.put(kind, b"x" * (kb * KB), priority)
    first = outbox.pending(64, max_bytes=100 * KB)
    assert [m.kind for m in first] == ["counts"]  # the 200 KiB sample would pass 100 KiB: wait
    window = outbox.pending(64, exclude=[first[0].seq], max_bytes=90 * KB)
    assert [m.kind for m in window] == ["samples"]  # the head always goes: nothing stalls the queue
    everything = outbox.pending(64, max_bytes=1024 * KB)
    assert [m.kind for m in everything] == ["counts", "samples", "events"]
    assert outbox.dropped == 0  # a byte-bounded window drops nothing: the outbox keeps it all
    outbox.close()


# Hard examples waiting for redaction ---------------------------------------------------------


def test_selected_frames_waiting_for_redaction_are_bounded_in_bytes_oldest_dropped(tmp_path: Path) -> None:
    from roadside.edge.samples.uploader import SampleUploader
    from roadside.edge.settings import SamplesConfig
    from roadside.vision.yolo import Detections

    unsure = Detections(
        boxes=np.array([[10.0, 10.0, 60.0, 60.0]], np.float32),
        scores=np.array([0.5], np.float32),
        class_ids=np.array([0], np.int64),
    )
    config = SamplesConfig.model_validate(
        {
            "enabled": True,
            "min_interval_s": 0.0,
            "queue": 64,
            "queue_bytes": 2 * 1024 * 1024,
            "privacy": {"images_leave_device": True},
        }
    )
    outbox = Outbox(tmp_path / "o.db")
    uploader = SampleUploader(config, outbox)  # not started: every selected frame waits
    for i in range(4):
        image = np.full((480, 640, 3), 100, np.uint8)  # 900 KiB: two fit in 2 MiB
        assert uploader.offer(Frame("cam0", i, 1_700_000_000.0 + i, image), unsure, ["car"], "m").selected
    assert uploader.stats["selected"] == 4
    assert uploader.stats["dropped_queue"] == 2
    assert uploader.queued_bytes == 2 * 480 * 640 * 3
    assert uploader.redactor is None  # and the models behind it were never loaded
    outbox.close()
