"""The lean MQTT 5 session (the hub's ingest link) against a real Mosquitto with mutual TLS and the ACL."""

from __future__ import annotations

import queue
import socket
import threading
import time
from dataclasses import replace

import pytest

from roadside.mqttlink import (
    ConnAck,
    Delivery,
    LeanSession,
    Message,
    MqttSession,
    PubAck,
    SessionConfig,
    TlsFiles,
)
from roadside.shared import topics
from roadside.shared.errors import TransportError
from tests.component.conftest import BrokerHarness

TIMEOUT_S = 5.0


class _Recorder:
    def __init__(self) -> None:
        self.connected = threading.Event()
        self.disconnected = threading.Event()
        self.acks: queue.Queue[PubAck] = queue.Queue()
        self.messages: queue.Queue[Message] = queue.Queue()
        self.subscribed: queue.Queue[bool] = queue.Queue()

    def on_connect(self, _session: object, ack: ConnAck) -> None:
        if ack.ok:
            self.connected.set()

    def drain(self, n: int) -> list[Message]:
        return [self.messages.get(timeout=TIMEOUT_S) for _ in range(n)]


def _config(broker: BrokerHarness, cn: str) -> SessionConfig:
    files = broker.cert_for(cn)
    return SessionConfig(
        broker.host, broker.port, cn, tls=TlsFiles(broker.broker.ca_file, files.cert, files.key)
    )


def _hub(broker: BrokerHarness, recorder: _Recorder, **changes: object) -> LeanSession:
    config = replace(
        _config(broker, "hub"), persistent=True, session_expiry_s=60, manual_ack=True, receive_maximum=1000
    )
    session = LeanSession(
        replace(config, **changes),  # type: ignore[arg-type]
        on_connect=recorder.on_connect,
        on_disconnect=lambda _reason: recorder.disconnected.set(),
        on_message=recorder.messages.put,
        on_puback=recorder.acks.put,
        on_subscribe=lambda ack: recorder.subscribed.put(ack.ok),
    )
    session.connect()
    session.loop_start()
    assert recorder.connected.wait(TIMEOUT_S), broker.broker.log_tail()
    return session


def _device(broker: BrokerHarness, cn: str, recorder: _Recorder) -> MqttSession:
    session = MqttSession(_config(broker, cn), on_connect=recorder.on_connect, on_puback=recorder.acks.put)
    session.connect()
    session.loop_start()
    assert recorder.connected.wait(TIMEOUT_S), broker.broker.log_tail()
    return session


def _stop(session: LeanSession | MqttSession) -> None:
    session.disconnect()
    session.loop_stop()


def test_a_batch_acknowledged_in_one_write_is_not_delivered_again(broker: BrokerHarness, site: str) -> None:
    hub_seen, device_seen = _Recorder(), _Recorder()
    hub = _hub(broker, hub_seen)
    hub.subscribe(topics.hub_subscription("hub"))
    assert hub_seen.subscribed.get(timeout=TIMEOUT_S)
    dev = _device(broker, "dev-a", device_seen)
    topic = topics.uplink(site, "dev-a", "counts")
    try:
        payloads = [f"m{i}".encode() * (i % 7 + 1) for i in range(300)]  # many packets per TLS read
        for payload in payloads:
            dev.publish(topic, payload)
        received = hub_seen.drain(len(payloads))
        assert [(m.topic, m.payload, m.qos) for m in received] == [(topic, p, 1) for p in payloads]
        assert {device_seen.acks.get(timeout=TIMEOUT_S).delivery for _ in payloads} == {Delivery.DELIVERED}
        hub.ack_many([m.mid for m in received])
    finally:
        _stop(dev)
        _stop(hub)
    again = _Recorder()
    hub = _hub(broker, again)  # the same persistent session: nothing is left to deliver
    try:
        with pytest.raises(queue.Empty):
            again.messages.get(timeout=1.0)
    finally:
        _stop(hub)


