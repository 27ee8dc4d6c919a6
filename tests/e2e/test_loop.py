"""Agent → broker → hub → API, for real, and what an attacker on the broker can do."""

from __future__ import annotations

import json
import threading
import time
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from roadside.cloud.home import hub_identity
from roadside.edge.agent import Agent
from roadside.edge.settings import load_agent_settings
from roadside.shared import topics
from roadside.shared.bundle import EnrollmentBundle
from roadside.shared.envelope import DeviceSealer
from roadside.shared.keys import KeyPair
from tests.e2e.conftest import SITE, Loop

pytestmark = pytest.mark.slow


def make_agent(tmp_path: Path, bundle: EnrollmentBundle, frames: int = 300, seed: int = 3) -> Agent:
    settings = load_agent_settings(
        None,
        bundle=tmp_path / "unused.json",
        sources=[
            {"type": "synthetic", "name": "cam0", "seed": seed, "realtime": False, "max_frames": frames}
        ],
        interval_s=5,
        outbox={"path": str(tmp_path / f"{bundle.device_id}-outbox.db")},
    )
    return Agent.from_settings(settings, bundle)


def api_totals(loop: Loop, device: str) -> Counter[tuple[str, str, str]]:
    now = datetime.now(UTC)
    params = {
        "device": device,
        "from": (now - timedelta(days=2)).isoformat(),
        "to": (now + timedelta(days=1)).isoformat(),
        "bucket": "1d",
    }
    with loop.api() as api:
        response = api.get("/v1/counts", params=params)
    response.raise_for_status()
    totals: Counter[tuple[str, str, str]] = Counter()
    for row in response.json()["rows"]:
        totals[(row["line"], row["cls"], row["direction"])] += row["count"]
    return totals


