"""The real-time detector-call stream: stored detector changes → calls of mapped channels → controllers.

::

    ingest writer ──on_stored──► CallDispatcher ──► MQTT roadside/signals/v1/<signal>/calls (QoS 1)
                                   (channel maps)  └► CallFeed ─► SSE subscribers, bounded, DROP_OLDEST

The dispatcher runs on the ingest writer's thread after the changes are
stored durably, so a controller is never told of a call the event log lacks.
It never blocks on a subscriber (each has a bounded queue that drops its
oldest calls, counted) and never raises into ingest: a failed publish is
counted and logged. Channel maps come from the registry and are cached for
``map_ttl_s`` (an edit made through this hub's API is seen at once).

The latency a controller cares about, from the camera frame's capture to
the call leaving the hub, is observed per call into the Prometheus histogram
``roadside_signal_call_latency_seconds{signal}``; it includes the device's
clock offset, which NTP keeps to milliseconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Final, Protocol

from prometheus_client import CollectorRegistry, Counter, Histogram

from roadside.cloud.signals.channel_map import Channel, ChannelMap, ZoneKey
from roadside.cloud.storage.base import IngestBatch
from roadside.shared.schemas import DetectorChange, DetectorZoneKind
from roadside.shared.signals import SignalCall, detector_event_code, is_called
from roadside.shared.topics import signal_calls

log = logging.getLogger(__name__)

LATENCY_BUCKETS: Final = (0.01, 0.025, 0.05, 0.1, 0.15, 0.2, 0.3, 0.5, 1.0, 2.0, 5.0)
DEFAULT_QUEUE: Final = 1024
MAX_SUBSCRIBERS: Final = 50


class CallPublisher(Protocol):
    """The hub's MQTT connection (``IngestService.publish``)."""

    def publish(self, topic: str, payload: bytes, qos: int = 1) -> object: ...


MapSource = Callable[[], Sequence[tuple[str, ChannelMap]]]
"""Every signal's id and channel map (``registry.signals.list``)."""


class CallSubscription:
    """One SSE client's bounded queue of one signal's calls, read from one asyncio loop."""

    def __init__(self, feed: CallFeed, signal_id: str, maxsize: int, loop: asyncio.AbstractEventLoop) -> None:
        self.signal_id = signal_id
        self._feed = feed
        self._maxsize = maxsize
        self._loop = loop
        self._queue: deque[SignalCall] = deque()
        self._dropped = 0
        self._lock = threading.Lock()
        self._ready = asyncio.Event()
        self._closed = False

    def offer(self, calls: Sequence[SignalCall]) -> None:
        with self._lock:
            if self._closed:
                return
            for call in calls:
                if len(self._queue) >= self._maxsize:
                    self._queue.popleft()
                    self._dropped += 1
                self._queue.append(call)
        try:
            self._loop.call_soon_threadsafe(self._ready.set)
        except RuntimeError:  # the reader's loop is gone
            self.close()

    async def next_batch(self, timeout_s: float) -> tuple[list[SignalCall], int]:
        """Queued calls, oldest first, and how many were dropped since the last call."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._ready.wait(), timeout_s)
        with self._lock:
            batch = list(self._queue)
            self._queue.clear()
            dropped, self._dropped = self._dropped, 0
            self._ready.clear()
        return batch, dropped

    def close(self) -> None:
        with self._lock:
            self._closed = True
            self._queue.clear()
        self._feed.unsubscribe(self)


class FeedFullError(Exception):
    """The call feed already serves its maximum number of streams."""


class CallFeed:
    """In-process fan-out of calls to SSE subscribers, per signal; offering never blocks."""

    def __init__(self, queue_size: int = DEFAULT_QUEUE, max_subscribers: int = MAX_SUBSCRIBERS) -> None:
        self.queue_size = queue_size
        self.max_subscribers = max_subscribers
        self._subscriptions: list[CallSubscription] = []
        self._lock = threading.Lock()

    def subscribe(self, signal_id: str) -> CallSubscription:
        subscription = CallSubscription(self, signal_id, self.queue_size, asyncio.get_running_loop())
        with self._lock:
            if len(self._subscriptions) >= self.max_subscribers:
                raise FeedFullError(f"the call feed already serves {self.max_subscribers} streams")
            self._subscriptions.append(subscription)
        return subscription

    def subscribers(self) -> int:
        with self._lock:
            return len(self._subscriptions)

    def unsubscribe(self, subscription: CallSubscription) -> None:
        with self._lock:
            if subscription in self._subscriptions:
                self._subscriptions.remove(subscription)

    def offer(self, signal_id: str, calls: Sequence[SignalCall]) -> None:
        with self._lock:
            targets = [s for s in self._subscriptions if s.signal_id == signal_id]
        for subscription in targets:
            subscription.offer(calls)


class CallMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.latency = Histogram(
            "roadside_signal_call_latency_seconds",
            "From the camera frame's capture (device clock) to the detector call leaving the hub",
            ["signal"],
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.calls = Counter(
            "roadside_signal_calls_total", "Detector calls sent, by signal and state", ["signal", "state"],
            registry=registry,
        )  # fmt: skip
        self.publish_errors = Counter(
            "roadside_signal_call_publish_errors_total", "Calls the hub failed to publish on MQTT", ["signal"],
            registry=registry,
        )  # fmt: skip


def build_call(
    signal_id: str, channel: Channel, device: str, change: DetectorChange, sent: datetime, seq: int
) -> SignalCall:
    """The call one change of a mapped zone makes (pure)."""
    kind: DetectorZoneKind = "pedestrian" if channel.kind == "pedestrian" else change.zone_kind
    return SignalCall(
        signal=signal_id,
        channel=channel.channel,
        phase=channel.phase,
        state=change.state,
        called=is_called(change.state),
        event_code=detector_event_code(kind, change.state, change.reason),
        zone_kind=kind,
        reason=change.reason,
        device=device,
        stream=change.stream,
        zone=change.zone,
        captured_at=change.ts,
        hub_sent_at=sent,
        seq=seq,
    )


def silent_dispatcher(registry: SignalMaps, metrics_registry: CollectorRegistry) -> CallDispatcher:
    """A dispatcher that publishes nowhere but to its SSE feed (an API built without the hub)."""
    return CallDispatcher(lambda: maps_of(registry), None, CallFeed(), CallMetrics(metrics_registry))


class SignalMaps(Protocol):
    """The registry's signals (``Registry``), as far as the dispatcher reads them."""

    @property
    def signals(self) -> _SignalList: ...


