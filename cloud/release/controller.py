"""Staged rollouts, the shell: reads the registry, asks :mod:`roadside.cloud.release.rollouts`, sends commands.

Everything a rollout is lives in the registry (its spec, its current wave,
each device's progress), so the CLI, the API and any hub process can change
it, and a restarted hub picks up where it stopped. One thread in the hub that
serves the API (:class:`RolloutController`) moves rollouts forward once a
second; device reports (``OtaReport``) are written by whichever hub process
ingests them (:func:`record_report`).

Every action (create, pause, resume, abort, rollback) and every gate verdict
is in the audit log, with the actor and the reason.
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Final, Protocol

from roadside.cloud.registry import (
    DEFAULT_ACTOR,
    Devices,
    ModelVersions,
    RolloutDeviceRecord,
    RolloutRecord,
    Rollouts,
)
from roadside.cloud.release.rollouts import (
    FINAL_STATES,
    Decision,
    DeviceProgress,
    RolloutSpec,
    WaveVerdict,
    advance_state,
    evaluate_wave,
    install_args,
    parse_target,
    plan_waves,
    report_matches,
)
from roadside.shared.errors import ConfigError, RoadsideError
from roadside.shared.schemas import CommandType, Health, OtaReport, ShadowStats

log = logging.getLogger(__name__)

CONTROLLER_ACTOR: Final = "rollout-controller"
_IN_FLIGHT: Final = frozenset({"commanded", "staging", "shadow", "active"})
_SETTLED: Final = frozenset({"active", "refused", "failed"})  # no longer installing


class CommandSink(Protocol):
    def send(
        self, device_id: str, command_type: CommandType, args: dict[str, Any] | None = None
    ) -> object: ...


class RolloutRegistry(Protocol):
    """What rollouts need of the registry (``roadside.cloud.registry.Registry`` fits): the rollouts, the
    models they send, the devices they target, and an audit entry for each gate verdict."""

    @property
    def rollouts(self) -> Rollouts: ...

    @property
    def models(self) -> ModelVersions: ...

    @property
    def devices(self) -> Devices: ...

    def record_audit(self, actor: str, action: str, subject: str, details: Mapping[str, Any]) -> None: ...


HealthLookup = Callable[[str], Health | None]


@dataclass(frozen=True, slots=True)
class RolloutStatus:
    rollout: RolloutRecord
    spec: RolloutSpec
    devices: tuple[RolloutDeviceRecord, ...]

    @property
    def state(self) -> str:
        return self.rollout.status

    def counts(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for device in self.devices:
            counts[device.state] = counts.get(device.state, 0) + 1
        return counts

    def to_json(self) -> dict[str, Any]:
        r = self.rollout
        waves: dict[int, list[str]] = {}
        for device in self.devices:
            waves.setdefault(device.wave, []).append(device.device_id)
        return {
            "id": r.id,
            "model": r.model_name,
            "version": r.model_version,
            "target": r.target,
            "status": r.status,
            "reason": r.reason,
            "current_wave": r.current_wave,
            "waves": [{"wave": w, "devices": len(ids)} for w, ids in sorted(waves.items())],
            "wave_started_at": r.wave_started_at.isoformat() if r.wave_started_at else None,
            "created_at": r.created_at.isoformat(),
            "updated_at": r.updated_at.isoformat(),
            "spec": self.spec.to_json(),
            "counts": self.counts(),
            "devices": [
                {
                    "device_id": d.device_id,
                    "wave": d.wave,
                    "state": d.state,
                    "detail": d.detail,
                    "shadow": d.shadow,
                    "updated_at": d.updated_at.isoformat(),
                }
                for d in self.devices
            ],
        }


def _set(**fields: Any) -> Callable[[RolloutDeviceRecord], dict[str, Any]]:
    """An ``update_rollout_device`` change that sets ``fields`` whatever the device's state."""
    return lambda _current: fields


# Operator actions (CLI, API) ------------------------------------------------------


