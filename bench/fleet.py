"""Simulated devices for benchmarks and tests: real certificates, real envelopes, real MQTT."""

from __future__ import annotations

import json
import os
import tempfile
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from cloud.home import HubHome, acl_devices, enroll_device
from cloud.registry import Registry
from shared import topics
from shared.bundle import BrokerAddress, EnrollmentBundle
from shared.envelope import DeviceSealer

# Recent enough to sit inside any store's raw retention (a message index is a minute after it).
EPOCH = datetime.now(UTC).replace(minute=0, second=0, microsecond=0) - timedelta(days=2)


def counts_body(device_index: int, message_index: int, records: int) -> bytes:
    """A counts message of ``records`` distinct records, each counting one object."""
    start = EPOCH + timedelta(minutes=message_index)
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
        self._tls = Path(tempfile.mkdtemp(prefix="sim-tls-"))
        for name, pem in (
            ("ca", bundle.ca_cert_pem),
            ("crt", bundle.client_cert_pem),
            ("key", bundle.client_key_pem),
        ):
            fd = os.open(self._tls / name, os.O_WRONLY | os.O_CREAT, 0o600)
            with os.fdopen(fd, "w") as out:
                out.write(pem)
        self.client = mqtt.Client(
            callback_api_version=CallbackAPIVersion.VERSION2, client_id=bundle.device_id, protocol=mqtt.MQTTv5
        )
        self.client.tls_set(
            ca_certs=str(self._tls / "ca"), certfile=str(self._tls / "crt"), keyfile=str(self._tls / "key")
        )
        self.client.max_inflight_messages_set(max_inflight)
        self.client.max_queued_messages_set(0)
        self.acked = 0
        self.refused = 0
        self._all_acked = threading.Condition()
        self.client.on_publish = self._on_publish

    def _on_publish(self, _c: Any, _u: Any, _mid: int, reason: Any, _p: Any) -> None:
        with self._all_acked:
            if reason.is_failure:
                self.refused += 1
            else:
                self.acked += 1
            self._all_acked.notify_all()

    def connect(self, host: str, port: int) -> None:
        self.client.connect(host, port, keepalive=60)
        self.client.loop_start()

    def publish(self, payload: bytes) -> None:
        self.client.publish(self.topic, payload, qos=1)

    def wait_acked(self, total: int, timeout: float) -> bool:
        with self._all_acked:
            return self._all_acked.wait_for(lambda: self.acked + self.refused >= total, timeout)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()
        for child in self._tls.iterdir():
            child.unlink()
        self._tls.rmdir()


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
