"""The ingest service: MQTT 5 shared subscription → unseal → micro-batch → store → ack.

A QoS 1 message is acknowledged to the broker only after its batch is durably
written (manual acks, :class:`roadside.mqttlink.MqttSession`), so a hub killed mid-batch loses nothing: the
broker redelivers what was not acknowledged, and the store's idempotent writes
absorb the repeats. When the store is down, or refuses every write for a
reason that is not the data's (credentials, a missing database or retention
policy), or the registry is unreachable, ingest *pauses*: the batch is retried
with backoff and nothing is acknowledged; the bounded queue fills and then
blocks the network thread (``BLOCK``), which stops reading from the broker
until the store is back. Only a message that is itself bad (forged, replayed,
malformed, refused by the store for its content) is dead-lettered, and it
costs no other message: every step is isolated per message.
"""

from __future__ import annotations

import json
import logging
import math
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Literal

from roadside.cloud.ingest.core import Accepted, IngestCore, Rejection
from roadside.cloud.ingest.deadletter import DeadLetterStore, safe_text
from roadside.cloud.ingest.metrics import IngestMetrics
from roadside.cloud.ingest.seen import SeenTimes
from roadside.cloud.ingest.workers import IngestWorkers
from roadside.cloud.ingest.writing import write_durably
from roadside.cloud.storage.base import TimeSeriesStore
from roadside.mqttlink import (
    ConnAck,
    LeanSession,
    Message,
    MqttSession,
    Sent,
    SessionConfig,
    SubAck,
    TlsFiles,
)
from roadside.shared import topics
from roadside.shared.backoff import Backoff
from roadside.shared.errors import ConfigError, RoadsideError, TransportError
from roadside.shared.queues import BoundedQueue, Overflow

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class BrokerClientConfig:
    host: str
    port: int
    ca_file: Path
    cert_file: Path
    key_file: Path
    client_id: str = "hub"  # the CN of the certificate it connects with: the broker enforces it
    group: str | None = "hub"  # None: a plain subscription (one hub only)
    session_expiry_s: int = 3600  # the broker keeps our unacknowledged messages this long
    # "lean": bulk reads and one write per batch of PUBACKs (mqttlink.lean, ADR 0025); "paho": MqttSession.
    mqtt_client: Literal["lean", "paho"] = "lean"
    keepalive_s: int = 30


@dataclass(frozen=True, slots=True)
class _Delivery:
    topic: str
    payload: bytes
    mid: int
    qos: int
    dup: bool = False  # a redelivery: the broker sent this message to the hub before


