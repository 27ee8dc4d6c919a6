"""One MQTT client session over paho-mqtt 2, the way every Roadside part connects.

A :class:`MqttSession` is one paho client: build it from a
:class:`SessionConfig` and the callbacks the caller cares about, ``connect``,
then drive it with paho's own thread (``loop_start``), from the caller's
thread (``loop``), or from a selector (``loop_read``/``loop_write``/
``loop_misc``, for one thread driving many sessions). Callbacks run on
whichever thread drives the session and receive plain values
(:class:`Message`, :class:`PubAck`, :class:`ConnAck`, :class:`SubAck`),
never paho types, so no caller needs paho.

Errors: credentials that do not load raise ``ConfigError`` when the session
is built; a broker that cannot be reached (refused, unresolvable, a failed
TLS handshake) raises ``TransportError`` from :meth:`MqttSession.connect`,
always ``from`` the cause. A refused CONNECT arrives as ``ConnAck(ok=False)``.

Reconnecting: with ``reconnect_delay_s`` paho's loop thread reconnects by
itself (the hub keeps one persistent session this way); without it, a caller
that wants a fresh session per connection (the agent, docs/adr/0002) builds a
new :class:`MqttSession` each time and waits with :class:`roadside.shared.backoff.Backoff`.
"""

from __future__ import annotations

import enum
import socket
import ssl
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, NamedTuple, Protocol

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from roadside.shared.errors import ConfigError, TransportError

# MQTT 5 PUBACK reason 16: "No matching subscribers". A success code, yet nobody got the
# message: Mosquitto answers it when no hub is subscribed (docs/adr/0006).
NO_MATCHING_SUBSCRIBERS: Final = 16
_FAILURE: Final = 0x80  # MQTT 5 reason codes from here on are failures


class Delivery(enum.Enum):
    """What a PUBACK says happened to a QoS 1 message."""

    DELIVERED = "delivered"  # the broker took it, and someone was subscribed
    UNROUTED = "unrouted"  # the broker took it, and nobody was subscribed: not a delivery
    REFUSED = "refused"  # the broker refused it (e.g. 135, not authorised)


def puback_delivery(reason_code: int) -> Delivery:
    """The PUBACK-16 rule: reason 16 is not a delivery; 0x80 and above are refusals."""
    if reason_code >= _FAILURE:
        return Delivery.REFUSED
    if reason_code == NO_MATCHING_SUBSCRIBERS:
        return Delivery.UNROUTED
    return Delivery.DELIVERED


class Message(NamedTuple):
    """A received message (a NamedTuple: one is built per message on the hot path)."""

    topic: str
    payload: bytes
    mid: int
    qos: int
    retain: bool
    dup: bool = False  # the broker sent it before (MQTT's DUP flag): a redelivery after a lost ack


class PubAck(NamedTuple):
    mid: int
    delivery: Delivery
    reason: str  # the broker's reason, when not delivered; "" when delivered


class ConnAck(NamedTuple):
    ok: bool
    reason: str


class SubAck(NamedTuple):
    ok: bool  # every topic of the SUBSCRIBE granted
    reasons: str


class Sent(Protocol):
    """What :meth:`MqttSession.publish` returns: ``rc`` 0 when queued, and its message id."""

    @property
    def rc(self) -> int: ...

    @property
    def mid(self) -> int: ...

    def wait_for_publish(self, timeout: float | None = None) -> None: ...


@dataclass(frozen=True, slots=True)
class TlsFiles:
    """Mutual TLS from files on disk (the hub's identity)."""

    ca_file: Path
    cert_file: Path
    key_file: Path


@dataclass(frozen=True, slots=True)
class Will:
    topic: str
    payload: bytes | str
    qos: int = 1
    retain: bool = True


@dataclass(frozen=True, slots=True)
class SessionConfig:
    host: str
    port: int
    client_id: str
    mqtt5: bool = True  # False: MQTT 3.1.1 (local sensor brokers)
    persistent: bool = False  # keep the session across connections (clean start / clean session off)
    session_expiry_s: int | None = None  # MQTT 5: how long the broker keeps a persistent session
    keepalive_s: int = 60
    tls: ssl.SSLContext | TlsFiles | None = None  # None: plain TCP (a loopback-only local broker)
    will: Will | None = None
    max_inflight: int | None = None  # paho's default (20) when None
    max_queued: int | None = None  # 0: unlimited, paho's default
    manual_ack: bool = False  # QoS 1 messages are acknowledged by :meth:`MqttSession.ack`
    reconnect_delay_s: tuple[int, int] | None = None  # (min, max): paho's loop thread reconnects
    # MQTT 5: how many unacknowledged QoS 1 messages the broker may send us at once. Unset, Mosquitto
    # sends at most its max_inflight_messages (20): a hub acknowledging per batch got batches of 20.
    receive_maximum: int | None = None


