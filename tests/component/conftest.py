"""Fixtures for tests against a real Mosquitto with mutual TLS and the Roadside ACL.

Each test gets its own broker on a free loopback port (``MosquittoBroker``,
about a tenth of a second to start), so tests never share state or topics.

Fixtures
--------
``roadside_ca``     session: the CA that signs the broker's and clients' certificates.
``foreign_ca``      session: an unrelated CA, for "wrong issuer" cases.
``site``            a site name unique to the test.
``broker_devices``  who the ACL lets in: ``dev-a`` and ``dev-b`` at ``site``.
                    Override it in a module or test to change the fleet.
``broker``          a running ``BrokerHarness``: ``.connect(cn)`` gives a connected
                    ``MqttTestClient`` whose certificate CN (= MQTT username) is ``cn``.

Example::

    def test_uplink(broker, site):
        hub = broker.connect("hub")
        hub.subscribe("$share/hub/roadside/v1/#")
        dev = broker.connect("dev-a")
        assert dev.publish(topics.uplink(site, "dev-a", "counts"), b"1") == 0  # PUBACK reason
        assert hub.next_message().payload == b"1"

Clients and the broker are closed when the test ends, whatever happens.
"""

from __future__ import annotations

import itertools
import queue
import ssl
import threading
import uuid
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from roadside.cloud.broker.mosquitto import AclDevice, MosquittoBroker
from roadside.cloud.broker.pki import CertFiles, CertificateAuthority, IssuedCert, write_issued

DEFAULT_TIMEOUT_S = 5.0


