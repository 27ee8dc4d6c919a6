"""A minimal MQTT 5 client on asyncio streams, for thousands of device connections in one process.

paho keeps a thread, a lock and several buffers per client; ten thousand of them
do not fit one process on a small machine. A device in :mod:`bench.city` needs
only this much of MQTT 5 over mutual TLS: CONNECT/CONNACK, SUBSCRIBE/SUBACK to its
command topic, PUBLISH at QoS 1 with PUBACK (and its reason code: 0x80 and up is a
refusal, as :func:`roadside.mqttlink.puback_delivery` reads it), incoming QoS 1
PUBLISH acknowledged, PINGREQ. No properties are sent; those received are skipped.
It is a benchmark's client: the product's devices use :mod:`roadside.mqttlink`.
"""

from __future__ import annotations

import asyncio
import ssl
import struct
from collections.abc import Callable
from typing import Final

CONNECT: Final = 1
CONNACK: Final = 2
PUBLISH: Final = 3
PUBACK: Final = 4
SUBSCRIBE: Final = 8
SUBACK: Final = 9
PINGREQ: Final = 12
PINGRESP: Final = 13
DISCONNECT: Final = 14


class MqttProtocolError(Exception):
    """The broker sent something this client cannot read, or refused the connection."""


def varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n % 128, n // 128
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def utf8(text: str) -> bytes:
    raw = text.encode()
    return struct.pack("!H", len(raw)) + raw


def packet(kind: int, flags: int, body: bytes) -> bytes:
    return bytes([kind << 4 | flags]) + varint(len(body)) + body


def connect_packet(client_id: str, keepalive_s: int) -> bytes:
    # Protocol "MQTT" level 5; flags: clean start; no properties.
    body = utf8("MQTT") + bytes([5, 0x02]) + struct.pack("!H", keepalive_s) + varint(0) + utf8(client_id)
    return packet(CONNECT, 0, body)


def publish_packet(topic: str, payload: bytes, packet_id: int) -> bytes:
    return packet(PUBLISH, 0x02, utf8(topic) + struct.pack("!H", packet_id) + varint(0) + payload)


def subscribe_packet(topic: str, packet_id: int) -> bytes:
    return packet(SUBSCRIBE, 0x02, struct.pack("!H", packet_id) + varint(0) + utf8(topic) + bytes([1]))


def puback_packet(packet_id: int) -> bytes:
    return packet(PUBACK, 0, struct.pack("!H", packet_id))


async def read_packet(reader: asyncio.StreamReader) -> tuple[int, int, bytes]:
    """(type, flags, body) of the next packet; ``IncompleteReadError`` at end of stream."""
    first = (await reader.readexactly(1))[0]
    length, shift = 0, 0
    while True:
        byte = (await reader.readexactly(1))[0]
        length |= (byte & 0x7F) << shift
        if not byte & 0x80:
            break
        shift += 7
        if shift > 21:
            raise MqttProtocolError("remaining length over four bytes")
    return first >> 4, first & 0x0F, await reader.readexactly(length)


def read_varint(data: bytes, at: int) -> tuple[int, int]:
    value, shift = 0, 0
    while True:
        byte = data[at]
        at += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, at
        shift += 7


class LiteSession:
    """One connected device. ``on_puback(packet_id, reason)`` and ``on_message(topic, payload)``
    run on the event loop; :meth:`run` reads until the connection ends."""

    def __init__(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        on_puback: Callable[[int, int], None],
        on_message: Callable[[str, bytes], None],
    ) -> None:
        self.reader = reader
        self.writer = writer
        self.on_puback = on_puback
        self.on_message = on_message
        self._next_id = 0
        self.subscribed = asyncio.Event()

    @classmethod
    async def open(
        cls,
        host: str,
        port: int,
        tls: ssl.SSLContext,
        client_id: str,
        keepalive_s: int,
        on_puback: Callable[[int, int], None],
        on_message: Callable[[str, bytes], None],
        timeout_s: float = 30.0,
    ) -> LiteSession:
        """TLS, CONNECT and CONNACK; ``MqttProtocolError`` if the broker refuses."""
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection(host, port, ssl=tls, server_hostname=host), timeout_s
        )
        try:
            writer.write(connect_packet(client_id, keepalive_s))
            kind, _flags, body = await asyncio.wait_for(read_packet(reader), timeout_s)
            if kind != CONNACK or len(body) < 2 or body[1] >= 0x80:
                raise MqttProtocolError(f"connection refused (packet {kind}, {body[:2].hex()})")
        except BaseException:
            writer.close()
            raise
        return cls(reader, writer, on_puback, on_message)

    def next_id(self) -> int:
        self._next_id = self._next_id % 65535 + 1
        return self._next_id

    def publish(self, topic: str, payload: bytes) -> int:
        """Send at QoS 1; the packet id its PUBACK will carry."""
        packet_id = self.next_id()
        self.writer.write(publish_packet(topic, payload, packet_id))
        return packet_id

    def subscribe(self, topic: str) -> None:
        self.writer.write(subscribe_packet(topic, self.next_id()))

    def ping(self) -> None:
        self.writer.write(packet(PINGREQ, 0, b""))

    async def run(self) -> None:
        """Dispatch packets until the broker or the network ends the connection."""
        while True:
            kind, flags, body = await read_packet(self.reader)
            if kind == PUBACK:
                packet_id = struct.unpack_from("!H", body)[0]
                self.on_puback(packet_id, body[2] if len(body) > 2 else 0)
            elif kind == PUBLISH:
                self._received(flags, body)
            elif kind == SUBACK:
                _pid = struct.unpack_from("!H", body)[0]
                props, at = read_varint(body, 2)
                if all(code < 0x80 for code in body[at + props :]):
                    self.subscribed.set()
            elif kind == DISCONNECT:
                return

    def _received(self, flags: int, body: bytes) -> None:
        qos = (flags >> 1) & 0x03
        topic_len = struct.unpack_from("!H", body)[0]
        topic = body[2 : 2 + topic_len].decode()
        at = 2 + topic_len
        if qos:
            packet_id = struct.unpack_from("!H", body, at)[0]
            at += 2
            self.writer.write(puback_packet(packet_id))
        props, at = read_varint(body, at)
        self.on_message(topic, body[at + props :])

    def close(self) -> None:
        if not self.writer.is_closing():
            self.writer.write(packet(DISCONNECT, 0, b""))
            self.writer.close()