def create_rollout(
    registry: RolloutRegistry, spec: RolloutSpec, *, actor: str = DEFAULT_ACTOR
) -> RolloutRecord:
    """Plan ``spec`` over the target's active devices and record it; the controller starts it."""
    model = registry.models.get(spec.model_name, spec.model_version)
    if model is None or model.status != "published":
        raise ConfigError(f"model {spec.model_name}:{spec.model_version} is not published; publish it first")
    active = [(d.device_id, d.site) for d in registry.devices.list() if d.status == "active"]
    devices = parse_target(spec.target).select(active)
    if not devices:
        raise ConfigError(f"rollout target {spec.target!r} names no active device")
    salt = f"{spec.model_name}:{spec.model_version}:{datetime.now(UTC).isoformat()}"
    waves = plan_waves(devices, spec.canary, spec.waves, salt)
    summary = [{"wave": i, "devices": len(ids)} for i, ids in enumerate(waves)]
    assignments = [(device, i) for i, ids in enumerate(waves) for device in ids]
    record = registry.rollouts.create(
        spec.model_name,
        spec.model_version,
        spec.target,
        summary,
        spec=spec.to_json(),
        assignments=assignments,
        actor=actor,
    )
    log.info(
        "rollout %d of %s:%s to %d devices in %d waves",
        record.id, spec.model_name, spec.model_version, len(devices), len(waves),
    )  # fmt: skip
    return record


_MOVES: Final[Mapping[str, tuple[frozenset[str], str]]] = {
    "pause": (frozenset({"pending", "running"}), "paused"),
    "resume": (frozenset({"paused"}), "running"),
    "abort": (frozenset({"pending", "running", "paused"}), "aborted"),
    "rollback": (frozenset({"pending", "running", "paused", "completed"}), "rolling_back"),
}


def change_rollout(
    registry: RolloutRegistry, rollout_id: int, action: str, *, actor: str = DEFAULT_ACTOR, reason: str = ""
) -> RolloutRecord:
    """``pause``, ``resume``, ``abort`` (stop where it is) or ``rollback`` (every touched device goes back)."""
    if action not in _MOVES:
        raise ConfigError(f"unknown rollout action {action!r}; choose from {sorted(_MOVES)}")
    record = registry.rollouts.get(rollout_id)
    if record is None:
        raise ConfigError(f"rollout {rollout_id} does not exist")
    allowed, target = _MOVES[action]
    if record.status not in allowed:
        raise ConfigError(f"cannot {action} rollout {rollout_id}: it is {record.status}")
    return registry.rollouts.set_status(
        rollout_id, target, reason=reason or f"{action} by {actor}", actor=actor
    )


def rollout_status(registry: RolloutRegistry, rollout_id: int) -> RolloutStatus:
    record = registry.rollouts.get(rollout_id)
    if record is None:
        raise ConfigError(f"rollout {rollout_id} does not exist")
    if record.spec is None:
        raise ConfigError(f"rollout {rollout_id} predates staged rollouts and has no spec")
    return RolloutStatus(
        record, RolloutSpec.from_json(record.spec), tuple(registry.rollouts.devices(rollout_id))
    )


# Device reports (any hub process) ----------------------------------------------------


def record_report(registry: RolloutRegistry, device_id: str, report: OtaReport) -> bool:
    """Write a device's OTA report into its rollout's progress; ``False`` if it belongs to none."""
    return record_reports(registry, [(device_id, report)]) == 1


