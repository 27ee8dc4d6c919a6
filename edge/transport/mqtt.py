"""The agent's MQTT link: MQTT 5 through :mod:`mqttlink`, mutual TLS, a last will,
reconnect with jittered backoff, and the outbox drained under QoS 1.

Messages the broker refuses (PUBACK 135, not authorised) stay in the outbox
and are retried with jittered backoff, one at a time, logged once when the
refusals start and once when they end (:mod:`roadside.edge.transport.delivery`).

Each connection is a fresh :class:`roadside.mqttlink.MqttSession` with a clean start. paho would
otherwise resend its own in-flight copies after a reconnect, with their old
timestamps; here the outbox is the only retry queue, and every (re)send is
sealed anew with the same sequence number, so the hub deduplicates it.
"""

from __future__ import annotations

import json
import logging
import queue
import ssl
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

from roadside.edge.outbox import Outbox
from roadside.edge.transport.delivery import LinkState, RefusalGate, UplinkStatus, write_status
from roadside.mqttlink import (
    ConnAck,
    Delivery,
    Message,
    MqttSession,
    PubAck,
    SessionConfig,
    Will,
    context_from_pem,
)
from roadside.shared import topics
from roadside.shared.backoff import Backoff
from roadside.shared.bundle import EnrollmentBundle
from roadside.shared.envelope import DeviceSealer
from roadside.shared.errors import ConfigError, TransportError
from roadside.shared.keys import KeyPair

log = logging.getLogger(__name__)

CommandHandler = Callable[[bytes], None]

_REFUSED_REMINDER_S = 600.0  # while refused, the log says so again at most this often

# Reconnecting: a delay drawn from [0, min(cap, base * 2^attempt)], so a fleet that lost its broker
# comes back spread over up to RECONNECT_CAP_S (10,000 devices: about 330 connects a second), and
# one device is back at most that long after the broker is. Detector calls ride this link, so the
# cap is what a signal can go without them after a broker restart; 30 s, not the 60 s it was.
RECONNECT_BASE_S = 0.5
RECONNECT_CAP_S = 30.0


def tls_scratch_dir(outbox_path: Path) -> Path:
    """Where the agent writing to ``outbox_path`` puts its TLS key for the moment of loading it."""
    return outbox_path.with_name(f"{outbox_path.stem}.tls")


def client_tls_context(bundle: EnrollmentBundle, scratch_dir: Path) -> ssl.SSLContext:
    """The bundle's mutual-TLS context; the key file is removed right after loading
    (:func:`roadside.mqttlink.context_from_pem`). ``ConfigError`` if the certificates do not load."""
    try:
        return context_from_pem(
            bundle.ca_cert_pem, bundle.client_cert_pem, bundle.client_key_pem, scratch_dir
        )
    except ConfigError as exc:
        raise ConfigError(
            f"the bundle's TLS certificates do not load ({exc.__cause__}): re-enroll the device"
        ) from exc