class MqttSession:
    """One paho client, configured once; see the module docstring."""

    def __init__(
        self,
        config: SessionConfig,
        *,
        on_connect: Callable[[MqttSession, ConnAck], None] | None = None,
        on_disconnect: Callable[[str], None] | None = None,
        on_message: Callable[[Message], None] | None = None,
        on_puback: Callable[[PubAck], None] | None = None,
        on_subscribe: Callable[[SubAck], None] | None = None,
        on_socket_write: Callable[[], None] | None = None,
    ) -> None:
        self.config = config
        self._client = _build_client(config)
        if on_connect is not None:
            self._client.on_connect = lambda _c, _u, _f, reason, _p: on_connect(
                self, ConnAck(not reason.is_failure, str(reason))
            )
        if on_disconnect is not None:
            self._client.on_disconnect = lambda _c, _u, _f, reason, _p: on_disconnect(str(reason))
        if on_message is not None:
            self._client.on_message = lambda _c, _u, m: on_message(
                Message(m.topic, bytes(m.payload), m.mid, m.qos, bool(m.retain), bool(m.dup))
            )
        if on_puback is not None:
            self._client.on_publish = lambda _c, _u, mid, reason, _p: on_puback(_puback(mid, reason))
        if on_subscribe is not None:
            self._client.on_subscribe = lambda _c, _u, _m, reasons, _p: on_subscribe(
                SubAck(not any(r.is_failure for r in reasons), str([str(r) for r in reasons]))
            )
        if on_socket_write is not None:
            self._client.on_socket_register_write = lambda _c, _u, _s: on_socket_write()

    # Connection -----------------------------------------------------------------

    def connect(self) -> None:
        """Open the TCP (and TLS) connection and send CONNECT; ``TransportError`` if unreachable."""
        config = self.config
        try:
            if config.mqtt5:
                self._client.connect(
                    config.host,
                    config.port,
                    keepalive=config.keepalive_s,
                    clean_start=not config.persistent,
                    properties=_connect_properties(config),
                )
            else:
                self._client.connect(config.host, config.port, keepalive=config.keepalive_s)
        except OSError as exc:  # refused, unresolvable, or a TLS handshake that failed
            raise TransportError(f"cannot reach the broker at {config.host}:{config.port}: {exc}") from exc

    def disconnect(self) -> None:
        self._client.disconnect()

    # Driving the network ----------------------------------------------------------

    def loop_start(self) -> None:
        """Drive the session from paho's own network thread."""
        self._client.loop_start()

    def loop_stop(self) -> None:
        self._client.loop_stop()

    def loop(self, timeout_s: float) -> bool:
        """Drive it from this thread for up to ``timeout_s``; False when the connection is gone."""
        return self._client.loop(timeout=timeout_s) == MQTTErrorCode.MQTT_ERR_SUCCESS

    def socket(self) -> socket.socket | ssl.SSLSocket | None:
        """The connection's socket, for a selector driving many sessions."""
        sock = self._client.socket()
        return sock if isinstance(sock, socket.socket) else None

    def want_write(self) -> bool:
        return self._client.want_write()

    def loop_read(self) -> bool:
        """Read what the socket has; False when the connection is gone."""
        return self._client.loop_read() == MQTTErrorCode.MQTT_ERR_SUCCESS

    def loop_write(self) -> bool:
        return self._client.loop_write() == MQTTErrorCode.MQTT_ERR_SUCCESS

    def loop_misc(self) -> bool:
        """Keepalive pings and timeouts; call about once a second."""
        return self._client.loop_misc() == MQTTErrorCode.MQTT_ERR_SUCCESS

    # Messages ------------------------------------------------------------------------

    def publish(self, topic: str, payload: bytes | str, qos: int = 1, retain: bool = False) -> Sent:
        """Queue a message; ``rc`` is non-zero when it could not be (e.g. not connected)."""
        return self._client.publish(topic, payload, qos=qos, retain=retain)

    def subscribe(self, topic: str, qos: int = 1) -> None:
        self._client.subscribe(topic, qos=qos)

    def ack(self, mid: int, qos: int) -> None:
        """Acknowledge a received message (``manual_ack`` sessions), once it is durably handled."""
        self._client.ack(mid, qos)


def _build_client(config: SessionConfig) -> mqtt.Client:
    if config.mqtt5:
        client = mqtt.Client(
            callback_api_version=CallbackAPIVersion.VERSION2,
            client_id=config.client_id,
            protocol=mqtt.MQTTv5,
            manual_ack=config.manual_ack,
        )
    else:
        client = mqtt.Client(
            callback_api_version=CallbackAPIVersion.VERSION2,
            client_id=config.client_id,
            clean_session=not config.persistent,
            protocol=mqtt.MQTTv311,
            manual_ack=config.manual_ack,
        )
    _set_tls(client, config)
    if config.will is not None:
        will = config.will
        client.will_set(will.topic, will.payload, qos=will.qos, retain=will.retain)
    if config.max_inflight is not None:
        client.max_inflight_messages_set(config.max_inflight)
    if config.max_queued is not None:
        client.max_queued_messages_set(config.max_queued)
    if config.reconnect_delay_s is not None:
        client.reconnect_delay_set(
            min_delay=config.reconnect_delay_s[0], max_delay=config.reconnect_delay_s[1]
        )
    return client


def _set_tls(client: mqtt.Client, config: SessionConfig) -> None:
    tls = config.tls
    if isinstance(tls, ssl.SSLContext):
        client.tls_set_context(tls)
    elif isinstance(tls, TlsFiles):
        try:
            client.tls_set(ca_certs=str(tls.ca_file), certfile=str(tls.cert_file), keyfile=str(tls.key_file))
        except (OSError, ValueError) as exc:  # ssl.SSLError is an OSError
            raise ConfigError(
                f"the TLS files of MQTT client {config.client_id} do not load ({exc}): "
                f"check {tls.ca_file}, {tls.cert_file} and {tls.key_file}"
            ) from exc


def _connect_properties(config: SessionConfig) -> Properties | None:
    if config.session_expiry_s is None and config.receive_maximum is None:
        return None
    properties = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
    if config.session_expiry_s is not None:
        properties.SessionExpiryInterval = config.session_expiry_s
    if config.receive_maximum is not None:
        properties.ReceiveMaximum = config.receive_maximum
    return properties


def _puback(mid: int, reason: ReasonCode | Any) -> PubAck:
    delivery = puback_delivery(int(reason.value))
    return PubAck(mid, delivery, "" if delivery is Delivery.DELIVERED else str(reason))
