"""The rollout controller against a real registry (SQLite): waves, gates, rollback, operator actions, audit.

Devices are played by the test: it answers the controller's ``ota`` commands
with the reports a device would send (``record_report``), so each gate and
each operator action is exercised without radios in the loop. The whole loop
with real agents is in tests/e2e/test_rollout_e2e.py.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from roadside.cloud.fleet.audit import AuditLog
from roadside.cloud.registry import Registry
from roadside.cloud.release.controller import (
    RolloutController,
    change_rollout,
    create_rollout,
    record_report,
    record_reports,
    rollout_status,
)
from roadside.cloud.release.rollouts import GateThresholds, RolloutSpec
from roadside.shared.errors import ConfigError
from roadside.shared.keys import KeyPair
from roadside.shared.schemas import Health, OtaReport, ShadowStats

HIST = [0.0, 0.0, 0.05, 0.05, 0.1, 0.1, 0.2, 0.2, 0.2, 0.1]


@dataclass
class Sink:
    sent: list[tuple[str, dict[str, Any]]] = field(default_factory=list)

    def send(self, device_id: str, command_type: str, args: dict[str, Any] | None = None) -> object:
        assert command_type == "ota"
        self.sent.append((device_id, dict(args or {})))
        return None

    def take(self) -> list[tuple[str, dict[str, Any]]]:
        sent, self.sent = self.sent, []
        return sent


@pytest.fixture
def registry(tmp_path: Path) -> Iterator[Registry]:
    registry = Registry(f"sqlite:///{tmp_path / 'registry.db'}")
    registry.create_schema()
    for i in range(10):
        registry.devices.enroll(f"dev{i}", "north" if i < 8 else "south", KeyPair.generate().public())
    registry.models.publish("detector", "1.0.0", "a" * 64, 100)
    registry.models.publish("detector", "1.1.0", "b" * 64, 100, parent="1.0.0")
    yield registry
    registry.close()


class Clock:
    def __init__(self) -> None:
        self.now = datetime.now(UTC)

    def __call__(self) -> datetime:
        return self.now


def shadow(agreement: float = 0.95) -> ShadowStats:
    return ShadowStats(
        frames=120,
        agreement=agreement,
        novel=0.03,
        latency_p95_ms_running=5.0,
        latency_p95_ms_candidate=5.5,
        confidence_running=HIST,
        confidence_candidate=HIST,
    )


def report(
    rollout_id: int, state: str, stats: ShadowStats | None = None, version: str = "1.1.0"
) -> OtaReport:
    return OtaReport(
        rollout_id=rollout_id,
        name="detector",
        version=version,
        state=state,  # type: ignore[arg-type]
        shadow=stats,
    )


def controller(registry: Registry, sink: Sink, clock: Clock) -> RolloutController:
    return RolloutController(registry, sink, lambda _device: None, clock=clock)


def spec(**overrides: Any) -> RolloutSpec:
    values: dict[str, Any] = {
        "model_name": "detector",
        "model_version": "1.1.0",
        "target": "site:north",
        "canary": 1,
        "waves": (50, 100),
        "soak_s": 10.0,
    }
    values.update(overrides)
    return RolloutSpec(**values)


def answer(registry: Registry, sink: Sink, rollout_id: int, agreement: float = 0.95) -> list[str]:
    """Every commanded device installs, shadows and switches; returns who was commanded."""
    devices = []
    for device_id, args in sink.take():
        assert args["action"] == "install"
        assert args["rollout_id"] == rollout_id
        assert args["shadow_s"] == 10.0
        for state in ("staging", "shadow"):
            record_report(registry, device_id, report(rollout_id, state))
        record_report(registry, device_id, report(rollout_id, "active", shadow(agreement)))
        devices.append(device_id)
    return devices


def gate_entries(registry: Registry, rollout_id: int) -> list[dict[str, Any]]:
    return [
        dict(e.details)
        for e in AuditLog(registry).entries()
        if e.action == "rollout.gate" and e.subject == str(rollout_id)
    ]


def test_canary_then_waves_then_completed_with_every_gate_in_the_audit_log(registry: Registry) -> None:
    sink, clock = Sink(), Clock()
    rollouts = controller(registry, sink, clock)
    record = rollouts.create(spec(), actor="ops@city")
    status = rollout_status(registry, record.id)
    assert [w["devices"] for w in status.to_json()["waves"]] == [1, 3, 4]  # 8 devices at site north

    waves = []
    for _ in range(3):
        rollouts.tick()
        waves.append(answer(registry, sink, record.id))
    rollouts.tick()
    assert [len(w) for w in waves] == [1, 3, 4]
    assert {d for w in waves for d in w} == {f"dev{i}" for i in range(8)}
    status = rollout_status(registry, record.id)
    assert status.state == "completed"
    assert status.counts() == {"active": 8}
    entries = gate_entries(registry, record.id)
    assert [(e["wave"], e["decision"]) for e in entries] == [(0, "pass"), (1, "pass"), (2, "pass")]
    actions = [e.action for e in AuditLog(registry).entries() if e.subject == str(record.id)]
    assert actions[0] == "rollout.create"
    assert AuditLog(registry).verify().ok


def test_a_canary_that_disagrees_is_rolled_back_and_the_audit_log_says_why(registry: Registry) -> None:
    sink, clock = Sink(), Clock()
    rollouts = controller(registry, sink, clock)
    record = rollouts.create(spec(canary=2))
    rollouts.tick()
    canaries = answer(registry, sink, record.id, agreement=0.12)
    rollouts.tick()
    status = rollout_status(registry, record.id)
    assert status.state == "rolled_back"
    assert "agreement" in status.rollout.reason
    assert "0.12" in status.rollout.reason
    # Every canary is told to go back; nobody else was ever commanded.
    rollbacks = sink.take()
    assert sorted(d for d, _ in rollbacks) == sorted(canaries)
    assert all(a["action"] == "rollback" and a["version"] == "1.1.0" for _, a in rollbacks)
    for device_id in canaries:
        record_report(registry, device_id, report(record.id, "rolled_back"))
    assert rollout_status(registry, record.id).counts() == {"rolled_back": 2, "pending": 6}
    # The model is retired: not the baseline to beat, not a parent to retrain, not rolled out again.
    model = registry.models.get("detector", "1.1.0")
    assert model is not None
    assert model.status == "retired"
    with pytest.raises(ConfigError, match="not published"):
        create_rollout(registry, spec())
    [entry] = gate_entries(registry, record.id)
    assert entry["decision"] == "fail"
    assert entry["reason"].startswith("agreement")
    status_changes = [dict(e.details) for e in AuditLog(registry).entries() if e.action == "rollout.status"]
    assert any("automatic rollback" in c["reason"] for c in status_changes)
    rollouts.tick()  # a finished rollout sends nothing more
    assert sink.take() == []


def test_a_refused_install_fails_the_wave(registry: Registry) -> None:
    sink, clock = Sink(), Clock()
    rollouts = controller(registry, sink, clock)
    record = rollouts.create(spec())
    rollouts.tick()
    [(device_id, _)] = sink.take()
    refused = OtaReport(
        rollout_id=record.id,
        name="detector",
        version="1.1.0",
        state="refused",
        detail="tampered_target: bad hash",
    )
    record_report(registry, device_id, refused)
    rollouts.tick()
    status = rollout_status(registry, record.id)
    assert status.state == "rolled_back"
    assert "tampered_target" in status.rollout.reason
    assert sink.take() == []  # a refused device kept its model: nothing to roll back


def test_silent_devices_time_out(registry: Registry) -> None:
    sink, clock = Sink(), Clock()
    rollouts = controller(registry, sink, clock)
    record = rollouts.create(spec(gates=GateThresholds(install_timeout_s=30)))
    rollouts.tick()
    [(device_id, _)] = sink.take()
    clock.now += timedelta(seconds=39)
    rollouts.tick()
    assert rollout_status(registry, record.id).state == "running"
    clock.now += timedelta(seconds=2)
    rollouts.tick()
    status = rollout_status(registry, record.id)
    assert status.state == "rolled_back"
    assert "did not report" in status.rollout.reason
    assert [d for d, _ in sink.take()] == [device_id]  # it may have installed silently: told to go back


def test_pause_holds_promotion_and_resume_goes_on(registry: Registry) -> None:
    sink, clock = Sink(), Clock()
    rollouts = controller(registry, sink, clock)
    record = rollouts.create(spec())
    rollouts.tick()
    change_rollout(registry, record.id, "pause", actor="ops@city", reason="holiday traffic")
    answer(registry, sink, record.id)
    rollouts.tick()
    assert rollout_status(registry, record.id).state == "paused"
    assert sink.take() == []
    with pytest.raises(ConfigError, match="paused"):
        change_rollout(registry, record.id, "pause")
    change_rollout(registry, record.id, "resume", actor="ops@city")
    rollouts.tick()
    assert len(sink.take()) == 3  # the next wave


def test_abort_stops_and_manual_rollback_reaches_every_touched_device(registry: Registry) -> None:
    sink, clock = Sink(), Clock()
    rollouts = controller(registry, sink, clock)
    first = rollouts.create(spec())
    rollouts.tick()
    answer(registry, sink, first.id)
    change_rollout(registry, first.id, "abort", actor="ops@city")
    rollouts.tick()
    assert rollout_status(registry, first.id).state == "aborted"
    assert sink.take() == []

    second = rollouts.create(spec(target="all", canary=0, waves=(100,)))
    rollouts.tick()
    touched = answer(registry, sink, second.id)
    rollouts.tick()
    assert rollout_status(registry, second.id).state == "completed"
    change_rollout(registry, second.id, "rollback", actor="ops@city", reason="complaints from traffic ops")
    rollouts.tick()
    status = rollout_status(registry, second.id)
    assert status.state == "rolled_back"
    assert status.rollout.reason == "complaints from traffic ops"
    assert sorted(d for d, _ in sink.take()) == sorted(touched)


def test_reports_that_do_not_belong_are_ignored(registry: Registry) -> None:
    sink, clock = Sink(), Clock()
    rollouts = controller(registry, sink, clock)
    record = rollouts.create(spec())
    rollouts.tick()
    [(device_id, _)] = sink.take()
    assert not record_report(registry, device_id, report(999, "active", shadow()))  # unknown rollout
    assert not record_report(registry, device_id, report(record.id, "active", shadow(), version="9.9.9"))
    assert not record_report(registry, "dev9", report(record.id, "active", shadow()))  # not in the rollout
    assert not record_report(registry, device_id, report(None, "active", shadow()))  # type: ignore[arg-type]
    record_report(registry, device_id, report(record.id, "active", shadow()))
    record_report(registry, device_id, report(record.id, "staging"))  # late, out of order
    assert rollout_status(registry, record.id).counts()["active"] == 1


def test_health_gate_uses_reports_made_after_the_switch(registry: Registry) -> None:
    sink, clock = Sink(), Clock()
    healths: dict[str, Health] = {}
    rollouts = RolloutController(registry, sink, healths.get, clock=clock)
    record = rollouts.create(spec(gates=GateThresholds(health_wait_s=60)))

    def make(fps: float, version: str) -> Health:
        return Health.model_validate(
            {
                "ts": clock.now.isoformat(),
                "uptime_s": 1,
                "model_version": version,
                "provider": "CPUExecutionProvider",
                "streams": {"cam": {"fps": fps, "dropped_frames": 0}},
                "outbox_backlog": 0,
            }
        )

    for i in range(8):
        healths[f"dev{i}"] = make(10.0, "1.0.0")
    rollouts.tick()
    [device_id] = answer(registry, sink, record.id)
    rollouts.tick()
    assert rollout_status(registry, record.id).state == "running"  # waiting for health on 1.1.0
    clock.now += timedelta(seconds=5)
    healths[device_id] = make(3.0, "1.1.0")
    rollouts.tick()
    status = rollout_status(registry, record.id)
    assert status.state == "rolled_back"
    assert "FPS 3.0" in status.rollout.reason


def test_a_hub_behind_its_devices_waits_for_their_health_instead_of_rolling_back(registry: Registry) -> None:
    """The health wait counts in the time up to which the hub has heard its devices: a hub
    working through a 5-minute backlog has not stored the report a device sent after its
    switch, and that is no reason to roll the device back. Caught up, silence is one."""
    sink, clock = Sink(), Clock()
    behind = {"s": 300.0}
    healths: dict[str, Health] = {}
    rollouts = RolloutController(
        registry, sink, healths.get, clock=clock, ingest_behind_s=lambda: behind["s"]
    )
    record = rollouts.create(spec(gates=GateThresholds(health_wait_s=60)))
    for i in range(8):
        healths[f"dev{i}"] = Health.model_validate(
            {"ts": clock.now.isoformat(), "uptime_s": 1, "model_version": "1.0.0",
             "provider": "CPUExecutionProvider", "streams": {"cam": {"fps": 10.0, "dropped_frames": 0}},
             "outbox_backlog": 0}
        )  # fmt: skip
    rollouts.tick()
    answer(registry, sink, record.id)
    clock.now += timedelta(seconds=120)  # twice the health wait, and no report on 1.1.0 stored
    rollouts.tick()
    assert rollout_status(registry, record.id).state == "running"
    behind["s"] = 0.0  # caught up, and still nothing from the device since its switch
    rollouts.tick()
    status = rollout_status(registry, record.id)
    assert status.state == "rolled_back"
    assert "no health report since the switch" in status.rollout.reason


def test_create_refuses_unpublished_models_and_empty_targets(registry: Registry) -> None:
    with pytest.raises(ConfigError, match="not published"):
        create_rollout(registry, spec(model_version="7.0.0"))
    with pytest.raises(ConfigError, match="no active device"):
        create_rollout(registry, spec(target="site:east"))
    with pytest.raises(ConfigError, match="not active"):
        create_rollout(registry, spec(target="devices:dev1,ghost"))


def test_one_batch_of_reports_moves_each_device_in_order(registry: Registry) -> None:
    """A batch may hold a device's staging, shadow and active reports together, and other devices'."""
    sink, clock = Sink(), Clock()
    rollouts = controller(registry, sink, clock)
    record = rollouts.create(spec(canary=2, waves=(100,)))
    rollouts.tick()
    commanded = [device_id for device_id, _ in sink.take()]
    assert len(commanded) == 2
    first, second = commanded
    batch = [
        (first, report(record.id, "staging")),
        (second, report(record.id, "staging")),
        (first, report(record.id, "shadow")),
        (first, report(record.id, "active", shadow())),
        ("dev9", report(record.id, "active", shadow())),  # not in the rollout: ignored, costs no other
    ]
    assert record_reports(registry, batch) == 4
    states = {d.device_id: d.state for d in rollout_status(registry, record.id).devices}
    assert (states[first], states[second]) == ("active", "staging")


def test_an_active_report_the_hub_lost_is_taken_from_the_next_heartbeats_copy(
    registry: Registry, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Issue 14, ADR 0031: the canary's ``active`` report was refused on the way (chaos
    ``rollout-interrupt``, seed 11: sealed while the device's clock was 10 minutes off). Its
    heartbeat repeats it; the wave passes on that copy, and later copies cost no registry write."""
    sink, clock = Sink(), Clock()
    rollouts = controller(registry, sink, clock)
    record = rollouts.create(spec(gates=GateThresholds(install_timeout_s=30)))
    rollouts.tick()
    [(canary, _)] = sink.take()
    for state in ("staging", "shadow"):
        rollouts.on_reports([(canary, report(record.id, state))])
    active = report(record.id, "active", shadow())  # sent as an ota message, and refused
    clock.now += timedelta(seconds=25)
    rollouts.tick()
    assert rollout_status(registry, record.id).counts() == {"shadow": 1, "pending": 7}

    rollouts.on_reports([(canary, active)])  # the same report, in the next heartbeat
    rollouts.tick()
    status = rollout_status(registry, record.id)
    assert status.rollout.current_wave == 1  # the canary passed every gate on the repeated copy
    [canary_state] = [d for d in status.devices if d.device_id == canary]
    assert (canary_state.state, canary_state.shadow) == ("active", shadow().model_dump(mode="json"))
    assert [(e["wave"], e["decision"]) for e in gate_entries(registry, record.id)] == [(0, "pass")]

    writes: list[object] = []
    monkeypatch.setattr(
        "roadside.cloud.release.controller.record_reports",
        lambda registry, reports: writes.append(reports) or 0,
    )
    for _ in range(3):
        rollouts.on_reports([(canary, active)])  # every later heartbeat carries it too
    assert writes == []