class IngestService:
    def __init__(
        self,
        broker: BrokerClientConfig,
        core: IngestCore,
        store: TimeSeriesStore,
        dead_letters: DeadLetterStore,
        metrics: IngestMetrics,
        mark_seen: Callable[[list[tuple[str, datetime]]], None],
        batch_size: int = 500,
        max_wait_s: float = 0.1,
        queue_size: int = 20_000,
        on_stored: Callable[[list[Accepted]], None] | None = None,
        seen_interval_s: float = 1.0,
        workers: IngestWorkers | None = None,
    ) -> None:
        self.broker = broker
        self.core = core
        self.store = store
        self.dead_letters = dead_letters
        self.metrics = metrics
        self.mark_seen = mark_seen
        # Called on the writer thread with what was just stored durably (acks, live feeds).
        self.on_stored = on_stored
        self.batch_size = batch_size
        self.max_wait_s = max_wait_s
        # None: check and write on the writer thread; else in these processes (cloud.ingest.workers).
        self.workers = workers
        self.seen = SeenTimes(seen_interval_s)  # last-seen times reach the registry at most this often
        self.queue: BoundedQueue[_Delivery] = BoundedQueue(queue_size, Overflow.BLOCK)
        self.status: dict[str, str] = {}  # device id -> "online" / "offline" from the retained status
        self.stored_messages = 0
        self.rejected_messages = 0
        self.disconnects = 0  # connections to the broker lost (or ended by it) while running
        self.redelivered = 0  # copies of messages already handled, sent again after a lost ack
        self.paused: str | None = None  # why ingest is waiting (a store or the registry down), or None
        self._lag = Lag()
        metrics.behind_seconds.set_function(self.behind_s)  # read at each scrape: never stale when idle
        self._stop = threading.Event()
        self._connected = threading.Event()
        self._subscribed = threading.Event()
        self._client = self._new_client()
        self._worker = threading.Thread(target=self._work, name="ingest-writer", daemon=True)

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    def _new_client(self) -> LeanSession | MqttSession:
        broker = self.broker
        config = SessionConfig(
            broker.host,
            broker.port,
            broker.client_id,
            persistent=True,
            session_expiry_s=broker.session_expiry_s,
            keepalive_s=broker.keepalive_s,
            tls=TlsFiles(broker.ca_file, broker.cert_file, broker.key_file),
            manual_ack=True,
            reconnect_delay_s=(1, 5),
            # Two batches unacknowledged at once: one being written, the next filling the queue.
            receive_maximum=min(65535, 2 * self.batch_size),
        )
        if broker.mqtt_client == "paho":
            return MqttSession(
                config,
                on_connect=self._on_connect,
                on_disconnect=self._on_disconnect,
                on_message=self._on_message,
                on_subscribe=self._on_subscribe,
            )
        return LeanSession(
            config,
            on_connect=self._on_connect,
            on_disconnect=self._on_disconnect,
            on_message=self._on_message,
            on_subscribe=self._on_subscribe,
            ready=self._has_room,
        )

    def start(self) -> None:
        if self.workers is not None:
            self.workers.start()
        self._worker.start()
        self._client.connect()  # TransportError when the broker cannot be reached
        self._client.loop_start()

    def wait_connected(self, timeout: float) -> bool:
        """True once connected and subscribed (messages published from then on reach us)."""
        return self._connected.wait(timeout) and self._subscribed.wait(timeout)

    def publish(self, topic: str, payload: bytes, qos: int = 1) -> Sent:
        """Publish on the hub's own connection (commands to devices)."""
        return self._client.publish(topic, payload, qos=qos)

    def behind_s(self) -> float:
        """How far behind its devices ingest is now, in seconds (:class:`Lag`)."""
        return self._lag.behind_s(time.monotonic(), waiting=self.queue.qsize() > 0 or self.paused is not None)

    def stop(self) -> None:
        """Write and acknowledge what is queued, then disconnect. Messages arriving
        meanwhile are not acknowledged: the broker keeps them for the next session."""
        self._stop.set()
        self._worker.join(timeout=30)
        self._client.disconnect()
        self._client.loop_stop()
        if self.workers is not None:
            self.workers.stop()

    def forget(self, device_id: str) -> None:
        """A device was revoked or its keys changed: drop what the ingest workers cached for it."""
        if self.workers is not None:
            self.workers.forget(device_id)

    # Session callbacks (network thread) ---------------------------------------

    def _on_connect(self, session: LeanSession | MqttSession, ack: ConnAck) -> None:
        if not ack.ok:
            log.error("broker refused the hub: %s", ack.reason)
            return
        session.subscribe(topics.hub_subscription(self.broker.group), qos=1)
        # Status messages are retained and tiny: a plain subscription in every hub.
        session.subscribe(f"{topics.ROOT}/+/+/status", qos=1)
        self._connected.set()
        log.info("hub connected to %s:%s", self.broker.host, self.broker.port)

    def _on_subscribe(self, ack: SubAck) -> None:
        if not ack.ok:
            log.error("broker refused the hub's subscription: %s", ack.reasons)
            return
        self._subscribed.set()
        log.info("hub subscribed to %s", topics.hub_subscription(self.broker.group))

    def _on_disconnect(self, reason: str) -> None:
        self._connected.clear()
        self._subscribed.clear()
        if not self._stop.is_set():
            self.disconnects += 1
            self.metrics.disconnects.inc()
            log.warning("hub disconnected from broker: %s; reconnecting", reason)

    def _has_room(self) -> bool:
        """Whether the queue takes another message now (the network thread is its only producer).
        When it does not, the lean session stops reading and keeps acknowledging and pinging."""
        return self.queue.qsize() < self.queue.maxsize

    def _on_message(self, message: Message) -> None:
        if message.topic.endswith("/status"):
            self._on_status(message)
            self._client.ack(message.mid, message.qos)
            return
        delivery = _Delivery(message.topic, message.payload, message.mid, message.qos, message.dup)
        while not self._stop.is_set():
            try:
                # BLOCK: back-pressure onto the broker. The lean session asks _has_room first and
                # never waits here; paho's network thread does, and sends nothing meanwhile.
                self.queue.put(delivery, timeout=0.5)
                return
            except queue.Full:
                continue  # keep waiting until the writer catches up, or we stop

    def _on_status(self, message: Message) -> None:
        where = message.topic.split("/")
        if len(where) != 5:
            return
        try:
            state = json.loads(message.payload).get("state")
        except (ValueError, AttributeError):
            return
        if state in ("online", "offline"):
            self.status[where[3]] = state

    # The writer ----------------------------------------------------------------

    def _work(self) -> None:
        while not (self._stop.is_set() and self.queue.qsize() == 0):
            deliveries = self.queue.get_batch(self.batch_size, self.max_wait_s, first_timeout_s=0.2)
            self.metrics.queue_depth.set(self.queue.qsize())
            if not deliveries:
                self._lag.idle(time.monotonic())  # nothing came for 0.2 s: the broker holds no backlog
                self._flush_seen()
                continue
            try:
                self._handle(deliveries)
            except Exception:
                # A bug, not bad input (that is isolated per message): these stay unacknowledged
                # and come back with the next session; the error is loud in the log.
                log.exception("ingest writer failed on a batch of %d messages", len(deliveries))
        self._flush_seen(every=True)

    def _handle(self, deliveries: list[_Delivery]) -> None:
        """Process a batch until it is durable, pausing while a store or the registry is down.

        Nothing is acknowledged and no replay window is committed until everything each
        message needs (its records, its dead letter, the listeners' work) is done, so a
        failure at any step leaves the whole batch to be redelivered and processed again.
        """
        batch = _Batch(deliveries)
        # Made on the first failure: seeding its jitter reads urandom, too dear for every batch.
        backoff: Backoff | None = None
        while True:
            try:
                self._process(batch)
            except (TransportError, ConfigError) as exc:
                # Store-wide or registry-wide: not any message's fault. Keep everything, wait.
                self._pause(exc)
                backoff = backoff or Backoff(base_s=0.2, cap_s=10.0)
                if self._stop.wait(backoff.next_delay()):
                    return  # stopping: unacknowledged, the broker redelivers to the next session
                continue
            self._resume()
            return

    def _process(self, batch: _Batch) -> None:
        results = self._check_and_write(batch.deliveries, int(time.time() * 1000))
        accepted = [r for r in results if isinstance(r, Accepted)]
        for index, (delivery, outcome) in enumerate(zip(batch.deliveries, results, strict=True)):
            if isinstance(outcome, Rejection) and index not in batch.dead_lettered:
                self._reject(delivery, outcome)
                batch.dead_lettered.add(index)
        for outcome in accepted:
            self.seen.note(outcome.header.device_id, outcome.header.ts_ms)
        self._mark_seen_due(time.monotonic())
        if self.on_stored is not None and accepted:
            self.on_stored(accepted)  # isolates its listeners per message; raises only TransportError
        # Everything each message needs is durable: only now refuse repeats of it, and ack.
        if self.workers is not None:
            self.workers.commit([outcome.header for outcome in accepted])
        now_s = time.time()
        lags = [max(0.0, now_s - outcome.header.ts_ms / 1000) for outcome in accepted]
        for outcome, lag in zip(accepted, lags, strict=True):
            if self.workers is None:
                self.core.opener.commit(outcome.header)
            self.metrics.lag_seconds.observe(lag)
            self._count_records(outcome)
        if lags:
            self._lag.stored(lags, time.monotonic())
        self.stored_messages += len(accepted)
        self.metrics.messages.labels("accepted").inc(len(accepted))
        self._ack([delivery for delivery in batch.deliveries if delivery.qos])

    def _ack(self, deliveries: list[_Delivery]) -> None:
        """Acknowledge durably handled QoS 1 messages: in one write on the lean session."""
        client = self._client
        if isinstance(client, LeanSession):
            client.ack_many([delivery.mid for delivery in deliveries])
            return
        for delivery in deliveries:
            client.ack(delivery.mid, delivery.qos)

    def _check_and_write(self, deliveries: list[_Delivery], now_ms: int) -> list[Accepted | Rejection]:
        """Each message checked, the accepted ones durably written (here or in the workers)."""
        if self.workers is not None:
            started = time.perf_counter()
            outcomes = self.workers.process([(d.topic, d.payload) for d in deliveries], now_ms)
            self.metrics.batch_seconds.observe(time.perf_counter() - started)
            return outcomes
        results = [self._accept(d, now_ms) for d in deliveries]
        refused = self._write([r for r in results if isinstance(r, Accepted)])
        return [refused.get(id(r), r) if isinstance(r, Accepted) else r for r in results]

    def _mark_seen_due(self, now: float) -> None:
        """Write the last-seen times that are due.

        ``TransportError`` (the registry is unreachable) propagates: the batch pauses and is
        processed again, as for any other step, and the times stay pending.
        """
        due = self.seen.due(now)
        if due:
            self.mark_seen(due)
            self.seen.written(due, now)

    def _flush_seen(self, *, every: bool = False) -> None:
        """While idle: the times held back by the interval reach the registry within it
        (``every``: all of them, when stopping)."""
        if not self.seen:
            return
        try:
            self._mark_seen_due(math.inf if every else time.monotonic())
        except RoadsideError as exc:
            log.warning("could not record when devices were last seen (retrying): %s", exc)

    def _accept(self, delivery: _Delivery, now_ms: int) -> Accepted | Rejection:
        """One message through the core; whatever it raises costs only that message.

        ``TransportError`` (the registry is unreachable) is not the message's fault and
        pauses the batch instead.
        """
        try:
            return self.core.accept(delivery.topic, delivery.payload, now_ms)
        except TransportError:
            raise
        except Exception as exc:
            log.exception(
                "ingest could not check a message on %s; dead-lettering it", safe_text(delivery.topic, 512)
            )
            return Rejection("internal_error", f"{type(exc).__name__}: {exc}", delivery.topic)

    def _pause(self, exc: RoadsideError) -> None:
        self.metrics.store_errors.inc()
        if self.paused is None:
            self.metrics.paused.set(1)
            log.error("ingest paused, nothing is acknowledged until this is fixed: %s", exc)
        self.paused = str(exc)

    def _resume(self) -> None:
        if self.paused is not None:
            log.warning("ingest resumed after: %s", self.paused)
            self.metrics.paused.set(0)
            self.paused = None

    def _write(self, accepted: list[Accepted]) -> dict[int, Rejection]:
        """Write durably (:func:`write_durably`); time the batch."""
        started = time.perf_counter()
        refused = write_durably(self.store, accepted)
        if accepted and not refused:
            self.metrics.batch_seconds.observe(time.perf_counter() - started)
        return refused

    def _reject(self, delivery: _Delivery, rejection: Rejection) -> None:
        if rejection.reason == "replay" and delivery.dup:
            # The broker sent this very message to the hub before and its ack was lost (a reconnect,
            # a killed hub): the first copy was stored, or refused and dead-lettered then. Counted;
            # a dead letter per copy would let one reconnect under load evict every real letter.
            self.redelivered += 1
            self.metrics.redelivered.inc()
            log.debug("a redelivered copy on %s was already handled", safe_text(delivery.topic, 512))
            return
        self.rejected_messages += 1
        self.metrics.messages.labels("rejected").inc()
        self.metrics.rejected.labels(rejection.reason).inc()
        log.warning(
            "rejected a message on %s: %s (%s)",
            safe_text(rejection.topic, 512),
            rejection.reason,
            safe_text(rejection.detail, 2048),
        )
        self.dead_letters.add(
            delivery.topic,  # as received, so the letter can be re-driven
            rejection.device_id,
            rejection.reason,
            rejection.detail,
            delivery.payload,
        )
        self.metrics.dead_letters.inc()

    def _count_records(self, result: Accepted) -> None:
        batch, tally = result.batch, result.tally
        for kind, n in (
            ("counts", len(batch.counts) if tally is None else tally.counts),
            ("events", len(batch.events)),
            ("sensors", len(batch.sensors) if tally is None else tally.sensors),
        ):
            if n:
                self.metrics.records.labels(kind).inc(n)
        if batch.health is not None or (tally is not None and tally.health):
            self.metrics.records.labels("health").inc()


