"""Dynamic batching across streams: up to ``max_batch`` frames, waiting at most ``max_wait``.

One detector serves every camera of a pole. Frames from all streams meet in
one bounded queue; the batcher takes what is there, waits at most
``max_wait`` after the first frame for more (a GPU runs a batch of 4 in
about the time of one), and hands the pipeline one batch at a time,
oldest frames first, so each stream's frames stay in order.

With a ``prepare`` step (the detector's letterbox) the batcher runs on its
own thread, ``batcher``: while the pipeline thread runs inference on batch
*k*, the batcher collects and pre-processes batch *k+1*, so the inference
thread never waits for pre-processing. It collects a batch only once the
previous one was taken, so at most one prepared batch waits: frames are at
most one inference period older than without it, and live video keeps the
frame queue's ``DROP_OLDEST`` policy for everything not yet collected.

Shutdown: :meth:`DynamicBatcher.next_batch` returns an empty list only after
the batcher found the queue empty with nothing in hand, so a pipeline that
stops on an empty batch loses no frame the batcher had already taken.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from types import TracebackType
from typing import Generic, Protocol, Self, TypeVar

from roadside.shared.errors import ConfigError

__all__ = ["BatchPolicy", "BatchSource", "BatchStats", "DynamicBatcher"]

log = logging.getLogger(__name__)

T = TypeVar("T")

_CPU = "CPUExecutionProvider"
_GPU = frozenset(
    {
        "TensorrtExecutionProvider",
        "CUDAExecutionProvider",
        "ROCMExecutionProvider",
        "MIGraphXExecutionProvider",
    }
)
# How long the batcher thread blocks on an empty queue before it checks for stop.
_POLL_S = 0.05


class BatchSource(Protocol[T]):
    """Where frames wait: :class:`roadside.shared.queues.BoundedQueue` is one."""

    def get_batch(self, max_items: int, max_wait_s: float, first_timeout_s: float) -> list[T]:
        """Up to ``max_items``: wait ``first_timeout_s`` for one, then ``max_wait_s`` for more."""
        ...


@dataclass(frozen=True, slots=True)
class BatchPolicy:
    """How big a batch may get and how long the first frame of it may wait for company."""

    max_batch: int
    max_wait_s: float
    prefetch: bool = False  # pre-process the next batch on the batcher thread during inference

    def __post_init__(self) -> None:
        if self.max_batch < 1:
            raise ConfigError(f"model.max_batch must be at least 1, got {self.max_batch}")
        if not 0.0 <= self.max_wait_s <= 1.0:
            raise ConfigError(f"model.max_wait_ms must be between 0 and 1000, got {self.max_wait_s * 1000:g}")

    @classmethod
    def for_streams(
        cls, streams: int, max_batch: int | None, max_wait_ms: float, provider: str | None = None
    ) -> BatchPolicy:
        """The policy for ``streams`` cameras when ``max_batch`` is not configured.

        On a GPU, one frame per stream: a batch of 4 costs about what one
        does, and more would only batch a stream with itself. On the CPU
        execution provider, 1: onnxruntime already spreads one image over
        its threads, so a batch buys no throughput, and at 640x640 a batch
        of 4 ran 5% slower per frame than single frames (its activations
        fall out of cache) while adding up to ``max_wait`` of latency.

        Pre-processing ahead pays on a GPU, whose inference leaves the CPU
        idle. On the CPU provider it competes with inference for the same
        cores: on the 2-vCPU build box it cost 10% of throughput.
        """
        if max_batch is None:
            max_batch = 1 if provider == _CPU else max(1, streams)
        return cls(max_batch=max_batch, max_wait_s=max_wait_ms / 1000.0, prefetch=provider in _GPU)


@dataclass
class BatchStats:
    """Counters for health reports and benchmarks; a snapshot, not live."""

    batches: int = 0
    items: int = 0
    full_batches: int = 0  # batches that reached max_batch
    prepare_s: float = 0.0  # time spent in ``prepare`` on the batcher thread
    sizes: dict[int, int] = field(default_factory=dict)

    @property
    def mean_size(self) -> float:
        return self.items / self.batches if self.batches else 0.0

    def record(self, size: int, max_batch: int, prepare_s: float) -> None:
        self.batches += 1
        self.items += size
        self.full_batches += size >= max_batch
        self.prepare_s += prepare_s
        self.sizes[size] = self.sizes.get(size, 0) + 1

    def copy(self) -> BatchStats:
        return BatchStats(self.batches, self.items, self.full_batches, self.prepare_s, dict(self.sizes))


class DynamicBatcher(Generic[T]):
    """Batches from a :class:`BatchSource` by :class:`BatchPolicy`, optionally prepared ahead.

    Without ``prepare`` it is a plain call on the consumer's thread. With
    ``prepare`` (called with each batch on the batcher thread; its result
    is ignored, it is expected to stash what it computes, and an exception
    in it is logged and left for the consumer to meet again) it must be
    started, as a context manager or with :meth:`start` / :meth:`stop`.
    """

    def __init__(
        self,
        source: BatchSource[T],
        policy: BatchPolicy,
        prepare: Callable[[list[T]], object] | None = None,
        name: str = "batcher",
    ) -> None:
        self.source = source
        self.policy = policy
        self._prepare = prepare
        self._name = name
        self._cond = threading.Condition()
        self._ready: list[T] | None = None  # the one prepared batch waiting for the consumer
        self._empty_polls = 0  # completed polls that found the queue empty
        self._stopping = False
        self._thread: threading.Thread | None = None
        self._stats = BatchStats()

    # Lifecycle -------------------------------------------------------------

    def start(self) -> None:
        """Start the batcher thread (a no-op without ``prepare``)."""
        if self._prepare is None or self._thread is not None:
            return
        self._thread = threading.Thread(target=self._run, name=self._name, daemon=True)
        self._thread.start()

    def stop(self, timeout_s: float = 5.0) -> None:
        """Stop the thread; a batch still waiting for the consumer is dropped and counted in the log."""
        with self._cond:
            self._stopping = True
            left = len(self._ready) if self._ready else 0
            self._ready = None
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout_s)
            self._thread = None
        if left:
            log.warning("batcher stopped with %d prepared frame(s) not taken", left)

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    # Consumer side ---------------------------------------------------------

    def next_batch(self, timeout_s: float) -> list[T]:
        """The next batch, oldest frames first; ``[]`` if the queue stayed empty for ``timeout_s``."""
        if self._prepare is None:
            batch = self.source.get_batch(self.policy.max_batch, self.policy.max_wait_s, timeout_s)
            if batch:
                with self._cond:
                    self._stats.record(len(batch), self.policy.max_batch, 0.0)
            return batch
        if self._stopping:
            return []
        if self._thread is None:
            raise RuntimeError("DynamicBatcher with a prepare step must be started first")
        deadline = time.monotonic() + timeout_s
        with self._cond:
            polls_at_start = self._empty_polls

            def settled() -> bool:
                # Empty only once a poll that ended after we began found nothing: every frame
                # queued before then is in a batch we are about to get, not in the batcher's hands.
                timed_out = time.monotonic() >= deadline and self._empty_polls > polls_at_start
                return self._ready is not None or timed_out or self._stopping

            while not settled():
                self._cond.wait(max(deadline - time.monotonic(), 0.0) or _POLL_S)
            ready, self._ready = self._ready, None
            self._cond.notify_all()
        return ready or []

    def stats(self) -> BatchStats:
        """A snapshot of the counters."""
        with self._cond:
            return self._stats.copy()

    # Batcher thread ----------------------------------------------------------

    def _run(self) -> None:
        assert self._prepare is not None
        while True:
            with self._cond:
                # Collect only once the previous batch was taken: fresher frames, one batch of lead.
                while self._ready is not None and not self._stopping:
                    self._cond.wait()
                if self._stopping:
                    return
            batch = self.source.get_batch(self.policy.max_batch, self.policy.max_wait_s, _POLL_S)
            if not batch:
                with self._cond:
                    self._empty_polls += 1
                    self._cond.notify_all()
                continue
            started = time.perf_counter()
            try:
                self._prepare(batch)
            except Exception:  # the consumer prepares again inline and meets the error where it belongs
                log.debug("prepare failed on the batcher thread; the consumer will retry", exc_info=True)
            elapsed = time.perf_counter() - started
            with self._cond:
                self._stats.record(len(batch), self.policy.max_batch, elapsed)
                if self._stopping:
                    return
                self._ready = batch
                self._cond.notify_all()