def test_a_repeated_report_never_moves_a_device_it_does_not_belong_to(registry: Registry) -> None:
    """Repeats are held to the rules an ota message is held to: the report names the rollout that
    commanded the device and its model, and a device's state only moves forward, so an old
    report repeated late activates nothing and undoes no rollback."""
    sink, clock = Sink(), Clock()
    rollouts = controller(registry, sink, clock)
    first = rollouts.create(spec(target="devices:dev0", canary=0, waves=(100,)))
    rollouts.tick()
    sink.take()
    old_active = report(first.id, "active", shadow())
    rollouts.on_reports([("dev0", old_active)])
    rollouts.tick()
    assert rollout_status(registry, first.id).state == "completed"

    registry.models.publish("detector", "1.2.0", "c" * 64, 100, parent="1.1.0")
    second = rollouts.create(spec(model_version="1.2.0", target="devices:dev0", canary=0, waves=(100,)))
    rollouts.tick()
    assert [d for d, _ in sink.take()] == ["dev0"]
    # Its heartbeat still repeats the first rollout's report until the new install reports:
    rollouts.on_reports([("dev0", old_active), ("dev0", report(second.id, "active", shadow()))])
    assert rollout_status(registry, second.id).counts() == {"commanded": 1}  # wrong model for rollout 2

    change_rollout(registry, second.id, "rollback", actor="ops@city", reason="operator")
    rollouts.tick()
    assert rollout_status(registry, second.id).counts() == {"rolling_back": 1}
    late = report(second.id, "active", shadow(), version="1.2.0")
    rollouts.on_reports([("dev0", late)])  # made before the rollback, repeated after it
    assert rollout_status(registry, second.id).counts() == {"rolling_back": 1}
    rollouts.on_reports([("dev0", report(second.id, "rolled_back", version="1.2.0"))])
    assert rollout_status(registry, second.id).counts() == {"rolled_back": 1}
