"""Dynamic batching across streams (edge.inference.batching)."""

from __future__ import annotations

import threading
import time

import pytest

from roadside.edge.inference.batching import BatchPolicy, DynamicBatcher
from roadside.shared.errors import ConfigError
from roadside.shared.queues import BoundedQueue, Overflow

pytestmark = pytest.mark.timeout(30)


def queue_of(items: list[int], size: int = 64) -> BoundedQueue[int]:
    q: BoundedQueue[int] = BoundedQueue(size, Overflow.BLOCK)
    for item in items:
        q.put(item)
    return q


def test_policy_defaults_to_one_frame_per_stream_on_a_gpu_and_single_frames_on_the_cpu() -> None:
    assert BatchPolicy.for_streams(4, None, 5.0, "TensorrtExecutionProvider") == BatchPolicy(4, 0.005, True)
    assert BatchPolicy.for_streams(4, None, 5.0, "CUDAExecutionProvider").max_batch == 4
    assert BatchPolicy.for_streams(4, None, 5.0, "CPUExecutionProvider").max_batch == 1
    assert BatchPolicy.for_streams(0, None, 0.0).max_batch == 1
    assert BatchPolicy.for_streams(4, 8, 2.0, "CPUExecutionProvider").max_batch == 8, "configured wins"


def test_pre_processing_ahead_only_where_inference_leaves_the_cpu_free() -> None:
    assert BatchPolicy.for_streams(4, None, 5.0, "TensorrtExecutionProvider").prefetch
    assert BatchPolicy.for_streams(4, None, 5.0, "CUDAExecutionProvider").prefetch
    assert not BatchPolicy.for_streams(4, None, 5.0, "CPUExecutionProvider").prefetch


@pytest.mark.parametrize(("max_batch", "max_wait_s"), [(0, 0.005), (4, -0.001), (4, 2.0)])
def test_policy_rejects_nonsense(max_batch: int, max_wait_s: float) -> None:
    with pytest.raises(ConfigError):
        BatchPolicy(max_batch, max_wait_s)


def test_inline_batches_are_capped_and_in_order() -> None:
    batcher = DynamicBatcher(queue_of(list(range(10))), BatchPolicy(4, 0.0))
    assert batcher.next_batch(0.1) == [0, 1, 2, 3]
    assert batcher.next_batch(0.1) == [4, 5, 6, 7]
    assert batcher.next_batch(0.1) == [8, 9]
    assert batcher.next_batch(0.01) == []
    stats = batcher.stats()
    assert (stats.batches, stats.items, stats.full_batches) == (3, 10, 2)
    assert stats.sizes == {4: 2, 2: 1}


def test_max_wait_lets_a_late_frame_join_the_batch() -> None:
    q = queue_of([1])
    threading.Timer(0.02, q.put, args=(2,)).start()
    batcher = DynamicBatcher(q, BatchPolicy(4, 0.2))
    started = time.monotonic()
    assert batcher.next_batch(1.0) == [1, 2]
    # Short of a full batch it waits out max_wait for company, and no longer.
    assert 0.15 < time.monotonic() - started < 0.9


def test_prepare_runs_on_the_batcher_thread_for_every_batch() -> None:
    seen: list[tuple[str, list[int]]] = []
    batcher = DynamicBatcher(
        queue_of(list(range(6))),
        BatchPolicy(3, 0.0),
        prepare=lambda b: seen.append((threading.current_thread().name, list(b))),
        name="batcher-test",
    )
    with batcher:
        assert batcher.next_batch(1.0) == [0, 1, 2]
        assert batcher.next_batch(1.0) == [3, 4, 5]
        assert batcher.next_batch(0.05) == []
    assert seen == [("batcher-test", [0, 1, 2]), ("batcher-test", [3, 4, 5])]


def test_prepared_ahead_nothing_is_lost_or_reordered_under_a_live_producer() -> None:
    q: BoundedQueue[int] = BoundedQueue(8, Overflow.BLOCK)
    total = 500

    def produce() -> None:
        for i in range(total):
            q.put(i)

    producer = threading.Thread(target=produce, name="producer")
    got: list[int] = []
    with DynamicBatcher(q, BatchPolicy(4, 0.001), prepare=lambda _b: None) as batcher:
        producer.start()
        while True:
            batch = batcher.next_batch(0.05)
            got.extend(batch)
            if not batch and not producer.is_alive():
                break
    assert got == list(range(total))


def test_an_empty_answer_waits_for_the_batch_the_batcher_is_still_preparing() -> None:
    # The pipeline stops on the first empty batch: it must not get one while frames are in hand.
    release = threading.Event()
    batcher = DynamicBatcher(queue_of([7, 8]), BatchPolicy(4, 0.0), prepare=lambda _b: release.wait(5))
    with batcher:
        threading.Timer(0.3, release.set).start()
        assert batcher.next_batch(0.01) == [7, 8]


def test_a_failing_prepare_still_delivers_the_batch() -> None:
    def boom(_batch: list[int]) -> None:
        raise ValueError("bad frame")

    with DynamicBatcher(queue_of([1, 2]), BatchPolicy(4, 0.0), prepare=boom) as batcher:
        assert batcher.next_batch(1.0) == [1, 2]


def test_a_batcher_with_prepare_must_be_started() -> None:
    batcher = DynamicBatcher(queue_of([1]), BatchPolicy(1, 0.0), prepare=lambda _b: None)
    with pytest.raises(RuntimeError, match="started"):
        batcher.next_batch(0.01)


def test_stop_joins_the_thread_and_answers_empty() -> None:
    batcher = DynamicBatcher(queue_of([1, 2, 3]), BatchPolicy(1, 0.0), prepare=lambda _b: None)
    batcher.start()
    assert batcher.next_batch(1.0) == [1]
    batcher.stop()
    assert not [t for t in threading.enumerate() if t.name == "batcher"]
    assert batcher.next_batch(0.01) == []
