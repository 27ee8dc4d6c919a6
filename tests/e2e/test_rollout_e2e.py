"""Staged rollouts end to end: the hub's controller, real agents, a real TUF repository, the audit log.

Two agents on synthetic cameras, a Mosquitto with mTLS, the hub with its
rollout controller. A model that disagrees with the running one (its class
outputs permuted: it sees cars as trucks) is stopped at the canary and rolled
back without a human step, and the audit log says why; a model that behaves
goes canary first, then the rest, and completes.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper

from bench.chaos.release import detector_variant
from roadside.cloud.fleet.audit import AuditLog
from roadside.cloud.release.repository import release_model
from roadside.cloud.release.rollouts import GateThresholds, RolloutSpec
from roadside.shared.envelope import OpenedEnvelope
from roadside.shared.schemas import OtaMessage, decode_uplink
from tests.e2e.conftest import Loop
from tests.e2e.ota_rig import SHIPPED_VERSION, OtaRig, agent_with_ota, ota_rig, wait_for

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]


@pytest.fixture
def rig(loop: Loop, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[OtaRig]:
    with ota_rig(loop, tmp_path / "release", monkeypatch) as rig:
        yield rig


def permuted_classes(path: Path, version: str) -> Path:
    """The shipped detector with its class scores shuffled (car<->truck, pedestrian<->cyclist)."""
    detector_variant(path, version)
    model = onnx.load(str(path))
    graph = model.graph
    output = graph.output[0]
    rows = output.type.tensor_type.shape.dim[1].dim_value  # YOLOv8 layout: [batch, 4 + classes, anchors]
    order = [0, 1, 2, 3, *[4 + (k ^ 1) for k in range(rows - 4)]]
    graph.initializer.append(numpy_helper.from_array(np.array(order, dtype=np.int64), "permuted_rows"))
    inner = f"{output.name}_unpermuted"
    for node in graph.node:
        node.output[:] = [inner if name == output.name else name for name in node.output]
    graph.node.append(helper.make_node("Gather", [inner, "permuted_rows"], [output.name], axis=1))
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def publish(loop: Loop, rig: OtaRig, path: Path, version: str) -> None:
    release_model(
        rig.release.repo, loop.registry, path, name="detector", min_agent_version="0.1.0", version=version
    )


def test_a_disagreeing_canary_is_rolled_back_then_a_good_model_goes_everywhere(
    loop: Loop, rig: OtaRig, tmp_path: Path
) -> None:
    agents = {
        name: agent_with_ota(tmp_path, rig.with_anchor(loop.enroll(name)), seed=5)
        for name in ("pole-a", "pole-b")
    }
    try:
        bad = permuted_classes(tmp_path / "build" / "bad" / "detector.onnx", "1.1.0")
        publish(loop, rig, bad, "1.1.0")
        gates = GateThresholds(install_timeout_s=120, health_wait_s=0)
        spec = RolloutSpec(
            "detector", "1.1.0", "all", canary=1, waves=(100,), soak_s=2.0, min_frames=8, gates=gates
        )
        first = loop.hub.rollouts.create(spec, actor="ops@city")
        assert wait_for(lambda: loop.hub.rollouts.status(first.id).state == "rolled_back", 120), (
            loop.hub.rollouts.status(first.id).to_json()
        )
        status = loop.hub.rollouts.status(first.id)
        [canary] = [d.device_id for d in status.devices if d.wave == 0]
        [other] = [d for d in agents if d != canary]
        assert "automatic rollback" in status.rollout.reason
        assert "agreement" in status.rollout.reason
        # The canary switched (the gate judges what it reported after its shadow run), then went back.
        rig.wait_state(canary, "rolled_back", 30)
        assert rig.states(canary, "1.1.0") == ["staging", "shadow", "active", "rolled_back"]
        shadow = next(r.shadow for d, r in rig.reports if d == canary and r.state == "active")
        assert shadow is not None
        assert shadow.agreement < 0.5
        assert agents[canary].detector.info.version == SHIPPED_VERSION
        assert rig.states(other) == []  # the second wave never started
        assert agents[other].detector.info.version == SHIPPED_VERSION
        # The audit log says what happened and why.
        entries = [e for e in AuditLog(loop.registry).entries() if e.subject == str(first.id)]
        gate = next(e for e in entries if e.action == "rollout.gate")
        assert gate.actor == "rollout-controller"
        assert gate.details["decision"] == "fail"
        assert gate.details["reason"].startswith(f"agreement: {canary}: candidate found")
        assert any(
            e.action == "rollout.status" and "automatic rollback" in e.details["reason"] for e in entries
        )
        assert AuditLog(loop.registry).verify().ok

        good = detector_variant(tmp_path / "build" / "good" / "detector.onnx", "1.2.0")
        publish(loop, rig, good, "1.2.0")
        second = loop.hub.rollouts.create(
            RolloutSpec(
                "detector", "1.2.0", "all", canary=1, waves=(100,), soak_s=2.0, min_frames=8, gates=gates
            )
        )
        assert wait_for(lambda: loop.hub.rollouts.status(second.id).state == "completed", 150), (
            loop.hub.rollouts.status(second.id).to_json()
        )
        for name, running in agents.items():
            assert running.detector.info.version == "1.2.0", name
            assert rig.states(name, "1.2.0")[-1] == "active"
        verdicts = [
            e.details["decision"]
            for e in AuditLog(loop.registry).entries()
            if e.action == "rollout.gate" and e.subject == str(second.id)
        ]
        assert verdicts == ["pass", "pass"]
    finally:
        for running in agents.values():
            running.stop(drain_s=3)


def test_a_rollout_completes_when_the_hub_refused_the_devices_active_report(
    loop: Loop, rig: OtaRig, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Issue 14, ADR 0031: the ``active`` report is refused by the hub's own envelope check, as one
    sealed while the device's clock ran 10 minutes fast is (chaos ``rollout-interrupt``, seed 11).
    The device's next heartbeat repeats the report and the rollout completes; before, the device
    never said it again and the wave rolled back at its install timeout."""
    opener = loop.hub.ingest.core.opener
    open_envelope = opener.open
    refused: list[int] = []

    def ten_minutes_fast_for_the_active_report(wire: bytes, now_ms: int) -> OpenedEnvelope:
        opened = open_envelope(wire, now_ms)
        if opened.header.kind == "ota" and not refused:
            message = decode_uplink("ota", opened.plaintext)
            if isinstance(message, OtaMessage) and message.report.state == "active":
                refused.append(opened.header.seq)
                return open_envelope(wire, now_ms - 600_000)  # the real check: raises StaleMessageError
        return opened

    monkeypatch.setattr(opener, "open", ten_minutes_fast_for_the_active_report)
    agent = agent_with_ota(tmp_path, rig.with_anchor(loop.enroll("pole-a")), seed=5)
    stop = threading.Event()

    def heartbeats() -> None:  # as ``Agent.run_forever`` sends them; ``start`` alone sends none
        while not stop.wait(agent.settings.heartbeat_s):
            agent.heartbeat()

    beating = threading.Thread(target=heartbeats, name="heartbeat", daemon=True)
    beating.start()
    try:
        publish(loop, rig, detector_variant(tmp_path / "build" / "1.1.0" / "detector.onnx", "1.1.0"), "1.1.0")
        # Wide behaviour gates, as bench.chaos runs them: a loaded machine's FPS is not what this tests.
        gates = GateThresholds(install_timeout_s=60, health_wait_s=30, min_fps_ratio=0.2, max_latency_ratio=5)
        spec = RolloutSpec(
            "detector", "1.1.0", "all", canary=0, waves=(100,), soak_s=2.0, min_frames=8, gates=gates
        )
        record = loop.hub.rollouts.create(spec)
        assert wait_for(lambda: loop.hub.rollouts.status(record.id).state == "completed", 120), (
            loop.hub.rollouts.status(record.id).to_json()
        )
        assert len(refused) == 1
        assert loop.hub.dead_letters.count("stale") == 1  # dead-lettered whole, as any refused message
        assert "active" not in rig.states("pole-a")  # no ota message said it ...
        active = next(r for r in rig.repeats("pole-a") if r.state == "active")  # ... a heartbeat did
        assert active.rollout_id == record.id
        assert active.shadow is not None  # with the shadow statistics the gates judge
        [device] = loop.hub.rollouts.status(record.id).devices
        assert device.state == "active"
        assert agent.detector.info.version == "1.1.0"
    finally:
        stop.set()
        beating.join(5)
        agent.stop(drain_s=3)
