"""A lean MQTT 5 client session for the hub's ingest: bulk reads, batched acknowledgements.

Why not paho here (docs/adr/0025-lean-mqtt-session-for-ingest.md): profiled while
the hub drained a backlog, paho's network thread took about a third of the hub's
CPU. It reads each packet with three or more TLS reads (the fixed header byte by
byte), asks the TLS socket for pending bytes after each, builds a ``Properties``
object and an ``MQTTMessage`` per PUBLISH, and writes each PUBACK as a TLS record
of its own, woken through a socket pair, one per message. This session reads
whatever the TLS socket holds (16 KiB records) and cuts every complete packet
out of it, and :meth:`LeanSession.ack_many` writes a whole batch's PUBACKs in one
send, still only after the caller made the batch durable.

It is real MQTT 5 over TCP or TLS, against any broker: CONNECT with clean start
off and a session expiry (the broker keeps unacknowledged QoS 1 messages for the
next connection), SUBSCRIBE (shared subscriptions included), PUBLISH in both
directions at QoS 0 and 1, PUBACK, PINGREQ/PINGRESP keepalive and DISCONNECT.
No QoS 2, no topic aliases (the CONNECT asks for none), no AUTH exchange: the
hub needs none of them. It reconnects by itself after a lost connection, with
a delay between ``reconnect_delay_s``; outgoing QoS 1 messages not yet
acknowledged are sent again (DUP) on the next connection.

The interface is :class:`roadside.mqttlink.MqttSession`'s as the hub uses it
(``connect``, ``loop_start``, ``subscribe``, ``publish``, ``ack``,
``disconnect``, ``loop_stop`` and the same callbacks with the same plain
values); errors map the same way (``ConfigError``, ``TransportError``).

Threads: one network thread (``loop_start``) does every socket read and write;
other threads queue bytes for it and wake it through a socket pair, because one
TLS connection must not be read and written from two threads at once.

Back-pressure: a consumer that cannot take another message (``ready`` says so) is
not handed one; the session stops reading the socket until it can, and the broker
holds the rest. It never blocks the network thread for it: acknowledgements and
keepalive pings still go out while it waits, so a consumer far behind keeps its
connection. (Blocking in ``on_message`` instead silenced the connection; Mosquitto
2.0.11 then dropped the hub for keepalive timeout. And that broker sends past the
client's Receive Maximum: after each PUBACK it sends up to a whole window more, so
the window alone does not keep a slow consumer's queue from filling.)
"""

from __future__ import annotations

import contextlib
import logging
import random
import select
import socket
import ssl
import struct
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Final

from roadside.mqttlink.session import (
    ConnAck,
    Message,
    PubAck,
    SessionConfig,
    SubAck,
    TlsFiles,
    puback_delivery,
)
from roadside.shared.errors import ConfigError, TransportError

log = logging.getLogger(__name__)

CONNECT: Final = 0x10
CONNACK: Final = 0x20
PUBLISH: Final = 0x30
PUBACK: Final = 0x40
SUBSCRIBE: Final = 0x82  # the fixed header's flags must be 0b0010
SUBACK: Final = 0x90
PINGREQ: Final = b"\xc0\x00"
PINGRESP: Final = 0xD0
DISCONNECT: Final = 0xE0
_READ_BYTES: Final = 65536
# What one read takes from the socket before its packets are handled: a bound on the buffer when
# the broker floods us (a backlog after a reconnect: 4 MB were seen in one read without it).
_READ_CAP: Final = 1 << 20
# How often a session whose consumer cannot take a message looks again (it is behind: no hurry).
_HELD_POLL_S: Final = 0.02
_MAX_PACKET_BYTES: Final = 268_435_455  # the largest a variable-byte integer can say
_PUBACK = struct.Struct(">BBH")
_U16 = struct.Struct(">H")


class ProtocolError(TransportError):
    """The broker sent something this session cannot read: the connection is dropped and made again."""


