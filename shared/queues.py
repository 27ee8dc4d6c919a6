"""Bounded queues with a named policy for what happens when a stage falls behind."""

from __future__ import annotations

import enum
import queue
import threading
import time
from typing import Generic, TypeVar

T = TypeVar("T")


class Overflow(enum.Enum):
    DROP_OLDEST = "drop_oldest"  # live video: a fresh frame is worth more than a stale one
    BLOCK = "block"  # records that must not be lost: push back on the producer


class BoundedQueue(Generic[T]):
    def __init__(self, maxsize: int, overflow: Overflow) -> None:
        self._queue: queue.Queue[T] = queue.Queue(maxsize)
        self.overflow = overflow
        self.dropped = 0
        self._lock = threading.Lock()

    def put(self, item: T, timeout: float | None = None) -> None:
        if self.overflow is Overflow.BLOCK:
            self._queue.put(item, timeout=timeout)
            return
        with self._lock:
            while True:
                try:
                    self._queue.put_nowait(item)
                    return
                except queue.Full:
                    try:
                        self._queue.get_nowait()
                        self.dropped += 1
                    except queue.Empty:
                        pass

    def get_batch(self, max_items: int, max_wait_s: float, first_timeout_s: float) -> list[T]:
        """Up to ``max_items``: wait ``first_timeout_s`` for one, then ``max_wait_s`` for more."""
        try:
            items = [self._queue.get(timeout=first_timeout_s)]
        except queue.Empty:
            return []
        deadline = time.monotonic() + max_wait_s
        while len(items) < max_items:
            remaining = deadline - time.monotonic()
            try:
                items.append(
                    self._queue.get(timeout=max(remaining, 0)) if remaining > 0 else self._queue.get_nowait()
                )
            except queue.Empty:
                break
        return items

    def qsize(self) -> int:
        return self._queue.qsize()
