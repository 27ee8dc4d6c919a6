"""The agent's MQTT link: paho-mqtt 2, MQTT 5, mutual TLS, a last will, reconnect
with jittered backoff, and the outbox drained under QoS 1.

Each connection is a fresh paho client with a clean start. paho would
otherwise resend its own in-flight copies after a reconnect, with their old
timestamps; here the outbox is the only retry queue, and every (re)send is
sealed anew with the same sequence number, so the hub deduplicates it.
"""

from __future__ import annotations

import json
import logging
import os
import queue
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from edge.outbox import Outbox
from shared import topics
from shared.backoff import Backoff
from shared.bundle import EnrollmentBundle
from shared.envelope import DeviceSealer
from shared.keys import KeyPair

log = logging.getLogger(__name__)

CommandHandler = Callable[[bytes], None]

# MQTT 5 PUBACK reason 16: "No matching subscribers". Mosquitto answers it when no hub is
# subscribed (e.g. just after a broker restart, before the hubs re-subscribe).
_NO_MATCHING_SUBSCRIBERS = 16


def _write_tls_files(bundle: EnrollmentBundle) -> Path:
    """paho wants file paths: write the bundle's PEMs into a private directory."""
    directory = Path(tempfile.mkdtemp(prefix="roadside-tls-"))
    for name, pem in (
        ("ca.crt", bundle.ca_cert_pem),
        ("client.crt", bundle.client_cert_pem),
        ("client.key", bundle.client_key_pem),
    ):
        fd = os.open(directory / name, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as out:
            out.write(pem)
    return directory


class MqttUplink:
    """Drains the outbox to the broker and hands commands to ``on_command``."""

    def __init__(
        self,
        bundle: EnrollmentBundle,
        outbox: Outbox,
        on_command: CommandHandler,
        max_inflight: int = 64,
        keepalive_s: int = 30,
        clock_ms: Callable[[], int] = lambda: int(time.time() * 1000),
    ) -> None:
        self.bundle = bundle
        self.outbox = outbox
        self.on_command = on_command
        self.max_inflight = max_inflight
        self.keepalive_s = keepalive_s
        self._clock_ms = clock_ms
        self._sealer = DeviceSealer(bundle.device_id, bundle.keypair(), bundle.hub_public())
        self._tls_dir = _write_tls_files(bundle)
        self._status_topic = topics.uplink(bundle.site, bundle.device_id, "status")
        self._command_topic = topics.command(bundle.device_id)
        self._inflight: dict[int, int] = {}  # paho mid -> outbox seq; the uplink thread's alone
        self._acks: queue.SimpleQueue[tuple[int, ReasonCode]] = queue.SimpleQueue()
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
        self._thread.start()

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
        self._thread.join(timeout=10)
        for child in self._tls_dir.iterdir():
            child.unlink()
        self._tls_dir.rmdir()

    # The connection loop ---------------------------------------------------

    def _run(self) -> None:
        backoff = Backoff()
        while not self._stop.is_set():
            client = self._new_client()
            try:
                self._session(client, backoff)
            except OSError as exc:
                log.warning(
                    "broker %s:%s unreachable: %s", self.bundle.broker.host, self.bundle.broker.port, exc
                )
            except Exception:
                # The uplink must outlive any bug in one session: the outbox keeps the data.
                log.exception("uplink session failed; starting a new one")
            finally:
                self._end_session(client)
            if not self._stop.is_set():
                self._stop.wait(backoff.next_delay())

    def _new_client(self) -> mqtt.Client:
        client = mqtt.Client(
            callback_api_version=CallbackAPIVersion.VERSION2,
            client_id=self.bundle.device_id,
            protocol=mqtt.MQTTv5,
        )
        client.tls_set(
            ca_certs=str(self._tls_dir / "ca.crt"),
            certfile=str(self._tls_dir / "client.crt"),
            keyfile=str(self._tls_dir / "client.key"),
        )
        if self.bundle.broker.tls_server_name:
            client.tls_insecure_set(False)
        client.will_set(self._status_topic, json.dumps({"state": "offline"}), qos=1, retain=True)
        client.max_inflight_messages_set(self.max_inflight)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        # PUBACKs go through a queue the uplink thread drains: paho calls on_publish holding its
        # own lock, and taking ours there while this thread held ours across publish() deadlocked
        # under load. A queue per client also keeps a late ack of an abandoned session (whose
        # mids the next session reuses) from ever settling the wrong message.
        acks: queue.SimpleQueue[tuple[int, ReasonCode]] = queue.SimpleQueue()
        self._acks = acks
        client.on_publish = lambda _c, _u, mid, reason, _p: acks.put((mid, reason))
        client.on_message = self._on_message
        return client

    def _session(self, client: mqtt.Client, backoff: Backoff) -> None:
        self._lost.clear()
        client.connect(
            self.bundle.broker.host, self.bundle.broker.port, keepalive=self.keepalive_s, clean_start=True
        )
        client.loop_start()
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
            if not self._fill(client):
                self.outbox.wait(0.02 if self._inflight else 0.2)
        if self._stop.is_set() and self.connected:
            client.publish(
                self._status_topic, json.dumps({"state": "offline"}), qos=1, retain=True
            ).wait_for_publish(2)

    def _end_session(self, client: mqtt.Client) -> None:
        self._connected.clear()
        client.disconnect()
        client.loop_stop()
        self._settle_acks()  # acks that arrived before the connection closed still count
        self._inflight.clear()  # the outbox still holds the rest; the next session resends

    def _fill(self, client: mqtt.Client) -> bool:
        """Publish pending messages up to the in-flight limit; False when nothing was sent."""
        room = self.max_inflight - len(self._inflight)
        busy = set(self._inflight.values())
        if room <= 0:
            time.sleep(0.005)
            return True
        items = self.outbox.pending(room, exclude=busy)
        for item in items:
            topic = topics.uplink(self.bundle.site, self.bundle.device_id, item.kind)  # type: ignore[arg-type]
            wire = self._sealer.seal(item.kind, item.seq, item.payload, self._clock_ms())
            info = client.publish(topic, wire, qos=1)
            if info.rc != mqtt.MQTT_ERR_SUCCESS:
                return False
            # Its PUBACK may already be queued; it is settled only after this, on this thread.
            self._inflight[info.mid] = item.seq
            self.published += 1
        return bool(items)

    # paho callbacks (network thread) -----------------------------------------

    def _on_connect(
        self, client: mqtt.Client, _u: Any, _f: Any, reason: ReasonCode, _p: Properties | None
    ) -> None:
        if reason.is_failure:
            log.error("broker refused the connection: %s", reason)
            self._lost.set()
            return
        client.publish(self._status_topic, json.dumps({"state": "online"}), qos=1, retain=True)
        client.subscribe(self._command_topic, qos=1)
        self._connected.set()
        log.info("connected to %s:%s", self.bundle.broker.host, self.bundle.broker.port)

    def _on_disconnect(
        self, _c: mqtt.Client, _u: Any, _f: Any, reason: ReasonCode, _p: Properties | None
    ) -> None:
        if not self._stop.is_set():
            log.warning("disconnected from broker: %s", reason)
        self._connected.clear()
        self._lost.set()

    def _settle_acks(self) -> None:
        """Apply the PUBACKs received so far (uplink thread only)."""
        while True:
            try:
                mid, reason = self._acks.get_nowait()
            except queue.Empty:
                return
            self._settle(mid, reason)

    def _settle(self, mid: int, reason: ReasonCode) -> None:
        seq = self._inflight.pop(mid, None)
        if seq is None:
            return  # a status message, or a publish from a session we already abandoned
        if reason.is_failure:
            # Refused (e.g. not authorised): keep it; it is retried on the next session.
            self.refused += 1
            log.error("broker refused message %s: %s", seq, reason)
            return
        if reason.value == _NO_MATCHING_SUBSCRIBERS:
            # The broker took it but nobody (no hub) was subscribed: it went nowhere. Keep it,
            # and hold sending for a moment; a hub that is reconnecting will subscribe again.
            self.unrouted += 1
            self._hold_until = time.monotonic() + self.unrouted_hold_s
            log.warning("no hub subscribed: message %s kept for later", seq)
            return
        self.outbox.ack(seq)
        self.acked += 1

    def _on_message(self, _c: mqtt.Client, _u: Any, message: mqtt.MQTTMessage) -> None:
        if message.topic == self._command_topic:
            self.on_command(bytes(message.payload))