class MqttTestClient:
    """A paho MQTT 5 client whose callbacks turn into things a test can wait on.

    ``publish`` and ``subscribe`` block until the broker acknowledges and
    return its reason codes; received messages queue up for ``next_message``.
    It never reconnects: once refused or dropped, ``failed`` is set for good.
    """

    def __init__(self, client: mqtt.Client, name: str) -> None:
        self.client = client
        self.name = name
        self.messages: queue.Queue[mqtt.MQTTMessage] = queue.Queue()
        self.connected = threading.Event()
        # Set on the first failure: refused CONNACK, TLS alert, dropped connection.
        self.failed = threading.Event()
        self._settled = threading.Event()  # either of the two above
        self.connect_reason: ReasonCode | None = None
        self.failure: str | None = None
        self._acks: dict[int, list[ReasonCode]] = {}
        self._acked = threading.Condition()
        client.on_connect = self._on_connect
        client.on_connect_fail = self._on_connect_fail
        client.on_disconnect = self._on_disconnect
        client.on_publish = self._on_publish
        client.on_subscribe = self._on_subscribe
        client.on_message = self._on_message

    # -- what tests call --

    def wait_connected(self, timeout: float = DEFAULT_TIMEOUT_S) -> bool:
        """True once the broker accepted the CONNECT; False as soon as it was refused."""
        self._settled.wait(timeout)
        return self.connected.is_set() and not self.failed.is_set()

    def publish(
        self,
        topic: str,
        payload: bytes,
        qos: int = 1,
        retain: bool = False,
        timeout: float = DEFAULT_TIMEOUT_S,
    ) -> ReasonCode:
        """Publish and wait for the broker's PUBACK (QoS 1) or the send (QoS 0); its reason code."""
        info = self.client.publish(topic, payload, qos=qos, retain=retain)
        if info.rc != mqtt.MQTT_ERR_SUCCESS:
            raise AssertionError(f"{self.name}: publish not sent: {mqtt.error_string(info.rc)}")
        return self._wait_ack(info.mid, timeout)[0]

    def subscribe(self, topic: str, qos: int = 1, timeout: float = DEFAULT_TIMEOUT_S) -> ReasonCode:
        """Subscribe and wait for the SUBACK; its reason code (granted QoS, or a failure)."""
        rc, mid = self.client.subscribe(topic, qos=qos)
        if rc != mqtt.MQTT_ERR_SUCCESS or mid is None:
            raise AssertionError(f"{self.name}: subscribe not sent: {mqtt.error_string(rc)}")
        return self._wait_ack(mid, timeout)[0]

    def next_message(self, timeout: float = DEFAULT_TIMEOUT_S) -> mqtt.MQTTMessage:
        """The next message delivered to this client; AssertionError if none comes in time."""
        try:
            return self.messages.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(f"{self.name}: no message within {timeout} s") from None

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()

    # -- paho callbacks (paho's network thread) --

    def _wait_ack(self, mid: int, timeout: float) -> list[ReasonCode]:
        with self._acked:
            if not self._acked.wait_for(lambda: mid in self._acks or self.failed.is_set(), timeout):
                raise AssertionError(f"{self.name}: no acknowledgement for mid {mid} within {timeout} s")
            if mid not in self._acks:
                raise AssertionError(f"{self.name}: connection lost before the ack: {self.failure}")
            return self._acks.pop(mid)

    def _ack(self, mid: int, codes: list[ReasonCode]) -> None:
        with self._acked:
            self._acks[mid] = codes
            self._acked.notify_all()

    def _fail(self, why: str) -> None:
        if self.failure is None:
            self.failure = why
        self.failed.set()
        self._settled.set()
        with self._acked:
            self._acked.notify_all()

    def _on_connect(
        self,
        client: mqtt.Client,
        userdata: object,
        flags: mqtt.ConnectFlags,
        reason_code: ReasonCode,
        properties: Properties | None,
    ) -> None:
        self.connect_reason = reason_code
        if reason_code.is_failure:
            self._fail(f"CONNACK {reason_code}")
        else:
            self.connected.set()
            self._settled.set()

    def _on_connect_fail(self, client: mqtt.Client, userdata: object) -> None:
        self._fail("connect failed")

    def _on_disconnect(
        self,
        client: mqtt.Client,
        userdata: object,
        flags: mqtt.DisconnectFlags,
        reason_code: ReasonCode,
        properties: Properties | None,
    ) -> None:
        self._fail(f"disconnected: {reason_code}")

    def _on_publish(
        self,
        client: mqtt.Client,
        userdata: object,
        mid: int,
        reason_code: ReasonCode,
        properties: Properties | None,
    ) -> None:
        self._ack(mid, [reason_code])

    def _on_subscribe(
        self,
        client: mqtt.Client,
        userdata: object,
        mid: int,
        reason_codes: list[ReasonCode],
        properties: Properties | None,
    ) -> None:
        self._ack(mid, reason_codes)

    def _on_message(self, client: mqtt.Client, userdata: object, message: mqtt.MQTTMessage) -> None:
        self.messages.put(message)


