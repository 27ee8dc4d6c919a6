"""Staged rollouts, the pure core: who gets a model when, and whether a wave may be promoted.

A rollout sends one published model to a target (every device, a site, or a
list of devices) in waves: a canary of ``canary`` devices first, then
cumulative percentages (``10,50,100``). Each wave's devices fetch the model
through TUF, run it in shadow beside the running one for ``soak_s`` on live
frames, switch, and report (:class:`roadside.shared.schemas.OtaReport`). The wave is
promoted only when every gate passes:

``install``      every device reported ``active``; any ``refused`` or ``failed``
                 (more than ``max_failed``) fails the wave; silence past the
                 deadline fails it too.
``agreement``    the candidate found at least ``min_agreement`` of what the
                 running model found on the same frames. A retrained model that
                 finds *more* still agrees; a broken or mislabelled one does not.
``confidence``   the candidate's confidence did not fall: the one-sided
                 Kolmogorov-Smirnov distance between the two confidence
                 histograms (how much more of the candidate's mass sits at
                 low confidence) is at most ``max_confidence_drop``. A
                 retrained model that is surer of itself passes; a collapsed
                 or mis-normalised one does not.
``latency``      the candidate's p95 latency in shadow is at most
                 ``max_latency_ratio`` times the running model's.
``health``       after the switch, the device's own health report (FPS, p95)
                 held against its last report before the wave.

A failed gate rolls back every device the rollout has touched. Everything
here is a function of its arguments: the controller (``roadside.cloud.release.controller``)
reads the registry, calls these, and acts.
"""

from __future__ import annotations

import hashlib
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any, ClassVar, Final, Literal

from roadside.shared.errors import ConfigError
from roadside.shared.schemas import Health, OtaReport, ShadowStats

RolloutState = Literal["pending", "running", "paused", "rolling_back", "completed", "rolled_back", "aborted"]
FINAL_STATES: Final = frozenset({"completed", "rolled_back", "aborted"})
# Where a device stands; the order is the order reports arrive in, so a late report cannot move a device back.
DEVICE_STATES: Final = ("pending", "commanded", "staging", "shadow", "active", "refused", "failed")
AFTER_ROLLBACK: Final = ("rolling_back", "rolled_back")
_RANK: Final = {state: rank for rank, state in enumerate(DEVICE_STATES)}
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*$")
_UNITS: Final = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}


def parse_duration(text: str) -> float:
    """``"10m"`` → 600.0; ``"90"`` and ``"90s"`` are seconds; ``ms``, ``m``, ``h`` are understood."""
    match = _DURATION.match(text)
    if match is None:
        raise ConfigError(f"duration {text!r} not understood: use e.g. 30s, 10m, 1h")
    return float(match.group(1)) * _UNITS[match.group(2) or "s"]


def parse_waves(text: str | Sequence[int]) -> tuple[int, ...]:
    """``"10,50,100"`` → (10, 50, 100): cumulative percentages, rising, ending at 100."""
    try:
        waves = tuple(int(part) for part in text.split(",")) if isinstance(text, str) else tuple(text)
    except ValueError as exc:
        raise ConfigError(f"waves {text!r}: give rising percentages such as 10,50,100") from exc
    if not waves or any(not 0 < w <= 100 for w in waves) or list(waves) != sorted(set(waves)):
        raise ConfigError(f"waves {text!r}: give rising percentages in 1..100, such as 10,50,100")
    if waves[-1] != 100:
        raise ConfigError(f"waves {text!r}: the last wave must be 100 so every target device is reached")
    return waves


@dataclass(frozen=True, slots=True)
class Target:
    """``all``, ``site:<site>`` or ``devices:<id>,<id>,...``."""

    kind: Literal["all", "site", "devices"]
    values: tuple[str, ...] = ()

    def __str__(self) -> str:
        return self.kind if self.kind == "all" else f"{self.kind}:{','.join(self.values)}"

    def select(self, devices: Sequence[tuple[str, str]]) -> list[str]:
        """The ids among active ``(device_id, site)`` pairs this target names; unknown ids are an error."""
        if self.kind == "all":
            return sorted(d for d, _ in devices)
        if self.kind == "site":
            return sorted(d for d, site in devices if site in self.values)
        known = {d for d, _ in devices}
        missing = sorted(set(self.values) - known)
        if missing:
            raise ConfigError(f"rollout target names devices that are not active: {', '.join(missing)}")
        return sorted(set(self.values))