def record_reports(registry: RolloutRegistry, reports: Sequence[tuple[str, OtaReport]]) -> int:
    """Write a batch of ``(device_id, report)`` in one registry transaction; how many belonged to a rollout.

    Reports about unknown rollouts, another model, or a device the rollout does
    not include are logged and ignored; a late report never moves a device back.
    """
    specs: dict[int, RolloutSpec | None] = {}
    changes = []
    for device_id, report in reports:
        if report.rollout_id is None:
            continue
        if report.rollout_id not in specs:
            record = registry.rollouts.get(report.rollout_id)
            specs[report.rollout_id] = RolloutSpec.from_json(record.spec) if record and record.spec else None
        spec = specs[report.rollout_id]
        if spec is None:
            log.warning("device %s reported on unknown rollout %s", device_id, report.rollout_id)
            continue
        if not report_matches(report, report.rollout_id, spec):
            log.warning(
                "device %s reported %s:%s for rollout %d, which rolls out %s:%s; ignored",
                device_id, report.name, report.version, report.rollout_id, spec.model_name, spec.model_version,
            )  # fmt: skip
            continue
        changes.append((report.rollout_id, device_id, _advance(report)))
    if not changes:
        return 0
    accepted = 0
    for (rollout_id, device_id, _), updated in zip(
        changes, registry.rollouts.update_devices(changes), strict=True
    ):
        if updated is None:
            log.warning("device %s is not part of rollout %d; report ignored", device_id, rollout_id)
            continue
        accepted += 1
        log.info("rollout %d: device %s %s (%s)", rollout_id, device_id, updated.state, updated.detail or "-")
    return accepted


def _advance(report: OtaReport) -> Callable[[RolloutDeviceRecord], dict[str, Any] | None]:
    def advance(current: RolloutDeviceRecord) -> dict[str, Any] | None:
        state = advance_state(current.state, report.state)
        if state == current.state and report.shadow is None:
            return None
        fields: dict[str, Any] = {"state": state, "detail": report.detail}
        if report.shadow is not None:
            fields["shadow"] = report.shadow.model_dump(mode="json")
        return fields

    return advance


_ReportKey = tuple[int | None, str, str, str, bool]


def _key(report: OtaReport) -> _ReportKey:
    return (report.rollout_id, report.name, report.version, report.state, report.shadow is not None)


class RecordedReports:
    """The report each device last had written, so that the copy every heartbeat repeats (ADR 0031)
    costs one registry transaction, not one per heartbeat.

    Only a skip: a report missing here is written again and changes nothing (a device's state only
    moves forward). Bounded: past ``max_devices`` the longest-quiet device is forgotten.
    """

    def __init__(self, max_devices: int = 100_000) -> None:
        self.max_devices = max_devices
        self._last: OrderedDict[str, _ReportKey] = OrderedDict()
        self._lock = threading.Lock()  # ingest may call from more than one thread

    def unseen(self, reports: Sequence[tuple[str, OtaReport]]) -> list[tuple[str, OtaReport]]:
        """``reports`` less those already written (and repeats within the batch), in order."""
        fresh, taken = [], set()
        with self._lock:
            for device_id, report in reports:
                key = _key(report)
                if self._last.get(device_id) != key and (device_id, key) not in taken:
                    taken.add((device_id, key))
                    fresh.append((device_id, report))
        return fresh

    def note(self, reports: Sequence[tuple[str, OtaReport]]) -> None:
        """``reports`` are in the registry now (or were found to belong to no rollout)."""
        with self._lock:
            for device_id, report in reports:
                self._last[device_id] = _key(report)
                self._last.move_to_end(device_id)
            while len(self._last) > self.max_devices:
                self._last.popitem(last=False)


# The controller (the hub that serves the API) ---------------------------------------


