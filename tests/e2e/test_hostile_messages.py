"""One enrolled device must not be able to hurt any other message (issue 9, items 1-2, 6-10).

Every test runs the real path: a Mosquitto with mTLS and ACLs, the hub on its
store, and a genuine enrolled device's MQTT connection publishing crafted
envelopes on its own topics, as a compromised device could.
"""

from __future__ import annotations

import json
import os
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest
from typer.testing import CliRunner

from bench.fleet import SimulatedDevice, counts_body
from roadside.cli import build
from roadside.cloud.hub import Hub
from roadside.cloud.settings import HubSettings, InfluxV1StoreConfig
from roadside.edge.outbox.sqlite import Outbox, Priority
from roadside.shared import topics
from roadside.shared.envelope import Header, seal
from roadside.shared.limits import MAX_WIRE_INT
from tests.component.influxd import InfluxServer
from tests.e2e.rig import Rig
from tests.e2e.test_hub_resilience import RECORDS, stored, wait_until

pytestmark = pytest.mark.slow


def _hub(rig: Rig, **settings: object) -> Hub:
    hub = Hub(
        HubSettings(home=rig.home.root, broker_port=rig.broker.port, api_port=0, **settings)  # type: ignore[arg-type]
    )
    hub.start()
    assert hub.wait_ready(10), rig.broker.log_tail()
    return hub


def _now_ms() -> int:
    return int(time.time() * 1000)


def _raw_header(device: SimulatedDevice, kind: str, seq: int, **fields: object) -> bytes:
    """An envelope whose clear header says what a hostile device wants (sealed under a junk key)."""
    bundle = device.bundle
    hub_kid = bundle.hub_public().kid
    header = Header(bundle.device_id, kind, seq, _now_ms(), bundle.keypair().kid, hub_kid)
    for name, value in fields.items():
        object.__setattr__(header, name, value)  # frozen: a forger is not bound by it
    return seal(header, b"{}", os.urandom(32))


def _publish(device: SimulatedDevice, kind: str, wire: bytes) -> None:
    topic = topics.uplink(device.bundle.site, device.bundle.device_id, kind)  # type: ignore[arg-type]
    device.client.publish(topic, wire, qos=1)


def _events(track_id: int) -> bytes:
    record = {
        "event_id": str(uuid.uuid4()),
        "ts": datetime.now(UTC).isoformat(),
        "type": "line_crossing",
        "stream": "cam1",
        "cls": "car",
        "track_id": track_id,
        "model_version": "m1",
    }
    return json.dumps({"schema": 1, "kind": "events", "records": [record]}).encode()


def _ota(rollout_id: int) -> bytes:
    report = {"rollout_id": rollout_id, "name": "detector", "version": "0.2.0", "state": "staging"}
    return json.dumps({"schema": 1, "kind": "ota", "report": report}).encode()


def _ack() -> bytes:
    return json.dumps({"schema": 1, "kind": "ack", "command_id": str(uuid.uuid4()), "ok": True}).encode()