def test_what_was_not_acknowledged_comes_again_on_the_next_connection(
    broker: BrokerHarness, site: str
) -> None:
    first, device_seen = _Recorder(), _Recorder()
    hub = _hub(broker, first)
    hub.subscribe(topics.hub_subscription("hub"))
    assert first.subscribed.get(timeout=TIMEOUT_S)
    dev = _device(broker, "dev-a", device_seen)
    topic = topics.uplink(site, "dev-a", "counts")
    try:
        for i in range(10):
            dev.publish(topic, f"{i}".encode())
        received = first.drain(10)
        hub.ack_many([m.mid for m in received[:4]])  # the first four only were made durable
        # A QoS 1 publish after the acks: once its PUBACK is back, the broker has read the acks too.
        hub.publish(topics.command("dev-a"), b"flush", qos=1).wait_for_publish(TIMEOUT_S)
    finally:
        _stop(dev)
        _stop(hub)
    second = _Recorder()
    hub = _hub(broker, second)
    try:
        again = second.drain(6)
        assert [m.payload for m in again] == [f"{i}".encode() for i in range(4, 10)]
        hub.ack_many([m.mid for m in again])
    finally:
        _stop(hub)


def test_publish_waits_for_its_puback_and_reads_reason_16(broker: BrokerHarness, site: str) -> None:
    hub_seen, device_seen = _Recorder(), _Recorder()
    hub = _hub(broker, hub_seen)
    try:
        sent = hub.publish(topics.command("dev-a"), b"nobody listens", qos=1)
        sent.wait_for_publish(TIMEOUT_S)
        assert (sent.rc, sent.is_published()) == (0, True)
        assert hub_seen.acks.get(timeout=TIMEOUT_S).delivery is Delivery.UNROUTED
        files = broker.cert_for("dev-a")
        listener = MqttSession(
            SessionConfig(
                broker.host, broker.port, "dev-a", tls=TlsFiles(broker.broker.ca_file, files.cert, files.key)
            ),
            on_connect=lambda session, _ack: session.subscribe(topics.command("dev-a")),
            on_message=device_seen.messages.put,
            on_subscribe=lambda _ack: device_seen.connected.set(),
        )
        listener.connect()
        listener.loop_start()
        try:
            assert device_seen.connected.wait(TIMEOUT_S)
            for i in range(50):  # more than Mosquitto's default in-flight window of 20
                hub.publish(topics.command("dev-a"), f"c{i}".encode(), qos=1)
            assert [m.payload for m in device_seen.drain(50)] == [f"c{i}".encode() for i in range(50)]
            assert {hub_seen.acks.get(timeout=TIMEOUT_S).delivery for _ in range(50)} == {Delivery.DELIVERED}
        finally:
            _stop(listener)
    finally:
        _stop(hub)


def test_the_receive_maximum_lets_more_than_20_messages_wait_for_their_ack(
    broker: BrokerHarness, site: str
) -> None:
    """Unset, Mosquitto holds a client to 20 unacknowledged messages (max_inflight_messages)."""
    for receive_maximum, expected in ((None, 20), (100, 100)):
        hub_seen, device_seen = _Recorder(), _Recorder()
        hub = _hub(broker, hub_seen, receive_maximum=receive_maximum, persistent=False, session_expiry_s=None)
        hub.subscribe(topics.hub_subscription("hub"))
        assert hub_seen.subscribed.get(timeout=TIMEOUT_S)
        dev = _device(broker, "dev-a", device_seen)
        try:
            for i in range(150):
                dev.publish(topics.uplink(site, "dev-a", "counts"), f"{i}".encode())
            received = hub_seen.drain(expected)
            with pytest.raises(queue.Empty):  # no more until some are acknowledged
                hub_seen.messages.get(timeout=0.5)
            hub.ack_many([m.mid for m in received])
            assert len(hub_seen.drain(min(expected, 150 - expected))) == min(expected, 150 - expected)
        finally:
            _stop(dev)
            _stop(hub)


