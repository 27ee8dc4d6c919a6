"""The hub side of the controller: detector calls in over SSE, phase events out over the API.

- :class:`HubCallStream` reads ``GET /v1/signals/<signal>/calls`` (Server-Sent
  Events, docs/signals.md) on its own named thread into a bounded queue that
  :meth:`~HubCallStream.poll` drains each tick. It reconnects with jittered
  backoff. The stream is **lost** (every phase called: fail safe) while the
  hub has not been heard for ``stale_after_s`` (the hub sends a heartbeat
  comment after 15 s of quiet by default: keep this above it), and for ``resync_s`` after a gap in ``seq`` or a
  ``: dropped N`` (a missed ``off`` only costs green time, a missed ``on``
  would strand someone). The latency from frame capture to the call's
  arrival here is kept for the benchmark.
- :class:`HubEventPoster` posts the controller's ATSPM events to
  ``POST /v1/signals/<signal>/events`` in batches of at most 1000 from a
  bounded queue (DROP_OLDEST, counted) on its own named thread, stamped with
  the wall clock of the tick they happened in.

Both take an ``httpx.Client`` factory, so tests hand them a client of their own.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

import httpx

from roadside.shared.backoff import Backoff
from roadside.shared.errors import SchemaError
from roadside.shared.signals import decode_call
from roadside.signalcontrol.calls import DetectorInput
from roadside.signalcontrol.core import PhaseEvent

log = logging.getLogger(__name__)

MAX_POST: Final = 1000  # the API's limit per request
CALL_QUEUE: Final = 4096
EVENT_QUEUE: Final = 50_000
LATENCY_SAMPLES: Final = 100_000

ClientFactory = Callable[[], httpx.Client]


def hub_clients(hub_url: str, token: str, ca_file: Path | None = None) -> ClientFactory:
    """A factory of API clients for the hub at ``hub_url`` with ``token`` (a CA bundle, or the system's)."""

    def client() -> httpx.Client:
        verify: Any = str(ca_file) if ca_file else True
        return httpx.Client(
            base_url=hub_url, headers={"Authorization": f"Bearer {token}"}, verify=verify, timeout=10.0
        )

    return client


class HubCallStream:
    """One signal's detector calls from the hub's SSE stream (a :class:`CallSource`)."""

    def __init__(
        self,
        client_factory: ClientFactory,
        signal: str,
        *,
        stale_after_s: float = 20.0,
        resync_s: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self.signal = signal
        self._factory = client_factory
        self._stale_after_s = stale_after_s
        self._resync_s = resync_s
        self._clock = clock
        self._wall = wall
        self._queue: deque[DetectorInput] = deque()
        self._lock = threading.Lock()
        self._heard: float | None = None
        self._distrust_until = 0.0
        self._last_seq: int | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"signal-calls-{signal}", daemon=True)
        self.latencies_ms: deque[float] = deque(maxlen=LATENCY_SAMPLES)  # frame capture → here
        self.hub_legs_ms: deque[float] = deque(maxlen=LATENCY_SAMPLES)  # frame capture → hub sent it
        self.counts: dict[str, int] = {
            "calls": 0,
            "dropped_here": 0,
            "gaps": 0,
            "refused": 0,
            "reconnects": 0,
            "unphased": 0,  # calls of channels mapped to no phase: in sequence, acted on by nobody
        }

    def start(self) -> HubCallStream:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def connected(self) -> bool:
        """Whether the hub has been heard within ``stale_after_s``."""
        heard = self._heard
        return heard is not None and self._clock() - heard <= self._stale_after_s

    def poll(self) -> Iterator[DetectorInput]:
        with self._lock:
            batch = list(self._queue)
            self._queue.clear()
        yield from batch

    def feed_lost(self) -> bool:
        return not self.connected() or self._clock() < self._distrust_until

    # --- the reading thread ---------------------------------------------------------------

    def _run(self) -> None:
        backoff = Backoff(base_s=0.2, cap_s=5.0)
        while not self._stop.is_set():
            try:
                with (
                    self._factory() as client,
                    client.stream(
                        "GET", f"/v1/signals/{self.signal}/calls", timeout=httpx.Timeout(10.0, read=30.0)
                    ) as response,
                ):
                    response.raise_for_status()
                    backoff.reset()
                    self.consume(response.iter_lines())
            except (httpx.HTTPError, OSError) as exc:
                log.warning("call stream of %s: %s; reconnecting", self.signal, exc)
            self.counts["reconnects"] += 1
            self._stop.wait(backoff.next_delay())

    def consume(self, lines: Iterator[str]) -> None:
        """Take the lines of an SSE stream (calls, heartbeats, drop notices) until they end or stop()."""
        data: list[str] = []
        for line in lines:
            if self._stop.is_set():
                return
            self._heard = self._clock()
            if line.startswith(": dropped"):
                self._distrust("the hub dropped calls for this client")
            elif line.startswith("data:"):
                data.append(line[5:].strip())
            elif not line and data:
                self._take("\n".join(data))
                data = []

    def _take(self, raw: str) -> None:
        try:
            call = decode_call(raw)
        except SchemaError as exc:
            self.counts["refused"] += 1
            log.warning("call stream of %s: refused a call: %s", self.signal, exc)
            return
        if call.signal != self.signal:
            self.counts["refused"] += 1
            return
        if self._last_seq is not None and call.seq != self._last_seq + 1:
            self._distrust(f"seq jumped from {self._last_seq} to {call.seq}")
        self._last_seq = call.seq
        if call.phase is None:
            # A channel mapped to no phase (a count or advance detector for the log and the counts):
            # it calls nobody, but its seq is in the stream, so skipping it must not look like a gap.
            self.counts["unphased"] += 1
            return
        self.latencies_ms.append((self._wall() - call.captured_at.timestamp()) * 1000.0)
        self.hub_legs_ms.append((call.hub_sent_at - call.captured_at).total_seconds() * 1000.0)
        update = DetectorInput(
            channel=call.channel,
            phase=call.phase,
            pedestrian=call.zone_kind == "pedestrian",
            called=call.called,
            failed=call.state == "fault",
        )
        with self._lock:
            if len(self._queue) >= CALL_QUEUE:
                self._queue.popleft()  # DROP_OLDEST: the newest state of a channel is what counts
                self.counts["dropped_here"] += 1
                self._distrust("the controller fell behind its call queue")
            self._queue.append(update)
        self.counts["calls"] += 1

    def _distrust(self, why: str) -> None:
        self.counts["gaps"] += 1
        self._distrust_until = self._clock() + self._resync_s
        log.warning("call stream of %s: %s; calling every phase for %.0f s", self.signal, why, self._resync_s)


class HubEventPoster:
    """Posts the controller's ATSPM events to the hub (an :class:`EventSink`)."""

    def __init__(
        self,
        client_factory: ClientFactory,
        signal: str,
        *,
        wall: Callable[[], float] = time.time,
        flush_s: float = 1.0,
    ) -> None:
        self.signal = signal
        self._factory = client_factory
        self._wall = wall
        self._flush_s = flush_s
        self._queue: deque[dict[str, Any]] = deque()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"signal-events-{signal}", daemon=True)
        self.counts: dict[str, int] = {"posted": 0, "dropped_full": 0, "refused": 0}

    def start(self) -> HubEventPoster:
        self._thread.start()
        return self

    def publish(self, events: Sequence[PhaseEvent]) -> None:
        ts = datetime.fromtimestamp(self._wall(), UTC).isoformat()
        with self._lock:
            for event in events:
                if len(self._queue) >= EVENT_QUEUE:
                    self._queue.popleft()
                    self.counts["dropped_full"] += 1
                self._queue.append({"ts": ts, "code": int(event.code), "param": event.param})

    def stop(self) -> None:
        """Post what is queued (for up to ten seconds), then end the thread."""
        self._stop.set()
        self._thread.join(timeout=15)

    def _run(self) -> None:
        backoff = Backoff(base_s=0.5, cap_s=10.0)
        with self._factory() as client:
            while True:
                stopping = self._stop.wait(self._flush_s)
                deadline = time.monotonic() + 10.0
                while self._pending() and not (stopping and time.monotonic() > deadline):
                    if not self._post(client):
                        if stopping:
                            break
                        self._stop.wait(backoff.next_delay())
                        break
                    backoff.reset()
                if stopping:
                    return

    def _pending(self) -> bool:
        with self._lock:
            return bool(self._queue)

    def _post(self, client: httpx.Client) -> bool:
        with self._lock:
            batch = [self._queue[i] for i in range(min(MAX_POST, len(self._queue)))]
        try:
            response = client.post(f"/v1/signals/{self.signal}/events", json={"events": batch})
        except httpx.HTTPError as exc:
            log.warning("posting %s events of %s: %s; will retry", len(batch), self.signal, exc)
            return False
        if response.status_code >= 500 or response.status_code == 429:
            log.warning("hub answered %s to %s events; will retry", response.status_code, len(batch))
            return False
        with self._lock:
            for _ in batch:
                self._queue.popleft()
        if response.is_success:
            self.counts["posted"] += len(batch)
        else:  # refused for good (4xx): counted and logged, never retried
            self.counts["refused"] += len(batch)
            log.error(
                "hub refused %s events of %s: %s %s",
                len(batch),
                self.signal,
                response.status_code,
                response.text[:200],
            )
        return True
