"""Simulated devices for benchmarks and tests: real certificates, real envelopes, real MQTT."""

from __future__ import annotations

import json
import tempfile
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path

from roadside.cloud.home import HubHome, acl_devices, enroll_device
from roadside.cloud.registry import Registry
from roadside.mqttlink import Delivery, MqttSession, PubAck, SessionConfig, context_from_pem
from roadside.shared import topics
from roadside.shared.bundle import BrokerAddress, EnrollmentBundle
from roadside.shared.compact import encode_counts
from roadside.shared.envelope import DeviceSealer
from roadside.shared.schemas import CountRecord

# Recent enough to sit inside any store's raw retention (a message index is a minute after it).
EPOCH = datetime.now(UTC).replace(minute=0, second=0, microsecond=0) - timedelta(days=2)


def counts_body(device_index: int, message_index: int, records: int, encoding: str = "json") -> bytes:
    """A counts message of ``records`` distinct records, each counting one object, as JSON (what an
    older agent sends) or in the compact form (ADR 0033, what an agent sends by default)."""
    start = EPOCH + timedelta(minutes=message_index)
    if encoding == "compact":
        return encode_counts([
            CountRecord(interval_start=start, interval_s=60, line=f"l{r}", cls="car", direction="in", count=1,
                        model_version="bench")
            for r in range(records)
        ])  # fmt: skip
    rows = [
        {
            "interval_start": start.isoformat(),
            "interval_s": 60,
            "line": f"l{r}",
            "cls": "car",
            "direction": "in",
            "count": 1,
            "model_version": "bench",
        }
        for r in range(records)
    ]
    return json.dumps({"schema": 1, "kind": "counts", "records": rows}).encode()


class SimulatedDevice:
    """One device: its own TLS identity and envelope keys, publishing QoS 1."""

    def __init__(self, bundle: EnrollmentBundle, max_inflight: int = 200) -> None:
        self.bundle = bundle
        self.sealer = DeviceSealer(bundle.device_id, bundle.keypair(), bundle.hub_public())
        self.topic = topics.uplink(bundle.site, bundle.device_id, "counts")
        self.max_inflight = max_inflight
        self.acked = 0
        self.refused = 0
        self._all_acked = threading.Condition()
        self._client: MqttSession | None = None

    @property
    def client(self) -> MqttSession:
        """The device's MQTT session, once :meth:`connect` made it."""
        if self._client is None:
            raise RuntimeError("connect() first")
        return self._client

    def _on_publish(self, ack: PubAck) -> None:
        with self._all_acked:
            if ack.delivery is Delivery.REFUSED:
                self.refused += 1
            else:
                self.acked += 1
            self._all_acked.notify_all()

    def connect(self, host: str, port: int) -> None:
        scratch = Path(tempfile.mkdtemp(prefix="sim-tls-"))
        try:  # the key is on disk only while it loads
            tls = context_from_pem(
                self.bundle.ca_cert_pem, self.bundle.client_cert_pem, self.bundle.client_key_pem, scratch
            )
        finally:
            scratch.rmdir()
        config = SessionConfig(
            host,
            port,
            self.bundle.device_id,
            tls=tls,
            max_inflight=self.max_inflight,
            max_queued=0,
        )
        self._client = MqttSession(config, on_puback=self._on_publish)
        self._client.connect()
        self._client.loop_start()

    def publish(self, payload: bytes) -> None:
        self.client.publish(self.topic, payload, qos=1)

    def wait_acked(self, total: int, timeout: float) -> bool:
        with self._all_acked:
            return self._all_acked.wait_for(lambda: self.acked + self.refused >= total, timeout)

    def close(self) -> None:
        if self._client is not None:
            self._client.disconnect()
            self._client.loop_stop()


def enroll_fleet(
    home: HubHome, registry: Registry, count: int, port: int, site: str = "bench"
) -> list[EnrollmentBundle]:
    bundles = []
    for i in range(count):
        bundle, _ = enroll_device(
            home, registry, f"sim-{i:04d}", site, BrokerAddress(host="127.0.0.1", port=port)
        )
        bundles.append(bundle)
    return bundles


__all__ = ["SimulatedDevice", "acl_devices", "counts_body", "enroll_fleet"]