def test_acks_of_a_session_the_broker_did_not_keep_are_not_sent(broker: BrokerHarness, site: str) -> None:
    """A clean session reuses packet ids: a late ack of the old connection's message must not
    acknowledge the new message that now has its id (that one would be lost on a crash)."""
    hub_seen, device_seen = _Recorder(), _Recorder()

    def on_connect(session: LeanSession, ack: ConnAck) -> None:
        hub_seen.on_connect(session, ack)
        session.subscribe(topics.hub_subscription("hub"))

    config = replace(_config(broker, "hub"), manual_ack=True, receive_maximum=1, reconnect_delay_s=(0, 0))
    hub = LeanSession(config, on_connect=on_connect, on_message=hub_seen.messages.put,
                      on_disconnect=lambda _r: hub_seen.disconnected.set(),
                      on_subscribe=lambda ack: hub_seen.subscribed.put(ack.ok))  # fmt: skip
    hub.connect()
    hub.loop_start()
    dev = _device(broker, "dev-a", device_seen)
    topic = topics.uplink(site, "dev-a", "counts")
    try:
        assert hub_seen.subscribed.get(timeout=TIMEOUT_S)
        dev.publish(topic, b"A")
        (first,) = hub_seen.drain(1)
        hub_seen.connected.clear()
        assert hub._sock is not None
        hub._sock.shutdown(socket.SHUT_RDWR)  # the connection drops; the session reconnects, clean
        assert hub_seen.disconnected.wait(TIMEOUT_S)
        assert hub_seen.connected.wait(TIMEOUT_S)
        assert hub_seen.subscribed.get(timeout=TIMEOUT_S)
        dev.publish(topic, b"B")
        dev.publish(topic, b"C")
        (second,) = hub_seen.drain(1)
        assert second.payload == b"B"
        assert (second.mid & 0xFFFF, second.mid != first.mid) == (first.mid & 0xFFFF, True)  # same packet id
        hub.ack_many([first.mid])  # late, from the lost connection: must not acknowledge B
        with pytest.raises(queue.Empty):  # B unacknowledged: C waits (Receive Maximum 1)
            hub_seen.messages.get(timeout=1.0)
        hub.ack_many([second.mid])
        assert hub_seen.drain(1)[0].payload == b"C"
    finally:
        _stop(dev)
        _stop(hub)


def test_an_unreachable_broker_is_a_transport_error() -> None:
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    session = LeanSession(SessionConfig("127.0.0.1", port, "hub"))
    with pytest.raises(TransportError, match=f"127.0.0.1:{port}") as caught:
        session.connect()
    assert isinstance(caught.value.__cause__, OSError)


def test_a_hub_that_is_behind_keeps_its_connection(broker: BrokerHarness, site: str) -> None:
    """A consumer that acknowledges nothing for many keepalive intervals (its store is slow) is
    still connected: the session pings the broker meanwhile, and the broker, held to the hub's
    Receive Maximum, sends no more than that many messages unacknowledged."""
    hub_seen, device_seen = _Recorder(), _Recorder()
    hub = _hub(broker, hub_seen, keepalive_s=1, receive_maximum=5)
    hub.subscribe(topics.hub_subscription("hub"))
    assert hub_seen.subscribed.get(timeout=TIMEOUT_S)
    dev = _device(broker, "dev-a", device_seen)
    topic = topics.uplink(site, "dev-a", "counts")
    try:
        for i in range(20):
            dev.publish(topic, f"{i}".encode())
        first = hub_seen.drain(5)
        time.sleep(5.0)  # the broker drops a client silent for 1.5 keepalives: 1.5 s
        assert not hub_seen.disconnected.is_set(), broker.broker.log_tail()
        assert hub_seen.messages.empty()  # no more than the Receive Maximum unacknowledged
        hub.ack_many([m.mid for m in first])
        rest = hub_seen.drain(15)
        hub.ack_many([m.mid for m in rest])
        assert [m.payload for m in first + rest] == [f"{i}".encode() for i in range(20)]
        assert not hub_seen.disconnected.is_set(), broker.broker.log_tail()
    finally:
        _stop(dev)
        _stop(hub)
