"""Roadside's one MQTT session wrapper: the only module outside the tests that imports paho.

The agent's uplink, local sensors, the hub's ingest and the benchmarks all
reach a broker through :class:`MqttSession`. It owns what each of them used
to write for itself: building the client (MQTT 5 or 3.1.1, persistent or
clean sessions, session expiry, a last will, in-flight limits, manual
acknowledgements), TLS (a ready context, or CA/certificate/key files), the
PUBACK reading (reason 16, "no matching subscribers", is *not* a delivery:
docs/adr/0006) and the mapping of paho's and the socket layer's errors to
:mod:`roadside.shared.errors` (``ConfigError`` for credentials that do not load,
``TransportError`` for a broker that cannot be reached). See
docs/adr/0009-one-mqtt-session-wrapper.md for why it is a package of its
own: ``shared`` imports no network library, and ``edge`` and ``cloud`` must
not import each other.
"""

from roadside.mqttlink.lean import LeanSent, LeanSession
from roadside.mqttlink.session import (
    ConnAck,
    Delivery,
    Message,
    MqttSession,
    PubAck,
    Sent,
    SessionConfig,
    SubAck,
    TlsFiles,
    Will,
    puback_delivery,
)
from roadside.mqttlink.tls import context_from_pem

__all__ = [
    "ConnAck",
    "Delivery",
    "LeanSent",
    "LeanSession",
    "Message",
    "MqttSession",
    "PubAck",
    "Sent",
    "SessionConfig",
    "SubAck",
    "TlsFiles",
    "Will",
    "context_from_pem",
    "puback_delivery",
]