def parse_target(text: str) -> Target:
    text = text.strip()
    if text == "all":
        return Target("all")
    kind, _, rest = text.partition(":")
    values = tuple(v.strip() for v in rest.split(",") if v.strip())
    if kind in ("site", "devices") and values:
        return Target(kind, values)  # type: ignore[arg-type]
    raise ConfigError(f"rollout target {text!r}: use 'all', 'site:<site>[,<site>]' or 'devices:<id>[,<id>]'")


@dataclass(frozen=True, slots=True)
class GateThresholds:
    min_agreement: float = 0.7
    max_confidence_drop: float = 0.25
    max_latency_ratio: float = 1.5
    min_fps_ratio: float = 0.8
    max_failed: int = 0
    # How long a wave may wait for its reports beyond the soak, and for a health report after a switch.
    install_timeout_s: float = 300.0
    health_wait_s: float = 120.0
    # Devices that run no inference (simulators) report no shadow statistics; real agents do.
    require_shadow: bool = True

    def __post_init__(self) -> None:
        if not (0.0 <= self.min_agreement <= 1.0 and 0.0 <= self.max_confidence_drop <= 1.0):
            raise ConfigError("min_agreement and max_confidence_drop must be within [0, 1]")
        if self.max_latency_ratio <= 0 or self.min_fps_ratio < 0 or self.max_failed < 0:
            raise ConfigError("latency ratio must be > 0; FPS ratio and max_failed >= 0")
        if self.install_timeout_s <= 0 or self.health_wait_s < 0:
            raise ConfigError("install timeout must be > 0 and health wait >= 0")

    @classmethod
    def from_json(cls, body: Mapping[str, Any]) -> GateThresholds:
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(body) - known)
        if unknown:
            raise ConfigError(f"unknown gate settings: {', '.join(unknown)}")
        return cls(**body)


@dataclass(frozen=True)
class RolloutPlan:
    """How a model goes out: the rollout knobs, declared here only.

    A :class:`RolloutSpec` is a plan for one model version; the retraining loop's settings
    (``roadside.cloud.settings.RetrainConfig.rollout``) hold the plan it starts each new version with.
    """

    # The hub's settings validate the retraining loop's plan through pydantic: no unknown keys.
    __pydantic_config__: ClassVar[dict[str, Any]] = {"extra": "forbid"}

    target: str = "all"
    canary: int = 1
    waves: tuple[int, ...] = (10, 50, 100)
    soak_s: float = 600.0
    min_frames: int = 20
    gates: GateThresholds = field(default_factory=GateThresholds)

    def __post_init__(self) -> None:
        parse_target(self.target)
        parse_waves(self.waves)
        if self.canary < 0:
            raise ConfigError("canary must be >= 0 devices")
        if not 0 <= self.soak_s <= 86_400:
            raise ConfigError("soak must be between 0 and 24 h")
        if self.min_frames < 0:
            raise ConfigError("min_frames must be >= 0")

    def to_json(self) -> dict[str, Any]:
        body = asdict(self)
        body["waves"] = list(self.waves)
        return body


@dataclass(frozen=True)
class _ModelVersion:
    model_name: str
    model_version: str


@dataclass(frozen=True)
class RolloutSpec(RolloutPlan, _ModelVersion):
    """A :class:`RolloutPlan` for one published model version.

    Fields in order: ``model_name``, ``model_version``, then the plan's (dataclass
    fields are gathered from the last base first).
    """

    @classmethod
    def of(cls, model_name: str, model_version: str, plan: RolloutPlan) -> RolloutSpec:
        """``plan`` applied to one model version."""
        return cls(model_name, model_version, **{f.name: getattr(plan, f.name) for f in fields(RolloutPlan)})

    @classmethod
    def from_json(cls, body: Mapping[str, Any]) -> RolloutSpec:
        values = dict(body)
        values["waves"] = tuple(values.get("waves", (100,)))
        values["gates"] = GateThresholds.from_json(values.get("gates", {}))
        return cls(**values)


def plan_waves(devices: Sequence[str], canary: int, percents: Sequence[int], salt: str) -> list[list[str]]:
    """Split ``devices`` into a canary wave and cumulative-percentage waves; empty waves are dropped.

    The order is a hash of ``salt`` and the device id: stable for one rollout,
    different between rollouts, so the same devices are not always the canaries.
    """
    order = sorted(devices, key=lambda d: hashlib.sha256(f"{salt}/{d}".encode()).digest())
    waves: list[list[str]] = []
    taken = min(canary, len(order))
    if taken:
        waves.append(order[:taken])
    for percent in percents:
        upto = max(taken, math.ceil(len(order) * percent / 100))
        if upto > taken:
            waves.append(order[taken:upto])
            taken = upto
    return waves