@dataclass(slots=True)
class Lag:
    """How far behind its devices ingest is, from the ages of the messages it stores.

    Two bounds, and the smaller is the answer:

    - the 10th-percentile age (hub clock minus sealing time) of the newest batch, plus, while
      messages wait (a backlog) or ingest is paused, the time since that batch was stored
      (caught up, nothing waiting and no batch for ``idle_s``: 0). A backlog drains roughly in
      order, so a whole batch is old when ingest is behind; the low percentile keeps a few
      devices with slow clocks from moving it;
    - the time since ingest last sat idle (nothing came for a moment, so the broker held no
      backlog then): nothing waiting now can be older than that. This one reads only the hub's
      clock, so a fleet whose clocks are slow cannot make a hub that keeps up look behind.

    Capped at ``cap_s``.
    """

    idle_s: float = 30.0
    cap_s: float = 3600.0
    age_s: float = 0.0  # of the newest batch, at its 10th percentile
    at: float | None = None  # monotonic time of the newest batch
    idle_at: float | None = None  # monotonic time ingest last found nothing to do

    def stored(self, ages_s: list[float], now: float) -> None:
        ordered = sorted(ages_s)
        self.age_s, self.at = ordered[len(ordered) // 10], now

    def idle(self, now: float) -> None:
        self.idle_at = now

    def behind_s(self, now: float, *, waiting: bool) -> float:
        if self.at is None:
            return 0.0
        since = now - self.at
        stale = 0.0 if since > self.idle_s else self.age_s  # nothing waiting: the newest batch's age
        by_age = self.age_s + since if waiting else stale
        busy = math.inf if self.idle_at is None else max(0.0, now - self.idle_at)
        return min(self.cap_s, by_age, busy)


@dataclass(slots=True)
class _Batch:
    """Deliveries being processed, and which of them are already dead-lettered (across retries)."""

    deliveries: list[_Delivery]
    dead_lettered: set[int] = field(default_factory=set)