def test_hostile_headers_and_out_of_range_integers_cost_no_other_message(rig: Rig) -> None:
    """Items 1-2: each bad message is dead-lettered and counted; the good ones in its batch are stored."""
    (bundle,) = rig.fleet(1)
    hub = _hub(rig, batch_wait_s=0.5, batch_size=100)  # one micro-batch holds them all
    try:
        device = SimulatedDevice(bundle)
        device.connect("127.0.0.1", rig.broker.port)
        sealer = device.sealer
        now = _now_ms()
        hostile = [
            ("counts", _raw_header(device, "counts", 1, device_id="\ud800")),  # lone surrogate, no key needed
            ("counts", _raw_header(device, "counts", 2, kid="a\x00b")),  # NUL in the key id
            ("counts", _raw_header(device, "counts", 3, rkid="é" * 8)),
            ("counts", sealer.seal("counts", 2**63, counts_body(0, 0, RECORDS), now)),  # beyond int64
            ("events", sealer.seal("events", 5, _events(track_id=2**63), now)),
            ("ota", sealer.seal("ota", 6, _ota(rollout_id=2**63), now)),
            (
                "counts",
                sealer.seal("counts", 7, counts_body(0, 7, RECORDS).replace(b"l0", b"l0\\u0000"), now),
            ),
        ]
        good = [
            ("counts", sealer.seal("counts", 10, counts_body(0, 10, RECORDS), now)),
            ("events", sealer.seal("events", 11, _events(track_id=MAX_WIRE_INT), now)),
            ("ack", sealer.seal("ack", 12, _ack(), now)),
            ("ota", sealer.seal("ota", 13, _ota(rollout_id=MAX_WIRE_INT), now)),
        ]
        for kind, wire in hostile[:4] + good[:2] + hostile[4:] + good[2:]:
            _publish(device, kind, wire)
        assert device.wait_acked(len(hostile) + len(good), 10)
        device.close()
        total = len(hostile) + len(good)
        assert wait_until(lambda: hub.ingest.stored_messages + hub.ingest.rejected_messages == total, 15), (
            hub.ingest.stored_messages,
            hub.ingest.rejected_messages,
        )
        assert hub.ingest.stored_messages == len(good)
        assert hub.ingest.rejected_messages == len(hostile)
        assert hub.dead_letters.count() == len(hostile)
        assert hub.dead_letters.count("bad_tag") == 4  # the three forged headers and the int64 overflow
        assert hub.dead_letters.count("schema") == 3
        rejected = sum(
            hub.metrics_registry.get_sample_value("roadside_ingest_rejected_total", {"reason": r}) or 0
            for r in ("bad_tag", "schema")
        )
        assert rejected == len(hostile)
        assert stored(hub.store) == RECORDS
        assert hub.ingest.paused is None
    finally:
        hub.stop()


