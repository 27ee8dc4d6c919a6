"""The MQTT session wrapper against a real Mosquitto with mutual TLS and the Roadside ACL."""

from __future__ import annotations

import queue
import socket
import threading
from dataclasses import replace

import pytest

from roadside.mqttlink import ConnAck, Delivery, Message, MqttSession, PubAck, SessionConfig, TlsFiles
from roadside.shared import topics
from roadside.shared.errors import TransportError
from tests.component.conftest import BrokerHarness

TIMEOUT_S = 5.0


class _Recorder:
    def __init__(self) -> None:
        self.connected = threading.Event()
        self.acks: queue.Queue[PubAck] = queue.Queue()
        self.messages: queue.Queue[Message] = queue.Queue()
        self.subscribed = threading.Event()

    def on_connect(self, _session: MqttSession, ack: ConnAck) -> None:
        if ack.ok:
            self.connected.set()


def _session(broker: BrokerHarness, cn: str, recorder: _Recorder, *, hub: bool = False) -> MqttSession:
    files = broker.cert_for(cn)
    tls = TlsFiles(broker.broker.ca_file, files.cert, files.key)
    config = SessionConfig(broker.host, broker.port, cn, tls=tls)
    if hub:  # as the ingest service connects
        config = replace(config, persistent=True, session_expiry_s=60, manual_ack=True)
    session = MqttSession(
        config,
        on_connect=recorder.on_connect,
        on_puback=recorder.acks.put,
        on_message=recorder.messages.put,
        on_subscribe=lambda _ack: recorder.subscribed.set(),
    )
    session.connect()
    session.loop_start()
    assert recorder.connected.wait(TIMEOUT_S), broker.broker.log_tail()
    return session


def test_puback_16_is_unrouted_then_delivered_once_a_hub_subscribes(broker: BrokerHarness, site: str) -> None:
    device, hub = _Recorder(), _Recorder()
    dev = _session(broker, "dev-a", device)
    topic = topics.uplink(site, "dev-a", "counts")
    try:
        sent = dev.publish(topic, b"1")
        assert sent.rc == 0
        assert device.acks.get(timeout=TIMEOUT_S).delivery is Delivery.UNROUTED
        hub_session = _session(broker, "hub", hub, hub=True)
        try:
            hub_session.subscribe(topics.hub_subscription("hub"))
            assert hub.subscribed.wait(TIMEOUT_S)
            dev.publish(topic, b"2")
            assert device.acks.get(timeout=TIMEOUT_S).delivery is Delivery.DELIVERED
            message = hub.messages.get(timeout=TIMEOUT_S)
            assert (message.topic, message.payload, message.qos) == (topic, b"2", 1)
            hub_session.ack(message.mid, message.qos)
        finally:
            hub_session.disconnect()
            hub_session.loop_stop()
    finally:
        dev.disconnect()
        dev.loop_stop()


def test_a_topic_outside_the_acl_is_refused(broker: BrokerHarness, site: str) -> None:
    device = _Recorder()
    dev = _session(broker, "dev-a", device)
    try:
        dev.publish(topics.uplink(site, "dev-b", "counts"), b"forged")
        ack = device.acks.get(timeout=TIMEOUT_S)
        assert ack.delivery is Delivery.REFUSED
        assert ack.reason  # the broker's reason, for the log
    finally:
        dev.disconnect()
        dev.loop_stop()


def test_an_unreachable_broker_is_a_transport_error() -> None:
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    session = MqttSession(SessionConfig("127.0.0.1", port, "dev-a"))
    with pytest.raises(TransportError, match=f"127.0.0.1:{port}") as caught:
        session.connect()
    assert isinstance(caught.value.__cause__, OSError)