class MqttUplink:
    """Drains the outbox to the broker and hands commands to ``on_command``."""

    def __init__(
        self,
        bundle: EnrollmentBundle,
        outbox: Outbox,
        on_command: CommandHandler,
        max_inflight: int = 64,
        keepalive_s: int = 30,
        max_inflight_bytes: int = 8 * 1024 * 1024,
        clock_ms: Callable[[], int] = lambda: int(time.time() * 1000),
        *,
        scratch_dir: Path,
        status_file: Path | None = None,
        refusal_backoff: Backoff | None = None,
    ) -> None:
        """``scratch_dir``: where the TLS key is written for the moment it takes to load it
        (under the agent's state directory); ``status_file``: where the link's state is kept
        for ``roadside agent doctor``."""
        self.bundle = bundle
        self.outbox = outbox
        self.on_command = on_command
        self.max_inflight = max_inflight
        # Sealed copies of in-flight messages sit in paho's buffers until their PUBACK: bounded
        # in bytes as well as in count (64 hard-example messages would be 15 MB).
        self.max_inflight_bytes = max_inflight_bytes
        self.keepalive_s = keepalive_s
        self._clock_ms = clock_ms
        self._sealer = DeviceSealer(bundle.device_id, bundle.keypair(), bundle.hub_public())
        self._scratch_dir = scratch_dir
        self._tls_context: ssl.SSLContext | None = None
        self._status_file = status_file
        self._gate = RefusalGate(refusal_backoff)
        self._status_lock = threading.Lock()
        self._status = UplinkStatus(LinkState.CONNECTING, datetime.now(UTC))
        self._reminded_at = 0.0
        self._last_refusal: str | None = None
        self._status_topic = topics.uplink(bundle.site, bundle.device_id, "status")
        self._command_topic = topics.command(bundle.device_id)
        self._inflight: dict[int, int] = {}  # paho mid -> outbox seq; the uplink thread's alone
        self._inflight_bytes: dict[int, int] = {}  # paho mid -> payload bytes; same thread
        self._acks: queue.SimpleQueue[PubAck] = queue.SimpleQueue()
        self._stop = threading.Event()
        self._connected = threading.Event()
        self._lost = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"uplink-{bundle.device_id}", daemon=True)
        self.published = 0
        self.acked = 0
        self.refused = 0
        self.unrouted = 0  # PUBACK 16: accepted by the broker, delivered to nobody
        self.unrouted_hold_s = 2.0
        self._hold_until = 0.0
        self.connects = 0

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    def start(self) -> None:
        """Load the TLS credentials (``ConfigError`` if they do not load) and start connecting."""
        self._tls_context = client_tls_context(self.bundle, self._scratch_dir)
        self._write_status(self._status)
        self._thread.start()

    def status(self) -> UplinkStatus:
        """The link's state now: connecting, publishing, or refused (since when, how many)."""
        return self._status

    def use_keys(self, own: KeyPair) -> None:
        """Seal from now on with ``own`` (key rotation); messages already sent keep their key."""
        self._sealer = DeviceSealer(self.bundle.device_id, own, self.bundle.hub_public())

    def stop(self, drain_s: float = 0.0) -> None:
        """Stop, first waiting up to ``drain_s`` for the outbox to empty (while the broker is
        reachable: a link still connecting gets the time too; what is left stays on disk)."""
        deadline = time.monotonic() + drain_s
        while drain_s and time.monotonic() < deadline and self.outbox.backlog():
            time.sleep(0.05)
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=10)

    # The connection loop ---------------------------------------------------

    def _run(self) -> None:
        backoff = Backoff(RECONNECT_BASE_S, RECONNECT_CAP_S)
        while not self._stop.is_set():
            session = self._new_session()
            try:
                self._session(session, backoff)
            except TransportError as exc:
                log.warning(
                    "broker %s:%s unreachable: %s",
                    self.bundle.broker.host,
                    self.bundle.broker.port,
                    exc.__cause__,
                )
            except Exception:
                # The uplink must outlive any bug in one session: the outbox keeps the data.
                log.exception("uplink session failed; starting a new one")
            finally:
                self._end_session(session)
            if not self._stop.is_set():
                self._stop.wait(backoff.next_delay())

    def _new_session(self) -> MqttSession:
        config = SessionConfig(
            self.bundle.broker.host,
            self.bundle.broker.port,
            self.bundle.device_id,
            keepalive_s=self.keepalive_s,
            tls=self._tls_context,
            will=Will(self._status_topic, json.dumps({"state": "offline"})),
            max_inflight=self.max_inflight,
        )
        # PUBACKs go through a queue the uplink thread drains: paho calls on_publish holding its
        # own lock, and taking ours there while this thread held ours across publish() deadlocked
        # under load. A queue per session also keeps a late ack of an abandoned session (whose
        # mids the next session reuses) from ever settling the wrong message.
        acks: queue.SimpleQueue[PubAck] = queue.SimpleQueue()
        self._acks = acks
        return MqttSession(
            config,
            on_connect=self._on_connect,
            on_disconnect=self._on_disconnect,
            on_message=self._on_message,
            on_puback=acks.put,
        )

    def _session(self, session: MqttSession, backoff: Backoff) -> None:
        self._lost.clear()
        session.connect()
        session.loop_start()
        if not self._connected.wait(10) or self._lost.is_set():
            log.warning("broker did not accept the connection")
            return
        backoff.reset()
        self.connects += 1
        while not self._stop.is_set() and not self._lost.is_set():
            self._settle_acks()
            if time.monotonic() < self._hold_until:
                self._stop.wait(0.2)
                continue
            seen = self.outbox.puts  # before _fill looks: a put while it publishes ends the wait at once
            if not self._fill(session):
                self.outbox.wait(0.02 if self._inflight else 0.2, seen)
        if self._stop.is_set() and self.connected:
            session.publish(
                self._status_topic, json.dumps({"state": "offline"}), qos=1, retain=True
            ).wait_for_publish(2)

    def _end_session(self, session: MqttSession) -> None:
        self._connected.clear()
        session.disconnect()
        session.loop_stop()
        self._settle_acks()  # acks that arrived before the connection closed still count
        self._inflight.clear()  # the outbox still holds the rest; the next session resends
        self._inflight_bytes.clear()

    def _fill(self, session: MqttSession) -> bool:
        """Publish pending messages up to the in-flight limit; False when nothing was sent."""
        room = self._gate.room(time.monotonic(), self.max_inflight, len(self._inflight))
        if room <= 0:
            if self._gate.refused:
                return False  # held after a refusal: the session loop waits
            time.sleep(0.005)
            return True
        room_bytes = self.max_inflight_bytes - sum(self._inflight_bytes.values())
        if room_bytes <= 0:
            time.sleep(0.005)  # the window is full in bytes: wait for PUBACKs
            return True
        busy = set(self._inflight.values())
        items = self.outbox.pending(room, exclude=busy, max_bytes=room_bytes)
        for item in items:
            topic = topics.uplink(self.bundle.site, self.bundle.device_id, item.kind)  # type: ignore[arg-type]
            wire = self._sealer.seal(item.kind, item.seq, item.payload, self._clock_ms())
            sent = session.publish(topic, wire, qos=1)
            if sent.rc != 0:
                return False
            # Its PUBACK may already be queued; it is settled only after this, on this thread.
            self._inflight[sent.mid] = item.seq
            self._inflight_bytes[sent.mid] = len(item.payload)
            self.published += 1
        return bool(items)

    # Session callbacks (network thread) -----------------------------------------

    def _on_connect(self, session: MqttSession, ack: ConnAck) -> None:
        if not ack.ok:
            log.error("broker refused the connection: %s", ack.reason)
            self._lost.set()
            return
        session.publish(self._status_topic, json.dumps({"state": "online"}), qos=1, retain=True)
        session.subscribe(self._command_topic, qos=1)
        self._connected.set()
        # A refused spell outlives the connection: the ACL decides, not the session.
        self._set_status(LinkState.REFUSED if self._gate.refused else LinkState.PUBLISHING)
        log.info("connected to %s:%s", self.bundle.broker.host, self.bundle.broker.port)

    def _on_disconnect(self, reason: str) -> None:
        if not self._stop.is_set():
            log.warning("disconnected from broker: %s", reason)
        self._connected.clear()
        self._lost.set()
        self._set_status(LinkState.CONNECTING)

    def _settle_acks(self) -> None:
        """Apply the PUBACKs received so far (uplink thread only)."""
        while True:
            try:
                ack = self._acks.get_nowait()
            except queue.Empty:
                return
            self._settle(ack)

    def _settle(self, ack: PubAck) -> None:
        seq = self._inflight.pop(ack.mid, None)
        self._inflight_bytes.pop(ack.mid, None)
        if seq is None:
            return  # a status message, or a publish from a session we already abandoned
        if ack.delivery is Delivery.REFUSED:
            # Refused (e.g. not authorised): keep it; it is retried after a backoff.
            self.refused += 1
            self._on_refused(seq, ack.reason)
            return
        self._on_accepted()
        if ack.delivery is Delivery.UNROUTED:
            # The broker took it but nobody (no hub) was subscribed: it went nowhere. Keep it,
            # and hold sending for a moment; a hub that is reconnecting will subscribe again.
            self.unrouted += 1
            self._hold_until = time.monotonic() + self.unrouted_hold_s
            log.warning("no hub subscribed: message %s kept for later", seq)
            return
        self.outbox.ack(seq)
        self.acked += 1

    def _on_refused(self, seq: int, reason: str) -> None:
        now = time.monotonic()
        new_round = self._gate.on_refused(now)
        self._last_refusal = reason
        if self._status.state is not LinkState.REFUSED:
            log.error(
                "broker refuses this device's messages (%s, message %s): %d kept in the outbox, "
                "retried with backoff; check the device is in the broker's ACL",
                reason,
                seq,
                self.outbox.backlog(),
            )
            self._reminded_at = now
        elif now - self._reminded_at >= _REFUSED_REMINDER_S:
            log.error("broker still refuses this device's messages: %d refusals so far", self._gate.refusals)
            self._reminded_at = now
        self._set_status(LinkState.REFUSED, reason, persist=new_round)

    def _on_accepted(self) -> None:
        refusals = self._gate.on_accepted()
        if refusals is None:
            return
        spell_s = (datetime.now(UTC) - self._status.since).total_seconds()
        log.warning(
            "broker accepts this device's messages again, after %d refusals in %.0f s", refusals, spell_s
        )
        self._set_status(LinkState.PUBLISHING)

    def _set_status(self, state: LinkState, reason: str | None = None, persist: bool = True) -> None:
        """Record the link's state (any thread); the status file is rewritten when ``persist``."""
        with self._status_lock:
            old = self._status
            since = old.since if state is old.state else datetime.now(UTC)
            if reason is None and state is LinkState.REFUSED:
                reason = old.reason or self._last_refusal  # reconnected during a refused spell
            status = UplinkStatus(state, since, self._gate.refusals, self._gate.total, reason)
            self._status = status
            if persist or state is not old.state:
                self._write_status(status)

    def _write_status(self, status: UplinkStatus) -> None:
        if self._status_file is None:
            return
        try:
            write_status(self._status_file, status)
        except OSError as exc:  # the doctor's view only; the uplink carries on
            log.warning("cannot write the uplink status to %s: %s", self._status_file, exc)

    def _on_message(self, message: Message) -> None:
        if message.topic == self._command_topic:
            self.on_command(message.payload)