def test_a_failing_step_after_the_write_loses_nothing_to_the_replay_window(
    rig: Rig, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Item 7: the window is committed only once everything a message needs is durable."""
    from roadside.shared.errors import TransportError

    (bundle,) = rig.fleet(1)
    hub = _hub(rig)
    failures = {"left": 3}
    real_mark_seen = hub.ingest.mark_seen

    def flaky_mark_seen(seen: list[tuple[str, datetime]]) -> None:
        if failures["left"] > 0:
            failures["left"] -= 1
            raise TransportError("registry database unreachable (injected)")
        real_mark_seen(seen)

    monkeypatch.setattr(hub.ingest, "mark_seen", flaky_mark_seen)
    try:
        device = SimulatedDevice(bundle)
        device.connect("127.0.0.1", rig.broker.port)
        for n in range(20):
            device.publish(device.sealer.seal("counts", n + 1, counts_body(0, n, RECORDS), _now_ms()))
        assert device.wait_acked(20, 10)
        device.close()
        assert wait_until(lambda: hub.ingest.stored_messages == 20, 30), hub.ingest.stored_messages
        assert failures["left"] == 0
        assert hub.ingest.rejected_messages == 0
        assert hub.dead_letters.count() == 0
        assert stored(hub.store) == 20 * RECORDS
        assert hub.metrics_registry.get_sample_value("roadside_ingest_paused") == 0
    finally:
        hub.stop()


def test_a_failing_listener_costs_only_its_own_message(rig: Rig, monkeypatch: pytest.MonkeyPatch) -> None:
    """A listener that raises for one message: the others' listeners still run, all is stored."""
    (bundle,) = rig.fleet(1)
    hub = _hub(rig, batch_wait_s=0.5)
    settled: list[str] = []
    poisoned = uuid.uuid4()

    def on_ack(device_id: str, ack: object, kid: str) -> None:
        if ack.command_id == poisoned:  # type: ignore[attr-defined]
            raise ValueError("a listener bug (injected)")
        settled.append(str(ack.command_id))  # type: ignore[attr-defined]

    monkeypatch.setattr(hub.commands, "on_ack", on_ack)
    try:
        device = SimulatedDevice(bundle)
        device.connect("127.0.0.1", rig.broker.port)
        bodies = [_ack() for _ in range(3)]
        bodies.insert(
            1, json.dumps({"schema": 1, "kind": "ack", "command_id": str(poisoned), "ok": True}).encode()
        )
        for n, body in enumerate(bodies):
            _publish(device, "ack", device.sealer.seal("ack", n + 1, body, _now_ms()))
        _publish(device, "counts", device.sealer.seal("counts", 9, counts_body(0, 9, RECORDS), _now_ms()))
        assert device.wait_acked(5, 10)
        device.close()
        assert wait_until(lambda: hub.ingest.stored_messages == 5, 15)
        assert len(settled) == 3
        errors = hub.metrics_registry.get_sample_value(
            "roadside_ingest_listener_errors_total", {"listener": "ack"}
        )
        assert errors == 1
        assert stored(hub.store) == RECORDS
    finally:
        hub.stop()


def test_acks_and_ota_reports_replayed_after_a_hub_restart_are_refused(rig: Rig) -> None:
    """Item 8: replay state survives a restart for every kind, not only stored telemetry."""
    (bundle,) = rig.fleet(1)
    device = SimulatedDevice(bundle)
    device.connect("127.0.0.1", rig.broker.port)
    now = _now_ms()
    captured = [
        ("ack", device.sealer.seal("ack", 1, _ack(), now)),
        ("ota", device.sealer.seal("ota", 2, _ota(rollout_id=1), now)),
        ("counts", device.sealer.seal("counts", 3, counts_body(0, 3, RECORDS), now)),
    ]
    hub = _hub(rig)
    try:
        for kind, wire in captured:
            _publish(device, kind, wire)
        assert wait_until(lambda: hub.ingest.stored_messages == 3, 15)
    finally:
        hub.stop()
    hub = _hub(rig)
    try:
        for kind, wire in captured:  # an attacker who recorded them plays them again
            _publish(device, kind, wire)
        assert device.wait_acked(6, 10)
        assert wait_until(lambda: hub.ingest.rejected_messages == 3, 15), hub.ingest.rejected_messages
        assert hub.ingest.stored_messages == 0
        assert hub.dead_letters.count("replay") == 3
    finally:
        device.close()
        hub.stop()


def test_a_wiped_outbox_starts_a_sequence_epoch_the_hub_accepts(rig: Rig, tmp_path: Path) -> None:
    """Item 9: after the outbox is lost, new numbers lie above the old ones; old ones stay refused."""
    (bundle,) = rig.fleet(1)
    device = SimulatedDevice(bundle)
    device.connect("127.0.0.1", rig.broker.port)

    def send_from(outbox: Outbox, n: int) -> list[bytes]:
        sent = []
        for i in range(n):
            outbox.put("counts", counts_body(0, i, RECORDS), Priority.COUNTS)
        for item in outbox.pending(n):
            wire = device.sealer.seal("counts", item.seq, item.payload, _now_ms())
            _publish(device, "counts", wire)
            outbox.ack(item.seq)
            sent.append(wire)
        return sent

    hub = _hub(rig)
    try:
        old = Outbox(tmp_path / "outbox.db")
        first = send_from(old, 5)
        assert wait_until(lambda: hub.ingest.stored_messages == 5, 15)
        old.close()
        for leftover in tmp_path.glob("outbox.db*"):
            leftover.unlink()  # the disk fault: the outbox and its numbering are gone
        time.sleep(0.002)
        send_from(Outbox(tmp_path / "outbox.db"), 5)
        assert wait_until(lambda: hub.ingest.stored_messages == 10, 15), hub.ingest.rejected_messages
        assert hub.ingest.rejected_messages == 0
        for wire in first[:2]:  # the old epoch's messages, replayed
            _publish(device, "counts", wire)
        assert wait_until(lambda: hub.ingest.rejected_messages == 2, 15)
        assert hub.dead_letters.count("replay") == 2
    finally:
        device.close()
        hub.stop()


def test_a_store_that_refuses_every_write_pauses_ingest_and_dead_letters_nothing(
    rig: Rig, tmp_path: Path
) -> None:
    """Item 6: a missing retention policy (InfluxDB 404) is the store's fault, not the messages'."""
    (bundle,) = rig.fleet(1)
    with InfluxServer(tmp_path / "influx") as influx:

        def influxql(statement: str) -> None:
            httpx.post(f"{influx.url}/query", data={"q": statement}, timeout=10).raise_for_status()

        influxql('CREATE DATABASE "roadside"')
        create_rp = 'CREATE RETENTION POLICY "later" ON "roadside" DURATION 30d REPLICATION 1'
        influxql(create_rp)
        hub = _hub(
            rig,
            client_id="hub-influx-rp",
            store=InfluxV1StoreConfig(url=influx.url, database="roadside", retention_policy="later"),
        )
        try:
            influxql('DROP RETENTION POLICY "later" ON "roadside"')  # an operator's mistake, while running
            device = SimulatedDevice(bundle)
            device.connect("127.0.0.1", rig.broker.port)
            for n in range(10):
                device.publish(device.sealer.seal("counts", n + 1, counts_body(0, n, RECORDS), _now_ms()))
            assert device.wait_acked(10, 10)
            device.close()
            assert wait_until(
                lambda: hub.metrics_registry.get_sample_value("roadside_ingest_paused") == 1, 15
            )
            assert hub.ingest.paused is not None
            assert "retention policy" in hub.ingest.paused
            assert hub.dead_letters.count() == 0
            assert hub.ingest.stored_messages == 0
            influxql(create_rp)
            assert wait_until(lambda: hub.ingest.stored_messages == 10, 30), hub.ingest.paused
            assert hub.ingest.rejected_messages == 0
            assert hub.dead_letters.count() == 0
            assert hub.metrics_registry.get_sample_value("roadside_ingest_paused") == 0
            assert stored(hub.store) == 10 * RECORDS
        finally:
            hub.stop()


def test_dead_letters_are_kept_whole_and_redriven_once_the_key_is_registered(rig: Rig) -> None:
    """Item 10: messages sealed with a rotated key the hub learns of late are kept whole, then re-driven."""
    from roadside.shared.envelope import DeviceSealer
    from roadside.shared.keys import KeyPair

    (bundle,) = rig.fleet(1)
    rotated = KeyPair.generate()
    hub = _hub(rig)
    try:
        device = SimulatedDevice(bundle)
        device.connect("127.0.0.1", rig.broker.port)
        sealer = DeviceSealer(bundle.device_id, rotated, bundle.hub_public())
        big = json.loads(counts_body(0, 0, RECORDS))
        big["records"] += [{**big["records"][0], "line": f"x{i}"} for i in range(600)]
        wire = sealer.seal("counts", 1, json.dumps(big).encode(), _now_ms())
        assert len(wire) > 64 * 1024  # more than the old cut
        device.publish(wire)
        device.publish(sealer.seal("counts", 2, counts_body(0, 2, RECORDS), _now_ms()))
        assert device.wait_acked(2, 10)
        device.close()
        assert wait_until(lambda: hub.dead_letters.count("unknown_key") == 2, 15)
        oldest = hub.dead_letters.recent(2)[1]
        assert oldest.payload == wire
        assert oldest.size == len(wire)
    finally:
        hub.stop()
    rig.registry.devices.add_key(bundle.device_id, rotated.public(), actor="test")  # the late registration
    runner = CliRunner()
    home = str(rig.home.root)
    listed = runner.invoke(build(), ["deadletters", "list", "--home", home, "--json"])
    assert listed.exit_code == 0, listed.output
    assert [json.loads(line)["reason"] for line in listed.output.strip().splitlines()] == ["unknown_key"] * 2
    result = runner.invoke(build(), ["deadletters", "redrive", "--home", home, "--reason", "unknown_key"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output.strip().splitlines()[-1])["stored"] == 2
    again = runner.invoke(build(), ["deadletters", "redrive", "--home", home, "--all"])
    assert again.exit_code == 0, again.output
    assert json.loads(again.output.strip().splitlines()[-1])["stored"] == 0  # nothing twice
    from roadside.cloud.storage.sqlite import SqliteStore

    store = SqliteStore(rig.home.telemetry_db)
    try:
        assert stored(store) == RECORDS + 600 + RECORDS
    finally:
        store.close()
    entries = [e for e in rig.registry.audit.entries() if e.action == "deadletters.redrive"]
    assert [e.details["stored"] for e in entries] == [2, 0]


def test_hostile_header_names_never_reach_a_postgresql_registry(rig: Rig, tmp_path: Path) -> None:
    """Item 1 where PostgreSQL is the registry: a NUL in a device or key id made its driver raise
    DataError in the key lookup; now such a header is refused before any lookup."""
    from bench.fleet import enroll_fleet
    from roadside.cloud.home import acl_devices
    from roadside.cloud.registry import Registry
    from tests.component.postgres import PostgresServer

    with PostgresServer(tmp_path / "pg") as postgres:
        url = postgres.create_database("registry")
        registry = Registry(url)
        try:
            registry.create_schema()
            (bundle,) = enroll_fleet(rig.home, registry, 1, rig.broker.port)
            rig.broker.reload_acl(acl_devices(registry))
            hub = _hub(rig, registry_url=url, batch_wait_s=0.5)
            try:
                device = SimulatedDevice(bundle)
                device.connect("127.0.0.1", rig.broker.port)
                _publish(device, "counts", _raw_header(device, "counts", 1, device_id="pole\x00-7"))
                _publish(device, "counts", _raw_header(device, "counts", 2, kid="\ud800"))
                good = device.sealer.seal("counts", 3, counts_body(0, 3, RECORDS), _now_ms())
                _publish(device, "counts", good)
                assert device.wait_acked(3, 10)
                device.close()
                assert wait_until(lambda: hub.ingest.stored_messages + hub.ingest.rejected_messages == 3, 15)
                assert hub.ingest.stored_messages == 1
                assert hub.dead_letters.count("bad_tag") == 2
                assert stored(hub.store) == RECORDS
            finally:
                hub.stop()
        finally:
            registry.close()


@pytest.mark.parametrize("client", ["lean", "paho"])
def test_copies_redelivered_after_lost_acks_are_counted_not_dead_lettered(
    rig: Rig, monkeypatch: pytest.MonkeyPatch, client: str
) -> None:
    """The broker sends unacknowledged messages again (DUP) to the next session: the hub refuses the
    copies as replays of what it stored, counts them, and keeps its dead-letter store for real refusals;
    a device replaying a stored message itself (no DUP) is still dead-lettered."""
    (bundle,) = rig.fleet(1)
    hub = _hub(rig, ingest_mqtt_client=client)
    monkeypatch.setattr(type(hub.ingest), "_ack", lambda self, deliveries: None)  # every ack lost
    device = SimulatedDevice(bundle)
    device.connect("127.0.0.1", rig.broker.port)
    try:
        envelopes = [
            device.sealer.seal("counts", n + 1, counts_body(0, n, RECORDS), _now_ms()) for n in range(5)
        ]
        for envelope in envelopes:
            device.publish(envelope)
        assert wait_until(lambda: hub.ingest.stored_messages == 5, 15), hub.ingest.stored_messages
    finally:
        hub.stop()  # the session stays at the broker with five messages unacknowledged
    monkeypatch.undo()
    hub = _hub(rig, ingest_mqtt_client=client)
    try:
        assert wait_until(lambda: hub.ingest.redelivered == 5, 15), hub.ingest.redelivered
        assert hub.metrics_registry.get_sample_value("roadside_ingest_redelivered_total") == 5
        assert hub.ingest.rejected_messages == 0
        assert hub.dead_letters.count() == 0
        device.publish(envelopes[0])  # the device itself sends a stored message again: a replay
        assert wait_until(lambda: hub.dead_letters.count(reason="replay") == 1, 15)
        assert hub.ingest.redelivered == 5
        assert stored(hub.store) == 5 * RECORDS  # each stored once
    finally:
        device.close()
        hub.stop()