def encode_varint(value: int) -> bytes:
    """MQTT's variable-byte integer (1 to 4 bytes)."""
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def decode_varint(buf: bytes | bytearray | memoryview, pos: int) -> tuple[int, int] | None:
    """(value, position after it), or None when ``buf`` ends inside it; ``ProtocolError`` past 4 bytes."""
    value = 0
    for shift in range(0, 28, 7):
        if pos >= len(buf):
            return None
        byte = buf[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, pos
    raise ProtocolError("malformed variable-byte integer")


def _utf8(text: str) -> bytes:
    raw = text.encode()
    return _U16.pack(len(raw)) + raw


def _packet(first: int, body: bytes) -> bytes:
    return bytes((first,)) + encode_varint(len(body)) + body


def connect_packet(
    client_id: str,
    keepalive_s: int,
    persistent: bool,
    session_expiry_s: int | None,
    receive_maximum: int | None = None,
) -> bytes:
    flags = 0x00 if persistent else 0x02  # clean start off: resume the session and its queue
    props = b"" if session_expiry_s is None else b"\x11" + struct.pack(">I", session_expiry_s)
    if receive_maximum is not None:
        props += b"\x21" + _U16.pack(receive_maximum)
    body = _utf8("MQTT") + bytes((5, flags)) + _U16.pack(keepalive_s) + encode_varint(len(props)) + props
    return _packet(CONNECT, body + _utf8(client_id))


def subscribe_packet(mid: int, topic: str, qos: int) -> bytes:
    return _packet(SUBSCRIBE, _U16.pack(mid) + b"\x00" + _utf8(topic) + bytes((qos,)))


def publish_packet(topic: str, payload: bytes, qos: int, mid: int, retain: bool, dup: bool = False) -> bytes:
    first = PUBLISH | (qos << 1) | (0x08 if dup else 0) | (0x01 if retain else 0)
    head = _utf8(topic) + (_U16.pack(mid) if qos else b"") + b"\x00"  # no properties
    return _packet(first, head + payload)


def pubacks(mids: Iterable[int]) -> bytes:
    """One PUBACK per message id, in one buffer (reason "success" is left out, as MQTT 5 allows)."""
    pack = _PUBACK.pack
    return b"".join([pack(PUBACK, 2, mid) for mid in mids])


_FIXED_SIZES: Final = {0x01: 1, 0x02: 4, 0x11: 4, 0x13: 2, 0x17: 1, 0x18: 4, 0x19: 1, 0x21: 2, 0x22: 2,
                        0x23: 2, 0x24: 1, 0x25: 1, 0x27: 4, 0x28: 1, 0x29: 1, 0x2A: 1}  # fmt: skip
_PREFIXED: Final = {0x03, 0x08, 0x09, 0x12, 0x15, 0x16, 0x1A, 0x1C, 0x1F}  # a string or binary
_USER_PROPERTY: Final = 0x26  # a pair of strings


def parse_properties(buf: bytes | bytearray | memoryview, pos: int, end: int) -> dict[int, int]:
    """The integer-valued MQTT 5 properties in ``buf[pos:end]`` by identifier (strings are skipped)."""
    found: dict[int, int] = {}
    if end > len(buf):
        raise ProtocolError("the properties run past the packet")
    while pos < end:
        ident = buf[pos]
        pos += 1
        size = _FIXED_SIZES.get(ident)
        if size is not None:
            found[ident] = int.from_bytes(bytes(buf[pos : pos + size]), "big")
            pos += size
        elif ident == 0x0B:  # subscription identifier, a variable-byte integer
            value = decode_varint(buf, pos)
            if value is None:
                raise ProtocolError("a property runs past the packet")
            found[ident], pos = value
        elif ident in _PREFIXED or ident == _USER_PROPERTY:
            for _ in range(2 if ident == _USER_PROPERTY else 1):
                if pos + 2 > end:
                    raise ProtocolError("a property runs past the packet")
                pos += 2 + ((buf[pos] << 8) | buf[pos + 1])
        else:
            raise ProtocolError(f"unknown MQTT 5 property {ident:#x}")
    if pos != end:
        raise ProtocolError("a property runs past the packet")
    return found


def parse_publish(first: int, body: bytes | bytearray | memoryview, tag: int = 0) -> Message:
    """A PUBLISH's fixed-header byte and body (after the remaining length) as a :class:`Message`;
    a QoS 1 message's ``mid`` is its packet id plus ``tag``."""
    qos = (first >> 1) & 0x03
    if qos > 1:
        raise ProtocolError(f"QoS {qos} was not subscribed for")
    if len(body) < 2:
        raise ProtocolError("a PUBLISH without a topic")
    topic_end = 2 + ((body[0] << 8) | body[1])
    if topic_end + 2 * qos > len(body):
        raise ProtocolError("a PUBLISH topic runs past the packet")
    try:
        topic = bytes(body[2:topic_end]).decode()
    except UnicodeDecodeError as exc:
        raise ProtocolError("a PUBLISH topic that is not UTF-8") from exc
    pos = topic_end
    mid = 0
    if qos:
        mid = tag + ((body[pos] << 8) | body[pos + 1])
        pos += 2
    props = decode_varint(body, pos)
    if props is None or props[1] + props[0] > len(body):
        raise ProtocolError("PUBLISH properties run past the packet")
    return Message(
        topic, bytes(body[props[1] + props[0] :]), mid, qos, bool(first & 0x01), bool(first & 0x08)
    )


@dataclass(slots=True)
class LeanSent:
    """What :meth:`LeanSession.publish` returns: ``rc`` 0 once queued, the message id, and its PUBACK."""

    rc: int
    mid: int
    _done: threading.Event

    def wait_for_publish(self, timeout: float | None = None) -> None:
        """Wait until the broker acknowledged it (QoS 1) or it was written (QoS 0)."""
        self._done.wait(timeout)

    def is_published(self) -> bool:
        return self._done.is_set()


@dataclass(slots=True)
class _Outgoing:
    topic: str
    payload: bytes
    qos: int
    retain: bool
    sent: LeanSent
    on_wire: bool = False  # sent on this connection, its PUBACK awaited
    tried: bool = False  # sent on some connection: a resend is marked DUP


class LeanSession:
    """One MQTT 5 connection driven by its own thread; see the module docstring."""

    def __init__(
        self,
        config: SessionConfig,
        *,
        on_connect: Callable[[LeanSession, ConnAck], None] | None = None,
        on_disconnect: Callable[[str], None] | None = None,
        on_message: Callable[[Message], None] | None = None,
        on_puback: Callable[[PubAck], None] | None = None,
        on_subscribe: Callable[[SubAck], None] | None = None,
        ready: Callable[[], bool] | None = None,
    ) -> None:
        """``ready``: whether ``on_message`` can take another message now (asked on the network
        thread before each PUBLISH); while it cannot, the session stops reading. None: always."""
        if not config.mqtt5 or config.will is not None:
            raise ConfigError("the lean MQTT session speaks MQTT 5 without a will; use MqttSession")
        self.config = config
        self._on_connect = on_connect
        self._on_disconnect = on_disconnect
        self._on_message = on_message
        self._on_puback = on_puback
        self._on_subscribe = on_subscribe
        self._ready = ready
        self._held = False  # a received PUBLISH waits for the consumer: reading is paused
        self._tls = _tls_context(config)
        self._lock = threading.Lock()
        self._out = bytearray()  # bytes for the network thread to send (guarded by _lock)
        self._inflight: dict[int, _Outgoing] = {}  # our QoS 1 publishes awaiting PUBACK (guarded)
        self._subscriptions: dict[int, int] = {}  # SUBSCRIBE mid -> topics in it
        # Received messages carry ``generation << 16 | packet id`` as their ``mid``: an ack is sent
        # only on the connection the message came in on. On a later connection the same packet id
        # may name another message (a session the broker did not keep, or an id freed by the ack
        # of a redelivered copy); what was not acknowledged comes again there with a new tag.
        self._generation = 0
        self._receive_max = 65535  # the broker's Receive Maximum: our QoS 1 publishes in flight at most
        self._on_wire = 0
        self._keepalive_s = config.keepalive_s  # the broker may set another (Server Keep Alive)
        self._next_mid = 0
        self._sock: socket.socket | None = None
        self._connected = False
        self._stopping = threading.Event()
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._woken = False
        self._thread: threading.Thread | None = None
        self._last_sent = 0.0
        self._ping_sent: float | None = None

    # Connection -----------------------------------------------------------------

    def connect(self) -> None:
        """Open TCP (and TLS) and send CONNECT; ``TransportError`` if the broker cannot be reached."""
        self._sock = self._open()

    def _open(self) -> socket.socket:
        config = self.config
        try:
            raw = socket.create_connection((config.host, config.port), timeout=10)
        except OSError as exc:  # refused or unresolvable
            raise TransportError(f"cannot reach the broker at {config.host}:{config.port}: {exc}") from exc
        try:
            raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sock: socket.socket = (
                self._tls.wrap_socket(raw, server_hostname=config.host) if self._tls is not None else raw
            )
            sock.sendall(
                connect_packet(
                    config.client_id,
                    config.keepalive_s,
                    config.persistent,
                    config.session_expiry_s,
                    config.receive_maximum,
                )
            )
        except OSError as exc:  # a TLS handshake that failed, or the connection dropped at once
            raw.close()
            raise TransportError(f"cannot reach the broker at {config.host}:{config.port}: {exc}") from exc
        sock.setblocking(False)
        self._last_sent = time.monotonic()
        self._ping_sent = None
        return sock

    def disconnect(self) -> None:
        """Send DISCONNECT (normal) and end the network thread; unacknowledged messages stay queued
        at the broker for the next session."""
        self._stopping.set()
        self._send(bytes((DISCONNECT, 0)))

    # Driving the network ----------------------------------------------------------

    def loop_start(self) -> None:
        name = f"mqtt-lean-{self.config.client_id}"
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def loop_stop(self) -> None:
        self._stopping.set()
        self._wake()
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None
        self._wake_r.close()
        self._wake_w.close()

    # Messages ------------------------------------------------------------------------

    def publish(self, topic: str, payload: bytes | str, qos: int = 1, retain: bool = False) -> LeanSent:
        """Queue a message (QoS 0 or 1); a QoS 1 one waits for its PUBACK across reconnections."""
        if qos not in (0, 1):
            raise ValueError(f"the lean session publishes at QoS 0 or 1, not {qos}")
        data = payload.encode() if isinstance(payload, str) else payload
        with self._lock:
            mid = self._mid() if qos else 0
            sent = LeanSent(0, mid, threading.Event())
            if qos:
                self._inflight[mid] = _Outgoing(topic, data, qos, retain, sent)
                self._send_waiting()
            elif self._connected:
                self._out += publish_packet(topic, data, qos, mid, retain)
            else:
                sent.rc = 4  # paho's MQTT_ERR_NO_CONN: a QoS 0 message is not kept
        if not qos and sent.rc == 0:
            sent._done.set()
        self._wake()
        return sent

    def subscribe(self, topic: str, qos: int = 1) -> None:
        with self._lock:
            mid = self._mid()
            self._subscriptions[mid] = 1
            self._out += subscribe_packet(mid, topic, qos)
        self._wake()

    def ack(self, mid: int, qos: int) -> None:
        """Acknowledge one received message (QoS 1) once it is durably handled."""
        if qos == 1:
            self.ack_many((mid,))

    def ack_many(self, mids: Iterable[int]) -> None:
        """Acknowledge a batch of received QoS 1 messages in one write.

        ``mids`` are the ``Message.mid`` tags this session handed out; those of an earlier
        connection are left out (the broker sends those messages again on this one).
        """
        with self._lock:
            generation = self._generation
            valid = [mid & 0xFFFF for mid in mids if mid >> 16 == generation]
            if valid and self._connected:
                self._out += pubacks(valid)
        self._wake()

    # The network thread ------------------------------------------------------------

    def _send(self, data: bytes) -> None:
        if not data:
            return
        with self._lock:
            if not self._connected and data[0] != DISCONNECT:
                return  # acks of a lost connection: the broker sends those messages again
            self._out += data
        self._wake()

    def _wake(self) -> None:
        if threading.current_thread() is self._thread or self._woken:
            return
        self._woken = True
        with contextlib.suppress(OSError):  # closed: the loop is stopping
            self._wake_w.send(b"\x00")

    def _mid(self) -> int:
        """The next packet id, 1..65535, skipping those still in flight (call with ``_lock``)."""
        for _ in range(65535):
            self._next_mid = self._next_mid % 65535 + 1
            if self._next_mid not in self._inflight and self._next_mid not in self._subscriptions:
                return self._next_mid
        raise TransportError("65535 messages are in flight: no packet id is free")

    def _send_waiting(self) -> None:
        """Put QoS 1 publishes on the wire while the broker's Receive Maximum allows (call with ``_lock``)."""
        if not self._connected or self._on_wire >= self._receive_max:
            return
        for mid, out in self._inflight.items():
            if self._on_wire >= self._receive_max:
                return
            if not out.on_wire:
                self._out += publish_packet(out.topic, out.payload, out.qos, mid, out.retain, dup=out.tried)
                out.on_wire = out.tried = True
                self._on_wire += 1

    def _run(self) -> None:
        delay_min, delay_max = self.config.reconnect_delay_s or (1, 5)
        while not self._stopping.is_set():
            reason = "connection lost"
            try:
                if self._sock is None:
                    self._sock = self._open()
                self._serve(self._sock)
                reason = "disconnected"
            except (OSError, TransportError) as exc:  # TransportError covers ProtocolError
                reason = str(exc)
            self._close(reason)
            if self.config.reconnect_delay_s is None or self._stopping.wait(
                random.uniform(delay_min, delay_max)  # noqa: S311 - jitter, not a secret
            ):
                return

    def _close(self, reason: str) -> None:
        with self._lock:
            was_connected = self._connected
            self._connected = False
            self._out.clear()
        if self._sock is not None:
            try:
                self._sock.close()
            finally:
                self._sock = None
        if was_connected and self._on_disconnect is not None:
            self._on_disconnect(reason)

    def _serve(self, sock: socket.socket) -> None:
        """Read and write until the connection ends or the session stops."""
        rest = b""
        self._held = False
        while True:
            keepalive = self._keepalive_s
            if self._held and self._can_take():
                rest = self._dispatch(rest)  # the consumer has room again: what waited goes first
            with self._lock:
                pending = len(self._out) > 0
            if self._stopping.is_set() and not pending:
                return
            timeout: float | None
            # TLS may hold decrypted bytes the socket no longer shows (a read cut at its cap).
            buffered = not self._held and _tls_pending(sock)
            if self._held:  # not reading: look again soon, meanwhile acks and pings still go out
                watched, timeout = [self._wake_r], _HELD_POLL_S
            else:
                watched = [sock, self._wake_r]
                timeout = 0.0 if buffered else (1.0 if keepalive else None)
            readable, writable, _ = select.select(watched, [sock] if pending else [], [], timeout)
            if self._wake_r in readable:
                self._drain_wake()
            if buffered or (not self._held and sock in readable):
                rest = self._read(sock, rest)
            if writable:
                self._write(sock)
            self._keepalive(keepalive)

    def _can_take(self) -> bool:
        return self._ready is None or self._ready()

    def _drain_wake(self) -> None:
        self._woken = False
        with contextlib.suppress(BlockingIOError):
            self._wake_r.recv(4096)

    def _read(self, sock: socket.socket, rest: bytes) -> bytes:
        """Read what the socket holds, up to ``_READ_CAP`` bytes, and dispatch it."""
        chunks = [rest] if rest else []
        size = len(rest)
        while size < _READ_CAP:
            try:
                chunk = sock.recv(_READ_BYTES)
            except (ssl.SSLWantReadError, BlockingIOError):
                break
            if not chunk:
                if chunks:
                    self._dispatch(b"".join(chunks))
                raise TransportError("the broker closed the connection")
            chunks.append(chunk)
            size += len(chunk)
        return self._dispatch(b"".join(chunks)) if chunks else rest

    def _dispatch(self, buf: bytes) -> bytes:
        """Handle every complete packet in ``buf``; return the rest: an incomplete packet, or from
        the first PUBLISH the consumer cannot take yet (``_held``)."""
        self._held = False
        pos, end = 0, len(buf)
        on_message = self._on_message
        tag = self._generation << 16
        while pos < end:
            header = decode_varint(buf, pos + 1)
            if header is None:
                break
            length, start = header
            stop = start + length
            if stop > end:
                break
            first = buf[pos]
            if first & 0xF0 == PUBLISH:
                if not self._can_take():
                    self._held = True
                    break
                message = parse_publish(first, memoryview(buf)[start:stop], tag)
                if on_message is not None:
                    on_message(message)
                elif message.qos:
                    self.ack_many((message.mid,))
            else:
                self._control(first, buf[start:stop])
                tag = self._generation << 16  # a CONNACK starts a generation: what follows is its
            pos = stop
        return buf[pos:]

    def _control(self, first: int, body: bytes) -> None:
        kind = first & 0xF0
        if kind == CONNACK:
            self._connack(body)
        elif kind == PUBACK:
            self._puback(body)
        elif kind == SUBACK:
            self._suback(body)
        elif kind == PINGRESP:
            self._ping_sent = None
        elif kind == DISCONNECT:
            reason = body[0] if body else 0
            raise TransportError(f"the broker ended the session (reason {reason:#x})")
        else:
            raise ProtocolError(f"unexpected MQTT packet type {kind >> 4}")

    def _connack(self, body: bytes) -> None:
        if len(body) < 2:
            raise ProtocolError(f"a CONNACK of {len(body)} bytes")
        session_present, code = bool(body[0] & 0x01), body[1]
        ok = code < 0x80
        if ok:
            props = decode_varint(body, 2)
            if props is None:
                raise ProtocolError("CONNACK properties run past the packet")
            found = parse_properties(body, props[1], props[1] + props[0])
            self._keepalive_s = found.get(0x13, self.config.keepalive_s)
            with self._lock:
                self._connected = True
                self._generation += 1
                self._receive_max = found.get(0x21, 65535) or 65535
                # QoS 1 messages not yet acknowledged go again (DUP when sent before).
                self._on_wire = 0
                for out in self._inflight.values():
                    out.on_wire = False
                self._send_waiting()
        log.debug("CONNACK reason %#x, session present %s", code, session_present)
        if self._on_connect is not None:
            self._on_connect(self, ConnAck(ok, _reason_name(code)))
        if not ok:
            raise TransportError(f"the broker refused the connection ({_reason_name(code)})")

    def _puback(self, body: bytes) -> None:
        if len(body) < 2:
            raise ProtocolError(f"a PUBACK of {len(body)} bytes")
        mid = (body[0] << 8) | body[1]
        code = body[2] if len(body) > 2 else 0
        with self._lock:
            out = self._inflight.pop(mid, None)
            if out is not None and out.on_wire:
                self._on_wire -= 1
            self._send_waiting()
        if out is None:
            return
        out.sent._done.set()
        if self._on_puback is not None:
            delivery = puback_delivery(code)
            self._on_puback(PubAck(mid, delivery, "" if code == 0 else _reason_name(code)))

    def _suback(self, body: bytes) -> None:
        if len(body) < 2:
            raise ProtocolError(f"a SUBACK of {len(body)} bytes")
        mid = (body[0] << 8) | body[1]
        props = decode_varint(body, 2)
        if props is None:
            raise ProtocolError("SUBACK properties run past the packet")
        codes = body[props[1] + props[0] :]
        self._subscriptions.pop(mid, None)
        if self._on_subscribe is not None:
            self._on_subscribe(SubAck(all(c < 0x80 for c in codes), str([_reason_name(c) for c in codes])))

    def _write(self, sock: socket.socket) -> None:
        with self._lock:
            data = bytes(self._out)
        try:
            sent = sock.send(data)
        except (ssl.SSLWantWriteError, ssl.SSLWantReadError, BlockingIOError):
            return
        with self._lock:
            del self._out[:sent]
        self._last_sent = time.monotonic()
        if data[:1] == bytes((DISCONNECT,)) and sent == len(data):
            self._stopping.set()

    def _keepalive(self, keepalive: int) -> None:
        if not keepalive:
            return
        now = time.monotonic()
        # While reading is paused the answer waits unread behind the messages held back: the broker
        # is not silent, we are not listening. Ping on (the broker drops a client silent for 1.5
        # keepalives), and time the answer from the latest ping once reading resumes.
        if self._ping_sent is not None and not self._held and now - self._ping_sent > 2 * keepalive:
            raise TransportError("the broker did not answer a keepalive ping")
        if (self._ping_sent is None or self._held) and now - self._last_sent >= keepalive:
            self._ping_sent = now
            with self._lock:
                self._out += PINGREQ


_REASONS: Final = {
    0x00: "Success",
    0x10: "No matching subscribers",
    0x80: "Unspecified error",
    0x84: "Unsupported protocol version",
    0x85: "Client identifier not valid",
    0x86: "Bad user name or password",
    0x87: "Not authorized",
    0x88: "Server unavailable",
    0x8A: "Banned",
    0x8F: "Topic filter invalid",
    0x90: "Topic name invalid",
    0x97: "Quota exceeded",
    0x9E: "Shared subscriptions not supported",
}


def _tls_pending(sock: socket.socket) -> bool:
    """Whether TLS holds decrypted bytes not read yet (``select`` on the socket does not see them)."""
    return isinstance(sock, ssl.SSLSocket) and sock.pending() > 0


def _reason_name(code: int) -> str:
    return _REASONS.get(code, f"reason {code:#x}")


def _tls_context(config: SessionConfig) -> ssl.SSLContext | None:
    """The same mutual-TLS context paho's ``tls_set`` builds: the chain and host name verified."""
    tls = config.tls
    if tls is None or isinstance(tls, ssl.SSLContext):
        return tls
    assert isinstance(tls, TlsFiles)
    try:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.load_verify_locations(cafile=str(tls.ca_file))
        context.load_cert_chain(str(tls.cert_file), str(tls.key_file))
    except (OSError, ValueError) as exc:  # ssl.SSLError is an OSError
        raise ConfigError(
            f"the TLS files of MQTT client {config.client_id} do not load ({exc}): "
            f"check {tls.ca_file}, {tls.cert_file} and {tls.key_file}"
        ) from exc
    return context
