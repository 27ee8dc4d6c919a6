"""Bounded queues with a named policy for what happens when a stage falls behind.

A queue is bounded in items and, given ``max_bytes`` and a ``size`` of each
item, in bytes too: eight queued frames are 7 MB at 640x480 and 50 MB at
1080p, so a count alone does not bound the memory a stage may hold. Whichever
bound is reached first applies. One item heavier than ``max_bytes`` on its own
is still taken into an empty queue: the stream goes on, and the queue holds
that one item.
"""

from __future__ import annotations

import enum
import queue
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Generic, TypeVar

T = TypeVar("T")


class Overflow(enum.Enum):
    DROP_OLDEST = "drop_oldest"  # live video: a fresh frame is worth more than a stale one
    BLOCK = "block"  # records that must not be lost: push back on the producer


class BoundedQueue(Generic[T]):
    """FIFO bounded in items (``maxsize``) and, with ``max_bytes``, in the ``size`` of what it holds.

    ``DROP_OLDEST``: a put into a full queue drops the oldest items until the new one fits,
    counted in ``dropped`` and ``dropped_bytes``. ``BLOCK``: the put waits for room
    (``queue.Full`` after ``timeout``).
    """

    def __init__(
        self,
        maxsize: int,
        overflow: Overflow,
        max_bytes: int | None = None,
        size: Callable[[T], int] | None = None,
    ) -> None:
        if maxsize < 1:
            raise ValueError(f"maxsize must be at least 1, got {maxsize}")
        if max_bytes is not None and (size is None or max_bytes < 1):
            raise ValueError("a byte bound needs max_bytes >= 1 and a size function")
        self.maxsize = maxsize
        self.max_bytes = max_bytes
        self.overflow = overflow
        self.dropped = 0
        self.dropped_bytes = 0
        self._size = size
        self._items: deque[tuple[T, int]] = deque()
        self._bytes = 0
        self._lock = threading.Lock()
        self._not_empty = threading.Condition(self._lock)
        self._not_full = threading.Condition(self._lock)

    def put(self, item: T, timeout: float | None = None) -> None:
        weight = self._size(item) if self._size is not None else 0
        with self._lock:
            if self.overflow is Overflow.BLOCK:
                if not self._not_full.wait_for(lambda: self._fits(weight), timeout):
                    raise queue.Full
            else:
                while not self._fits(weight):
                    _old, old_weight = self._items.popleft()
                    self._bytes -= old_weight
                    self.dropped += 1
                    self.dropped_bytes += old_weight
            self._items.append((item, weight))
            self._bytes += weight
            self._not_empty.notify()

    def _fits(self, weight: int) -> bool:
        if not self._items:
            return True
        if len(self._items) >= self.maxsize:
            return False
        return self.max_bytes is None or self._bytes + weight <= self.max_bytes

    def _take(self) -> T:
        item, weight = self._items.popleft()
        self._bytes -= weight
        self._not_full.notify()
        return item

    def get_batch(self, max_items: int, max_wait_s: float, first_timeout_s: float) -> list[T]:
        """Up to ``max_items``: wait ``first_timeout_s`` for one, then ``max_wait_s`` for more."""
        with self._lock:
            if not self._not_empty.wait_for(lambda: bool(self._items), first_timeout_s):
                return []
            items = [self._take()]
            deadline = time.monotonic() + max_wait_s
            while len(items) < max_items:
                if not self._items:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0 or not self._not_empty.wait_for(lambda: bool(self._items), remaining):
                        break
                items.append(self._take())
            return items

    def qsize(self) -> int:
        with self._lock:
            return len(self._items)

    @property
    def bytes(self) -> int:
        """The ``size`` of everything queued now."""
        with self._lock:
            return self._bytes
