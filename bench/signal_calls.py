"""Detector-call latency through the hub: ``python -m bench.signal_calls [--calls N] [--rate HZ]``.

A real Mosquitto (mTLS, ACLs), a real hub on SQLite, one enrolled device
publishing sealed ``detector`` messages (one zone change each, as the agent
sends them) at ``--rate`` per second, and a signal controller's own MQTT
identity subscribed to the signal's call topic. Per call it measures, on this
one clock, capture → call received by the controller (the device stamps the
change with the time it publishes, so this is the whole path a frame's change
takes after the agent saw it: outbox → broker → ingest → store → dispatcher →
broker → controller). The hub's own histogram
(``roadside_signal_call_latency_seconds``, capture → call leaving the hub) is
read back too. Loopback, so network time is near zero; the figures are the
software path, dominated by the ingest micro-batch wait (``--batch-wait``).

The last line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench.fleet import SimulatedDevice, enroll_fleet
from roadside.cloud.broker.mosquitto import MosquittoBroker, acl_lock, set_signal_controller
from roadside.cloud.broker.pki import write_issued
from roadside.cloud.home import acl_devices, init_home
from roadside.cloud.hub import Hub
from roadside.cloud.registry import Registry
from roadside.cloud.settings import HubSettings
from roadside.cloud.signals.channel_map import parse_channel_map
from roadside.mqttlink import Message, MqttSession, SessionConfig, TlsFiles
from roadside.shared import topics
from roadside.shared.signals import decode_call

SIGNAL = "bench-signal"


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


def _publish_changes(device: SimulatedDevice, port: int, calls: int, rate_hz: float) -> None:
    """One zone change a message, stamped with the time it is published, at ``rate_hz``."""
    device.connect("127.0.0.1", port)
    topic = topics.uplink(device.bundle.site, device.bundle.device_id, "detector")
    began = time.monotonic()
    for i in range(calls):
        now = datetime.now(UTC)
        record = {"ts": now.isoformat(), "stream": "cam", "zone": "stop-1", "zone_kind": "presence",
                  "state": "on" if i % 2 == 0 else "off"}  # fmt: skip
        body = json.dumps({"schema": 1, "kind": "detector", "records": [record]}).encode()
        device.client.publish(topic, device.sealer.seal("detector", i + 1, body, int(now.timestamp() * 1000)))
        time.sleep(max(0.0, began + (i + 1) / rate_hz - time.monotonic()))
    device.wait_acked(calls, 30)
    device.close()


def run(calls: int, rate_hz: float, batch_wait_s: float, root: Path) -> dict[str, Any]:
    home = init_home(root / "hub", ["localhost"], ["127.0.0.1"])
    broker = MosquittoBroker(
        home.broker_dir, ca_cert_pem=home.ca_file.read_bytes(), server=home.broker_server_cert()
    )
    broker.start()
    registry = Registry(home.registry_url)
    received: dict[int, float] = {}
    done = threading.Event()
    try:
        (bundle,) = enroll_fleet(home, registry, 1, broker.port)
        channels = [{"channel": 1, "device": bundle.device_id, "stream": "cam", "zone": "stop-1", "phase": 2}]
        registry.signals.set_map(SIGNAL, parse_channel_map(channels))
        controller = write_issued(root / "controller", "ctl-bench", home.ca().issue_client("ctl-bench"))
        with acl_lock(home.broker_dir):
            set_signal_controller(home.broker_dir, "ctl-bench", [SIGNAL])
        broker.reload_acl(acl_devices(registry))

        def on_message(message: Message) -> None:
            call = decode_call(message.payload)
            received[call.seq] = time.time() - call.captured_at.timestamp()
            if len(received) >= calls:
                done.set()

        subscribed = threading.Event()
        session = MqttSession(
            SessionConfig("127.0.0.1", broker.port, "ctl-bench", tls=TlsFiles(home.ca_file, controller.cert, controller.key)),
            on_connect=lambda s, _ack: s.subscribe(topics.signal_calls(SIGNAL)),
            on_message=on_message,
            on_subscribe=lambda _ack: subscribed.set(),
        )  # fmt: skip
        session.connect()
        session.loop_start()
        hub = Hub(
            HubSettings(home=home.root, broker_port=broker.port, api_port=-1, batch_wait_s=batch_wait_s)
        )
        hub.start()
        try:
            if not hub.wait_ready(30) or not subscribed.wait(10):
                raise RuntimeError("hub or controller did not come up")
            _publish_changes(SimulatedDevice(bundle), broker.port, calls, rate_hz)
            done.wait(30)
            metrics = hub.metrics_registry
            hub_count = metrics.get_sample_value(
                "roadside_signal_call_latency_seconds_count", {"signal": SIGNAL}
            )
            hub_sum = metrics.get_sample_value("roadside_signal_call_latency_seconds_sum", {"signal": SIGNAL})
        finally:
            hub.stop()
            session.disconnect()
            session.loop_stop()
    finally:
        registry.close()
        broker.stop()
    latencies = [v * 1000.0 for v in received.values()]
    return {
        "benchmark": "signal_calls",
        "calls_sent": calls,
        "calls_received": len(received),
        "rate_hz": rate_hz,
        "batch_wait_s": batch_wait_s,
        "call_latency_p50_ms": round(_percentile(latencies, 0.5), 1) if latencies else None,
        "call_latency_p95_ms": round(_percentile(latencies, 0.95), 1) if latencies else None,
        "call_latency_max_ms": round(max(latencies), 1) if latencies else None,
        "call_latency_mean_ms": round(statistics.fmean(latencies), 1) if latencies else None,
        "hub_latency_mean_ms": round(hub_sum / hub_count * 1000.0, 1)
        if hub_count and hub_sum is not None
        else None,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--calls", type=int, default=200)
    parser.add_argument("--rate", type=float, default=20.0, help="detector changes per second")
    parser.add_argument("--batch-wait", type=float, default=0.1, help="the hub's ingest micro-batch wait, s")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-signal-calls-") as tmp:
        result = run(args.calls, args.rate, args.batch_wait, Path(tmp))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