# Gates -------------------------------------------------------------------------------


class Decision(StrEnum):
    WAIT = "wait"
    PASS = "pass"  # noqa: S105 - a verdict, not a password
    FAIL = "fail"


@dataclass(frozen=True, slots=True)
class DeviceProgress:
    device_id: str
    wave: int
    state: str
    updated_at: datetime
    detail: str = ""
    shadow: ShadowStats | None = None
    baseline: Health | None = None  # its last health report before the wave started
    health: Health | None = None  # its latest health report naming the new model


@dataclass(frozen=True, slots=True)
class GateResult:
    gate: str
    passed: bool
    detail: str

    def to_json(self) -> dict[str, Any]:
        return {"gate": self.gate, "passed": self.passed, "detail": self.detail}


@dataclass(frozen=True, slots=True)
class WaveVerdict:
    decision: Decision
    reason: str
    gates: tuple[GateResult, ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {
            "decision": str(self.decision),
            "reason": self.reason,
            "gates": [g.to_json() for g in self.gates],
        }


def confidence_drop(running: Sequence[float], candidate: Sequence[float]) -> float:
    """How far the candidate's confidence fell: max over bins of CDF_candidate - CDF_running, at least 0.

    0 when the candidate is as sure or surer everywhere; 1 when all its mass
    sits below all of the running model's. Histograms are normalised first.
    """
    sr, sc = sum(running), sum(candidate)
    if sr <= 0 or sc <= 0:
        return 0.0 if sc > 0 or sr <= 0 else 1.0  # a candidate that finds nothing the running one found
    worst, cdf_r, cdf_c = 0.0, 0.0, 0.0
    for r, c in zip(running, candidate, strict=True):
        cdf_r += r / sr
        cdf_c += c / sc
        worst = max(worst, cdf_c - cdf_r)
    return min(worst, 1.0)


def advance_state(current: str, reported: str) -> str:
    """The device state after a report: forward only, except that a rollback ends everything."""
    if current in AFTER_ROLLBACK:
        return "rolled_back" if reported == "rolled_back" else current
    if reported == "rolled_back":
        return "rolled_back"
    if current in ("refused", "failed") or _RANK.get(reported, -1) <= _RANK.get(current, -1):
        return current
    return reported


def behaviour_gates(device: str, stats: ShadowStats | None, gates: GateThresholds) -> list[GateResult]:
    """The model-behaviour gates for one device's shadow statistics."""
    if stats is None:
        if gates.require_shadow:
            return [GateResult("agreement", False, f"{device} reported no shadow statistics")]
        return []
    results = [
        GateResult(
            "agreement",
            stats.agreement >= gates.min_agreement,
            f"{device}: candidate found {stats.agreement:.2f} of the running model's detections "
            f"(min {gates.min_agreement:.2f}) over {stats.frames} frames",
        )
    ]
    drop = confidence_drop(stats.confidence_running, stats.confidence_candidate)
    results.append(
        GateResult(
            "confidence",
            drop <= gates.max_confidence_drop,
            f"{device}: confidence fell by {drop:.2f} (one-sided KS, max {gates.max_confidence_drop:.2f})",
        )
    )
    running = max(stats.latency_p95_ms_running, 1e-3)
    ratio = stats.latency_p95_ms_candidate / running
    results.append(
        GateResult(
            "latency",
            ratio <= gates.max_latency_ratio,
            f"{device}: shadow p95 {stats.latency_p95_ms_candidate:.1f} ms vs {running:.1f} ms "
            f"({ratio:.2f}x, max {gates.max_latency_ratio:.2f}x)",
        )
    )
    return results


def _fps(health: Health) -> float:
    return sum(stream.fps for stream in health.streams.values())


def health_gate(device: DeviceProgress, gates: GateThresholds) -> GateResult | None:
    """FPS and p95 after the switch against before; ``None`` while it cannot be judged yet."""
    before, after = device.baseline, device.health
    if before is None:
        return GateResult("health", True, f"{device.device_id}: no health before the wave; not compared")
    if after is None:
        return None
    problems = []
    fps_before, fps_after = _fps(before), _fps(after)
    if fps_before > 0 and fps_after < gates.min_fps_ratio * fps_before:
        problems.append(f"FPS {fps_after:.1f} < {gates.min_fps_ratio:.2f} x {fps_before:.1f}")
    p95_before, p95_after = before.inference_p95_ms, after.inference_p95_ms
    if p95_before and p95_after and p95_after > gates.max_latency_ratio * p95_before:
        problems.append(f"p95 {p95_after:.1f} ms > {gates.max_latency_ratio:.2f} x {p95_before:.1f} ms")
    detail = "; ".join(problems) or f"FPS {fps_before:.1f} -> {fps_after:.1f}"
    return GateResult("health", not problems, f"{device.device_id}: {detail}")


def evaluate_wave(
    devices: Sequence[DeviceProgress],
    gates: GateThresholds,
    *,
    wave_started: datetime,
    soak_s: float,
    now: datetime,
) -> WaveVerdict:
    """Promote, keep waiting, or fail the wave made of ``devices``."""
    early = _install_and_behaviour(
        devices, gates, wave_started + timedelta(seconds=soak_s + gates.install_timeout_s), now
    )
    if isinstance(early, WaveVerdict):
        return early
    return _health_verdict([d for d in devices if d.state == "active"], gates, early, wave_started, now)


def _install_and_behaviour(
    devices: Sequence[DeviceProgress], gates: GateThresholds, deadline: datetime, now: datetime
) -> WaveVerdict | list[GateResult]:
    """A verdict if installs or behaviour already decide the wave; else the gate results so far."""
    failed = [d for d in devices if d.state in ("refused", "failed")]
    if len(failed) > gates.max_failed:
        first = failed[0]
        return WaveVerdict(
            Decision.FAIL,
            f"install: {len(failed)} device(s) could not install; {first.device_id} {first.state}: {first.detail}",
            tuple(GateResult("install", False, f"{d.device_id} {d.state}: {d.detail}") for d in failed),
        )
    results: list[GateResult] = []
    for device in devices:
        if device.state == "active":
            results.extend(behaviour_gates(device.device_id, device.shadow, gates))
    bad = [r for r in results if not r.passed]
    if bad:
        return WaveVerdict(Decision.FAIL, f"{bad[0].gate}: {bad[0].detail}", tuple(results))
    waiting = [d for d in devices if d.state not in ("active", "refused", "failed")]
    if waiting and now > deadline:
        names = ", ".join(d.device_id for d in waiting[:5])
        return WaveVerdict(
            Decision.FAIL,
            f"install: {len(waiting)} device(s) did not report active in time ({names})",
            (GateResult("install", False, f"no report from {names}"),),
        )
    if waiting:
        return WaveVerdict(Decision.WAIT, f"{len(waiting)} device(s) still installing or in shadow")
    results.insert(
        0, GateResult("install", True, f"{len(devices) - len(failed)} installed, {len(failed)} failed")
    )
    return results


def _health_verdict(
    active: Sequence[DeviceProgress],
    gates: GateThresholds,
    results: list[GateResult],
    wave_started: datetime,
    now: datetime,
) -> WaveVerdict:
    last_switch = max((d.updated_at for d in active), default=wave_started)
    for device in active:
        health = health_gate(device, gates)
        if health is None:
            if now < last_switch + timedelta(seconds=gates.health_wait_s):
                return WaveVerdict(Decision.WAIT, f"waiting for {device.device_id}'s health after the switch")
            health = GateResult("health", False, f"{device.device_id}: no health report since the switch")
        results.append(health)
        if not health.passed:
            return WaveVerdict(Decision.FAIL, f"health: {health.detail}", tuple(results))
    return WaveVerdict(Decision.PASS, "every gate passed", tuple(results))


def install_args(spec: RolloutSpec, rollout_id: int) -> dict[str, Any]:
    """The ``ota`` command arguments sent to each device of a wave."""
    return {
        "action": "install",
        "rollout_id": rollout_id,
        "name": spec.model_name,
        "version": spec.model_version,
        "shadow_s": spec.soak_s,
        "min_frames": spec.min_frames,
    }


def report_matches(report: OtaReport, rollout_id: int, spec: RolloutSpec) -> bool:
    """Whether a device's report is about this rollout's model (a stale or stray one is ignored)."""
    return report.rollout_id == rollout_id and (report.name, report.version) == (
        spec.model_name,
        spec.model_version,
    )
