"""Detector calls through the whole path (issue 11, item 3): device → sealed MQTT → hub → controller.

A real Mosquitto with mTLS and ACLs, the hub on its store, an enrolled
device publishing ``detector`` messages, and a signal controller's own
certificate subscribed to the signal's call topic. Hostile detector
messages are dead-lettered and cost no other message; the calls that do
arrive carry the capture time, and the latency histogram has them.
"""

from __future__ import annotations

import json
import threading
from datetime import UTC, datetime, timedelta

import pytest

from bench.fleet import SimulatedDevice
from roadside.cloud.broker.mosquitto import acl_lock, set_signal_controller
from roadside.cloud.broker.pki import write_issued
from roadside.cloud.home import acl_devices
from roadside.cloud.hub import Hub
from roadside.cloud.settings import HubSettings
from roadside.cloud.signals.channel_map import parse_channel_map
from roadside.mqttlink import Message, MqttSession, SessionConfig, TlsFiles
from roadside.shared import topics
from roadside.shared.signals import SignalCall, decode_call
from tests.e2e.rig import Rig
from tests.e2e.test_hub_resilience import wait_until

pytestmark = [pytest.mark.slow, pytest.mark.timeout(90)]


def _change(zone: str, state: str, **kw: object) -> dict[str, object]:
    return {"ts": datetime.now(UTC).isoformat(), "stream": "north", "zone": zone, "zone_kind": "presence",
            "state": state, **kw}  # fmt: skip


def _detector(*records: dict[str, object]) -> bytes:
    return json.dumps({"schema": 1, "kind": "detector", "records": list(records)}).encode()


def test_calls_reach_a_controller_over_mqtt_and_hostile_detector_messages_cost_nothing(rig: Rig) -> None:
    (bundle,) = rig.fleet(1)
    device_id = bundle.device_id
    channels = [
        {"channel": 5, "device": device_id, "stream": "north", "zone": "nb-stop-1", "phase": 2},
        {"channel": 6, "device": device_id, "stream": "north", "zone": "nb-stop-2", "phase": 2},
    ]
    rig.registry.signals.set_map("main-5th", parse_channel_map({"channels": channels}))
    # A controller's own identity, allowed to read this signal's calls and nothing else.
    controller = write_issued(
        rig.home.root / "controller", "ctl-main", rig.home.ca().issue_client("ctl-main")
    )
    with acl_lock(rig.home.broker_dir):
        set_signal_controller(rig.home.broker_dir, "ctl-main", ["main-5th"])
    rig.broker.reload_acl(acl_devices(rig.registry))

    received: list[SignalCall] = []
    subscribed = threading.Event()

    def on_message(message: Message) -> None:
        assert message.topic == topics.signal_calls("main-5th")
        received.append(decode_call(message.payload))

    session = MqttSession(
        SessionConfig("127.0.0.1", rig.broker.port, "ctl-main",
                      tls=TlsFiles(rig.home.ca_file, controller.cert, controller.key)),
        on_connect=lambda s, ack: s.subscribe(topics.signal_calls("main-5th")),
        on_message=on_message,
        on_subscribe=lambda ack: subscribed.set(),
    )  # fmt: skip
    session.connect()
    session.loop_start()
    hub = Hub(HubSettings(home=rig.home.root, broker_port=rig.broker.port, api_port=0, batch_wait_s=0.2))
    hub.start()
    try:
        assert hub.wait_ready(10), rig.broker.log_tail()
        assert subscribed.wait(10)
        device = SimulatedDevice(bundle)
        device.connect("127.0.0.1", rig.broker.port)
        now_ms = int(datetime.now(UTC).timestamp() * 1000)
        seal = device.sealer.seal
        hostile = [
            seal("detector", 1, _detector(_change("nb-stop-1", "sideways")), now_ms),  # no such state
            seal("detector", 2, _detector(*[_change("nb-stop-1", "on")] * 65), now_ms),  # over 64 changes
            seal("detector", 3, _detector(_change("nb-stop-1", "on", occupants=2**40)), now_ms),
            seal("detector", 4, json.dumps({"schema": 1, "kind": "events", "records": []}).encode(), now_ms),
            seal("detector", 5, _detector(_change("nb\nstop", "on")), now_ms),  # a newline in a name
        ]
        good = [
            seal("detector", 10, _detector(_change("nb-stop-1", "on", occupants=1)), now_ms),
            seal("detector", 11, _detector(_change("unmapped", "on")), now_ms),
            seal("detector", 12, _detector(_change("nb-stop-2", "fault", reason="lost")), now_ms),
        ]
        topic = topics.uplink(bundle.site, device_id, "detector")
        for wire in [hostile[0], good[0], *hostile[1:3], good[1], *hostile[3:], good[2]]:
            device.client.publish(topic, wire, qos=1)
        assert device.wait_acked(len(hostile) + len(good), 10)
        device.close()
        total = len(hostile) + len(good)
        assert wait_until(lambda: hub.ingest.stored_messages + hub.ingest.rejected_messages == total, 20)
        assert hub.ingest.stored_messages == len(good)
        assert hub.dead_letters.count("schema") == len(hostile)
        assert wait_until(lambda: len(received) >= 2, 10), received
        assert [(c.channel, c.state, c.called, c.event_code) for c in received] == [
            (5, "on", True, 82),
            (6, "fault", True, 85),  # the camera was lost: a watchdog fault, and a constant call
        ]
        for call in received:
            assert timedelta(0) <= call.hub_sent_at - call.captured_at < timedelta(seconds=20)
        count = hub.metrics_registry.get_sample_value(
            "roadside_signal_call_latency_seconds_count", {"signal": "main-5th"}
        )
        assert count == 2
    finally:
        session.disconnect()
        session.loop_stop()
        hub.stop()