class BrokerHarness:
    """A running ``MosquittoBroker`` plus certificates and clients made to measure."""

    def __init__(self, broker: MosquittoBroker, ca: CertificateAuthority, certs_dir: Path) -> None:
        self.broker = broker
        self.ca = ca
        self.certs_dir = certs_dir
        self.devices: list[AclDevice] = []
        self._clients: list[MqttTestClient] = []
        self._ids = itertools.count(1)
        self._certs: dict[tuple[int, str], tuple[IssuedCert, CertFiles]] = {}

    @property
    def host(self) -> str:
        return self.broker.host

    @property
    def port(self) -> int:
        return self.broker.port

    def issued(self, cn: str, issuer: CertificateAuthority | None = None) -> IssuedCert:
        """The client certificate this harness uses for ``cn`` from ``issuer`` (made on first use)."""
        return self._cert(cn, issuer)[0]

    def cert_for(self, cn: str, issuer: CertificateAuthority | None = None) -> CertFiles:
        """Files of the client certificate and key for ``cn`` (the Roadside CA by default)."""
        return self._cert(cn, issuer)[1]

    def _cert(self, cn: str, issuer: CertificateAuthority | None) -> tuple[IssuedCert, CertFiles]:
        issuer = issuer or self.ca
        key = (id(issuer), cn)
        if key not in self._certs:
            issued = issuer.issue_client(cn)
            files = write_issued(self.certs_dir, f"{cn}-{len(self._certs)}", issued)
            self._certs[key] = (issued, files)
        return self._certs[key]

    def allow(self, devices: list[AclDevice], revoked: Iterable[str] = ()) -> None:
        """Make ``devices`` the fleet and ``revoked`` the names the ACL denies; reload the broker."""
        self.devices = list(devices)
        self.broker.reload_acl(self.devices, revoked=revoked)

    def client(
        self,
        cn: str | None,
        *,
        issuer: CertificateAuthority | None = None,
        client_id: str | None = None,
        clean_start: bool = True,
        session_expiry_s: int = 0,
        configure: Callable[[mqtt.Client], None] | None = None,
    ) -> MqttTestClient:
        """Start connecting a client; check ``wait_connected()`` yourself.

        ``cn=None`` connects without a client certificate. ``configure`` can set a
        will or other options on the paho client before it connects.
        """
        name = cn or "no-cert"
        paho = mqtt.Client(
            callback_api_version=CallbackAPIVersion.VERSION2,
            client_id=client_id or f"{name}-{next(self._ids)}",
            protocol=mqtt.MQTTv5,
            # A refusal or a drop is what tests look at; retrying would hide it.
            reconnect_on_failure=False,
        )
        if cn is None:
            paho.tls_set(ca_certs=str(self.broker.ca_file))
        else:
            files = self.cert_for(cn, issuer)
            paho.tls_set(ca_certs=str(self.broker.ca_file), certfile=str(files.cert), keyfile=str(files.key))
        if configure is not None:
            configure(paho)
        wrapped = MqttTestClient(paho, name)
        self._clients.append(wrapped)
        properties = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        properties.SessionExpiryInterval = session_expiry_s
        try:
            paho.connect(self.host, self.port, keepalive=30, clean_start=clean_start, properties=properties)
        except (ssl.SSLError, OSError) as exc:
            # With TLS 1.2 a refused certificate fails here; with TLS 1.3 the
            # alert comes after the handshake and shows up as a disconnect.
            wrapped._fail(f"TLS: {exc}")
            return wrapped
        paho.loop_start()
        return wrapped

    def connect(self, cn: str, **kwargs: Any) -> MqttTestClient:
        """A client for ``cn`` that the broker has accepted (else the test fails); see ``client``."""
        client = self.client(cn, **kwargs)
        if not client.wait_connected():
            raise AssertionError(f"{cn} was not accepted: {client.failure}\n{self.broker.log_tail()}")
        return client

    def close(self) -> None:
        for client in self._clients:
            client.close()


@pytest.fixture(scope="session")
def roadside_ca() -> CertificateAuthority:
    return CertificateAuthority.create("Roadside Test CA")


@pytest.fixture(scope="session")
def foreign_ca() -> CertificateAuthority:
    return CertificateAuthority.create("Some Other CA")


@pytest.fixture
def site() -> str:
    return f"s{uuid.uuid4().hex[:8]}"


@pytest.fixture
def broker_devices(site: str) -> list[AclDevice]:
    """The fleet the broker starts with; override to change it."""
    return [AclDevice("dev-a", site), AclDevice("dev-b", site)]


@pytest.fixture
def broker(
    tmp_path: Path, roadside_ca: CertificateAuthority, broker_devices: list[AclDevice]
) -> Iterator[BrokerHarness]:
    """A Mosquitto with mutual TLS and the Roadside ACL for ``broker_devices``."""
    with MosquittoBroker.for_ca(tmp_path / "broker", roadside_ca, broker_devices) as running:
        harness = BrokerHarness(running, roadside_ca, tmp_path / "certs")
        harness.devices = list(broker_devices)
        try:
            yield harness
        finally:
            harness.close()
