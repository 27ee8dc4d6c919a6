"""The live feed: accepted detection events fanned out, in process, to whoever listens now.

::

    ingest writer ──publish()──► LiveFeed ─┬─► Subscription (SSE client)   bounded, DROP_OLDEST
                                           ├─► Subscription (SSE client)   bounded, DROP_OLDEST
                                           └─► sinks (the webhook dispatcher's own bounded queue)

The ingest side calls :meth:`LiveFeed.publish` after the store has the events
durably, so a listener never hears of an event the API cannot return. Publish
never blocks and never raises: each subscriber has a bounded queue, and when a
slow client lets it fill up the **oldest** queued events are dropped (a live
view wants what is happening now) and counted, so the client can be told how
many it missed. Sinks must not block either; a failing sink is logged and
skipped.

Subscribers are consumed from an asyncio loop (the API's); publish may be
called from any thread, and wakes a subscriber's loop thread-safely.

A hub sees only the events it ingested itself: with several hubs on shared
subscriptions, a client connected to one hub sees that hub's share.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from roadside.shared.queues import Overflow
from roadside.shared.schemas import DetectionEvent

log = logging.getLogger(__name__)

DEFAULT_QUEUE_SIZE: Final = 256
DEFAULT_MAX_SUBSCRIBERS: Final = 100
# What a subscriber's queue does when full: the newest event pushes out the oldest.
SUBSCRIBER_OVERFLOW: Final = Overflow.DROP_OLDEST


@dataclass(frozen=True, slots=True)
class LiveEvent:
    """An accepted event with where it came from (from the authenticated envelope)."""

    device_id: str
    site: str
    event: DetectionEvent

    def to_json(self) -> dict[str, Any]:
        """The API's ``Event`` shape: the event's fields plus ``device`` and ``site``."""
        return {"device": self.device_id, "site": self.site, **self.event.model_dump(mode="json")}


@dataclass(frozen=True, slots=True)
class EventFilter:
    """Which events a listener wants; ``None`` or empty means any."""

    device_id: str | None = None
    site: str | None = None
    types: frozenset[str] = field(default_factory=frozenset)

    def matches(self, live: LiveEvent) -> bool:
        return (
            (self.device_id is None or live.device_id == self.device_id)
            and (self.site is None or live.site == self.site)
            and (not self.types or live.event.type in self.types)
        )


class FeedFullError(Exception):
    """The feed already has its maximum number of subscribers."""


Sink = Callable[[Sequence[LiveEvent]], None]


class Subscription:
    """One listener's bounded queue (:data:`SUBSCRIBER_OVERFLOW`), read from one asyncio loop.

    Use as a context manager, or call :meth:`close`, so the feed stops filling it.
    """

    def __init__(
        self, feed: LiveFeed, event_filter: EventFilter, maxsize: int, loop: asyncio.AbstractEventLoop
    ) -> None:
        self.filter = event_filter
        self.maxsize = maxsize
        self.dropped_total = 0
        self._feed = feed
        self._loop = loop
        self._queue: deque[LiveEvent] = deque()
        self._dropped = 0  # since the reader last looked
        self._lock = threading.Lock()
        self._ready = asyncio.Event()
        self._wake_pending = False
        self._closed = False

    def offer(self, events: Sequence[LiveEvent]) -> None:
        """Queue the matching events; never blocks (called by :meth:`LiveFeed.publish`)."""
        wanted = [e for e in events if self.filter.matches(e)]
        if not wanted:
            return
        with self._lock:
            if self._closed:
                return
            for live in wanted:
                if len(self._queue) >= self.maxsize:
                    self._queue.popleft()
                    self._dropped += 1
                    self.dropped_total += 1
                self._queue.append(live)
            wake = not self._wake_pending
            self._wake_pending = True
        if wake:
            try:
                self._loop.call_soon_threadsafe(self._ready.set)
            except RuntimeError:  # the reader's loop has closed: it is gone
                self.close()

    async def next_batch(self, timeout_s: float) -> tuple[list[LiveEvent], int]:
        """Everything queued, oldest first, and how many were dropped since the last call;
        waits up to ``timeout_s`` for something to arrive (an empty batch when nothing did)."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._ready.wait(), timeout_s)
        with self._lock:
            batch = list(self._queue)
            self._queue.clear()
            dropped, self._dropped = self._dropped, 0
            self._ready.clear()
            self._wake_pending = False
        return batch, dropped

    def close(self) -> None:
        with self._lock:
            self._closed = True
            self._queue.clear()
        self._feed.unsubscribe(self)

    def __enter__(self) -> Subscription:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()


class LiveFeed:
    """Fan-out of accepted events to subscribers and sinks. Thread-safe; publish never blocks.

    The hub creates one, hands it to :func:`roadside.cloud.api.app.create_app` (SSE) and
    adds the webhook dispatcher as a sink; the ingest writer calls :meth:`publish`.
    """

    def __init__(
        self, *, queue_size: int = DEFAULT_QUEUE_SIZE, max_subscribers: int = DEFAULT_MAX_SUBSCRIBERS
    ) -> None:
        if queue_size < 1 or max_subscribers < 0:
            raise ValueError("queue_size must be at least 1 and max_subscribers at least 0")
        self.queue_size = queue_size
        self.max_subscribers = max_subscribers
        self.published = 0
        self._subscriptions: list[Subscription] = []
        self._sinks: list[Sink] = []
        self._lock = threading.Lock()

    def publish(self, device_id: str, site: str, events: Sequence[DetectionEvent]) -> None:
        """Offer events the store has durably accepted to every subscriber and sink."""
        if not events:
            return
        live = [LiveEvent(device_id, site, e) for e in events]
        with self._lock:
            subscriptions = list(self._subscriptions)
            sinks = list(self._sinks)
            self.published += len(live)
        for subscription in subscriptions:
            subscription.offer(live)
        for sink in sinks:
            try:
                sink(live)
            except Exception:  # a sink's bug must never reach the ingest writer
                log.exception("live feed sink %r failed; events skipped for it", sink)

    def subscribe(self, event_filter: EventFilter, *, queue_size: int | None = None) -> Subscription:
        """A new subscription read from the running asyncio loop; :class:`FeedFullError` at the cap."""
        loop = asyncio.get_running_loop()
        subscription = Subscription(self, event_filter, queue_size or self.queue_size, loop)
        with self._lock:
            if len(self._subscriptions) >= self.max_subscribers:
                raise FeedFullError(f"the live feed already has {self.max_subscribers} subscribers")
            self._subscriptions.append(subscription)
        return subscription

    def unsubscribe(self, subscription: Subscription) -> None:
        with self._lock:
            if subscription in self._subscriptions:
                self._subscriptions.remove(subscription)

    def add_sink(self, sink: Sink) -> None:
        """Call ``sink`` with every published batch; it must return at once (queue, don't send)."""
        with self._lock:
            self._sinks.append(sink)

    @property
    def subscribers(self) -> int:
        with self._lock:
            return len(self._subscriptions)