class RolloutController:
    """Moves every live rollout forward: starts waves, judges them, rolls back on a failed gate."""

    def __init__(
        self,
        registry: RolloutRegistry,
        commands: CommandSink,
        health_of: HealthLookup,
        *,
        tick_s: float = 1.0,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        ingest_behind_s: Callable[[], float] = lambda: 0.0,
    ) -> None:
        self.registry = registry
        self.commands = commands
        self.health_of = health_of
        self.tick_s = tick_s
        self.clock = clock
        # How far behind its devices the hub's ingest is: a wave is judged at the time up to which
        # the hub has heard them, so a hub working through a backlog does not roll back devices
        # whose reports it has not stored yet (waits and deadlines move by that much).
        self.ingest_behind_s = ingest_behind_s
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rollouts", daemon=True)
        self._lock = threading.Lock()  # one tick at a time (the thread, or a test calling tick())
        self._recorded = RecordedReports()

    # The same operator actions, for the API and in-process callers.

    def create(self, spec: RolloutSpec, *, actor: str = DEFAULT_ACTOR) -> RolloutRecord:
        record = create_rollout(self.registry, spec, actor=actor)
        self.wake()
        return record

    def change(
        self, rollout_id: int, action: str, *, actor: str = DEFAULT_ACTOR, reason: str = ""
    ) -> RolloutRecord:
        record = change_rollout(self.registry, rollout_id, action, actor=actor, reason=reason)
        self.wake()
        return record

    def status(self, rollout_id: int) -> RolloutStatus:
        return rollout_status(self.registry, rollout_id)

    def on_report(self, device_id: str, report: OtaReport) -> None:
        self.on_reports([(device_id, report)])

    def on_reports(self, reports: Sequence[tuple[str, OtaReport]]) -> None:
        """Device reports from ingest: ``ota`` messages, and the latest one each heartbeat repeats."""
        fresh = self._recorded.unseen(reports)
        if not fresh:
            return
        if record_reports(self.registry, fresh):
            self.wake()
        self._recorded.note(fresh)  # not before the write: a failed one is tried at the next copy

    # The loop.

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread.is_alive():
            self._thread.join(timeout=10)

    def wake(self) -> None:
        self._wake.set()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.tick()
            except RoadsideError as exc:
                log.warning("rollout controller: %s; retrying", exc)
            except Exception:
                log.exception("rollout controller tick failed; retrying")
            self._wake.wait(self.tick_s)
            self._wake.clear()

    def tick(self) -> None:
        """One pass over every rollout that is not finished."""
        with self._lock:
            for record in self.registry.rollouts.list():
                if record.status in FINAL_STATES or record.spec is None:
                    continue
                self._step(record, RolloutSpec.from_json(record.spec))

    def _step(self, record: RolloutRecord, spec: RolloutSpec) -> None:
        devices = self.registry.rollouts.devices(record.id)
        if record.status == "rolling_back":
            self._roll_back(record, spec, devices)
            return
        if record.status == "pending":
            record = self.registry.rollouts.start_wave(record.id, 0, actor=CONTROLLER_ACTOR)
        wave = [d for d in devices if d.wave == record.current_wave]
        if record.status == "running":
            self._command_installs(record, spec, wave)
            devices = self.registry.rollouts.devices(record.id)
            wave = [d for d in devices if d.wave == record.current_wave]
        verdict = self._judge(record, spec, wave)
        if verdict.decision is Decision.FAIL:
            self._audit_verdict(record, verdict)
            reason = f"automatic rollback: wave {record.current_wave} failed {verdict.reason}"
            record = self.registry.rollouts.set_status(
                record.id, "rolling_back", reason=reason, actor=CONTROLLER_ACTOR
            )
            log.warning("rollout %d: %s", record.id, reason)
            self._roll_back(record, spec, self.registry.rollouts.devices(record.id))
        elif verdict.decision is Decision.PASS and record.status == "running":
            self._audit_verdict(record, verdict)
            last = max(d.wave for d in devices)
            if record.current_wave >= last:
                self.registry.rollouts.set_status(
                    record.id, "completed", reason="every wave passed its gates", actor=CONTROLLER_ACTOR
                )
                log.info("rollout %d completed", record.id)
            else:
                record = self.registry.rollouts.start_wave(
                    record.id, record.current_wave + 1, actor=CONTROLLER_ACTOR
                )
                self._command_installs(record, spec, [d for d in devices if d.wave == record.current_wave])

    def _command_installs(
        self, record: RolloutRecord, spec: RolloutSpec, wave: list[RolloutDeviceRecord]
    ) -> None:
        """Mark the wave's pending devices commanded (one transaction), then send each its command.

        One transaction for the wave, not one per device: a 750-device wave
        otherwise spent 0.1 s a device here before its last device heard of
        it, holding the registry's write lock against the reports (issue 15).
        """
        args = install_args(spec, record.id)
        pending = [device.device_id for device in wave if device.state == "pending"]
        if not pending:
            return
        changes = []
        for device_id in pending:
            baseline = self.health_of(device_id)
            body = baseline.model_dump(mode="json") if baseline is not None else None
            changes.append((record.id, device_id, _set(state="commanded", baseline=body, detail="")))
        self.registry.rollouts.update_devices(changes)
        failed = []
        for device_id in pending:
            try:
                self.commands.send(device_id, "ota", args)
            except ConfigError as exc:
                log.warning("rollout %d: cannot command %s: %s", record.id, device_id, exc)
                failed.append((record.id, device_id, _set(state="failed", detail=str(exc))))
        if failed:
            self.registry.rollouts.update_devices(failed)

    def _judge(
        self, record: RolloutRecord, spec: RolloutSpec, wave: list[RolloutDeviceRecord]
    ) -> WaveVerdict:
        started = record.wave_started_at or record.updated_at
        # Health is judged only once no device is installing (evaluate_wave waits until then):
        # looking it up for every active device on every report was most of a busy tick.
        settled = all(device.state in _SETTLED for device in wave)
        progress = [self._progress(device, spec, with_health=settled) for device in wave]
        heard_until = self.clock() - timedelta(seconds=max(0.0, self.ingest_behind_s()))
        return evaluate_wave(progress, spec.gates, wave_started=started, soak_s=spec.soak_s, now=heard_until)

    def _progress(
        self, device: RolloutDeviceRecord, spec: RolloutSpec, *, with_health: bool = True
    ) -> DeviceProgress:
        health: Health | None = None
        if device.state == "active" and with_health:
            latest = self.health_of(device.device_id)
            # Only a report made on the new model, after the switch, says how the device runs now.
            if (
                latest is not None
                and latest.model_version == spec.model_version
                and latest.ts >= device.updated_at
            ):
                health = latest
        return DeviceProgress(
            device.device_id,
            device.wave,
            device.state,
            device.updated_at,
            device.detail,
            ShadowStats.model_validate(device.shadow) if device.shadow is not None else None,
            Health.model_validate(device.baseline) if device.baseline is not None and with_health else None,
            health,
        )

    def _roll_back(
        self, record: RolloutRecord, spec: RolloutSpec, devices: list[RolloutDeviceRecord]
    ) -> None:
        args = {
            "action": "rollback",
            "rollout_id": record.id,
            "name": spec.model_name,
            "version": spec.model_version,
        }
        sent = 0
        for device in devices:
            if device.state not in _IN_FLIGHT:
                continue
            self.registry.rollouts.update_device(
                record.id,
                device.device_id,
                lambda _c: {"state": "rolling_back", "detail": "rollback commanded"},
            )
            try:
                self.commands.send(device.device_id, "ota", args)
                sent += 1
            except ConfigError as exc:
                log.warning("rollout %d: cannot command rollback on %s: %s", record.id, device.device_id, exc)
        self.registry.rollouts.set_status(
            record.id, "rolled_back", reason=record.reason or "rolled back", actor=CONTROLLER_ACTOR
        )
        # A rolled-back model is no longer the one to beat, retrain from, or roll out again.
        model = self.registry.models.get(spec.model_name, spec.model_version)
        if model is not None and model.status == "published":
            self.registry.models.set_status(
                spec.model_name,
                spec.model_version,
                "retired",
                reason=f"rollout {record.id}: {record.reason or 'rolled back'}",
                actor=CONTROLLER_ACTOR,
            )
        log.warning(
            "rollout %d rolled back: %d device(s) told to return to their previous model", record.id, sent
        )

    def _audit_verdict(self, record: RolloutRecord, verdict: WaveVerdict) -> None:
        # Failed gates in full; passed ones summarised, so a 1,000-device wave stays one readable entry.
        gates = [g for g in verdict.gates if not g.passed] or list(verdict.gates[:20])
        details = {
            "wave": record.current_wave,
            "decision": str(verdict.decision),
            "reason": verdict.reason,
            "gates": [g.to_json() for g in gates[:50]],
            "gates_total": len(verdict.gates),
        }
        self.registry.record_audit(CONTROLLER_ACTOR, "rollout.gate", str(record.id), details)