class _SignalList(Protocol):
    def list(self) -> Sequence[_SignalRecord]: ...


class _SignalRecord(Protocol):
    @property
    def signal_id(self) -> str: ...

    @property
    def channel_map(self) -> ChannelMap: ...


def maps_of(registry: SignalMaps) -> list[tuple[str, ChannelMap]]:
    """Every signal's id and channel map, from the registry."""
    return [(r.signal_id, r.channel_map) for r in registry.signals.list()]


class CallDispatcher:
    """Turns stored detector changes into calls of every signal whose map names the zone."""

    def __init__(
        self,
        maps: MapSource,
        publisher: CallPublisher | None,
        feed: CallFeed,
        metrics: CallMetrics,
        *,
        map_ttl_s: float = 2.0,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self._maps = maps
        self._publisher = publisher
        self.feed = feed
        self.metrics = metrics
        self._ttl_s = map_ttl_s
        self._clock = clock
        self._index: dict[ZoneKey, list[tuple[str, Channel]]] = {}
        self._loaded_at: float | None = None
        self._seq: dict[str, int] = {}
        self._lock = threading.Lock()

    def invalidate(self) -> None:
        """Reload the channel maps before the next dispatch (a map was just changed here)."""
        with self._lock:
            self._loaded_at = None

    def _routes(self) -> dict[ZoneKey, list[tuple[str, Channel]]]:
        with self._lock:
            now = time.monotonic()
            if self._loaded_at is None or now - self._loaded_at >= self._ttl_s:
                index: dict[ZoneKey, list[tuple[str, Channel]]] = {}
                for signal_id, channel_map in self._maps():
                    for zone, channel in channel_map.by_zone().items():
                        index.setdefault(zone, []).append((signal_id, channel))
                self._index, self._loaded_at = index, now
            return self._index

    def dispatch(self, batches: Sequence[IngestBatch]) -> int:
        """Send the calls of these stored batches; how many calls were sent."""
        if not any(b.detector for b in batches):
            return 0
        routes = self._routes()
        by_signal: dict[str, list[SignalCall]] = {}
        for batch in batches:
            device = batch.origin.device_id
            for change in batch.detector:
                for signal_id, channel in routes.get(ZoneKey(device, change.stream, change.zone), ()):
                    seq = self._seq.get(signal_id, 0)
                    self._seq[signal_id] = seq + 1
                    call = build_call(signal_id, channel, device, change, self._clock(), seq)
                    by_signal.setdefault(signal_id, []).append(call)
        sent = 0
        for signal_id, calls in by_signal.items():
            self.feed.offer(signal_id, calls)
            for call in calls:
                self._publish(call)
                self.metrics.calls.labels(signal_id, call.state).inc()
                latency = (call.hub_sent_at - call.captured_at).total_seconds()
                self.metrics.latency.labels(signal_id).observe(max(latency, 0.0))
                sent += 1
        return sent

    def _publish(self, call: SignalCall) -> None:
        if self._publisher is None:
            return
        try:
            self._publisher.publish(
                signal_calls(call.signal), call.model_dump_json(by_alias=True).encode(), qos=1
            )
        except Exception:  # the broker link is the ingest service's to mend; the log has the call
            log.exception("could not publish a call of signal %s channel %d", call.signal, call.channel)
            self.metrics.publish_errors.labels(call.signal).inc()