def wait_for(predicate: object, timeout: float = 20.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return True
        time.sleep(0.1)
    return False


class Sniffer:
    """A plain (non-shared) subscriber on everything, as a curious broker operator would be."""

    def __init__(self, loop: Loop) -> None:
        # Its own hub identity: the broker takes client ids from certificates, and under the
        # hub process's certificate the sniffer would take over the hub's session.
        files = hub_identity(loop.home, loop.registry, "hub-sniffer")
        cert, key = files.cert, files.key
        self.payloads: list[tuple[str, bytes]] = []
        self.ready = threading.Event()
        self.client = mqtt.Client(
            callback_api_version=CallbackAPIVersion.VERSION2, client_id="sniffer", protocol=mqtt.MQTTv5
        )
        self.client.tls_set(ca_certs=str(loop.home.ca_file), certfile=str(cert), keyfile=str(key))
        self.client.on_connect = lambda c, *_: c.subscribe("roadside/v1/#", qos=1)
        self.client.on_subscribe = lambda *_: self.ready.set()
        self.client.on_message = lambda _c, _u, m: self.payloads.append((m.topic, bytes(m.payload)))
        self.client.connect("127.0.0.1", loop.broker.port)
        self.client.loop_start()
        assert self.ready.wait(5)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def test_api_returns_exactly_what_the_agent_counted_and_the_wire_is_ciphertext(
    loop: Loop, tmp_path: Path
) -> None:
    bundle = loop.enroll("dev-e2e")
    sniffer = Sniffer(loop)
    agent = make_agent(tmp_path, bundle)
    agent.start()
    assert agent.sources_done(timeout=120)
    agent.stop(drain_s=15)
    assert agent.outbox_backlog_at_stop == 0
    produced = +agent.counted
    assert sum(produced.values()) > 0, "the synthetic scene should produce line crossings"
    assert wait_for(lambda: api_totals(loop, "dev-e2e") == produced), (api_totals(loop, "dev-e2e"), produced)
    assert loop.hub.ingest.rejected_messages == 0
    sniffer.close()
    sealed = [(t, p) for t, p in sniffer.payloads if not t.endswith("/status")]
    assert sealed, "the sniffer should have seen the uplink"
    for _topic, payload in sealed:
        assert payload.startswith(b"RS")
        assert b"records" not in payload
        assert b"line_crossing" not in payload
        assert b"model_version" not in payload
    with loop.api() as api:
        devices = api.get("/v1/devices").json()
    listed = devices["devices"] if isinstance(devices, dict) else devices
    assert [d["device_id"] for d in listed] == ["dev-e2e"]


def publish_as(loop: Loop, bundle: EnrollmentBundle, topic: str, payload: bytes) -> None:
    """Publish with the device's own certificate, as a compromised device or a replaying attacker with it."""
    tls_dir = Path(loop.home.root) / f"tls-{bundle.device_id}"
    tls_dir.mkdir(exist_ok=True)
    for name, pem in (
        ("ca", bundle.ca_cert_pem),
        ("crt", bundle.client_cert_pem),
        ("key", bundle.client_key_pem),
    ):
        (tls_dir / name).write_text(pem)
    client = mqtt.Client(
        callback_api_version=CallbackAPIVersion.VERSION2,
        client_id=f"{bundle.device_id}-x",
        protocol=mqtt.MQTTv5,
    )
    client.tls_set(ca_certs=str(tls_dir / "ca"), certfile=str(tls_dir / "crt"), keyfile=str(tls_dir / "key"))
    client.connect("127.0.0.1", loop.broker.port)
    client.loop_start()
    try:
        client.publish(topic, payload, qos=1).wait_for_publish(5)
    finally:
        client.disconnect()
        client.loop_stop()


def rejected(loop: Loop, reason: str) -> float:
    value = loop.hub.metrics_registry.get_sample_value("roadside_ingest_rejected_total", {"reason": reason})
    return value or 0.0


def test_forged_and_replayed_messages_are_rejected_counted_and_the_hub_keeps_running(loop: Loop) -> None:
    bundle = loop.enroll("dev-x")
    topic = topics.uplink(SITE, "dev-x", "counts")
    sniffer = Sniffer(loop)
    good = DeviceSealer("dev-x", bundle.keypair(), bundle.hub_public())
    body = json.dumps(
        {
            "schema": 1,
            "kind": "counts",
            "records": [
                {
                    "interval_start": datetime.now(UTC).isoformat(),
                    "interval_s": 60,
                    "line": "l1",
                    "cls": "car",
                    "direction": "in",
                    "count": 7,
                    "model_version": "v1",
                }
            ],
        }
    ).encode()
    publish_as(loop, bundle, topic, good.seal("counts", 1, body, int(time.time() * 1000)))
    assert wait_for(lambda: loop.hub.ingest.stored_messages == 1)
    captured = next(p for t, p in sniffer.payloads if t == topic)

    # Forged: the right device id and key ids, but not the device's key.
    forger = DeviceSealer("dev-x", KeyPair.generate(), bundle.hub_public())
    forger._kid = bundle.keypair().kid
    publish_as(loop, bundle, topic, forger.seal("counts", 2, body, int(time.time() * 1000)))
    # Replayed: the captured ciphertext, byte for byte.
    publish_as(loop, bundle, topic, captured)
    # Garbage.
    publish_as(loop, bundle, topic, b"\x00not an envelope")
    assert wait_for(lambda: rejected(loop, "bad_tag") == 2 and rejected(loop, "replay") == 1), (
        rejected(loop, "bad_tag"),
        rejected(loop, "replay"),
    )
    assert loop.hub.dead_letters.count() == 3

    # Still running: the next genuine message is stored.
    publish_as(loop, bundle, topic, good.seal("counts", 3, body, int(time.time() * 1000)))
    assert wait_for(lambda: loop.hub.ingest.stored_messages == 2)
    assert api_totals(loop, "dev-x") == Counter({("l1", "car", "in"): 14})
    sniffer.close()
